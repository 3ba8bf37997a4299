//! Prompt building and text generation.
//!
//! Mirrors `DeepseekOCRForCausalLM.infer()` (prompt ids) of `modeling_deepseekocr.py`, Hugging
//! Face `generate` (greedy / sampling, `NoRepeatNGramLogitsProcessor`, EOS, `max_new_tokens`) and
//! the windowed n-gram processor of DeepSeek-OCR's vLLM scripts
//! (`DeepSeek-OCR-vllm/process/ngram_norepeat.py`).
//!
//! Sampling lives here, outside the model: [`generate()`] prefills the prompt once, then feeds one
//! token at a time through the KV cache.

use std::time::Instant;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::{DecoderModel, LogitsFor};
use crate::tokenizer::TextEncoder;

/// The reference's default OCR prompt.
pub const DEFAULT_PROMPT: &str = "<image>\nFree OCR.";

/// The placeholder text that marks an image in a prompt.
pub const IMAGE_TAG: &str = "<image>";

/// Prompt ids ready for [`DecoderModel::embed_prompt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// BOS, text pieces and image placeholders.
    pub ids: Vec<u32>,
    /// `true` at image placeholder positions.
    pub image_mask: Vec<bool>,
}

impl Prompt {
    /// Number of positions.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the prompt is empty (never true for a built prompt: BOS is always there).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Number of image placeholder positions.
    pub fn image_positions(&self) -> usize {
        self.image_mask.iter().filter(|&&m| m).count()
    }
}

/// Builds prompt ids as the reference `infer()`: the prompt is stripped, split at `<image>`, and
/// assembled as `[bos] + enc(piece0) + [image]*slots0 + enc(piece1) + ...`; no role tokens, no
/// EOS. `image_slots[k]` is the number of decoder positions of the `k`-th image.
pub fn build_prompt(
    encoder: &dyn TextEncoder,
    prompt: &str,
    image_slots: &[usize],
    bos: u32,
    image_token_id: u32,
) -> Result<Prompt> {
    let text = prompt.trim();
    let pieces: Vec<&str> = text.split(IMAGE_TAG).collect();
    let images = pieces.len() - 1;
    if images != image_slots.len() {
        return Err(Error::Input(format!(
            "the prompt has {images} {IMAGE_TAG} tag(s) but {} image(s) were given",
            image_slots.len()
        )));
    }
    let mut ids = vec![bos];
    let mut image_mask = vec![false];
    for (k, piece) in pieces.iter().enumerate() {
        let enc = encoder.encode_text(piece)?;
        image_mask.extend(std::iter::repeat_n(false, enc.len()));
        ids.extend(enc);
        if let Some(&slots) = image_slots.get(k) {
            ids.extend(std::iter::repeat_n(image_token_id, slots));
            image_mask.extend(std::iter::repeat_n(true, slots));
        }
    }
    Ok(Prompt { ids, image_mask })
}

/// A no-repeat-n-gram ban.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NgramBan {
    /// Hugging Face's `NoRepeatNGramLogitsProcessor(size)`: no n-gram of the whole sequence
    /// (prompt included: BOS, image placeholders, text, generated tokens) may occur twice. The
    /// reference `infer()` uses size 20.
    Whole {
        /// n.
        size: usize,
    },
    /// DeepSeek-OCR's vLLM processor: over the generated tokens only, n-grams starting in the
    /// last `window` tokens may not repeat, except for whitelisted completions. Its scripts use
    /// size 20, window 50, whitelist `<td>` `</td>` (128821, 128822).
    Windowed {
        /// n (at least 2).
        size: usize,
        /// How many trailing generated tokens are searched.
        window: usize,
        /// Ids that are never banned.
        whitelist: Vec<u32>,
    },
}

impl NgramBan {
    /// The Hugging Face whole-sequence form with n-gram size `size`.
    pub fn whole_sequence(size: usize) -> Self {
        Self::Whole { size }
    }

    /// The vLLM windowed form.
    pub fn windowed(size: usize, window: usize, whitelist: Vec<u32>) -> Self {
        Self::Windowed {
            size,
            window,
            whitelist,
        }
    }

    /// The Hugging Face form used by the reference `infer()` (`no_repeat_ngram_size=20`).
    pub fn reference_hf() -> Self {
        Self::Whole { size: 20 }
    }

