//! Corrupt records, schema versions, locks, bad paths, bad arguments, export/import errors.

use crate::engine::{open_default, Engine};
use crate::{
    keys, BlobId, Due, Error, Layout, Mode, NewPage, NewTurn, PageId, Scope, Stamp, Store,
    StoreOptions, Tier, TokenCache, Transition, BLOB_DIR, ENGINE_DIR,
};

fn png(tag: &str) -> Vec<u8> {
    [&b"\x89PNG\r\n\x1a\n"[..], tag.as_bytes()].concat()
}

fn new_page(tag: &str) -> NewPage {
    NewPage {
        layout: Layout::default(),
        tier: Tier::At(Mode::Large),
        text: format!("text {tag}"),
        image: Some(png(tag)),
        tokens: Some(TokenCache::new(vec![2, 2], "f32", vec![7; 16]).expect("tokens")),
        at: Stamp::new(1, 1),
        reason: "page-out".into(),
        due: Due::NEVER,
    }
}

/// The file a blob of `bytes` lives in.
fn blob_path(dir: &std::path::Path, bytes: &[u8]) -> std::path::PathBuf {
    let hex = BlobId::of(bytes).hex();
    dir.join(BLOB_DIR).join(&hex[..2]).join(hex)
}

/// A store with three pages, 0, 1 and 2.
fn three_pages(dir: &std::path::Path) {
    let store = Store::open(dir).expect("open");
    let scope = Scope::session("s");
    for i in 0..3 {
        let r = store
            .append(&scope, &[NewTurn::new("user", format!("t{i}"), i)])
            .expect("append");
        store
            .page_out(&scope, r, new_page(&i.to_string()))
            .expect("page out");
    }
    store.close().expect("close");
}

fn tamper(dir: &std::path::Path, key: &[u8], f: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let engine = open_default(&dir.join(ENGINE_DIR)).expect("open engine");
    let v = engine.get(key).expect("get").expect("key present");
    let mut b = crate::engine::Batch::new();
    b.put(key.to_vec(), f(v));
    engine.apply(b).expect("put");
    engine.flush().expect("flush");
}

#[test]
fn corrupt_page_record_is_named_and_others_stay_readable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    three_pages(&dir);
    tamper(&dir, &keys::page(PageId(1)), |mut v| {
        let n = v.len() - 3;
        v[n] ^= 0x20;
        v
    });
    let store = Store::open(&dir).expect("a corrupt record does not stop the store opening");
    let err = store.page(PageId(1)).expect_err("corrupt page");
    match &err {
        Error::Corrupt { key, page, reason } => {
            assert_eq!(key, "page/1");
            assert_eq!(*page, Some(PageId(1)));
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(err.to_string().contains("page/1") && err.to_string().contains("(page 1)"));
    let listing = store.pages(None).expect("listing");
    let ids: Vec<PageId> = listing.pages.iter().map(|p| p.id).collect();
    assert_eq!(ids, [PageId(0), PageId(2)]);
    assert_eq!(listing.corrupt.len(), 1);
    assert!(listing.corrupt[0].to_string().contains("page/1"));
    for id in [PageId(0), PageId(2)] {
        let p = store.load(id).expect("other pages stay readable");
        assert_eq!(p.image, Some(png(&id.0.to_string())));
    }
    assert_eq!(store.stats().expect("stats").corrupt, 1);
    assert_eq!(store.verify().expect("verify").len(), 1);
    // Exports refuse to be partial, and say why.
    let export = store
        .export(tmp.path().join("export"))
        .expect_err("export of a corrupt store");
    assert!(export.to_string().contains("page/1"), "{export}");
}

#[test]
fn corrupt_image_and_undecodable_record_are_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    three_pages(&dir);
    // An image file whose content differs from the page's checksum (same length).
    std::fs::write(blob_path(&dir, &png("2")), png("x")).expect("tamper with the blob");
    // A well-framed record that is not JSON.
    tamper(&dir, &keys::page(PageId(0)), |_| keys::frame(b"not json"));
    let store = Store::open(&dir).expect("open");
    let err = store.image(PageId(2)).expect_err("image mismatch");
    assert!(
        matches!(&err, Error::Corrupt { key, page: Some(PageId(2)), .. } if key == "image/2"),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .contains("does not match the page's checksum"));
    let err = store.page(PageId(0)).expect_err("undecodable");
    assert!(
        err.to_string().contains("page/0") && err.to_string().contains("undecodable"),
        "{err}"
    );
    // Page 1 is untouched; page 2's record still lists, its image is what fails.
    assert_eq!(store.load(PageId(1)).expect("page 1").image, Some(png("1")));
    let listing = store.pages(None).expect("listing");
    assert_eq!(listing.pages.len(), 2);
    assert_eq!(listing.corrupt.len(), 1);
    let problems = store.verify().expect("verify");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    // The undecodable record, the blob that no longer hashes to its name, and the image's
    // checksum (reference counts are not judged while a record cannot be read).
    assert_eq!(problems.len(), 3, "{text:?}");
    assert!(text.iter().any(|t| t.contains("image/2")));
    assert!(text.iter().any(|t| t.contains("does not hash to its name")));
    // A missing blob file is named too.
    std::fs::remove_file(blob_path(&dir, &png("1"))).expect("remove a blob");
    let err = store.image(PageId(1)).expect_err("missing blob");
    assert!(err.to_string().contains("image/1"), "{err}");
}

