//! The store: opening, locking, the schema check, and the record codec every part shares.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::blobs::Blobs;
use crate::compact::finish_interrupted_compaction;
use crate::engine::{self, Batch, Engine};
use crate::error::{Error, Result};
use crate::keys;
use crate::options::StoreOptions;
use crate::types::{Scope, TokenCache, TokenMeta};

/// The schema version this build writes. Older stores are migrated on open, after a copy of their
/// engine folder is kept beside it: schema 1 (images and token caches inside the engine) in
/// [`SCHEMA1_BACKUP_DIR`], schema 2 (a page's layout as an opaque JSON string holding a second
/// copy of its text) in [`SCHEMA2_BACKUP_DIR`].
pub const SCHEMA_VERSION: u32 = 3;

/// Where the migration from schema 1 keeps a copy of the engine folder it changes.
pub const SCHEMA1_BACKUP_DIR: &str = "db.schema1-backup";

/// Where the migration from schema 2 keeps a copy of the engine folder it changes.
pub const SCHEMA2_BACKUP_DIR: &str = "db.schema2-backup";

/// How often a waiting open retries the lock.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// Name of the lock file inside a store folder.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the engine's folder inside a store folder.
pub const ENGINE_DIR: &str = "db";

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// The tiered page store. One process at a time; methods take `&self` and are safe to share
/// between threads (writes are serialised).
pub struct Store {
    // Field order matters: the engine is dropped (and flushed) before the lock is released.
    pub(crate) engine: Box<dyn Engine>,
    pub(crate) blobs: Blobs,
    write: Mutex<()>,
    pub(crate) opts: StoreOptions,
    _lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("opts", &self.opts).finish()
    }
}

fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(&PNG_SIGNATURE)
}

pub(crate) fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map(|v| keys::frame_packed(&v))
        .map_err(|source| Error::Encode {
            what: what.to_string(),
            source,
        })
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T> {
    let payload = keys::unframe(key, value)?;
    serde_json::from_slice(&payload).map_err(|e| Error::Corrupt {
        key: keys::describe(key),
        page: keys::page_of(key),
        reason: format!("undecodable record: {e}"),
    })
}

pub(crate) fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

pub(crate) fn validate_scope(scope: &Scope) -> Result<()> {
    let fields = [
        scope.user.as_deref(),
        scope.agent.as_deref(),
        Some(scope.session.as_str()),
    ];
    for f in fields.into_iter().flatten() {
        if f.len() > 4096 {
            return Err(Error::InvalidInput(format!(
                "scope field of {} bytes is longer than 4096",
                f.len()
            )));
        }
    }
    Ok(())
}

pub(crate) fn validate_blobs(image: Option<&[u8]>, tokens: Option<&TokenCache>) -> Result<()> {
    if let Some(image) = image.filter(|i| !is_png(i)) {
        return Err(Error::InvalidInput(format!(
            "page image of {} bytes is not a PNG (bad signature)",
            image.len()
        )));
    }
    if let Some(t) = tokens {
        t.validate()?;
    }
    Ok(())
}

pub(crate) fn token_meta(tokens: &TokenCache, blob: crate::BlobId) -> TokenMeta {
    TokenMeta {
        shape: tokens.shape.clone(),
        dtype: tokens.dtype.clone(),
        len: tokens.bytes.len() as u64,
        blob: Some(blob),
    }
}

impl Store {
    /// Whether `dir` holds a Lethe store (its engine folder or lock file), e.g. before a caller
    /// deletes it.
    pub fn looks_like_store(dir: &Path) -> bool {
        dir.join(ENGINE_DIR).is_dir() || dir.join(LOCK_FILE).is_file()
    }

