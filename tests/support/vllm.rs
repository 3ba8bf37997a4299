//! A loopback server that answers as vLLM's OpenAI-compatible chat-completions endpoint does.
//! The model name in each request picks its behaviour: `ok`, `flaky` (503 twice), `busy` (429
//! once), `auth` (wants the bearer [`KEY`]), `garbage` (not JSON), `empty` (no choices),
//! `unknown` (404), `slow` (1.5 s), `steady` (0.1 s).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

pub const KEY: &str = "vllm-test-key";

#[derive(Default)]
pub struct Vllm {
    /// Requests seen per model name.
    pub seen: Mutex<HashMap<String, usize>>,
    /// The last request body.
    pub last: Mutex<Option<Value>>,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

fn reply(stream: &mut TcpStream, status: u16, headers: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
        body.len()
    );
}

fn completion(text: &str) -> String {
    json!({
        "id": "cmpl-1", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 7, "total_tokens": 127}
    })
    .to_string()
}

impl Vllm {
    pub fn start() -> (Arc<Self>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let server = Arc::new(Self::default());
        let s = server.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || s.handle(stream));
            }
        });
        (server, url)
    }

    pub fn handle(&self, mut stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let mut length = 0;
        let mut auth = String::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h.trim().is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "authorization" => auth = value.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        assert!(line.starts_with("POST /v1/chat/completions "), "{line}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        let model = body["model"].as_str().unwrap().to_string();
        let n = {
            let mut seen = self.seen.lock().unwrap();
            let n = seen.entry(model.clone()).or_default();
            *n += 1;
            *n
        };
        *self.last.lock().unwrap() = Some(body.clone());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let ok = |text: &str| (200, String::new(), completion(text));
        let err = |status: u16, body: &str| (status, String::new(), body.to_string());
        let (status, headers, body) = match model.as_str() {
            "ok" => ok("the ledger listens on port 8443"),
            "flaky" if n <= 2 => err(503, r#"{"error":"loading"}"#),
            "flaky" => ok("after a while"),
            "busy" if n == 1 => (
                429,
                "retry-after: 0\r\n".to_string(),
                r#"{"error":"busy"}"#.to_string(),
            ),
            "busy" => ok("served"),
            "auth" if auth == format!("Bearer {KEY}") => ok("welcome"),
            "auth" => err(401, r#"{"error":"invalid api key"}"#),
            "garbage" => err(200, "<html>proxy error</html>"),
            "empty" => err(200, r#"{"choices":[]}"#),
            "unknown" => err(404, r#"{"error":"model unknown not found"}"#),
            "slow" => {
                std::thread::sleep(Duration::from_millis(1500));
                ok("too late")
            }
            "steady" => {
                std::thread::sleep(Duration::from_millis(100));
                ok("steady")
            }
            other => panic!("no behaviour for model {other}"),
        };
        // Out of flight before the client can see the reply and send its next request.
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        reply(&mut stream, status, &headers, &body);
    }

    pub fn count(&self, model: &str) -> usize {
        self.seen.lock().unwrap().get(model).copied().unwrap_or(0)
    }
}
