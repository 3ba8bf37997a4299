//! The OCR model: DeepEncoder (`lethe-encoder`) + MoE decoder (`lethe-decoder`) loaded from one
//! checkpoint folder or embedded in the build, joined the way DeepSeek-OCR's `infer()` joins them.

use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use lethe_decoder::{
    build_prompt, generate, DecoderModel, GenerationConfig, NgramBan, Quantization, Sampling,
    StopReason, Tokenizer, DEFAULT_PROMPT,
};
use lethe_encoder::{load_image, preprocess, Encoder};
use lethe_memory::TokenCache;
use lethe_policy::Policy;
use lethe_render::{Mode, PageImage, RenderProfile};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the model reads a page.
#[derive(Debug, Clone, PartialEq)]
pub struct OcrOptions {
    /// The prompt; `<image>` marks where the page's vision tokens go (exactly once).
    pub prompt: String,
    /// The most tokens one page may generate.
    pub max_new_tokens: usize,
    /// Quantisation of the decoder's linear layers (CPU memory and speed).
    pub quantization: Quantization,
    /// No-repeat n-gram size in tokens; `Some(0)` disables the ban. `None` (the default) takes
    /// the size the model declares in its [`GENERATION_FILE`] (`no_repeat_ngram_size`), else 20,
    /// the reference `infer()`'s. The ban is the reference's guard against reading loops, sized for
    /// its BPE tokens; a reader of bytes declares its own (a 20-byte ban breaks every line that
    /// a page repeats, and every rule of dashes, 20 characters in).
    pub no_repeat_ngram: Option<usize>,
    /// Search only the last W generated tokens for repeats and never ban `<td>` / `</td>` (the
    /// reference's vLLM form, W = 50). `None`: the whole sequence (its Hugging Face form).
    pub ngram_window: Option<usize>,
    /// Greedy (the reference) or sampled decoding.
    pub sampling: Sampling,
    /// Leave special tokens out of the text (true for recall; `memctl ocr` shows them, as the
    /// reference does).
    pub skip_special_tokens: bool,
}

impl Default for OcrOptions {
    fn default() -> Self {
        Self {
            prompt: DEFAULT_PROMPT.to_string(),
            max_new_tokens: 2048,
            quantization: Quantization::default(),
            no_repeat_ngram: None,
            ngram_window: None,
            sampling: Sampling::Greedy,
            skip_special_tokens: true,
        }
    }
}

/// A model's pieces before generation is configured.
struct Parts {
    name: String,
    encoder: Encoder,
    decoder: DecoderModel,
    tokenizer: Tokenizer,
    profile: Option<RenderProfile>,
    policy: Option<Policy>,
    /// The no-repeat n-gram size the model declares ([`GENERATION_FILE`]).
    no_repeat_ngram: Option<usize>,
    embedded: bool,
}

/// The prompt must hold exactly one `<image>` tag.
fn check_prompt(options: &OcrOptions) -> Result<()> {
    let images = options.prompt.matches("<image>").count();
    if images != 1 {
        return Err(Error::Invalid(format!(
            "the prompt must contain exactly one <image> tag (found {images}): {:?}",
            options.prompt
        )));
    }
    Ok(())
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
    /// Whether the text callback stopped generation.
    #[serde(default)]
    pub interrupted: bool,
    /// Seconds encoding the image (0 when cached tokens were given).
    pub encode_secs: f64,
    /// Seconds of prefill.
    pub prefill_secs: f64,
    /// Seconds of incremental decoding.
    pub decode_secs: f64,
}

impl Reading {
    /// Generated tokens per second of incremental decoding.
    pub fn decode_tokens_per_sec(&self) -> f64 {
        if self.decode_secs > 0.0 {
            self.generated_tokens.saturating_sub(1) as f64 / self.decode_secs
        } else {
            0.0
        }
    }
}

/// The copies of an [`OcrModel`]'s decoder that readings generate on: [`readings_at_once`]
/// lent to threads from outside rayon's pool at most (and as many again to the lanes of
/// [`crate::read_side_by_side`]), at most that many kept idle for the next readings.
#[derive(Default)]
struct Copies {
    state: Mutex<CopiesState>,
    returned: Condvar,
}

#[derive(Default)]
struct CopiesState {
    idle: Vec<DecoderModel>,
    lent: usize,
}

