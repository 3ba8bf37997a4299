//! Stores written by schema 1 (images and token caches inside the engine) and schema 2 (a page's
//! layout as an opaque string) open: each is migrated on open, after a copy of its engine folder
//! is kept, and reads back exactly.

use crate::engine::{open_default, Batch, Engine};
use crate::{
    keys, Due, Mode, PageId, Scope, Stamp, Store, Tier, ENGINE_DIR, SCHEMA1_BACKUP_DIR,
    SCHEMA2_BACKUP_DIR, SCHEMA_VERSION,
};
use serde_json::json;

fn png(tag: &str) -> Vec<u8> {
    [&b"\x89PNG\r\n\x1a\n"[..], tag.as_bytes()].concat()
}

/// The records of schema 1 for page `id` (a token cache on odd pages), as lethe-memory 0.1 wrote
/// them.
fn schema1_page(b: &mut Batch, scope: &Scope, id: u64) {
    let image = png(&format!("page {id}"));
    let text = format!("text of page {id}");
    let tokens = vec![id as u8; 16];
    let with_tokens = id % 2 == 1;
    let record = json!({
        "id": id, "scope": scope, "turns": {"start": id, "end": id + 1},
        "profile": "{}", "tier": {"index": 0, "mode": "large"},
        "created": {"turn": id, "time": id}, "last_access": {"turn": id, "time": id},
        "access_count": 0, "pinned": false, "text": text,
        "image_len": image.len(),
        "tokens": if with_tokens { json!({"shape": [2, 2], "dtype": "f32", "len": 16}) } else { json!(null) },
        "checksum": {
            "image": crc32fast::hash(&image),
            "tokens": if with_tokens { json!(crc32fast::hash(&tokens)) } else { json!(null) },
            "text": crc32fast::hash(text.as_bytes()),
        },
        "changes": 1,
    });
    b.put(keys::page(PageId(id)), frame_json(record));
    b.put(keys::legacy_image(PageId(id)), keys::frame(&image));
    if with_tokens {
        b.put(keys::legacy_tokens(PageId(id)), keys::frame(&tokens));
    }
}

fn frame_json(v: serde_json::Value) -> Vec<u8> {
    keys::frame(&serde_json::to_vec(&v).expect("json"))
}

/// Writes, key by key, what lethe-memory 0.1 with schema 1 wrote for two pages (one with a token
/// cache) and one hot turn.
fn schema1_store(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let engine = open_default(&dir.join(ENGINE_DIR)).expect("engine");
    let scope = Scope::session("old");
    let mut b = Batch::new();
    b.put(keys::SCHEMA, frame_json(json!(1)));
    b.put(keys::NEXT_PAGE, frame_json(json!(2)));
    b.put(
        keys::scope_counter(&scope),
        frame_json(json!({"scope": scope, "next_turn": 3})),
    );
    b.put(
        keys::turn(&scope, 2),
        frame_json(json!({"index": 2, "speaker": "user", "text": "still hot", "timestamp": 9})),
    );
    for id in 0..2u64 {
        schema1_page(&mut b, &scope, id);
        b.put(keys::scope_page(&scope, PageId(id)), keys::frame(&[]));
        b.put(
            keys::legacy_history(PageId(id), 0),
            frame_json(json!({"page": id, "seq": 0, "from": null,
                "to": {"index": 0, "mode": "large"}, "reason": "page-out",
                "at": {"turn": id, "time": id}})),
        );
    }
    engine.apply(b).expect("apply");
    engine.flush().expect("flush");
}

/// Whether the engine of the (closed) store in `dir` holds `key`.
fn engine_has(dir: &std::path::Path, key: &[u8]) -> bool {
    let engine = open_default(&dir.join(ENGINE_DIR)).expect("engine");
    engine.get(key).expect("get").is_some()
}

#[test]
fn a_schema1_store_is_migrated_on_open_with_a_backup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    schema1_store(&dir);
    let store = Store::open(&dir).expect("open a schema 1 store");
    assert!(
        dir.join(SCHEMA1_BACKUP_DIR).join("db").is_file(),
        "the engine folder as it was is kept"
    );
    let scope = Scope::session("old");
    for id in 0..2u64 {
        let page = store.load(PageId(id)).expect("page reads back");
        assert_eq!(page.image, Some(png(&format!("page {id}"))));
        assert_eq!(
            page.record.text.as_deref(),
            Some(format!("text of page {id}").as_str())
        );
        assert_eq!(
            page.tokens.map(|t| t.bytes),
            (id == 1).then(|| vec![1u8; 16])
        );
        assert_eq!(page.record.due, Due::NOW, "migrated pages are due at once");
    }
    assert_eq!(
        store.due_pages(&scope, 0).expect("due"),
        [PageId(0), PageId(1)]
    );
    assert_eq!(store.hot_turns(&scope).expect("hot")[0].text, "still hot");
    assert_eq!(store.next_turn(&scope).expect("next"), 3);
    assert!(store.verify().expect("verify").is_empty());
    assert_eq!(store.stats().expect("stats").blob_files, 3);
    // It is a store of this schema now, and stays one across reopens.
    drop(store);
    for id in 0..2 {
        assert!(!engine_has(&dir, &keys::legacy_image(PageId(id))));
        assert!(!engine_has(&dir, &keys::legacy_tokens(PageId(id))));
    }
    let store = Store::open(&dir).expect("reopen");
    assert_eq!(
        store.tag("anything").expect("tag"),
        None,
        "schema {SCHEMA_VERSION} reads"
    );
    store
        .record_access(PageId(0), Stamp::new(3, 3))
        .expect("writes work after migration");
    assert!(store.verify().expect("verify").is_empty());
}

