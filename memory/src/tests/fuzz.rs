//! Fuzzing on stable Rust: the store's record decoding and the export/import reader never panic.
//!
//! Each case damages one stored record (or one exported file), then drives every read path
//! (listing, records, images, tokens, history, hot turns, verify, stats, export; or import). What
//! must hold: no panic, damage is reported as an error, and an import that fails writes nothing.
//!
//! Seeded and bounded for CI; a longer run on demand:
//!
//! ```sh
//! LETHE_FUZZ_CASES=5000 LETHE_FUZZ_SEED=7 cargo test -p lethe-memory --release --lib tests::fuzz
//! ```

use std::path::Path;

use super::fs_tree::copy_dir;
use crate::engine::{open_default, Engine};
use crate::{
    keys, Due, Layout, Mode, NewPage, NewTurn, Scope, Stamp, Store, Tier, TokenCache, Transition,
    ENGINE_DIR,
};
use std::cell::Cell;

use proptest::prelude::*;

use super::fuzz_runner::runner;
use serde_json::Value;

/// A store with two scopes, three pages (one moved down a tier, one without tokens) and hot turns.
fn seeded_store(dir: &Path) {
    let store = Store::open(dir).expect("open");
    for (s, scope) in [Scope::session("a"), Scope::session("b")]
        .iter()
        .enumerate()
    {
        for i in 0..3u64 {
            let r = store
                .append(scope, &[NewTurn::new("user", format!("turn {s}.{i}"), i)])
                .expect("append");
            if s == 0 {
                let page = NewPage {
                    layout: Layout::default(),
                    tier: Tier::At(Mode::Large),
                    text: format!("page text {i}"),
                    // One page keeps no image (it is redrawn from its text).
                    image: (i != 2).then(|| [&b"\x89PNG\r\n\x1a\n"[..], &[i as u8; 9]].concat()),
                    tokens: (i != 1)
                        .then(|| TokenCache::new(vec![2, 2], "f32", vec![i as u8; 16]).unwrap()),
                    at: Stamp::new(i, i),
                    reason: "page-out".into(),
                    due: Due {
                        turn: Some(i + 4),
                        time: Some(i * 60),
                    },
                };
                store.page_out(scope, r, page).expect("page out");
            }
        }
    }
    let first = store.pages(None).expect("pages").pages[0].id;
    store
        .transition(
            first,
            Transition {
                tier: Tier::At(Mode::Base),
                image: Some(b"\x89PNG\r\n\x1a\nsmaller".to_vec()),
                tokens: None,
                at: Stamp::new(9, 9),
                reason: "decay".into(),
                due: Due::NEVER,
            },
        )
        .expect("transition");
    store.close().expect("close");
}

/// Replaces one JSON leaf (or container) picked by `pick` with `with`.
fn replace_json(v: &mut Value, pick: &mut usize, with: &Value) -> bool {
    if *pick == 0 {
        *v = with.clone();
        return true;
    }
    *pick -= 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|x| replace_json(x, pick, with)),
        Value::Object(o) => o.values_mut().any(|x| replace_json(x, pick, with)),
        _ => false,
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![0.5f64, -1.0, 1e300]).prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::String),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
        Just(serde_json::json!([1, 2, 3])),
    ]
}

/// How one byte string is damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// Flip bits of one byte.
    Flip(usize, u8),
    /// Keep only a prefix.
    Truncate(usize),
    /// Replace the whole value with these bytes.
    Replace(Vec<u8>),
    /// Parse as JSON, replace one node, write it back (the JSON-aware mutation).
    Json(usize, Value),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        2 => (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Damage::Flip(i, x)),
        1 => any::<usize>().prop_map(Damage::Truncate),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Damage::Replace),
        6 => (any::<usize>(), json_value()).prop_map(|(i, v)| Damage::Json(i, v)),
    ]
}

/// `framed`: the bytes are a store value (a frame around a JSON or raw payload); the damage goes
/// inside the frame for a JSON mutation, so it reaches the decoder rather than the checksum.
fn apply(bytes: Vec<u8>, d: &Damage, framed: bool) -> Vec<u8> {
    match d {
        Damage::Flip(i, x) if !bytes.is_empty() => {
            let mut b = bytes;
            let n = b.len();
            b[i % n] ^= x;
            b
        }
        Damage::Flip(..) => bytes,
        Damage::Truncate(i) => bytes[..i % (bytes.len() + 1)].to_vec(),
        Damage::Replace(b) => b.clone(),
        Damage::Json(i, with) => {
            let payload = if framed {
                keys::unframe(b"", &bytes).expect("seeded store is intact")
            } else {
                std::borrow::Cow::Borrowed(&bytes[..])
            };
            let text = String::from_utf8_lossy(&payload);
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let out = if lines.len() > 1 {
                // JSON Lines: mutate one line.
                let k = i % lines.len();
                if let Ok(mut v) = serde_json::from_str::<Value>(&lines[k]) {
                    replace_json(&mut v, &mut (i / lines.len() % 64), with);
                    lines[k] = v.to_string();
                }
                (lines.join("\n") + "\n").into_bytes()
            } else {
                let Ok(mut v) = serde_json::from_slice::<Value>(&payload) else {
                    return bytes;
                };
                replace_json(&mut v, &mut (i % 64), with);
                serde_json::to_vec(&v).expect("json")
            };
            if framed {
                keys::frame(&out)
            } else {
                out
            }
        }
    }
}

