//! `memctl model`: fetch a checkpoint folder from the Hugging Face Hub (the only command that
//! touches the network, and only when asked), and list the models memctl knows.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Subcommand};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::api::Progress;
use hf_hub::{Cache, Repo, RepoType};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::common::human_bytes;

/// The checkpoint `memctl model pull` fetches when no repository is named.
pub const DEFAULT_REPO: &str = "deepseek-ai/DeepSeek-OCR";

/// Arguments of `memctl model`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Download a checkpoint folder from the Hugging Face Hub (resumable, verified).
    ///
    /// Files go into the Hub's cache layout under DIR (default: $HF_HOME/hub, else
    /// ~/.cache/huggingface/hub), so other Hub tools share them. An interrupted download resumes
    /// where it stopped, in the same run (a few retries) or the next one. Each large file is
    /// checked against the sha256 the Hub publishes for it. HF_ENDPOINT points at another Hub (a
    /// mirror); a token is read from $HF_HOME/token (or ~/.cache/huggingface/token) for gated or
    /// private repositories. The folder to pass to `--model` is printed at the end.
    Pull(PullArgs),
    /// List the models memctl knows: the embedded reader, the pulled checkpoints in the Hub
    /// cache, and any folders given.
    List(ListArgs),
}

#[derive(Debug, ClapArgs)]
#[command(after_help = "\
Examples:
  memctl model pull                                   # deepseek-ai/DeepSeek-OCR into the Hub cache
  memctl model pull --dir /data/hub --revision main   # another cache folder, a pinned revision
  HF_ENDPOINT=https://mirror.example memctl model pull --json
  memctl ocr page.png --mode base --model \"$(memctl model pull --json | jq -r .folder)\"")]
struct PullArgs {
    /// The Hub repository.
    #[arg(default_value = DEFAULT_REPO)]
    repo: String,
    /// Where the Hub cache lives (default: $HF_HOME/hub, else ~/.cache/huggingface/hub).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Fetch every file of the repository, not only the configuration, tokenizer and weights.
    #[arg(long)]
    all: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, ClapArgs)]
#[command(after_help = "\
Examples:
  memctl model list
  memctl model list --dir /data/hub ./my-checkpoint --json")]
struct ListArgs {
    /// Model folders to describe besides the embedded reader and the pulled checkpoints.
    folders: Vec<PathBuf>,
    /// The Hub cache to look in (default: $HF_HOME/hub, else ~/.cache/huggingface/hub).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `memctl model`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        ModelCommand::Pull(a) => pull(a),
        ModelCommand::List(a) => list(a),
    }
}

/// One file of a pull.
#[derive(Debug, Serialize)]
struct PulledFile {
    name: String,
    bytes: u64,
    /// The sha256 the Hub published for it and the file matched (large files), else `None`.
    sha256: Option<String>,
    /// Already in the cache: not downloaded again.
    cached: bool,
}

#[derive(Debug, Serialize)]
struct Pulled {
    repo: String,
    revision: String,
    commit: String,
    folder: PathBuf,
    files: Vec<PulledFile>,
    skipped: Vec<String>,
}

/// Whether a file of a checkpoint repository is one the model needs.
fn needed(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.ends_with(".json") || base.ends_with(".safetensors") || base.ends_with(".toml")
}

fn cache_at(dir: Option<&Path>) -> Cache {
    match dir {
        Some(dir) => Cache::new(dir.to_path_buf()),
        None => Cache::from_env(),
    }
}

/// The HTTP status behind a Hub error, if it was one (also after retries).
fn http_status(e: &ApiError) -> Option<u16> {
    match e {
        ApiError::RequestError(inner) => match inner.as_ref() {
            ureq::Error::StatusCode(code) => Some(*code),
            _ => None,
        },
        ApiError::TooManyRetries(inner) => http_status(inner),
        _ => None,
    }
}

