//! Quick throughput figures without criterion: rasterise and PNG-encode full pages of the sample
//! transcript in every mode on one thread.
//!
//! `cargo run --release -p lethe-render --example throughput -- [TRANSCRIPT]`

use std::time::Instant;

use lethe_render::transcript::{parse, ParseOptions};
use lethe_render::{Mode, Renderer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "samples/agent-sessions.txt".into());
    let bytes = std::fs::read(&path)?;
    let transcript = parse(&bytes, &ParseOptions::new())?;
    let renderer = Renderer::new()?;
    let t0 = Instant::now();
    let mut pages = renderer.paginate(&transcript.turns)?;
    let paginate_s = t0.elapsed().as_secs_f64();
    pages.pop();
    let chars = pages.iter().map(|p| p.chars).sum::<usize>() / pages.len().max(1);
    println!(
        "{} full pages, {chars} chars/page; paginate {:.1} pages/s ({:.2} MB/s)",
        pages.len(),
        (pages.len() + 1) as f64 / paginate_s,
        bytes.len() as f64 / paginate_s / 1e6
    );
    for mode in Mode::ALL {
        for p in &pages {
            std::hint::black_box(renderer.rasterize(p, mode));
        }
        let rounds = 5;
        let t = Instant::now();
        for _ in 0..rounds {
            for p in &pages {
                std::hint::black_box(renderer.rasterize(p, mode));
            }
        }
        let raster = (rounds * pages.len()) as f64 / t.elapsed().as_secs_f64();
        let images: Vec<_> = pages.iter().map(|p| renderer.rasterize(p, mode)).collect();
        let t = Instant::now();
        let mut bytes = 0;
        for img in &images {
            bytes += img.to_png()?.len();
        }
        let png = images.len() as f64 / t.elapsed().as_secs_f64();
        println!(
            "{mode:>6}: rasterise {raster:7.1} pages/s, PNG encode {png:7.1} pages/s ({} KiB/page)",
            bytes / images.len().max(1) / 1024
        );
    }
    Ok(())
}
