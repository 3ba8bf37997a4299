//! [`Engine`] on sled 0.34.7 (the last stable sled release).
//!
//! sled keeps an append-only log with atomic batches; it takes several times the disk of its live
//! data, which `Stats::bytes_on_disk` reports next to the live byte count.

use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::engine::{Batch, Engine, Op, Visitor};
use crate::error::{Error, Result};

/// A sled database in one folder.
#[derive(Debug)]
pub struct SledEngine {
    /// Dropped by hand: see the `Drop` impl.
    db: ManuallyDrop<sled::Db>,
    dir: PathBuf,
    /// Set by the first I/O error (a full disk, a vanished or read-only mount).
    io_failed: AtomicBool,
}

impl Drop for SledEngine {
    /// sled 0.34 flushes when its last handle drops and, after a write has failed with an I/O
    /// error, waits forever for that write to become durable. So once an I/O error was seen, the
    /// handle is leaked instead (its memory and threads go when the process does); every write
    /// acknowledged before the error is already on disk.
    fn drop(&mut self) {
        if !*self.io_failed.get_mut() {
            // SAFETY: `db` is dropped exactly once, here, and never used afterwards.
            unsafe { ManuallyDrop::drop(&mut self.db) }
        }
    }
}

impl SledEngine {
    /// Opens (creating if needed) a sled database in `dir`.
    ///
    /// The store's own `LOCK` file already excludes other processes, so sled's file lock can only
    /// be held by a handle of this process that was just dropped: sled releases it from a
    /// background thread a moment later. Opening waits for that, up to [`RELEASE_WAIT`].
    pub fn open(dir: &Path) -> Result<Self> {
        let started = Instant::now();
        // sled fixes its segment size when it creates a database and refuses another later.
        let segment_size = stored_segment_size(dir).unwrap_or(SEGMENT_SIZE);
        loop {
            let opened = sled::Config::new()
                .path(dir)
                .cache_capacity(64 * 1024 * 1024)
                .segment_size(segment_size)
                .open();
            match opened {
                Ok(db) => {
                    return Ok(Self {
                        db: ManuallyDrop::new(db),
                        dir: dir.to_path_buf(),
                        io_failed: AtomicBool::new(false),
                    })
                }
                Err(sled::Error::Io(io))
                    if io.to_string().contains("could not acquire lock")
                        && started.elapsed() < RELEASE_WAIT =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(sled::Error::Io(io)) => return Err(Error::io(dir, io)),
                Err(other) => return Err(Error::engine("open", other)),
            }
        }
    }
}

/// The segment size of new databases. sled's default (512 KiB) leaves a store of a few megabytes
/// at three times its live bytes; smaller segments are reclaimed sooner.
const SEGMENT_SIZE: usize = 64 * 1024;

/// The segment size recorded in an existing database's `conf` file (text lines, then a binary
/// checksum).
fn stored_segment_size(dir: &Path) -> Option<usize> {
    let conf = std::fs::read(dir.join("conf")).ok()?;
    String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|l| l.strip_prefix("segment_size:"))
        .and_then(|v| v.trim().parse().ok())
}

/// How long opening waits for a just-dropped handle of this process to release sled's lock.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

impl SledEngine {
    /// Maps a sled error: an I/O failure (a full disk, a read-only mount) names the engine's
    /// folder; anything else names the operation.
    fn map(&self, op: &'static str) -> impl Fn(sled::Error) -> Error + '_ {
        move |e| match e {
            sled::Error::Io(io) => {
                self.io_failed.store(true, Ordering::SeqCst);
                Error::io(&self.dir, io)
            }
            other => Error::engine(op, other),
        }
    }
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .db
            .get(key)
            .map_err(self.map("get"))?
            .map(|v| v.to_vec()))
    }

    fn visit_range(&self, from: &[u8], to: Option<&[u8]>, f: &mut Visitor<'_>) -> Result<()> {
        let iter = match to {
            Some(to) => self.db.range(from..to),
            None => self.db.range(from..),
        };
        for kv in iter {
            let (k, v) = kv.map_err(self.map("scan"))?;
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn apply(&self, batch: Batch) -> Result<()> {
        let mut b = sled::Batch::default();
        for op in batch.ops {
            match op {
                Op::Put(k, v) => b.insert(k, v),
                Op::Delete(k) => b.remove(k),
            }
        }
        self.db.apply_batch(b).map_err(self.map("batch"))
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(self.map("flush"))?;
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64> {
        dir_size(&self.dir)
    }
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let meta = entry.metadata().map_err(|e| Error::io(entry.path(), e))?;
        if meta.is_dir() {
            total += dir_size(&entry.path())?;
        } else {
            total += meta.len();
        }
    }
    Ok(total)
}
