//! `Lethe::recall` of a range of turns with the embedded reader: its pages are read side by side,
//! and each comes back as recalling that page alone gives it, with the store's bookkeeping the
//! same.

use lethe::{Lethe, RecallTarget, Scope};
use lethe_render::transcript::{parse, ParseOptions};

/// A memory with the embedded reader holding at least `pages` pages of the sample transcript.
fn memory_with_pages(dir: &std::path::Path, scope: &Scope, pages: usize) -> Lethe {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/samples/agent-sessions.txt"
    ))
    .expect("sample transcript");
    let turns = parse(&bytes, &ParseOptions::new())
        .expect("sample parses")
        .turns;
    let mut lethe = Lethe::builder(dir).hot_turns(2).build().unwrap();
    for (i, turn) in turns.iter().enumerate() {
        lethe
            .append(scope, std::slice::from_ref(turn), i as u64)
            .unwrap();
        lethe.maintain(i as u64).unwrap();
        if lethe.store().pages(Some(scope)).unwrap().pages.len() >= pages {
            return lethe;
        }
    }
    panic!("the sample makes fewer than {pages} pages");
}

#[test]
fn recalling_turns_reads_each_page_as_recalling_it_alone_does() {
    let dir = tempfile::tempdir().unwrap();
    let scope = Scope::session("sample");
    let lethe = memory_with_pages(dir.path(), &scope, 3);
    let pages = lethe.store().pages(Some(&scope)).unwrap().pages;
    let target = RecallTarget::Turns {
        scope: scope.clone(),
        start: 0,
        end: pages[2].turns.end,
    };
    let now = 1_000;

    let together = lethe.recall(target.clone(), now).unwrap();
    let ids: Vec<_> = together.pages.iter().map(|p| p.id).collect();
    assert_eq!(ids, pages[..3].iter().map(|p| p.id).collect::<Vec<_>>());
    // Each page was accessed once, at `now`, whichever lane read it.
    for p in &pages[..3] {
        let after = lethe.store().page(p.id).unwrap();
        assert_eq!(after.access_count, p.access_count + 1, "page {}", p.id);
        assert_eq!(after.last_access.time, now, "page {}", p.id);
    }

    let mut positions = 0;
    for page in &together.pages {
        let alone = lethe.recall(RecallTarget::Page(page.id), now).unwrap();
        positions += alone.usage.decoder_positions;
        let alone = &alone.pages[0];
        let decoded = page.decoded_text.as_deref().unwrap_or_default();
        assert!(!decoded.is_empty(), "page {} reads back", page.id);
        assert_eq!(page.decoded_text, alone.decoded_text, "page {}", page.id);
        assert_eq!(page.stored_text, alone.stored_text, "page {}", page.id);
        assert_eq!(page.tier, alone.tier);
    }
    assert!(positions > 0);
    assert_eq!(together.usage.decoder_positions, positions);

    // Callers on threads of their own, each reading side by side on the same workers and the
    // same decoder copies, get the same pages.
    let texts = |r: &lethe::Recall| -> Vec<Option<String>> {
        r.pages.iter().map(|p| p.decoded_text.clone()).collect()
    };
    std::thread::scope(|s| {
        let callers: Vec<_> = (0..3)
            .map(|_| s.spawn(|| lethe.recall(target.clone(), now).unwrap()))
            .collect();
        for caller in callers {
            assert_eq!(texts(&caller.join().unwrap()), texts(&together));
        }
    });
}
