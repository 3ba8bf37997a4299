//! `memctl bench`: how many tokens Lethe saves, and how much of the text comes back.
//!
//! Renders each transcript's pages at every mode (or takes given page images, Fox-style), has a
//! decoder read each page back, scores the text against the page's source with
//! [`lethe_cli::metrics`], adds the truncation and uncompressed baselines at the same token budget,
//! and writes a table, JSON, CSV and the recall-against-compression plot (SVG and PNG).
//!
//! The command is built around two plug points, so the same harness measures any decoder:
//! [`PageReader`] (image in, text out: the encoder + decoder pipeline) and [`PageRenderer`]
//! (transcript in, page texts and page images out: `lethe-render`). [`page_reader`] and
//! [`page_renderer`] pick them from the arguments: today [`OcrReader`] (a DeepSeek-OCR-family
//! checkpoint given with `--model`) and [`TranscriptRenderer`]. Without a decoder the command
//! refuses to run rather than print numbers no model produced.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use lethe::{OcrModel, OcrOptions, RemoteDecoder};
use lethe_cli::metrics::{
    BenchReport, BoxError, Keep, PageRecord, Plot, SourcePage, TextTokenizer,
};
use lethe_render::{Mode, Page, PageImage, RenderProfile, Renderer};

use super::common::{self, read_transcript, FormatArg, ModelArgs};

/// How `--truth` is read; shown in `--help`.
const AFTER_HELP: &str = "\
Inputs:
  TRANSCRIPT...      each transcript is paginated once (page text is fixed), then every page is
                     rendered at every --modes mode, read back by the decoder and scored.
  --images DIR --truth PATH
                     Fox-style: score given page images (PNG) against ground truth, e.g. the Fox
                     benchmark's English pages with a DeepSeek-OCR checkpoint (prompt
                     \"<image>\\nFree OCR.\"), to reproduce the paper's table. PATH is either
                       - a JSON Lines file, one object per page:
                           {\"image\": \"page_001.png\", \"text\": \"the page's exact text\"}
                         (`image` relative to DIR; blank lines are skipped), or
                       - a folder holding NAME.txt (UTF-8) for every NAME.png in DIR.

Metrics (per page, then mean and 10th percentile per mode and per 100-token bucket):
  word prec   share of the source's unique words found in the output (Fox-style precision;
              each CJK character is a word)
  edit dist   Levenshtein distance over chars / longer length, whitespace-normalised (lower is
              better; its worst decile is p90)
  char F1     bag-of-characters F1, whitespace ignored
  spans       exact recall of critical spans: numbers, identifiers, hashes, UUIDs, ticket ids,
              URLs, paths, code lines
Baselines at each mode's budget N (the page's decoder positions): truncation@MODE keeps the first
N text tokens of the page (--truncate last: the last N, as an agent keeping its latest context
would); uncompressed is the text itself (ratio 1).

Outputs in --out: report.json, report.csv, recall.svg, recall.png; the table (or with --json the
JSON) on stdout; progress on stderr.";

/// Arguments of `memctl bench`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Transcripts to paginate, render, decode and score.
    #[arg(value_name = "TRANSCRIPT", required_unless_present = "images")]
    pub transcripts: Vec<PathBuf>,

    /// Resolution modes to measure, comma-separated. Default: the tiers the reader declares
    /// (the embedded reader: base,tiny), else tiny,small,base,large,gundam.
    #[arg(long, value_delimiter = ',')]
    pub modes: Vec<Mode>,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Score provider-sized pages: each page laid out densely (DeepSeek-OCR's default profile),
    /// drawn at this provider's size for the mode (see providers/providers.toml), cropped to its
    /// text, and costed in the provider's tokens, as `memctl context` sends them, so
    /// the curve is ratio against recall in that provider's tokens (anthropic, openai, gemini).
    /// The local reader (or --decoder-url) stands in for the provider's own reading.
    #[arg(long, value_name = "P")]
    pub provider: Option<String>,

    /// The provider's model (default: its first in the table).
    #[arg(long, value_name = "M", requires = "provider")]
    pub provider_model: Option<String>,

    /// The prompt; `<image>` marks where the page's vision tokens go.
    #[arg(long, default_value = lethe_decoder::DEFAULT_PROMPT)]
    pub prompt: String,

    /// Transcript format.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: FormatArg,

    /// tokenizer.json that counts text tokens; default: the model folder's, else the embedded
    /// DeepSeek-OCR tokenizer.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,

    /// Folder for report.json, report.csv, recall.svg and recall.png (created if missing).
    #[arg(long, value_name = "DIR", default_value = "bench-out")]
    pub out: PathBuf,

    /// Print the JSON report on stdout instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Which N text tokens of a page the truncation baseline keeps: first or last.
    #[arg(long, value_name = "END", default_value = "first")]
    pub truncate: Keep,

    /// Width of the text-token buckets per page.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub bucket_width: u32,

    /// Fox-style: a folder of page images to score against --truth instead of transcripts.
    #[arg(
        long,
        value_name = "DIR",
        requires = "truth",
        conflicts_with = "transcripts"
    )]
    pub images: Option<PathBuf>,

    /// Ground truth for --images: a JSON Lines file or a folder of NAME.txt (see below).
    #[arg(long, value_name = "PATH", requires = "images")]
    pub truth: Option<PathBuf>,
}

