//! Content-addressed files for the store's large values (page images and vision-token caches).
//!
//! A blob lives in `blobs/<first two hex digits>/<SHA-256 in hex>` inside the store folder. It is
//! written to `blobs/tmp/`, synced, renamed into place and its folder synced before the record that
//! names it is committed, so a record never names a blob that a crash could lose. The engine keeps
//! a reference count per blob (key `B`), changed in the same batch as the records; a blob whose
//! count falls to zero is deleted after the commit, and [`Blobs::sweep`] deletes any file no count
//! names (left by a crash between a write and its commit, or between a commit and a delete).

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Name of the blob folder inside a store folder.
pub const BLOB_DIR: &str = "blobs";
const TMP_DIR: &str = "tmp";

/// The SHA-256 of a blob's bytes: its name in the blob folder.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        BlobId(Sha256::digest(bytes).into())
    }

    /// Lower-case hex, 64 digits.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", &self.hex()[..12])
    }
}

impl FromStr for BlobId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidInput(format!("{s:?} is not a blob id (64 hex digits)"));
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(BlobId(out))
    }
}

impl Serialize for BlobId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for BlobId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The blob folder of one store.
#[derive(Debug)]
pub(crate) struct Blobs {
    dir: PathBuf,
    sync: bool,
    tmp_seq: AtomicU64,
}

/// Syncs a folder, so that the renames and creations inside it survive a power failure.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))
}

impl Blobs {
    /// The blob folder of the store in `store_dir`, created if missing; `sync`: fsync files and
    /// folders before a blob is named by a record.
    pub(crate) fn open(store_dir: &Path, sync: bool) -> Result<Self> {
        let dir = store_dir.join(BLOB_DIR);
        let tmp = dir.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        // Half-written blobs of an interrupted writer.
        for entry in fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))? {
            let path = entry.map_err(|e| Error::io(&tmp, e))?.path();
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(Blobs {
            dir,
            sync,
            tmp_seq: AtomicU64::new(0),
        })
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        let hex = id.hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Writes `bytes` (if no blob of that content exists yet) and returns its id. When this
    /// returns, the blob is durable (with `sync`).
    pub(crate) fn put(&self, bytes: &[u8]) -> Result<BlobId> {
        let id = BlobId::of(bytes);
        let path = self.path(&id);
        if fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
            return Ok(id);
        }
        let shard = path.parent().unwrap_or(&self.dir);
        let new_shard = !shard.is_dir();
        fs::create_dir_all(shard).map_err(|e| Error::io(shard, e))?;
        let tmp = self.dir.join(TMP_DIR).join(format!(
            "{}-{}",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let written = fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            if self.sync {
                f.sync_all()?;
            }
            Ok(())
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(&tmp, e));
        }
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        if self.sync {
            sync_dir(shard)?;
            if new_shard {
                sync_dir(&self.dir)?;
            }
        }
        Ok(id)
    }

    /// Reads a blob, checking its length.
    pub(crate) fn get(&self, id: &BlobId, len: u64) -> Result<Vec<u8>> {
        let path = self.path(id);
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        if bytes.len() as u64 != len {
            return Err(Error::Corrupt {
                key: format!("blob {}", path.display()),
                page: None,
                reason: format!("{} bytes, the record says {len}", bytes.len()),
            });
        }
        Ok(bytes)
    }

    /// Whether a blob's file exists and its content hashes to its name.
    pub(crate) fn check(&self, id: &BlobId) -> Result<bool> {
        let path = self.path(id);
        match fs::read(&path) {
            Ok(bytes) => Ok(BlobId::of(&bytes) == *id),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Deletes a blob (no error if it is gone already).
    pub(crate) fn remove(&self, id: &BlobId) -> Result<()> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }

    /// Every blob file: its id and size. Files that are not blobs are skipped.
    pub(crate) fn list(&self) -> Result<Vec<(BlobId, u64)>> {
        let mut out = Vec::new();
        for shard in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let shard = shard.map_err(|e| Error::io(&self.dir, e))?.path();
            if shard.file_name().is_some_and(|n| n == TMP_DIR) || !shard.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&shard).map_err(|e| Error::io(&shard, e))? {
                let entry = entry.map_err(|e| Error::io(&shard, e))?;
                let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                let len = entry
                    .metadata()
                    .map_err(|e| Error::io(entry.path(), e))?
                    .len();
                out.push((id, len));
            }
        }
        Ok(out)
    }

    /// Deletes every blob `live` does not keep; returns how many files and bytes went.
    pub(crate) fn sweep(&self, live: impl Fn(&BlobId) -> Result<bool>) -> Result<(u64, u64)> {
        let (mut files, mut bytes) = (0, 0);
        for (id, len) in self.list()? {
            if !live(&id)? {
                self.remove(&id)?;
                files += 1;
                bytes += len;
            }
        }
        Ok((files, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_hex_and_json() {
        let id = BlobId::of(b"hello");
        assert_eq!(
            id.hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(id.hex().parse::<BlobId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<BlobId>(&json).unwrap(), id);
        assert!("xyz".parse::<BlobId>().is_err());
    }

    #[test]
    fn put_is_idempotent_and_sweep_removes_unnamed_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path(), true).unwrap();
        let a = blobs.put(b"page a").unwrap();
        assert_eq!(blobs.put(b"page a").unwrap(), a);
        let b = blobs.put(b"page b").unwrap();
        assert_eq!(blobs.get(&a, 6).unwrap(), b"page a");
        assert!(blobs.get(&a, 7).is_err());
        assert_eq!(blobs.list().unwrap().len(), 2);
        assert_eq!(blobs.sweep(|id| Ok(*id == b)).unwrap(), (1, 6));
        assert!(!blobs.check(&a).unwrap());
        assert!(blobs.check(&b).unwrap());
    }
}