#[test]
fn a_migration_interrupted_after_some_pages_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    schema1_store(&dir);
    drop(Store::open(&dir).expect("migrate"));
    // Put page 1 back the way schema 1 had it, as if the migration had been killed after page 0
    // (the schema version is written last): its blobs are then named by nothing.
    {
        let engine = open_default(&dir.join(ENGINE_DIR)).expect("engine");
        let refs: Vec<Vec<u8>> = (&engine as &dyn Engine)
            .scan_prefix(keys::ALL_BLOB_REFS)
            .expect("refs")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(refs.len(), 3);
        let mut b = Batch::new();
        b.put(keys::SCHEMA, frame_json(json!(1)));
        schema1_page(&mut b, &Scope::session("old"), 1);
        for k in refs {
            if k != keys::blob_refs(&crate::BlobId::of(&png("page 0"))) {
                b.delete(k);
            }
        }
        engine.apply(b).expect("apply");
        engine.flush().expect("flush");
    }
    let store = Store::open(&dir).expect("resume");
    for id in 0..2 {
        assert_eq!(
            store.load(PageId(id)).expect("page").image,
            Some(png(&format!("page {id}")))
        );
    }
    assert!(store.verify().expect("verify").is_empty());
    assert_eq!(store.stats().expect("stats").blob_files, 3);
}

/// Schema 2 kept a page's layout as an opaque string. A string that is not the facade's JSON
/// stays as the typed layout's opaque profile, with no pieces, and the text is kept as it was.
#[test]
fn a_schema2_page_with_an_opaque_profile_keeps_it_and_its_text() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let scope = Scope::session("two");
    {
        let engine = open_default(&dir.join(ENGINE_DIR)).expect("engine");
        let text = "user: hello";
        let mut b = Batch::new();
        b.put(keys::SCHEMA, frame_json(json!(2)));
        b.put(keys::NEXT_PAGE, frame_json(json!(1)));
        b.put(
            keys::scope_counter(&scope),
            frame_json(json!({"scope": scope, "next_turn": 1})),
        );
        b.put(
            keys::page(PageId(0)),
            frame_json(json!({
                "id": 0, "scope": scope, "turns": {"start": 0, "end": 1},
                "profile": "{\"font_px\":14}", "tier": {"index": 1, "mode": "base"},
                "created": {"turn": 0, "time": 0}, "last_access": {"turn": 0, "time": 0},
                "access_count": 0, "pinned": false, "text": text, "image_len": 0,
                "tokens": null,
                "checksum": {"image": null, "tokens": null, "text": crc32fast::hash(text.as_bytes())},
                "changes": 1, "tier_since": {"turn": 0, "time": 0},
                "due": {"turn": 5, "time": null},
            })),
        );
        b.put(keys::scope_page(&scope, PageId(0)), keys::frame(&[]));
        b.put(
            keys::history(PageId(0)),
            frame_json(json!([{"page": 0, "seq": 0, "from": null,
                "to": {"index": 1, "mode": "base"}, "reason": "page-out",
                "at": {"turn": 0, "time": 0}}])),
        );
        engine.apply(b).expect("apply");
        engine.flush().expect("flush");
    }
    let store = Store::open(&dir).expect("open a schema 2 store");
    assert!(dir.join(SCHEMA2_BACKUP_DIR).join("db").is_file());
    let page = store.page(PageId(0)).expect("page");
    assert_eq!(page.layout.profile, "{\"font_px\":14}");
    assert!(page.layout.pieces.is_empty());
    assert_eq!(page.text.as_deref(), Some("user: hello"));
    assert_eq!(page.tier, Tier::At(Mode::Base));
    assert_eq!(
        store.history(PageId(0)).expect("history")[0].to,
        Some(Tier::At(Mode::Base))
    );
    assert_eq!(store.due_pages(&scope, 5).expect("due"), [PageId(0)]);
    assert!(store.verify().expect("verify").is_empty());
    drop(store);
    let store = Store::open(&dir).expect("reopen");
    assert_eq!(store.page(PageId(0)).expect("page"), page);
}
