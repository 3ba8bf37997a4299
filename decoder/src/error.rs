//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running the decoder.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A `config.json` is not valid JSON or lacks a required key.
    #[error("cannot parse decoder config {path}")]
    ConfigParse {
        /// The file (or a description of the source).
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The configuration is readable but inconsistent or out of range.
    #[error("invalid decoder config: {0}")]
    InvalidConfig(String),
    /// The configuration asks for a variant this crate does not implement.
    #[error("unsupported decoder config: {0}")]
    Unsupported(String),
    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer: {what}")]
    Tokenizer {
        /// What was being done.
        what: String,
        /// The `tokenizers` crate's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A checkpoint folder holds no `*.safetensors` file.
    #[error("no *.safetensors file in {0}")]
    NoWeights(PathBuf),
    /// A weight is missing or has the wrong shape (the source names the tensor and both shapes).
    #[error("loading decoder weights from {origin}")]
    Weights {
        /// Where the weights came from.
        origin: String,
        /// candle's error, naming the tensor.
        #[source]
        source: candle_core::Error,
    },
    /// A caller passed inconsistent inputs (wrong shapes, counts, ids).
    #[error("invalid input: {0}")]
    Input(String),
    /// A tensor operation failed.
    #[error("tensor operation failed")]
    Candle(#[from] candle_core::Error),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
