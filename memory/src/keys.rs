//! Key layout and value framing.
//!
//! One ordered keyspace, namespaced by a leading byte:
//!
//! | key | value |
//! |---|---|
//! | `M` `schema` | schema version (JSON number) |
//! | `M` `next_page` | next page id (JSON number) |
//! | `C` scope | `{"scope":..,"next_turn":n}`: the scope and its next turn index |
//! | `T` scope index(u64 BE) | a hot [`TurnRecord`](crate::TurnRecord) (JSON) |
//! | `P` id(u64 BE) | a [`PageRecord`](crate::PageRecord) (JSON) |
//! | `S` scope id | empty: index of pages by scope |
//! | `D` scope turn(u64 BE) id | empty: index of pages by the turn they are due at |
//! | `W` time(u64 BE) id | empty: index of pages by the time they are due at |
//! | `B` sha256(32 bytes) | how many records name the blob (JSON number) |
//! | `A` id | the page's history: every [`TierChange`](crate::TierChange) in order (JSON array), kept after the page is deleted |
//! | `G` name | a caller's tag (JSON string), e.g. the fingerprint of the policy that set `due` |
//! | `I` id, `V` id | schema 1 only: the page's PNG and token bytes, moved to blob files on open |
//! | `A` id seq(u64 BE) | schema 1 only: one history entry, gathered into the page's list on open |
//!
//! A scope is encoded self-delimiting (per field: a presence byte, a u32 BE length, the UTF-8 bytes),
//! so a prefix scan over one scope never matches another. Every value is framed as
//! `b'L'`, a frame kind byte, the CRC-32 of the bytes that follow (u32 LE), then those bytes: the
//! payload itself (kind 1) or, for a record whose payload deflates to less (kind 2, [`frame_packed`]),
//! its raw-deflate compression. A value whose frame does not check out is reported as corrupt,
//! naming its key.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::types::{PageId, Scope};

const MAGIC: u8 = b'L';
/// Frame kind: the payload as it is.
const FRAME_PLAIN: u8 = 1;
/// Frame kind: the payload compressed with raw deflate.
const FRAME_DEFLATE: u8 = 2;
const HEADER: usize = 6;
/// Payloads shorter than this are framed plain (deflate would not pay for its header).
const PACK_MIN: usize = 256;
/// The largest payload a deflated frame may inflate to (a guard against a corrupt length).
const INFLATE_LIMIT: usize = 1 << 30;

/// Key of the schema version record.
pub const SCHEMA: &[u8] = b"Mschema";
/// Key of the next page id counter.
pub const NEXT_PAGE: &[u8] = b"Mnext_page";

