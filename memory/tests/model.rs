//! Model-based property test: random operation sequences applied to the store and to a plain
//! `BTreeMap` reference must agree after every step, reopens included.

use std::collections::BTreeMap;

use lethe_memory::{
    BlobId, Checksum, Due, Error, Layout, Mode, NewPage, NewTurn, PageId, PageRecord, Piece, Scope,
    Stamp, Store, StoreOptions, Tier, TierChange, TokenCache, TokenMeta, Transition, TurnRange,
    TurnRecord,
};
use proptest::prelude::*;

#[path = "../../tests/support/fuzz_runner.rs"]
mod fuzz_runner;

const LADDER: [Tier; 4] = [
    Tier::At(Mode::Large),
    Tier::At(Mode::Base),
    Tier::At(Mode::Small),
    Tier::At(Mode::Tiny),
];

fn scopes() -> [Scope; 3] {
    [
        Scope::session("a"),
        Scope::session("a").with_user("u"),
        Scope::session("b").with_user("u").with_agent("x"),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        scope: usize,
        n: usize,
    },
    PageOut {
        scope: usize,
        n: u64,
        split: usize,
        tokens: bool,
        image: bool,
    },
    Decay {
        page: usize,
        tier: u8,
        tokens: bool,
        image: bool,
    },
    SetDue {
        page: usize,
        due: Due,
    },
    Pin {
        page: usize,
        pinned: bool,
    },
    Access {
        page: usize,
    },
    DropText {
        page: usize,
    },
    Delete {
        page: usize,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 1..4usize).prop_map(|(scope, n)| Op::Append { scope, n }),
        3 => (0..3usize, 1..5u64, prop_oneof![3 => Just(1usize), 1 => 2..4usize], any::<bool>(), any::<bool>())
            .prop_map(|(scope, n, split, tokens, image)| Op::PageOut { scope, n, split, tokens, image }),
        3 => (any::<usize>(), 0..4u8, any::<bool>(), any::<bool>())
            .prop_map(|(page, tier, tokens, image)| Op::Decay { page, tier, tokens, image }),
        2 => (any::<usize>(), due()).prop_map(|(page, due)| Op::SetDue { page, due }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(page, pinned)| Op::Pin { page, pinned }),
        2 => any::<usize>().prop_map(|page| Op::Access { page }),
        1 => any::<usize>().prop_map(|page| Op::DropText { page }),
        1 => any::<usize>().prop_map(|page| Op::Delete { page }),
        1 => Just(Op::Reopen),
    ]
}

fn due() -> impl Strategy<Value = Due> {
    (
        proptest::option::of(0u64..80),
        proptest::option::of(0u64..4_000),
    )
        .prop_map(|(turn, time)| Due { turn, time })
}

fn png(seed: u64, len: usize) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend((0..len as u64).map(|i| (seed.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8));
    v
}

fn tokens(seed: u64, tier: u8) -> TokenCache {
    let n = [20usize, 12, 6, 3][usize::from(tier)];
    let bytes = (0..n * 4 * 2).map(|i| (seed as usize + i) as u8).collect();
    TokenCache::new(vec![n, 4], "f16", bytes).expect("valid token cache")
}

#[derive(Debug, Clone, PartialEq)]
struct ModelPage {
    record: PageRecord,
    image: Option<Vec<u8>>,
    tokens: Option<TokenCache>,
}

#[derive(Default)]
struct Model {
    next_turn: BTreeMap<Scope, u64>,
    turns: BTreeMap<(Scope, u64), TurnRecord>,
    pages: BTreeMap<PageId, ModelPage>,
    history: BTreeMap<(PageId, u64), TierChange>,
    next_page: u64,
    clock: u64,
}

fn crc(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}

fn meta(t: Option<&TokenCache>) -> Option<TokenMeta> {
    t.map(|t| TokenMeta {
        shape: t.shape.clone(),
        dtype: t.dtype.clone(),
        len: t.bytes.len() as u64,
        blob: Some(BlobId::of(&t.bytes)),
    })
}

/// Sets the model record's image fields as the store does.
fn set_image(record: &mut PageRecord, image: Option<&[u8]>) {
    record.image_len = image.map_or(0, |i| i.len() as u64);
    record.image_blob = image.map(BlobId::of);
    record.checksum.image = image.map(crc);
}

/// The kind of failure an operation met, compared between store and model.
#[derive(Debug, PartialEq)]
enum Outcome {
    Ok,
    NotFound,
    TurnMissing,
}