/// Every read path of a store; errors are fine, panics are not. Returns how many failed.
fn read_everything(store: &Store) -> usize {
    let mut oks = Vec::new();
    match store.pages(None) {
        Ok(listing) => {
            oks.extend(listing.corrupt.iter().map(|_| false));
            for p in &listing.pages {
                oks.push(store.page(p.id).is_ok());
                oks.push(store.load(p.id).is_ok());
                oks.push(store.tokens(p.id).is_ok());
                oks.push(store.history(p.id).is_ok());
            }
        }
        Err(_) => oks.push(false),
    }
    match store.scopes() {
        Ok(scopes) => {
            for s in &scopes {
                oks.push(store.hot_turns(s).is_ok());
                oks.push(store.next_turn(s).is_ok());
                oks.push(store.due_pages(s, u64::MAX).is_ok());
            }
        }
        Err(_) => oks.push(false),
    }
    oks.push(store.due_by_time(u64::MAX).is_ok());
    oks.push(store.audit_log().is_ok());
    oks.push(store.stats().is_ok());
    match store.verify() {
        Ok(problems) => oks.extend(problems.iter().map(|_| false)),
        Err(_) => oks.push(false),
    }
    oks.iter().filter(|ok| !**ok).count()
}

#[test]
fn damaged_store_records_never_panic() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let seed = tmp.path().join("seed");
    seeded_store(&seed);
    let all: Vec<(Vec<u8>, Vec<u8>)> = {
        let e = open_default(&seed.join(ENGINE_DIR)).expect("engine");
        (&e as &dyn Engine).scan_prefix(b"").expect("scan")
    };
    // The blob files (images, token caches) are damaged too.
    let mut blobs = Vec::new();
    walk(&seed.join(crate::BLOB_DIR), &mut blobs);
    blobs.sort();
    assert!(blobs.len() >= 3, "{blobs:?}");
    assert!(
        all.len() > 10,
        "the seeded store holds {} records",
        all.len()
    );
    let mut runner = runner("store records", 256);
    let (cases, noticed) = (Cell::new(0u32), Cell::new(0u32));
    runner
        .run(&(0..all.len() + blobs.len(), damage()), |(k, d)| {
            let dir = tmp.path().join(format!("case-{}", cases.get()));
            cases.set(cases.get() + 1);
            copy_dir(&seed, &dir);
            if let Some((key, value)) = all.get(k) {
                let is_framed = keys::unframe(key, value).is_ok();
                let damaged = apply(value.clone(), &d, is_framed);
                let e = open_default(&dir.join(ENGINE_DIR)).expect("engine");
                let mut b = crate::engine::Batch::new();
                b.put(key.clone(), damaged);
                e.apply(b).expect("put");
                e.flush().expect("flush");
            } else {
                let rel = blobs[k - all.len()]
                    .strip_prefix(&seed)
                    .expect("under seed");
                let target = dir.join(rel);
                let bytes = std::fs::read(&target).expect("read blob");
                std::fs::write(&target, apply(bytes, &d, false)).expect("write blob");
            }
            if let Ok(store) = Store::open(&dir) {
                if read_everything(&store) > 0 {
                    noticed.set(noticed.get() + 1);
                }
                let _ = store.export(dir.join("export"));
            } else {
                noticed.set(noticed.get() + 1);
            }
            std::fs::remove_dir_all(&dir).ok();
            Ok(())
        })
        .unwrap();
    eprintln!(
        "  {} damaged stores read, {} reported damage",
        cases.get(),
        noticed.get()
    );
    assert!(noticed.get() > 0, "no damage was ever reported");
}

#[test]
fn damaged_exports_never_panic_and_failed_imports_write_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let seed = tmp.path().join("seed");
    seeded_store(&seed);
    let export = tmp.path().join("export");
    Store::open(&seed)
        .expect("open")
        .export(&export)
        .expect("export");
    let mut files = Vec::new();
    walk(&export, &mut files);
    files.sort();
    let mut runner = runner("export reader", 256);
    let (cases, refused) = (Cell::new(0u32), Cell::new(0u32));
    runner
        .run(&(0..files.len(), damage()), |(k, d)| {
            let case = tmp.path().join(format!("case-{}", cases.get()));
            cases.set(cases.get() + 1);
            copy_dir(&export, &case.join("export"));
            let rel = files[k].strip_prefix(&export).expect("under export");
            let target = case.join("export").join(rel);
            let bytes = std::fs::read(&target).expect("read");
            std::fs::write(&target, apply(bytes, &d, false)).expect("write");
            let store = Store::open(case.join("store")).expect("fresh store");
            match store.import(case.join("export")) {
                Ok(_) => {
                    read_everything(&store);
                }
                Err(e) => {
                    refused.set(refused.get() + 1);
                    prop_assert!(!e.to_string().is_empty());
                    prop_assert!(store.pages(None).expect("pages").pages.is_empty());
                    prop_assert!(store.scopes().expect("scopes").is_empty());
                    prop_assert!(store.audit_log().expect("log").is_empty());
                    prop_assert_eq!(
                        store.stats().expect("stats").blob_files,
                        0,
                        "blob files left"
                    );
                }
            }
            drop(store);
            std::fs::remove_dir_all(&case).ok();
            Ok(())
        })
        .unwrap();
    eprintln!(
        "  {} damaged exports imported, {} refused",
        cases.get(),
        refused.get()
    );
    assert!(refused.get() > 0, "no damage was ever refused");
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}
