//! Pages: page-out, reads, tier changes, text drops, pins, accesses, deletion, and the due index.
//!
//! Every write here is one engine batch. Blobs (images, token caches) are written and synced as
//! files first, then the batch that names them (with their reference counts) is committed, then
//! blobs no record names any more are deleted: a crash at any point leaves either the old page or
//! the new one, plus at most some unnamed files that the next open sweeps.

use std::collections::BTreeMap;

use crate::blobs::BlobId;
use crate::engine::Batch;
use crate::error::{Error, Result};
use crate::keys;
use crate::store::{crc, decode, encode, token_meta, validate_blobs, validate_scope, Store};
use crate::types::{
    Checksum, Due, Listing, NewPage, Page, PageId, PageRecord, Scope, Stamp, TierChange,
    TokenCache, Transition, TurnRange,
};

/// One transaction: a batch plus the reference-count changes of the blobs it names.
pub(crate) struct Txn<'a> {
    store: &'a Store,
    pub(crate) batch: Batch,
    refs: BTreeMap<BlobId, i64>,
}

impl<'a> Txn<'a> {
    pub(crate) fn new(store: &'a Store) -> Self {
        Txn {
            store,
            batch: Batch::new(),
            refs: BTreeMap::new(),
        }
    }

    /// Writes a blob (durably, before anything names it) and counts a reference to it.
    pub(crate) fn add_blob(&mut self, bytes: &[u8]) -> Result<BlobId> {
        let id = self.store.blobs.put(bytes)?;
        *self.refs.entry(id).or_default() += 1;
        Ok(id)
    }

    /// Drops a reference to a blob.
    pub(crate) fn release(&mut self, id: Option<BlobId>) {
        if let Some(id) = id {
            *self.refs.entry(id).or_default() -= 1;
        }
    }

    /// Stores the page's image (or none): sets its blob, length and checksum.
    fn set_image(&mut self, rec: &mut PageRecord, image: Option<&[u8]>) -> Result<()> {
        self.release(rec.image_blob.take());
        rec.image_len = image.map_or(0, |i| i.len() as u64);
        rec.checksum.image = image.map(crc);
        if let Some(image) = image {
            rec.image_blob = Some(self.add_blob(image)?);
        }
        Ok(())
    }

    /// Stores the page's token cache (or none).
    fn set_tokens(&mut self, rec: &mut PageRecord, tokens: Option<&TokenCache>) -> Result<()> {
        self.release(rec.tokens.take().and_then(|t| t.blob));
        rec.checksum.tokens = tokens.map(|t| crc(&t.bytes));
        if let Some(t) = tokens {
            let blob = self.add_blob(&t.bytes)?;
            rec.tokens = Some(token_meta(t, blob));
        }
        Ok(())
    }

    /// Puts the record and moves its due-index entries from `old` to `rec.due`.
    pub(crate) fn put_page(&mut self, rec: &PageRecord, old: Option<Due>) -> Result<()> {
        unindex_due(&mut self.batch, &rec.scope, rec.id, old);
        index_due(&mut self.batch, &rec.scope, rec.id, rec.due);
        self.batch
            .put(keys::page(rec.id), encode("page record", rec)?);
        Ok(())
    }

    /// Commits the batch with the new reference counts, then deletes the blobs nobody names.
    pub(crate) fn commit(mut self) -> Result<()> {
        let mut gone = Vec::new();
        for (id, delta) in std::mem::take(&mut self.refs) {
            if delta == 0 {
                continue;
            }
            let key = keys::blob_refs(&id);
            let count = self.store.read::<i64>(&key)?.unwrap_or(0) + delta;
            if count <= 0 {
                self.batch.delete(key);
                gone.push(id);
            } else {
                self.batch.put(key, encode("blob reference count", &count)?);
            }
        }
        self.store.commit(std::mem::take(&mut self.batch))?;
        for id in gone {
            // A failure here leaves an unnamed file, which the next open sweeps.
            let _ = self.store.blobs.remove(&id);
        }
        Ok(())
    }
}