fn outcome<T>(r: lethe_memory::Result<T>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ok,
        Err(Error::PageNotFound(_)) => Outcome::NotFound,
        Err(Error::TurnMissing { .. }) => Outcome::TurnMissing,
        Err(e) => panic!("unexpected store error: {e}"),
    }
}

fn open(dir: &std::path::Path) -> Store {
    let opts = StoreOptions::builder()
        .path(dir)
        .sync_writes(false)
        .build()
        .expect("options");
    Store::open_with(opts).expect("open store")
}

impl Model {
    /// Every page id ever made (deleted ones included, so ops on them must fail alike).
    fn pick(&self, sel: usize) -> Option<PageId> {
        (self.next_page > 0).then(|| PageId(sel as u64 % self.next_page))
    }

    fn log(
        &mut self,
        page: PageId,
        seq: u64,
        from: Option<Tier>,
        to: Option<Tier>,
        reason: &str,
        at: Stamp,
    ) {
        self.history.insert(
            (page, seq),
            TierChange {
                page,
                seq,
                from,
                to,
                reason: reason.into(),
                at,
            },
        );
    }
}

fn apply(store: &Store, m: &mut Model, op: &Op) {
    m.clock += 1;
    let at = Stamp::new(m.clock, m.clock * 60);
    match *op {
        Op::Append { scope, n } => {
            let s = &scopes()[scope];
            let turns: Vec<NewTurn> = (0..n)
                .map(|i| {
                    let t = NewTurn::new(
                        if i % 2 == 0 { "user" } else { "assistant" },
                        format!("turn {} {i} héllo", m.clock),
                        m.clock,
                    );
                    // Some turns carry a session and a time label, most do not.
                    match (m.clock + i as u64) % 3 {
                        0 => t.with_session(format!("Session {}", m.clock / 10)),
                        1 => t.with_session("S · 2026").with_time_label("10:02"),
                        _ => t,
                    }
                })
                .collect();
            let got = store.append(s, &turns).expect("append");
            let start = m.next_turn.get(s).copied().unwrap_or(0);
            assert_eq!(
                got,
                TurnRange {
                    start,
                    end: start + n as u64
                }
            );
            for (i, t) in turns.into_iter().enumerate() {
                let index = start + i as u64;
                m.turns.insert(
                    (s.clone(), index),
                    TurnRecord {
                        index,
                        speaker: t.speaker,
                        text: t.text,
                        timestamp: t.timestamp,
                        session: t.session,
                        time_label: t.time_label,
                    },
                );
            }
            m.next_turn.insert(s.clone(), start + n as u64);
        }
        Op::PageOut {
            scope,
            n,
            split,
            tokens: with_tokens,
            image: with_image,
        } => {
            let s = &scopes()[scope];
            // Page out the n oldest hot turns (or a range past them, which must fail).
            let start = m
                .turns
                .keys()
                .find(|(sc, _)| sc == s)
                .map(|(_, i)| *i)
                .unwrap_or_else(|| m.next_turn.get(s).copied().unwrap_or(0));
            let range = TurnRange {
                start,
                end: start + n,
            };
            // One page, or a long range split over several pages (page_out_many).
            let made: Vec<(NewPage, Option<TokenCache>)> = (0..split)
                .map(|k| {
                    // Seeds repeat, so pages share blobs now and then.
                    let seed = (m.clock * 10 + k as u64) % 23;
                    let toks = with_tokens.then(|| tokens(seed, 0));
                    let text = format!("page {k} of {}..{}", range.start, range.end);
                    // Half the pages are made of turn pieces (dropped with the text).
                    let pieces = match k % 2 {
                        0 => vec![Piece {
                            speaker: "user".into(),
                            len: text.len() as u64,
                            ..Piece::default()
                        }],
                        _ => Vec::new(),
                    };
                    let page = NewPage {
                        layout: Layout {
                            profile: r#"{"mode":"large"}"#.into(),
                            size: [1024, 1024],
                            text_tokens: seed,
                            page_text_crc: 7,
                            pieces,
                        },
                        tier: LADDER[0],
                        text,
                        image: with_image.then(|| png(seed, 40 + seed as usize % 50)),
                        tokens: toks.clone(),
                        at,
                        reason: "page-out".into(),
                        due: Due {
                            turn: Some(m.clock + k as u64),
                            time: (k % 2 == 1).then_some(m.clock * 60),
                        },
                    };
                    (page, toks)
                })
                .collect();
            let pages: Vec<NewPage> = made.iter().map(|(p, _)| p.clone()).collect();
            let res = if split == 1 {
                store
                    .page_out(s, range, pages[0].clone())
                    .map(|id| vec![id])
            } else {
                store.page_out_many(s, range, pages)
            };
            let present = (range.start..range.end).all(|i| m.turns.contains_key(&(s.clone(), i)));
            if !present {
                assert_eq!(outcome(res), Outcome::TurnMissing);
                return;
            }
            let ids = res.expect("page-out");
            let want: Vec<PageId> = (m.next_page..m.next_page + split as u64)
                .map(PageId)
                .collect();
            assert_eq!(ids, want);
            m.next_page += split as u64;
            for i in range.start..range.end {
                m.turns.remove(&(s.clone(), i));
            }
            for (id, (page, toks)) in ids.into_iter().zip(made) {
                let mut record = PageRecord {
                    id,
                    scope: s.clone(),
                    turns: range,
                    layout: page.layout,
                    tier: page.tier,
                    created: at,
                    last_access: at,
                    access_count: 0,
                    pinned: false,
                    text: Some(page.text.clone()),
                    image_len: 0,
                    image_blob: None,
                    tokens: meta(toks.as_ref()),
                    checksum: Checksum {
                        image: None,
                        tokens: toks.as_ref().map(|t| crc(&t.bytes)),
                        text: Some(crc(page.text.as_bytes())),
                    },
                    changes: 1,
                    tier_since: Some(at),
                    due: page.due,
                };
                set_image(&mut record, page.image.as_deref());
                m.pages.insert(
                    id,
                    ModelPage {
                        record,
                        image: page.image,
                        tokens: toks,
                    },
                );
                m.log(id, 0, None, Some(page.tier), "page-out", at);
            }
        }
        Op::Decay {
            page,
            tier,
            tokens: with_tokens,
            image: with_image,
        } => {
            let Some(id) = m.pick(page) else { return };
            let image = with_image.then(|| png(m.clock % 5, 30 + usize::from(tier) * 5));
            let toks = with_tokens.then(|| tokens(m.clock % 3, tier));
            let new_tier = LADDER[usize::from(tier)];
            let due = Due {
                turn: None,
                time: Some(m.clock * 60 + 600),
            };
            let res = store.transition(
                id,
                Transition {
                    tier: new_tier,
                    image: image.clone(),
                    tokens: toks.clone(),
                    reason: format!("decay to {tier}"),
                    at,
                    due,
                },
            );
            let Some(p) = m.pages.get_mut(&id) else {
                assert_eq!(outcome(res), Outcome::NotFound);
                return;
            };
            let old_tier = p.record.tier;
            let seq = p.record.changes;
            p.record.tier = new_tier;
            set_image(&mut p.record, image.as_deref());
            p.record.tokens = meta(toks.as_ref());
            p.record.checksum.tokens = toks.as_ref().map(|t| crc(&t.bytes));
            p.record.changes += 1;
            p.record.tier_since = Some(at);
            p.record.due = due;
            p.image = image;
            p.tokens = toks;
            assert_eq!(res.expect("transition"), p.record);
            m.log(
                id,
                seq,
                Some(old_tier),
                Some(new_tier),
                &format!("decay to {tier}"),
                at,
            );
        }
        Op::Pin { page, pinned } => {
            let Some(id) = m.pick(page) else { return };
            let res = store.set_pinned(id, pinned);
            match m.pages.get_mut(&id) {
                None => assert_eq!(outcome(res), Outcome::NotFound),
                Some(p) => {
                    p.record.pinned = pinned;
                    p.record.due = Due::NOW;
                    assert_eq!(res.expect("pin"), p.record);
                }
            }
        }
        Op::Access { page } => {
            let Some(id) = m.pick(page) else { return };
            let res = store.record_access(id, at);
            match m.pages.get_mut(&id) {
                None => assert_eq!(outcome(res), Outcome::NotFound),
                Some(p) => {
                    p.record.access_count += 1;
                    p.record.last_access = at;
                    p.record.due = Due::NOW;
                    assert_eq!(res.expect("access"), p.record);
                }
            }
        }
        Op::DropText { page } => {
            let Some(id) = m.pick(page) else { return };
            // Most drops store an image drawn before the text goes.
            let image = (page % 3 != 0).then(|| png(m.clock % 4, 33));
            let res = store.drop_text(id, image.clone(), "policy drops text", at);
            let Some(p) = m.pages.get_mut(&id) else {
                assert_eq!(outcome(res), Outcome::NotFound);
                return;
            };
            if p.record.text.is_some() {
                p.record.layout.pieces.clear();
                if image.is_some() {
                    set_image(&mut p.record, image.as_deref());
                    p.image = image;
                }
                p.record.text = None;
                p.record.checksum.text = None;
                let seq = p.record.changes;
                p.record.changes += 1;
                let t = p.record.tier;
                assert_eq!(res.expect("drop text"), m.pages[&id].record);
                m.log(id, seq, Some(t), Some(t), "policy drops text", at);
            } else {
                assert_eq!(res.expect("drop text"), p.record);
            }
        }
        Op::Delete { page } => {
            let Some(id) = m.pick(page) else { return };
            let res = store.delete(id, "evicted", at);
            match m.pages.remove(&id) {
                None => assert_eq!(outcome(res), Outcome::NotFound),
                Some(p) => {
                    res.expect("delete");
                    m.log(
                        id,
                        p.record.changes,
                        Some(p.record.tier),
                        None,
                        "evicted",
                        at,
                    );
                }
            }
        }
        Op::SetDue { page, due } => {
            let Some(id) = m.pick(page) else { return };
            let res = store.set_due(id, due);
            match m.pages.get_mut(&id) {
                None => assert_eq!(outcome(res), Outcome::NotFound),
                Some(p) => {
                    p.record.due = due;
                    assert_eq!(res.expect("set due"), p.record);
                }
            }
        }
        // Handled by the caller, which owns the store.
        Op::Reopen => {}
    }
}

