//! `memctl ocr`: the whole DeepSeek-OCR pipeline (preprocess, encode, decode) on one image with
//! a local checkpoint folder.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use lethe::{Mode, OcrOptions, Reader, Sampling};
use lethe_decoder::DEFAULT_PROMPT;

use super::common::{load_model, parse_mode, parse_quant, parse_reader, RemoteArgs};

const ABOUT: &str = "\
Run DeepSeek-OCR (encoder + MoE decoder) on one image and print the text as it is generated.

--model is the embedded reader (the default: Lethe's own small model, which reads pages drawn with
its render profile; see models/lethe-reader/TRAINING.md) or a DeepSeek-OCR checkpoint folder:
config.json, *.safetensors and tokenizer.json (without tokenizer.json the embedded deepseek-ocr
tokenizer is used). On CPU the model runs in f32: the real
checkpoint peaks at 13.5 GB of memory (13.3 GB of weights: decoder 11.7 GB, encoder 1.6 GB; the
file is read tensor by tensor, never held beside them). --quant q8_0 (6.6 GB at peak, decoder
~3.6 GB) or --quant q4k (~2.6 GB of decoder) quantise the decoder's linear layers at load.

Exits 3 when generation stops at --max-tokens.";

/// Arguments of `memctl ocr`.
#[derive(Debug, clap::Args)]
#[command(after_help = ABOUT)]
pub struct Args {
    /// The page image (PNG or JPEG).
    pub image: PathBuf,
    /// The reader: `embedded` (default: Lethe's own reader, built in) or a DeepSeek-OCR
    /// checkpoint folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR|embedded", default_value = "embedded", value_parser = parse_reader)]
    pub model: Reader,
    /// Resolution mode: tiny, small, base, large or gundam. Default: the reader's sharpest tier
    /// (base for the embedded reader too), else base.
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<Mode>,
    /// Prompt; `<image>` marks where the vision tokens go.
    #[arg(long, default_value = DEFAULT_PROMPT)]
    pub prompt: String,
    /// Maximum number of generated tokens.
    #[arg(long, default_value_t = 8192)]
    pub max_tokens: usize,
    /// Decoder weights: none (f32 on CPU), q8_0 or q4k.
    #[arg(long, default_value = "none")]
    pub quant: String,
    /// No-repeat n-gram size in tokens; 0 disables the ban. Default: the size the model
    /// declares in its generation_config.json (no_repeat_ngram_size), else 20 (the reference's).
    #[arg(long, value_name = "N")]
    pub no_repeat_ngram: Option<usize>,
    /// Search only the last W generated tokens for repeats, never banning <td> and </td> (the
    /// reference's vLLM form; it uses W = 50). Without it, the whole sequence is searched (the
    /// reference's Hugging Face form).
    #[arg(long, value_name = "W")]
    pub ngram_window: Option<usize>,
    /// Sample with this temperature instead of greedy decoding.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus mass when sampling.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Top-k limit when sampling (0: none).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Seed when sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object (text, token counts, positions, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `memctl ocr --decoder-url`: the image file goes to the remote server as it is (the server
/// resizes it to its own mode).
fn run_remote(args: &Args, remote: lethe::RemoteDecoder) -> anyhow::Result<ExitCode> {
    let bytes =
        std::fs::read(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
    let mime = if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        "image/jpeg"
    } else {
        bail!("{} is neither a PNG nor a JPEG", args.image.display());
    };
    let reading = remote
        .read_image(&bytes, mime)
        .with_context(|| format!("reading {}", args.image.display()))?;
    if args.json {
        let report = serde_json::json!({
            "text": reading.text,
            "image": args.image.display().to_string(),
            "decoder": remote.endpoint(),
            "model": remote.model(),
            "generated_tokens": reading.completion_tokens,
            "hit_limit": reading.hit_limit,
            "attempts": reading.attempts,
            "millis": reading.millis,
        });
        println!("{report}");
    } else {
        println!("{}", reading.text);
    }
    Ok(if reading.hit_limit {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs `memctl ocr`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let quantization = parse_quant(&args.quant)?;
    if !args.image.is_file() {
        bail!(
            "image {} does not exist or is not a file",
            args.image.display()
        );
    }
    if let Some(remote) = args.remote.decoder(&args.prompt, args.max_tokens)? {
        return run_remote(&args, remote);
    }
    match &args.model {
        Reader::Folder(dir) => {
            if !dir.join("config.json").is_file() {
                bail!(
                    "model folder {} has no config.json (or does not exist)",
                    dir.display()
                );
            }
            if !dir.join("tokenizer.json").is_file() {
                eprintln!(
                    "memctl: note: {} has no tokenizer.json; using the embedded deepseek-ocr tokenizer",
                    dir.display()
                );
            }
        }
        Reader::None => bail!("memctl ocr needs a reader: --model embedded or --model DIR"),
        Reader::Embedded => {}
    }
    let options = OcrOptions {
        prompt: args.prompt.clone(),
        max_new_tokens: args.max_tokens,
        quantization,
        no_repeat_ngram: args.no_repeat_ngram,
        ngram_window: args.ngram_window,
        sampling: match args.temperature {
            Some(temperature) => Sampling::Sample {
                temperature,
                top_p: args.top_p,
                top_k: args.top_k,
                seed: args.seed,
            },
            None => Sampling::Greedy,
        },
        // Show the text as the reference's infer() prints it.
        skip_special_tokens: false,
    };

    let t_load = Instant::now();
    let model = load_model(&args.model, options)?.expect("--model none was refused above");
    let load_secs = t_load.elapsed().as_secs_f64();
    let mode = args.mode.unwrap_or_else(|| {
        model
            .modes()
            .and_then(|m| m.first().copied())
            .unwrap_or(Mode::Base)
    });

    let stdout = std::io::stdout();
    let mut print = |piece: &str| -> bool {
        if args.json {
            return true;
        }
        let mut lock = stdout.lock();
        // A closed pipe (`memctl ocr ... | head`) stops generation.
        lock.write_all(piece.as_bytes())
            .and_then(|_| lock.flush())
            .is_ok()
    };
    let reading = model
        .read_file(&args.image, mode, &mut print)
        .with_context(|| format!("reading {}", args.image.display()))?;
    if reading.interrupted {
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        let tokenizer = model.text_tokenizer()?;
        let text_tokens = tokenizer
            .count(&reading.text)
            .context("counting text tokens")?;
        let report = serde_json::json!({
            "text": reading.text,
            "image": args.image.display().to_string(),
            "mode": mode.name(),
            "quant": quantization.name(),
            "tokenizer": tokenizer.name(),
            "prompt_positions": reading.prompt_positions,
            "image_positions": reading.positions,
            "generated_tokens": reading.generated_tokens,
            "text_tokens": text_tokens,
            "stop": if reading.hit_limit { "max_tokens" } else { "eos" },
            "hit_token_limit": reading.hit_limit,
            "timings": {
                "load_secs": load_secs,
                "encode_secs": reading.encode_secs,
                "prefill_secs": reading.prefill_secs,
                "decode_secs": reading.decode_secs,
                "decode_tokens_per_sec": reading.decode_tokens_per_sec(),
            },
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!();
    }
    if reading.hit_limit {
        eprintln!(
            "memctl: warning: generation stopped at the --max-tokens limit ({}); the text may be cut off",
            args.max_tokens
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}
