//! The facade end to end, without a model: append, maintain, tiers, context, recall, report.

use lethe::{Lethe, Mode, Policy, Reader, RecallTarget, Scope, Tier, Turn};
use lethe_policy::PageState;
use lethe_render::transcript::{parse, ParseOptions};

fn sample_turns() -> Vec<Turn> {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/samples/agent-sessions.txt"
    ))
    .expect("sample transcript");
    parse(&bytes, &ParseOptions::new())
        .expect("sample parses")
        .turns
}

/// A memory without a model: `hot` turns kept as text, `policy` deciding tiers.
fn memory(dir: &std::path::Path, hot: usize, policy: Policy) -> Lethe {
    Lethe::builder(dir)
        .reader(Reader::None)
        .hot_turns(hot)
        .policy(policy)
        .build()
        .unwrap()
}

/// A step policy that moves a page down one tier every `step` turns, floor tiny.
fn step_policy(step: u64) -> Policy {
    Policy::from_toml_str(&format!(
        "clock = \"turns\"\nage_from = \"created\"\nfloor = \"tiny\"\n[curve]\nkind = \"step\"\nafter = [{}, {}, {}, {}]\n",
        step,
        2 * step,
        3 * step,
        4 * step
    ))
    .expect("policy")
}

#[test]
fn turns_age_through_the_tiers_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut lethe = memory(dir.path(), 4, step_policy(10));
    let scope = Scope::session("sample");
    let turns: Vec<Turn> = sample_turns().into_iter().take(80).collect();
    let mut created = 0;
    let mut transitions = 0;
    for (i, turn) in turns.iter().enumerate() {
        lethe
            .append(&scope, std::slice::from_ref(turn), i as u64)
            .unwrap();
        let done = lethe.maintain(i as u64).unwrap();
        created += done.pages_created;
        transitions += done.transitions;
    }
    assert!(created >= 5, "80 turns make several pages, got {created}");
    assert!(transitions > 0, "old pages moved down");

    // Every turn is either still hot or inside exactly one page's turn range, in order.
    let pages = lethe.store().pages(Some(&scope)).unwrap().pages;
    let hot = lethe.store().hot_turns(&scope).unwrap();
    let mut next = 0;
    for p in &pages {
        assert!(
            p.turns.start <= next && next <= p.turns.end,
            "page {} starts at {}",
            p.id,
            p.turns.start
        );
        next = next.max(p.turns.end);
    }
    assert_eq!(
        hot.first().map(|t| t.index),
        Some(next),
        "hot turns follow the pages"
    );
    assert_eq!(hot.last().map(|t| t.index), Some(79));

    // The oldest page went down the ladder one step at a time, each step logged.
    let oldest = &pages[0];
    let history = lethe.history(oldest.id).unwrap();
    let tiers: Vec<Option<Tier>> = history.iter().map(|c| c.to).collect();
    assert_eq!(tiers.first(), Some(&Some(Tier::At(Mode::Large))));
    assert!(tiers.windows(2).all(|w| w[0] != w[1]));
    assert!(
        tiers.contains(&Some(Tier::At(Mode::Base))),
        "history: {tiers:?}"
    );

    // Sessions travel with the turns: every page names its session at the top, so a page read
    // alone still says when it was said (and re-renders at each tier changed nothing of it).
    for p in &pages {
        assert!(p.layout.pieces.iter().all(|piece| piece.session.is_some()));
        let recall = lethe.recall(RecallTarget::Page(p.id), 99).unwrap();
        let text = recall.pages[0].stored_text.as_deref().unwrap();
        assert!(
            text.starts_with("=== Session "),
            "page {}:\n{}",
            p.id,
            &text[..text.len().min(200)]
        );
    }

    // Each page's text survives and reads back.
    let recall = lethe.recall(RecallTarget::Page(oldest.id), 100).unwrap();
    let text = recall.pages[0].stored_text.as_deref().unwrap();
    assert!(text.contains(&turns[0].text[..20.min(turns[0].text.len())]));
    assert!(
        recall.pages[0].decoded_text.is_none(),
        "no model, no decoding"
    );

    // The report accounts for every page and turn.
    let report = lethe.report().unwrap();
    let paged: u64 = report
        .tiers
        .iter()
        .filter(|r| r.tier != "hot")
        .map(|r| r.pages)
        .sum();
    assert_eq!(paged, pages.len() as u64);
    let hot_row = report.tiers.iter().find(|r| r.tier == "hot").unwrap();
    assert_eq!(hot_row.pages, hot.len() as u64);
    assert!(
        report.total.ratio_positions > 1.0,
        "pages compress text: {:?}",
        report.total
    );
    assert!(report.bytes_on_disk > 0);
}

