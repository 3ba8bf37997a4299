//! Arguments and helpers shared by the store subcommands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lethe::{Lethe, OcrOptions, Policy, RecallTarget, Scope};
use lethe_decoder::Quantization;
use lethe_render::transcript::{parse, Format, ParseOptions, Transcript};
use lethe_render::Mode;
use serde::Serialize;

/// Where the store lives.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The store folder (created when missing).
    #[arg(long, default_value = "lethe-store", value_name = "DIR")]
    pub store: PathBuf,
    /// A policy file (TOML; see policies/default.toml). Default: the built-in default policy.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// How many of the most recent turns stay as text.
    #[arg(long, default_value_t = lethe::DEFAULT_HOT_TURNS, value_name = "N")]
    pub hot_turns: usize,
}

/// Which model encodes and decodes pages.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// A DeepSeek-OCR checkpoint folder (config.json, *.safetensors, tokenizer.json). Without it,
    /// pages are rendered, stored and counted, but not encoded, decoded or scored. The real model
    /// needs about 12.4 GB of memory in f32 on CPU (see --quant).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Quantise the decoder's linear layers: none, q8_0 or q4k.
    #[arg(long, default_value = "none", value_name = "Q")]
    pub quant: String,
    /// The most tokens generated per page (pages that hit it are reported).
    #[arg(long, default_value_t = 2048, value_name = "N")]
    pub max_tokens: usize,
}

/// Transcript formats on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// Detect the format.
    Auto,
    /// Plain text, one turn per paragraph.
    Plain,
    /// `Speaker: text` lines.
    Speaker,
    /// JSON Lines of {"role", "content"}.
    Jsonl,
    /// An OpenAI-style messages array.
    Openai,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Auto => Format::Auto,
            FormatArg::Plain => Format::Plain,
            FormatArg::Speaker => Format::Speaker,
            FormatArg::Jsonl => Format::Jsonl,
            FormatArg::Openai => Format::OpenAi,
        }
    }
}

/// Reads and parses a transcript file.
pub fn read_transcript(path: &Path, format: FormatArg, lossy: bool) -> anyhow::Result<Transcript> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading transcript {}", path.display()))?;
    let opts = ParseOptions::new().format(format.into()).lossy(lossy);
    parse(&bytes, &opts).with_context(|| format!("parsing transcript {}", path.display()))
}

/// Opens the store with the policy and model the arguments name.
pub fn open(store: &StoreArgs, model: &ModelArgs) -> anyhow::Result<Lethe> {
    let mut builder = Lethe::builder(&store.store).hot_turns(store.hot_turns);
    if let Some(path) = &store.policy {
        let policy = Policy::from_path(path)
            .with_context(|| format!("reading policy {}", path.display()))?;
        builder = builder.policy(policy);
    }
    if let Some(dir) = &model.model {
        let quantization = parse_quant(&model.quant)?;
        builder = builder.model(dir).ocr_options(OcrOptions {
            max_new_tokens: model.max_tokens,
            quantization,
            ..OcrOptions::default()
        });
    }
    builder
        .build()
        .with_context(|| format!("opening store {}", store.store.display()))
}

/// Parses `--mode` (clap value parser): tiny, small, base, large or gundam.
pub fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse::<Mode>().map_err(|e| e.to_string())
}

/// Parses `--quant`.
pub fn parse_quant(name: &str) -> anyhow::Result<Quantization> {
    Quantization::parse(name).with_context(|| format!("--quant {name}"))
}

/// Deletes a store folder, refusing anything that does not look like a Lethe store.
pub fn remove_store(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if !lethe_memory::Store::looks_like_store(dir) {
        bail!(
            "--fresh: {} exists but is not a Lethe store; refusing to delete it",
            dir.display()
        );
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("deleting store {}", dir.display()))
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress(len: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} [{elapsed_precise}<{eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(message);
    bar
}

/// Recall of one tier's pages: the decoded text scored against the page text.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecallRow {
    /// Tier.
    pub tier: String,
    /// Pages scored.
    pub pages: usize,
    /// Mean Fox-style word precision.
    pub word_precision: f64,
    /// Mean normalised edit distance.
    pub edit_distance: f64,
    /// Mean character F1.
    pub char_f1: f64,
    /// Share of critical spans (numbers, identifiers, URLs, paths, code) recovered exactly.
    pub critical_spans: f64,
}

/// Decodes every page of `scope` that kept its text and scores it, per tier.
pub fn score_pages(lethe: &mut Lethe, scope: &Scope) -> anyhow::Result<Vec<RecallRow>> {
    let pages = lethe.store().pages(Some(scope))?.pages;
    let bar = progress(pages.len() as u64, "decoding pages");
    let mut by_tier: BTreeMap<String, Vec<lethe::metrics::PageScores>> = BTreeMap::new();
    let now = u64::MAX / 2;
    for page in pages {
        bar.inc(1);
        if page.text.is_none() || page.tier.mode == "evicted" {
            continue;
        }
        let recalled = lethe.recall(RecallTarget::Page(page.id), now)?;
        for p in recalled.pages {
            if let (Some(decoded), Some(source)) = (&p.decoded_text, &p.stored_text) {
                by_tier
                    .entry(p.tier.clone())
                    .or_default()
                    .push(lethe::metrics::score_page(source, decoded));
            }
        }
    }
    bar.finish_and_clear();
    Ok(by_tier
        .into_iter()
        .map(|(tier, scores)| {
            let n = scores.len().max(1) as f64;
            RecallRow {
                pages: scores.len(),
                word_precision: scores.iter().map(|s| s.word_precision).sum::<f64>() / n,
                edit_distance: scores.iter().map(|s| s.edit_distance).sum::<f64>() / n,
                char_f1: scores.iter().map(|s| s.char_f1).sum::<f64>() / n,
                critical_spans: lethe::metrics::mean(
                    &scores
                        .iter()
                        .filter_map(|s| s.spans.recall())
                        .collect::<Vec<_>>(),
                )
                .unwrap_or(1.0),
                tier,
            }
        })
        .collect())
}

/// Prints recall rows as a table.
pub fn print_recall(rows: &[RecallRow]) {
    println!(
        "\n{:<8} {:>6} {:>10} {:>10} {:>8} {:>10}",
        "recall", "pages", "word prec", "edit dist", "char F1", "crit spans"
    );
    for r in rows {
        println!(
            "{:<8} {:>6} {:>10.3} {:>10.3} {:>8.3} {:>10.3}",
            r.tier, r.pages, r.word_precision, r.edit_distance, r.char_f1, r.critical_spans
        );
    }
}
