//! Arguments and helpers shared by the store subcommands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lethe::{
    Lethe, OcrModel, OcrOptions, Policy, Reader, RecallTarget, RemoteDecoder, RemoteOptions, Scope,
    Tier,
};
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
    /// If another process has the store open, wait up to this many seconds for it instead of
    /// failing at once (the error names the process that holds it).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<f64>,
}

/// Which model encodes and decodes pages.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// The reader: `embedded` (the default: Lethe's own small reader, built into memctl, with
    /// the render profile and tiers it reads), a DeepSeek-OCR checkpoint folder (config.json,
    /// *.safetensors, tokenizer.json; the real model peaks at 13.5 GB in f32 on CPU, 6.6 GB with
    /// --quant q8_0), or `none` (pages are rendered, stored and counted, but not encoded or read).
    #[arg(long, value_name = "DIR|embedded|none", default_value = "embedded", value_parser = parse_reader)]
    pub model: Reader,
    /// Quantise the decoder's linear layers: none, q8_0 or q4k.
    #[arg(long, default_value = "none", value_name = "Q")]
    pub quant: String,
    /// The most tokens generated per page (pages that hit it are reported).
    #[arg(long, default_value_t = 2048, value_name = "N")]
    pub max_tokens: usize,
    /// Encode every page's vision tokens as it is written or changes tier, and keep them in the
    /// store (reads then skip the encoder). Without it pages are encoded only when read, which
    /// keeps writing fast: the embedded reader takes about 0.2 s to encode a tiny page and 0.5 s
    /// a base one on 2 cores.
    #[arg(long)]
    pub cache_tokens: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// A remote DeepSeek-OCR server (vLLM's OpenAI-compatible API) that reads pages back.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// Read pages on a remote DeepSeek-OCR server with an OpenAI-compatible chat-completions API
    /// (vLLM), e.g. http://gpu-box:8000/v1, instead of a local decoder. Unless --model names a
    /// checkpoint folder, no model is loaded here and pages use the default render profile.
    #[arg(long, value_name = "URL")]
    pub decoder_url: Option<String>,
    /// The model name the remote server serves.
    #[arg(long, value_name = "NAME", default_value = "deepseek-ai/DeepSeek-OCR")]
    pub decoder_model: String,
    /// A file holding the remote server's API key (sent as a bearer token).
    #[arg(long, value_name = "FILE")]
    pub decoder_key_file: Option<PathBuf>,
    /// Seconds one remote request may take.
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    pub decoder_timeout: f64,
    /// Retries of a remote request after a connection error, 408, 429 or 5xx.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub decoder_retries: u32,
    /// The most remote requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub decoder_concurrency: usize,
    /// Ask the server for DeepSeek-OCR's n-gram repetition guard (vLLM started with its
    /// NGramPerReqLogitsProcessor; see the README).
    #[arg(long)]
    pub decoder_ngram: bool,
}

impl Default for RemoteArgs {
    /// No remote decoder; every other field at its command-line default.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            remote: RemoteArgs,
        }
        <Only as clap::Parser>::parse_from(["memctl"]).remote
    }
}

impl RemoteArgs {
    /// The remote decoder these arguments name, if any.
    pub fn decoder(
        &self,
        prompt: &str,
        max_tokens: usize,
    ) -> anyhow::Result<Option<RemoteDecoder>> {
        let Some(url) = &self.decoder_url else {
            return Ok(None);
        };
        if !(self.decoder_timeout.is_finite() && self.decoder_timeout > 0.0) {
            bail!("--decoder-timeout must be a positive number of seconds");
        }
        let api_key = match &self.decoder_key_file {
            Some(path) => {
                let key = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the decoder key file {}", path.display()))?;
                let key = key.trim().to_string();
                if key.is_empty() {
                    bail!("the decoder key file {} is empty", path.display());
                }
                Some(key)
            }
            None => None,
        };
        let options = RemoteOptions {
            model: self.decoder_model.clone(),
            api_key,
            prompt: prompt.to_string(),
            max_tokens,
            timeout: std::time::Duration::from_secs_f64(self.decoder_timeout),
            retries: self.decoder_retries,
            max_in_flight: self.decoder_concurrency,
            ngram_guard: self.decoder_ngram,
            ..RemoteOptions::new(url.clone())
        };
        Ok(Some(RemoteDecoder::new(options)?))
    }
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
    if store.wait.is_some_and(|w| !(w.is_finite() && w >= 0.0)) {
        bail!("--wait must be a number of seconds, 0 or more");
    }
    let mut builder = Lethe::builder(&store.store)
        .hot_turns(store.hot_turns)
        .wait(store.wait.map(std::time::Duration::from_secs_f64));
    if let Some(path) = &store.policy {
        let policy = Policy::from_path(path)
            .with_context(|| format!("reading policy {}", path.display()))?;
        builder = builder.policy(policy);
    }
    let remote = model
        .remote
        .decoder(lethe::DEFAULT_PROMPT, model.max_tokens)?;
    // A remote decoder reads the pages: the embedded reader is not loaded (pages are drawn
    // with the default profile, the real model's), a checkpoint folder still is (to encode).
    let reader = match (&remote, &model.model) {
        (Some(_), Reader::Embedded) => Reader::None,
        (_, reader) => reader.clone(),
    };
    if let Some(remote) = remote {
        builder = builder.remote_decoder(remote);
    }
    if reader != Reader::None {
        let quantization = parse_quant(&model.quant)?;
        builder = builder.ocr_options(OcrOptions {
            max_new_tokens: model.max_tokens,
            quantization,
            ..OcrOptions::default()
        });
    }
    builder
        .reader(reader)
        .cache_tokens(model.cache_tokens)
        .build()
        .with_context(|| match &model.model {
            Reader::Folder(dir) => format!(
                "opening store {} with the model {}",
                store.store.display(),
                dir.display()
            ),
            _ => format!("opening store {}", store.store.display()),
        })
}

