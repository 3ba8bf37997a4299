//! The reading model embedded in the build: `models/lethe-reader` (see its `TRAINING.md`).
//!
//! The files are compiled into the library, so the default reader needs no file and no network
//! at run time; [`crate::OcrModel::embedded`] loads it from these bytes.

/// The files of an embedded model folder.
pub(crate) struct EmbeddedModel {
    /// Name reported for the model (and its tokenizer).
    pub name: &'static str,
    /// `config.json` (DeepSeek-OCR schema).
    pub config: &'static str,
    /// `model.safetensors`.
    pub weights: &'static [u8],
    /// `tokenizer.json`.
    pub tokenizer: &'static [u8],
    /// `render-profile.toml`: how its pages are drawn.
    pub profile: &'static str,
    /// `policy.toml`: the tiers it reads.
    pub policy: &'static str,
    /// `generation_config.json`: its no-repeat n-gram size.
    pub generation: &'static str,
}

/// Lethe's own reader, trained on this project's renderer (`training/reader.py`).
pub(crate) static READER: EmbeddedModel = EmbeddedModel {
    name: "lethe-reader",
    config: include_str!("../models/lethe-reader/config.json"),
    weights: include_bytes!("../models/lethe-reader/model.safetensors"),
    tokenizer: include_bytes!("../models/lethe-reader/tokenizer.json"),
    profile: include_str!("../models/lethe-reader/render-profile.toml"),
    policy: include_str!("../models/lethe-reader/policy.toml"),
    generation: include_str!("../models/lethe-reader/generation_config.json"),
};
