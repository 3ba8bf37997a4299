//! The store: opening, locking, schema check, and every read and transaction.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::blobs::{sync_dir, Blobs};
use crate::engine::{self, Batch, Engine};
use crate::error::{Error, Result};
use crate::keys;
use crate::types::{Compaction, NewTurn, Scope, TokenCache, TokenMeta, TurnRange, TurnRecord};

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

/// The fresh engine folder [`Store::compact`] fills before swapping it in.
const COMPACT_DIR: &str = "db.compact";
/// The previous engine folder while [`Store::compact`] swaps the fresh one in.
const RETIRED_DIR: &str = "db.retired";
/// Bytes of records per batch while compacting.
const COMPACT_BATCH_BYTES: usize = 8 << 20;

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// How to open a store. Build with [`StoreOptions::builder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    path: PathBuf,
    create: bool,
    retain_text: bool,
    sync_writes: bool,
    wait: Option<Duration>,
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

#[derive(Debug, Serialize, Deserialize)]
struct ScopeCounter {
    scope: Scope,
    next_turn: u64,
}

/// The tiered page store. One process at a time; methods take `&self` and are safe to share
/// between threads (writes are serialised).
pub struct Store {
    // Field order matters: the engine is dropped (and flushed) before the lock is released.
    engine: Box<dyn Engine>,
    pub(crate) blobs: Blobs,
    write: Mutex<()>,
    opts: StoreOptions,
    _lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("opts", &self.opts).finish()
    }
}

/// Completes or rolls back a [`Store::compact`] that a crash interrupted: with no engine folder but
/// a retired one, the retired (complete, old) folder comes back; leftover fresh or retired
/// folders are removed.
fn finish_interrupted_compaction(path: &Path) -> Result<()> {
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
    fn put(&self, _: &[u8], _: &[u8]) -> Result<()> {
        self.err()
    }
    fn delete(&self, _: &[u8]) -> Result<()> {
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
    #[doc(hidden)]
    pub fn open_wrapped(
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
    fn sweep_blobs(&self) -> Result<(u64, u64)> {
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

    fn counter(&self, scope: &Scope) -> Result<u64> {
        Ok(self
            .read::<ScopeCounter>(&keys::scope_counter(scope))?
            .map_or(0, |c| c.next_turn))
    }

    pub(crate) fn read<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        self.engine.get(key)?.map(|v| decode(key, &v)).transpose()
    }

    pub(crate) fn read_next_page(&self) -> Result<u64> {
        Ok(self.read::<u64>(keys::NEXT_PAGE)?.unwrap_or(0))
    }

    // ---------------------------------------------------------------- hot turns

    /// Appends turns to a scope's hot tier; returns the indices they were given.
    pub fn append(&self, scope: &Scope, turns: &[NewTurn]) -> Result<TurnRange> {
        validate_scope(scope)?;
        let _g = self.lock();
        let start = self.counter(scope)?;
        let mut b = Batch::new();
        for (i, t) in turns.iter().enumerate() {
            let index = start + i as u64;
            let rec = TurnRecord {
                index,
                speaker: t.speaker.clone(),
                text: t.text.clone(),
                timestamp: t.timestamp,
                session: t.session.clone(),
                time_label: t.time_label.clone(),
            };
            b.put(keys::turn(scope, index), encode("turn", &rec)?);
        }
        let end = start + turns.len() as u64;
        let counter = ScopeCounter {
            scope: scope.clone(),
            next_turn: end,
        };
        b.put(
            keys::scope_counter(scope),
            encode("scope counter", &counter)?,
        );
        self.commit(b)?;
        Ok(TurnRange { start, end })
    }

    /// A scope's hot turns (still text), oldest first.
    pub fn hot_turns(&self, scope: &Scope) -> Result<Vec<TurnRecord>> {
        self.engine
            .scan_prefix(&keys::turns_prefix(scope))?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// The index the scope's next appended turn will get (turns ever appended).
    pub fn next_turn(&self, scope: &Scope) -> Result<u64> {
        self.counter(scope)
    }

    /// Every scope that ever had a turn appended, in key order.
    pub fn scopes(&self) -> Result<Vec<Scope>> {
        self.engine
            .scan_prefix(keys::SCOPE_COUNTERS)?
            .iter()
            .map(|(k, v)| decode::<ScopeCounter>(k, v).map(|c| c.scope))
            .collect()
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
