//! The remote decoder against a loopback server that answers as vLLM's OpenAI-compatible
//! chat-completions endpoint does, including errors, a missing key, garbage and slow replies.
//! The model name in each request picks the server's behaviour.

mod support;

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use lethe::{Lethe, Reader, RecallTarget, RemoteDecoder, RemoteOptions, Scope, Turn};
use support::vllm::{Vllm, KEY};

fn remote(url: &str, model: &str) -> RemoteOptions {
    RemoteOptions {
        model: model.into(),
        backoff: Duration::from_millis(10),
        ..RemoteOptions::new(url)
    }
}

fn png() -> Vec<u8> {
    lethe::PageImage {
        width: 4,
        height: 4,
        channels: 1,
        pixels: vec![255; 16],
    }
    .to_png()
    .unwrap()
}

#[test]
fn recall_reads_pages_on_the_remote_server() {
    let (server, url) = Vllm::start();
    let dir = tempfile::tempdir().unwrap();
    let mut memory = Lethe::builder(dir.path())
        .reader(Reader::None)
        .hot_turns(1)
        .remote_decoder(RemoteDecoder::new(remote(&url, "ok")).unwrap())
        .build()
        .unwrap();
    let scope = Scope::session("s");
    for i in 0..40 {
        let text = format!("Message {i}: the ledger service listens on port 8443. ").repeat(6);
        memory
            .append(&scope, &[Turn::new("User", text)], i)
            .unwrap();
    }
    memory.maintain(40).unwrap();
    let recall = memory
        .recall(RecallTarget::Page(lethe::PageId(0)), 41)
        .unwrap();
    let page = &recall.pages[0];
    assert_eq!(
        page.decoded_text.as_deref(),
        Some("the ledger listens on port 8443")
    );
    assert!(page.stored_text.as_deref().unwrap().contains("Message 0:"));
    assert!(recall.usage.decoder_positions > 0);

    // What went out: the model, the reference prompt without its <image> tag, and the page
    // as a PNG data URL at its tier's size.
    let body = server.last.lock().unwrap().clone().unwrap();
    assert_eq!(body["model"], "ok");
    assert_eq!(body["temperature"], 0.0);
    assert_eq!(body["max_tokens"], 2048);
    assert!(
        body.get("vllm_xargs").is_none(),
        "the n-gram guard is opt-in"
    );
    let content = &body["messages"][0]["content"];
    assert_eq!(content[1]["text"], "Free OCR.");
    let url = content[0]["image_url"]["url"].as_str().unwrap();
    let data = url
        .strip_prefix("data:image/png;base64,")
        .expect("a PNG data URL");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    let image = lethe::PageImage::from_png(&bytes).unwrap();
    let mode = page.tier.mode().unwrap();
    assert_eq!(image.width.max(image.height), mode.page_px());
}

#[test]
fn retries_server_errors_with_backoff_and_gives_up_after_the_limit() {
    let (server, url) = Vllm::start();
    let flaky = RemoteDecoder::new(remote(&url, "flaky")).unwrap();
    let read = flaky.read_image(&png(), "image/png").unwrap();
    assert_eq!(read.text, "after a while");
    assert_eq!(read.attempts, 3);
    assert_eq!(read.completion_tokens, 7);

    let (server2, url2) = Vllm::start();
    let once = RemoteDecoder::new(RemoteOptions {
        retries: 1,
        ..remote(&url2, "flaky")
    })
    .unwrap();
    let err = once
        .read_image(&png(), "image/png")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("503") && err.contains("after 2 attempts"),
        "{err}"
    );
    assert_eq!(server2.count("flaky"), 2);

    let busy = RemoteDecoder::new(remote(&url, "busy")).unwrap();
    assert_eq!(busy.read_image(&png(), "image/png").unwrap().attempts, 2);
    assert_eq!(server.count("busy"), 2);
}

#[test]
fn errors_name_what_failed_and_are_not_retried_when_retrying_cannot_help() {
    let (server, url) = Vllm::start();
    let no_key = RemoteDecoder::new(remote(&url, "auth")).unwrap();
    let err = no_key
        .read_image(&png(), "image/png")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unauthorised (401)") && err.contains("--decoder-key-file"),
        "{err}"
    );
    assert_eq!(server.count("auth"), 1, "a 401 is not retried");
    let keyed = RemoteDecoder::new(RemoteOptions {
        api_key: Some(KEY.into()),
        ..remote(&url, "auth")
    })
    .unwrap();
    assert_eq!(
        keyed.read_image(&png(), "image/png").unwrap().text,
        "welcome"
    );

    for (model, want) in [
        ("garbage", "malformed reply (not JSON)"),
        ("empty", "no choices[0].message.content"),
        ("unknown", "request refused (404)"),
    ] {
        let err = RemoteDecoder::new(remote(&url, model))
            .unwrap()
            .read_image(&png(), "image/png")
            .unwrap_err()
            .to_string();
        assert!(err.contains(want) && err.contains(&url), "{model}: {err}");
        assert_eq!(server.count(model), 1, "{model} is not retried");
    }

    // A slow server: the timeout ends the attempt.
    let slow = RemoteDecoder::new(RemoteOptions {
        timeout: Duration::from_millis(300),
        retries: 0,
        ..remote(&url, "slow")
    })
    .unwrap();
    let err = slow
        .read_image(&png(), "image/png")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no answer within 300ms"), "{err}");

    // Nobody listening.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let dead = RemoteDecoder::new(RemoteOptions {
        retries: 1,
        ..remote(&dead_url, "ok")
    })
    .unwrap();
    let err = dead
        .read_image(&png(), "image/png")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unreachable") && err.contains("after 2 attempts"),
        "{err}"
    );

    let bad = RemoteDecoder::new(RemoteOptions::new("gpu-box:8000"))
        .unwrap_err()
        .to_string();
    assert!(bad.contains("http://"), "{bad}");
}

#[test]
fn requests_in_flight_stay_within_the_limit() {
    let (server, url) = Vllm::start();
    let decoder = RemoteDecoder::new(RemoteOptions {
        max_in_flight: 2,
        ..remote(&url, "steady")
    })
    .unwrap();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| decoder.read_image(&png(), "image/png").unwrap());
        }
    });
    assert_eq!(server.count("steady"), 8);
    assert_eq!(server.max_in_flight.load(Ordering::SeqCst), 2);
}

#[test]
fn the_ngram_guard_sends_the_model_cards_settings() {
    let (server, url) = Vllm::start();
    let guarded = RemoteDecoder::new(RemoteOptions {
        ngram_guard: true,
        ..remote(&url, "ok")
    })
    .unwrap();
    guarded.read_image(&png(), "image/png").unwrap();
    let body = server.last.lock().unwrap().clone().unwrap();
    assert_eq!(body["vllm_xargs"]["ngram_size"], 30);
    assert_eq!(body["vllm_xargs"]["window_size"], 90);
    assert_eq!(body["skip_special_tokens"], false);
}
