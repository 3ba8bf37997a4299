//! Deterministic page content shared by the crash-test writer and the test that checks it.
//!
//! An image or token blob is a pure function of (page, tier, history sequence), so after a crash
//! the test can tell exactly which transition a page's stored content came from.

use lethe_memory::{Mode, Tier};

/// The tier ladder the crash test cycles through.
pub const LADDER: [Tier; 4] = [
    Tier::At(Mode::Large),
    Tier::At(Mode::Base),
    Tier::At(Mode::Small),
    Tier::At(Mode::Tiny),
];

/// A tier's position on [`LADDER`] (0 for any tier off it).
pub fn index(tier: Tier) -> u8 {
    LADDER.iter().position(|&t| t == tier).unwrap_or(0) as u8
}

fn fill(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn seed(page: u64, tier: u8, seq: u64) -> u64 {
    page.wrapping_mul(1_000_003) ^ (u64::from(tier) << 40) ^ seq.wrapping_mul(7919)
}

/// A PNG-signed blob whose header names its page, tier and sequence; larger at sharper tiers.
pub fn image(page: u64, tier: u8, seq: u64) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(format!("page={page} tier={tier} seq={seq}\n").as_bytes());
    let len = (96 * 1024) >> tier.min(4);
    out.extend(fill(seed(page, tier, seq), len));
    out
}

/// Token shape at a tier: `[n, 8]` f32 with n = 400, 256, 100, 64.
pub fn token_shape(tier: u8) -> Vec<usize> {
    let n = [400, 256, 100, 64][usize::from(tier.min(3))];
    vec![n, 8]
}

/// Token bytes for the shape of [`token_shape`].
pub fn tokens(page: u64, tier: u8, seq: u64) -> Vec<u8> {
    let shape = token_shape(tier);
    fill(seed(page, tier, seq) ^ 0xABCD, shape[0] * shape[1] * 4)
}

/// The text of page `page` in the life test.
pub fn text(page: u64) -> String {
    format!("page {page}: the text a page keeps until the policy drops it")
}
