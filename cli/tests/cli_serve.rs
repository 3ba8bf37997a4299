//! `memctl serve` and `memctl mcp` as processes: MCP over stdio with a real client exchange, the
//! refusal to listen openly without a token, a clean SIGTERM, and SIGKILL mid-load losing no
//! acknowledged turn.

mod support;
#[path = "../../serve/tests/common/turns.rs"]
mod turns;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::memctl;
use turns::{all_turn_texts, seq_of};

fn open(dir: &std::path::Path) -> lethe::Lethe {
    lethe::Lethe::builder(dir)
        .reader(lethe::Reader::None)
        .hot_turns(2)
        .build()
        .expect("reopen the store")
}

fn turn(client: usize, seq: usize) -> Value {
    let text = format!(
        "client {client} message {seq}: the ledger listens on port {}. ",
        8000 + seq
    )
    .repeat(4);
    json!({"speaker": format!("agent-{client}"), "text": text})
}

/// `memctl serve` on a free loopback port without a model, 2 hot turns, no background
/// maintenance.
fn spawn_serve(dir: &std::path::Path) -> (Child, String) {
    support::spawn_serve(dir, "2", "0", Stdio::piped())
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build(),
    )
}

/// An MCP client on a child's stdin/stdout, one JSON-RPC message per line.
struct Stdio2 {
    stdin: std::process::ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
    transcript: Vec<String>,
}

impl Stdio2 {
    fn notify(&mut self, method: &str) {
        let line = json!({"jsonrpc": "2.0", "method": method}).to_string();
        writeln!(self.stdin, "{line}").unwrap();
        self.transcript.push(format!("-> {line}"));
    }

    fn send(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let line =
            json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
                .to_string();
        writeln!(self.stdin, "{line}").unwrap();
        self.transcript.push(format!("-> {line}"));
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).unwrap();
        self.transcript.push(format!("<- {}", reply.trim_end()));
        let reply: Value = serde_json::from_str(&reply)
            .unwrap_or_else(|e| panic!("not a JSON-RPC line ({e}): {reply:?}"));
        assert_eq!(reply["id"], self.next_id, "{reply}");
        reply
    }
}

#[test]
fn mcp_over_stdio_with_a_real_client_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = memctl()
        .args(["mcp", "--model", "none", "--hot-turns", "2", "--store"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut client = Stdio2 {
        stdin: child.stdin.take().unwrap(),
        stdout: BufReader::new(child.stdout.take().unwrap()),
        next_id: 0,
        transcript: Vec::new(),
    };
    let init = client.send(
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "lethe-test", "version": "1"}}),
    );
    assert_eq!(init["result"]["serverInfo"]["name"], "lethe", "{init}");
    client.notify("notifications/initialized");
    let tools = client.send("tools/list", json!({}));
    assert_eq!(
        tools["result"]["tools"].as_array().unwrap().len(),
        5,
        "{tools}"
    );
    let turns: Vec<Value> = (0..3).map(|i| turn(0, i)).collect();
    let remembered = client.send(
        "tools/call",
        json!({"name": "remember", "arguments": {"scope": "chat", "turns": turns}}),
    );
    let text = remembered["result"]["content"][0]["text"].as_str().unwrap();
    assert_eq!(text, "Remembered 3 turns in scope chat (turns 0..3).");
    let context = client.send(
        "tools/call",
        json!({"name": "context", "arguments": {"scope": "chat", "budget": 10000}}),
    );
    let recent = context["result"]["content"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(recent.contains("client 0 message 2:"), "{recent}");
    let stats = client.send("tools/call", json!({"name": "stats", "arguments": {}}));
    assert_eq!(stats["result"]["isError"], false, "{stats}");
    // The transcript of the session, for the record (`--nocapture` shows it).
    for line in &client.transcript {
        println!("{}", &line[..line.len().min(400)]);
    }
    drop(client); // closing stdin ends the session
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "memctl mcp exits 0 when its client leaves: {status}"
    );
    let lethe = open(dir.path());
    assert_eq!(all_turn_texts(&lethe, "chat").len(), 3);
}

#[test]
fn serve_refuses_an_open_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = memctl()
        .args(["serve", "--model", "none", "--addr", "0.0.0.0:0", "--store"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--token-file") && stderr.contains("0.0.0.0"),
        "{stderr}"
    );
    let empty = dir.path().join("token");
    std::fs::write(&empty, "\n").unwrap();
    let out = memctl()
        .args([
            "serve",
            "--model",
            "none",
            "--addr",
            "0.0.0.0:0",
            "--token-file",
        ])
        .arg(&empty)
        .arg("--store")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"));
}

