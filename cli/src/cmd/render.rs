//! `memctl render`: a transcript to page images at one resolution mode.
//!
//! Streams the transcript turn by turn (plain, speaker, JSONL; an OpenAI array is read whole),
//! paginates with a render profile, rasterises each page in the chosen mode and writes
//! `page-0001.png`, ... into the output folder, one page in memory at a time.

use std::fs::File;
use std::io::{BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;

use super::common::parse_mode;
use lethe_render::transcript::{Format, ParseOptions, TurnReader};
use lethe_render::{Mode, PixelFormat, RenderProfile, Renderer};

const AFTER_HELP: &str = "\
Input formats (detected unless --format is given):
  plain    paragraphs separated by blank lines, no speakers
  speaker  `Speaker: text` lines; other lines continue the turn; `=== Session ... ===` lines
  jsonl    one {\"role\": ..., \"content\": ...} object per line
  openai   a JSON array of messages, or {\"messages\": [...]}; content may be a list of parts

Exit codes:
  0  all pages written
  1  error (empty transcript, invalid UTF-8 with its byte offset, malformed JSON with its line,
     unreadable profile, I/O); the message names what and where
  2  usage error
  3  pages written, but some characters are covered by no bundled font (drawn as boxes;
     counted in missing_glyphs)";

/// Arguments of `memctl render`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The transcript to render.
    pub transcript: PathBuf,
    /// Resolution mode: tiny (512 px), small (640), base (1024), large (1280) or gundam (640 px
    /// tiles of a page that stacks up to the profile's gundam_max_pages page heights).
    #[arg(long, value_parser = parse_mode)]
    pub mode: Mode,
    /// Folder to write page-0001.png, page-0002.png, ... into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Render profile (TOML or JSON): page size, margins, font family and size, line height,
    /// speaker label style, turn separator, gundam stacking. Defaults fit ~1,000 tokens a page.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Transcript format: auto, plain, speaker, jsonl or openai.
    #[arg(long, default_value = "auto", value_parser = parse_format)]
    pub format: Format,
    /// Replace invalid UTF-8 with U+FFFD instead of failing.
    #[arg(long)]
    pub lossy: bool,
    /// Write RGB PNGs instead of 8-bit grayscale.
    #[arg(long)]
    pub rgb: bool,
    /// Also write each page's text (exactly the text drawn on it, `\n` between lines) to
    /// `page-NNNN.txt` beside its PNG: the label a reading model is trained and scored against.
    #[arg(long)]
    pub text: bool,
    /// Also write where every character landed to `page-NNNN.boxes.json` beside its PNG:
    /// {"page", "mode", "width", "height", "lines", "boxes": [{"byte", "ch", "line", "x0", "y0",
    /// "x1", "y1"}]}, pixels of that PNG, one box per character of the page text but the line
    /// breaks, in text order (a cluster such as a ligature shares its advance among its characters).
    #[arg(long)]
    pub boxes: bool,
    /// Print one JSON object on stdout: {"pages", "mode", "width", "height", "chars",
    /// "missing_glyphs", "missing_chars" (code points no bundled font covers, as "U+1FAE8"),
    /// "files"}.
    #[arg(long)]
    pub json: bool,
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse::<Format>().map_err(|e| e.to_string())
}

/// A reader that counts the bytes read through it, for the progress bar.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Runs `memctl render`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let profile = match &args.profile {
        Some(path) => RenderProfile::load(path)
            .with_context(|| format!("loading the render profile {}", path.display()))?,
        None => RenderProfile::default(),
    };
    let renderer = Renderer::builder()
        .profile(profile)
        .build()
        .context("building the renderer")?;

    let file = File::open(&args.transcript)
        .with_context(|| format!("opening the transcript {}", args.transcript.display()))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let count = Arc::new(AtomicU64::new(0));
    let reader = BufReader::with_capacity(
        256 * 1024,
        Counting {
            inner: file,
            count: Arc::clone(&count),
        },
    );
    let opts = ParseOptions::new().format(args.format).lossy(args.lossy);
    let turns = TurnReader::new(reader, &opts)
        .with_context(|| format!("reading the transcript {}", args.transcript.display()))?;

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating the output folder {}", args.out.display()))?;

    let bar = progress_bar(total);
    let format = if args.rgb {
        PixelFormat::Rgb
    } else {
        PixelFormat::Gray
    };
    let mut files = Vec::new();
    let mut chars = 0usize;
    let mut missing = 0usize;
    let mut missing_chars: Vec<char> = Vec::new();
    let mut size = None;
    for page in renderer.pages(turns) {
        let page =
            page.with_context(|| format!("reading the transcript {}", args.transcript.display()))?;
        let image = renderer.rasterize_as(&page, args.mode, format);
        size.get_or_insert((image.width, image.height));
        let path = args.out.join(format!("page-{:04}.png", page.index + 1));
        write_png(&path, &image)?;
        if args.text {
            let text_path = path.with_extension("txt");
            std::fs::write(&text_path, &page.text)
                .with_context(|| format!("writing {}", text_path.display()))?;
        }
        if args.boxes {
            let boxes_path = path.with_extension("boxes.json");
            let doc = serde_json::json!({
                "page": page.index + 1,
                "mode": args.mode.name(),
                "width": image.width,
                "height": image.height,
                "lines": page.lines.len(),
                "boxes": page.char_boxes(image.width, image.height),
            });
            std::fs::write(&boxes_path, doc.to_string())
                .with_context(|| format!("writing {}", boxes_path.display()))?;
        }
        chars += page.chars;
        missing += page.missing_glyphs;
        for c in page.missing_chars() {
            if !missing_chars.contains(&c) {
                missing_chars.push(c);
            }
        }
        files.push(path);
        bar.set_position(count.load(Ordering::Relaxed));
        bar.set_message(format!("{} pages", files.len()));
    }
    bar.finish_and_clear();

    let (width, height) = size.unwrap_or((args.mode.page_px(), args.mode.page_px()));
    if args.json {
        let out = serde_json::json!({
            "pages": files.len(),
            "mode": args.mode.name(),
            "width": width,
            "height": height,
            "chars": chars,
            "missing_glyphs": missing,
            "missing_chars": missing_chars
                .iter()
                .map(|c| format!("U+{:04X}", u32::from(*c)))
                .collect::<Vec<_>>(),
            "files": files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        });
        println!("{out}");
    } else {
        println!(
            "{} pages ({} mode, {width}x{height}), {chars} characters -> {}",
            files.len(),
            args.mode,
            args.out.display()
        );
    }
    if missing > 0 {
        eprintln!(
            "memctl: warning: {missing} characters are covered by no bundled font and were drawn as boxes"
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

fn write_png(path: &Path, image: &lethe_render::PageImage) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    image
        .write_png(&mut w)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::flush(&mut w).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} rendering [{bar:30}] {bytes}/{total_bytes} {msg} ({eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
