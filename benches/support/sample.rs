//! The sample transcript's turns, for the benches that replay it.

use lethe::Turn;
use lethe_render::transcript::{parse, ParseOptions};

/// The turns of `samples/agent-sessions.txt`.
pub fn sample() -> Vec<Turn> {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/samples/agent-sessions.txt"
    ))
    .expect("sample transcript");
    parse(&bytes, &ParseOptions::new()).expect("parse").turns
}