    /// Opens the store in `path`, creating it if missing, with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(StoreOptions::builder().path(path.as_ref()).build()?)
    }

    /// Opens a store with explicit options.
    pub fn open_with(opts: StoreOptions) -> Result<Self> {
        Self::open_wrapped(opts, |engine| Box::new(engine))
    }

    /// Opens a store whose engine is the default one wrapped by `wrap`: a test hook for faults
    /// that cannot be staged on every machine (a full disk where no small filesystem can be
    /// mounted). Not part of the stable API.
    pub(crate) fn open_wrapped(
        opts: StoreOptions,
        wrap: impl FnOnce(engine::DefaultEngine) -> Box<dyn Engine>,
    ) -> Result<Self> {
        let path = opts.path.clone();
        match std::fs::metadata(&path) {
            Ok(m) if !m.is_dir() => {
                return Err(Error::BadPath {
                    path,
                    reason: "is a file, not a folder".into(),
                })
            }
            Ok(_) => {
                let mut entries = std::fs::read_dir(&path).map_err(|e| Error::io(&path, e))?;
                if !Self::looks_like_store(&path) && entries.next().is_some() {
                    return Err(Error::BadPath {
                        path,
                        reason: format!(
                            "is a non-empty folder that is not a Lethe store (no {ENGINE_DIR}/ or {LOCK_FILE}); refusing to write into it"
                        ),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !opts.create {
                    return Err(Error::BadPath {
                        path,
                        reason: "does not exist (and create is off)".into(),
                    });
                }
                std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            }
            Err(e) => return Err(Error::io(&path, e)),
        }

        let lock_path = path.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        let started = Instant::now();
        loop {
            match fs4::FileExt::try_lock(&lock) {
                Ok(()) => break,
                Err(fs4::TryLockError::WouldBlock) => {
                    if opts.wait.is_some_and(|w| started.elapsed() < w) {
                        std::thread::sleep(LOCK_POLL);
                        continue;
                    }
                    let holder = std::fs::read_to_string(&lock_path)
                        .ok()
                        .and_then(|s| s.trim().parse().ok());
                    return Err(Error::Locked {
                        path,
                        lock: lock_path,
                        holder,
                        waited: opts.wait.is_some(),
                    });
                }
                Err(fs4::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
            }
        }
        // Name the holder for whoever finds the store in use.
        lock.set_len(0)
            .and_then(|_| lock.seek(SeekFrom::Start(0)))
            .and_then(|_| write!(lock, "{}", std::process::id()))
            .and_then(|_| lock.flush())
            .map_err(|e| Error::io(&lock_path, e))?;

        finish_interrupted_compaction(&path)?;
        let engine = engine::open_default(&path.join(ENGINE_DIR))?;
        let blobs = Blobs::open(&path, opts.sync_writes)?;
        let store = Store {
            engine: wrap(engine),
            blobs,
            write: Mutex::new(()),
            opts,
            _lock: lock,
        };
        store.check_schema()?;
        store.sweep_blobs()?;
        Ok(store)
    }

    /// Deletes the blob files no record names (a crash between writing a blob and committing
    /// its record, or between a commit and the delete it allowed); returns files and bytes.
    pub(crate) fn sweep_blobs(&self) -> Result<(u64, u64)> {
        let _g = self.lock();
        self.blobs
            .sweep(|id| Ok(self.engine.get(&keys::blob_refs(id))?.is_some()))
    }

    fn check_schema(&self) -> Result<()> {
        match self.engine.get(keys::SCHEMA)? {
            Some(v) => {
                let found: u32 = decode(keys::SCHEMA, &v)?;
                match found {
                    1 => return self.migrate_from_schema1(),
                    2 => return self.migrate_from_schema2(),
                    _ => {}
                }
                if found != SCHEMA_VERSION {
                    return Err(Error::SchemaMismatch {
                        path: self.opts.path.clone(),
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
                Ok(())
            }
            None => {
                if !self.engine.is_empty_prefix(b"")? {
                    return Err(Error::Corrupt {
                        key: keys::describe(keys::SCHEMA),
                        page: None,
                        reason: "the store holds records but no schema version".into(),
                    });
                }
                let mut b = Batch::new();
                b.put(keys::SCHEMA, encode("schema version", &SCHEMA_VERSION)?);
                self.engine.apply(b)?;
                self.engine.flush()
            }
        }
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// The store folder.
    pub fn path(&self) -> &Path {
        &self.opts.path
    }

    /// Flushes and closes the store, reporting any error that a plain drop would swallow.
    pub fn close(self) -> Result<()> {
        self.engine.flush()
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<()> {
        self.engine.flush()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ()> {
        // A panic in another writer cannot leave a half-applied batch (batches are atomic), so a
        // poisoned lock is safe to take over.
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn commit(&self, batch: Batch) -> Result<()> {
        self.engine.apply(batch)?;
        if self.opts.sync_writes {
            self.engine.flush()?;
        }
        Ok(())
    }

    pub(crate) fn engine(&self) -> &dyn Engine {
        self.engine.as_ref()
    }

    pub(crate) fn read<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        self.engine.get(key)?.map(|v| decode(key, &v)).transpose()
    }

    pub(crate) fn read_next_page(&self) -> Result<u64> {
        Ok(self.read::<u64>(keys::NEXT_PAGE)?.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
    }

    #[test]
    fn png_signature_is_checked() {
        assert!(is_png(&PNG_SIGNATURE));
        assert!(!is_png(b"\x89PNG"));
    }
}
