//! Test helper for lethe-memory's crash and lock tests (not a user tool).
//!
//! `lethe-memory-crashtest decay DIR SEED`: opens the store in DIR and cycles its pages down the
//! tier ladder forever, printing `begin PAGE TIER SEQ` before and `done PAGE TIER SEQ` after each
//! committed transition, until it is killed.
//!
//! `lethe-memory-crashtest compact DIR`: opens the store and, over and over, rewrites every page
//! record a few hundred times without changing it (leaving garbage behind) and compacts,
//! printing `compacted N BEFORE AFTER` after each, until it is killed.
//!
//! `lethe-memory-crashtest hold DIR`: opens the store, prints `ready`, and keeps it open until
//! standard input closes.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use lethe_memory::{PageId, Stamp, Store, Tier, TokenCache, Transition};

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
        let tier = (rec.tier.index + 1) % data::LADDER.len() as u8;
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
                tier: Tier::new(tier, data::LADDER[usize::from(tier)]),
                image: data::image(id.0, tier, seq),
                tokens: Some(tokens),
                reason: format!("crash-test step {step}"),
                at: Stamp::new(step, step * 10),
            },
        )?;
        writeln!(out, "done {} {tier} {seq}", id.0)?;
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
    let store = Store::open(dir)?;
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
        ["compact", dir] => compact(dir),
        ["hold", dir] => hold(dir),
        _ => Err("usage: lethe-memory-crashtest (decay DIR SEED | compact DIR | hold DIR)".into()),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lethe-memory-crashtest: {e}");
            ExitCode::FAILURE
        }
    }
}
