//! The error type of `lethe-encoder`.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running the encoder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model folder does not exist or is not a folder.
    #[error("model folder {path} does not exist or is not a folder")]
    MissingFolder {
        /// The folder that was asked for.
        path: PathBuf,
    },
    /// A file the model needs is missing.
    #[error("missing file {path}")]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `config.json` could not be parsed.
    #[error("cannot parse the model config {path}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The config describes an encoder this crate cannot build.
    #[error("invalid encoder config: {0}")]
    InvalidConfig(String),
    /// A tensor the encoder needs is not in the checkpoint.
    #[error("tensor {name} is missing from the checkpoint")]
    MissingTensor {
        /// Full tensor name.
        name: String,
    },
    /// A tensor has a shape that does not match the config.
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// Full tensor name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        found: Vec<usize>,
    },
    /// An image could not be opened or decoded.
    #[error("cannot read image {path}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: image::ImageError,
    },
    /// An image has a size the preprocessing cannot handle (e.g. zero pixels).
    #[error("bad image: {0}")]
    BadImage(String),
    /// Views prepared for one mode or size were given to code expecting another.
    #[error("bad input: {0}")]
    BadInput(String),
    /// A tensor operation failed.
    #[error("tensor operation failed")]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