fn index_due(b: &mut Batch, scope: &Scope, id: PageId, due: Due) {
    if let Some(turn) = due.turn {
        b.put(keys::due_turn(scope, turn, id), keys::frame(&[]));
    }
    if let Some(time) = due.time {
        b.put(keys::due_time(time, id), keys::frame(&[]));
    }
}

fn unindex_due(b: &mut Batch, scope: &Scope, id: PageId, due: Option<Due>) {
    let Some(due) = due else { return };
    if let Some(turn) = due.turn {
        b.delete(keys::due_turn(scope, turn, id));
    }
    if let Some(time) = due.time {
        b.delete(keys::due_time(time, id));
    }
}

impl Txn<'_> {
    /// Appends an entry to its page's history (one record per page, so that it packs well).
    fn log(&mut self, entry: TierChange) -> Result<()> {
        let mut list = self.store.read_history(entry.page)?.unwrap_or_default();
        let key = keys::history(entry.page);
        list.push(entry);
        self.batch.put(key, encode("history", &list)?);
        Ok(())
    }
}

impl Store {
    /// Moves the hot turns `range` of `scope` into a new page, in one transaction: the page, its
    /// image, tokens and first history entry are written and the turns removed together.
    pub fn page_out(&self, scope: &Scope, range: TurnRange, page: NewPage) -> Result<PageId> {
        let ids = self.page_out_many(scope, range, vec![page])?;
        Ok(ids[0])
    }