fn push_field(out: &mut Vec<u8>, field: Option<&str>) {
    match field {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            // Scope fields are short names; a field over 4 GiB is rejected before it gets here.
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// Self-delimiting encoding of a scope.
pub fn scope_bytes(scope: &Scope) -> Vec<u8> {
    let mut out = Vec::new();
    push_field(&mut out, scope.user.as_deref());
    push_field(&mut out, scope.agent.as_deref());
    push_field(&mut out, Some(&scope.session));
    out
}

fn with(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![tag];
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// Key of a scope's counter record.
pub fn scope_counter(scope: &Scope) -> Vec<u8> {
    with(b'C', &[&scope_bytes(scope)])
}

/// Prefix of every scope counter record.
pub const SCOPE_COUNTERS: &[u8] = b"C";

/// Prefix of a scope's hot turns.
pub fn turns_prefix(scope: &Scope) -> Vec<u8> {
    with(b'T', &[&scope_bytes(scope)])
}

/// Key of one hot turn.
pub fn turn(scope: &Scope, index: u64) -> Vec<u8> {
    with(b'T', &[&scope_bytes(scope), &index.to_be_bytes()])
}

/// Key of a page record.
pub fn page(id: PageId) -> Vec<u8> {
    with(b'P', &[&id.0.to_be_bytes()])
}

/// Prefix of every page record.
pub const ALL_PAGES: &[u8] = b"P";

/// Key of a page's PNG in a schema 1 store.
pub fn legacy_image(id: PageId) -> Vec<u8> {
    with(b'I', &[&id.0.to_be_bytes()])
}

/// Key of a page's token bytes in a schema 1 store.
pub fn legacy_tokens(id: PageId) -> Vec<u8> {
    with(b'V', &[&id.0.to_be_bytes()])
}

/// Key of a blob's reference count.
pub fn blob_refs(blob: &crate::BlobId) -> Vec<u8> {
    with(b'B', &[&blob.0])
}

/// Prefix of every blob reference count.
pub const ALL_BLOB_REFS: &[u8] = b"B";

/// Key of a page's entry in the due-by-turn index.
pub fn due_turn(scope: &Scope, turn: u64, id: PageId) -> Vec<u8> {
    with(
        b'D',
        &[
            &scope_bytes(scope),
            &turn.to_be_bytes(),
            &id.0.to_be_bytes(),
        ],
    )
}

/// Prefix of a scope's entries in the due-by-turn index.
pub fn due_turn_prefix(scope: &Scope) -> Vec<u8> {
    with(b'D', &[&scope_bytes(scope)])
}

/// Key of a page's entry in the due-by-time index.
pub fn due_time(time: u64, id: PageId) -> Vec<u8> {
    with(b'W', &[&time.to_be_bytes(), &id.0.to_be_bytes()])
}

/// Prefix of the due-by-time index.
pub const ALL_DUE_TIMES: &[u8] = b"W";

/// Key of a caller's tag.
pub fn tag(name: &str) -> Vec<u8> {
    with(b'G', &[name.as_bytes()])
}

/// Key of a page's entry in the by-scope index.
pub fn scope_page(scope: &Scope, id: PageId) -> Vec<u8> {
    with(b'S', &[&scope_bytes(scope), &id.0.to_be_bytes()])
}

/// Prefix of a scope's entries in the by-scope page index.
pub fn scope_pages_prefix(scope: &Scope) -> Vec<u8> {
    with(b'S', &[&scope_bytes(scope)])
}

/// Key of a page's history.
pub fn history(id: PageId) -> Vec<u8> {
    with(b'A', &[&id.0.to_be_bytes()])
}

/// Key of one history entry in a schema 1 store.
#[cfg(test)]
pub fn legacy_history(id: PageId, seq: u64) -> Vec<u8> {
    with(b'A', &[&id.0.to_be_bytes(), &seq.to_be_bytes()])
}

/// Prefix of the whole audit log.
pub const ALL_HISTORY: &[u8] = b"A";

/// The last 8 bytes of a key as a big-endian u64 (ids and indices sit at the end of keys).
pub fn trailing_u64(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// The page a key belongs to, when it is a page, image, token or history key.
pub fn page_of(key: &[u8]) -> Option<PageId> {
    match key.first()? {
        b'P' | b'I' | b'V' if key.len() == 9 => trailing_u64(key).map(PageId),
        b'A' if key.len() >= 9 => {
            let id: [u8; 8] = key.get(1..9)?.try_into().ok()?;
            Some(PageId(u64::from_be_bytes(id)))
        }
        b'S' | b'D' | b'W' => trailing_u64(key).map(PageId),
        _ => None,
    }
}

/// A readable name for a key, used in error messages.
pub fn describe(key: &[u8]) -> String {
    let page = page_of(key);
    match (key.first(), page) {
        (Some(b'P'), Some(p)) => format!("page/{p}"),
        (Some(b'I'), Some(p)) => format!("legacy-image/{p}"),
        (Some(b'V'), Some(p)) => format!("legacy-tokens/{p}"),
        (Some(b'D'), Some(p)) => format!("due-turn/{p}"),
        (Some(b'W'), Some(p)) => format!("due-time/{p}"),
        (Some(b'B'), _) if key.len() == 33 => format!(
            "blob-refs/{}",
            key[1..]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
        (Some(b'G'), _) => format!("tag/{}", String::from_utf8_lossy(&key[1..])),
        (Some(b'A'), Some(p)) if key.len() == 17 => {
            format!("legacy-history/{p}/{}", trailing_u64(key).unwrap_or(0))
        }
        (Some(b'A'), Some(p)) => format!("history/{p}"),
        (Some(b'S'), Some(p)) => format!("scope-index/{p}"),
        (Some(b'T'), _) => format!("turn/{}", trailing_u64(key).unwrap_or(0)),
        (Some(b'C'), _) => "scope-counter".to_string(),
        (Some(b'M'), _) => format!("meta/{}", String::from_utf8_lossy(&key[1..])),
        _ => format!("{key:02x?}"),
    }
}

fn frame_as(kind: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + bytes.len());
    out.push(MAGIC);
    out.push(kind);
    out.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Frames a payload as it is, with its CRC-32.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    frame_as(FRAME_PLAIN, payload)
}

/// Frames a payload deflated when that makes it smaller (records with page text shrink about
/// threefold), else as it is.
pub fn frame_packed(payload: &[u8]) -> Vec<u8> {
    if payload.len() >= PACK_MIN {
        let packed = miniz_oxide::deflate::compress_to_vec(payload, 6);
        if packed.len() < payload.len() {
            return frame_as(FRAME_DEFLATE, &packed);
        }
    }
    frame(payload)
}

/// Checks a framed value and returns its payload (inflated, for a packed frame), or a
/// corrupt-record error naming `key`.
pub fn unframe<'a>(key: &[u8], value: &'a [u8]) -> Result<Cow<'a, [u8]>> {
    let corrupt = |reason: String| Error::Corrupt {
        key: describe(key),
        page: page_of(key),
        reason,
    };
    if value.len() < HEADER {
        return Err(corrupt(format!(
            "value is {} bytes, shorter than its frame",
            value.len()
        )));
    }
    if value[0] != MAGIC || !matches!(value[1], FRAME_PLAIN | FRAME_DEFLATE) {
        return Err(corrupt(format!(
            "bad frame header {:02x} {:02x}",
            value[0], value[1]
        )));
    }
    let want = u32::from_le_bytes([value[2], value[3], value[4], value[5]]);
    let bytes = &value[HEADER..];
    let got = crc32fast::hash(bytes);
    if want != got {
        return Err(corrupt(format!(
            "checksum mismatch (stored {want:08x}, computed {got:08x})"
        )));
    }
    if value[1] == FRAME_PLAIN {
        return Ok(Cow::Borrowed(bytes));
    }
    miniz_oxide::inflate::decompress_to_vec_with_limit(bytes, INFLATE_LIMIT)
        .map(Cow::Owned)
        .map_err(|e| corrupt(format!("packed record does not inflate: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_encoding_is_prefix_free() {
        let a = Scope::session("ab");
        let b = Scope::session("abc");
        assert!(!turns_prefix(&b).starts_with(&turns_prefix(&a)));
        let c = Scope::session("x").with_user("u");
        assert!(!turns_prefix(&c).starts_with(&turns_prefix(&Scope::session("x"))));
    }

    #[test]
    fn frame_round_trips_and_detects_flips() {
        let f = frame(b"hello");
        assert_eq!(
            unframe(b"P12345678", &f).ok().as_deref(),
            Some(&b"hello"[..])
        );
        let text = "a page of text that repeats itself. ".repeat(40);
        let packed = frame_packed(text.as_bytes());
        assert!(packed.len() * 3 < text.len(), "{} bytes", packed.len());
        assert_eq!(
            unframe(b"P12345678", &packed).ok().as_deref(),
            Some(text.as_bytes())
        );
        assert_eq!(frame_packed(b"short"), frame(b"short"));
        let mut bad = f.clone();
        bad[7] ^= 1;
        let err = unframe(&page(PageId(3)), &bad).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref()
                .map(|e| e.contains("page/3") && e.contains("checksum")),
            Some(true)
        );
    }

    #[test]
    fn describe_names_pages() {
        assert_eq!(describe(&legacy_image(PageId(7))), "legacy-image/7");
        assert_eq!(describe(&due_time(3, PageId(7))), "due-time/7");
        assert_eq!(describe(&history(PageId(7))), "history/7");
        assert_eq!(
            describe(&legacy_history(PageId(7), 2)),
            "legacy-history/7/2"
        );
        assert_eq!(page_of(&legacy_history(PageId(7), 2)), Some(PageId(7)));
    }
}
