//! Encoder throughput at the REAL DeepSeek-OCR dimensions (SAM-base, CLIP-L, 2048 -> 1280
//! projector) with random weights made here, so no checkpoint is needed.
//!
//! First a direct measurement per mode (median of `LETHE_BENCH_REPS` runs, default 3): seconds
//! per page, pages/s, GFLOP and GFLOP/s per stage, and the process's peak RSS. Then a
//! criterion group over the modes in `LETHE_BENCH_CRITERION` (default `tiny`; a page of
//! `large` takes tens of seconds, and criterion wants ten samples).
//!
//! `cargo bench --bench encode`; `LETHE_BENCH_MODES=tiny,base` limits the direct table.
//!
//! Ratios against PyTorch come from `scripts/side_by_side.py`, which runs the project's PyTorch
//! mirror and `memctl encode` on the same weights and image in one invocation: figures taken on
//! other days or machines are never compared with these.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use criterion::{Criterion, Throughput};
use lethe_encoder::image;
use lethe_encoder::{preprocess, Config, Encoder, Mode};

fn real_config() -> Config {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/deepseek-ocr/real/config.json"
    );
    Config::from_file(path).expect("real config.json")
}

/// Random weights of the real shapes: N(0, 1/fan_in) matrices, norms near 1, small tables.
fn random_encoder(cfg: &Config) -> Encoder {
    let mut map = HashMap::new();
    for (name, shape) in lethe_encoder::weights::checkpoint_tensors(cfg) {
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let t = if name.ends_with("norm1.weight")
            || name.ends_with("norm2.weight")
            || name.contains("layer_norm")
            || name.contains("neck.1.")
            || name.contains("neck.3.")
            || name.contains("pre_layrnorm")
        {
            if name.ends_with("weight") {
                Tensor::ones(shape, DType::F32, &Device::Cpu)
            } else {
                Tensor::zeros(shape, DType::F32, &Device::Cpu)
            }
        } else if shape.len() >= 2 && !name.contains("pos") && !name.contains("position") {
            Tensor::randn(0f32, 1.0 / (fan_in as f32).sqrt(), shape, &Device::Cpu)
        } else {
            Tensor::randn(0f32, 0.02, shape, &Device::Cpu)
        };
        map.insert(name, t.expect("random tensor"));
    }
    Encoder::from_tensors(cfg, map, &Device::Cpu).expect("encoder from random weights")
}

/// A synthetic page: white with dark bars, 1000 x 1400 (gundam gets 2 x 3 tiles).
fn page() -> image::RgbImage {
    image::RgbImage::from_fn(1000, 1400, |x, y| {
        let bar = (y / 20) % 2 == 0 && x % 97 > 10 && y % 20 > 4;
        if bar {
            image::Rgb([20, 20, 20])
        } else {
            image::Rgb([250, 250, 250])
        }
    })
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn modes_from_env(var: &str, default: &str) -> Vec<Mode> {
    std::env::var(var)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().expect("mode name"))
        .collect()
}

fn main() {
    let cfg = real_config();
    let t = Instant::now();
    let encoder = random_encoder(&cfg);
    println!(
        "random real-size encoder built in {:.1} s; peak RSS {:.0} MiB; rayon threads {}",
        t.elapsed().as_secs_f64(),
        peak_rss_mib().unwrap_or(f64::NAN),
        rayon_threads()
    );
    let image = page();
    let reps: usize = std::env::var("LETHE_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    println!(
        "{:<7} {:>9} {:>8} {:>8} {:>9} {:>8} {:>9} {:>8} {:>9}",
        "mode", "s/page", "pages/s", "GFLOP", "GFLOP/s", "SAM s", "SAM GF/s", "CLIP s", "peak MiB"
    );
    for mode in modes_from_env("LETHE_BENCH_MODES", "tiny,small,base,large,gundam") {
        let views = preprocess(&image, mode).expect("preprocess");
        let flops = encoder.flops(&views);
        let mut runs = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            let stages = encoder.encode_stages(&views).expect("encode");
            let wall = t.elapsed().as_secs_f64();
            assert_eq!(stages.image_embeds.dim(0).expect("dim"), views.positions());
            runs.push((wall, stages.timings));
        }
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (wall, tm) = runs[runs.len() / 2];
        println!(
            "{:<7} {:>9.2} {:>8.3} {:>8.0} {:>9.1} {:>8.2} {:>9.1} {:>8.2} {:>9.0}",
            mode.name(),
            wall,
            1.0 / wall,
            flops.total() / 1e9,
            flops.total() / 1e9 / wall,
            tm.sam,
            flops.sam.total() / 1e9 / tm.sam,
            tm.clip,
            peak_rss_mib().unwrap_or(f64::NAN),
        );
        let s = flops.sam;
        println!(
            "        SAM GFLOP: patch {:.1}, linear {:.1}, attention {:.1}, convs {:.1}; CLIP {:.1} GFLOP at {:.1} GFLOP/s; projector+layout {:.3} s",
            s.patch_embed / 1e9,
            s.linear / 1e9,
            s.attention / 1e9,
            s.convs / 1e9,
            flops.clip / 1e9,
            flops.clip / 1e9 / tm.clip,
            tm.projector
        );
    }

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    for mode in modes_from_env("LETHE_BENCH_CRITERION", "tiny") {
        let views = preprocess(&image, mode).expect("preprocess");
        group.bench_function(format!("page/{}", mode.name()), |b| {
            b.iter(|| encoder.encode(&views).expect("encode"))
        });
    }
    group.finish();
    c.final_summary();
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
