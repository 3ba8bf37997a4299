//! Counting and checking a whole store: [`Store::stats`] and [`Store::verify`]. Both stream the
//! records; neither loads an image to count it.

use std::collections::{BTreeMap, BTreeSet};

use crate::blobs::BlobId;
use crate::error::{Error, Result};
use crate::keys;
use crate::store::{decode, Store};
use crate::types::{Stats, TierStats, TurnRecord};

impl Store {
    /// Counts and sizes: pages and bytes per tier, hot turns, history, the live bytes (records as
    /// stored, deflated, plus blobs) and what they are made of (before deflate), and the bytes on
    /// disk of the engine and of the blob files.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        let mut tiers: BTreeMap<String, TierStats> = BTreeMap::new();
        let mut blobs: BTreeSet<BlobId> = BTreeSet::new();
        self.engine().visit_prefix(b"", &mut |k, v| {
            s.live_bytes += (k.len() + v.len()) as u64;
            // What a record is made of is counted before deflate.
            let logical = keys::unframe(k, v).map_or(v.len(), |p| p.len());
            s.made_of.records += (k.len() + logical) as u64;
            match k.first() {
                Some(b'P') => match self.decode_page(k, v) {
                    Ok(p) => {
                        s.pages += 1;
                        let t = tiers.entry(p.tier.to_string()).or_default();
                        t.pages += 1;
                        t.pinned += u64::from(p.pinned);
                        t.image_bytes += p.image_len;
                        t.token_bytes += p.tokens.as_ref().map_or(0, |m| m.len);
                        let text = p.text.as_ref().map_or(0, |x| x.len() as u64);
                        t.text_bytes += text;
                        s.made_of.text += text;
                        s.made_of.records -= text;
                        // A blob named by several records weighs once.
                        if p.image_blob.is_some_and(|b| blobs.insert(b)) {
                            s.made_of.images += p.image_len;
                        }
                        if let Some(m) = &p.tokens {
                            if m.blob.is_some_and(|b| blobs.insert(b)) {
                                s.made_of.tokens += m.len;
                            }
                        }
                    }
                    Err(_) => s.corrupt += 1,
                },
                Some(b'T') => {
                    s.hot_turns += 1;
                    match decode::<TurnRecord>(k, v) {
                        Ok(t) => {
                            s.hot_text_bytes += t.text.len() as u64;
                            s.made_of.text += t.text.len() as u64;
                            s.made_of.records -= t.text.len() as u64;
                        }
                        Err(_) => s.corrupt += 1,
                    }
                }
                Some(b'C') => s.scopes += 1,
                Some(b'A') => match decode::<Vec<crate::types::TierChange>>(k, v) {
                    Ok(entries) => s.history_entries += entries.len() as u64,
                    Err(_) => s.corrupt += 1,
                },
                _ => {}
            }
            Ok(true)
        })?;
        s.tiers = tiers;
        s.live_bytes += s.made_of.images + s.made_of.tokens;
        for (_, len) in self.blobs.list()? {
            s.blob_files += 1;
            s.blob_bytes_on_disk += len;
        }
        s.engine_bytes_on_disk = self.engine().size_on_disk()?;
        s.bytes_on_disk = s.engine_bytes_on_disk + s.blob_bytes_on_disk;
        Ok(s)
    }

    /// Checks every page in full (record, image and token blobs by their SHA-256, text, and that
    /// its history ends at its tier) and every blob's reference count; returns one error per
    /// problem found.
    pub fn verify(&self) -> Result<Vec<Error>> {
        let listing = self.pages(None)?;
        let mut problems = listing.corrupt;
        let mut named: BTreeMap<BlobId, i64> = BTreeMap::new();
        for rec in &listing.pages {
            let blobs = [rec.image_blob, rec.tokens.as_ref().and_then(|t| t.blob)];
            for blob in blobs.into_iter().flatten() {
                *named.entry(blob).or_default() += 1;
                if !self.blobs.check(&blob)? {
                    problems.push(Error::Corrupt {
                        key: format!("blob {blob}"),
                        page: Some(rec.id),
                        reason: "missing, or its content does not hash to its name".into(),
                    });
                }
            }
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
                            key: keys::describe(&keys::history(rec.id)),
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
        // Reference counts can be judged only when every record could be read.
        if !problems.is_empty() {
            return Ok(problems);
        }
        let mut counted: BTreeMap<BlobId, i64> = BTreeMap::new();
        for (k, v) in self.engine().scan_prefix(keys::ALL_BLOB_REFS)? {
            let id = BlobId(k[1..].try_into().map_err(|_| Error::Corrupt {
                key: keys::describe(&k),
                page: None,
                reason: "malformed blob key".into(),
            })?);
            counted.insert(id, decode(&k, &v)?);
        }
        if counted != named {
            let differing = named
                .keys()
                .chain(counted.keys())
                .find(|id| named.get(id) != counted.get(id))
                .copied();
            if let Some(id) = differing {
                problems.push(Error::Corrupt {
                    key: keys::describe(&keys::blob_refs(&id)),
                    page: None,
                    reason: format!(
                        "reference count {} but {} records name the blob",
                        counted.get(&id).copied().unwrap_or(0),
                        named.get(&id).copied().unwrap_or(0)
                    ),
                });
            }
        }
        Ok(problems)
    }
}
