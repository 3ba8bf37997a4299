//! Opening a store of schema 1, whose images and token caches live inside the engine.
//!
//! First the engine folder is copied to [`SCHEMA1_BACKUP_DIR`](crate::SCHEMA1_BACKUP_DIR) (the
//! copy is synced and published by a rename, so it is whole or absent). Then the audit log's
//! entries are gathered into one list per page (one transaction), and, one page per transaction,
//! each page's PNG and token bytes move into blob files, its record names them, and it enters the
//! due index as due at once. The schema version is written last, so a crash part-way resumes
//! where it stopped: entries and pages already moved are skipped.

use std::fs;
use std::path::Path;

use crate::blobs::sync_dir;
use crate::engine::Batch;
use crate::error::{Error, Result};
use crate::keys;
use crate::pages::Txn;
use crate::store::{crc, encode, Store, ENGINE_DIR, SCHEMA1_BACKUP_DIR, SCHEMA_VERSION};
use crate::types::{Due, PageId, PageRecord, TierChange, TokenCache};

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().map_err(|e| Error::io(&src, e))?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            fs::copy(&src, &dst).map_err(|e| Error::io(&src, e))?;
            fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&dst, e))?;
        }
    }
    sync_dir(to)
}

impl Store {
    pub(crate) fn migrate_from_schema1(&self) -> Result<()> {
        self.flush()?;
        let root = self.path().to_path_buf();
        let backup = root.join(SCHEMA1_BACKUP_DIR);
        if !backup.exists() {
            let partial = root.join(format!("{SCHEMA1_BACKUP_DIR}.partial"));
            if partial.exists() {
                fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
            }
            copy_dir(&root.join(ENGINE_DIR), &partial)?;
            fs::rename(&partial, &backup).map_err(|e| Error::io(&backup, e))?;
            sync_dir(&root)?;
        }
        let _g = self.lock();
        self.gather_history()?;
        let mut ids = Vec::new();
        self.engine().visit_prefix(keys::ALL_PAGES, &mut |k, _| {
            ids.extend(keys::trailing_u64(k).map(PageId));
            Ok(true)
        })?;
        for id in ids {
            self.migrate_page(id)?;
        }
        let mut b = Batch::new();
        b.put(keys::SCHEMA, encode("schema version", &SCHEMA_VERSION)?);
        self.commit(b)?;
        self.flush()
    }

    /// Gathers the one-entry-per-key history of schema 1 into one list per page.
    fn gather_history(&self) -> Result<()> {
        let mut logs: std::collections::BTreeMap<PageId, Vec<TierChange>> = Default::default();
        let mut b = Batch::new();
        self.engine().visit_prefix(keys::ALL_HISTORY, &mut |k, v| {
            if k.len() == 17 {
                let entry: TierChange = crate::store::decode(k, v)?;
                logs.entry(entry.page).or_default().push(entry);
                b.delete(k.to_vec());
            }
            Ok(true)
        })?;
        for (page, log) in &logs {
            b.put(keys::history(*page), encode("history", log)?);
        }
        if !b.is_empty() {
            self.commit(b)?;
        }
        Ok(())
    }

    fn migrate_page(&self, id: PageId) -> Result<()> {
        let image_key = keys::legacy_image(id);
        let tokens_key = keys::legacy_tokens(id);
        let image = self.engine().get(&image_key)?;
        let tokens = self.engine().get(&tokens_key)?;
        if image.is_none() && tokens.is_none() {
            return Ok(()); // moved already
        }
        let key = keys::page(id);
        let value = self.engine().get(&key)?.ok_or(Error::PageNotFound(id))?;
        let mut rec: PageRecord = self.decode_page(&key, &value)?;
        let mut txn = Txn::new(self);
        if let Some(v) = image {
            let bytes = keys::unframe(&image_key, &v)?;
            if !bytes.is_empty() {
                rec.image_blob = Some(txn.add_blob(&bytes)?);
                rec.checksum.image = Some(crc(&bytes));
            } else {
                rec.checksum.image = None;
            }
            txn.batch.delete(image_key);
        }
        if let (Some(v), Some(meta)) = (tokens, rec.tokens.as_mut()) {
            let bytes = keys::unframe(&tokens_key, &v)?;
            TokenCache::new(meta.shape.clone(), meta.dtype.clone(), bytes.to_vec())?;
            meta.blob = Some(txn.add_blob(&bytes)?);
        }
        txn.batch.delete(tokens_key);
        rec.due = Due::NOW;
        txn.put_page(&rec, None)?;
        txn.commit()
    }
}
