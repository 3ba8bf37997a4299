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
