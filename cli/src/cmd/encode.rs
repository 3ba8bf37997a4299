//! `memctl encode`: one image to DeepSeek-OCR vision tokens.
//!
//! Loads the encoder from a checkpoint folder, preprocesses the image for the chosen mode,
//! encodes it, prints the number of decoder positions, the output shape and the timings, and
//! optionally writes the token sequence to a safetensors file (one tensor, `image_embeds`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;

use super::common::parse_mode;
use lethe_encoder::{load_image, preprocess, Encoder, Mode};

/// Arguments of `memctl encode`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image to encode (PNG or JPEG; EXIF orientation is applied).
    pub image: PathBuf,
    /// Resolution mode: tiny, small, base, large or gundam.
    #[arg(long, default_value = "base", value_parser = parse_mode)]
    pub mode: Mode,
    /// Folder of a DeepSeek-OCR checkpoint (config.json and *.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// Write the token sequence here as a safetensors file with one tensor, `image_embeds`,
    /// of shape [positions, hidden].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Encode the image this many times in one process and report the median of every run
    /// but the first: a warm measurement, with caches and the allocator as a long-running
    /// process has them (the side-by-side bench times both sides so). 1 reports the one, cold,
    /// run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `memctl encode`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let encoder = Encoder::builder()
        .model_dir(&args.model)
        .build()
        .with_context(|| format!("loading the encoder from {}", args.model.display()))?;
    let load_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let image = load_image(&args.image)
        .with_context(|| format!("reading the image {}", args.image.display()))?;
    let views = preprocess(&image, args.mode).with_context(|| {
        format!(
            "preprocessing {} for mode {}",
            args.image.display(),
            args.mode
        )
    })?;
    let preprocess_s = t1.elapsed().as_secs_f64();

    let mut runs = Vec::with_capacity(args.repeat as usize);
    let mut tokens = None;
    for _ in 0..args.repeat {
        let t2 = Instant::now();
        let stages = encoder
            .encode_stages(&views)
            .with_context(|| format!("encoding {}", args.image.display()))?;
        runs.push((t2.elapsed().as_secs_f64(), stages.timings));
        tokens = Some(stages.image_embeds);
    }
    let tokens = tokens.expect("--repeat is at least 1");
    let encode_runs: Vec<f64> = runs.iter().map(|r| r.0).collect();
    // The run of median encode time among the warm ones (all of them when there is one), so
    // the stage timings printed add up to the encode time printed.
    let mut warm: Vec<_> = runs.iter().skip(usize::from(runs.len() > 1)).collect();
    warm.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (encode_s, timings) = *warm[warm.len() / 2];
    let flops = encoder.flops(&views);
    let shape = tokens.dims().to_vec();

    if let Some(out) = &args.out {
        let map = HashMap::from([("image_embeds".to_owned(), tokens.clone())]);
        candle_core::safetensors::save(&map, out)
            .with_context(|| format!("writing {}", out.display()))?;
    }

    if args.json {
        let v = serde_json::json!({
            "image": args.image,
            "mode": args.mode.name(),
            "positions": shape[0],
            "shape": shape,
            "tiles": views.tiles.len(),
            "tile_grid": [views.tile_grid.0, views.tile_grid.1],
            "timing_s": {
                "load": load_s,
                "preprocess": preprocess_s,
                "encode": encode_s,
                "sam": timings.sam,
                "clip": timings.clip,
                "projector": timings.projector,
            },
            "warm": runs.len() > 1,
            "encode_runs_s": encode_runs,
            "gflop": {
                "sam": flops.sam.total() / 1e9,
                "clip": flops.clip / 1e9,
                "projector": flops.projector / 1e9,
            },
            "out": args.out,
        });
        println!("{v}");
    } else {
        println!("image      {}", args.image.display());
        println!("mode       {}", args.mode);
        if !views.tiles.is_empty() {
            println!(
                "tiles      {} ({} x {})",
                views.tiles.len(),
                views.tile_grid.0,
                views.tile_grid.1
            );
        }
        println!("positions  {}", shape[0]);
        println!("shape      {shape:?}");
        let kind = if runs.len() > 1 {
            format!(" (median of {} warm runs)", runs.len() - 1)
        } else {
            String::new()
        };
        println!(
            "timing     load {load_s:.3} s, preprocess {preprocess_s:.3} s, encode {encode_s:.3} s{kind}"
        );
        println!(
            "stages     sam {:.3} s ({:.1} GFLOP/s), clip {:.3} s ({:.1} GFLOP/s), projector {:.3} s",
            timings.sam,
            flops.sam.total() / 1e9 / timings.sam.max(1e-9),
            timings.clip,
            flops.clip / 1e9 / timings.clip.max(1e-9),
            timings.projector
        );
        if let Some(out) = &args.out {
            println!("written    {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
