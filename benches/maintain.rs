//! How the per-turn cost of an agent's loop (append one turn, then `maintain`) grows with the
//! history already stored: 100, 1,000, 10,000 and 100,000 turns of the sample transcript, cycled,
//! with the default policy and no model. The goal is a flat curve: maintenance looks only at
//! scopes with new turns and at pages whose due turn has come (the store's due index).
//!
//! ```sh
//! cargo bench --bench maintain                       # every size (building 100k takes minutes)
//! LETHE_BENCH_MAX_TURNS=10000 cargo bench --bench maintain
//! ```

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use lethe::{Lethe, Reader, Scope, Turn};
#[path = "support/sample.rs"]
mod support;
use support::sample;

/// A memory holding `n` turns of the cycled sample, built in chunks (the build is not measured).
fn history(dir: &std::path::Path, turns: &[Turn], n: usize) -> Lethe {
    let mut lethe = Lethe::builder(dir)
        .reader(Reader::None)
        .build()
        .expect("open");
    let scope = Scope::session("bench");
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let part: Vec<Turn> = chunk
            .iter()
            .map(|&i| turns[i % turns.len()].clone())
            .collect();
        let now = chunk[0] as u64 * 60;
        lethe.append(&scope, &part, now).expect("append");
        lethe.maintain(now).expect("maintain");
    }
    let stats = lethe.store().stats().expect("stats");
    eprintln!(
        "history of {n} turns: {} pages, {} hot turns, built in {:.1?}",
        stats.pages,
        stats.hot_turns,
        started.elapsed()
    );
    lethe
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(10))
        .configure_from_args();
    let max: usize = std::env::var("LETHE_BENCH_MAX_TURNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let turns = sample();
    let scope = Scope::session("bench");
    let mut group = c.benchmark_group("maintain");
    group.throughput(Throughput::Elements(1));
    for n in [100, 1_000, 10_000, 100_000]
        .into_iter()
        .filter(|&n| n <= max)
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut lethe = history(dir.path(), &turns, n);
        let mut next = n;
        group.bench_function(BenchmarkId::new("append_and_maintain/history", n), |b| {
            b.iter(|| {
                let turn = &turns[next % turns.len()];
                let now = next as u64 * 60;
                next += 1;
                lethe
                    .append(&scope, std::slice::from_ref(turn), now)
                    .expect("append");
                lethe.maintain(now).expect("maintain")
            })
        });
    }
    group.finish();
    c.final_summary();
}
