//! [`Store::compact`]: a crash-safe rewrite of the engine's files with only the live records.

use std::path::{Path, PathBuf};

use crate::blobs::sync_dir;
use crate::engine::{self, Batch, Engine};
use crate::error::{Error, Result};
use crate::store::{Store, ENGINE_DIR};
use crate::types::Compaction;

/// The fresh engine folder [`Store::compact`] fills before swapping it in.
const COMPACT_DIR: &str = "db.compact";
/// The previous engine folder while [`Store::compact`] swaps the fresh one in.
const RETIRED_DIR: &str = "db.retired";
/// Bytes of records per batch while compacting.
const COMPACT_BATCH_BYTES: usize = 8 << 20;

/// Completes or rolls back a [`Store::compact`] that a crash interrupted: with no engine folder but
/// a retired one, the retired (complete, old) folder comes back; leftover fresh or retired
/// folders are removed.
pub(crate) fn finish_interrupted_compaction(path: &Path) -> Result<()> {
    let live = path.join(ENGINE_DIR);
    let retired = path.join(RETIRED_DIR);
    if !live.exists() && retired.is_dir() {
        rename(&retired, &live)?;
        sync_dir(path)?;
    }
    remove_dir_if_present(&retired)?;
    remove_dir_if_present(&path.join(COMPACT_DIR))
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| Error::io(from, e))
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(dir, e)),
        _ => Ok(()),
    }
}

/// The engine slot while [`Store::compact`] swaps folders: every call fails, naming the store.
struct Closed(PathBuf);

impl Closed {
    fn err<T>(&self) -> Result<T> {
        Err(Error::BadPath {
            path: self.0.clone(),
            reason: "the store's engine is closed after a failed compaction; reopen the store"
                .into(),
        })
    }
}

impl Engine for Closed {
    fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>> {
        self.err()
    }
    fn visit_range(
        &self,
        _: &[u8],
        _: Option<&[u8]>,
        _: &mut crate::engine::Visitor<'_>,
    ) -> Result<()> {
        self.err()
    }
    fn apply(&self, _: Batch) -> Result<()> {
        self.err()
    }
    fn flush(&self) -> Result<()> {
        self.err()
    }
    fn size_on_disk(&self) -> Result<u64> {
        self.err()
    }
}

impl Store {
    /// Rewrites the engine's files with only the live records, giving back the space that tier
    /// changes and deletions left behind (sled never shrinks its files by itself), and deletes
    /// blob files no record names.
    ///
    /// The records are copied into a fresh engine folder beside the current one, which is swapped
    /// in by two renames once the copy is flushed, if it is smaller (otherwise it is discarded and
    /// `bytes_after` equals `bytes_before`). A crash at any point loses nothing: the next open keeps
    /// the old folder unless the swap had completed, and clears the leftovers. The copy holds
    /// every record in memory once (about the live size, `Stats::live_bytes`).
    pub fn compact(&mut self) -> Result<Compaction> {
        self.engine.flush()?;
        let bytes_before = self.engine.size_on_disk()?;
        let path = self.opts.path.clone();
        let fresh_dir = path.join(COMPACT_DIR);
        remove_dir_if_present(&fresh_dir)?;
        let (records, fresh_bytes) = match self.copy_into(&fresh_dir) {
            Ok(copied) => copied,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&fresh_dir);
                return Err(e);
            }
        };
        if fresh_bytes >= bytes_before {
            remove_dir_if_present(&fresh_dir)?;
            return Ok(Compaction {
                records,
                bytes_before,
                bytes_after: bytes_before,
            });
        }
        // Close the old engine (sled releases its files on drop), swap, reopen whatever stands.
        self.engine = Box::new(Closed(path.clone()));
        let live = path.join(ENGINE_DIR);
        let retired = path.join(RETIRED_DIR);
        let swapped = rename(&live, &retired)
            .and_then(|()| sync_dir(&path))
            .and_then(|()| rename(&fresh_dir, &live))
            .and_then(|()| sync_dir(&path))
            .and_then(|()| remove_dir_if_present(&retired));
        finish_interrupted_compaction(&path)?;
        self.engine = Box::new(engine::open_default(&live)?);
        swapped?;
        self.sweep_blobs()?;
        Ok(Compaction {
            records,
            bytes_before,
            bytes_after: self.engine.size_on_disk()?,
        })
    }

    /// Copies every record into a new engine in `dir`; returns how many, and its size on disk.
    fn copy_into(&self, dir: &Path) -> Result<(u64, u64)> {
        let records = self.copy_records(dir)?;
        // Measured as the engine will stand once reopened (sled may add a segment on open).
        let fresh = engine::open_default(dir)?;
        let size = fresh.size_on_disk()?;
        drop(fresh);
        Ok((records, size))
    }

    fn copy_records(&self, dir: &Path) -> Result<u64> {
        let fresh = engine::open_default(dir)?;
        let fresh: &dyn Engine = &fresh;
        let pairs = self.engine.scan_prefix(b"")?;
        let records = pairs.len() as u64;
        let mut batch = Batch::new();
        let mut bytes = 0;
        for (key, value) in pairs {
            bytes += key.len() + value.len();
            batch.put(key, value);
            if bytes >= COMPACT_BATCH_BYTES {
                fresh.apply(std::mem::take(&mut batch))?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            fresh.apply(batch)?;
        }
        fresh.flush()?;
        let copied = fresh.scan_prefix(b"")?.len() as u64;
        if copied != records {
            return Err(Error::Corrupt {
                key: dir.display().to_string(),
                page: None,
                reason: format!("compaction copied {copied} of {records} records"),
            });
        }
        Ok(records)
    }
}
