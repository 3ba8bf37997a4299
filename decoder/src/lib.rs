//! `lethe-decoder`: the DeepSeek-V2-style MoE decoder of DeepSeek-OCR in candle, with KV-cache
//! generation, the tokenizer and prompt building.
//!
//! The decoder reads a prompt whose `<image>` placeholders are filled with vision embeddings
//! (from `lethe-encoder`) and writes the page's text back. Numerics follow the reference
//! (`modeling_deepseekv2.py` of the DeepSeek-OCR HF remote code) in f32 on CPU; parity with it is
//! tested on the tiny fixtures in `tests/fixtures/deepseek-ocr/`.
//!
//! - [`DecoderConfig`]: read from a checkpoint's `config.json`.
//! - [`DecoderModel`]: embedding, attention with RoPE and a KV cache, dense and MoE feed-forward,
//!   `lm_head`; optional q8_0 / q4k quantised linear layers ([`Quantization`]).
//! - [`Tokenizer`]: the `tokenizers` crate, with the DeepSeek-OCR tokenizer embedded.
//! - [`generate()`]: prompt prefill then cached decoding; greedy or sampled; both n-gram bans of the
//!   reference; EOS; token limit; a per-token callback.
//!
//! Counting text tokens with the embedded tokenizer (no model needed):
//!
//! ```
//! use lethe_decoder::{build_prompt, Tokenizer};
//!
//! let tok = Tokenizer::deepseek_ocr()?;
//! assert_eq!(tok.name(), "deepseek-ocr");
//! assert_eq!(tok.encode("Hello, world!")?, vec![19923, 14, 2058, 3]);
//!
//! // The reference prompt for one image of 273 decoder positions (base mode).
//! let prompt = build_prompt(&tok, "<image>\nFree OCR.", &[273], 0, 128_815)?;
//! assert_eq!(prompt.ids.len(), 1 + 273 + 4);
//! assert_eq!(prompt.ids[0], 0);
//! # Ok::<(), lethe_decoder::Error>(())
//! ```
#![warn(missing_docs)]

pub mod attention;
pub mod config;
pub mod error;
pub mod generate;
pub mod model;
pub mod moe;
pub mod ops;
pub mod tokenizer;

pub use config::DecoderConfig;
pub use error::{Error, Result};
pub use generate::{
    build_prompt, generate, GenerationConfig, GenerationConfigBuilder, GenerationOutput, NgramBan,
    Prompt, Sampling, StopReason, DEFAULT_PROMPT,
};
pub use model::{compute_dtype, DecoderModel, LogitsFor, Trace};
pub use ops::Quantization;
pub use tokenizer::{TextEncoder, TextStream, Tokenizer, DEEPSEEK_OCR_TOKENIZER_NAME};
