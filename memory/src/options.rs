//! How a store is opened: [`StoreOptions`] and its builder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// How to open a store. Build with [`StoreOptions::builder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    pub(crate) path: PathBuf,
    pub(crate) create: bool,
    pub(crate) retain_text: bool,
    pub(crate) sync_writes: bool,
    pub(crate) wait: Option<Duration>,
}

impl StoreOptions {
    /// A builder with the defaults: create if missing, retain page text, sync every write.
    pub fn builder() -> StoreOptionsBuilder {
        StoreOptionsBuilder::default()
    }

    /// The store folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a missing folder is created.
    pub fn create(&self) -> bool {
        self.create
    }

    /// Whether page-outs keep the page text.
    pub fn retain_text(&self) -> bool {
        self.retain_text
    }

    /// Whether every write is flushed to disk before it returns.
    pub fn sync_writes(&self) -> bool {
        self.sync_writes
    }

    /// How long opening waits for another process to release the store (`None`: not at all).
    pub fn wait(&self) -> Option<Duration> {
        self.wait
    }
}

/// Builder for [`StoreOptions`].
#[derive(Debug, Clone)]
pub struct StoreOptionsBuilder {
    path: Option<PathBuf>,
    create: bool,
    retain_text: bool,
    sync_writes: bool,
    wait: Option<Duration>,
}

impl Default for StoreOptionsBuilder {
    fn default() -> Self {
        Self {
            path: None,
            create: true,
            retain_text: true,
            sync_writes: true,
            wait: None,
        }
    }
}

impl StoreOptionsBuilder {
    /// The store folder (required).
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Create the folder when missing (default `true`).
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Keep each page's text next to its image (default `true`; a policy can drop it later).
    pub fn retain_text(mut self, retain: bool) -> Self {
        self.retain_text = retain;
        self
    }

    /// Flush every transaction to disk before returning (default `true`). With `false`, writes are
    /// still atomic but the last ones may be lost on power failure (not on a process crash).
    pub fn sync_writes(mut self, sync: bool) -> Self {
        self.sync_writes = sync;
        self
    }

    /// When another process has the store open, wait up to this long for it to close the store
    /// instead of failing at once (default: fail at once with [`Error::Locked`], naming its PID).
    pub fn wait(mut self, wait: Option<Duration>) -> Self {
        self.wait = wait;
        self
    }

    /// Checks and returns the options.
    pub fn build(self) -> Result<StoreOptions> {
        let path = self.path.ok_or_else(|| Error::BadPath {
            path: PathBuf::new(),
            reason: "no store path given".into(),
        })?;
        if path.as_os_str().is_empty() {
            return Err(Error::BadPath {
                path,
                reason: "the path is empty".into(),
            });
        }
        Ok(StoreOptions {
            path,
            create: self.create,
            retain_text: self.retain_text,
            sync_writes: self.sync_writes,
            wait: self.wait,
        })
    }
}
