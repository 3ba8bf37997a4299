//! The store: opening, locking, schema check, and every read and transaction.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::engine::{self, Batch, Engine};
use crate::error::{Error, Result};
use crate::keys;
use crate::types::{
    Checksum, Compaction, Listing, NewPage, NewTurn, Page, PageId, PageRecord, Scope, Stamp, Stats,
    Tier, TierChange, TokenCache, TokenMeta, Transition, TurnRange, TurnRecord,
};

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

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
    fn scan_prefix(&self, _: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
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

fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map(|v| keys::frame(&v))
        .map_err(|source| Error::Encode {
            what: what.to_string(),
            source,
        })
}

fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T> {
    let payload = keys::unframe(key, value)?;
    serde_json::from_slice(payload).map_err(|e| Error::Corrupt {
        key: keys::describe(key),
        page: keys::page_of(key),
        reason: format!("undecodable record: {e}"),
    })
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

fn validate_scope(scope: &Scope) -> Result<()> {
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

fn validate_tier(tier: &Tier) -> Result<()> {
    if tier.mode.trim().is_empty() {
        return Err(Error::InvalidInput(format!(
            "tier {} has an empty mode name",
            tier.index
        )));
    }
    Ok(())
}

fn validate_blobs(image: &[u8], tokens: Option<&TokenCache>) -> Result<()> {
    if !is_png(image) {
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

fn token_meta(tokens: Option<&TokenCache>) -> Option<TokenMeta> {
    tokens.map(|t| TokenMeta {
        shape: t.shape.clone(),
        dtype: t.dtype.clone(),
        len: t.bytes.len() as u64,
    })
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
        let store = Store {
            engine: wrap(engine),
            write: Mutex::new(()),
            opts,
            _lock: lock,
        };
        store.check_schema()?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<()> {
        match self.engine.get(keys::SCHEMA)? {
            Some(v) => {
                let found: u32 = decode(keys::SCHEMA, &v)?;
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
                if !self.engine.scan_prefix(b"")?.is_empty() {
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
    /// changes and deletions left behind (sled never shrinks its files by itself).
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
            .and_then(|()| rename(&fresh_dir, &live))
            .and_then(|()| remove_dir_if_present(&retired));
        finish_interrupted_compaction(&path)?;
        self.engine = Box::new(engine::open_default(&live)?);
        swapped?;
        Ok(Compaction {
            records,
            bytes_before,
            bytes_after: self.engine.size_on_disk()?,
        })
    }

    /// Copies every record into a new engine in `dir`; returns how many, and its size on disk.
    fn copy_into(&self, dir: &Path) -> Result<(u64, u64)> {
        let fresh = engine::open_default(dir)?;
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
        Ok((records, fresh.size_on_disk()?))
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

    fn read<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        self.engine.get(key)?.map(|v| decode(key, &v)).transpose()
    }

    fn counter(&self, scope: &Scope) -> Result<u64> {
        Ok(self
            .read::<ScopeCounter>(&keys::scope_counter(scope))?
            .map_or(0, |c| c.next_turn))
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

    // ---------------------------------------------------------------- pages

    /// Moves the hot turns `range` of `scope` into a new page, in one transaction: the page, its
    /// image, tokens and first history entry are written and the turns removed together.
    pub fn page_out(&self, scope: &Scope, range: TurnRange, page: NewPage) -> Result<PageId> {
        let ids = self.page_out_many(scope, range, vec![page])?;
        Ok(ids[0])
    }

    /// Moves the hot turns `range` of `scope` into several new pages (a long turn split over
    /// pages), in one transaction. Every page records the whole range.
    pub fn page_out_many(
        &self,
        scope: &Scope,
        range: TurnRange,
        pages: Vec<NewPage>,
    ) -> Result<Vec<PageId>> {
        validate_scope(scope)?;
        for page in &pages {
            validate_tier(&page.tier)?;
            validate_blobs(&page.image, page.tokens.as_ref())?;
        }
        if range.is_empty() || pages.is_empty() {
            return Err(Error::InvalidInput(format!(
                "page-out of turn range {}..{} into {} pages: both must be non-empty",
                range.start,
                range.end,
                pages.len()
            )));
        }
        let _g = self.lock();
        let mut b = Batch::new();
        for index in range.start..range.end {
            let key = keys::turn(scope, index);
            if self.engine.get(&key)?.is_none() {
                return Err(Error::TurnMissing {
                    scope: scope.to_string(),
                    index,
                });
            }
            b.delete(key);
        }
        let first = self.read_next_page()?;
        let mut ids = Vec::with_capacity(pages.len());
        for (offset, page) in pages.into_iter().enumerate() {
            let id = PageId(first + offset as u64);
            let text = self.opts.retain_text.then_some(page.text);
            let record = PageRecord {
                id,
                scope: scope.clone(),
                turns: range,
                profile: page.profile,
                tier: page.tier.clone(),
                created: page.at,
                last_access: page.at,
                access_count: 0,
                pinned: false,
                checksum: Checksum {
                    image: crc(&page.image),
                    tokens: page.tokens.as_ref().map(|t| crc(&t.bytes)),
                    text: text.as_deref().map(|t| crc(t.as_bytes())),
                },
                text,
                image_len: page.image.len() as u64,
                tokens: token_meta(page.tokens.as_ref()),
                changes: 1,
            };
            let entry = TierChange {
                page: id,
                seq: 0,
                from: None,
                to: Some(page.tier),
                reason: page.reason,
                at: page.at,
            };
            b.put(keys::page(id), encode("page record", &record)?);
            b.put(keys::image(id), keys::frame(&page.image));
            if let Some(t) = &page.tokens {
                b.put(keys::tokens(id), keys::frame(&t.bytes));
            }
            b.put(keys::scope_page(scope, id), keys::frame(&[]));
            b.put(keys::history(id, 0), encode("history entry", &entry)?);
            ids.push(id);
        }
        b.put(
            keys::NEXT_PAGE,
            encode("page counter", &(first + ids.len() as u64))?,
        );
        self.commit(b)?;
        Ok(ids)
    }

    fn decode_page(&self, key: &[u8], value: &[u8]) -> Result<PageRecord> {
        let rec: PageRecord = decode(key, value)?;
        let corrupt = |reason: String| Error::Corrupt {
            key: keys::describe(key),
            page: keys::page_of(key),
            reason,
        };
        if keys::page_of(key) != Some(rec.id) {
            return Err(corrupt(format!("record names page {}", rec.id)));
        }
        let text_crc = rec.text.as_deref().map(|t| crc(t.as_bytes()));
        if text_crc != rec.checksum.text {
            return Err(corrupt("page text does not match its checksum".into()));
        }
        Ok(rec)
    }

    /// A page's record (metadata and retained text).
    pub fn page(&self, id: PageId) -> Result<PageRecord> {
        let key = keys::page(id);
        let v = self.engine.get(&key)?.ok_or(Error::PageNotFound(id))?;
        self.decode_page(&key, &v)
    }

    fn blob(&self, key: &[u8], id: PageId, want_crc: u32, want_len: u64) -> Result<Vec<u8>> {
        let v = self.engine.get(key)?.ok_or_else(|| Error::Corrupt {
            key: keys::describe(key),
            page: Some(id),
            reason: "missing, though the page record refers to it".into(),
        })?;
        let bytes = keys::unframe(key, &v)?;
        if bytes.len() as u64 != want_len || crc(bytes) != want_crc {
            return Err(Error::Corrupt {
                key: keys::describe(key),
                page: Some(id),
                reason: "content does not match the page's checksum".into(),
            });
        }
        Ok(bytes.to_vec())
    }

    fn image_of(&self, rec: &PageRecord) -> Result<Vec<u8>> {
        self.blob(
            &keys::image(rec.id),
            rec.id,
            rec.checksum.image,
            rec.image_len,
        )
    }

    fn tokens_of(&self, rec: &PageRecord) -> Result<Option<TokenCache>> {
        let (Some(meta), Some(want)) = (&rec.tokens, rec.checksum.tokens) else {
            return Ok(None);
        };
        let bytes = self.blob(&keys::tokens(rec.id), rec.id, want, meta.len)?;
        Ok(Some(TokenCache {
            shape: meta.shape.clone(),
            dtype: meta.dtype.clone(),
            bytes,
        }))
    }

    /// A page's PNG at its current tier, checked against its checksum.
    pub fn image(&self, id: PageId) -> Result<Vec<u8>> {
        self.image_of(&self.page(id)?)
    }

    /// A page's vision-token cache at its current tier, if any, checked against its checksum.
    pub fn tokens(&self, id: PageId) -> Result<Option<TokenCache>> {
        self.tokens_of(&self.page(id)?)
    }

    /// A page with its image and tokens, all checked.
    pub fn load(&self, id: PageId) -> Result<Page> {
        let record = self.page(id)?;
        let image = self.image_of(&record)?;
        let tokens = self.tokens_of(&record)?;
        Ok(Page {
            record,
            image,
            tokens,
        })
    }

    /// Page records of one scope (or all with `None`), by id. Unreadable records are reported in
    /// [`Listing::corrupt`] while the others are listed.
    pub fn pages(&self, scope: Option<&Scope>) -> Result<Listing> {
        let mut out = Listing::default();
        let push = |out: &mut Listing, key: &[u8], value: Option<&[u8]>| match value {
            None => out.corrupt.push(Error::Corrupt {
                key: keys::describe(key),
                page: keys::page_of(key),
                reason: "listed in the scope index but missing".into(),
            }),
            Some(v) => match self.decode_page(key, v) {
                Ok(r) => out.pages.push(r),
                Err(e) => out.corrupt.push(e),
            },
        };
        match scope {
            None => {
                for (k, v) in self.engine.scan_prefix(keys::ALL_PAGES)? {
                    push(&mut out, &k, Some(&v));
                }
            }
            Some(s) => {
                for (k, _) in self.engine.scan_prefix(&keys::scope_pages_prefix(s))? {
                    let Some(id) = keys::trailing_u64(&k).map(PageId) else {
                        continue;
                    };
                    let key = keys::page(id);
                    let v = self.engine.get(&key)?;
                    push(&mut out, &key, v.as_deref());
                }
            }
        }
        Ok(out)
    }

    /// Changes a page's tier: the new image and tokens, the record and a history entry are
    /// written in one transaction, so a crash leaves the page at its old tier or its new one.
    pub fn transition(&self, id: PageId, t: Transition) -> Result<PageRecord> {
        validate_tier(&t.tier)?;
        validate_blobs(&t.image, t.tokens.as_ref())?;
        let _g = self.lock();
        let old = self.page(id)?;
        let mut rec = old.clone();
        rec.tier = t.tier.clone();
        rec.image_len = t.image.len() as u64;
        rec.tokens = token_meta(t.tokens.as_ref());
        rec.checksum.image = crc(&t.image);
        rec.checksum.tokens = t.tokens.as_ref().map(|x| crc(&x.bytes));
        rec.changes = old.changes + 1;
        let entry = TierChange {
            page: id,
            seq: old.changes,
            from: Some(old.tier),
            to: Some(t.tier),
            reason: t.reason,
            at: t.at,
        };
        let mut b = Batch::new();
        b.put(keys::page(id), encode("page record", &rec)?);
        b.put(keys::image(id), keys::frame(&t.image));
        match &t.tokens {
            Some(x) => b.put(keys::tokens(id), keys::frame(&x.bytes)),
            None => b.delete(keys::tokens(id)),
        }
        b.put(
            keys::history(id, entry.seq),
            encode("history entry", &entry)?,
        );
        self.commit(b)?;
        Ok(rec)
    }

    /// Replaces (or clears) a page's token cache at its current tier, e.g. after encoding later.
    pub fn set_tokens(&self, id: PageId, tokens: Option<TokenCache>) -> Result<PageRecord> {
        if let Some(t) = &tokens {
            t.validate()?;
        }
        self.update(id, |rec, b| {
            rec.tokens = token_meta(tokens.as_ref());
            rec.checksum.tokens = tokens.as_ref().map(|x| crc(&x.bytes));
            match &tokens {
                Some(x) => b.put(keys::tokens(id), keys::frame(&x.bytes)),
                None => b.delete(keys::tokens(id)),
            }
            Ok(())
        })
    }

    fn update(
        &self,
        id: PageId,
        f: impl FnOnce(&mut PageRecord, &mut Batch) -> Result<()>,
    ) -> Result<PageRecord> {
        let _g = self.lock();
        let mut rec = self.page(id)?;
        let mut b = Batch::new();
        f(&mut rec, &mut b)?;
        b.put(keys::page(id), encode("page record", &rec)?);
        self.commit(b)?;
        Ok(rec)
    }

    /// Drops a page's retained text (the image stays); logged in its history with `reason`.
    /// `profile`, when given, replaces the page's opaque profile in the same transaction (a caller
    /// that keeps a derived copy of the text there drops it too). Dropping absent text does nothing.
    pub fn drop_text(
        &self,
        id: PageId,
        profile: Option<String>,
        reason: &str,
        at: Stamp,
    ) -> Result<PageRecord> {
        self.update(id, |rec, b| {
            if rec.text.is_none() {
                return Ok(());
            }
            if let Some(profile) = profile {
                rec.profile = profile;
            }
            rec.text = None;
            rec.checksum.text = None;
            let entry = TierChange {
                page: id,
                seq: rec.changes,
                from: Some(rec.tier.clone()),
                to: Some(rec.tier.clone()),
                reason: reason.to_string(),
                at,
            };
            rec.changes += 1;
            b.put(
                keys::history(id, entry.seq),
                encode("history entry", &entry)?,
            );
            Ok(())
        })
    }

    /// Pins or unpins a page.
    pub fn set_pinned(&self, id: PageId, pinned: bool) -> Result<PageRecord> {
        self.update(id, |rec, _| {
            rec.pinned = pinned;
            Ok(())
        })
    }

    /// Records that the agent read a page at `at`.
    pub fn record_access(&self, id: PageId, at: Stamp) -> Result<PageRecord> {
        self.update(id, |rec, _| {
            rec.access_count += 1;
            rec.last_access = at;
            Ok(())
        })
    }

    /// Deletes (evicts) a page with its image and tokens; its history is kept, ending with an
    /// entry to no tier.
    pub fn delete(&self, id: PageId, reason: &str, at: Stamp) -> Result<()> {
        let _g = self.lock();
        let rec = self.page(id)?;
        let entry = TierChange {
            page: id,
            seq: rec.changes,
            from: Some(rec.tier.clone()),
            to: None,
            reason: reason.to_string(),
            at,
        };
        let mut b = Batch::new();
        b.delete(keys::page(id));
        b.delete(keys::image(id));
        b.delete(keys::tokens(id));
        b.delete(keys::scope_page(&rec.scope, id));
        b.put(
            keys::history(id, entry.seq),
            encode("history entry", &entry)?,
        );
        self.commit(b)
    }

    /// A page's history (creation, tier changes, text drops, deletion), oldest first. Works for
    /// deleted pages too.
    pub fn history(&self, id: PageId) -> Result<Vec<TierChange>> {
        let entries: Vec<TierChange> = self
            .engine
            .scan_prefix(&keys::history_prefix(id))?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect::<Result<_>>()?;
        if entries.is_empty() && self.engine.get(&keys::page(id))?.is_none() {
            return Err(Error::PageNotFound(id));
        }
        Ok(entries)
    }

    /// The whole audit log, ordered by page then sequence.
    pub fn audit_log(&self) -> Result<Vec<TierChange>> {
        self.engine
            .scan_prefix(keys::ALL_HISTORY)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// Checks every page in full (record, image, tokens, text, and that its history ends at its
    /// tier); returns one error per problem found.
    pub fn verify(&self) -> Result<Vec<Error>> {
        let listing = self.pages(None)?;
        let mut problems = listing.corrupt;
        for rec in &listing.pages {
            if let Err(e) = self.image_of(rec) {
                problems.push(e);
            }
            if let Err(e) = self.tokens_of(rec) {
                problems.push(e);
            }
            match self.history(rec.id) {
                Err(e) => problems.push(e),
                Ok(h) => {
                    let consistent = h.len() as u64 == rec.changes
                        && h.iter().enumerate().all(|(i, e)| e.seq == i as u64)
                        && h.last().and_then(|e| e.to.as_ref()) == Some(&rec.tier)
                        && h.windows(2).all(|w| w[0].to == w[1].from);
                    if !consistent {
                        problems.push(Error::Corrupt {
                            key: keys::describe(&keys::history_prefix(rec.id)),
                            page: Some(rec.id),
                            reason: format!(
                                "history of {} entries does not end at tier {}",
                                h.len(),
                                rec.tier
                            ),
                        });
                    }
                }
            }
        }
        Ok(problems)
    }

    /// Counts and sizes per tier, hot turns, history, and bytes on disk.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        let listing = self.pages(None)?;
        s.corrupt = listing.corrupt.len() as u64;
        let mut tiers: BTreeMap<String, crate::types::TierStats> = BTreeMap::new();
        for p in &listing.pages {
            let t = tiers.entry(p.tier.to_string()).or_default();
            t.pages += 1;
            t.pinned += u64::from(p.pinned);
            t.image_bytes += p.image_len;
            t.token_bytes += p.tokens.as_ref().map_or(0, |m| m.len);
            t.text_bytes += p.text.as_ref().map_or(0, |x| x.len() as u64);
        }
        s.pages = listing.pages.len() as u64;
        s.tiers = tiers;
        for (k, v) in self.engine.scan_prefix(b"")? {
            s.live_bytes += (k.len() + v.len()) as u64;
            match k.first() {
                Some(b'T') => {
                    s.hot_turns += 1;
                    match decode::<TurnRecord>(&k, &v) {
                        Ok(t) => s.hot_text_bytes += t.text.len() as u64,
                        Err(_) => s.corrupt += 1,
                    }
                }
                Some(b'C') => s.scopes += 1,
                Some(b'A') => s.history_entries += 1,
                _ => {}
            }
        }
        s.bytes_on_disk = self.engine.size_on_disk()?;
        Ok(s)
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