fn check(store: &Store, m: &Model) {
    // Scopes and hot turns.
    let mut got_scopes = store.scopes().expect("scopes");
    got_scopes.sort();
    let want_scopes: Vec<Scope> = m.next_turn.keys().cloned().collect();
    assert_eq!(got_scopes, want_scopes);
    for s in &want_scopes {
        assert_eq!(store.next_turn(s).expect("next turn"), m.next_turn[s]);
        let want: Vec<TurnRecord> = m
            .turns
            .iter()
            .filter(|((sc, _), _)| sc == s)
            .map(|(_, t)| t.clone())
            .collect();
        assert_eq!(store.hot_turns(s).expect("hot turns"), want);
        let listing = store.pages(Some(s)).expect("scope listing");
        assert!(listing.corrupt.is_empty());
        let want: Vec<PageRecord> = m
            .pages
            .values()
            .filter(|p| &p.record.scope == s)
            .map(|p| p.record.clone())
            .collect();
        assert_eq!(listing.pages, want);
    }
    // Pages, in full.
    let listing = store.pages(None).expect("listing");
    assert!(listing.corrupt.is_empty(), "{:?}", listing.corrupt);
    let want: Vec<PageRecord> = m.pages.values().map(|p| p.record.clone()).collect();
    assert_eq!(listing.pages, want);
    for (id, p) in &m.pages {
        let page = store.load(*id).expect("load");
        assert_eq!(page.record, p.record);
        assert_eq!(page.image, p.image);
        assert_eq!(page.tokens, p.tokens);
    }
    // Audit log, per page and whole.
    let log: Vec<TierChange> = m.history.values().cloned().collect();
    assert_eq!(store.audit_log().expect("audit log"), log);
    for id in (0..m.next_page).map(PageId) {
        let want: Vec<TierChange> = m
            .history
            .range((id, 0)..=(id, u64::MAX))
            .map(|(_, e)| e.clone())
            .collect();
        assert_eq!(store.history(id).expect("history"), want);
    }
    assert!(matches!(
        store.history(PageId(m.next_page)),
        Err(Error::PageNotFound(_))
    ));
    let problems = store.verify().expect("verify");
    assert!(problems.is_empty(), "{problems:?}");
    // The due indexes list exactly the pages due by the model's records.
    for s in &want_scopes {
        for turn in [0, 5, 40, 79, u64::MAX] {
            let want: Vec<PageId> = m
                .pages
                .values()
                .filter(|p| &p.record.scope == s && p.record.due.turn.is_some_and(|t| t <= turn))
                .map(|p| p.record.id)
                .collect();
            let mut got = store.due_pages(s, turn).expect("due pages");
            got.sort();
            assert_eq!(got, want, "due by turn {turn} in {s}");
        }
    }
    for now in [0, 600, 3_999, u64::MAX] {
        let want: Vec<PageId> = m
            .pages
            .values()
            .filter(|p| p.record.due.time.is_some_and(|t| t <= now))
            .map(|p| p.record.id)
            .collect();
        let mut got = store.due_by_time(now).expect("due by time");
        got.sort();
        assert_eq!(got, want, "due by time {now}");
    }
    let stats = store.stats().expect("stats");
    assert_eq!(stats.pages, m.pages.len() as u64);
    assert_eq!(stats.hot_turns, m.turns.len() as u64);
    assert_eq!(stats.history_entries, m.history.len() as u64);
    assert_eq!(stats.scopes, m.next_turn.len() as u64);
    let tier_pages: u64 = stats.tiers.values().map(|t| t.pages).sum();
    assert_eq!(tier_pages, stats.pages);
    // One file per distinct blob the pages name, and nothing else.
    let mut blobs: Vec<Vec<u8>> = m
        .pages
        .values()
        .flat_map(|p| {
            p.image
                .iter()
                .cloned()
                .chain(p.tokens.iter().map(|t| t.bytes.clone()))
        })
        .collect();
    blobs.sort();
    blobs.dedup();
    assert_eq!(stats.blob_files, blobs.len() as u64);
    assert_eq!(
        stats.made_of.images + stats.made_of.tokens,
        blobs.iter().map(|b| b.len() as u64).sum::<u64>()
    );
    assert_eq!(
        stats.bytes_on_disk,
        stats.engine_bytes_on_disk + stats.blob_bytes_on_disk
    );
}

