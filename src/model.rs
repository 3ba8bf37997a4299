//! The OCR model: DeepEncoder (`lethe-encoder`) + MoE decoder (`lethe-decoder`) loaded from one
//! checkpoint folder, joined the way DeepSeek-OCR's `infer()` joins them.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use lethe_decoder::{
    build_prompt, generate, DecoderModel, GenerationConfig, NgramBan, Quantization, Tokenizer,
    DEFAULT_PROMPT,
};
use lethe_encoder::{preprocess, Encoder};
use lethe_memory::TokenCache;
use lethe_render::{Mode, PageImage};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The real DeepSeek-OCR `<image>` id, used when neither the config nor the tokenizer names one.
const REAL_IMAGE_TOKEN_ID: u32 = 128_815;

/// How the model reads a page.
#[derive(Debug, Clone, PartialEq)]
pub struct OcrOptions {
    /// The prompt; `<image>` marks where the page's vision tokens go.
    pub prompt: String,
    /// The most tokens one page may generate.
    pub max_new_tokens: usize,
    /// Quantisation of the decoder's linear layers (CPU memory and speed).
    pub quantization: Quantization,
    /// Hugging Face style whole-sequence n-gram ban (the reference `infer()` uses 20).
    pub no_repeat_ngram: Option<usize>,
}

impl Default for OcrOptions {
    fn default() -> Self {
        Self {
            prompt: DEFAULT_PROMPT.to_string(),
            max_new_tokens: 2048,
            quantization: Quantization::default(),
            no_repeat_ngram: Some(20),
        }
    }
}

/// One page read back by the decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The decoded text.
    pub text: String,
    /// Generated tokens.
    pub generated_tokens: usize,
    /// Prompt positions (BOS, vision tokens, prompt text).
    pub prompt_positions: usize,
    /// Vision-token positions of the page (with newlines and separator).
    pub positions: usize,
    /// Whether generation stopped at the token limit instead of EOS.
    pub hit_limit: bool,
    /// Seconds encoding the image (0 when cached tokens were given).
    pub encode_secs: f64,
    /// Seconds of prefill.
    pub prefill_secs: f64,
    /// Seconds of incremental decoding.
    pub decode_secs: f64,
}

/// DeepSeek-OCR (or a model of the same family) loaded from a checkpoint folder.
pub struct OcrModel {
    encoder: Encoder,
    decoder: DecoderModel,
    tokenizer: Tokenizer,
    image_token_id: u32,
    bos: u32,
    eos: Vec<u32>,
    options: OcrOptions,
}

