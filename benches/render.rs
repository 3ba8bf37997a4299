//! Render throughput: pages per second per mode, from paginated text (about 1,000 text tokens,
//! ~4,000 characters of English, per page) to an 8-bit pixel buffer; PNG encoding measured beside
//! it, and pagination (shaping) for reference.
//!
//! `cargo bench --bench render` (add `-- --quick` for a short run).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lethe_render::{Mode, Page, Renderer, Turn};

// The render crate's test inputs: the same prose the golden and pagination tests use.
#[path = "../render/tests/common/mod.rs"]
mod common;
use common::prose;

fn pages(renderer: &Renderer) -> Vec<Page> {
    let turns: Vec<Turn> = (0..60)
        .map(|i| {
            Turn::new(
                if i % 2 == 0 { "User" } else { "Assistant" },
                prose(700 + i * 13),
            )
        })
        .collect();
    let mut pages = renderer.paginate(&turns).expect("paginate");
    pages.pop(); // the last page is partly filled
    pages
}

fn bench(c: &mut Criterion) {
    let renderer = Renderer::new().expect("renderer");
    let pages = pages(&renderer);
    let chars: usize = pages.iter().map(|p| p.chars).sum::<usize>() / pages.len();
    eprintln!(
        "{} full pages, {chars} characters per page on average",
        pages.len()
    );

    let mut group = c.benchmark_group("rasterize");
    group.throughput(Throughput::Elements(1));
    for mode in Mode::ALL {
        let mut i = 0;
        // Warm the glyph cache for this mode's sizes.
        for p in &pages {
            std::hint::black_box(renderer.rasterize(p, mode));
        }
        group.bench_with_input(BenchmarkId::from_parameter(mode), &mode, |b, &mode| {
            b.iter(|| {
                i = (i + 1) % pages.len();
                std::hint::black_box(renderer.rasterize(&pages[i], mode))
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("png_encode");
    group.throughput(Throughput::Elements(1));
    for mode in Mode::ALL {
        let img = renderer.rasterize(&pages[0], mode);
        group.bench_with_input(BenchmarkId::from_parameter(mode), &img, |b, img| {
            b.iter(|| std::hint::black_box(img.to_png().expect("png")))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("paginate");
    let turns: Vec<Turn> = (0..8)
        .map(|i| Turn::new(if i % 2 == 0 { "User" } else { "Assistant" }, prose(1000)))
        .collect();
    group.throughput(Throughput::Bytes(
        turns.iter().map(|t| t.text.len() as u64).sum(),
    ));
    group.bench_function("8k_chars", |b| {
        b.iter(|| std::hint::black_box(renderer.paginate(&turns).expect("paginate")))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
