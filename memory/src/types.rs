//! Plain-data records kept by the store.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::blobs::BlobId;
use crate::error::{Error, Result};

/// Who a conversation belongs to: an optional user and agent, and a session.
///
/// Everything (turns and pages) is keyed by scope, as agent-memory layers key by user, agent and run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Scope {
    /// The end user, if any.
    pub user: Option<String>,
    /// The agent, if any.
    pub agent: Option<String>,
    /// The session (conversation) id.
    pub session: String,
}

impl Scope {
    /// A scope with only a session.
    pub fn session(session: impl Into<String>) -> Self {
        Self {
            user: None,
            agent: None,
            session: session.into(),
        }
    }

    /// Sets the user.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Sets the agent.
    pub fn with_agent(mut self, agent: impl Into<String>) -> Self {
        self.agent = Some(agent.into());
        self
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "user={u:?} ")?;
        }
        if let Some(a) = &self.agent {
            write!(f, "agent={a:?} ")?;
        }
        write!(f, "session={:?}", self.session)
    }
}

/// A page's id, unique in its store and never reused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct PageId(pub u64);

impl fmt::Display for PageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for PageId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        s.trim()
            .parse::<u64>()
            .map(PageId)
            .map_err(|_| Error::InvalidInput(format!("{s:?} is not a page id (a whole number)")))
    }
}

pub use lethe_mode::{Mode, Tier};

/// Reads a tier as written today (its name) or as schema-2 stores wrote it (`{"index": 1,
/// "mode": "base"}`, where the index was the policy's ladder position and is not needed).
pub(crate) mod tier_compat {
    use lethe_mode::Tier;
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Name(Tier),
        Legacy { mode: String },
    }

    fn read(w: Written) -> Result<Tier, String> {
        match w {
            Written::Name(t) => Ok(t),
            Written::Legacy { mode } => mode.parse().map_err(|e| format!("{e}")),
        }
    }

    pub(crate) fn one<'de, D: Deserializer<'de>>(d: D) -> Result<Tier, D::Error> {
        read(Written::deserialize(d)?).map_err(serde::de::Error::custom)
    }

    pub(crate) fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Tier>, D::Error> {
        Option::<Written>::deserialize(d)?
            .map(read)
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}

/// A moment, given by the caller: the store never reads a clock.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Stamp {
    /// Turn index in the scope's conversation at that moment.
    pub turn: u64,
    /// Wall-clock time in the caller's unit (seconds since the Unix epoch by convention).
    pub time: u64,
}

impl Stamp {
    /// A stamp at `turn` and `time`.
    pub fn new(turn: u64, time: u64) -> Self {
        Self { turn, time }
    }
}

/// A half-open range of turn indices `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TurnRange {
    /// First turn index.
    pub start: u64,
    /// One past the last turn index.
    pub end: u64,
}

impl TurnRange {
    /// Number of turns in the range.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<std::ops::Range<u64>> for TurnRange {
    fn from(r: std::ops::Range<u64>) -> Self {
        Self {
            start: r.start,
            end: r.end,
        }
    }
}

/// A turn to append; the store assigns its index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTurn {
    /// Who spoke (`"user"`, `"assistant"`, a tool name...).
    pub speaker: String,
    /// What was said.
    pub text: String,
    /// When, in the caller's time unit.
    pub timestamp: u64,
    /// The conversation session the turn was said in, as the caller names it (e.g. `"Session 3 ·
    /// 2026-03-14"`); pages show it as a header.
    pub session: Option<String>,
    /// The time as written in the caller's transcript (e.g. `"10:02"`), shown beside the speaker.
    pub time_label: Option<String>,
}

impl NewTurn {
    /// A new turn with no session and no time label.
    pub fn new(speaker: impl Into<String>, text: impl Into<String>, timestamp: u64) -> Self {
        Self {
            speaker: speaker.into(),
            text: text.into(),
            timestamp,
            session: None,
            time_label: None,
        }
    }

    /// Sets the session.
    pub fn with_session(mut self, session: impl Into<String>) -> Self {
        self.session = Some(session.into());
        self
    }

    /// Sets the time label.
    pub fn with_time_label(mut self, label: impl Into<String>) -> Self {
        self.time_label = Some(label.into());
        self
    }
}

