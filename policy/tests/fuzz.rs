//! Fuzzing on stable Rust: the policy parser never panics, and whatever it accepts decides.
//!
//! Seeded and bounded for CI; a longer run on demand:
//!
//! ```sh
//! LETHE_FUZZ_CASES=200000 LETHE_FUZZ_SEED=7 cargo test -p lethe-policy --release --test fuzz
//! ```

use lethe_policy::{PageState, Policy};
use std::cell::Cell;

use proptest::prelude::*;

#[path = "../../tests/support/fuzz_runner.rs"]
mod fuzz_runner;
use fuzz_runner::runner;

/// The shipped default policy with one value replaced, one line dropped, or junk appended.
fn policy_text() -> impl Strategy<Value = String> {
    let base = include_str!("../../policies/default.toml");
    let lines: Vec<String> = base.lines().map(str::to_string).collect();
    let n = lines.len();
    let values = prop::sample::select(vec![
        "0",
        "-1",
        "1e308",
        "nan",
        "inf",
        "-inf",
        "\"tiny\"",
        "\"evicted\"",
        "\"nowhere\"",
        "[]",
        "[1.5, 0.2]",
        "[9, 3, 1]",
        "{}",
        "true",
        "18446744073709551615",
        "\"seconds\"",
    ]);
    (0..n, values, 0u8..3, "[ -~]{0,12}").prop_map(move |(i, v, how, junk)| {
        let mut out = lines.clone();
        match how {
            0 => {
                out.remove(i);
            }
            1 => {
                if let Some((key, _)) = out[i].split_once('=') {
                    out[i] = format!("{key}= {v}");
                } else {
                    out[i].push_str(&junk);
                }
            }
            _ => out.insert(i, junk),
        }
        out.join("\n")
    })
}

#[test]
fn policy_parser_never_panics_and_accepted_policies_decide() {
    let mut runner = runner("policy parser", 2_000);
    let accepted = Cell::new(0u32);
    runner
        .run(
            &(
                prop_oneof![4 => policy_text(), 1 => "\\PC{0,200}"],
                0u64..100_000,
            ),
            |(text, age)| {
                if let Ok(p) = Policy::from_toml_str(&text) {
                    accepted.set(accepted.get() + 1);
                    let levels = p.ladder().levels().len();
                    let pages: Vec<PageState> = (0..levels.max(1))
                        .map(|l| PageState::new(l as u64, 0, 0, p.ladder().tier_at(l), 800))
                        .collect();
                    for page in &pages {
                        let _ = p.decide(page, age, age);
                        let r = p.retention(page, age, age);
                        prop_assert!((0.0..=1.0).contains(&r), "retention {r}");
                    }
                    let _ = p.decide_all(&pages, age, age);
                    // Whatever parses writes back to TOML that parses to the same policy.
                    let again = Policy::from_toml_str(&p.to_toml().expect("to_toml"))
                        .expect("a written policy parses");
                    prop_assert_eq!(again, p);
                }
                Ok(())
            },
        )
        .unwrap();
    eprintln!("  {} policies accepted", accepted.get());
    assert!(
        accepted.get() > 0,
        "the mutations never left a valid policy"
    );
}