/// Parses `--model`: `embedded`, `none`, or a checkpoint folder.
pub fn parse_reader(s: &str) -> Result<Reader, String> {
    match s {
        "embedded" => Ok(Reader::Embedded),
        "none" => Ok(Reader::None),
        "" => Err("expected a model folder, `embedded` or `none`".into()),
        dir => Ok(Reader::Folder(PathBuf::from(dir))),
    }
}

/// Loads the model `--model` names (`None` for `--model none`).
pub fn load_model(reader: &Reader, options: OcrOptions) -> anyhow::Result<Option<OcrModel>> {
    reader.load(options).with_context(|| match reader {
        Reader::Folder(dir) => format!("loading the model from {}", dir.display()),
        _ => "loading the embedded reader".to_string(),
    })
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
#[derive(Debug, Clone, Serialize)]
pub struct RecallRow {
    /// Tier.
    pub tier: Tier,
    /// Pages scored.
    pub pages: usize,
    /// Pages of the tier that kept their text (the sample was drawn from these).
    pub of_pages: usize,
    /// Mean Fox-style word precision.
    pub word_precision: f64,
    /// Mean normalised edit distance.
    pub edit_distance: f64,
    /// Mean character F1.
    pub char_f1: f64,
    /// Share of critical spans (numbers, identifiers, URLs, paths, code) recovered exactly.
    pub critical_spans: f64,
}

/// Decodes the pages of `scope` that kept their text and scores them, per tier: every page, or
/// `per_tier` pages of each tier spread evenly over its pages (oldest to newest).
pub fn score_pages(
    lethe: &Lethe,
    scope: &Scope,
    per_tier: Option<usize>,
) -> anyhow::Result<Vec<RecallRow>> {
    let pages = lethe.store().pages(Some(scope))?.pages;
    let mut tiers: BTreeMap<Tier, Vec<lethe_memory::PageId>> = BTreeMap::new();
    let mut totals: BTreeMap<Tier, usize> = BTreeMap::new();
    for page in &pages {
        if page.text.is_none() || page.tier.is_evicted() {
            continue;
        }
        tiers.entry(page.tier).or_default().push(page.id);
    }
    for (tier, ids) in tiers.iter_mut() {
        totals.insert(*tier, ids.len());
        if let Some(n) = per_tier {
            *ids = spread_sample(ids, n);
        }
    }
    let ids: Vec<lethe_memory::PageId> = tiers.into_values().flatten().collect();
    let bar = progress(ids.len() as u64, "reading pages back");
    let now = u64::MAX / 2;
    let recalled = lethe::read_side_by_side(&ids, |&id| {
        let recalled = lethe.recall(RecallTarget::Page(id), now)?;
        bar.inc(1);
        anyhow::Ok(recalled)
    })?;
    let mut by_tier: BTreeMap<Tier, Vec<lethe_cli::metrics::PageScores>> = BTreeMap::new();
    for recalled in recalled {
        for p in recalled.pages {
            if let (Some(decoded), Some(source)) = (&p.decoded_text, &p.stored_text) {
                by_tier
                    .entry(p.tier)
                    .or_default()
                    .push(lethe_cli::metrics::score_page(source, decoded));
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
                of_pages: totals.get(&tier).copied().unwrap_or(scores.len()),
                word_precision: scores.iter().map(|s| s.word_precision).sum::<f64>() / n,
                edit_distance: scores.iter().map(|s| s.edit_distance).sum::<f64>() / n,
                char_f1: scores.iter().map(|s| s.char_f1).sum::<f64>() / n,
                critical_spans: lethe_cli::metrics::mean(
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

/// `n` items of `items` spread evenly (first and last included), or all when there are fewer.
fn spread_sample<T: Copy>(items: &[T], n: usize) -> Vec<T> {
    if n == 0 {
        return Vec::new();
    }
    if items.len() <= n {
        return items.to_vec();
    }
    if n == 1 {
        return vec![items[items.len() / 2]];
    }
    (0..n)
        .map(|i| items[i * (items.len() - 1) / (n - 1)])
        .collect()
}

/// Prints recall rows as a table.
pub fn print_recall(rows: &[RecallRow]) {
    println!(
        "\n{:<8} {:>9} {:>10} {:>10} {:>8} {:>10}",
        "recall", "pages", "word prec", "edit dist", "char F1", "crit spans"
    );
    for r in rows {
        println!(
            "{:<8} {:>9} {:>10.3} {:>10.3} {:>8.3} {:>10.3}",
            r.tier,
            format!("{}/{}", r.pages, r.of_pages),
            r.word_precision,
            r.edit_distance,
            r.char_f1,
            r.critical_spans
        );
    }
    if rows.iter().any(|r| r.pages < r.of_pages) {
        println!(
            "pages = read / held at that tier: recall is measured on a sample spread over each \
             tier's pages (--recall-pages all reads every page)"
        );
    }
}

/// Bytes in words: `512 B`, `1.50 MB`, `23.4 GB` (powers of 1000).
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ if value < 10.0 => format!("{value:.2} {}", units[unit]),
        _ if value < 100.0 => format!("{value:.1} {}", units[unit]),
        _ => format!("{value:.0} {}", units[unit]),
    }
}
