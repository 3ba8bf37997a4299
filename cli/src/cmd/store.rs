//! The store subcommands: `recall`, `stats`, `history`, `maintain`, `pin`, `compact`, `export`,
//! `import`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use lethe::{PageId, RecallTarget, Scope, Tier};

use super::common::{self, ModelArgs, StoreArgs};

/// Arguments of `memctl recall`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  memctl recall --page 3 --store scratch/store
  memctl recall --session agent-sessions --turns 10..20 --model ~/models/DeepSeek-OCR")]
pub struct RecallArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The page to read.
    #[arg(long, conflicts_with_all = ["session", "turns"], required_unless_present = "turns")]
    pub page: Option<u64>,
    /// The session whose turns to read (with --turns).
    #[arg(long, requires = "turns")]
    pub session: Option<String>,
    /// A turn range START..END (END exclusive) of --session.
    #[arg(long, value_name = "START..END", requires = "session")]
    pub turns: Option<String>,
    /// The current time in seconds (an access reinforces the page). Default: now.
    #[arg(long)]
    pub now: Option<u64>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `memctl recall`.
pub fn recall(args: RecallArgs) -> anyhow::Result<ExitCode> {
    let target = match (args.page, &args.session, &args.turns) {
        (Some(page), _, _) => RecallTarget::Page(PageId(page)),
        (None, Some(session), Some(turns)) => {
            let (start, end) = parse_range(turns)?;
            RecallTarget::Turns {
                scope: Scope::session(session.clone()),
                start,
                end,
            }
        }
        _ => bail!("give --page N, or --session NAME with --turns START..END"),
    };
    let lethe = common::open(&args.store, &args.model)?;
    let recall = lethe.recall(target, now_or(args.now))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&recall)?);
        return Ok(ExitCode::SUCCESS);
    }
    for page in &recall.pages {
        println!(
            "── page {} · turns {}..{} · tier {}",
            page.id, page.turns.0, page.turns.1, page.tier
        );
        match &page.decoded_text {
            Some(text) => println!("[decoded]\n{text}"),
            None if lethe.model().is_none() => {
                println!("[decoded] (no model: pass --model DIR to read the image back)")
            }
            None => println!("[decoded] (evicted: no image left)"),
        }
        match &page.stored_text {
            Some(text) => println!("[stored text]\n{text}"),
            None => println!("[stored text] (dropped by the policy)"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `memctl stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `memctl stats`.
pub fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let lethe = common::open(&args.store, &no_model())?;
    let report = lethe.report()?;
    if args.json {
        let stats = lethe.store().stats()?;
        let value = serde_json::json!({ "report": report, "store": stats });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        super::compress::print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `memctl history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The page.
    pub page: u64,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `memctl history PAGE`.
pub fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let lethe = common::open(&args.store, &no_model())?;
    let changes = lethe.history(PageId(args.page))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&changes)?);
        return Ok(ExitCode::SUCCESS);
    }
    for c in &changes {
        let name = |t: &Option<Tier>| t.map_or("-", Tier::name);
        println!(
            "#{:<3} turn {:>6} t={:>10}  {:>7} -> {:<7}  {}",
            c.seq,
            c.at.turn,
            c.at.time,
            name(&c.from),
            name(&c.to),
            c.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `memctl maintain`.
#[derive(Debug, clap::Args)]
pub struct MaintainArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The current time in seconds (default: now).
    #[arg(long)]
    pub now: Option<u64>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `memctl maintain`.
pub fn maintain(args: MaintainArgs) -> anyhow::Result<ExitCode> {
    let mut lethe = common::open(&args.store, &args.model)?;
    let done = lethe.maintain(now_or(args.now))?;
    lethe.flush()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        println!(
            "paged out {} turns into {} pages; {} tier changes ({} evicted); text dropped from \
             {} pages; {:.0} ms",
            done.paged_out_turns,
            done.pages_created,
            done.transitions,
            done.evicted,
            done.texts_dropped,
            done.usage.millis
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `memctl pin`.
#[derive(Debug, clap::Args)]
pub struct PinArgs {
    /// The page.
    pub page: u64,
    /// Unpin instead.
    #[arg(long)]
    pub unpin: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Runs `memctl pin PAGE`.
pub fn pin(args: PinArgs) -> anyhow::Result<ExitCode> {
    let lethe = common::open(&args.store, &no_model())?;
    lethe.pin(PageId(args.page), !args.unpin)?;
    lethe.flush()?;
    println!(
        "page {} {}",
        args.page,
        if args.unpin { "unpinned" } else { "pinned" }
    );
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `memctl compact`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
The storage engine appends every write and keeps the space that tier changes and deletions free;
a store that decays for a long time takes several times its live data on disk. compact copies the
live records into a fresh folder inside the store and swaps it in; a crash at any point loses
nothing (the next open finishes or undoes the swap). memctl compress compacts when it finishes.")]
pub struct CompactArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `memctl compact`.
pub fn compact(args: CompactArgs) -> anyhow::Result<ExitCode> {
    let mut lethe = common::open(&args.store, &no_model())?;
    let done = lethe
        .compact()
        .with_context(|| format!("compacting {}", args.store.store.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        println!(
            "{}: {} records; {} -> {} bytes on disk",
            args.store.store.display(),
            done.records,
            done.bytes_before,
            done.bytes_after
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `memctl export` and `memctl import`.
#[derive(Debug, clap::Args)]
pub struct PortableArgs {
    /// The portable folder (pages as PNG, text, profiles and metadata as JSON).
    pub dir: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Runs `memctl export DIR`.
pub fn export(args: PortableArgs) -> anyhow::Result<ExitCode> {
    let lethe = common::open(&args.store, &no_model())?;
    let summary = lethe
        .store()
        .export(&args.dir)
        .with_context(|| format!("exporting to {}", args.dir.display()))?;
    println!("exported to {}: {}", args.dir.display(), transfer(&summary));
    Ok(ExitCode::SUCCESS)
}

/// Runs `memctl import DIR`.
pub fn import(args: PortableArgs) -> anyhow::Result<ExitCode> {
    let lethe = common::open(&args.store, &no_model())?;
    let summary = lethe
        .store()
        .import(&args.dir)
        .with_context(|| format!("importing from {}", args.dir.display()))?;
    lethe.flush()?;
    println!(
        "imported from {}: {}",
        args.dir.display(),
        transfer(&summary)
    );
    Ok(ExitCode::SUCCESS)
}

/// What an export or import moved, in words.
fn transfer(s: &lethe_memory::export::TransferSummary) -> String {
    format!(
        "{} pages, {} hot turns, {} history entries, {} bytes of images, tokens and text",
        s.pages, s.turns, s.history_entries, s.content_bytes
    )
}

pub(crate) fn no_model() -> ModelArgs {
    ModelArgs {
        model: lethe::Reader::None,
        quant: "none".into(),
        max_tokens: 0,
        cache_tokens: false,
        remote: Default::default(),
    }
}

fn now_or(now: Option<u64>) -> u64 {
    now.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

fn parse_range(s: &str) -> anyhow::Result<(u64, u64)> {
    let (a, b) = s
        .split_once("..")
        .with_context(|| format!("--turns {s:?}: expected START..END"))?;
    let start: u64 = a
        .trim()
        .parse()
        .with_context(|| format!("--turns {s:?}: bad START"))?;
    let end: u64 = b
        .trim()
        .parse()
        .with_context(|| format!("--turns {s:?}: bad END"))?;
    if end <= start {
        bail!("--turns {s:?}: END must be greater than START");
    }
    Ok((start, end))
}