impl std::fmt::Debug for OcrModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OcrModel")
            .field("tokenizer", &self.tokenizer.name())
            .field("image_token_id", &self.image_token_id)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl OcrModel {
    /// Loads `config.json`, the `*.safetensors` weights and `tokenizer.json` from `dir` (the
    /// embedded DeepSeek-OCR tokenizer when the folder has none).
    pub fn load(dir: &Path, options: OcrOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Invalid(format!(
                "model folder {} does not exist or is not a folder",
                dir.display()
            )));
        }
        let encoder = Encoder::builder().model_dir(dir).build()?;
        let device = encoder.device().clone();
        let decoder = DecoderModel::load(dir, &device, options.quantization)?;
        // A folder without its own tokenizer.json reads with the embedded DeepSeek-OCR one
        // (`text_tokenizer().name()` tells which); the decoder rejects prompt ids outside its
        // vocabulary, so a mismatch is an error, not garbage.
        let tokenizer = if dir.join("tokenizer.json").is_file() {
            Tokenizer::from_dir(dir)?
        } else {
            Tokenizer::deepseek_ocr()?
        };
        let cfg = decoder.config();
        let image_token_id = cfg
            .image_token_id
            .or_else(|| tokenizer.token_id("<image>"))
            .unwrap_or(REAL_IMAGE_TOKEN_ID);
        let bos = cfg.bos_token_id.unwrap_or(0);
        let eos = cfg.eos_token_id.clone();
        Ok(Self {
            encoder,
            decoder,
            tokenizer,
            image_token_id,
            bos,
            eos,
            options,
        })
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        self.encoder.device()
    }

    /// The model's own tokenizer (it also counts text tokens when a model is loaded).
    pub fn text_tokenizer(&self) -> Result<Tokenizer> {
        Ok(self.tokenizer.clone())
    }

    /// Encodes a page image at `mode` to its vision-token sequence `[positions, hidden]`.
    pub fn encode(&self, image: &PageImage, mode: Mode) -> Result<Tensor> {
        let rgb = image.to_rgb();
        let rgb = lethe_encoder::image::RgbImage::from_raw(rgb.width, rgb.height, rgb.pixels)
            .ok_or_else(|| Error::Invalid("page image has the wrong number of pixels".into()))?;
        let views = preprocess(&rgb, mode)?;
        Ok(self.encoder.encode(&views)?)
    }

    /// Reads a page back to text; `tokens` are its cached vision tokens, if any.
    pub fn read(
        &mut self,
        image: &PageImage,
        mode: Mode,
        tokens: Option<&Tensor>,
    ) -> Result<Reading> {
        self.read_streaming(image, mode, tokens, &mut |_| {})
    }

    /// As [`OcrModel::read`], calling `on_text` with each piece of text as it is generated.
    pub fn read_streaming(
        &mut self,
        image: &PageImage,
        mode: Mode,
        tokens: Option<&Tensor>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Reading> {
        let started = Instant::now();
        let embeds = match tokens {
            Some(t) => t.clone(),
            None => self.encode(image, mode)?,
        };
        let encode_secs = if tokens.is_some() {
            0.0
        } else {
            started.elapsed().as_secs_f64()
        };
        let positions = embeds.dim(0)?;
        let prompt = build_prompt(
            &self.tokenizer,
            &self.options.prompt,
            &[positions],
            self.bos,
            self.image_token_id,
        )?;
        let input = self
            .decoder
            .embed_prompt(&prompt.ids, self.image_token_id, Some(&embeds))?;
        let cfg = GenerationConfig::builder()
            .max_new_tokens(self.options.max_new_tokens)
            .greedy()
            .ngram_ban(self.options.no_repeat_ngram.map(NgramBan::whole_sequence))
            .eos_token_ids(self.eos.clone())
            .build()?;
        let mut stream = self.tokenizer.stream(true);
        let mut stream_err = None;
        let out = generate(&mut self.decoder, &prompt.ids, &input, &cfg, &mut |id| {
            match stream.push(id) {
                Ok(Some(piece)) => on_text(&piece),
                Ok(None) => {}
                Err(e) => stream_err = Some(e),
            }
            stream_err.is_none()
        })?;
        if let Some(e) = stream_err {
            return Err(e.into());
        }
        if let Some(rest) = stream.finish()? {
            on_text(&rest);
        }
        let text = self.tokenizer.decode(&out.tokens, true)?;
        Ok(Reading {
            text,
            generated_tokens: out.tokens.len(),
            prompt_positions: out.prompt_len,
            positions,
            hit_limit: out.hit_limit(),
            encode_secs,
            prefill_secs: out.prefill_secs,
            decode_secs: out.decode_secs,
        })
    }
}

/// Vision tokens as stored in the page store (f32 little-endian).
pub(crate) fn tokens_to_cache(tokens: &Tensor) -> Result<TokenCache> {
    let tokens = tokens.to_dtype(DType::F32)?;
    let shape = tokens.dims().to_vec();
    let values = tokens.flatten_all()?.to_vec1::<f32>()?;
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(TokenCache::new(shape, "f32", bytes)?)
}

/// Vision tokens read back from the page store.
pub(crate) fn tokens_from_cache(cache: &TokenCache, device: &Device) -> Result<Tensor> {
    if cache.dtype != "f32" {
        return Err(Error::Invalid(format!(
            "cached vision tokens have dtype {}, expected f32",
            cache.dtype
        )));
    }
    let values: Vec<f32> = cache
        .bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Tensor::from_vec(values, cache.shape.as_slice(), device)?)
}
