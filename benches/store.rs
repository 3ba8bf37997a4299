//! Store benches: page-out (put) of a page, load (get) of a page, and a tier transition, with
//! sync-on-every-write on and off; and, printed once, bytes on disk against the raw data size.
//!
//! A page here is a 1024-px-class PNG stand-in of 96 KiB plus a base-mode token cache
//! (273 positions x 1280 dims, bf16, 699 KB), both stored as blob files; a transition swaps in a
//! 48 KiB image and a small-mode cache (111 x 1280 bf16).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput};
use lethe_memory::{
    Due, Layout, Mode, NewPage, NewTurn, PageId, Scope, Stamp, Store, StoreOptions, Tier,
    TokenCache, Transition,
};

fn fill(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn png(seed: u64, len: usize) -> Vec<u8> {
    [&b"\x89PNG\r\n\x1a\n"[..], &fill(seed, len)].concat()
}

fn tokens(seed: u64, positions: usize) -> TokenCache {
    TokenCache::new(
        vec![positions, 1280],
        "bf16",
        fill(seed, positions * 1280 * 2),
    )
    .expect("valid token cache")
}

fn new_page(seed: u64) -> NewPage {
    NewPage {
        layout: Layout {
            profile: r#"{"mode":"base","font_px":14}"#.into(),
            ..Layout::default()
        },
        tier: Tier::At(Mode::Base),
        text: "user: hello there\nassistant: general kenobi\n".repeat(40),
        image: Some(png(seed, 96 * 1024)),
        tokens: Some(tokens(seed, 273)),
        at: Stamp::new(seed, seed),
        reason: "page-out".into(),
        due: Due::NEVER,
    }
}

fn open(dir: &std::path::Path, sync: bool) -> Store {
    let opts = StoreOptions::builder()
        .path(dir)
        .sync_writes(sync)
        .build()
        .expect("options");
    Store::open_with(opts).expect("open store")
}

/// Appends one turn and pages it out; returns the page id.
fn add_page(store: &Store, scope: &Scope, seed: u64) -> PageId {
    let r = store
        .append(scope, &[NewTurn::new("user", "hello", seed)])
        .expect("append");
    store.page_out(scope, r, new_page(seed)).expect("page out")
}

fn bench(c: &mut Criterion) {
    let page_bytes = {
        let p = new_page(0);
        (p.image.map_or(0, |i| i.len()) + p.tokens.map_or(0, |t| t.bytes.len()) + p.text.len())
            as u64
    };
    for sync in [true, false] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = open(&tmp.path().join("store"), sync);
        let scope = Scope::session("bench");
        let label = if sync { "sync" } else { "nosync" };
        let mut g = c.benchmark_group(format!("store/{label}"));
        g.throughput(Throughput::Bytes(page_bytes));
        g.sample_size(20);
        let mut seed = 1;
        g.bench_function("page_out", |b| {
            b.iter_batched(
                || {
                    seed += 1;
                    let r = store
                        .append(&scope, &[NewTurn::new("user", "hello", seed)])
                        .expect("append");
                    (r, new_page(seed))
                },
                |(r, p)| black_box(store.page_out(&scope, r, p).expect("page out")),
                BatchSize::SmallInput,
            )
        });
        let id = add_page(&store, &scope, 999);
        g.bench_function("load", |b| {
            b.iter(|| black_box(store.load(id).expect("load")))
        });
        let mut step = 0u64;
        g.bench_function("transition", |b| {
            b.iter_batched(
                || {
                    step += 1;
                    let small = step.is_multiple_of(2);
                    Transition {
                        tier: if small {
                            Tier::At(Mode::Small)
                        } else {
                            Tier::At(Mode::Base)
                        },
                        image: Some(png(step, if small { 48 * 1024 } else { 96 * 1024 })),
                        tokens: Some(tokens(step, if small { 111 } else { 273 })),
                        reason: "bench".into(),
                        at: Stamp::new(step, step),
                        due: Due::NEVER,
                    }
                },
                |t| black_box(store.transition(id, t).expect("transition")),
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

/// Prints content bytes, live record bytes and bytes on disk for a store of 200 pages, after
/// page-out and after each of three decays (large -> base -> small -> tiny, fewer bytes each time).
fn disk_report() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("store");
    let store = open(&path, false);
    let scope = Scope::session("disk");
    let n = 200u64;
    let ids: Vec<PageId> = (0..n).map(|i| add_page(&store, &scope, i)).collect();
    let report = |store: &Store, label: &str| {
        store.flush().expect("flush");
        let s = store.stats().expect("stats");
        let content: u64 = s
            .tiers
            .values()
            .map(|t| t.image_bytes + t.token_bytes + t.text_bytes)
            .sum();
        eprintln!(
            "disk report, {n} pages {label}: content {:.1} MB, live records {:.1} MB, on disk {:.1} MB ({:.2}x live)",
            content as f64 / 1e6,
            s.live_bytes as f64 / 1e6,
            s.bytes_on_disk as f64 / 1e6,
            s.bytes_on_disk as f64 / s.live_bytes.max(1) as f64
        );
    };
    report(&store, "at tier base");
    let tiers = [(Mode::Small, 48 * 1024, 111), (Mode::Tiny, 32 * 1024, 73)];
    for (round, (mode, px, positions)) in tiers.into_iter().enumerate() {
        for &id in &ids {
            let seed = id.0 + 10_000 * (round as u64 + 1);
            let t = Transition {
                tier: Tier::At(mode),
                image: Some(png(seed, px)),
                tokens: Some(tokens(seed, positions)),
                reason: "decay".into(),
                at: Stamp::new(seed, seed),
                due: Due::NEVER,
            };
            store.transition(id, t).expect("transition");
        }
        report(&store, &format!("after decay to {mode}"));
    }
    drop(store);
    let store = open(&path, false);
    report(&store, "after reopen");
}

fn main() {
    disk_report();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
