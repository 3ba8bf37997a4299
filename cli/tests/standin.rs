//! Opt-in: `memctl ocr` on a full-size stand-in of the DeepSeek-OCR checkpoint (the real config,
//! tensor names and shapes, bf16 in one shard named as the real one, seeded random weights; made
//! by `training/make_standin.py`). It needs about 7 GB of disk and 9 GB of memory, so it runs
//! only when asked: `scripts/standin.sh` makes the stand-in and runs it.
//!
//! It checks what a user who downloads the checkpoint meets first: the folder loads, a base page
//! encodes and decodes with the decoder in f32 and in q8_0, and memory stays at the weights kept
//! (f32: the decoder's bf16 kept as stored, the encoder widened; q8_0: the quantised decoder)
//! rather than the weights plus the file.

mod support;

use std::path::PathBuf;

use support::{fixtures, memctl};

/// Peak resident memory of the children this process waited for, in bytes.
fn children_peak_rss() -> u64 {
    // SAFETY: `getrusage` writes one `rusage` into the zeroed struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage.ru_maxrss as u64 * 1024
    }
}

#[test]
#[ignore = "needs a full-size stand-in (7 GB of disk, 9 GB of memory): scripts/standin.sh"]
fn a_full_size_checkpoint_loads_and_reads_within_its_weights_memory() {
    let dir: PathBuf = std::env::var("LETHE_STANDIN_DIR")
        .expect("set LETHE_STANDIN_DIR to a folder made by training/make_standin.py")
        .into();
    let weights = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .map(|e| e.metadata().unwrap().len())
        .sum::<u64>();
    // bf16 on disk. In f32 the decoder keeps its weights in their 16 bits (products in f32) and
    // the encoder (0.4 B parameters, 1.6 GB) widens its own: the file's size plus the encoder's
    // second half and about 1 GB for activations and the widest weight being packed.
    let encoder_f32_extra = 800_000_000u64;
    // q8_0 first: the peak of the children only grows, so the smaller run is measured alone.
    for (quant, limit) in [
        ("q8_0", 8_000_000_000u64),
        ("none", weights + encoder_f32_extra + 1_000_000_000),
    ] {
        let out = memctl()
            .arg("ocr")
            .arg(fixtures().join("inputs/doc_900x1400.png"))
            .args([
                "--mode",
                "base",
                "--max-tokens",
                "16",
                "--json",
                "--quant",
                quant,
            ])
            .arg("--model")
            .arg(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "{quant}: exit {:?}: {stderr}",
            out.status.code()
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let peak = children_peak_rss();
        eprintln!(
            "{quant}: peak RSS {:.2} GB, load {:.1} s, encode {:.1} s, prefill {:.2} s, {:.1} tokens/s",
            peak as f64 / 1e9,
            v["timings"]["load_secs"].as_f64().unwrap_or(0.0),
            v["timings"]["encode_secs"].as_f64().unwrap_or(0.0),
            v["timings"]["prefill_secs"].as_f64().unwrap_or(0.0),
            v["timings"]["decode_tokens_per_sec"].as_f64().unwrap_or(0.0),
        );
        assert_eq!(v["generated_tokens"], 16, "{quant}");
        assert!(
            peak <= limit,
            "{quant}: peak RSS {peak} bytes > {limit}: a second copy of the weights?"
        );
    }
}