/// Words for a Hub error, naming what was asked for and where.
fn hub_error(e: ApiError, what: &str, endpoint: &str) -> anyhow::Error {
    let status = http_status(&e);
    match status {
        Some(404) => anyhow::anyhow!("{what}: not found at {endpoint} (HTTP 404)"),
        Some(401 | 403) => anyhow::anyhow!(
            "{what}: {endpoint} refused access (HTTP {}); a gated or private repository needs a \
             token in $HF_HOME/token (or ~/.cache/huggingface/token)",
            status.unwrap_or_default()
        ),
        _ => anyhow::anyhow!("{what} from {endpoint}: {e}"),
    }
}

fn pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    let endpoint =
        std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".to_string());
    let cache = cache_at(args.dir.as_deref());
    let mut builder = ApiBuilder::from_env()
        .with_progress(false)
        .with_retries(4)
        .with_user_agent("memctl", env!("CARGO_PKG_VERSION"));
    if let Some(dir) = &args.dir {
        builder = builder.with_cache_dir(dir.clone());
    }
    let api = builder.build().context("setting up the Hub client")?;
    let repo = Repo::with_revision(args.repo.clone(), RepoType::Model, args.revision.clone());
    let remote = api.repo(repo.clone());
    let what = format!("repository {} (revision {})", args.repo, args.revision);
    let info = remote.info().map_err(|e| hub_error(e, &what, &endpoint))?;
    let (wanted, skipped): (Vec<String>, Vec<String>) = info
        .siblings
        .iter()
        .map(|s| s.rfilename.clone())
        .partition(|name| args.all || needed(name));
    if wanted.is_empty() {
        bail!("{what} has no configuration, tokenizer or weight files (pass --all to fetch every file)");
    }
    let local = cache.repo(repo);
    let mut files = Vec::with_capacity(wanted.len());
    for name in &wanted {
        let cached = local
            .get(name)
            .filter(|p| p.starts_with(local.pointer_path(&info.sha)));
        let (path, was_cached) = match cached {
            Some(path) => (path, true),
            None => {
                let bar = FileBar::new(args.json);
                let path = remote
                    .download_with_progress(name, bar)
                    .map_err(|e| hub_error(e, &format!("{name} of {what}"), &endpoint))?;
                (path, false)
            }
        };
        let sha256 = if was_cached {
            None
        } else {
            verify(&path).with_context(|| format!("checking {name} of {what}"))?
        };
        let bytes = std::fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        files.push(PulledFile {
            name: name.clone(),
            bytes,
            sha256,
            cached: was_cached,
        });
    }
    let folder = local.pointer_path(&info.sha);
    let pulled = Pulled {
        repo: args.repo,
        revision: args.revision,
        commit: info.sha,
        folder: folder.clone(),
        files,
        skipped,
    };
    let missing = missing_parts(&folder);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&pulled)?);
    } else {
        let total: u64 = pulled.files.iter().map(|f| f.bytes).sum();
        let fetched = pulled.files.iter().filter(|f| !f.cached).count();
        let verified = pulled.files.iter().filter(|f| f.sha256.is_some()).count();
        println!(
            "{} {} at {}: {} files ({}), {fetched} downloaded ({verified} checked against the \
             Hub's sha256), {} already here{}",
            pulled.repo,
            pulled.revision,
            &pulled.commit[..pulled.commit.len().min(12)],
            pulled.files.len(),
            human_bytes(total),
            pulled.files.len() - fetched,
            if pulled.skipped.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} other files left (--all fetches them)",
                    pulled.skipped.len()
                )
            }
        );
        println!("model folder: {}", folder.display());
        println!("use it with: --model {}", folder.display());
    }
    if !missing.is_empty() {
        eprintln!(
            "memctl: warning: {} lacks {}, which --model needs",
            folder.display(),
            missing.join(" and ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks a downloaded file against the sha256 the Hub named it by (its blob's name is the
/// Hub's etag, the sha256 of the content for files in large-file storage); returns that sha256,
/// or `None` when the Hub published none (a small file's etag is a git object id). A file that
/// does not match is deleted.
fn verify(pointer: &Path) -> anyhow::Result<Option<String>> {
    let blob = std::fs::canonicalize(pointer)
        .with_context(|| format!("resolving {}", pointer.display()))?;
    let etag = blob
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if etag.len() != 64 || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let mut file =
        std::fs::File::open(&blob).with_context(|| format!("opening {}", blob.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", blob.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got != etag {
        let _ = std::fs::remove_file(pointer);
        let _ = std::fs::remove_file(&blob);
        bail!(
            "its sha256 is {got}, but the Hub published {etag}; the file was deleted, run the \
             pull again"
        );
    }
    Ok(Some(got))
}

/// What a model folder lacks of what `--model` needs.
fn missing_parts(folder: &Path) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !folder.join("config.json").is_file() {
        missing.push("config.json");
    }
    if !folder.join("tokenizer.json").is_file() {
        missing.push("tokenizer.json");
    }
    if weight_files(folder).is_empty() {
        missing.push("a .safetensors weights file");
    }
    missing
}

fn weight_files(folder: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    out.sort();
    out
}

/// One model memctl knows.
#[derive(Debug, Serialize)]
struct Known {
    /// `embedded`, `pulled` or `folder`.
    kind: &'static str,
    name: String,
    /// What to pass to `--model`.
    model_arg: String,
    /// Bytes of weights.
    weight_bytes: u64,
    /// What `--model` would miss (empty when the folder is complete).
    missing: Vec<&'static str>,
}

fn describe_folder(kind: &'static str, name: String, folder: &Path) -> Known {
    let weight_bytes = weight_files(folder)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    Known {
        kind,
        name,
        model_arg: folder.display().to_string(),
        weight_bytes,
        missing: missing_parts(folder),
    }
}

/// The pulled checkpoints in a Hub cache: every model snapshot that holds a `config.json`.
fn pulled_models(cache: &Path) -> Vec<Known> {
    let mut out = Vec::new();
    let Ok(repos) = std::fs::read_dir(cache) else {
        return out;
    };
    let mut repos: Vec<PathBuf> = repos.flatten().map(|e| e.path()).collect();
    repos.sort();
    for repo in repos {
        let Some(dir_name) = repo.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(id) = dir_name.strip_prefix("models--") else {
            continue;
        };
        let id = id.replacen("--", "/", 1);
        let mut snapshots: Vec<PathBuf> = std::fs::read_dir(repo.join("snapshots"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("config.json").is_file())
            .collect();
        snapshots.sort();
        for snap in snapshots {
            let commit = snap
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let name = format!("{id} @ {}", &commit[..commit.len().min(12)]);
            out.push(describe_folder("pulled", name, &snap));
        }
    }
    out
}

fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let (name, weights) = lethe::OcrModel::embedded_summary();
    let mut known = vec![Known {
        kind: "embedded",
        name: name.to_string(),
        model_arg: "embedded (the default)".to_string(),
        weight_bytes: weights,
        missing: Vec::new(),
    }];
    let cache = cache_at(args.dir.as_deref());
    known.extend(pulled_models(cache.path()));
    for folder in &args.folders {
        if !folder.is_dir() {
            bail!("{} is not a folder", folder.display());
        }
        known.push(describe_folder(
            "folder",
            folder.display().to_string(),
            folder,
        ));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&known)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<9} {:>10}  {:<40} --model", "kind", "weights", "name");
    for k in &known {
        println!(
            "{:<9} {:>10}  {:<40} {}{}",
            k.kind,
            human_bytes(k.weight_bytes),
            k.name,
            k.model_arg,
            if k.missing.is_empty() {
                String::new()
            } else {
                format!("  (lacks {})", k.missing.join(", "))
            }
        );
    }
    if !known.iter().any(|k| k.kind == "pulled") {
        println!(
            "no pulled checkpoints in {} (memctl model pull fetches {DEFAULT_REPO})",
            cache.path().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar for one file's download (hidden with `--json` or off a terminal).
struct FileBar(ProgressBar);

impl FileBar {
    fn new(quiet: bool) -> Self {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        FileBar(bar)
    }
}

impl Progress for FileBar {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.set_length(size as u64);
        self.0.set_position(0);
        self.0.set_message(filename.to_string());
    }

    fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }

    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}