#[test]
fn context_fits_the_budget_by_showing_pages_at_lower_modes() {
    let dir = tempfile::tempdir().unwrap();
    let mut lethe = Lethe::builder(dir.path())
        .reader(Reader::None)
        .hot_turns(3)
        .build()
        .unwrap();
    let scope = Scope::session("s");
    for (i, turn) in sample_turns().into_iter().take(60).enumerate() {
        lethe.append(&scope, &[turn], i as u64).unwrap();
    }
    lethe.maintain(60).unwrap();
    let pages = lethe.store().pages(Some(&scope)).unwrap().pages.len();
    assert!(pages >= 3);

    let roomy = lethe.context(&scope, 1_000_000, 60).unwrap();
    assert_eq!(roomy.pages.len(), pages);
    assert!(roomy.dropped_pages.is_empty());

    let hot_tokens = roomy.usage.text_tokens;
    let budget = hot_tokens + 2 * 273 + 73;
    let tight = lethe.context(&scope, budget, 60).unwrap();
    assert!(tight.usage.text_tokens + tight.usage.decoder_positions <= budget);
    assert!(tight.pages.len() < pages || tight.pages.iter().any(|p| p.positions < 421));
    for page in &tight.pages {
        assert_eq!(page.image.width, page.mode.page_px());
    }

    let err = lethe
        .context(&scope, hot_tokens.saturating_sub(1), 60)
        .unwrap_err();
    assert!(err.to_string().contains("hot turns"), "{err}");
}

#[test]
fn pinned_pages_keep_their_tier() {
    let dir = tempfile::tempdir().unwrap();
    let mut lethe = memory(dir.path(), 2, step_policy(3));
    let scope = Scope::session("p");
    let turns = sample_turns();
    for (i, turn) in turns.iter().take(30).enumerate() {
        lethe
            .append(&scope, std::slice::from_ref(turn), i as u64)
            .unwrap();
    }
    lethe.maintain(30).unwrap();
    let first = lethe.store().pages(Some(&scope)).unwrap().pages[0].clone();
    lethe.pin(first.id, true).unwrap();
    for (i, turn) in turns.iter().enumerate().skip(30).take(30) {
        lethe
            .append(&scope, std::slice::from_ref(turn), i as u64)
            .unwrap();
        lethe.maintain(i as u64).unwrap();
    }
    let after = lethe.store().page(first.id).unwrap();
    assert_eq!(after.tier, first.tier, "pinned page kept its tier");
    let other = &lethe.store().pages(Some(&scope)).unwrap().pages[1];
    assert_ne!(
        other.tier,
        Tier::At(Mode::Large),
        "unpinned neighbours aged"
    );
}

#[test]
fn a_policy_can_drop_page_text_and_pages_then_decay_by_resampling() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy::from_toml_str(
        "age_from = \"created\"\nfloor = \"tiny\"\ndrop_text = \"small\"\n\
         [curve]\nkind = \"step\"\nafter = [4, 8, 12, 16]\n",
    )
    .unwrap();
    let mut lethe = memory(dir.path(), 2, policy);
    let scope = Scope::session("d");
    let turns = sample_turns();
    for (i, turn) in turns.iter().take(20).enumerate() {
        lethe
            .append(&scope, std::slice::from_ref(turn), i as u64)
            .unwrap();
    }
    lethe.maintain(20).unwrap();
    let pages = lethe.store().pages(Some(&scope)).unwrap().pages;
    assert!(pages.len() >= 3, "{} pages", pages.len());
    let (kept, pinned) = (pages[0].clone(), pages[1].clone());
    lethe.pin(pinned.id, true).unwrap();

    let mut dropped = 0;
    for (i, turn) in turns.iter().enumerate().skip(20).take(20) {
        lethe
            .append(&scope, std::slice::from_ref(turn), i as u64)
            .unwrap();
        dropped += lethe.maintain(i as u64).unwrap().texts_dropped;
    }
    assert!(dropped >= 1);

    // The first page went large -> base -> small (text dropped there) -> tiny (resampled).
    let first = lethe.store().page(kept.id).unwrap();
    assert_eq!(first.tier, Tier::At(Mode::Tiny));
    assert_eq!(first.text, None, "text dropped at small");
    assert!(!kept.layout.pieces.is_empty());
    assert!(
        first.layout.pieces.is_empty(),
        "the page's turn pieces went with its text"
    );
    let history = lethe.history(kept.id).unwrap();
    let reasons: Vec<&str> = history.iter().map(|c| c.reason.as_str()).collect();
    let drop_at = reasons
        .iter()
        .position(|r| r.contains("drops page text at small"))
        .unwrap_or_else(|| panic!("{reasons:?}"));
    assert_eq!(history[drop_at].to, Some(Tier::At(Mode::Small)));
    let png = lethe
        .store()
        .image(kept.id)
        .unwrap()
        .expect("a page without its text stores its image");
    let image = lethe_render::PageImage::from_png(&png).unwrap();
    assert_eq!(image.width, lethe_render::Mode::Tiny.page_px());

    // Recall has no text to return for it, and says so by `None`.
    let recall = lethe.recall(RecallTarget::Page(kept.id), 50).unwrap();
    assert_eq!(recall.pages[0].stored_text, None);

    // A pinned page keeps its tier and its text.
    let pinned_now = lethe.store().page(pinned.id).unwrap();
    assert_eq!(pinned_now.tier, pinned.tier);
    assert_eq!(pinned_now.text, pinned.text);
}

