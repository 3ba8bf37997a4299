//! The seeded, bounded proptest set-up the property tests share (included with `#[path]`, so
//! each crate keeps its own dev-dependencies). Not every includer uses every item.
#![allow(dead_code)]

use proptest::test_runner::{Config, RngSeed, TestRunner};

fn env(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.parse::<u64>().ok())
}

/// A proptest config seeded from `LETHE_FUZZ_SEED` (default 1), running `LETHE_FUZZ_CASES`
/// cases (default `default_cases`). Both are printed, so a failure reruns exactly.
pub fn config(name: &str, default_cases: u32) -> Config {
    let seed = env("LETHE_FUZZ_SEED").unwrap_or(1);
    let cases = env("LETHE_FUZZ_CASES").map_or(default_cases, |c| c as u32);
    eprintln!("{name}: seed {seed}, {cases} cases (LETHE_FUZZ_SEED, LETHE_FUZZ_CASES)");
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

/// A runner with [`config`].
pub fn runner(name: &str, default_cases: u32) -> TestRunner {
    TestRunner::new(config(&format!("fuzz {name}"), default_cases))
}
