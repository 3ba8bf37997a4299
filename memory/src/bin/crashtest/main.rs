//! Test helper for lethe-memory's crash and lock tests (not a user tool).
//!
//! `lethe-memory-crashtest decay DIR SEED`: opens the store in DIR and cycles its pages down the
//! tier ladder forever, printing `begin PAGE TIER SEQ` before and `done PAGE TIER SEQ` after each
//! committed transition, until it is killed.
//!
//! `lethe-memory-crashtest life DIR SEED`: opens the store (creating it) and, forever, pages out
//! new turns (with an image, or without one as a page that keeps its text), moves pages down the
//! ladder (storing an image only once a page's text is gone), drops page text (storing the image
//! drawn before it goes) and now and then compacts. Before each write it prints `begin KIND PAGE
//! TIER CHANGES TEXT`, the state the page will have, and after it `done` with the same fields.
//!
//! `lethe-memory-crashtest compact DIR`: opens the store and, over and over, rewrites every page
//! record a few hundred times without changing it (leaving garbage behind) and compacts,
//! printing `compacted N BEFORE AFTER` after each, until it is killed.
//!
//! `lethe-memory-crashtest hold DIR`: opens the store, prints `ready`, and keeps it open until
//! standard input closes.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use lethe_memory::{
    Due, Layout, NewPage, NewTurn, PageId, PageRecord, Scope, Stamp, Store, StoreOptions,
    TokenCache, Transition,
};

mod data;

fn decay(dir: &str, seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(dir)?;
    let ids: Vec<PageId> = store.pages(None)?.pages.iter().map(|p| p.id).collect();
    if ids.is_empty() {
        return Err("the store has no pages to decay".into());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    // Steps stay small so stamps never overflow.
    let mut step = seed % 1_000_000;
    loop {
        let id = ids[(step % ids.len() as u64) as usize];
        step = step.wrapping_add(1);
        let rec = store.page(id)?;
        let tier = (data::index(rec.tier) + 1) % data::LADDER.len() as u8;
        let seq = rec.changes;
        writeln!(out, "begin {} {tier} {seq}", id.0)?;
        let tokens = TokenCache::new(
            data::token_shape(tier),
            "f32",
            data::tokens(id.0, tier, seq),
        )?;
        store.transition(
            id,
            Transition {
                tier: data::LADDER[usize::from(tier)],
                image: Some(data::image(id.0, tier, seq)),
                tokens: Some(tokens),
                reason: format!("crash-test step {step}"),
                at: Stamp::new(step, step * 10),
                due: Due::NEVER,
            },
        )?;
        writeln!(out, "done {} {tier} {seq}", id.0)?;
    }
}

/// xorshift64*.
fn next(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn life(dir: &str, seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    let mut store = Store::open(dir)?;
    let scope = Scope::session("life");
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    let mut x = seed | 1;
    let line = |out: &mut std::io::StdoutLock<'_>, what: &str, kind: &str, r: &PageRecord| {
        writeln!(
            out,
            "{what} {kind} {} {} {} {}",
            r.id.0,
            data::index(r.tier),
            r.changes,
            u8::from(r.text.is_some())
        )
    };
    loop {
        let step = next(&mut x);
        let pages = store.pages(None)?.pages;
        let pick = (!pages.is_empty()).then(|| pages[(step >> 8) as usize % pages.len()].clone());
        match (step % 20, pick) {
            (0..=5, _) | (_, None) => {
                // A page-out: a new turn and any left hot by an earlier kill go out together.
                // Pages are never deleted here, so ids run 0, 1, 2...
                let id = PageId(pages.len() as u64);
                store.append(
                    &scope,
                    &[NewTurn::new("user", format!("turn {}", id.0), id.0)],
                )?;
                let hot = store.hot_turns(&scope)?;
                let range = (hot[0].index..hot[hot.len() - 1].index + 1).into();
                let with_image = id.0.is_multiple_of(2);
                let page = NewPage {
                    layout: Layout::default(),
                    tier: data::LADDER[0],
                    text: data::text(id.0),
                    image: with_image.then(|| data::image(id.0, 0, 0)),
                    tokens: Some(TokenCache::new(
                        data::token_shape(0),
                        "f32",
                        data::tokens(id.0, 0, 0),
                    )?),
                    at: Stamp::new(id.0, id.0),
                    reason: "page-out".into(),
                    due: Due::NOW,
                };
                writeln!(out, "begin page-out {} 0 1 1", id.0)?;
                let made = store.page_out(&scope, range, page)?;
                line(&mut out, "done", "page-out", &store.page(made)?)?;
            }
            (6..=12, Some(p)) => {
                let tier = (data::index(p.tier) + 1) % data::LADDER.len() as u8;
                let image = p
                    .text
                    .is_none()
                    .then(|| data::image(p.id.0, tier, p.changes));
                let mut after = p.clone();
                after.tier = data::LADDER[usize::from(tier)];
                after.changes += 1;
                line(&mut out, "begin", "decay", &after)?;
                let r = store.transition(
                    p.id,
                    Transition {
                        tier: after.tier,
                        image,
                        tokens: None,
                        reason: "decay".into(),
                        at: Stamp::new(step % 1_000_000, 0),
                        due: Due::NEVER,
                    },
                )?;
                line(&mut out, "done", "decay", &r)?;
            }
            (13..=18, Some(p)) if p.text.is_some() => {
                let mut after = p.clone();
                after.changes += 1;
                after.text = None;
                line(&mut out, "begin", "drop-text", &after)?;
                let image = data::image(p.id.0, data::index(p.tier), p.changes);
                let r = store.drop_text(
                    p.id,
                    Some(image),
                    "drop text",
                    Stamp::new(step % 1_000_000, 0),
                )?;
                line(&mut out, "done", "drop-text", &r)?;
            }
            (19, Some(p)) => {
                line(&mut out, "begin", "compact", &p)?;
                store.compact()?;
                line(&mut out, "done", "compact", &store.page(p.id)?)?;
            }
            _ => {}
        }
    }
}

fn compact(dir: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut store = Store::open(dir)?;
    let ids: Vec<PageId> = store.pages(None)?.pages.iter().map(|p| p.id).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    for n in 0u64.. {
        for _ in 0..100 {
            for &id in &ids {
                store.set_pinned(id, false)?;
            }
        }
        let done = store.compact()?;
        writeln!(
            out,
            "compacted {n} {} {}",
            done.bytes_before, done.bytes_after
        )?;
    }
    Ok(())
}

fn hold(dir: &str) -> Result<(), Box<dyn std::error::Error>> {
    // A short wait: the test that starts this closed the store a moment ago, and a child process
    // another test is starting may still hold that lock through an inherited descriptor.
    let opts = StoreOptions::builder()
        .path(dir)
        .wait(Some(std::time::Duration::from_secs(10)))
        .build()?;
    let store = Store::open_with(opts)?;
    println!("ready");
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        line?;
    }
    store.close()?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["decay", dir, seed] => match seed.parse() {
            Ok(s) => decay(dir, s),
            Err(_) => Err(format!("bad seed {seed:?}").into()),
        },
        ["life", dir, seed] => match seed.parse() {
            Ok(s) => life(dir, s),
            Err(_) => Err(format!("bad seed {seed:?}").into()),
        },
        ["compact", dir] => compact(dir),
        ["hold", dir] => hold(dir),
        _ => Err("usage: lethe-memory-crashtest (decay DIR SEED | life DIR SEED | compact DIR | hold DIR)".into()),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lethe-memory-crashtest: {e}");
            ExitCode::FAILURE
        }
    }
}