#[cfg(unix)]
fn signal(child: &Child, signal: i32) {
    // SAFETY: sending a signal to our own child process, which we have not yet reaped.
    let rc = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(rc, 0, "kill({}, {signal})", child.id());
}

#[cfg(unix)]
#[test]
fn sigterm_stops_cleanly_and_keeps_every_turn() {
    let dir = tempfile::tempdir().unwrap();
    let (child, url) = spawn_serve(dir.path());
    let a = agent();
    for i in 0..10 {
        let r = a
            .post(&format!("{url}/v1/scopes/t/turns"))
            .send_json(json!({"turns": [turn(1, i)]}))
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "exit status after SIGTERM: {}",
        out.status
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("store flushed"), "{stderr}");
    let seqs: Vec<usize> = all_turn_texts(&open(dir.path()), "t")
        .iter()
        .filter_map(|t| seq_of(t, 1))
        .collect();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());
}

/// Clients append, one turn a request, until the server dies; each records what was
/// acknowledged. One of them also calls maintain, so kills land mid-page-out as well.
fn load_until_killed(url: &str, round: usize, clients: usize) -> Vec<Vec<usize>> {
    let acked: Vec<Mutex<Vec<usize>>> = (0..clients).map(|_| Mutex::new(Vec::new())).collect();
    let dead = AtomicBool::new(false);
    std::thread::scope(|s| {
        for c in 0..clients {
            let (acked, dead) = (&acked[c], &dead);
            s.spawn(move || {
                let a = agent();
                let id = round * 100 + c;
                for seq in 0.. {
                    if dead.load(Ordering::Relaxed) {
                        break;
                    }
                    let sent = a
                        .post(&format!("{url}/v1/scopes/kill/turns"))
                        .send_json(json!({"turns": [turn(id, seq)]}));
                    match sent {
                        Ok(r) if r.status() == 200 => acked.lock().unwrap().push(seq),
                        Ok(r) => panic!("append answered {}", r.status()),
                        Err(_) => {
                            dead.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                    if c == 0 && seq % 16 == 15 {
                        let _ = a.post(&format!("{url}/v1/maintain")).send_empty();
                    }
                }
            });
        }
    });
    acked.into_iter().map(|m| m.into_inner().unwrap()).collect()
}

#[cfg(unix)]
#[test]
fn sigkill_mid_load_loses_no_acknowledged_turn() {
    // Rounds of: start the server on the same store, load it from 8 clients, SIGKILL it after a
    // seeded delay, then reopen the store and find every acknowledged turn, in each client's
    // order. LETHE_SERVE_KILLS sets the number of rounds (default 3).
    let rounds: usize = std::env::var("LETHE_SERVE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = 0x5eed_1e7e;
    println!("kill test: {rounds} rounds, seed {seed:#x}");
    let dir = tempfile::tempdir().unwrap();
    let clients = 8;
    let mut total_acked = 0;
    for round in 0..rounds {
        let (mut child, url) = spawn_serve(dir.path());
        let delay_ms = 300 + (seed.wrapping_mul(round as u64 + 1).rotate_left(17) % 700);
        let killer = {
            let started = Instant::now();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(delay_ms));
                signal(&child, libc::SIGKILL);
                let _ = child.wait();
                started.elapsed()
            })
        };
        let acked = load_until_killed(&url, round, clients);
        killer.join().unwrap();
        let lethe = open(dir.path());
        let texts = all_turn_texts(&lethe, "kill");
        for (c, acked) in acked.iter().enumerate() {
            let id = round * 100 + c;
            let stored: Vec<usize> = texts.iter().filter_map(|t| seq_of(t, id)).collect();
            // Every acknowledged turn is stored; at most the one in flight at the kill is extra.
            assert!(
                stored.len() == acked.len() || stored.len() == acked.len() + 1,
                "round {round} client {c}: {} stored, {} acknowledged",
                stored.len(),
                acked.len()
            );
            assert_eq!(
                &stored[..acked.len()],
                &acked[..],
                "round {round} client {c}"
            );
            total_acked += acked.len();
        }
        println!(
            "round {round}: killed after {delay_ms} ms, {} turns acknowledged, all stored",
            acked.iter().map(Vec::len).sum::<usize>()
        );
    }
    assert!(
        total_acked > 0,
        "the clients got appends in before the kills"
    );
}
