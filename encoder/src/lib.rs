//! `lethe-encoder`: DeepSeek-OCR's DeepEncoder (SAM-base -> 16x conv -> CLIP-L -> linear
//! projector) in candle, numerically equal to the reference implementation.
//!
//! The encoder turns a page image into the vision-token sequence DeepSeek-OCR's decoder reads:
//! [`preprocess`] prepares the views exactly as the reference `infer()` does (bit-exact Pillow
//! resizing), and [`Encoder::encode`] runs SAM, CLIP and the projector and lays the tokens out
//! with `image_newline` after every row and `view_seperator` at the end.
//!
//! Weights are read by their checkpoint names (`model.sam_model.*`, `model.vision_model.*`,
//! `model.projector.*`, `model.image_newline`, `model.view_seperator`) from a folder holding
//! `config.json` and `*.safetensors`. On CPU everything runs in f32 (a bf16 checkpoint is
//! converted at load).
//!
//! ```
//! use lethe_encoder::{load_image, preprocess, Encoder, Mode};
//!
//! # fn main() -> lethe_encoder::Result<()> {
//! let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/deepseek-ocr");
//! let encoder = Encoder::builder().model_dir(format!("{fixtures}/tiny")).build()?;
//! let image = load_image(format!("{fixtures}/inputs/card_500x400.png"))?;
//! let views = preprocess(&image, Mode::Tiny)?;
//! let tokens = encoder.encode(&views)?;
//! // 8 x 8 tokens, a newline after each row, one separator; the tiny model is 64 wide.
//! assert_eq!(tokens.dims(), &[73, 64]);
//! assert_eq!(views.positions(), 73);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod clip;
pub mod config;
use lethe_kernels as cpu;
mod error;
pub mod layout;
mod model;
mod ops;
pub mod preprocess;
pub mod projector;
pub mod sam;
pub mod weights;

pub use config::Config;
pub use error::{Error, Result};
/// The `image` crate, re-exported: [`Views`] holds `image::RgbImage`s.
pub use image;
pub use model::{compute_dtype, default_device, Encoder, EncoderBuilder, Flops, Stages, Timings};
pub use preprocess::{load_image, preprocess, Mode, Views};
