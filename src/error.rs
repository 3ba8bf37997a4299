//! The facade's error type.

use std::path::PathBuf;

/// Errors of the [`crate::Lethe`] facade. A crate's error passes through as it is (its message
/// names what and where); the facade's own errors keep their cause in `source()`, so printing the
/// chain (`{:#}` with anyhow) shows each cause once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The page store failed.
    #[error(transparent)]
    Store(#[from] lethe_memory::Error),
    /// A name that is not a resolution mode.
    #[error(transparent)]
    Mode(#[from] lethe_mode::UnknownMode),
    /// The renderer failed.
    #[error(transparent)]
    Render(#[from] lethe_render::Error),
    /// The policy failed (bad file, budget too small for the pinned pages, ...).
    #[error(transparent)]
    Policy(#[from] lethe_policy::PolicyError),
    /// The vision encoder failed.
    #[error(transparent)]
    Encoder(#[from] lethe_encoder::Error),
    /// The decoder failed.
    #[error(transparent)]
    Decoder(#[from] lethe_decoder::Error),
    /// A tensor operation in the glue between encoder and decoder failed (the tensor library's
    /// message).
    #[error("tensor operation failed: {0}")]
    Tensor(String),
    /// A stored page's metadata could not be read back.
    #[error("page {page}: unreadable render metadata")]
    PageMeta {
        /// The page.
        page: lethe_memory::PageId,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A file or folder could not be read or written.
    #[error("I/O error on {}", path.display())]
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
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Tensor(e.to_string())
    }
}

/// Result of the facade.
pub type Result<T> = std::result::Result<T, Error>;
