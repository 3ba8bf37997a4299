//! The facade's error type.

use std::path::PathBuf;

/// Errors of the [`crate::Lethe`] facade. Each wraps the failing crate's error, so the message
/// names what and where, and `source()` keeps the chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The page store failed.
    #[error("store: {0}")]
    Store(#[from] lethe_memory::Error),
    /// The renderer failed.
    #[error("render: {0}")]
    Render(#[from] lethe_render::Error),
    /// The policy failed (bad file, budget too small for the pinned pages, ...).
    #[error("policy: {0}")]
    Policy(#[from] lethe_policy::PolicyError),
    /// The vision encoder failed.
    #[error("encoder: {0}")]
    Encoder(#[from] lethe_encoder::Error),
    /// The decoder failed.
    #[error("decoder: {0}")]
    Decoder(#[from] lethe_decoder::Error),
    /// A tensor operation in the glue between encoder and decoder failed.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    /// A stored page's metadata could not be read back.
    #[error("page {page}: unreadable render metadata: {source}")]
    PageMeta {
        /// The page.
        page: lethe_memory::PageId,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// Where.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The caller asked for something that cannot be done (the message says what).
    #[error("{0}")]
    Invalid(String),
    /// Decoding a page back to text needs a model, and none is loaded.
    #[error("recall of the page images needs a decoder model: pass a DeepSeek-OCR checkpoint folder (--model DIR)")]
    NoModel,
}

/// Result of the facade.
pub type Result<T> = std::result::Result<T, Error>;