/// A turn kept as text in the hot tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnRecord {
    /// Index in its scope, from 0, never reused.
    pub index: u64,
    /// Who spoke.
    pub speaker: String,
    /// What was said.
    pub text: String,
    /// When, in the caller's time unit.
    pub timestamp: u64,
    /// The session it was said in (absent in records written before sessions were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The time as written in the transcript.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_label: Option<String>,
}

/// A vision-token cache: raw tensor bytes with their shape and dtype.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCache {
    /// Tensor shape, e.g. `[273, 1280]`.
    pub shape: Vec<usize>,
    /// Element type: one of `f32`, `f16`, `bf16`, `f64`, `u8`, `u32`, `i64`.
    pub dtype: String,
    /// Row-major little-endian element bytes.
    pub bytes: Vec<u8>,
}

/// Size in bytes of one element of a supported token dtype.
pub fn dtype_size(dtype: &str) -> Option<usize> {
    match dtype {
        "u8" => Some(1),
        "f16" | "bf16" => Some(2),
        "f32" | "u32" => Some(4),
        "f64" | "i64" => Some(8),
        _ => None,
    }
}

impl TokenCache {
    /// A cache, checked: the dtype is known and the byte count matches the shape.
    pub fn new(shape: Vec<usize>, dtype: impl Into<String>, bytes: Vec<u8>) -> Result<Self> {
        let t = Self {
            shape,
            dtype: dtype.into(),
            bytes,
        };
        t.validate()?;
        Ok(t)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let size = dtype_size(&self.dtype)
            .ok_or_else(|| Error::InvalidInput(format!("unknown token dtype {:?}", self.dtype)))?;
        let elems = self
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                Error::InvalidInput(format!("token shape {:?} overflows", self.shape))
            })?;
        if elems.checked_mul(size) != Some(self.bytes.len()) {
            return Err(Error::InvalidInput(format!(
                "token cache of shape {:?} and dtype {} needs {} bytes, got {}",
                self.shape,
                self.dtype,
                elems.saturating_mul(size),
                self.bytes.len()
            )));
        }
        Ok(())
    }
}

/// Shape, dtype and size of a page's token cache (the bytes live in a blob file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenMeta {
    /// Tensor shape.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: String,
    /// Byte length.
    pub len: u64,
    /// The blob holding the bytes (absent only in records of schema 1, before migration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<BlobId>,
}

/// When the caller's policy may next move a page: the first turn of the page's scope and the
/// first time at which to look at it again; `None` for a clock that never moves it. The store
/// indexes pages by both ([`Store::due_pages`](crate::Store::due_pages)), so a maintenance pass
/// reads only the pages that are due.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Due {
    /// The first turn (of the page's scope) at which the page is due.
    pub turn: Option<u64>,
    /// The first time at which the page is due.
    pub time: Option<u64>,
}

impl Due {
    /// Due at once (at the next look at its scope).
    pub const NOW: Due = Due {
        turn: Some(0),
        time: None,
    };

    /// Never due by the clock (only an access, a pin or a new policy makes it due).
    pub const NEVER: Due = Due {
        turn: None,
        time: None,
    };
}

/// CRC-32 checksums of a page's content, checked on every read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksum {
    /// CRC-32 of the PNG bytes, when an image is stored.
    pub image: Option<u32>,
    /// CRC-32 of the token bytes, when cached.
    pub tokens: Option<u32>,
    /// CRC-32 of the UTF-8 text, when retained.
    pub text: Option<u32>,
}

/// A page: a run of turns rendered to an image, stored at one tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRecord {
    /// The page's id.
    pub id: PageId,
    /// The scope its turns came from.
    pub scope: Scope,
    /// The turns it holds.
    pub turns: TurnRange,
    /// How the page was laid out, from which its caller draws it again.
    pub layout: Layout,
    /// Its current tier.
    #[serde(deserialize_with = "tier_compat::one")]
    pub tier: Tier,
    /// When it was made.
    pub created: Stamp,
    /// When it was last read by the agent (equals `created` until then).
    pub last_access: Stamp,
    /// How often it was read.
    pub access_count: u64,
    /// Pinned pages are kept at their tier by the policy.
    pub pinned: bool,
    /// The page text, while retained.
    pub text: Option<String>,
    /// Byte length of the stored PNG (0 when none is stored).
    pub image_len: u64,
    /// The blob holding the PNG for the current tier. `None` when no image is stored: the caller
    /// redraws a page whose text is retained, and an evicted page has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_blob: Option<BlobId>,
    /// The token cache's shape and dtype, when cached.
    pub tokens: Option<TokenMeta>,
    /// Checksums of the image, tokens and text.
    pub checksum: Checksum,
    /// Number of entries in this page's history (tier changes, creation and deletion included).
    pub changes: u64,
    /// When the page reached its current tier (absent in records of schema 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_since: Option<Stamp>,
    /// When the caller's policy may next move it.
    #[serde(default)]
    pub due: Due,
}

