//! The one error type of `lethe-render`.

use std::path::PathBuf;

/// Everything that can go wrong while parsing, paginating, rasterising or encoding pages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transcript holds no text at all (zero bytes, or only whitespace).
    #[error("the transcript is empty: there is no text to render")]
    EmptyTranscript,

    /// The transcript is not valid UTF-8 and lossy decoding was not asked for.
    #[error(
        "the transcript is not valid UTF-8: invalid byte sequence at byte offset {offset} \
         (pass --lossy to replace invalid bytes with U+FFFD)"
    )]
    InvalidUtf8 {
        /// Byte offset of the first invalid byte, from the start of the input.
        offset: u64,
    },

    /// A JSON transcript (JSON Lines or an OpenAI-style array) could not be parsed.
    #[error("malformed JSON at line {line}, column {column}")]
    Json {
        /// 1-based line number in the input.
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// The parser's own error.
        #[source]
        source: serde_json::Error,
    },

    /// A transcript line or message is well-formed but does not have the expected shape.
    #[error("transcript line {line}: {message}")]
    Transcript {
        /// 1-based line number in the input (for an OpenAI array: 1-based message index).
        line: usize,
        /// What is wrong.
        message: String,
    },

    /// An unknown name was given for a mode, format or profile setting.
    #[error("unknown {what} {value:?} (expected one of: {expected})")]
    UnknownName {
        /// What kind of name (`"mode"`, `"format"`, ...).
        what: &'static str,
        /// The value given.
        value: String,
        /// The accepted values, comma-separated.
        expected: &'static str,
    },

    /// A render profile has an impossible value.
    #[error("invalid render profile: {0}")]
    InvalidProfile(String),

    /// A render profile file could not be parsed.
    #[error("cannot parse render profile {path}: {message}")]
    ProfileParse {
        /// The profile file.
        path: PathBuf,
        /// The parser's message (TOML or JSON).
        message: String,
    },

    /// A bundled font could not be loaded.
    #[error("bundled font {0} could not be loaded")]
    Font(&'static str),

    /// A PNG could not be encoded.
    #[error("cannot encode PNG")]
    PngEncode(#[source] png::EncodingError),

    /// A PNG could not be decoded.
    #[error("cannot decode PNG")]
    PngDecode(#[source] png::DecodingError),

    /// A PNG uses a pixel format this crate does not read.
    #[error("unsupported PNG pixel format: {0}")]
    UnsupportedPng(String),

    /// An image buffer does not match its declared size.
    #[error("invalid image: {0}")]
    InvalidImage(String),

    /// Reading input or writing output failed.
    #[error("I/O error while {context}")]
    Io {
        /// What was being done, naming the file where known.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl From<lethe_mode::UnknownMode> for Error {
    fn from(e: lethe_mode::UnknownMode) -> Self {
        Error::UnknownName {
            what: "mode",
            value: e.0,
            expected: "tiny, small, base, large, gundam",
        }
    }
}
