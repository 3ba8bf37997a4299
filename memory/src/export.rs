//! Export to, and import from, a portable folder.
//!
//! Layout of an export folder (all JSON is UTF-8, pretty-printed; ids are decimal):
//!
//! ```text
//! DIR/
//!   manifest.json          {"format":"lethe-memory-export","version":1,"schema":2,
//!                           "next_page":N,"scopes":[{"scope":{..},"next_turn":n},..],"pages":[ids]}
//!   turns.jsonl            one hot turn a line: {"scope":{..},"turn":{index,speaker,text,timestamp}}
//!   history.jsonl          the whole audit log, one TierChange a line (deleted pages included)
//!   pages/<id>/page.json   the PageRecord, with "text": null (the text lives in text.txt)
//!   pages/<id>/page.png    the image at the page's current tier, present exactly when stored
//!   pages/<id>/text.txt    the page text, present exactly when it is retained
//!   pages/<id>/tokens.bin  the vision-token bytes, present exactly when cached
//!                          (shape and dtype under "tokens" in page.json)
//! ```
//!
//! Every file is checked against the checksums in `page.json` on import. Import goes into an empty
//! store in one transaction, and an export of the imported store is byte-identical to the original.
//! Exports of schema 1 stores import too (their pages become due at once).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys;
use crate::pages::Txn;
use crate::store::Store;
use crate::types::{Due, PageId, PageRecord, Scope, TierChange, TurnRecord};

/// The `format` field of `manifest.json`.
pub const EXPORT_FORMAT: &str = "lethe-memory-export";
/// The `version` field of `manifest.json` this build writes and reads.
pub const EXPORT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct ScopeEntry {
    scope: Scope,
    next_turn: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    schema: u32,
    next_page: u64,
    scopes: Vec<ScopeEntry>,
    pages: Vec<PageId>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TurnLine {
    scope: Scope,
    turn: TurnRecord,
}

/// What an export or import moved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferSummary {
    /// Pages.
    pub pages: u64,
    /// Hot turns.
    pub turns: u64,
    /// Audit log entries.
    pub history_entries: u64,
    /// Bytes of images, tokens and text.
    pub content_bytes: u64,
}

fn export_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Export {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io(path, e))
}

fn json<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    let mut out = serde_json::to_vec_pretty(v).map_err(|source| Error::Encode {
        what: what.into(),
        source,
    })?;
    out.push(b'\n');
    Ok(out)
}

fn json_line<T: Serialize>(out: &mut Vec<u8>, what: &str, v: &T) -> Result<()> {
    serde_json::to_writer(&mut *out, v).map_err(|source| Error::Encode {
        what: what.into(),
        source,
    })?;
    out.push(b'\n');
    Ok(())
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| export_err(path, format!("undecodable: {e}")))
}

fn page_dir(root: &Path, id: PageId) -> PathBuf {
    root.join("pages").join(id.to_string())
}