/// A decoder that reads a page image back to text: the encoder + decoder pipeline, a local
/// checkpoint, or a remote endpoint.
pub trait PageReader: Sync {
    /// A name for the report, e.g. `deepseek-ocr (/models/DeepSeek-OCR)` or `embedded`.
    fn name(&self) -> String;
    /// Reads one page image (PNG bytes) in `mode` (the reader pre-processes it as the mode says:
    /// stretch, pad or tile) and returns the decoded text.
    /// Readings may run side by side on several threads.
    fn read(&self, png: &[u8], mode: Mode) -> anyhow::Result<String>;
    /// Warnings about the readings so far (e.g. pages cut off by the token limit); any makes the
    /// command exit with code 3.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    /// The render profile the reader reads (transcript pages are drawn with it), if it declares
    /// one.
    fn render_profile(&self) -> Option<RenderProfile> {
        None
    }
    /// The modes the reader reads (the default `--modes`), if it declares them.
    fn modes(&self) -> Option<Vec<Mode>> {
        None
    }
}

/// Turns transcripts into pages: fixed page texts, each rasterised at any mode.
pub trait PageRenderer {
    /// Parses and paginates one transcript file; returns each page's exact text, in order.
    fn paginate(&mut self, transcript: &Path) -> anyhow::Result<Vec<String>>;
    /// Rasterises page `page` of the transcript last given to [`PageRenderer::paginate`] at
    /// `mode`'s resolution, as PNG bytes.
    fn render(&mut self, page: usize, mode: Mode) -> anyhow::Result<Vec<u8>>;
}

/// The decoder for this run: a remote server when `--decoder-url` names one, else the reader
/// `--model` names (the embedded one by default), or `None` for `--model none` (the command then
/// refuses to run).
pub fn page_reader(args: &Args) -> anyhow::Result<Option<Box<dyn PageReader>>> {
    if let Some(remote) = args
        .model
        .remote
        .decoder(&args.prompt, args.model.max_tokens)?
    {
        return Ok(Some(Box::new(RemoteReader {
            name: format!("{} at {}", remote.model(), remote.endpoint()),
            remote,
            max_tokens: args.model.max_tokens,
            hit_limit: AtomicUsize::new(0),
        })));
    }
    let quantization = common::parse_quant(&args.model.quant)?;
    let options = OcrOptions {
        prompt: args.prompt.clone(),
        max_new_tokens: args.model.max_tokens,
        quantization,
        ..OcrOptions::default()
    };
    let Some(model) = common::load_model(&args.model.model, options)? else {
        return Ok(None);
    };
    let name = format!("{} ({})", model.name(), args.model.quant);
    Ok(Some(Box::new(OcrReader {
        model,
        name,
        max_tokens: args.model.max_tokens,
        hit_limit: AtomicUsize::new(0),
    })))
}

/// The renderer for transcripts: `lethe-render` with the profile the reader declares (its pages
/// are drawn the way it reads them), else the default profile.
pub fn page_renderer(
    args: &Args,
    profile: Option<RenderProfile>,
) -> anyhow::Result<Option<Box<dyn PageRenderer>>> {
    let renderer = Renderer::builder()
        .profile(profile.unwrap_or_default())
        .build()
        .context("loading the renderer's fonts")?;
    let provider_sizes = provider(args)?.map(|p| p.tiers);
    Ok(Some(Box::new(TranscriptRenderer {
        renderer,
        provider_sizes,
        format: args.format,
        pages: Vec::new(),
    })))
}

/// [`PageReader`] over a remote DeepSeek-OCR server ([`RemoteDecoder`]). It reads pages drawn
/// with the default render profile, the real model's.
pub struct RemoteReader {
    remote: RemoteDecoder,
    name: String,
    max_tokens: usize,
    /// Readings that stopped at `max_tokens`.
    hit_limit: AtomicUsize,
}

impl PageReader for RemoteReader {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn render_profile(&self) -> Option<RenderProfile> {
        None
    }

    fn modes(&self) -> Option<Vec<Mode>> {
        None
    }

    fn read(&self, png: &[u8], mode: Mode) -> anyhow::Result<String> {
        let reading = self
            .remote
            .read_image(png, "image/png")
            .with_context(|| format!("reading the page at {mode} remotely"))?;
        self.hit_limit
            .fetch_add(usize::from(reading.hit_limit), Ordering::Relaxed);
        Ok(reading.text)
    }