#[test]
fn a_wrong_blob_reference_count_is_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    three_pages(&dir);
    let blob = BlobId::of(&png("1"));
    tamper(&dir, &keys::blob_refs(&blob), |_| keys::frame(b"5"));
    let store = Store::open(&dir).expect("open");
    let problems: Vec<String> = store
        .verify()
        .expect("verify")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(&blob.hex()) && problems[0].contains("reference count 5 but 1"),
        "{problems:?}"
    );
}

#[test]
fn another_schema_version_is_refused_with_both_versions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    three_pages(&dir);
    tamper(&dir, keys::SCHEMA, |_| keys::frame(b"7"));
    let err = Store::open(&dir).expect_err("schema mismatch");
    assert!(
        matches!(
            err,
            Error::SchemaMismatch {
                found: 7,
                expected: crate::SCHEMA_VERSION,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("schema version 7")
            && msg.contains(&format!("expects {}", crate::SCHEMA_VERSION)),
        "{msg}"
    );
    assert!(msg.contains(dir.to_str().expect("utf-8")), "{msg}");
}

#[test]
fn second_handle_in_one_process_is_locked_out() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    let first = Store::open(&dir).expect("open");
    let err = Store::open(&dir).expect_err("locked");
    assert!(
        matches!(&err, Error::Locked { lock, .. } if lock.ends_with("LOCK")),
        "{err:?}"
    );
    drop(first);
    Store::open(&dir).expect("reopen after drop");
}

#[test]
fn bad_paths_give_clear_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let err = Store::open(&file).expect_err("file");
    assert!(err.to_string().contains("is a file, not a folder"), "{err}");
    assert!(err.to_string().contains("a-file"), "{err}");

    let err = Store::open("").expect_err("empty");
    assert!(matches!(err, Error::BadPath { .. }), "{err:?}");

    let missing = tmp.path().join("missing");
    let opts = StoreOptions::builder()
        .path(&missing)
        .create(false)
        .build()
        .expect("opts");
    let err = Store::open_with(opts).expect_err("missing");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!missing.exists());

    let other = tmp.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    std::fs::write(other.join("notes.txt"), b"mine").expect("write");
    let err = Store::open(&other).expect_err("non-store folder");
    assert!(err.to_string().contains("not a Lethe store"), "{err}");
    assert_eq!(
        std::fs::read_dir(&other).expect("ls").count(),
        1,
        "nothing written into it"
    );

    let under_file = file.join("store");
    let err = Store::open(&under_file).expect_err("under a file");
    assert!(err.to_string().contains("a-file"), "{err}");
}

#[test]
fn bad_arguments_are_rejected_before_writing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(tmp.path().join("store")).expect("open");
    let scope = Scope::session("s");
    let r = store
        .append(&scope, &[NewTurn::new("user", "hi", 0)])
        .expect("append");

    let mut p = new_page("x");
    p.image = Some(b"GIF89a".to_vec());
    assert!(
        matches!(store.page_out(&scope, r, p), Err(Error::InvalidInput(m)) if m.contains("not a PNG"))
    );
    assert!(TokenCache::new(vec![3, 3], "f32", vec![0; 10]).is_err());
    assert!(TokenCache::new(vec![1], "f128", vec![0; 16]).is_err());
    let empty = crate::TurnRange { start: 0, end: 0 };
    assert!(matches!(
        store.page_out(&scope, empty, new_page("x")),
        Err(Error::InvalidInput(_))
    ));
    let wide = crate::TurnRange { start: 0, end: 2 };
    let err = store
        .page_out(&scope, wide, new_page("x"))
        .expect_err("turn 1 missing");
    assert!(
        matches!(&err, Error::TurnMissing { index: 1, .. }),
        "{err:?}"
    );
    // Nothing was written by the failed calls.
    assert_eq!(store.hot_turns(&scope).expect("turns").len(), 1);
    assert!(store.pages(None).expect("pages").pages.is_empty());

    let id = store.page_out(&scope, r, new_page("x")).expect("page out");
    let bad = Transition {
        tier: Tier::At(Mode::Base),
        image: Some(vec![1, 2, 3]),
        tokens: None,
        reason: "decay".into(),
        at: Stamp::new(2, 2),
        due: Due::NEVER,
    };
    assert!(matches!(
        store.transition(id, bad),
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(store.page(id).expect("page").tier, Tier::At(Mode::Large));
    assert!(matches!(
        store.page(PageId(99)),
        Err(Error::PageNotFound(PageId(99)))
    ));
    assert!("12".parse::<PageId>().is_ok() && "p12".parse::<PageId>().is_err());

    // Deleting keeps the history, ending at no tier.
    store
        .delete(id, "evicted by TTL", Stamp::new(3, 3))
        .expect("delete");
    let h = store.history(id).expect("history survives deletion");
    assert_eq!(h.len(), 2);
    assert_eq!(h[1].to, None);
    assert_eq!(h[1].reason, "evicted by TTL");
    assert!(matches!(store.image(id), Err(Error::PageNotFound(_))));
}

#[test]
fn export_import_errors_name_the_file_and_write_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    three_pages(&dir);
    let store = Store::open(&dir).expect("open");
    let export = tmp.path().join("export");
    let sum = store.export(&export).expect("export");
    assert_eq!(sum.pages, 3);
    assert!(export.join("manifest.json").is_file());
    assert!(export.join("pages/1/page.png").is_file());
    assert!(export.join("pages/1/text.txt").is_file());
    assert!(export.join("pages/1/tokens.bin").is_file());
    assert!(store
        .export(&export)
        .expect_err("non-empty")
        .to_string()
        .contains("not empty"));
    // Import needs an empty store.
    assert!(matches!(store.import(&export), Err(Error::InvalidInput(_))));

    std::fs::write(export.join("pages/2/page.png"), png("tampered")).expect("tamper");
    let fresh = Store::open(tmp.path().join("fresh")).expect("fresh");
    let err = fresh.import(&export).expect_err("tampered image");
    assert!(err.to_string().contains("pages/2/page.png"), "{err}");
    assert!(
        fresh.pages(None).expect("pages").pages.is_empty(),
        "nothing imported"
    );
    assert!(fresh.scopes().expect("scopes").is_empty());

    let err = fresh
        .import(tmp.path().join("nowhere"))
        .expect_err("missing folder");
    assert!(err.to_string().contains("manifest.json"), "{err}");
}

