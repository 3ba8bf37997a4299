//! The seeded, bounded proptest runner every crate's `tests/fuzz.rs` uses (included with
//! `#[path]`, so each crate keeps its own dev-dependencies).

use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// A runner seeded from `LETHE_FUZZ_SEED` (default 1), running `LETHE_FUZZ_CASES` cases (default
/// `default_cases`). Both are printed, so a failure reruns exactly.
pub fn runner(name: &str, default_cases: u32) -> TestRunner {
    let env = |key: &str| std::env::var(key).ok().and_then(|v| v.parse::<u64>().ok());
    let seed = env("LETHE_FUZZ_SEED").unwrap_or(1);
    let cases = env("LETHE_FUZZ_CASES").map_or(default_cases, |c| c as u32);
    eprintln!("fuzz {name}: seed {seed}, {cases} cases (LETHE_FUZZ_SEED, LETHE_FUZZ_CASES)");
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key))
}
