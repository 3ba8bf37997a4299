//! The crate's error type.

use std::path::PathBuf;

use crate::types::PageId;

/// Result alias used throughout `lethe-memory`.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in the store. Every variant names what and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store path cannot be used (empty, a file, not a store, missing with `create(false)`).
    #[error("store path {path}: {reason}")]
    BadPath {
        /// The offending path.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// Another process (or another handle in this one) holds the store's lock file.
    #[error("store {path} is in use by {} (lock held on {lock}){}", holder.map_or("another process".to_string(), |p| format!("PID {p}")), if *waited { "; gave up waiting" } else { "" })]
    Locked {
        /// The store folder.
        path: PathBuf,
        /// The lock file that is held.
        lock: PathBuf,
        /// The process id the holder wrote into the lock file, when it could be read.
        holder: Option<u32>,
        /// Whether the open waited for the lock before giving up.
        waited: bool,
    },
    /// The store was written by another schema version of this crate.
    #[error(
        "store {path} has schema version {found}, this build of lethe-memory expects {expected}"
    )]
    SchemaMismatch {
        /// The store folder.
        path: PathBuf,
        /// The version recorded in the store.
        found: u32,
        /// The version this build reads and writes.
        expected: u32,
    },
    /// A filesystem operation failed.
    #[error("I/O error on {path}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The storage engine reported an error.
    #[error("storage engine error during {op}")]
    Engine {
        /// The engine operation that failed.
        op: &'static str,
        /// The engine's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored record failed its checksum or could not be decoded.
    #[error("corrupt record at key {key}{}: {reason}", page_suffix(*.page))]
    Corrupt {
        /// Human-readable form of the record's key.
        key: String,
        /// The page the record belongs to, when known.
        page: Option<PageId>,
        /// What is wrong with it.
        reason: String,
    },
    /// No page with this id exists.
    #[error("page {0} not found")]
    PageNotFound(PageId),
    /// A page-out asked for turns that are not (or no longer) in the hot tier.
    #[error("turn {index} of scope {scope} is not in the hot tier")]
    TurnMissing {
        /// The scope, as displayed.
        scope: String,
        /// The first missing turn index.
        index: u64,
    },
    /// An argument was rejected before anything was written.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An export or import folder is unusable or inconsistent.
    #[error("export folder {path}: {reason}")]
    Export {
        /// The file or folder involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A record could not be serialised.
    #[error("could not encode {what}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The serialiser's error.
        #[source]
        source: serde_json::Error,
    },
}

fn page_suffix(page: Option<PageId>) -> String {
    page.map(|p| format!(" (page {p})")).unwrap_or_default()
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn engine(
        op: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Engine {
            op,
            source: Box::new(source),
        }
    }
}
