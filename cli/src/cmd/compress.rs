//! `memctl compress`: ingest a transcript turn by turn into a store and report, per tier, what it
//! costs and (with a model) what comes back.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use lethe::{Report, Scope};

use super::common::{self, human_bytes, ModelArgs, StoreArgs};

/// Arguments of `memctl compress`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Each turn is appended as if it had just arrived and the store is maintained after every turn,
so older turns leave the hot window, become pages, and age down the policy's tiers. The report
gives, per tier: pages, text tokens (DeepSeek-OCR tokenizer unless the model folder has its own),
decoder positions and nominal vision tokens, compression ratios, and bytes; the store's bytes
on disk; and, with --model, recall of each page's decoded text against its source.

Examples:
  memctl compress samples/agent-sessions.txt --store scratch/store --fresh
  memctl compress chat.jsonl --policy policies/default.toml --json > report.json")]
pub struct Args {
    /// The transcript: plain text, `Speaker: text` lines, JSON Lines or an OpenAI messages array.
    pub transcript: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Delete the store folder first (only if it is a Lethe store).
    #[arg(long)]
    pub fresh: bool,
    /// Transcript format (default: detected).
    #[arg(long, value_enum, default_value = "auto")]
    pub format: common::FormatArg,
    /// Replace invalid UTF-8 with U+FFFD instead of failing.
    #[arg(long)]
    pub lossy: bool,
    /// Seconds between consecutive turns on the simulated clock.
    #[arg(long, default_value_t = 60)]
    pub seconds_per_turn: u64,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Pages read back per tier to measure recall, spread evenly over the tier's pages, or
    /// `all`.
    #[arg(long, default_value = "8", value_name = "N|all", value_parser = parse_recall_pages)]
    pub recall_pages: RecallPages,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// How many pages per tier `--recall-pages` reads (`None`: all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecallPages(pub Option<usize>);

fn parse_recall_pages(s: &str) -> Result<RecallPages, String> {
    if s == "all" {
        return Ok(RecallPages(None));
    }
    s.parse::<usize>()
        .map(|n| RecallPages(Some(n)))
        .map_err(|_| format!("expected a number of pages or `all`, got {s:?}"))
}

/// Runs `memctl compress`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let transcript = common::read_transcript(&args.transcript, args.format, args.lossy)?;
    if args.fresh {
        common::remove_store(&args.store.store)?;
    }
    let mut lethe = common::open(&args.store, &args.model)?;
    let stem = args
        .transcript
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "transcript".into());
    let scope = Scope::session(stem);
    if lethe.store().next_turn(&scope)? > 0 {
        bail!(
            "store {} already holds session {:?}: pass --fresh to start over, or another --store",
            args.store.store.display(),
            scope.session
        );
    }
    let bar = common::progress(transcript.turns.len() as u64, "compressing turns");
    let mut transitions = 0;
    let mut missing_glyphs = 0;
    for (i, turn) in transcript.turns.iter().enumerate() {
        let now = i as u64 * args.seconds_per_turn;
        lethe.append(&scope, std::slice::from_ref(turn), now)?;
        let done = lethe
            .maintain(now)
            .with_context(|| format!("maintaining the store after turn {}", i + 1))?;
        transitions += done.transitions;
        missing_glyphs += done.missing_glyphs;
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Decay rewrote most pages several times; give the space back before reporting sizes.
    let compaction = lethe.compact().context("compacting the store")?;
    let report = lethe.report()?;
    let recall = match lethe.model() {
        Some(_) => Some(common::score_pages(&lethe, &scope, args.recall_pages.0)?),
        None => None,
    };
    if args.json {
        let value = serde_json::json!({
            "transcript": args.transcript,
            "format": transcript.format.name(),
            "turns": transcript.turns.len(),
            "store": args.store.store,
            "transitions": transitions,
            "compaction": compaction,
            "missing_glyphs": missing_glyphs,
            "report": report,
            "recall": recall,
            "recall_note": recall.is_none().then_some("recall needs a reader: --model none reads nothing"),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "{}: {} turns ({} format) into {}; {} tier changes; store compacted from {} to {} bytes",
            args.transcript.display(),
            transcript.turns.len(),
            transcript.format.name(),
            args.store.store.display(),
            transitions,
            compaction.bytes_before,
            compaction.bytes_after
        );
        print_report(&report);
        match &recall {
            Some(rows) => common::print_recall(rows),
            None => println!(
                "\nrecall: not measured; --model none reads nothing back (the embedded reader is the default)"
            ),
        }
    }
    Ok(if missing_glyphs > 0 {
        eprintln!("memctl: warning: {missing_glyphs} characters had no glyph in the bundled fonts");
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints the per-tier table of a report.
pub fn print_report(report: &Report) {
    println!(
        "\n{:<8} {:>6} {:>11} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10}",
        "tier",
        "pages",
        "text tok",
        "positions",
        "vision tok",
        "tok/pos",
        "tok/vis",
        "text B",
        "image B",
        "tokens B"
    );
    for row in report.tiers.iter().chain(std::iter::once(&report.total)) {
        let pages = if row.tier == "hot" {
            format!("{}t", row.pages)
        } else {
            row.pages.to_string()
        };
        println!(
            "{:<8} {:>6} {:>11} {:>10} {:>10} {:>8.2} {:>8.2} {:>10} {:>10} {:>10}",
            row.tier,
            pages,
            row.text_tokens,
            row.decoder_positions,
            row.vision_tokens,
            row.ratio_positions,
            row.ratio_vision_tokens,
            row.text_bytes,
            row.image_bytes,
            row.token_bytes
        );
    }
    println!(
        "\ntext tokens counted with the {} tokenizer; hot = turns still kept as text (t = turns), \
         which cost their text tokens; pages that keep their text store no image (it is redrawn)",
        report.tokenizer
    );
    let s = &report.store;
    println!(
        "store: {} on disk (engine {}, {} blob files {}); live {} as stored (records deflated), \
         holding text {}, images {}, token caches {} and {} of other record fields{}",
        human_bytes(s.bytes_on_disk),
        human_bytes(s.engine_bytes_on_disk),
        s.blob_files,
        human_bytes(s.blob_bytes_on_disk),
        human_bytes(s.live_bytes),
        human_bytes(s.made_of.text),
        human_bytes(s.made_of.images),
        human_bytes(s.made_of.tokens),
        human_bytes(s.made_of.records),
        if report.corrupt_pages > 0 {
            format!(" ({} corrupt pages)", report.corrupt_pages)
        } else {
            String::new()
        }
    );
}