/// The default engine with a switch that makes every write fail as a full disk does.
struct FullDisk {
    inner: crate::engine::DefaultEngine,
    full: std::sync::Arc<std::sync::atomic::AtomicBool>,
    dir: std::path::PathBuf,
}

impl FullDisk {
    fn check(&self) -> crate::Result<()> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Io {
                path: self.dir.clone(),
                source: std::io::Error::from_raw_os_error(28),
            });
        }
        Ok(())
    }
}

impl Engine for FullDisk {
    fn get(&self, key: &[u8]) -> crate::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn visit_range(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut crate::engine::Visitor<'_>,
    ) -> crate::Result<()> {
        self.inner.visit_range(from, to, f)
    }
    fn apply(&self, batch: crate::engine::Batch) -> crate::Result<()> {
        self.check()?;
        self.inner.apply(batch)
    }
    fn flush(&self) -> crate::Result<()> {
        self.check()?;
        self.inner.flush()
    }
    fn size_on_disk(&self) -> crate::Result<u64> {
        self.inner.size_on_disk()
    }
}

/// A full disk simulated by an injected writer error (for machines where no tmpfs can be mounted;
/// `tests/cli_store.rs` stages a real one): the write fails with an error naming where and why,
/// and every page stored before reads back intact.
#[test]
fn a_full_disk_fails_the_write_and_loses_nothing_stored() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    three_pages(&dir);
    let full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let switch = full.clone();
    let engine_dir = dir.join(ENGINE_DIR);
    let store = Store::open_wrapped(
        StoreOptions::builder().path(&dir).build().expect("options"),
        move |inner| {
            Box::new(FullDisk {
                inner,
                full: switch,
                dir: engine_dir,
            })
        },
    )
    .expect("open");
    let scope = Scope::session("s");
    let r = store
        .append(&scope, &[NewTurn::new("user", "t3", 3)])
        .expect("append while there is space");
    full.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = store
        .page_out(&scope, r, new_page("3"))
        .expect_err("a full disk fails the page-out");
    let source = std::error::Error::source(&err).map_or(String::new(), |s| s.to_string());
    let chain = format!("{err}: {source}");
    assert!(chain.contains("No space left on device"), "{chain}");
    assert!(chain.contains(ENGINE_DIR), "{chain}");
    let err = store
        .append(&scope, &[NewTurn::new("user", "t4", 4)])
        .expect_err("and so does an append");
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    drop(store);
    let store = Store::open(&dir).expect("reopen once space is back");
    let listing = store.pages(None).expect("pages");
    assert_eq!(listing.pages.len(), 3, "the three earlier pages");
    assert!(listing.corrupt.is_empty());
    for p in &listing.pages {
        assert_eq!(
            store.load(p.id).expect("load").image,
            Some(png(&p.id.0.to_string()))
        );
    }
    assert!(store.verify().expect("verify").is_empty());
    // The image the failed page-out wrote before its record was swept on reopen: three images
    // and the token blob the pages share are left.
    assert!(!blob_path(&dir, &png("3")).exists());
    assert_eq!(store.stats().expect("stats").blob_files, 4);
}
