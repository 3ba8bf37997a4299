//! Errors of the metrics and report code.

/// A boxed error from a caller-supplied component (tokenizer, decoder).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong while scoring pages or writing a report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A report was configured with a token bucket width of zero.
    #[error("the token bucket width must be at least 1")]
    ZeroBucketWidth,
    /// The caller's tokenizer failed on a page.
    #[error("tokenizer `{tokenizer}` failed on page {page} of {document}")]
    Tokenizer {
        /// The tokenizer's name.
        tokenizer: String,
        /// The document (transcript or image) the page belongs to.
        document: String,
        /// The page index within the document.
        page: usize,
        /// The tokenizer's own error.
        #[source]
        source: BoxError,
    },
    /// The plot canvas could not be allocated.
    #[error("cannot allocate a {width}x{height} plot canvas")]
    Canvas {
        /// Requested width in pixels.
        width: u32,
        /// Requested height in pixels.
        height: u32,
    },
    /// The plot could not be encoded as PNG.
    #[error("cannot encode the plot as PNG")]
    Png(#[source] png::EncodingError),
    /// The report could not be serialised to JSON.
    #[error("cannot serialise the report to JSON")]
    Json(#[source] serde_json::Error),
}

/// The result type of the metrics and report code.
pub type Result<T> = std::result::Result<T, Error>;
