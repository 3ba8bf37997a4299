//! `memctl ocr`: the whole DeepSeek-OCR pipeline (preprocess, encode, decode) on one image with
//! a local checkpoint folder.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use lethe_decoder::{
    build_prompt, generate, DecoderModel, GenerationConfig, NgramBan, Quantization, StopReason,
    Tokenizer, DEFAULT_PROMPT,
};
use lethe_encoder::{load_image, preprocess, Encoder, Mode};

const ABOUT: &str = "\
Run DeepSeek-OCR (encoder + MoE decoder) on one image and print the text as it is generated.

MODEL is a DeepSeek-OCR checkpoint folder: config.json, *.safetensors and tokenizer.json (without
tokenizer.json the embedded deepseek-ocr tokenizer is used). On CPU the model runs in f32: the real
checkpoint's decoder needs about 12.4 GB of memory (11.7 GB of weights plus working memory) and the
encoder another 1.6 GB. --quant q8_0 (decoder ~3.6 GB) or --quant q4k (~2.6 GB) quantise the
decoder's linear layers at load.

Exits 3 when generation stops at --max-tokens.";

/// Arguments of `memctl ocr`.
#[derive(Debug, clap::Args)]
#[command(after_help = ABOUT)]
pub struct Args {
    /// The page image (PNG or JPEG).
    pub image: PathBuf,
    /// DeepSeek-OCR checkpoint folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Resolution mode: tiny, small, base, large or gundam.
    #[arg(long, default_value = "base")]
    pub mode: String,
    /// Prompt; `<image>` marks where the vision tokens go.
    #[arg(long, default_value = DEFAULT_PROMPT)]
    pub prompt: String,
    /// Maximum number of generated tokens.
    #[arg(long, default_value_t = 8192)]
    pub max_tokens: usize,
    /// Decoder weights: none (f32 on CPU), q8_0 or q4k.
    #[arg(long, default_value = "none")]
    pub quant: String,
    /// No-repeat n-gram size (the reference uses 20; 0 disables the ban).
    #[arg(long, default_value_t = 20)]
    pub no_repeat_ngram: usize,
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
}

fn parse_mode(name: &str) -> anyhow::Result<Mode> {
    Mode::ALL
        .into_iter()
        .find(|m| m.name() == name.to_ascii_lowercase())
        .with_context(|| {
            format!("unknown --mode {name:?} (expected tiny, small, base, large or gundam)")
        })
}

