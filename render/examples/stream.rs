//! Streams a transcript file to PNG pages with bounded memory, the way `memctl render` does.
//!
//! `cargo run -p lethe-render --example stream -- TRANSCRIPT MODE [OUT_DIR]`; without `OUT_DIR` the
//! PNGs are encoded but not written (for measuring). Prints pages, characters and missing glyphs.

use std::io::BufReader;

use lethe_render::transcript::{ParseOptions, TurnReader};
use lethe_render::{Mode, Renderer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let input = args
        .next()
        .ok_or("usage: stream TRANSCRIPT MODE [OUT_DIR]")?;
    let mode: Mode = args.next().unwrap_or_else(|| "base".into()).parse()?;
    let out = args.next().map(std::path::PathBuf::from);
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir)?;
    }
    let renderer = Renderer::new()?;
    let reader = BufReader::with_capacity(256 * 1024, std::fs::File::open(&input)?);
    let turns = TurnReader::new(reader, &ParseOptions::new())?;
    let t0 = std::time::Instant::now();
    let (mut pages, mut chars, mut missing, mut png_bytes) = (0usize, 0usize, 0usize, 0usize);
    for page in renderer.pages(turns) {
        let page = page?;
        let png = renderer.rasterize(&page, mode).to_png()?;
        png_bytes += png.len();
        if let Some(dir) = &out {
            std::fs::write(dir.join(format!("page-{:04}.png", page.index + 1)), &png)?;
        }
        pages += 1;
        chars += page.chars;
        missing += page.missing_glyphs;
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{pages} pages, {chars} chars, {missing} missing glyphs, {png_bytes} PNG bytes, {s:.1} s ({:.1} pages/s)",
        pages as f64 / s
    );
    Ok(())
}
