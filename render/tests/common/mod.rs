//! Shared test inputs.
#![allow(dead_code)]

use lethe_render::Turn;

/// About `n` bytes of varied English prose with numbers, identifiers and a URL.
pub fn prose(n: usize) -> String {
    let words = [
        "the",
        "agent",
        "renders",
        "old",
        "dialogue",
        "into",
        "pages",
        "and",
        "keeps",
        "a",
        "short",
        "sequence",
        "of",
        "vision",
        "tokens;",
        "decoding",
        "recovers",
        "97%",
        "of",
        "the",
        "text",
        "at",
        "10x",
        "compression,",
        "according",
        "to",
        "arXiv:2510.18234.",
        "See",
        "https://example.com/docs?id=42",
        "for",
        "config_v2.toml",
        "and",
        "run_id=7f3a9c",
        "then",
        "retry",
        "with",
        "--max-tokens",
        "4096.",
    ];
    let mut s = String::new();
    let mut i = 0usize;
    while s.len() < n {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(words[(i * 7 + i / 3) % words.len()]);
        i += 1;
    }
    s
}

pub fn latin_turns() -> Vec<Turn> {
    vec![
        Turn::new(
            "User",
            "Can you summarise yesterday's incident report? Keep the numbers exact.",
        )
        .with_session("Session 1 · 2026-03-14"),
        Turn::new("Assistant", prose(1800)).with_session("Session 1 · 2026-03-14"),
        Turn::new("User", "Thanks. And the fix?").with_timestamp("10:02"),
        Turn::new("Assistant", prose(1500)),
    ]
}

pub fn mixed_script_turns() -> Vec<Turn> {
    vec![
        Turn::new("User", "请把这段话翻译成英文：今天的会议推迟到下午三点，地点不变。"),
        Turn::new(
            "Assistant",
            "Today's meeting is postponed to 3 p.m.; the place is unchanged. 日本語：会議は午後三時に延期されました。\
             한국어: 회의는 오후 3시로 연기되었습니다.",
        ),
        Turn::new("User", "And in Arabic and Hebrew? العربية: تم تأجيل الاجتماع إلى الساعة الثالثة. עברית: הפגישה נדחתה לשעה שלוש."),
        Turn::new("Assistant", "Combining marks: e\u{301}te\u{301}, n\u{303}, a\u{308}; Vietnamese: Tiếng Việt có dấu."),
    ]
}

pub fn code_turns() -> Vec<Turn> {
    vec![
        Turn::new("User", "Why does this panic?"),
        Turn::new(
            "Assistant",
            "Because `idx` can equal `len`:\n```rust\nfn get(v: &[u32], idx: usize) -> u32 {\n    // off by one\n    v[idx + 1]\n}\n```\nUse `v.get(idx).copied()` instead.",
        ),
        Turn::new("Tool", "$ cargo test\n    Finished `test` profile in 0.42s\n     Running unittests src/lib.rs\ntest result: ok. 12 passed; 0 failed"),
    ]
}

/// FNV-1a 64 of a byte slice.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