    /// Moves the hot turns `range` of `scope` into several new pages (a long turn split over
    /// pages), in one transaction. Every page records the whole range.
    ///
    /// A page with no image must keep its text (the caller redraws it from the text): with
    /// `retain_text(false)` an image is required.
    pub fn page_out_many(
        &self,
        scope: &Scope,
        range: TurnRange,
        pages: Vec<NewPage>,
    ) -> Result<Vec<PageId>> {
        validate_scope(scope)?;
        for page in &pages {
            validate_blobs(page.image.as_deref(), page.tokens.as_ref())?;
            page.layout.check(Some(&page.text))?;
            if page.image.is_none() && !self.opts_retain_text() {
                return Err(Error::InvalidInput(
                    "a page without an image needs its text, but this store does not retain text"
                        .into(),
                ));
            }
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
        let mut txn = Txn::new(self);
        for index in range.start..range.end {
            let key = keys::turn(scope, index);
            if self.engine().get(&key)?.is_none() {
                return Err(Error::TurnMissing {
                    scope: scope.to_string(),
                    index,
                });
            }
            txn.batch.delete(key);
        }
        let first = self.read_next_page()?;
        let mut ids = Vec::with_capacity(pages.len());
        for (offset, page) in pages.into_iter().enumerate() {
            let id = PageId(first + offset as u64);
            let text = self.opts_retain_text().then_some(page.text);
            let mut layout = page.layout;
            if text.is_none() {
                layout.pieces.clear();
            }
            let mut record = PageRecord {
                id,
                scope: scope.clone(),
                turns: range,
                layout,
                tier: page.tier,
                created: page.at,
                last_access: page.at,
                access_count: 0,
                pinned: false,
                checksum: Checksum {
                    image: None,
                    tokens: None,
                    text: text.as_deref().map(|t| crc(t.as_bytes())),
                },
                text,
                image_len: 0,
                image_blob: None,
                tokens: None,
                changes: 1,
                tier_since: Some(page.at),
                due: page.due,
            };
            txn.set_image(&mut record, page.image.as_deref())?;
            txn.set_tokens(&mut record, page.tokens.as_ref())?;
            let entry = TierChange {
                page: id,
                seq: 0,
                from: None,
                to: Some(page.tier),
                reason: page.reason,
                at: page.at,
            };
            txn.put_page(&record, None)?;
            txn.batch.put(keys::scope_page(scope, id), keys::frame(&[]));
            txn.log(entry)?;
            ids.push(id);
        }
        txn.batch.put(
            keys::NEXT_PAGE,
            encode("page counter", &(first + ids.len() as u64))?,
        );
        txn.commit()?;
        Ok(ids)
    }

    fn opts_retain_text(&self) -> bool {
        self.options().retain_text()
    }

    pub(crate) fn decode_page(&self, key: &[u8], value: &[u8]) -> Result<PageRecord> {
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
        let v = self.engine().get(&key)?.ok_or(Error::PageNotFound(id))?;
        self.decode_page(&key, &v)
    }

    fn blob_of(
        &self,
        rec: &PageRecord,
        what: &str,
        blob: BlobId,
        crc_want: Option<u32>,
        len: u64,
    ) -> Result<Vec<u8>> {
        let corrupt = |reason: String| Error::Corrupt {
            key: format!("{what}/{}", rec.id),
            page: Some(rec.id),
            reason,
        };
        let bytes = self
            .blobs
            .get(&blob, len)
            .map_err(|e| corrupt(format!("blob {blob}: {e}")))?;
        if Some(crc(&bytes)) != crc_want {
            return Err(corrupt(format!(
                "blob {blob} does not match the page's checksum"
            )));
        }
        Ok(bytes)
    }

    pub(crate) fn image_of(&self, rec: &PageRecord) -> Result<Option<Vec<u8>>> {
        rec.image_blob
            .map(|blob| self.blob_of(rec, "image", blob, rec.checksum.image, rec.image_len))
            .transpose()
    }

    pub(crate) fn tokens_of(&self, rec: &PageRecord) -> Result<Option<TokenCache>> {
        let Some(meta) = &rec.tokens else {
            return Ok(None);
        };
        let blob = meta.blob.ok_or_else(|| Error::Corrupt {
            key: format!("tokens/{}", rec.id),
            page: Some(rec.id),
            reason: "token metadata names no blob".into(),
        })?;
        let bytes = self.blob_of(rec, "tokens", blob, rec.checksum.tokens, meta.len)?;
        Ok(Some(TokenCache {
            shape: meta.shape.clone(),
            dtype: meta.dtype.clone(),
            bytes,
        }))
    }

    /// Reads something of a page's current record. Reads take no lock, so a write on another
    /// thread may replace (and delete) a blob between reading the record and reading the blob:
    /// while a read fails and the record has changed meanwhile, it is read again (a few times).
    fn read_page<T>(&self, id: PageId, f: impl Fn(&PageRecord) -> Result<T>) -> Result<T> {
        let mut record = self.page(id)?;
        for _ in 0..16 {
            match f(&record) {
                Err(e) => match self.page(id) {
                    Ok(now) if now != record => record = now,
                    _ => return Err(e),
                },
                read => return read,
            }
        }
        f(&record)
    }

    /// A page's stored PNG at its current tier, checked against its checksum; `None` when no image
    /// is stored (the caller redraws the page from its text, or it was evicted).
    pub fn image(&self, id: PageId) -> Result<Option<Vec<u8>>> {
        self.read_page(id, |r| self.image_of(r))
    }

    /// A page's vision-token cache at its current tier, if any, checked against its checksum.
    pub fn tokens(&self, id: PageId) -> Result<Option<TokenCache>> {
        self.read_page(id, |r| self.tokens_of(r))
    }

    /// A page with its image and tokens, all checked.
    pub fn load(&self, id: PageId) -> Result<Page> {
        self.read_page(id, |record| {
            Ok(Page {
                record: record.clone(),
                image: self.image_of(record)?,
                tokens: self.tokens_of(record)?,
            })
        })
    }

    /// Page records of one scope (or all with `None`), by id. Unreadable records are reported in
    /// [`Listing::corrupt`] while the others are listed.
    pub fn pages(&self, scope: Option<&Scope>) -> Result<Listing> {
        let mut out = Listing::default();
        self.visit_pages(scope, &mut |r| {
            match r {
                Ok(p) => out.pages.push(p),
                Err(e) => out.corrupt.push(e),
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// Calls `f` with each page record of one scope (or all), by id, or with the error that
    /// makes it unreadable, until `f` returns `false`. Records stream: none is held after `f`.
    pub fn visit_pages(
        &self,
        scope: Option<&Scope>,
        f: &mut dyn FnMut(Result<PageRecord>) -> Result<bool>,
    ) -> Result<()> {
        match scope {
            None => self
                .engine()
                .visit_prefix(keys::ALL_PAGES, &mut |k, v| f(self.decode_page(k, v))),
            Some(s) => self
                .engine()
                .visit_prefix(&keys::scope_pages_prefix(s), &mut |k, _| {
                    let Some(id) = keys::trailing_u64(k).map(PageId) else {
                        return Ok(true);
                    };
                    let key = keys::page(id);
                    let rec = match self.engine().get(&key)? {
                        None => Err(Error::Corrupt {
                            key: keys::describe(&key),
                            page: Some(id),
                            reason: "listed in the scope index but missing".into(),
                        }),
                        Some(v) => self.decode_page(&key, &v),
                    };
                    f(rec)
                }),
        }
    }

    /// Pages of `scope` due at or before turn `turn` (by [`PageRecord::due`]), by due turn.
    pub fn due_pages(&self, scope: &Scope, turn: u64) -> Result<Vec<PageId>> {
        let from = keys::due_turn_prefix(scope);
        let to = match turn.checked_add(1) {
            Some(next) => keys::due_turn(scope, next, PageId(0)),
            None => crate::engine::prefix_end(&from).unwrap_or_default(),
        };
        self.ids_in(&from, Some(&to))
    }

    /// Pages of every scope due at or before time `now`, by due time.
    pub fn due_by_time(&self, now: u64) -> Result<Vec<PageId>> {
        let to = match now.checked_add(1) {
            Some(next) => keys::due_time(next, PageId(0)),
            None => crate::engine::prefix_end(keys::ALL_DUE_TIMES).unwrap_or_default(),
        };
        self.ids_in(keys::ALL_DUE_TIMES, Some(&to))
    }

    fn ids_in(&self, from: &[u8], to: Option<&[u8]>) -> Result<Vec<PageId>> {
        let mut ids = Vec::new();
        self.engine().visit_range(from, to, &mut |k, _| {
            ids.extend(keys::trailing_u64(k).map(PageId));
            Ok(true)
        })?;
        Ok(ids)
    }

    /// Sets when a page is next due (e.g. after the caller's policy decided it stays).
    pub fn set_due(&self, id: PageId, due: Due) -> Result<PageRecord> {
        self.update(id, |rec, _| {
            rec.due = due;
            Ok(())
        })
    }

    /// Makes every page due at once, e.g. when the policy that set the due stamps changed.
    /// Returns how many pages it marked. Reads every record once.
    pub fn mark_all_due(&self) -> Result<u64> {
        let listing = self.pages(None)?;
        let _g = self.lock();
        let mut marked = 0;
        for chunk in listing.pages.chunks(512) {
            let mut txn = Txn::new(self);
            for rec in chunk {
                if rec.due == Due::NOW {
                    continue;
                }
                let old = rec.due;
                let mut rec = rec.clone();
                rec.due = Due::NOW;
                txn.put_page(&rec, Some(old))?;
                marked += 1;
            }
            txn.commit()?;
        }
        Ok(marked)
    }

    /// Changes a page's tier: the new image and tokens, the record and a history entry are
    /// written in one transaction, so a crash leaves the page at its old tier or its new one.
    pub fn transition(&self, id: PageId, t: Transition) -> Result<PageRecord> {
        validate_blobs(t.image.as_deref(), t.tokens.as_ref())?;
        self.update(id, |rec, txn| {
            let entry = TierChange {
                page: id,
                seq: rec.changes,
                from: Some(rec.tier),
                to: Some(t.tier),
                reason: t.reason,
                at: t.at,
            };
            rec.tier = t.tier;
            rec.changes += 1;
            rec.tier_since = Some(t.at);
            rec.due = t.due;
            txn.set_image(rec, t.image.as_deref())?;
            txn.set_tokens(rec, t.tokens.as_ref())?;
            txn.log(entry)
        })
    }

    /// Replaces (or clears) a page's token cache at its current tier, e.g. after encoding later.
    pub fn set_tokens(&self, id: PageId, tokens: Option<TokenCache>) -> Result<PageRecord> {
        if let Some(t) = &tokens {
            t.validate()?;
        }
        self.update(id, |rec, txn| txn.set_tokens(rec, tokens.as_ref()))
    }

    fn update(
        &self,
        id: PageId,
        f: impl FnOnce(&mut PageRecord, &mut Txn<'_>) -> Result<()>,
    ) -> Result<PageRecord> {
        let _g = self.lock();
        let mut rec = self.page(id)?;
        let old_due = rec.due;
        let mut txn = Txn::new(self);
        f(&mut rec, &mut txn)?;
        txn.put_page(&rec, Some(old_due))?;
        txn.commit()?;
        Ok(rec)
    }

    /// Drops a page's retained text, and its layout's pieces with it; logged in its history
    /// with `reason`. `image`, when given, is stored as the page's image in the same transaction:
    /// a page whose image was redrawn from its text needs it stored before the text goes.
    /// Dropping absent text does nothing.
    pub fn drop_text(
        &self,
        id: PageId,
        image: Option<Vec<u8>>,
        reason: &str,
        at: Stamp,
    ) -> Result<PageRecord> {
        validate_blobs(image.as_deref(), None)?;
        self.update(id, |rec, txn| {
            if rec.text.is_none() {
                return Ok(());
            }
            rec.layout.pieces.clear();
            if image.is_some() {
                txn.set_image(rec, image.as_deref())?;
            }
            rec.text = None;
            rec.checksum.text = None;
            let entry = TierChange {
                page: id,
                seq: rec.changes,
                from: Some(rec.tier),
                to: Some(rec.tier),
                reason: reason.to_string(),
                at,
            };
            rec.changes += 1;
            txn.log(entry)
        })
    }

    /// Pins or unpins a page. The page becomes due at once (a pin changes what the policy
    /// decides).
    pub fn set_pinned(&self, id: PageId, pinned: bool) -> Result<PageRecord> {
        self.update(id, |rec, _| {
            rec.pinned = pinned;
            rec.due = Due::NOW;
            Ok(())
        })
    }

    /// Records that the agent read a page at `at`. The page becomes due at once (an access can
    /// let it rise).
    pub fn record_access(&self, id: PageId, at: Stamp) -> Result<PageRecord> {
        self.update(id, |rec, _| {
            rec.access_count += 1;
            rec.last_access = at;
            rec.due = Due::NOW;
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
            from: Some(rec.tier),
            to: None,
            reason: reason.to_string(),
            at,
        };
        let mut txn = Txn::new(self);
        txn.release(rec.image_blob);
        txn.release(rec.tokens.as_ref().and_then(|t| t.blob));
        unindex_due(&mut txn.batch, &rec.scope, id, Some(rec.due));
        txn.batch.delete(keys::page(id));
        txn.batch.delete(keys::scope_page(&rec.scope, id));
        txn.log(entry)?;
        txn.commit()
    }

    /// A page's history (creation, tier changes, text drops, deletion), oldest first. Works for
    /// deleted pages too.
    pub fn history(&self, id: PageId) -> Result<Vec<TierChange>> {
        match self.read_history(id)? {
            Some(entries) => Ok(entries),
            None if self.engine().get(&keys::page(id))?.is_none() => Err(Error::PageNotFound(id)),
            None => Ok(Vec::new()),
        }
    }

    pub(crate) fn read_history(&self, id: PageId) -> Result<Option<Vec<TierChange>>> {
        self.read(&keys::history(id))
    }

    /// The whole audit log, ordered by page then sequence.
    pub fn audit_log(&self) -> Result<Vec<TierChange>> {
        let mut log = Vec::new();
        self.engine().visit_prefix(keys::ALL_HISTORY, &mut |k, v| {
            log.extend(decode::<Vec<TierChange>>(k, v)?);
            Ok(true)
        })?;
        Ok(log)
    }

    /// A caller's tag (e.g. the fingerprint of the policy that set the pages' due stamps).
    pub fn tag(&self, name: &str) -> Result<Option<String>> {
        self.read(&keys::tag(name))
    }

    /// Sets a caller's tag.
    pub fn set_tag(&self, name: &str, value: &str) -> Result<()> {
        let _g = self.lock();
        let mut b = Batch::new();
        b.put(keys::tag(name), encode("tag", &value)?);
        self.commit(b)
    }
}
