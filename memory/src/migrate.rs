//! Opening a store of an older schema.
//!
//! Each step first copies the engine folder to a backup beside it
//! ([`SCHEMA1_BACKUP_DIR`](crate::SCHEMA1_BACKUP_DIR),
//! [`SCHEMA2_BACKUP_DIR`](crate::SCHEMA2_BACKUP_DIR); the copy is synced and published by a
//! rename, so it is whole or absent), changes one page per transaction, and writes the schema
//! version last, so a crash part-way resumes where it stopped: pages already changed are skipped.
//!
//! - **Schema 1** kept images and token caches inside the engine and one audit-log record per
//!   entry: the entries are gathered into one list per page, each page's PNG and token bytes move
//!   into blob files, and each page enters the due index as due at once.
//! - **Schema 2** kept a page's layout as an opaque JSON string (`profile`) written by Lethe's
//!   facade, holding the render profile, the turn pieces the page shows (a second copy of its
//!   text), its size and its text-token count. It becomes the typed [`Layout`]: the retained text
//!   becomes the pieces' own text, the pieces become lengths of it, and the text as laid out on
//!   the page is kept only as a checksum. A profile that is not the facade's JSON is kept as the
//!   layout's opaque profile, with no pieces.

use std::fs;
use std::path::Path;

use crate::blobs::sync_dir;
use crate::engine::Batch;
use crate::error::{Error, Result};
use crate::keys;
use crate::pages::Txn;
use crate::store::{
    crc, encode, Store, ENGINE_DIR, SCHEMA1_BACKUP_DIR, SCHEMA2_BACKUP_DIR, SCHEMA_VERSION,
};
use crate::types::{Due, Layout, PageId, PageRecord, Piece, TierChange, TokenCache};
use serde_json::{Map, Value};

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

/// Turns a schema-2 page record (as JSON) into a schema-3 one; `false` when it has its layout
/// already.
fn upgrade_record(rec: &mut Map<String, Value>) -> bool {
    if rec.contains_key("layout") {
        return false;
    }
    let opaque = match rec.remove("profile") {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    let text = rec.get("text").and_then(Value::as_str).map(str::to_owned);
    let facade: Option<Map<String, Value>> = serde_json::from_str(&opaque)
        .ok()
        .filter(|m: &Map<String, Value>| m.contains_key("profile") && m.contains_key("size"));
    let mut layout = Layout {
        profile: opaque.clone(),
        ..Layout::default()
    };
    if let Some(meta) = facade {
        layout.profile = meta["profile"].to_string();
        let size = |i: usize| meta["size"][i].as_f64().unwrap_or(0.0).round().max(0.0) as u32;
        layout.size = [size(0), size(1)];
        layout.text_tokens = meta["text_tokens"].as_u64().unwrap_or(0);
        layout.page_text_crc = text.as_deref().map_or(0, Layout::checksum);
        let source = meta.get("source").and_then(Value::as_array);
        if let (Some(_), Some(source)) = (&text, source) {
            let field = |turn: &Value, key: &str| turn[key].as_str().map(str::to_owned);
            let mut own = String::new();
            for turn in source {
                let piece_text = turn["text"].as_str().unwrap_or_default();
                own.push_str(piece_text);
                layout.pieces.push(Piece {
                    speaker: field(turn, "speaker").unwrap_or_default(),
                    session: field(turn, "session"),
                    time_label: field(turn, "timestamp"),
                    continued: turn["continued"].as_bool().unwrap_or(false),
                    len: piece_text.len() as u64,
                });
            }
            if let Some(checksum) = rec.get_mut("checksum").and_then(Value::as_object_mut) {
                checksum.insert("text".into(), Value::from(crc(own.as_bytes())));
            }
            rec.insert("text".into(), Value::String(own));
        }
    }
    let layout = serde_json::to_value(&layout).unwrap_or(Value::Null);
    rec.insert("layout".into(), layout);
    true
}

impl Store {
    /// Copies the engine folder to `name` beside it, once (a copy already there is kept).
    fn backup_engine(&self, name: &str) -> Result<()> {
        self.flush()?;
        let root = self.path().to_path_buf();
        let backup = root.join(name);
        if !backup.exists() {
            let partial = root.join(format!("{name}.partial"));
            if partial.exists() {
                fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
            }
            copy_dir(&root.join(ENGINE_DIR), &partial)?;
            fs::rename(&partial, &backup).map_err(|e| Error::io(&backup, e))?;
            sync_dir(&root)?;
        }
        Ok(())
    }

    fn page_ids(&self) -> Result<Vec<PageId>> {
        let mut ids = Vec::new();
        self.engine().visit_prefix(keys::ALL_PAGES, &mut |k, _| {
            ids.extend(keys::trailing_u64(k).map(PageId));
            Ok(true)
        })?;
        Ok(ids)
    }

    fn write_schema_version(&self) -> Result<()> {
        let mut b = Batch::new();
        b.put(keys::SCHEMA, encode("schema version", &SCHEMA_VERSION)?);
        self.commit(b)?;
        self.flush()
    }

    pub(crate) fn migrate_from_schema1(&self) -> Result<()> {
        self.backup_engine(SCHEMA1_BACKUP_DIR)?;
        {
            let _g = self.lock();
            self.gather_history()?;
            for id in self.page_ids()? {
                self.migrate_page(id)?;
            }
        }
        // The schema-1 backup is the store as it was; the layout step needs no second copy.
        self.upgrade_layouts()
    }

    pub(crate) fn migrate_from_schema2(&self) -> Result<()> {
        self.backup_engine(SCHEMA2_BACKUP_DIR)?;
        self.upgrade_layouts()
    }

    fn upgrade_layouts(&self) -> Result<()> {
        let _g = self.lock();
        for id in self.page_ids()? {
            let key = keys::page(id);
            let value = self.engine().get(&key)?.ok_or(Error::PageNotFound(id))?;
            let Some(rec) = self.read_legacy_page(&key, &value)? else {
                continue;
            };
            let mut txn = Txn::new(self);
            txn.put_page(&rec, Some(rec.due))?;
            txn.commit()?;
        }
        self.write_schema_version()
    }

    /// A page record of schema 1 or 2 in today's form; `None` when it is in today's form already.
    fn read_legacy_page(&self, key: &[u8], value: &[u8]) -> Result<Option<PageRecord>> {
        let mut json: Map<String, Value> = crate::store::decode(key, value)?;
        if !upgrade_record(&mut json) {
            return Ok(None);
        }
        let bytes = serde_json::to_vec(&json).map_err(|source| Error::Encode {
            what: "upgraded page record".into(),
            source,
        })?;
        self.decode_page(key, &keys::frame_packed(&bytes)).map(Some)
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
        let mut rec = match self.read_legacy_page(&key, &value)? {
            Some(rec) => rec,
            None => self.decode_page(&key, &value)?,
        };
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