impl Store {
    /// Writes the whole store to `dir` (which must not exist or be empty). Fails on the first
    /// unreadable record, naming it: an export is complete or it is not made.
    pub fn export(&self, dir: impl AsRef<Path>) -> Result<TransferSummary> {
        let dir = dir.as_ref();
        let _g = self.lock();
        match fs::read_dir(dir) {
            Ok(mut it) => {
                if it.next().is_some() {
                    return Err(export_err(dir, "folder is not empty"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            Err(e) => return Err(Error::io(dir, e)),
        }
        let mut sum = TransferSummary::default();
        let listing = self.pages(None)?;
        if let Some(e) = listing.corrupt.into_iter().next() {
            return Err(e);
        }
        let scopes = self
            .scopes()?
            .into_iter()
            .map(|scope| {
                self.next_turn(&scope)
                    .map(|next_turn| ScopeEntry { scope, next_turn })
            })
            .collect::<Result<Vec<_>>>()?;

        let mut turns = Vec::new();
        for s in &scopes {
            for turn in self.hot_turns(&s.scope)? {
                sum.turns += 1;
                sum.content_bytes += turn.text.len() as u64;
                json_line(
                    &mut turns,
                    "turn",
                    &TurnLine {
                        scope: s.scope.clone(),
                        turn,
                    },
                )?;
            }
        }
        write_file(&dir.join("turns.jsonl"), &turns)?;

        let mut history = Vec::new();
        for entry in self.audit_log()? {
            sum.history_entries += 1;
            json_line(&mut history, "history entry", &entry)?;
        }
        write_file(&dir.join("history.jsonl"), &history)?;

        for rec in &listing.pages {
            let page = self.load(rec.id)?;
            let pd = page_dir(dir, rec.id);
            fs::create_dir_all(&pd).map_err(|e| Error::io(&pd, e))?;
            let mut meta = page.record.clone();
            if let Some(text) = meta.text.take() {
                sum.content_bytes += text.len() as u64;
                write_file(&pd.join("text.txt"), text.as_bytes())?;
            }
            write_file(&pd.join("page.json"), &json("page record", &meta)?)?;
            if let Some(image) = &page.image {
                sum.content_bytes += image.len() as u64;
                write_file(&pd.join("page.png"), image)?;
            }
            if let Some(t) = &page.tokens {
                sum.content_bytes += t.bytes.len() as u64;
                write_file(&pd.join("tokens.bin"), &t.bytes)?;
            }
            sum.pages += 1;
        }

        let manifest = Manifest {
            format: EXPORT_FORMAT.into(),
            version: EXPORT_VERSION,
            schema: crate::SCHEMA_VERSION,
            next_page: self.read_next_page()?,
            scopes,
            pages: listing.pages.iter().map(|p| p.id).collect(),
        };
        // The manifest goes last: a folder without one is an interrupted export.
        let mpath = dir.join("manifest.json");
        let mut f = fs::File::create(&mpath).map_err(|e| Error::io(&mpath, e))?;
        f.write_all(&json("manifest", &manifest)?)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&mpath, e))?;
        Ok(sum)
    }

    /// Reads an export folder into this store, which must be empty, in one transaction. Every file
    /// is checked against the page's checksums first; on any error nothing is written (blob files
    /// written before the error are deleted).
    pub fn import(&self, dir: impl AsRef<Path>) -> Result<TransferSummary> {
        let _g = self.lock();
        let imported = self.import_locked(dir.as_ref());
        if imported.is_err() {
            let _ = self
                .blobs
                .sweep(|id| Ok(self.engine().get(&keys::blob_refs(id))?.is_some()));
        }
        imported
    }

    fn import_locked(&self, dir: &Path) -> Result<TransferSummary> {
        let engine = self.engine();
        if !engine.is_empty_prefix(b"P")?
            || !engine.is_empty_prefix(b"A")?
            || !engine.is_empty_prefix(b"C")?
        {
            return Err(Error::InvalidInput(format!(
                "import into {} needs an empty store",
                self.path().display()
            )));
        }
        let mpath = dir.join("manifest.json");
        let manifest: Manifest = parse(&mpath, &read_file(&mpath)?)?;
        if manifest.format != EXPORT_FORMAT || manifest.version != EXPORT_VERSION {
            return Err(export_err(
                &mpath,
                format!(
                    "format {:?} version {}, expected {EXPORT_FORMAT:?} version {EXPORT_VERSION}",
                    manifest.format, manifest.version
                ),
            ));
        }
        if manifest.schema != crate::SCHEMA_VERSION && manifest.schema != 1 {
            return Err(Error::SchemaMismatch {
                path: mpath,
                found: manifest.schema,
                expected: crate::SCHEMA_VERSION,
            });
        }
        let mut sum = TransferSummary::default();
        let mut txn = Txn::new(self);
        for s in &manifest.scopes {
            txn.batch.put(
                keys::scope_counter(&s.scope),
                keys::frame(&json_compact("scope counter", s)?),
            );
        }

        let tpath = dir.join("turns.jsonl");
        let turns = read_file(&tpath)?;
        for (n, line) in turns.split(|&c| c == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let t: TurnLine = serde_json::from_slice(line)
                .map_err(|e| export_err(&tpath, format!("line {}: {e}", n + 1)))?;
            sum.turns += 1;
            sum.content_bytes += t.turn.text.len() as u64;
            txn.batch.put(
                keys::turn(&t.scope, t.turn.index),
                keys::frame(&json_compact("turn", &t.turn)?),
            );
        }

        let hpath = dir.join("history.jsonl");
        let history = read_file(&hpath)?;
        let mut logs: std::collections::BTreeMap<PageId, Vec<TierChange>> = Default::default();
        for (n, line) in history.split(|&c| c == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let e: TierChange = serde_json::from_slice(line)
                .map_err(|e| export_err(&hpath, format!("line {}: {e}", n + 1)))?;
            sum.history_entries += 1;
            let log = logs.entry(e.page).or_default();
            if e.seq != log.len() as u64 {
                return Err(export_err(
                    &hpath,
                    format!(
                        "line {}: entry {} of page {} follows {} entries",
                        n + 1,
                        e.seq,
                        e.page,
                        log.len()
                    ),
                ));
            }
            log.push(e);
        }
        for (page, log) in &logs {
            txn.batch
                .put(keys::history(*page), crate::store::encode("history", log)?);
        }

        for &id in &manifest.pages {
            let pd = page_dir(dir, id);
            let ppath = pd.join("page.json");
            let mut rec: PageRecord = parse(&ppath, &read_file(&ppath)?)?;
            if rec.id != id {
                return Err(export_err(
                    &ppath,
                    format!("names page {}, expected {id}", rec.id),
                ));
            }
            let text_path = pd.join("text.txt");
            if text_path.exists() {
                let bytes = read_file(&text_path)?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| export_err(&text_path, "is not valid UTF-8"))?;
                rec.text = Some(text);
            }
            let text_crc = rec.text.as_deref().map(|t| crc32fast::hash(t.as_bytes()));
            if text_crc != rec.checksum.text {
                return Err(export_err(
                    &text_path,
                    "text does not match the page's checksum",
                ));
            }
            let ipath = pd.join("page.png");
            rec.image_blob = None;
            match rec.checksum.image {
                Some(want) => {
                    let image = read_file(&ipath)?;
                    if image.len() as u64 != rec.image_len || crc32fast::hash(&image) != want {
                        return Err(export_err(
                            &ipath,
                            "image does not match the page's checksum",
                        ));
                    }
                    sum.content_bytes += image.len() as u64;
                    rec.image_blob = Some(txn.add_blob(&image)?);
                }
                None if ipath.exists() => {
                    return Err(export_err(&ipath, "the page's record says it has no image"))
                }
                None => {}
            }
            let vpath = pd.join("tokens.bin");
            match (&mut rec.tokens, rec.checksum.tokens) {
                (Some(meta), Some(want)) => {
                    let bytes = read_file(&vpath)?;
                    if bytes.len() as u64 != meta.len || crc32fast::hash(&bytes) != want {
                        return Err(export_err(
                            &vpath,
                            "tokens do not match the page's checksum",
                        ));
                    }
                    sum.content_bytes += bytes.len() as u64;
                    meta.blob = Some(txn.add_blob(&bytes)?);
                }
                (None, None) => {}
                _ => return Err(export_err(&ppath, "token metadata and checksum disagree")),
            }
            sum.content_bytes += rec.text.as_ref().map_or(0, |t| t.len() as u64);
            if manifest.schema == 1 {
                rec.due = Due::NOW;
            }
            txn.batch
                .put(keys::scope_page(&rec.scope, id), keys::frame(&[]));
            txn.put_page(&rec, None)?;
            sum.pages += 1;
        }
        txn.batch.put(
            keys::NEXT_PAGE,
            keys::frame(&json_compact("page counter", &manifest.next_page)?),
        );
        txn.commit()?;
        Ok(sum)
    }
}

fn json_compact<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|source| Error::Encode {
        what: what.into(),
        source,
    })
}
