//! `memctl ocr` end to end on the tiny fixture checkpoint, and its errors.

mod support;
use support::{fixtures, memctl, ocr_tiny_card};

#[test]
fn help_states_the_memory_need() {
    let out = memctl().args(["ocr", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("13.5 GB"), "{help}");
    assert!(help.contains("--max-tokens"), "{help}");
}

#[test]
fn tiny_checkpoint_runs_and_reports_the_token_limit() {
    let out = ocr_tiny_card(&fixtures().join("tiny"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "exit code; stderr: {stderr}");
    assert!(stderr.contains("--max-tokens"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["prompt_positions"], 74);
    assert_eq!(v["image_positions"], 73);
    assert_eq!(v["generated_tokens"], 6);
    assert_eq!(v["hit_token_limit"], true);
    assert_eq!(v["stop"], "max_tokens");
    assert_eq!(v["tokenizer"], "deepseek-ocr");
    assert!(v["text"].is_string());
    assert!(v["timings"]["prefill_secs"].as_f64().unwrap() > 0.0);
}

#[test]
fn missing_image_and_model_are_named() {
    let out = memctl()
        .args(["ocr", "/nonexistent/page.png", "--model"])
        .arg(fixtures().join("tiny"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/page.png"), "{err}");

    let out = memctl()
        .arg("ocr")
        .arg(fixtures().join("inputs/card_500x400.png"))
        .args(["--model", "/nonexistent/model-dir"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model-dir"), "{err}");
}

#[test]
fn mismatched_weights_name_the_tensor_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = std::fs::read_to_string(fixtures().join("tiny/config.json")).unwrap();
    // The config claims a vocabulary of 2048; the weights have 1024 rows.
    let cfg = cfg.replace("\"vocab_size\": 1024", "\"vocab_size\": 2048");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    std::fs::copy(
        fixtures().join("tiny/model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let out = memctl()
        .arg("ocr")
        .arg(fixtures().join("inputs/card_500x400.png"))
        .arg("--model")
        .arg(dir.path())
        .args(["--mode", "tiny"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model.embed_tokens.weight"), "{err}");
    assert!(err.contains("2048") && err.contains("1024"), "{err}");
}
