//! `Store::compact`: the space the engine keeps after tier changes comes back, every record survives,
//! and a swap interrupted at any step is finished or rolled back by the next open.

use std::path::Path;

#[path = "../../tests/support/fs_tree.rs"]
mod fs_tree;
use fs_tree::copy_dir;

use lethe_memory::{
    Due, Layout, Mode, NewPage, NewTurn, PageId, Scope, Stamp, Store, Tier, TokenCache, Transition,
    ENGINE_DIR,
};

/// A PNG-signed blob of `len` bytes that differs per `tag` (nothing can deduplicate it).
fn image(tag: u64, len: usize) -> Vec<u8> {
    let mut state = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let body = (0..len).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    });
    b"\x89PNG\r\n\x1a\n".iter().copied().chain(body).collect()
}

/// Three pages, each moved down and up the ladder `rounds` times with fresh 64 KiB images.
fn churned_store(dir: &Path, rounds: u64) {
    let store = Store::open(dir).expect("open");
    let scope = Scope::session("s");
    let ladder = [Mode::Large, Mode::Base, Mode::Small, Mode::Tiny].map(Tier::At);
    for p in 0..3u64 {
        let turns = store
            .append(&scope, &[NewTurn::new("user", format!("turn {p}"), p)])
            .expect("append");
        store
            .page_out(
                &scope,
                turns,
                NewPage {
                    // Records the size of a render profile, so that rewrites leave garbage.
                    layout: Layout {
                        profile: format!("{{\"font\":\"{}\"}}", "x".repeat(16 << 10)),
                        ..Layout::default()
                    },
                    tier: Tier::At(Mode::Large),
                    text: format!("page {p}"),
                    image: Some(image(p, 64 << 10)),
                    tokens: Some(TokenCache::new(vec![4, 4], "f32", vec![p as u8; 64]).unwrap()),
                    at: Stamp::new(p, p),
                    reason: "page-out".into(),
                    due: Due::NEVER,
                },
            )
            .expect("page out");
    }
    for step in 1..=rounds * 3 {
        let id = PageId(step % 3);
        let tier = (step % 4) as u8;
        store
            .transition(
                id,
                Transition {
                    tier: ladder[usize::from(tier)],
                    image: Some(image(100 + step, 64 << 10)),
                    tokens: None,
                    reason: format!("step {step}"),
                    at: Stamp::new(10 + step, 10 + step),
                    due: Due::NEVER,
                },
            )
            .expect("transition");
    }
    store.close().expect("close");
}

/// Everything a reader can see: every page with its image and tokens, every history, the stats
/// without the on-disk size.
fn snapshot(store: &Store) -> String {
    let mut out = String::new();
    for rec in store.pages(None).expect("pages").pages {
        let page = store.load(rec.id).expect("load");
        let history = store.history(rec.id).expect("history");
        out.push_str(&format!("{page:?}\n{history:?}\n"));
    }
    let mut stats = store.stats().expect("stats");
    stats.bytes_on_disk = 0;
    stats.engine_bytes_on_disk = 0;
    out.push_str(&format!(
        "{stats:?}\n{:?}",
        store.audit_log().expect("audit")
    ));
    out
}

#[test]
fn compaction_gives_space_back_and_keeps_every_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    churned_store(&dir, 40);
    let mut store = Store::open(&dir).unwrap();
    let before = snapshot(&store);
    let stats = store.stats().unwrap();
    let done = store.compact().unwrap();
    eprintln!(
        "live {} B; engine {} -> {} B ({} records)",
        stats.live_bytes, done.bytes_before, done.bytes_after, done.records
    );
    assert!(
        done.bytes_after * 2 < done.bytes_before,
        "{} -> {} bytes",
        done.bytes_before,
        done.bytes_after
    );
    let engine_live = stats.live_bytes - stats.made_of.images - stats.made_of.tokens;
    assert!(done.bytes_after >= engine_live, "{done:?} vs {stats:?}");
    // Each tier change deleted the image it replaced: one image per page is left.
    assert_eq!(stats.blob_files, 3, "{stats:?}");
    assert!(done.records > 3 * 4, "{done:?}");
    assert_eq!(snapshot(&store), before);
    assert!(store.verify().unwrap().is_empty());
    assert_eq!(
        store.stats().unwrap().engine_bytes_on_disk,
        done.bytes_after
    );
    for leftover in ["db.compact", "db.retired"] {
        assert!(!dir.join(leftover).exists(), "{leftover}");
    }

    // The store keeps working, and a reopen sees the same records.
    let scope = Scope::session("s");
    store
        .append(&scope, &[NewTurn::new("user", "after", 99)])
        .unwrap();
    let after = snapshot(&store);
    store.close().unwrap();
    let store = Store::open(&dir).unwrap();
    assert_eq!(snapshot(&store), after);
    assert_eq!(store.hot_turns(&scope).unwrap().len(), 1);
}

#[test]
fn an_interrupted_swap_is_finished_or_rolled_back_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    churned_store(&dir, 2);
    let want = snapshot(&Store::open(&dir).unwrap());
    let live = dir.join(ENGINE_DIR);
    let fresh = dir.join("db.compact");
    let retired = dir.join("db.retired");
    let reopen_and_check = |case: &str| {
        let store = Store::open(&dir).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(snapshot(&store), want, "{case}");
        for leftover in [&fresh, &retired] {
            assert!(
                !leftover.exists(),
                "{case}: {} survived",
                leftover.display()
            );
        }
    };

    // Killed while copying: a half-written fresh folder.
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::write(fresh.join("db"), b"half a log").unwrap();
    reopen_and_check("killed while copying");

    // Killed between the two renames: no engine folder, the old one retired.
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::write(fresh.join("db"), b"a copy nobody trusts").unwrap();
    std::fs::rename(&live, &retired).unwrap();
    reopen_and_check("killed between the renames");

    // Killed after the swap, before the old folder was removed.
    copy_dir(&live, &retired);
    reopen_and_check("killed before removing the old folder");
}
