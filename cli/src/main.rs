//! `memctl`: the command-line front end of Lethe.
//!
//! Each subcommand lives in its own module under `src/cmd/`; this file only parses arguments,
//! dispatches, prints errors with their causes and maps outcomes to exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// Exit codes, documented in `--help`.
const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  error (bad input, missing or corrupt files, I/O); the message names what and where
  2  usage error (bad arguments)
  3  completed with a warning that needs attention (e.g. generation hit --max-tokens,
     characters no font covers)";

/// Optical context-compression memory for LLM agents.
///
/// Old dialogue is rendered to page images, encoded to a few vision tokens, kept in a tiered
/// store that re-renders older pages at lower resolution, and decoded back to text on demand.
#[derive(Debug, Parser)]
#[command(name = "memctl", version, after_help = AFTER_HELP, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Render a transcript to page images at one resolution mode.
    Render(cmd::render::Args),
    /// Encode one image to vision tokens with a DeepSeek-OCR checkpoint.
    Encode(cmd::encode::Args),
    /// Run the whole DeepSeek-OCR pipeline (encode + decode) on one image.
    Ocr(cmd::ocr::Args),
    /// Ingest a transcript turn by turn and report tokens, bytes and recall per tier.
    Compress(cmd::compress::Args),
    /// Read pages back: decoded text (with a model) and the retained text.
    Recall(cmd::store::RecallArgs),
    /// Pages, tokens, compression ratios and bytes per tier.
    Stats(cmd::store::StatsArgs),
    /// A page's tier changes, with their reasons.
    History(cmd::store::HistoryArgs),
    /// Page out old turns and apply the forgetting policy now.
    Maintain(cmd::store::MaintainArgs),
    /// Pin a page at its tier (or unpin it).
    Pin(cmd::store::PinArgs),
    /// Give back the disk space decay left behind (crash-safe rewrite of the store's files).
    Compact(cmd::store::CompactArgs),
    /// Export the store to a portable folder.
    Export(cmd::store::PortableArgs),
    /// Import a portable folder into the store.
    Import(cmd::store::PortableArgs),
    /// Measure compression against recall at every mode, with baselines.
    Bench(cmd::bench::Args),
    /// Fetch a checkpoint from the Hugging Face Hub (`model pull`) or list known models.
    Model(cmd::model::Args),
    /// A scope's history as a ready request for Claude, GPT or Gemini, within a token budget.
    Context(cmd::context::Args),
    /// Serve the store over HTTP: a REST API under /v1 and MCP at /mcp.
    Serve(cmd::serve::ServeArgs),
    /// Serve the store as an MCP server over stdio.
    Mcp(cmd::serve::McpArgs),
}

fn main() -> ExitCode {
    // Piped into `head` or a closed reader, stop quietly as Unix tools do, rather than panic on
    // the first print to a closed stdout.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render(args) => cmd::render::run(args),
        Command::Encode(args) => cmd::encode::run(args),
        Command::Ocr(args) => cmd::ocr::run(args),
        Command::Compress(args) => cmd::compress::run(args),
        Command::Recall(args) => cmd::store::recall(args),
        Command::Stats(args) => cmd::store::stats(args),
        Command::History(args) => cmd::store::history(args),
        Command::Maintain(args) => cmd::store::maintain(args),
        Command::Pin(args) => cmd::store::pin(args),
        Command::Compact(args) => cmd::store::compact(args),
        Command::Export(args) => cmd::store::export(args),
        Command::Import(args) => cmd::store::import(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Model(args) => cmd::model::run(args),
        Command::Context(args) => cmd::context::run(args),
        Command::Serve(args) => cmd::serve::serve(args),
        Command::Mcp(args) => cmd::serve::mcp(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("memctl: error: {}", message(&err));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes, `: `-separated (each error in the chain prints only its own part).
fn message(err: &anyhow::Error) -> String {
    err.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// Has glibc's allocator keep freed memory for reuse instead of handing it back to the kernel.
///
/// The towers allocate activations of 4-70 MB per layer. By default glibc maps each one fresh
/// (above its mmap threshold, which tops out at 32 MB) and unmaps it on free, so every layer
/// pays the kernel to fault in and zero its pages again; on a 2-core Zen 3 that cost 12-20% of an
/// encode (`MALLOC_*` variables with the same values gave `memctl encode` and the PyTorch mirror
/// the same gain). Serving the big blocks from the heap and not trimming it trades those faults
/// for a resident size that stays near its peak until exit. Set `MALLOC_MMAP_THRESHOLD_` or
/// `MALLOC_TRIM_THRESHOLD_` to choose otherwise: a variable the user set is left as it is.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// Blocks up to this size come from the heap, where freed ones are reused.
        const MMAP_THRESHOLD: libc::c_int = 1 << 30;
        /// Free memory at the heap's top kept rather than given back.
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: `mallopt` only changes the allocator's parameters; called before any
            // other thread exists.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        }
        if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
            // SAFETY: as above.
            unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) };
        }
    }
}
