//! `memctl context`: a scope's history as a ready request for a hosted vision model.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use lethe::{Providers, Scope};

use super::common::{self, StoreArgs};

/// `memctl context`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Writes a request body in the provider's own format (Anthropic Messages, OpenAI Chat Completions,
Gemini generateContent): old pages as base64 PNGs sized and cropped for the provider's billing,
oldest first, then the recent turns as text, then --question. The provider's image rules come
from providers/providers.toml (built in; --providers FILE for your copy).

Examples:
  memctl context --scope demo --budget 8000 --provider anthropic --out ctx/
  curl https://api.anthropic.com/v1/messages -H \"x-api-key: $ANTHROPIC_API_KEY\" \\
       -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' -d @ctx/request.json

The report (--json, and context.json in --out) gives each page's provider tokens, the total, the
same history's cost as plain text (counted with the provider family's tokenizer where one ships,
OpenAI's o200k_base; else the DeepSeek-OCR tokenizer, named as such) and what truncation to the
same budget would keep.")]
pub struct Args {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The scope (session) whose history is sent.
    #[arg(long, alias = "session", value_name = "S")]
    pub scope: String,
    /// The budget in the provider's tokens (images) plus text tokens (recent turns).
    #[arg(long, value_name = "N")]
    pub budget: u64,
    /// anthropic, openai or gemini (or any provider in --providers).
    #[arg(long, value_name = "P")]
    pub provider: String,
    /// The provider's model (default: the provider's first in the table).
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// A provider table to use instead of the built-in one.
    #[arg(long, value_name = "FILE")]
    pub providers: Option<PathBuf>,
    /// The question that ends the request.
    #[arg(
        long,
        default_value = "Using the conversation above, continue where it left off."
    )]
    pub question: String,
    /// The most tokens the provider may answer with.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_output: u64,
    /// Write request.json, context.json and the images sent (image-N.png) here.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `memctl context`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let table = match &args.providers {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading provider table {}", path.display()))?;
            Providers::from_toml_str(&text, &path.display().to_string())?
        }
        None => Providers::builtin(),
    };
    let provider = table.find(&args.provider, args.model.as_deref())?;
    let memory = common::open(&args.store, &super::store::no_model())?;
    let scope = Scope::session(&args.scope);
    let context = memory
        .provider_context(&scope, args.budget, provider, args.model.as_deref())
        .with_context(|| {
            format!(
                "building the {} context of scope {}",
                args.provider, args.scope
            )
        })?;
    let report = serde_json::to_value(&context).context("serialising the report")?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
        };
        let body = context.payload(&args.question, args.max_output);
        write("request.json", serde_json::to_string(&body)?.as_bytes())?;
        write(
            "context.json",
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
        for (n, image) in context.images.iter().enumerate() {
            write(&format!("image-{n}.png"), &image.png)?;
        }
    }
    if args.json {
        println!("{report}");
        return Ok(ExitCode::SUCCESS);
    }
    let acc = &context.accounting;
    println!(
        "{} {}: {} pages on {} images + {} turns = {} tokens of a {} budget ({} image, {} text)",
        context.provider,
        context.model,
        context.pages.len(),
        context.images.len(),
        context.turns.len(),
        context.total_tokens,
        context.budget,
        context.image_tokens,
        context.text_tokens
    );
    println!(
        "  covers {} of {} turns; as plain text that is {} tokens ({}), {:.2}x the tokens sent",
        acc.turns_included, acc.history_turns, acc.included_text_tokens, acc.tokenizer, acc.ratio
    );
    println!(
        "  truncation to the same budget keeps the last {} turns ({} tokens)",
        acc.truncation_turns, acc.truncation_text_tokens
    );
    if !context.dropped_pages.is_empty() {
        println!("  {} older pages did not fit", context.dropped_pages.len());
    }
    if let Some(dir) = &args.out {
        println!("  wrote {}/request.json", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}