/// Readings at once: one a rayon worker, up to 4. Each holds its own KV cache and activations
/// (about 0.3 GB for the real checkpoint in f32), so this bounds the memory on a machine with
/// many cores; [`crate::read_side_by_side`] reads in as many lanes.
pub(crate) fn readings_at_once() -> usize {
    rayon::current_num_threads().clamp(1, 4)
}

impl Copies {
    fn state(&self) -> MutexGuard<'_, CopiesState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of `template` for one reading (an idle one, else a new one), once fewer than
    /// [`readings_at_once`] are lent. A rayon worker never waits here: a worker waiting inside
    /// a reading's parallel work may run another reading's lane ([`crate::read_side_by_side`])
    /// on top of its own, or a job of another worker's reading, and waiting then could wait for
    /// the copy held beneath it. So past the bound, a worker's reading takes one more copy (not
    /// kept when given back). Threads from outside the pool (a service's requests) wait at the
    /// bound, and the lanes on workers are bounded by their permits (`read_side_by_side`), so
    /// at most twice the bound are lent at once.
    fn lend<'a>(&'a self, template: &DecoderModel) -> Lent<'a> {
        let mut state = self.state();
        while state.lent >= readings_at_once() && rayon::current_thread_index().is_none() {
            state = self.returned.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.lent += 1;
        let decoder = state.idle.pop().unwrap_or_else(|| template.clone());
        Lent {
            copies: self,
            decoder: Some(decoder),
        }
    }
}

/// A decoder copy lent to one reading, given back when dropped: kept idle with its cache
/// cleared, or dropped itself if the reading panicked or [`readings_at_once`] copies are
/// already kept.
struct Lent<'a> {
    copies: &'a Copies,
    decoder: Option<DecoderModel>,
}

impl Lent<'_> {
    fn decoder(&mut self) -> &mut DecoderModel {
        self.decoder.as_mut().expect("lent until dropped")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let decoder = self.decoder.take();
        let mut state = self.copies.state();
        state.lent -= 1;
        let kept = state.idle.len() + state.lent < readings_at_once();
        if let Some(mut decoder) = decoder.filter(|_| kept && !std::thread::panicking()) {
            decoder.clear_kv_cache();
            state.idle.push(decoder);
        }
        self.copies.returned.notify_one();
    }
}

/// DeepSeek-OCR (or a model of the same family): the embedded reader, or a checkpoint folder.
pub struct OcrModel {
    name: String,
    encoder: Encoder,
    /// The decoder as loaded. Each reading generates on its own copy (the weights are shared;
    /// the copy holds the reading's KV cache), so readings run side by side on any number of
    /// threads, as encoding does.
    decoder: DecoderModel,
    /// The copies lent to readings and those waiting for the next.
    copies: Copies,
    tokenizer: Tokenizer,
    image_token_id: u32,
    generation: GenerationConfig,
    options: OcrOptions,
    profile: Option<RenderProfile>,
    policy: Option<Policy>,
    embedded: bool,
}

impl std::fmt::Debug for OcrModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OcrModel")
            .field("name", &self.name)
            .field("tokenizer", &self.tokenizer.name())
            .field("image_token_id", &self.image_token_id)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The file in a model folder that declares the render profile its pages are drawn with.
pub const PROFILE_FILE: &str = "render-profile.toml";
/// The file in a model folder that declares the forgetting policy (the tiers it reads).
pub const POLICY_FILE: &str = "policy.toml";
/// The file in a model folder that declares how it generates (Hugging Face's name and keys;
/// Lethe reads `no_repeat_ngram_size`, see [`OcrOptions::no_repeat_ngram`]).
pub const GENERATION_FILE: &str = "generation_config.json";
/// The no-repeat n-gram size of a model that declares none: the reference `infer()`'s.
const REFERENCE_NO_REPEAT_NGRAM: usize = 20;

/// `no_repeat_ngram_size` of a [`GENERATION_FILE`] (`what` names it in errors); other keys are
/// Hugging Face's and ignored.
fn declared_no_repeat_ngram(text: &str, what: &str) -> Result<Option<usize>> {
    #[derive(Deserialize)]
    struct Generation {
        no_repeat_ngram_size: Option<usize>,
    }
    serde_json::from_str::<Generation>(text)
        .map(|g| g.no_repeat_ngram_size)
        .map_err(|e| Error::Invalid(format!("{what}: {e}")))
}

