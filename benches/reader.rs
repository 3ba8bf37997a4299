//! The embedded reader end to end: one page of the sample transcript, drawn with the reader's own
//! render profile, encoded and decoded back to text (greedy, to EOS), at each tier it reads.
//!
//! ```sh
//! cargo bench --bench reader
//! ```
//!
//! Issue 12's goal: under 5 s a page on this project's 2-core machine (release).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lethe::{Mode, OcrModel, OcrOptions};
use lethe_render::transcript::{parse, ParseOptions};
use lethe_render::Renderer;

fn bench(c: &mut Criterion) {
    let model = OcrModel::embedded(OcrOptions::default()).expect("embedded reader");
    let profile = model
        .render_profile()
        .cloned()
        .expect("the reader declares its profile");
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/samples/agent-sessions.txt"
    ))
    .expect("sample transcript");
    let turns = parse(&bytes, &ParseOptions::new()).expect("parse").turns;
    let renderer = Renderer::builder()
        .profile(profile)
        .build()
        .expect("renderer");
    let pages = renderer.paginate(&turns[..40]).expect("paginate");
    let page = &pages[pages.len() / 2];
    let mut group = c.benchmark_group("reader");
    group.sample_size(10);
    for mode in [Mode::Base, Mode::Tiny] {
        let image = renderer.rasterize(page, mode);
        group.bench_with_input(BenchmarkId::new("page", mode), &image, |b, image| {
            b.iter(|| {
                model
                    .read(image, mode, None)
                    .expect("read")
                    .generated_tokens
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
