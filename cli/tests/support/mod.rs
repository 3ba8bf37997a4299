//! What every `memctl` test needs: the binary, and the repository's fixtures and sample.
#![allow(dead_code)] // each test file uses a part

use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root (this crate lives in `cli/`).
pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The tiny DeepSeek-OCR fixture checkpoint.
pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/deepseek-ocr")
}

/// The sample transcript shipped with the repository.
pub fn sample() -> PathBuf {
    repo().join("samples/agent-sessions.txt")
}

/// The `memctl` binary, ready for arguments.
pub fn memctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_memctl"))
}

/// `memctl ocr` of the card fixture at tiny with a bare prompt and 6 tokens, on `model`, as JSON.
pub fn ocr_tiny_card(model: &std::path::Path) -> Output {
    memctl()
        .arg("ocr")
        .arg(fixtures().join("inputs/card_500x400.png"))
        .arg("--model")
        .arg(model)
        .args([
            "--mode",
            "tiny",
            "--prompt",
            "<image>",
            "--max-tokens",
            "6",
            "--json",
        ])
        .output()
        .expect("run memctl ocr")
}

/// Runs `memctl` with `args` and returns what it did.
pub fn run(args: &[&str]) -> Output {
    memctl().args(args).output().expect("run memctl")
}

/// The JSON a successful `memctl ... --json` printed (fails the test with its stderr otherwise).
pub fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "memctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON value")
}

/// `memctl serve` on a free loopback port with no model, the given hot turns and maintenance
/// interval, over `store`; returns the child and the base URL it printed.
pub fn spawn_serve(
    store: &std::path::Path,
    hot_turns: &str,
    maintain_every: &str,
    stderr: std::process::Stdio,
) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = memctl()
        .args([
            "serve",
            "--model",
            "none",
            "--addr",
            "127.0.0.1:0",
            "--json",
        ])
        .args(["--hot-turns", hot_turns, "--maintain-every", maintain_every])
        .arg("--store")
        .arg(store)
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn memctl serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the listening line");
    let listening: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("memctl serve printed {line:?}: {e}"));
    let addr = listening["listening"].as_str().expect("an address");
    (child, format!("http://{addr}"))
}