/// Runs `memctl ocr`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mode = parse_mode(&args.mode)?;
    let quant = Quantization::parse(&args.quant).context("bad --quant")?;
    if !args.image.is_file() {
        bail!(
            "image {} does not exist or is not a file",
            args.image.display()
        );
    }
    if !args.model.is_dir() {
        bail!("model folder {} does not exist", args.model.display());
    }
    let config_path = args.model.join("config.json");
    if !config_path.is_file() {
        bail!("model folder {} has no config.json", args.model.display());
    }

    let t_load = Instant::now();
    let tokenizer_path = args.model.join("tokenizer.json");
    let tokenizer = if tokenizer_path.is_file() {
        Tokenizer::from_file(&tokenizer_path)
            .with_context(|| format!("loading {}", tokenizer_path.display()))?
    } else {
        eprintln!(
            "memctl: note: {} not found; using the embedded deepseek-ocr tokenizer",
            tokenizer_path.display()
        );
        Tokenizer::deepseek_ocr().context("loading the embedded tokenizer")?
    };
    let device = lethe_encoder::default_device().context("choosing a device")?;
    let encoder = Encoder::builder()
        .model_dir(&args.model)
        .device(device.clone())
        .build()
        .with_context(|| format!("loading the encoder from {}", args.model.display()))?;
    let mut decoder = DecoderModel::load(&args.model, &device, quant)
        .with_context(|| format!("loading the decoder from {}", args.model.display()))?;
    let load_secs = t_load.elapsed().as_secs_f64();

    let t_enc = Instant::now();
    let image = load_image(&args.image)
        .with_context(|| format!("reading image {}", args.image.display()))?;
    let views = preprocess(&image, mode)
        .with_context(|| format!("preprocessing for mode {}", mode.name()))?;
    let image_embeds = encoder
        .encode(&views)
        .with_context(|| format!("encoding {}", args.image.display()))?;
    let encode_secs = t_enc.elapsed().as_secs_f64();

    let cfg = decoder.config().clone();
    let image_token_id = cfg
        .image_token_id
        .or_else(|| tokenizer.token_id("<image>"))
        .unwrap_or(cfg.image_token_id());
    let images = args.prompt.matches("<image>").count();
    if images != 1 {
        bail!(
            "--prompt must contain exactly one <image> tag (found {images}): {:?}",
            args.prompt
        );
    }
    let positions = image_embeds.dim(0).context("image embeddings")?;
    let prompt = build_prompt(
        &tokenizer,
        &args.prompt,
        &[positions],
        cfg.bos(),
        image_token_id,
    )
    .context("building the prompt")?;
    let embeds = decoder
        .embed_prompt(&prompt.ids, image_token_id, Some(&image_embeds))
        .context("embedding the prompt")?;

    let ban = match (args.no_repeat_ngram, args.ngram_window) {
        (0, _) => None,
        (n, None) => Some(NgramBan::Whole { size: n }),
        (n, Some(w)) => Some(NgramBan::Windowed {
            size: n,
            window: w,
            whitelist: ["<td>", "</td>"]
                .iter()
                .filter_map(|t| tokenizer.token_id(t))
                .collect(),
        }),
    };
    let mut builder = GenerationConfig::builder()
        .max_new_tokens(args.max_tokens)
        .eos_token_ids(if cfg.eos_token_id.is_empty() {
            vec![1]
        } else {
            cfg.eos_token_id.clone()
        })
        .ngram_ban(ban);
    if let Some(t) = args.temperature {
        builder = builder.sample(t, args.top_p, args.top_k, args.seed);
    }
    let gen_cfg = builder.build().context("generation settings")?;

    let stdout = std::io::stdout();
    let mut stream = tokenizer.stream(false);
    let mut stream_err: Option<anyhow::Error> = None;
    let out = {
        let mut on_token = |id: u32| -> bool {
            if args.json {
                return true;
            }
            let piece = match stream.push(id) {
                Ok(p) => p,
                Err(e) => {
                    stream_err = Some(anyhow::Error::new(e).context("decoding generated tokens"));
                    return false;
                }
            };
            if let Some(piece) = piece {
                let mut lock = stdout.lock();
                if lock
                    .write_all(piece.as_bytes())
                    .and_then(|_| lock.flush())
                    .is_err()
                {
                    return false;
                }
            }
            true
        };
        generate(&mut decoder, &prompt.ids, &embeds, &gen_cfg, &mut on_token)
            .context("generating")?
    };
    if let Some(e) = stream_err {
        return Err(e);
    }
    let text = tokenizer
        .decode(&out.tokens, false)
        .context("decoding generated tokens")?;
    if args.json {
        let text_tokens = tokenizer.count(&text).context("counting text tokens")?;
        let report = serde_json::json!({
            "text": text,
            "image": args.image.display().to_string(),
            "mode": mode.name(),
            "quant": quant.name(),
            "tokenizer": tokenizer.name(),
            "prompt_positions": prompt.len(),
            "image_positions": prompt.image_positions(),
            "generated_tokens": out.tokens.len(),
            "text_tokens": text_tokens,
            "stop": match out.stop {
                StopReason::Eos => "eos",
                StopReason::MaxTokens => "max_tokens",
                StopReason::Callback => "interrupted",
            },
            "hit_token_limit": out.hit_limit(),
            "timings": {
                "load_secs": load_secs,
                "encode_secs": encode_secs,
                "prefill_secs": out.prefill_secs,
                "decode_secs": out.decode_secs,
                "decode_tokens_per_sec": out.decode_tokens_per_sec(),
            },
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if let Ok(Some(rest)) = stream.finish() {
            print!("{rest}");
        }
        println!();
    }
    if out.hit_limit() {
        eprintln!(
            "memctl: warning: generation stopped at the --max-tokens limit ({}); the text may be cut off",
            args.max_tokens
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}
