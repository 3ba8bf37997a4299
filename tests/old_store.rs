//! Stores written by earlier releases (schema 1, `tests/fixtures/store-schema1`; schema 2,
//! `tests/fixtures/store-schema2`) open with today's code: each is migrated after a backup, reads
//! back, and keeps working.

use std::path::Path;

#[path = "support/fs_tree.rs"]
mod fs_tree;
use fs_tree::copy_dir;

use lethe::{Lethe, Mode, Reader, RecallTarget, Scope};

#[test]
fn a_store_of_the_previous_release_opens_reads_and_keeps_working() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-schema1");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    copy_dir(&fixture.join("db"), &dir.join("db"));

    let mut lethe = Lethe::builder(&dir)
        .reader(Reader::None)
        .hot_turns(4)
        .build()
        .expect("a schema 1 store opens");
    assert!(dir.join(lethe_memory::SCHEMA1_BACKUP_DIR).is_dir());
    let store = lethe.store();
    assert!(store.verify().unwrap().is_empty());
    let pages = store.pages(None).unwrap().pages;
    assert_eq!(pages.len(), 8);
    let tiers: Vec<&str> = pages.iter().map(|p| p.tier.name()).collect();
    assert_eq!(
        tiers,
        ["small", "small", "small", "base", "base", "base", "large", "large"]
    );
    let scopes = store.scopes().unwrap();
    assert_eq!(scopes.len(), 1);
    let scope: Scope = scopes[0].clone();
    assert_eq!(store.hot_turns(&scope).unwrap().len(), 10);

    // Every page the old release drew is drawn again, pixel for pixel, from the text it kept.
    let transcript = std::fs::read_to_string(fixture.join("transcript.txt")).unwrap();
    for page in &pages {
        let png = store
            .image(page.id)
            .unwrap()
            .expect("the old PNG, moved to a blob");
        let stored = lethe::PageImage::from_png(&png).unwrap();
        let text = page.text.as_deref().expect("text kept");
        let first_line = text.lines().find(|l| l.len() > 20).unwrap_or(text);
        let probe = first_line.split_whitespace().last().unwrap_or("");
        assert!(transcript.contains(probe), "{probe:?}");
        let ctx_mode: Mode = page.tier.mode().unwrap();
        assert_eq!(stored.width, ctx_mode.page_px());
    }
    let ctx = lethe.context(&scope, 1_000_000, 100).unwrap();
    assert_eq!(ctx.pages.len(), 8);
    for (shown, page) in ctx.pages.iter().zip(&pages) {
        let png = lethe.store().image(page.id).unwrap().unwrap();
        let stored = lethe::PageImage::from_png(&png).unwrap();
        assert!(
            shown.image.pixels == stored.pixels,
            "page {} is drawn differently from the old release's image",
            page.id
        );
    }

    // It keeps working: recall, then new turns and maintenance.
    let recall = lethe.recall(RecallTarget::Page(pages[0].id), 101).unwrap();
    assert!(recall.pages[0].stored_text.is_some());
    lethe
        .append(&scope, &[lethe::Turn::new("User", "one more turn")], 102)
        .unwrap();
    lethe.maintain(102).unwrap();
    assert!(lethe.store().verify().unwrap().is_empty());
}

/// A store of schema 2 (`tests/fixtures/store-schema2`), whose pages kept their layout as a JSON
/// string holding a second copy of their text, opens with the typed layout: every page reads
/// back the text the old release returned for it, and is drawn from its turn pieces.
#[test]
fn a_schema2_store_moves_to_the_typed_layout_and_reads_the_same() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-schema2");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    copy_dir(&fixture.join("db"), &dir.join("db"));
    let expected: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("pages.json")).unwrap())
            .unwrap();
    let mut lethe = Lethe::builder(&dir)
        .reader(Reader::None)
        .hot_turns(4)
        .build()
        .expect("a schema 2 store opens");
    assert!(dir.join(lethe_memory::SCHEMA2_BACKUP_DIR).is_dir());
    assert!(lethe.store().verify().unwrap().is_empty());
    let pages = lethe.store().pages(None).unwrap().pages;
    assert_eq!(pages.len(), expected.len());
    let transcript = std::fs::read_to_string(fixture.join("transcript.txt")).unwrap();
    for (page, want) in pages.iter().zip(&expected) {
        assert_eq!(page.id.0, want["id"].as_u64().unwrap());
        assert_eq!(page.tier.name(), want["tier"].as_str().unwrap());
        // One copy of the text: the turn pieces' own words, each found in the transcript.
        let text = page.text.as_deref().expect("text kept");
        let mut at = 0;
        for piece in &page.layout.pieces {
            let words = &text[at..at + piece.len as usize];
            at += piece.len as usize;
            let probe = words.split_whitespace().last().unwrap_or("");
            assert!(transcript.contains(probe), "{probe:?}");
        }
        assert_eq!(at, text.len());
        assert!(page.layout.text_tokens > 0);
        assert_eq!(
            lethe.store().image(page.id).unwrap(),
            None,
            "still drawn from its text"
        );
    }
    // The text as laid out on each page is what the old release returned.
    for want in &expected {
        let id = lethe::PageId(want["id"].as_u64().unwrap());
        let recall = lethe.recall(RecallTarget::Page(id), 200).unwrap();
        assert_eq!(
            recall.pages[0].stored_text.as_deref(),
            want["stored_text"].as_str(),
            "page {id}"
        );
    }
    let scope = lethe.store().scopes().unwrap()[0].clone();
    let ctx = lethe.context(&scope, 1_000_000, 201).unwrap();
    assert_eq!(ctx.pages.len(), expected.len());
    lethe
        .append(&scope, &[lethe::Turn::new("User", "one more turn")], 202)
        .unwrap();
    lethe.maintain(202).unwrap();
    assert!(lethe.store().verify().unwrap().is_empty());
}
