//! `memctl context`: provider request bodies written for a store, within the budget.

mod support;

use support::{run as memctl, sample};

#[test]
fn context_writes_a_request_for_each_provider() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let sample = sample();
    let out = memctl(&[
        "compress",
        sample.to_str().unwrap(),
        "--store",
        store,
        "--model",
        "none",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (provider, image_key) in [
        ("anthropic", "\"type\":\"image\""),
        ("openai", "\"type\":\"image_url\""),
        ("gemini", "inline_data"),
    ] {
        let folder = dir.path().join(provider);
        let out = memctl(&[
            "context",
            "--store",
            store,
            "--scope",
            "agent-sessions",
            "--budget",
            "8000",
            "--provider",
            provider,
            "--out",
            folder.to_str().unwrap(),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let total = report["total_tokens"].as_u64().unwrap();
        assert!(total <= 8000, "{provider}: {total}");
        let images = report["images"].as_array().unwrap();
        assert!(!images.is_empty(), "{provider}");
        assert!(report["pages"].as_array().unwrap().len() >= images.len());
        let request = std::fs::read_to_string(folder.join("request.json")).unwrap();
        assert_eq!(
            request.matches(image_key).count(),
            images.len(),
            "{provider}"
        );
        for n in 0..images.len() {
            assert!(folder.join(format!("image-{n}.png")).is_file());
        }
        let acc = &report["accounting"];
        let family = if provider == "openai" {
            "o200k_base"
        } else {
            "deepseek-ocr"
        };
        assert_eq!(acc["tokenizer"], family);
        assert!(acc["truncation_text_tokens"].as_u64().unwrap() <= 8000);
    }
    let unknown = memctl(&[
        "context",
        "--store",
        store,
        "--scope",
        "agent-sessions",
        "--budget",
        "8000",
        "--provider",
        "acme",
    ]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no provider \"acme\""));
}

#[test]
fn bench_costs_provider_sized_pages_in_the_providers_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let text: String = std::fs::read_to_string(sample())
        .unwrap()
        .lines()
        .take(12)
        .map(|l| format!("{l}\n"))
        .collect();
    let transcript = dir.path().join("small.txt");
    std::fs::write(&transcript, text).unwrap();
    let out_dir = dir.path().join("out");
    let out = memctl(&[
        "bench",
        transcript.to_str().unwrap(),
        "--provider",
        "openai",
        "--modes",
        "tiny",
        "--out",
        out_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["reader"]
            .as_str()
            .unwrap()
            .contains("costed for openai gpt-4.1"),
        "{}",
        report["reader"]
    );
    let optical: Vec<&serde_json::Value> = report["pages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "optical")
        .collect();
    assert!(!optical.is_empty());
    for page in optical {
        // OpenAI's tile rule: 85 + 170 per 512 px tile.
        let tokens = page["positions"].as_u64().unwrap();
        assert!(tokens >= 255 && (tokens - 85) % 170 == 0, "{tokens}");
    }
}
