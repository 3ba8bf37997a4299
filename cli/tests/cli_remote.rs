//! `--decoder-url`: `memctl ocr`, `memctl recall` and `memctl bench` reading on a loopback server
//! that answers as vLLM's OpenAI-compatible endpoint does.

mod support;
#[path = "../../tests/support/vllm.rs"]
mod vllm;

use support::{fixtures, json, run as memctl};
use vllm::{Vllm, KEY};

#[test]
fn ocr_recall_and_bench_read_on_a_remote_server() {
    let (server, url) = Vllm::start();
    let card = fixtures().join("inputs/card_500x400.png");
    let card = card.to_str().unwrap();

    let ocr = json(&memctl(&[
        "ocr",
        card,
        "--decoder-url",
        &url,
        "--decoder-model",
        "ok",
        "--json",
    ]));
    assert_eq!(ocr["text"], "the ledger listens on port 8443");
    assert_eq!(ocr["model"], "ok");
    assert_eq!(ocr["attempts"], 1);
    // The image went out as it is, a PNG data URL.
    let body = server.last.lock().unwrap().clone().unwrap();
    let data_url = body["messages"][0]["content"][0]["image_url"]["url"]
        .as_str()
        .unwrap();
    assert!(
        data_url.starts_with("data:image/png;base64,iVBORw0KGgo"),
        "{}",
        &data_url[..40]
    );

    // A key from a file.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    let keyed = json(&memctl(&[
        "ocr",
        card,
        "--decoder-url",
        &url,
        "--decoder-model",
        "auth",
        "--decoder-key-file",
        key.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(keyed["text"], "welcome");
    let refused = memctl(&[
        "ocr",
        card,
        "--decoder-url",
        &url,
        "--decoder-model",
        "auth",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("unauthorised (401)"), "{stderr}");

    // A store written without a model, read back remotely.
    let mut text = String::new();
    for i in 0..40 {
        text.push_str(&format!("User: Turn {i}. The ledger service listens on port 8443 and we keep the pool at 32 connections.\n\n"));
    }
    let transcript = dir.path().join("chat.txt");
    std::fs::write(&transcript, text).unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let compressed = memctl(&[
        "compress",
        transcript.to_str().unwrap(),
        "--store",
        store,
        "--model",
        "none",
        "--json",
    ]);
    assert!(
        compressed.status.success(),
        "{}",
        String::from_utf8_lossy(&compressed.stderr)
    );
    let recall = json(&memctl(&[
        "recall",
        "--page",
        "0",
        "--store",
        store,
        "--decoder-url",
        &url,
        "--decoder-model",
        "ok",
        "--json",
    ]));
    assert_eq!(
        recall["pages"][0]["decoded_text"],
        "the ledger listens on port 8443"
    );
    assert!(recall["pages"][0]["stored_text"]
        .as_str()
        .unwrap()
        .contains("Turn 0."));

    // bench: every page at every mode asked is read remotely.
    let before = server.count("ok");
    let bench_out = dir.path().join("bench-out");
    let bench = memctl(&[
        "bench",
        transcript.to_str().unwrap(),
        "--out",
        bench_out.to_str().unwrap(),
        "--modes",
        "tiny,base",
        "--decoder-url",
        &url,
        "--decoder-model",
        "ok",
        "--json",
    ]);
    let bench = json(&bench);
    let asked = server.count("ok") - before;
    assert!(asked >= 2 && asked % 2 == 0, "{asked} readings for 2 modes");
    assert!(
        bench.to_string().contains(&url),
        "the report names the reader"
    );

    // Unreachable: a clear error, after the retries.
    let dead = memctl(&[
        "ocr",
        card,
        "--decoder-url",
        "http://127.0.0.1:9/v1",
        "--decoder-retries",
        "0",
    ]);
    assert!(!dead.status.success());
    assert!(String::from_utf8_lossy(&dead.stderr).contains("unreachable"));
}