/// Fills a memory with the sample's first `n` turns, maintaining after each.
fn fill(lethe: &mut Lethe, scope: &Scope, n: usize) {
    for (i, turn) in sample_turns().iter().take(n).enumerate() {
        lethe
            .append(scope, std::slice::from_ref(turn), i as u64)
            .unwrap();
        lethe.maintain(i as u64).unwrap();
    }
}

#[test]
fn pages_that_keep_their_text_store_no_image_and_redraw_it_exactly() {
    // The same turns into a store that keeps page text and one that does not.
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let build = |dir: &std::path::Path, retain: bool| {
        Lethe::builder(dir)
            .reader(Reader::None)
            .hot_turns(2)
            .retain_text(retain)
            .policy(step_policy(1_000))
            .build()
            .unwrap()
    };
    let (mut keeps, mut drops) = (build(a.path(), true), build(b.path(), false));
    let scope = Scope::session("redraw");
    fill(&mut keeps, &scope, 40);
    fill(&mut drops, &scope, 40);
    let kept = keeps.store().pages(None).unwrap().pages;
    let stored = drops.store().pages(None).unwrap().pages;
    assert!(kept.len() >= 4, "{} pages", kept.len());
    assert_eq!(kept.len(), stored.len());
    let stats = keeps.store().stats().unwrap();
    assert_eq!(
        stats.blob_files, 0,
        "no image stored for pages that keep their text"
    );
    assert!(drops.store().stats().unwrap().blob_files >= stored.len() as u64);
    // The image drawn again from the text is, pixel for pixel, the image the other store drew at
    // page-out and kept.
    let budget = 1_000_000;
    let ctx = keeps.context(&scope, budget, 40).unwrap();
    for (page, other) in ctx.pages.iter().zip(&stored) {
        let png = drops
            .store()
            .image(other.id)
            .unwrap()
            .expect("stored image");
        let image = lethe_render::PageImage::from_png(&png).unwrap();
        assert_eq!(Tier::At(page.mode), other.tier, "page {}", page.id);
        assert_eq!(
            (page.image.width, page.image.height),
            (image.width, image.height)
        );
        assert!(
            page.image.pixels == image.pixels,
            "page {} redraws differently",
            page.id
        );
    }
}

#[test]
fn maintenance_leaves_every_page_settled_and_due_when_the_policy_says() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy::default();
    let mut lethe = memory(dir.path(), 2, policy.clone());
    let scope = Scope::session("due");
    fill(&mut lethe, &scope, 120);
    let turn = lethe.store().next_turn(&scope).unwrap();
    let pages = lethe.store().pages(None).unwrap().pages;
    assert!(pages.len() >= 8, "{} pages", pages.len());
    let mut moved = 0;
    for p in &pages {
        // What the policy sees (never accessed, so the created stamp and the tier suffice): the
        // tier the policy decided, as the store recorded it, goes back to the policy unchanged.
        let mut state = PageState::new(p.id.0, p.created.turn, p.created.time, p.tier, 0);
        state.tier_access_count = 0;
        let decision = policy.decide(&state, 119, turn).unwrap();
        assert!(
            !decision.changed(),
            "page {} left unsettled: {}",
            p.id,
            decision.reason
        );
        let due = policy.due(&state, 119, turn).unwrap();
        assert_eq!(
            (p.due.turn, p.due.time),
            (due.turn, due.time),
            "page {}",
            p.id
        );
        moved += usize::from(p.tier != policy.ladder().top());
    }
    assert!(moved > 0, "some pages moved down");
    // The next maintenance with no new turn looks at no page.
    let done = lethe.maintain(120).unwrap();
    assert_eq!((done.transitions, done.pages_created), (0, 0));
    // Reopening under another policy makes every page due once; it then settles by that policy.
    drop(lethe);
    let mut lethe = memory(dir.path(), 2, step_policy(5));
    let due = lethe.store().due_pages(&scope, 0).unwrap();
    assert_eq!(
        due.len(),
        pages.len(),
        "every page is due under the new policy"
    );
    let done = lethe.maintain(121).unwrap();
    assert!(done.transitions > 0);
    assert!(lethe.store().due_pages(&scope, turn).unwrap().is_empty());
}

#[test]
fn a_ttl_evicts_pages_and_recall_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy::from_toml_str(
        "ttl_turns = 12
floor = \"tiny\"\n",
    )
    .expect("ttl policy");
    let mut lethe = memory(dir.path(), 2, policy);
    let scope = Scope::session("ttl");
    fill(&mut lethe, &scope, 60);
    let pages = lethe.store().pages(None).unwrap().pages;
    let evicted: Vec<_> = pages.iter().filter(|p| p.tier.is_evicted()).collect();
    assert!(
        !evicted.is_empty(),
        "{:?}",
        pages.iter().map(|p| &p.tier).collect::<Vec<_>>()
    );
    for p in &evicted {
        assert_eq!(lethe.store().image(p.id).unwrap(), None);
        assert!(p.tokens.is_none());
    }
    let recall = lethe.recall(RecallTarget::Page(evicted[0].id), 61).unwrap();
    assert_eq!(recall.pages[0].tier, Tier::Evicted);
    assert_eq!(recall.pages[0].decoded_text, None);
}