    /// The vLLM scripts' form: size 20, window 50, whitelist `<td>`, `</td>`.
    pub fn reference_vllm() -> Self {
        Self::Windowed {
            size: 20,
            window: 50,
            whitelist: vec![128_821, 128_822],
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            Self::Whole { size } if *size == 0 => Err(Error::Input(
                "no-repeat n-gram size must be positive".into(),
            )),
            Self::Windowed { size, window, .. } if *size < 2 || *window == 0 => Err(Error::Input(
                "windowed no-repeat n-gram needs size >= 2 and a positive window".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Ids banned as the next token, given the prompt ids and the generated ids so far.
    pub fn banned(&self, prompt: &[u32], generated: &[u32]) -> Vec<u32> {
        match self {
            Self::Whole { size } => {
                let seq: Vec<u32> = prompt.iter().chain(generated).copied().collect();
                banned_after(&seq, *size, 0)
            }
            Self::Windowed {
                size,
                window,
                whitelist,
            } => {
                if generated.len() < *size {
                    return Vec::new();
                }
                let start = generated.len().saturating_sub(*window);
                let mut b = banned_after(generated, *size, start);
                b.retain(|t| !whitelist.contains(t));
                b
            }
        }
    }
}

/// Tokens `seq[i + n - 1]` for every `i >= start` with `seq[i..i + n - 1]` equal to the last
/// `n - 1` tokens of `seq` (and `i + n <= seq.len()`), deduplicated.
fn banned_after(seq: &[u32], n: usize, start: usize) -> Vec<u32> {
    let len = seq.len();
    if n == 0 || len + 1 < n || len < n {
        return Vec::new();
    }
    let suffix = &seq[len + 1 - n..];
    let mut out = Vec::new();
    for i in start..=len - n {
        if &seq[i..i + n - 1] == suffix {
            let t = seq[i + n - 1];
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Sampling {
    /// Arg-max (the first maximum on ties), as `temperature=0.0` in the reference.
    Greedy,
    /// Sampling from `softmax(logits / temperature)`, restricted to the `top_k` most likely
    /// tokens (0: no limit) and then to the smallest set whose probability reaches `top_p`.
    Sample {
        /// Temperature (> 0).
        temperature: f64,
        /// Nucleus mass in (0, 1].
        top_p: f64,
        /// Top-k limit (0: none).
        top_k: usize,
        /// Seed of the generator, for reproducible runs.
        seed: u64,
    },
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-sequence id was produced (it is not included in the tokens).
    Eos,
    /// `max_new_tokens` were produced.
    MaxTokens,
    /// The per-token callback asked to stop.
    Callback,
}

/// Settings of one generation run; build with [`GenerationConfig::builder`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    max_new_tokens: usize,
    sampling: Sampling,
    ngram_ban: Option<NgramBan>,
    eos_token_ids: Vec<u32>,
    record_step_logits: bool,
}

impl GenerationConfig {
    /// A builder with the reference defaults: greedy, 8192 new tokens, EOS id 1, no n-gram ban.
    pub fn builder() -> GenerationConfigBuilder {
        GenerationConfigBuilder {
            cfg: GenerationConfig {
                max_new_tokens: 8192,
                sampling: Sampling::Greedy,
                ngram_ban: None,
                eos_token_ids: vec![1],
                record_step_logits: false,
            },
        }
    }

    /// Maximum number of generated tokens.
    pub fn max_new_tokens(&self) -> usize {
        self.max_new_tokens
    }

    /// The sampling rule.
    pub fn sampling(&self) -> &Sampling {
        &self.sampling
    }

    /// The n-gram ban, if any.
    pub fn ngram_ban(&self) -> Option<&NgramBan> {
        self.ngram_ban.as_ref()
    }

    /// End-of-sequence ids.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }
}

/// Builder of [`GenerationConfig`].
#[derive(Debug, Clone)]
pub struct GenerationConfigBuilder {
    cfg: GenerationConfig,
}

impl GenerationConfigBuilder {
    /// Maximum number of generated tokens.
    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.cfg.max_new_tokens = n;
        self
    }

    /// Greedy decoding.
    pub fn greedy(mut self) -> Self {
        self.cfg.sampling = Sampling::Greedy;
        self
    }

    /// Sampling with temperature, top-p, top-k (0: none) and a seed.
    pub fn sample(mut self, temperature: f64, top_p: f64, top_k: usize, seed: u64) -> Self {
        self.cfg.sampling = Sampling::Sample {
            temperature,
            top_p,
            top_k,
            seed,
        };
        self
    }

    /// Sets the n-gram ban (`None` for none).
    pub fn ngram_ban(mut self, ban: Option<NgramBan>) -> Self {
        self.cfg.ngram_ban = ban;
        self
    }

    /// End-of-sequence ids (empty: never stop early).
    pub fn eos_token_ids(mut self, ids: Vec<u32>) -> Self {
        self.cfg.eos_token_ids = ids;
        self
    }

    /// Keep the raw logits (before any ban or warping) of every step in the output.
    pub fn record_step_logits(mut self, yes: bool) -> Self {
        self.cfg.record_step_logits = yes;
        self
    }

    /// Checks and returns the configuration.
    pub fn build(self) -> Result<GenerationConfig> {
        if let Some(ban) = &self.cfg.ngram_ban {
            ban.validate()?;
        }
        if let Sampling::Sample {
            temperature, top_p, ..
        } = self.cfg.sampling
        {
            if !(temperature > 0.0 && temperature.is_finite()) {
                return Err(Error::Input(format!(
                    "temperature must be positive, got {temperature}"
                )));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(Error::Input(format!(
                    "top_p must be in (0, 1], got {top_p}"
                )));
            }
        }
        Ok(self.cfg)
    }
}

/// Result of [`generate()`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    /// Generated ids (EOS excluded).
    pub tokens: Vec<u32>,
    /// Why generation stopped.
    pub stop: StopReason,
    /// Prompt positions.
    pub prompt_len: usize,
    /// Seconds spent on the prompt (prefill, first logits).
    pub prefill_secs: f64,
    /// Seconds spent on the incremental steps.
    pub decode_secs: f64,
    /// Raw logits of each step, when asked for.
    pub step_logits: Option<Vec<Vec<f32>>>,
}

impl GenerationOutput {
    /// Whether generation stopped at the token limit.
    pub fn hit_limit(&self) -> bool {
        self.stop == StopReason::MaxTokens
    }

    /// Decode throughput in tokens per second (steps after the first token).
    pub fn decode_tokens_per_sec(&self) -> f64 {
        let steps = self.tokens.len().saturating_sub(1);
        if self.decode_secs > 0.0 {
            steps as f64 / self.decode_secs
        } else {
            0.0
        }
    }
}

/// Generates from a prompt: `prompt_ids` (for the n-gram ban) and their embeddings
/// `input_embeds` `[1, t, hidden]` (see [`DecoderModel::embed_prompt`]).
///
/// `on_token` is called with each generated id (not EOS) as soon as it is chosen; returning
/// `false` stops generation.
pub fn generate(
    model: &mut DecoderModel,
    prompt_ids: &[u32],
    input_embeds: &Tensor,
    cfg: &GenerationConfig,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<GenerationOutput> {
    let (b, t, _) = input_embeds.dims3()?;
    if b != 1 {
        return Err(Error::Input(format!(
            "generate takes one sequence, got a batch of {b}"
        )));
    }
    if t != prompt_ids.len() {
        return Err(Error::Input(format!(
            "{} prompt ids but {t} embedded positions",
            prompt_ids.len()
        )));
    }
    let mut rng = match cfg.sampling {
        Sampling::Sample { seed, .. } => SplitMix64::new(seed),
        Sampling::Greedy => SplitMix64::new(0),
    };
    let start = Instant::now();
    let mut logits = model.forward_with(input_embeds, 0, LogitsFor::Last, None)?;
    let mut prefill_secs = start.elapsed().as_secs_f64();
    let mut decode_start = Instant::now();
    let mut tokens = Vec::new();
    let mut step_logits = cfg.record_step_logits.then(Vec::new);
    let mut stop = StopReason::MaxTokens;
    for step in 0..cfg.max_new_tokens {
        let mut row = logits.flatten_all()?.to_vec1::<f32>()?;
        if step == 0 {
            prefill_secs = start.elapsed().as_secs_f64();
            decode_start = Instant::now();
        }
        if let Some(rec) = step_logits.as_mut() {
            rec.push(row.clone());
        }
        if let Some(ban) = &cfg.ngram_ban {
            for id in ban.banned(prompt_ids, &tokens) {
                if let Some(v) = row.get_mut(id as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        let next = match &cfg.sampling {
            Sampling::Greedy => argmax(&row),
            Sampling::Sample {
                temperature,
                top_p,
                top_k,
                ..
            } => sample(&row, *temperature, *top_p, *top_k, &mut rng),
        };
        if cfg.eos_token_ids.contains(&next) {
            stop = StopReason::Eos;
            break;
        }
        tokens.push(next);
        if !on_token(next) {
            stop = StopReason::Callback;
            break;
        }
        if tokens.len() == cfg.max_new_tokens {
            break;
        }
        let ids = Tensor::from_slice(&[next], (1, 1), model.device())?;
        let emb = model.embed_ids(&ids)?;
        logits = model.forward_with(&emb, t + step, LogitsFor::Last, None)?;
    }
    Ok(GenerationOutput {
        tokens,
        stop,
        prompt_len: t,
        prefill_secs,
        decode_secs: decode_start.elapsed().as_secs_f64(),
        step_logits,
    })
}

/// Index of the first maximum (NaN never wins).
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in row.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}

/// Temperature, top-k, top-p (in Hugging Face's order), then a draw.
fn sample(row: &[f32], temperature: f64, top_p: f64, top_k: usize, rng: &mut SplitMix64) -> u32 {
    let mut idx: Vec<usize> = (0..row.len())
        .filter(|&i| row[i] > f32::NEG_INFINITY)
        .collect();
    if idx.is_empty() {
        return argmax(row);
    }
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    if top_k > 0 && idx.len() > top_k {
        // Keep ties with the k-th value, as Hugging Face's `TopKLogitsWarper`.
        let kth = row[idx[top_k - 1]];
        idx.retain(|&i| row[i] >= kth);
    }
    let max = f64::from(row[idx[0]]) / temperature;
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| (f64::from(row[i]) / temperature - max).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (j, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= top_p {
                keep = j + 1;
                break;
            }
        }
        probs.truncate(keep);
        idx.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let u = rng.next_f64();
    let mut cum = 0.0;
    for (j, p) in probs.iter().enumerate() {
        cum += p;
        if u < cum {
            return idx[j] as u32;
        }
    }
    idx[idx.len() - 1] as u32
}

/// A small deterministic generator (SplitMix64) for reproducible sampling.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_ban_matches_hf_semantics() {
        // "1,2" was followed by 3 earlier: after another "1,2", 3 is banned.
        let ban = NgramBan::Whole { size: 3 };
        assert_eq!(ban.banned(&[1, 2, 3, 9], &[1, 2]), vec![3]);
        assert!(ban.banned(&[1, 2, 3, 9], &[1]).is_empty());
        // size 1 bans every token seen.
        let ban = NgramBan::Whole { size: 1 };
        let mut b = ban.banned(&[5, 6], &[5]);
        b.sort();
        assert_eq!(b, vec![5, 6]);
    }

    #[test]
    fn windowed_ban_uses_generated_tokens_window_and_whitelist() {
        let ban = NgramBan::Windowed {
            size: 2,
            window: 3,
            whitelist: vec![7],
        };
        // Prompt ignored.
        assert!(ban.banned(&[4, 5, 4], &[1]).is_empty());
        assert_eq!(ban.banned(&[], &[4, 5, 4]), vec![5]);
        // Outside the window (search starts at len - 3 = 2).
        assert!(ban.banned(&[], &[4, 5, 1, 2, 4]).is_empty());
        // Whitelisted completion.
        assert!(ban.banned(&[], &[4, 7, 4]).is_empty());
    }

    #[test]
    fn sampling_is_seeded_and_respects_top_k() {
        let row = vec![0.0, 5.0, 4.9, -1.0];
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..50 {
            let x = sample(&row, 1.0, 1.0, 2, &mut a);
            assert!(x == 1 || x == 2);
            assert_eq!(x, sample(&row, 1.0, 1.0, 2, &mut b));
        }
        // top_p tiny keeps only the best.
        assert_eq!(sample(&row, 1.0, 1e-6, 0, &mut a), 1);
    }
}