/// How a page was laid out: what its caller needs to lay out exactly the same page again from the
/// page's retained text, typed so that deciding a page parses nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The render profile, serialised by the renderer (opaque to the store).
    pub profile: String,
    /// Logical page size `[width, height]` in the renderer's units, rounded.
    pub size: [u32; 2],
    /// Text tokens of the page's text, counted when the page was made.
    pub text_tokens: u64,
    /// CRC-32 of the text as laid out on the page (labels, headers and line breaks included), so
    /// that a caller can check that laying the pieces out again gives the same page.
    pub page_text_crc: u32,
    /// The turn pieces the page shows, in order, as consecutive ranges of the page's retained text
    /// (empty once the text is dropped).
    pub pieces: Vec<Piece>,
}

/// One piece of a turn shown on a page: who said it and where its words are in the page's text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// The speaker's label.
    pub speaker: String,
    /// The session it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Its time label, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_label: Option<String>,
    /// Whether the turn began on an earlier page.
    #[serde(default)]
    pub continued: bool,
    /// Bytes of the page's text this piece holds.
    pub len: u64,
}

impl Layout {
    /// The checksum [`Layout::page_text_crc`] holds for `text` (CRC-32).
    pub fn checksum(text: &str) -> u32 {
        crc32fast::hash(text.as_bytes())
    }

    /// Checks that the pieces cover `text` exactly, each ending on a character boundary.
    pub(crate) fn check(&self, text: Option<&str>) -> Result<()> {
        let total: u64 = self.pieces.iter().map(|p| p.len).sum();
        match text {
            None if self.pieces.is_empty() => Ok(()),
            None => Err(Error::InvalidInput(format!(
                "layout names {} pieces of a page that keeps no text",
                self.pieces.len()
            ))),
            Some(_) if self.pieces.is_empty() => Ok(()),
            Some(text) => {
                if total != text.len() as u64 {
                    return Err(Error::InvalidInput(format!(
                        "layout pieces hold {total} bytes, the page text {}",
                        text.len()
                    )));
                }
                let mut at = 0usize;
                for piece in &self.pieces {
                    at += piece.len as usize;
                    if !text.is_char_boundary(at) {
                        return Err(Error::InvalidInput(format!(
                            "layout piece ends at byte {at}, inside a character"
                        )));
                    }
                }
                Ok(())
            }
        }
    }
}

/// A page with its image and token cache, all checked against the checksums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The page's record.
    pub record: PageRecord,
    /// The PNG for its current tier, when one is stored.
    pub image: Option<Vec<u8>>,
    /// The vision tokens for its current tier, if cached.
    pub tokens: Option<TokenCache>,
}

/// What a page-out writes: the new page's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPage {
    /// How it was laid out. `layout.pieces` are ranges of `text` (dropped with it when the store
    /// does not retain text).
    pub layout: Layout,
    /// The tier it is rendered at.
    pub tier: Tier,
    /// The page text (kept when the store retains text).
    pub text: String,
    /// The PNG; `None` stores no image (the caller redraws the page from its retained text).
    pub image: Option<Vec<u8>>,
    /// Vision tokens, if already encoded.
    pub tokens: Option<TokenCache>,
    /// When the page is made.
    pub at: Stamp,
    /// Why (recorded in the history).
    pub reason: String,
    /// When the caller's policy may first move it.
    pub due: Due,
}