    fn warnings(&self) -> Vec<String> {
        limit_warning(self.hit_limit.load(Ordering::Relaxed), self.max_tokens)
    }
}

fn limit_warning(hit_limit: usize, max_tokens: usize) -> Vec<String> {
    if hit_limit == 0 {
        return Vec::new();
    }
    vec![format!(
        "{hit_limit} page readings stopped at --max-tokens {max_tokens} before the end of the \
         page; their recall is cut short (raise --max-tokens)"
    )]
}

/// [`PageReader`] over [`OcrModel`]: DeepEncoder + MoE decoder from one checkpoint folder.
pub struct OcrReader {
    model: OcrModel,
    name: String,
    max_tokens: usize,
    /// Readings that stopped at `max_tokens`.
    hit_limit: AtomicUsize,
}

impl PageReader for OcrReader {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn render_profile(&self) -> Option<RenderProfile> {
        self.model.render_profile().cloned()
    }

    fn modes(&self) -> Option<Vec<Mode>> {
        self.model.modes()
    }

    fn read(&self, png: &[u8], mode: Mode) -> anyhow::Result<String> {
        let image = PageImage::from_png(png).context("decoding the page image")?;
        let reading = self
            .model
            .read(&image, mode, None)
            .with_context(|| format!("reading the page at {mode}"))?;
        self.hit_limit
            .fetch_add(usize::from(reading.hit_limit), Ordering::Relaxed);
        Ok(reading.text)
    }

    fn warnings(&self) -> Vec<String> {
        limit_warning(self.hit_limit.load(Ordering::Relaxed), self.max_tokens)
    }
}

/// [`PageRenderer`] over `lethe-render`: parses a transcript, paginates its turns, rasterises
/// pages in 8-bit grey.
pub struct TranscriptRenderer {
    renderer: Renderer,
    /// Draw at a provider's sizes, cropped to the text, instead of DeepSeek-OCR's modes.
    provider_sizes: Option<lethe::TierSizes>,
    format: FormatArg,
    pages: Vec<Page>,
}

impl PageRenderer for TranscriptRenderer {
    fn paginate(&mut self, transcript: &Path) -> anyhow::Result<Vec<String>> {
        let t = read_transcript(transcript, self.format, false)?;
        self.pages = self
            .renderer
            .paginate(&t.turns)
            .with_context(|| format!("paginating {}", transcript.display()))?;
        Ok(self.pages.iter().map(|p| p.text.clone()).collect())
    }

    fn render(&mut self, page: usize, mode: Mode) -> anyhow::Result<Vec<u8>> {
        let p = self
            .pages
            .get(page)
            .ok_or_else(|| anyhow!("no page {page} in the last transcript"))?;
        let image = match self.provider_sizes {
            Some(sizes) => self
                .renderer
                .rasterize_long_edge(p, sizes.at(mode))
                .crop_to_ink(),
            None => self.renderer.rasterize(p, mode),
        };
        image
            .to_png()
            .with_context(|| format!("encoding page {} at {mode} as PNG", page + 1))
    }
}

/// The DeepSeek-OCR tokenizer (from `lethe-decoder`) as the metrics' token counter.
struct DecoderTokenizer(lethe_decoder::Tokenizer);

impl TextTokenizer for DecoderTokenizer {
    fn name(&self) -> String {
        self.0.name().to_owned()
    }

    fn count(&self, text: &str) -> Result<usize, BoxError> {
        Ok(self.0.count(text)?)
    }

    fn truncate(&self, text: &str, n: usize, keep: Keep) -> Result<String, BoxError> {
        let ids = self.0.encode(text)?;
        if ids.len() <= n {
            return Ok(text.to_owned());
        }
        let kept = match keep {
            Keep::First => &ids[..n],
            Keep::Last => &ids[ids.len() - n..],
        };
        Ok(self.0.decode(kept, true)?)
    }
}

/// The tokenizer that counts text tokens: `--tokenizer`, else the model folder's
/// `tokenizer.json`, else the embedded DeepSeek-OCR tokenizer.
fn text_tokenizer(args: &Args) -> anyhow::Result<DecoderTokenizer> {
    // The embedded reader's own vocabulary is an internal detail: it counts with DeepSeek-OCR's.
    let from_model = match &args.model.model {
        lethe::Reader::Folder(dir) => Some(dir.join("tokenizer.json")).filter(|p| p.is_file()),
        _ => None,
    };
    let tok = match args.tokenizer.as_ref().or(from_model.as_ref()) {
        Some(path) => lethe_decoder::Tokenizer::from_file(path)
            .with_context(|| format!("loading the tokenizer {}", path.display()))?,
        None => lethe_decoder::Tokenizer::deepseek_ocr()
            .context("loading the embedded DeepSeek-OCR tokenizer")?,
    };
    Ok(DecoderTokenizer(tok))
}