proptest! {
    #![proptest_config(fuzz_runner::config("store model", 48))]

    #[test]
    fn store_agrees_with_btreemap_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let mut store = open(&path);
        let mut model = Model::default();
        for op in &ops {
            if let Op::Reopen = op {
                store.close().expect("close");
                store = open(&path);
            } else {
                apply(&store, &mut model, op);
            }
            check(&store, &model);
        }
        // And once more from disk, with a round trip through export and import.
        drop(store);
        let store = open(&path);
        check(&store, &model);
        let export = dir.path().join("export");
        store.export(&export).expect("export");
        let copy = open(&dir.path().join("copy"));
        copy.import(&export).expect("import");
        check(&copy, &model);
        let export2 = dir.path().join("export2");
        copy.export(&export2).expect("re-export");
        assert_same_tree(&export, &export2);
    }
}

fn assert_same_tree(a: &std::path::Path, b: &std::path::Path) {
    let list = |root: &std::path::Path| {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("read dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
                    out.insert(rel, std::fs::read(&p).expect("read"));
                }
            }
        }
        out
    };
    assert_eq!(list(a), list(b));
}

/// Reads take no lock: a reader on another thread may find the blob its record named already
/// replaced by a writer's tier change. It must then read the new record, never fail.
#[test]
fn readers_on_other_threads_never_miss_a_blob_a_writer_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("store"));
    let scope = Scope::session("threads");
    let r = store
        .append(&scope, &[NewTurn::new("user", "hi", 0)])
        .expect("append");
    let id = store
        .page_out(
            &scope,
            r,
            NewPage {
                layout: Layout::default(),
                tier: LADDER[0],
                text: "hi".into(),
                image: Some(png(0, 2_000)),
                tokens: Some(tokens(0, 0)),
                at: Stamp::new(0, 0),
                reason: "page-out".into(),
                due: Due::NEVER,
            },
        )
        .expect("page out");
    let done = std::sync::atomic::AtomicBool::new(false);
    let reads = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let page = store.load(id).expect("a read never fails mid-swap");
                    assert!(page.image.is_some() && page.tokens.is_some());
                    reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        for step in 1..=300u64 {
            let tier = (step % 4) as u8;
            store
                .transition(
                    id,
                    Transition {
                        tier: LADDER[usize::from(tier)],
                        image: Some(png(step, 2_000)),
                        tokens: Some(tokens(step, tier)),
                        reason: "swap".into(),
                        at: Stamp::new(step, step),
                        due: Due::NEVER,
                    },
                )
                .expect("transition");
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(reads.into_inner() > 0);
    assert!(store.verify().expect("verify").is_empty());
}
