//! Fuzzing on stable Rust: the transcript readers (every format, strict and lossy), pagination of
//! what they return, and the render profile parser never panic, whatever the bytes.
//!
//! Seeded and bounded for CI; a longer run on demand:
//!
//! ```sh
//! LETHE_FUZZ_CASES=200000 LETHE_FUZZ_SEED=7 cargo test -p lethe-render --release --test fuzz
//! ```
//!
//! Each test prints its seed and case count, so any failure reruns exactly.

use lethe_render::transcript::parse;
use lethe_render::{Format, ParseOptions, RenderProfile, Renderer, Turn};
use std::cell::Cell;

use proptest::prelude::*;

#[path = "../../tests/support/fuzz_runner.rs"]
mod fuzz_runner;
use fuzz_runner::runner;

/// Pieces that steer the readers into their interesting branches: speaker lines, session headers,
/// JSON fragments, control characters, invalid UTF-8, RTL, CJK, emoji, long runs.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let fixed: Vec<&'static [u8]> = vec![
        b"User: ",
        b"Assistant: ",
        b"Note: ",
        b"=== Session 2 \xc2\xb7 2026-03-14 ===\n",
        b"\n",
        b"\n\n",
        b"\r\n",
        b"\t",
        b"\x00\x07\x1b[31m",
        b"\xff\xfe",
        b"\xe2\x82",
        b"{\"role\":\"user\",\"content\":\"hi\"}\n",
        b"{\"role\":",
        b"[{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"x\"}]}]",
        b"{\"messages\":[",
        b"\"content\":null",
        "\u{5e9}\u{5dc}\u{5d5}\u{5dd} ".as_bytes(),
        "\u{65e5}\u{672c}\u{8a9e}".as_bytes(),
        "\u{1f9d8}\u{200d}\u{2640}\u{fe0f}\u{1f44d}".as_bytes(),
        "\u{301}\u{301}\u{301}".as_bytes(),
        b"key: value\n",
    ];
    prop_oneof![
        4 => prop::sample::select(fixed).prop_map(<[u8]>::to_vec),
        3 => "[a-zA-Z0-9 .,:]{0,40}".prop_map(String::into_bytes),
        2 => prop::collection::vec(any::<u8>(), 0..24),
        1 => (1usize..3_000, any::<u8>()).prop_map(|(n, b)| vec![b.max(b'!') & 0x7f; n]),
    ]
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(piece(), 0..40).prop_map(|v| v.concat())
}

fn format() -> impl Strategy<Value = Format> {
    prop::sample::select(vec![
        Format::Auto,
        Format::Plain,
        Format::Speaker,
        Format::Jsonl,
        Format::OpenAi,
    ])
}

#[test]
fn transcript_readers_never_panic_and_paginate_what_they_return() {
    let renderer = Renderer::new().expect("default renderer");
    let mut runner = runner("transcript readers", 2_000);
    let parsed = Cell::new(0u32);
    runner
        .run(
            &(input(), format(), any::<bool>(), 1usize..9),
            |(bytes, format, lossy, tab)| {
                let opts = ParseOptions::new()
                    .format(format)
                    .lossy(lossy)
                    .tab_width(tab);
                if let Ok(t) = parse(&bytes, &opts) {
                    parsed.set(parsed.get() + 1);
                    prop_assert!(!t.turns.is_empty(), "Ok with no turns");
                    for turn in &t.turns {
                        // Sanitising leaves no control character but the newline.
                        prop_assert!(
                            !turn.text.chars().any(|c| c.is_control() && c != '\n'),
                            "control character left in {:?}",
                            turn.text
                        );
                    }
                    let pages = renderer.paginate(&t.turns).expect("paginate parsed turns");
                    prop_assert!(!pages.is_empty());
                }
                Ok(())
            },
        )
        .unwrap();
    eprintln!("  {} inputs parsed and paginated", parsed.get());
    assert!(
        parsed.get() > 0,
        "the generator never produced a readable transcript"
    );
}

/// A valid profile with one field's value replaced, a line dropped, or bytes spliced in.
fn profile_text() -> impl Strategy<Value = String> {
    let base = toml::to_string(&RenderProfile::default()).expect("default profile serialises");
    let lines: Vec<String> = base.lines().map(str::to_string).collect();
    let n = lines.len();
    let values = prop::sample::select(vec![
        "0", "-1", "1e30", "nan", "inf", "\"mono\"", "\"x\"", "[]", "{}", "true", "0.0001", "99999",
    ]);
    (0..n, values, any::<bool>(), "[ -~]{0,12}").prop_map(move |(i, v, drop, junk)| {
        let mut out = lines.clone();
        if drop {
            out.remove(i);
        } else if let Some((key, _)) = out[i].split_once('=') {
            out[i] = format!("{key}= {v}");
        } else {
            out[i].push_str(&junk);
        }
        out.join("\n")
    })
}

#[test]
fn render_profile_parser_never_panics() {
    let mut runner = runner("render profile parser", 2_000);
    let accepted = Cell::new(0u32);
    runner
        .run(&prop_oneof![profile_text(), "\\PC{0,200}"], |text| {
            if let Ok(p) = RenderProfile::from_toml_str(&text, "fuzz.toml") {
                accepted.set(accepted.get() + 1);
                // Whatever parses is valid and builds a renderer that lays out a turn.
                p.validate().expect("parsed profiles validate");
                let r = Renderer::builder()
                    .profile(p)
                    .build()
                    .expect("valid profile builds");
                let turn = Turn::new("User", "hello world");
                prop_assert!(!r.paginate(&[turn]).expect("paginate").is_empty());
            }
            Ok(())
        })
        .unwrap();
    eprintln!("  {} profiles accepted", accepted.get());
}