/// A tier change: the new tier's image and tokens, swapped in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The new tier.
    pub tier: Tier,
    /// The PNG at the new tier; `None` stores none (redrawn from the text, or evicted).
    pub image: Option<Vec<u8>>,
    /// Vision tokens at the new tier; `None` clears the cache.
    pub tokens: Option<TokenCache>,
    /// Why (recorded in the history).
    pub reason: String,
    /// When.
    pub at: Stamp,
    /// When the caller's policy may next move it.
    pub due: Due,
}

/// One entry of the audit log: a page was created, changed tier, or was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierChange {
    /// The page.
    pub page: PageId,
    /// Position in the page's history, from 0.
    pub seq: u64,
    /// The tier before (`None` at creation).
    #[serde(deserialize_with = "tier_compat::option")]
    pub from: Option<Tier>,
    /// The tier after (`None` at deletion).
    #[serde(deserialize_with = "tier_compat::option")]
    pub to: Option<Tier>,
    /// Why.
    pub reason: String,
    /// When.
    pub at: Stamp,
}

/// Page counts and bytes of one tier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierStats {
    /// Pages at this tier.
    pub pages: u64,
    /// Of which pinned.
    pub pinned: u64,
    /// PNG bytes.
    pub image_bytes: u64,
    /// Token cache bytes.
    pub token_bytes: u64,
    /// Retained text bytes.
    pub text_bytes: u64,
}

/// Counts and sizes of a whole store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Per tier, keyed by `"index:mode"` (e.g. `"0:large"`).
    pub tiers: std::collections::BTreeMap<String, TierStats>,
    /// All pages.
    pub pages: u64,
    /// Hot turns (still text).
    pub hot_turns: u64,
    /// Bytes of hot turn text.
    pub hot_text_bytes: u64,
    /// Scopes with any turn ever appended.
    pub scopes: u64,
    /// Audit log entries.
    pub history_entries: u64,
    /// Records that failed their checksum or decode (see [`Store::pages`](crate::Store::pages)).
    pub corrupt: u64,
    /// What the data itself weighs as stored: the engine's records (keys and values, records
    /// deflated) plus the blobs the records name (each counted once).
    pub live_bytes: u64,
    /// Bytes the store's folder takes on disk: `engine_bytes_on_disk + blob_bytes_on_disk`.
    pub bytes_on_disk: u64,
    /// What the live bytes are made of.
    pub made_of: MadeOf,
    /// Bytes the engine's files take on disk (records, indexes, the audit log, and the engine's
    /// own overhead).
    pub engine_bytes_on_disk: u64,
    /// Bytes the blob files take on disk (images and token caches, each distinct content once).
    pub blob_bytes_on_disk: u64,
    /// Blob files on disk.
    pub blob_files: u64,
}

/// What a store holds by kind, in bytes before the engine's deflate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MadeOf {
    /// Stored PNGs (blobs).
    pub images: u64,
    /// Vision-token caches (blobs).
    pub tokens: u64,
    /// Retained page text and hot turn text.
    pub text: u64,
    /// Everything else the engine holds: record fields, indexes, counters, the audit log.
    pub records: u64,
}

/// The pages of a listing, and the records that could not be read.
#[derive(Debug, Default)]
pub struct Listing {
    /// Readable pages, by id.
    pub pages: Vec<PageRecord>,
    /// One [`Error::Corrupt`] per unreadable record.
    pub corrupt: Vec<Error>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_records_written_before_sessions_were_kept_still_read() {
        let old = r#"{"index":3,"speaker":"user","text":"hi","timestamp":7}"#;
        let rec: TurnRecord = serde_json::from_str(old).unwrap();
        assert_eq!(
            (rec.index, &rec.session, &rec.time_label),
            (3, &None, &None)
        );
        // And records without them are written as before.
        assert_eq!(serde_json::to_string(&rec).unwrap(), old);
        let with = NewTurn::new("user", "hi", 7)
            .with_session("Session 2")
            .with_time_label("10:02");
        assert_eq!(with.session.as_deref(), Some("Session 2"));
        assert_eq!(with.time_label.as_deref(), Some("10:02"));
    }
}

/// What [`Store::compact`](crate::Store::compact) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compaction {
    /// Records copied into the fresh engine folder.
    pub records: u64,
    /// Bytes the engine folder took before.
    pub bytes_before: u64,
    /// Bytes it takes now.
    pub bytes_after: u64,
}
