//! A service on a free loopback port in this process, and a small blocking HTTP client.

#![allow(dead_code)]

pub mod turns;

use std::net::SocketAddr;
use std::path::Path;

use lethe::{Lethe, Reader};
use lethe_serve::{ServeOptions, Service};
use serde_json::Value;

/// A running service; dropping it shuts the server down and waits for it.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves a store at `dir` without a model (2 hot turns, no background maintenance).
    pub fn start(dir: &Path, mut options: ServeOptions) -> Self {
        let lethe = Lethe::builder(dir)
            .reader(Reader::None)
            .hot_turns(2)
            .build()
            .expect("open store");
        options.maintain_every = None;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, addr) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                ready
                    .send(listener.local_addr().expect("addr"))
                    .expect("ready");
                Service::new(lethe)
                    .run(listener, options, async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        let addr = addr.recv().expect("server address");
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An HTTP client that returns every status instead of failing on 4xx/5xx.
pub fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    )
}

/// Status and JSON body of a response.
pub fn json(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut response = response.expect("request");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

pub fn get(agent: &ureq::Agent, url: &str) -> (u16, Value) {
    json(agent.get(url).call())
}

pub fn post(agent: &ureq::Agent, url: &str, body: Value) -> (u16, Value) {
    json(agent.post(url).send_json(body))
}

/// A turn of about 300 characters that names its client and sequence number.
pub fn turn(client: usize, seq: usize) -> Value {
    let text = format!(
        "client {client} message {seq}: the ledger service listens on port {}. ",
        8000 + seq
    )
    .repeat(4);
    serde_json::json!({"speaker": format!("agent-{client}"), "text": text})
}