impl OcrModel {
    /// Loads `config.json`, the `*.safetensors` weights and `tokenizer.json` from `dir` (the
    /// embedded DeepSeek-OCR tokenizer when the folder has none) on the default device, with
    /// the folder's declared render profile ([`PROFILE_FILE`]) and policy ([`POLICY_FILE`]) when
    /// it has them.
    ///
    /// Fails on a missing folder or file, a tensor of the wrong shape, or options the model
    /// cannot honour (a prompt without exactly one `<image>`, a bad temperature).
    pub fn load(dir: &Path, options: OcrOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Invalid(format!(
                "model folder {} does not exist or is not a folder",
                dir.display()
            )));
        }
        check_prompt(&options)?;
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
        let read = |name: &str| -> Result<Option<String>> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(Error::Io { path, source }),
            }
        };
        let profile = read(PROFILE_FILE)?
            .map(|t| RenderProfile::from_toml_str(&t, &dir.join(PROFILE_FILE).to_string_lossy()))
            .transpose()?;
        let policy = read(POLICY_FILE)?
            .map(|t| {
                Policy::from_toml_str(&t).map_err(|e| {
                    Error::Invalid(format!("{}: {e}", dir.join(POLICY_FILE).display()))
                })
            })
            .transpose()?;
        let no_repeat_ngram = match read(GENERATION_FILE)? {
            Some(t) => declared_no_repeat_ngram(&t, &dir.join(GENERATION_FILE).to_string_lossy())?,
            None => None,
        };
        let parts = Parts {
            name: dir.display().to_string(),
            encoder,
            decoder,
            tokenizer,
            profile,
            policy,
            no_repeat_ngram,
            embedded: false,
        };
        Self::assemble(parts, options)
    }

    /// The embedded reader's name and the bytes of its weights, without loading it.
    pub fn embedded_summary() -> (&'static str, u64) {
        let e = &crate::embedded::READER;
        (e.name, e.weights.len() as u64)
    }

    /// The reader embedded in this build (`models/lethe-reader`, trained by this project; see its
    /// `TRAINING.md`), with its own render profile and policy. It needs no file at run time.
    pub fn embedded(options: OcrOptions) -> Result<Self> {
        check_prompt(&options)?;
        let e = &crate::embedded::READER;
        let enc_cfg = lethe_encoder::Config::from_json(e.config)?;
        let encoder = Encoder::builder().in_memory(enc_cfg, e.weights).build()?;
        let device = encoder.device().clone();
        let dec_cfg = lethe_decoder::DecoderConfig::from_json_str(e.config)?;
        let decoder = DecoderModel::from_safetensors_bytes(
            &dec_cfg,
            e.weights,
            &device,
            options.quantization,
        )?;
        let parts = Parts {
            name: e.name.to_string(),
            encoder,
            decoder,
            tokenizer: Tokenizer::from_bytes(e.name, e.tokenizer)?,
            profile: Some(RenderProfile::from_toml_str(e.profile, e.name)?),
            policy: Some(
                Policy::from_toml_str(e.policy)
                    .map_err(|err| Error::Invalid(format!("{} policy: {err}", e.name)))?,
            ),
            no_repeat_ngram: declared_no_repeat_ngram(e.generation, e.name)?,
            embedded: true,
        };
        Self::assemble(parts, options)
    }

    fn assemble(parts: Parts, mut options: OcrOptions) -> Result<Self> {
        let Parts {
            name,
            encoder,
            decoder,
            tokenizer,
            profile,
            policy,
            no_repeat_ngram,
            embedded,
        } = parts;
        let cfg = decoder.config();
        let image_token_id = cfg
            .image_token_id
            .or_else(|| tokenizer.token_id("<image>"))
            .unwrap_or(cfg.image_token_id());
        let size = options
            .no_repeat_ngram
            .or(no_repeat_ngram)
            .unwrap_or(REFERENCE_NO_REPEAT_NGRAM);
        options.no_repeat_ngram = Some(size);
        let ban = match (size, options.ngram_window) {
            (0, _) => None,
            (n, None) => Some(NgramBan::whole_sequence(n)),
            (n, Some(w)) => Some(NgramBan::windowed(
                n,
                w,
                ["<td>", "</td>"]
                    .iter()
                    .filter_map(|t| tokenizer.token_id(t))
                    .collect(),
            )),
        };
        let mut generation = GenerationConfig::builder()
            .max_new_tokens(options.max_new_tokens)
            .ngram_ban(ban)
            .eos_token_ids(cfg.eos());
        if let Sampling::Sample {
            temperature,
            top_p,
            top_k,
            seed,
        } = options.sampling
        {
            generation = generation.sample(temperature, top_p, top_k, seed);
        }
        let generation = generation.build()?;
        Ok(Self {
            name,
            encoder,
            decoder,
            copies: Copies::default(),
            tokenizer,
            image_token_id,
            generation,
            options,
            profile,
            policy,
            embedded,
        })
    }

    /// What the model is: the embedded reader's name, or the folder it was loaded from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is the reader embedded in the build.
    pub fn is_embedded(&self) -> bool {
        self.embedded
    }

    /// The render profile the model reads, when it declares one (pages for it are drawn with it).
    pub fn render_profile(&self) -> Option<&RenderProfile> {
        self.profile.as_ref()
    }

    /// The forgetting policy the model declares (the tiers it reads), if any.
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    /// The resolution modes of the tiers the model declares, sharpest first; `None` when it
    /// declares no policy.
    pub fn modes(&self) -> Option<Vec<Mode>> {
        let levels = self.policy.as_ref()?.ladder().levels();
        Some(levels.iter().map(|l| l.mode).collect())
    }

    /// The device the model runs on.
    pub(crate) fn device(&self) -> &Device {
        self.encoder.device()
    }

    /// The model's own tokenizer (it also counts text tokens when a model is loaded).
    pub fn text_tokenizer(&self) -> Result<Tokenizer> {
        Ok(self.tokenizer.clone())
    }

    /// The options the model was loaded with.
    pub fn options(&self) -> &OcrOptions {
        &self.options
    }

    /// Encodes a page image at `mode` to its vision-token sequence.
    pub fn encode(&self, image: &PageImage, mode: Mode) -> Result<VisionTokens> {
        let rgb = image.to_rgb();
        let rgb = lethe_encoder::image::RgbImage::from_raw(rgb.width, rgb.height, rgb.pixels)
            .ok_or_else(|| Error::Invalid("page image has the wrong number of pixels".into()))?;
        let views = preprocess(&rgb, mode)?;
        Ok(VisionTokens(self.encoder.encode(&views)?))
    }

    /// Reads a page back to text; `tokens` are its cached vision tokens, if any.
    pub fn read(
        &self,
        image: &PageImage,
        mode: Mode,
        tokens: Option<&VisionTokens>,
    ) -> Result<Reading> {
        self.read_streaming(image, mode, tokens, &mut |_| true)
    }

    /// As [`OcrModel::read`], calling `on_text` with each piece of text as it is generated;
    /// `on_text` returns false to stop early (the reading is then marked `interrupted`).
    pub fn read_streaming(
        &self,
        image: &PageImage,
        mode: Mode,
        tokens: Option<&VisionTokens>,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Reading> {
        let started = Instant::now();
        let (embeds, encode_secs) = match tokens {
            Some(t) => (t.0.clone(), 0.0),
            None => (self.encode(image, mode)?.0, started.elapsed().as_secs_f64()),
        };
        self.generate_from(&embeds, encode_secs, on_text)
    }

    /// Reads an image file (PNG, JPEG, ...; EXIF orientation applied, as the reference does)
    /// at `mode`, streaming the text to `on_text` as [`OcrModel::read_streaming`] does.
    pub fn read_file(
        &self,
        path: &Path,
        mode: Mode,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Reading> {
        let started = Instant::now();
        let image = load_image(path)?;
        let embeds = self.encoder.encode(&preprocess(&image, mode)?)?;
        let encode_secs = started.elapsed().as_secs_f64();
        self.generate_from(&embeds, encode_secs, on_text)
    }

    /// Prompt + vision tokens -> generated text.
    fn generate_from(
        &self,
        embeds: &Tensor,
        encode_secs: f64,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Reading> {
        let positions = embeds.dim(0)?;
        let mut lent = self.copies.lend(&self.decoder);
        let decoder = lent.decoder();
        let cfg = decoder.config();
        let prompt = build_prompt(
            &self.tokenizer,
            &self.options.prompt,
            &[positions],
            cfg.bos(),
            self.image_token_id,
        )?;
        let input = decoder.embed_prompt(&prompt.ids, self.image_token_id, Some(embeds))?;
        let skip = self.options.skip_special_tokens;
        let mut stream = self.tokenizer.stream(skip);
        let mut stream_err = None;
        let out = generate(
            decoder,
            &prompt.ids,
            &input,
            &self.generation,
            &mut |id| match stream.push(id) {
                Ok(Some(piece)) => on_text(&piece),
                Ok(None) => true,
                Err(e) => {
                    stream_err = Some(e);
                    false
                }
            },
        )?;
        if let Some(e) = stream_err {
            return Err(e.into());
        }
        let interrupted = out.stop == StopReason::Callback;
        if !interrupted {
            if let Some(rest) = stream.finish()? {
                on_text(&rest);
            }
        }
        drop(lent);
        let text = self.tokenizer.decode(&out.tokens, skip)?;
        Ok(Reading {
            text,
            generated_tokens: out.tokens.len(),
            prompt_positions: out.prompt_len,
            positions,
            hit_limit: out.hit_limit(),
            interrupted,
            encode_secs,
            prefill_secs: out.prefill_secs,
            decode_secs: out.decode_secs,
        })
    }
}

/// Vision tokens as stored in the page store: f16 little-endian (half the bytes of f32; the
/// decoder reads them back as f32).
pub(crate) fn tokens_to_cache(tokens: &VisionTokens) -> Result<TokenCache> {
    let tokens = tokens.0.to_dtype(DType::F16)?;
    let shape = tokens.dims().to_vec();
    let values = tokens.flatten_all()?.to_vec1::<half::f16>()?;
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(TokenCache::new(shape, "f16", bytes)?)
}

/// Vision tokens read back from the page store (f16, or f32 as stores before f16 caches wrote).
pub(crate) fn tokens_from_cache(cache: &TokenCache, device: &Device) -> Result<VisionTokens> {
    let values: Vec<f32> = match cache.dtype.as_str() {
        "f16" => cache
            .bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "f32" => cache
            .bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        other => {
            return Err(Error::Invalid(format!(
                "cached vision tokens have dtype {other}, expected f16 or f32"
            )))
        }
    };
    Ok(VisionTokens(Tensor::from_vec(
        values,
        cache.shape.as_slice(),
        device,
    )?))
}

/// A page's vision tokens as the decoder reads them: one row of `hidden` values per decoder
/// position (the vision tokens, a newline token after each row of the token grid, and the view
/// separator), in the order the decoder takes them.
#[derive(Debug, Clone)]
pub struct VisionTokens(Tensor);

impl VisionTokens {
    /// Decoder positions (rows).
    pub fn positions(&self) -> usize {
        self.0.dims().first().copied().unwrap_or(0)
    }

    /// Values per position (the decoder's hidden size).
    pub fn hidden(&self) -> usize {
        self.0.dims().get(1).copied().unwrap_or(0)
    }

    /// The values, row by row, as f32.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        Ok(self
            .0
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn past_the_bound_a_thread_from_outside_waits_and_a_rayon_worker_takes_one_more_copy() {
        let model = OcrModel::embedded(OcrOptions::default()).unwrap();
        let most = readings_at_once();
        let mut held: Vec<Lent<'_>> = (0..most)
            .map(|_| model.copies.lend(&model.decoder))
            .collect();
        std::thread::scope(|s| {
            // A thread of its own waits until a copy is given back.
            let (sent, got) = mpsc::channel();
            let model = &model;
            s.spawn(move || {
                let lent = model.copies.lend(&model.decoder);
                sent.send(()).unwrap();
                drop(lent);
            });
            // A rayon worker may be waiting inside a reading of its own, so it does not wait:
            // it takes one more copy, which is not kept when given back.
            let (lent_then, idle_after) = rayon::join(
                || {
                    let lent = model.copies.lend(&model.decoder);
                    let lent_then = model.copies.state().lent;
                    drop(lent);
                    (lent_then, model.copies.state().idle.len())
                },
                || (),
            )
            .0;
            let waited = got.recv_timeout(Duration::from_millis(200)).is_err();
            // Given back before any assertion, so that a failing one cannot leave the outside
            // thread waiting forever.
            held.pop();
            let served = got.recv_timeout(Duration::from_secs(60)).is_ok();
            assert_eq!(lent_then, most + 1);
            assert_eq!(idle_after, 0, "the copy past the bound is dropped");
            assert!(
                waited,
                "the outside thread waits while {most} copies are lent"
            );
            assert!(served, "a copy given back goes to the waiting thread");
        });
        drop(held);
        let state = model.copies.state();
        assert_eq!((state.lent, state.idle.len()), (0, most));
    }
}