/// Runs `memctl bench`.
pub fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    let reader = page_reader(&args)?;
    // Provider-sized pages are laid out densely (DeepSeek-OCR's default profile), as
    // `memctl context` sends them; otherwise pages are drawn the way the reader reads them.
    let profile = match args.provider {
        Some(_) => {
            if reader.as_ref().and_then(|r| r.render_profile()).is_some() {
                eprintln!(
                    "memctl: note: --provider lays pages out densely (DeepSeek-OCR's default \
                     profile), which this reader was not trained to read; its recall here says \
                     little about a provider's (use a DeepSeek-OCR folder or --decoder-url)"
                );
            }
            None
        }
        None => reader.as_ref().and_then(|r| r.render_profile()),
    };
    if args.modes.is_empty() {
        args.modes = reader
            .as_ref()
            .and_then(|r| r.modes())
            .unwrap_or_else(|| Mode::ALL.to_vec());
    }
    let renderer = page_renderer(&args, profile)?;
    run_with(args, reader, renderer)
}

/// Runs `memctl bench` with the given decoder and renderer; refuses to run without a decoder.
pub fn run_with(
    args: Args,
    reader: Option<Box<dyn PageReader>>,
    renderer: Option<Box<dyn PageRenderer>>,
) -> anyhow::Result<ExitCode> {
    let Some(reader) = reader else {
        bail!(
            "memctl bench measures recall, and recall needs a model to read the pages back: \
             --model none leaves nothing to measure (use the embedded reader, the default, or a \
             DeepSeek-OCR checkpoint folder with --model DIR)"
        );
    };
    let tokenizer = text_tokenizer(&args)?;
    let provider = provider(&args)?;
    let scoring = Scoring {
        provider,
        tokenizer: &tokenizer,
        bucket_width: args.bucket_width,
        truncation: args.truncate,
    };
    let report = if let (Some(images), Some(truth)) = (&args.images, &args.truth) {
        let pages = load_truth(images, truth)?;
        bench_images(&pages, &args.modes, reader.as_ref(), &scoring)?
    } else {
        let Some(mut renderer) = renderer else {
            bail!(
                "no page renderer is wired into this build of memctl, so transcripts cannot be \
                 benched; use --images DIR --truth PATH with page images instead"
            );
        };
        bench_transcripts(
            &args.transcripts,
            &args.modes,
            renderer.as_mut(),
            reader.as_ref(),
            &scoring,
        )?
    };
    let written = write_outputs(&report, &args.out)?;
    if args.json {
        println!("{}", report.to_json()?);
    } else {
        print!("{}", report.to_table());
    }
    for path in written {
        eprintln!("wrote {}", path.display());
    }
    let warnings = reader.warnings();
    for w in &warnings {
        eprintln!("memctl: warning: {w}");
    }
    Ok(if warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// One page image with its ground truth (Fox-style input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthPage {
    /// The image file.
    pub image: PathBuf,
    /// Its exact text.
    pub text: String,
}

#[derive(serde::Deserialize)]
struct TruthLine {
    image: String,
    text: String,
}

/// Reads `--truth`: a JSON Lines file of `{"image", "text"}` objects (images relative to
/// `images`), or a folder of `NAME.txt` for every `NAME.png` in `images` (sorted by name).
pub fn load_truth(images: &Path, truth: &Path) -> anyhow::Result<Vec<TruthPage>> {
    if !images.is_dir() {
        bail!("--images {} is not a folder", images.display());
    }
    let mut pages = Vec::new();
    if truth.is_dir() {
        let mut pngs: Vec<PathBuf> = fs::read_dir(images)
            .with_context(|| format!("listing {}", images.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("listing {}", images.display()))?;
        pngs.retain(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")));
        pngs.sort();
        for image in pngs {
            let stem = image
                .file_stem()
                .ok_or_else(|| anyhow!("{} has no file name", image.display()))?;
            let txt = truth.join(format!("{}.txt", stem.to_string_lossy()));
            let text = fs::read_to_string(&txt).with_context(|| {
                format!(
                    "reading the ground truth {} for {}",
                    txt.display(),
                    image.display()
                )
            })?;
            pages.push(TruthPage { image, text });
        }
    } else {
        let file = fs::File::open(truth)
            .with_context(|| format!("opening the ground truth {}", truth.display()))?;
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line =
                line.with_context(|| format!("reading {} line {}", truth.display(), i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let t: TruthLine = serde_json::from_str(&line).with_context(|| {
                format!(
                    "{} line {}: expected {{\"image\": \"NAME.png\", \"text\": \"...\"}}",
                    truth.display(),
                    i + 1
                )
            })?;
            pages.push(TruthPage {
                image: images.join(t.image),
                text: t.text,
            });
        }
    }
    if pages.is_empty() {
        bail!(
            "no pages to score: {} lists no images (PNG) with ground truth in {}",
            images.display(),
            truth.display()
        );
    }
    Ok(pages)
}

/// Width and height of a PNG, from its header.
fn png_size(png: &[u8]) -> anyhow::Result<(u32, u32)> {
    const SIG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if png.len() < 24 || &png[..8] != SIG || &png[12..16] != b"IHDR" {
        bail!("not a PNG image");
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Ok((be(&png[16..20]), be(&png[20..24])))
}

/// Decoder positions and nominal vision tokens of `png` read in `mode` (gundam's tile grid
/// follows the image's size, as the reference's dynamic tiling).
fn budget(mode: Mode, png: &[u8]) -> anyhow::Result<(usize, usize)> {
    let (w, h) = png_size(png)?;
    Ok(mode.page_cost(w, h))
}

fn progress(total: usize) -> anyhow::Result<ProgressBar> {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "decoding [{bar:30}] {pos}/{len} page views ({elapsed}, eta {eta}) {msg}",
        )
        .context("building the progress bar style")?
        .progress_chars("=> "),
    );
    Ok(bar)
}

/// The provider `--provider` names, from the built-in table.
fn provider(args: &Args) -> anyhow::Result<Option<lethe::Provider>> {
    let Some(name) = &args.provider else {
        return Ok(None);
    };
    Ok(Some(
        lethe::Providers::builtin()
            .find(name, args.provider_model.as_deref())?
            .clone(),
    ))
}

/// How pages are scored and summarised.
pub struct Scoring<'a> {
    /// Counts text tokens and truncates the baseline.
    pub tokenizer: &'a dyn TextTokenizer,
    /// Width of the text-token buckets per page.
    pub bucket_width: u32,
    /// Which end of a page the truncation baseline keeps.
    pub truncation: Keep,
    /// Cost pages in this provider's tokens instead of decoder positions.
    pub provider: Option<lethe::Provider>,
}

impl Scoring<'_> {
    /// Scores one page read at one mode, with its truncation baseline.
    fn view(
        &self,
        page: &SourcePage,
        png: &[u8],
        mode: Mode,
        reader: &dyn PageReader,
    ) -> anyhow::Result<[PageRecord; 2]> {
        let (positions, nominal) = match &self.provider {
            Some(p) => {
                let (w, h) = png_size(png)?;
                let tokens = p.rule.bill(w, h).tokens as usize;
                (tokens, tokens)
            }
            None => budget(mode, png)?,
        };
        let text = reader.read(png, mode)?;
        Ok([
            page.optical(mode.name(), positions, nominal, &text),
            page.truncation(mode.name(), positions, self.truncation, self.tokenizer)?,
        ])
    }

    /// The report of scored pages, naming the reader, the tokenizer and the truncation.
    fn report(
        &self,
        records: Vec<PageRecord>,
        reader: &dyn PageReader,
    ) -> anyhow::Result<BenchReport> {
        Ok(BenchReport::builder()
            .tokenizer(self.tokenizer.name())
            .reader(match &self.provider {
                Some(p) => format!(
                    "{} (pages sized and costed for {} {}: positions are its image tokens)",
                    reader.name(),
                    p.name,
                    p.models[0]
                ),
                None => reader.name(),
            })
            .bucket_width(self.bucket_width as usize)
            .truncation(self.truncation)
            .records(records)
            .build()?)
    }
}

/// Benches transcripts: paginate each, render every page at every mode, read it back, score it.
pub fn bench_transcripts(
    transcripts: &[PathBuf],
    modes: &[Mode],
    renderer: &mut dyn PageRenderer,
    reader: &dyn PageReader,
    scoring: &Scoring,
) -> anyhow::Result<BenchReport> {
    let bar = progress(0)?;
    let mut records = Vec::new();
    for path in transcripts {
        let doc = path.display().to_string();
        let texts = renderer
            .paginate(path)
            .with_context(|| format!("paginating {doc}"))?;
        bar.inc_length((texts.len() * modes.len()) as u64);
        let mut texts = texts.into_iter().enumerate().peekable();
        while texts.peek().is_some() {
            let mut batch = Batch::default();
            for (i, text) in texts.by_ref().take(PAGES_AT_ONCE) {
                bar.set_message(format!("rendering {doc} page {}", i + 1));
                let page = SourcePage::new(&doc, i, text, scoring.tokenizer)?;
                for &mode in modes {
                    let png = renderer
                        .render(i, mode)
                        .with_context(|| format!("rendering {doc} page {} at {mode}", i + 1))?;
                    batch.views.push((batch.pages.len(), mode, png.into()));
                }
                batch.pages.push((format!("{doc} page {}", i + 1), page));
            }
            batch.score(reader, scoring, &bar, &mut records)?;
        }
    }
    bar.finish_and_clear();
    scoring.report(records, reader)
}

/// Benches given page images against their ground truth (Fox-style).
pub fn bench_images(
    pages: &[TruthPage],
    modes: &[Mode],
    reader: &dyn PageReader,
    scoring: &Scoring,
) -> anyhow::Result<BenchReport> {
    let bar = progress(pages.len() * modes.len())?;
    let mut records = Vec::new();
    for (c, chunk) in pages.chunks(PAGES_AT_ONCE).enumerate() {
        let mut batch = Batch::default();
        for (j, truth) in chunk.iter().enumerate() {
            let name = truth.image.display().to_string();
            bar.set_message(format!("loading {name}"));
            let png: Arc<[u8]> = fs::read(&truth.image)
                .with_context(|| format!("reading {name}"))?
                .into();
            let i = c * PAGES_AT_ONCE + j;
            let page = SourcePage::new(&name, i, truth.text.as_str(), scoring.tokenizer)?;
            for &mode in modes {
                batch
                    .views
                    .push((batch.pages.len(), mode, Arc::clone(&png)));
            }
            batch.pages.push((name, page));
        }
        batch.score(reader, scoring, &bar, &mut records)?;
    }
    bar.finish_and_clear();
    scoring.report(records, reader)
}

/// Pages drawn (or read from disk) before their views are read side by side: enough to keep
/// the lanes busy, few enough that their PNGs stay small beside the model.
const PAGES_AT_ONCE: usize = 16;

/// A few pages and their views (page index, mode, PNG), read side by side.
#[derive(Default)]
struct Batch {
    /// Each page's label for messages, and the page.
    pages: Vec<(String, SourcePage)>,
    /// Each view: its page's index in `pages`, the mode, the PNG (one shared by a page's views
    /// when the page is an image file).
    views: Vec<(usize, Mode, Arc<[u8]>)>,
}

impl Batch {
    /// Reads and scores every view side by side ([`lethe::read_side_by_side`]) and appends, per
    /// page in order, its views' records and then its uncompressed record.
    fn score(
        self,
        reader: &dyn PageReader,
        scoring: &Scoring,
        bar: &ProgressBar,
        records: &mut Vec<PageRecord>,
    ) -> anyhow::Result<()> {
        let scored = lethe::read_side_by_side(&self.views, |(p, mode, png)| {
            let (label, page) = &self.pages[*p];
            bar.set_message(format!("{label} at {mode}"));
            let view = scoring
                .view(page, png, *mode, reader)
                .with_context(|| format!("{label} at {mode}"))?;
            bar.inc(1);
            anyhow::Ok(view)
        })?;
        let mut scored = self.views.iter().zip(scored).peekable();
        for (p, (_, page)) in self.pages.iter().enumerate() {
            while let Some((_, view)) = scored.next_if(|((q, _, _), _)| *q == p) {
                records.extend(view);
            }
            records.push(page.uncompressed());
        }
        Ok(())
    }
}

/// Writes report.json, report.csv, recall.svg and recall.png into `out`; returns their paths.
pub fn write_outputs(report: &BenchReport, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(out)
        .with_context(|| format!("creating the output folder {}", out.display()))?;
    let plot = Plot::from_report(report);
    let files: [(&str, Vec<u8>); 4] = [
        ("report.json", report.to_json()?.into_bytes()),
        ("report.csv", report.to_csv().into_bytes()),
        ("recall.svg", plot.to_svg().into_bytes()),
        ("recall.png", plot.to_png()?),
    ];
    let mut written = Vec::new();
    for (name, bytes) in files {
        let path = out.join(name);
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lethe_cli::metrics::WhitespaceTokenizer;

    /// A PNG of `w` x `h` grey pixels.
    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut enc = png::Encoder::new(&mut bytes, w, h);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().unwrap();
        wr.write_image_data(&vec![200; (w * h) as usize]).unwrap();
        wr.finish().unwrap();
        bytes
    }

    /// Pages of 20 words; page `i` renders as a (i + 1) x 700 PNG at every mode.
    struct FakeRenderer {
        pages: Vec<String>,
    }

    impl PageRenderer for FakeRenderer {
        fn paginate(&mut self, transcript: &Path) -> anyhow::Result<Vec<String>> {
            let text = fs::read_to_string(transcript)?;
            let words: Vec<&str> = text.split_whitespace().collect();
            self.pages = words.chunks(20).map(|c| c.join(" ")).collect();
            Ok(self.pages.clone())
        }

        fn render(&mut self, page: usize, _mode: Mode) -> anyhow::Result<Vec<u8>> {
            Ok(png(page as u32 + 1, 700))
        }
    }

    /// Reads the page back from the renderer's texts (index = width - 1): the first half of the
    /// words at tiny, everything otherwise.
    struct FakeReader {
        pages: Vec<String>,
    }

    impl PageReader for FakeReader {
        fn name(&self) -> String {
            "fake".to_owned()
        }

        fn read(&self, png: &[u8], mode: Mode) -> anyhow::Result<String> {
            let (w, _) = png_size(png)?;
            let text = &self.pages[w as usize - 1];
            let words: Vec<&str> = text.split_whitespace().collect();
            Ok(match mode {
                Mode::Tiny => words[..words.len() / 2].join(" "),
                _ => text.clone(),
            })
        }
    }

    #[test]
    fn transcripts_end_to_end_with_fake_backends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        let text: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
        fs::write(&path, text.join(" ")).unwrap();
        let mut renderer = FakeRenderer { pages: vec![] };
        let pages = renderer.paginate(&path).unwrap();
        let reader = FakeReader { pages };
        let report = bench_transcripts(
            &[path],
            &[Mode::Tiny, Mode::Gundam],
            &mut renderer,
            &reader,
            &Scoring {
                provider: None,
                tokenizer: &WhitespaceTokenizer,
                bucket_width: 100,
                truncation: Keep::First,
            },
        )
        .unwrap();
        let names: Vec<&str> = report.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "tiny",
                "truncation@tiny",
                "gundam",
                "truncation@gundam",
                "uncompressed"
            ]
        );
        let tiny = &report.series[0].all;
        assert_eq!((tiny.pages, tiny.text_tokens, tiny.positions), (2, 40, 146));
        assert_eq!(tiny.word_precision.mean, Some(0.5));
        // Gundam on a 1x700 / 2x700 page: tiled (700 > 640), positions from the tile grid.
        let grid = lethe_render::gundam_grid(1, 700);
        assert!(grid.is_some());
        assert_eq!(
            report.series[2].all.positions,
            Mode::Gundam.decoder_positions(grid)
                + Mode::Gundam.decoder_positions(lethe_render::gundam_grid(2, 700))
        );
        assert_eq!(report.series[2].all.word_precision.mean, Some(1.0));
        // 20-token pages fit every budget: truncation keeps everything.
        assert_eq!(report.series[1].all.word_precision.mean, Some(1.0));

        let out = dir.path().join("out");
        let written = write_outputs(&report, &out).unwrap();
        assert_eq!(written.len(), 4);
        for p in &written {
            assert!(fs::metadata(p).unwrap().len() > 0, "{}", p.display());
        }
        assert_eq!(
            &fs::read(out.join("recall.png")).unwrap()[..8],
            b"\x89PNG\r\n\x1a\n"
        );
    }

    #[test]
    fn images_with_jsonl_and_folder_truth() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("img");
        fs::create_dir(&images).unwrap();
        fs::write(images.join("a.png"), png(1, 10)).unwrap();
        fs::write(images.join("b.png"), png(2, 10)).unwrap();
        let jsonl = dir.path().join("truth.jsonl");
        fs::write(
            &jsonl,
            "{\"image\": \"a.png\", \"text\": \"alpha beta\"}\n\n{\"image\": \"b.png\", \"text\": \"gamma\"}\n",
        )
        .unwrap();
        let from_jsonl = load_truth(&images, &jsonl).unwrap();
        let txt = dir.path().join("txt");
        fs::create_dir(&txt).unwrap();
        fs::write(txt.join("a.txt"), "alpha beta").unwrap();
        fs::write(txt.join("b.txt"), "gamma").unwrap();
        let from_dir = load_truth(&images, &txt).unwrap();
        assert_eq!(from_jsonl, from_dir);
        assert_eq!(from_jsonl[1].image, images.join("b.png"));

        let reader = FakeReader {
            pages: vec!["alpha".to_owned(), "gamma".to_owned()],
        };
        let report = bench_images(
            &from_jsonl,
            &[Mode::Base],
            &reader,
            &Scoring {
                provider: None,
                tokenizer: &WhitespaceTokenizer,
                bucket_width: 100,
                truncation: Keep::Last,
            },
        )
        .unwrap();
        assert_eq!(report.series[0].all.word_precision.mean, Some(0.75));
        assert_eq!(report.series[0].all.positions, 2 * 273);

        fs::remove_file(txt.join("b.txt")).unwrap();
        let err = load_truth(&images, &txt).unwrap_err();
        assert!(format!("{err:#}").contains("b.txt"), "{err:#}");
        fs::write(&jsonl, "{\"img\": \"a.png\"}\n").unwrap();
        let err = load_truth(&images, &jsonl).unwrap_err();
        assert!(format!("{err:#}").contains("line 1"), "{err:#}");
    }

    #[test]
    fn without_a_decoder_the_command_refuses_to_measure() {
        let dir = tempfile::tempdir().unwrap();
        let args = Args {
            transcripts: vec![dir.path().join("t.txt")],
            modes: vec![Mode::Tiny],
            model: ModelArgs {
                model: lethe::Reader::None,
                quant: "none".to_owned(),
                max_tokens: 8,
                cache_tokens: false,
                remote: Default::default(),
            },
            provider: None,
            provider_model: None,
            prompt: "<image>".to_owned(),
            format: FormatArg::Auto,
            tokenizer: None,
            out: dir.path().join("out"),
            json: false,
            truncate: Keep::First,
            bucket_width: 100,
            images: None,
            truth: None,
        };
        let err = run_with(args, None, None).unwrap_err();
        assert!(
            format!("{err:#}").contains("recall needs a model"),
            "{err:#}"
        );
        assert!(!dir.path().join("out").exists());
    }

    #[test]
    fn deepseek_tokenizer_counts_and_truncates() {
        let tok = DecoderTokenizer(lethe_decoder::Tokenizer::deepseek_ocr().unwrap());
        assert_eq!(tok.name(), "deepseek-ocr");
        // "Hello, world!" is [19923, 14, 2058, 3]: Hello / , / world / !
        assert_eq!(tok.count("Hello, world!").unwrap(), 4);
        let cut = |n, keep| tok.truncate("Hello, world!", n, keep).unwrap();
        assert_eq!(cut(2, Keep::First), "Hello,");
        assert_eq!(cut(2, Keep::Last), " world!");
        assert_eq!(cut(9, Keep::First), "Hello, world!");
        assert_eq!(cut(9, Keep::Last), "Hello, world!");
        assert_eq!(cut(0, Keep::First), "");
        assert_eq!(cut(0, Keep::Last), "");
    }

    /// The tiny fixture checkpoint with the fixture tokenizer beside it, in a temporary folder.
    fn tiny_model_dir() -> tempfile::TempDir {
        let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/deepseek-ocr");
        let dir = tempfile::tempdir().unwrap();
        for (from, to) in [
            ("tiny/config.json", "config.json"),
            ("tiny/model.safetensors", "model.safetensors"),
            ("tokenizer/tokenizer.json", "tokenizer.json"),
        ] {
            fs::copy(fx.join(from), dir.path().join(to)).unwrap();
        }
        dir
    }

    /// The whole command on the tiny random-weight model: its recall is meaningless, the plumbing
    /// (render, encode, decode, score, baselines, outputs) is not.
    #[test]
    fn tiny_fixture_model_end_to_end() {
        let model = tiny_model_dir();
        let work = tempfile::tempdir().unwrap();
        let transcript = work.path().join("t.txt");
        fs::write(
            &transcript,
            "User: where is the config?\nAssistant: In /etc/lethe/config.toml, line 42; see PROJ-7.\n",
        )
        .unwrap();
        let out = work.path().join("out");
        let args = Args {
            transcripts: vec![transcript],
            modes: vec![Mode::Tiny, Mode::Small],
            model: ModelArgs {
                model: lethe::Reader::Folder(model.path().to_path_buf()),
                quant: "none".to_owned(),
                max_tokens: 4,
                cache_tokens: false,
                remote: Default::default(),
            },
            provider: None,
            provider_model: None,
            prompt: "<image>".to_owned(),
            format: FormatArg::Auto,
            tokenizer: None,
            out: out.clone(),
            json: true,
            truncate: Keep::Last,
            bucket_width: 100,
            images: None,
            truth: None,
        };
        run(args).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        assert_eq!(v["truncation"], "last");
        let names: Vec<&str> = v["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "tiny",
                "truncation@tiny",
                "small",
                "truncation@small",
                "uncompressed"
            ]
        );
        let pages = v["series"][0]["all"]["pages"].as_u64().unwrap();
        assert_eq!(pages, 1);
        assert_eq!(v["series"][0]["all"]["positions"], 73);
        assert_eq!(v["series"][2]["all"]["positions"], 111);
        assert_eq!(v["series"][4]["all"]["word_precision"]["mean"], 1.0);
        let wp = v["series"][0]["all"]["word_precision"]["mean"]
            .as_f64()
            .unwrap();
        assert!((0.0..=1.0).contains(&wp));
        let csv = fs::read_to_string(out.join("report.csv")).unwrap();
        assert_eq!(csv.lines().count(), 1 + 5 * 2);
        assert!(fs::read_to_string(out.join("recall.svg"))
            .unwrap()
            .contains("data-series=\"small\""));
        let png = fs::read(out.join("recall.png")).unwrap();
        assert_eq!(png_size(&png).unwrap(), (Plot::WIDTH, Plot::HEIGHT));
    }

    #[test]
    fn png_size_reads_the_header() {
        assert_eq!(png_size(&png(3, 5)).unwrap(), (3, 5));
        assert!(png_size(b"GIF89a").is_err());
        assert_eq!(budget(Mode::Small, &png(3, 5)).unwrap(), (111, 100));
        assert_eq!(budget(Mode::Gundam, &png(500, 400)).unwrap(), (273, 256));
    }
}
