//! `memctl encode` end to end on the tiny parity fixture, plus its error paths, and an opt-in
//! run of the real checkpoint (`LETHE_DEEPSEEK_OCR_DIR`).

mod support;
use support::{fixtures, memctl};

/// `memctl encode --json` of the card fixture at tiny with the parity fixture's weights and
/// `extra` arguments; fails the test unless it succeeds, and returns the JSON it printed.
fn encode_card_tiny(extra: &[&str]) -> serde_json::Value {
    let res = memctl()
        .arg("encode")
        .arg(fixtures().join("inputs/card_500x400.png"))
        .args(["--mode", "tiny", "--json", "--model"])
        .arg(fixtures().join("tiny"))
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn encode_writes_reference_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tokens.safetensors");
    let out_arg = out.to_str().unwrap();
    let v = encode_card_tiny(&["--out", out_arg]);
    assert_eq!(v["positions"], 73);
    assert_eq!(v["shape"], serde_json::json!([73, 64]));

    let got = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    assert_eq!(got.len(), 1);
    let diff = max_diff(&out, &fixtures().join("cases/card_tiny.safetensors"));
    assert!(diff <= 1e-4, "image_embeds max abs diff {diff:e}");
}

/// The largest absolute difference between two `--out` files' `image_embeds`.
fn max_diff(a: &std::path::Path, b: &std::path::Path) -> f32 {
    let load = |p| candle_core::safetensors::load(p, &candle_core::Device::Cpu).unwrap();
    let (a, b) = (load(a), load(b));
    (&a["image_embeds"] - &b["image_embeds"])
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn encode_with_bf16_weights_keeps_parity_on_every_kernel() {
    // Checkpoints hold bf16 weights, and where the CPU has AMX their products run on its tiles
    // (the kernels' `amx` module), which sum in another order than the f32 kernels. The tiny
    // fixture's weights rounded to bf16, encoded with the default kernels and with the f32
    // ones forced: the embeddings must agree within the parity tolerance (1e-4). Without AMX
    // both runs take the same kernels and agree exactly.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(
        fixtures().join("tiny/config.json"),
        model.join("config.json"),
    )
    .unwrap();
    let weights = candle_core::safetensors::load(
        fixtures().join("tiny/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let rounded: std::collections::HashMap<String, candle_core::Tensor> = weights
        .into_iter()
        .map(|(name, t)| {
            let r = if t.dtype() == candle_core::DType::F32 {
                t.to_dtype(candle_core::DType::BF16)
                    .and_then(|b| b.to_dtype(candle_core::DType::F32))
                    .unwrap()
            } else {
                t
            };
            (name, r)
        })
        .collect();
    candle_core::safetensors::save(&rounded, model.join("model.safetensors")).unwrap();
    let encode = |kernel: &str| {
        let out = dir.path().join(format!("{kernel}.safetensors"));
        let res = memctl()
            .env("LETHE_CPU_KERNEL", kernel)
            .arg("encode")
            .arg(fixtures().join("inputs/card_500x400.png"))
            .args(["--mode", "tiny", "--model"])
            .arg(&model)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            res.status.success(),
            "LETHE_CPU_KERNEL={kernel}: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        out
    };
    let (default, f32_kernels) = (encode("amx"), encode("avx512"));
    let diff = max_diff(&default, &f32_kernels);
    eprintln!("bf16 weights: default kernels against the f32 ones, max abs diff {diff:e}");
    assert!(diff <= 1e-4, "image_embeds max abs diff {diff:e}");
}

#[test]
fn encode_repeat_reports_a_warm_run() {
    let v = encode_card_tiny(&["--repeat", "3"]);
    assert_eq!(v["positions"], 73);
    assert_eq!(v["warm"], true);
    let runs: Vec<f64> = v["encode_runs_s"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(runs.len(), 3);
    // The reported time is one of the warm runs (the first, cold, one is left out).
    let encode = v["timing_s"]["encode"].as_f64().unwrap();
    assert!(runs[1..].contains(&encode), "{encode} not in {runs:?}");

    let res = memctl()
        .arg("encode")
        .arg(fixtures().join("inputs/card_500x400.png"))
        .args(["--mode", "tiny", "--repeat", "0", "--model"])
        .arg(fixtures().join("tiny"))
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(2), "--repeat 0 is a usage error");
}

#[test]
fn encode_reports_missing_model_and_image() {
    let res = memctl()
        .arg("encode")
        .arg(fixtures().join("inputs/card_500x400.png"))
        .args(["--mode", "tiny", "--model", "/nonexistent/deepseek-ocr"])
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(1));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("/nonexistent/deepseek-ocr"), "{err}");

    let res = memctl()
        .arg("encode")
        .arg("/nonexistent/page.png")
        .args(["--mode", "tiny", "--model"])
        .arg(fixtures().join("tiny"))
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(1));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("/nonexistent/page.png"), "{err}");

    let res = memctl()
        .arg("encode")
        .arg(fixtures().join("inputs/card_500x400.png"))
        .args(["--mode", "huge", "--model"])
        .arg(fixtures().join("tiny"))
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(2), "unknown mode is a usage error");
}

#[test]
#[ignore = "needs the real DeepSeek-OCR checkpoint: set LETHE_DEEPSEEK_OCR_DIR"]
fn encode_real_checkpoint() {
    let dir = std::env::var("LETHE_DEEPSEEK_OCR_DIR").expect("LETHE_DEEPSEEK_OCR_DIR");
    for (mode, positions) in [("tiny", 73), ("base", 273)] {
        let res = memctl()
            .arg("encode")
            .arg(fixtures().join("inputs/doc_900x1400.png"))
            .args(["--mode", mode, "--json", "--model", &dir])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&res.stdout);
        assert!(
            res.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&res.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(v["shape"], serde_json::json!([positions, 1280]));
    }
}
