//! End-to-end `compress` of the sample transcript through the facade (no model: render, store,
//! policy), and how it scales with transcript length.
//!
//! ```sh
//! cargo bench --bench compress
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lethe::{Lethe, Reader, Scope, Turn};
#[path = "support/sample.rs"]
mod support;
use support::sample;

fn compress(turns: &[Turn]) -> u64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut lethe = Lethe::builder(dir.path())
        .reader(Reader::None)
        .build()
        .expect("open");
    let scope = Scope::session("bench");
    for (i, turn) in turns.iter().enumerate() {
        let now = i as u64 * 60;
        lethe
            .append(&scope, std::slice::from_ref(turn), now)
            .expect("append");
        lethe.maintain(now).expect("maintain");
    }
    lethe.report().expect("report").total.pages
}

fn bench(c: &mut Criterion) {
    let turns = sample();
    let mut group = c.benchmark_group("compress");
    group.sample_size(10);
    for share in [4, 2, 1] {
        let n = turns.len() / share;
        let part = &turns[..n];
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("turns", n), part, |b, part| {
            b.iter(|| compress(part))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
