//! `lethe-memory`: Lethe's tiered page store.
//!
//! Recent turns of a conversation stay as text (the hot tier). Older turns are paged out into
//! *pages*: the page text while retained, a rendered PNG at some resolution tier (stored only when
//! the caller cannot redraw it from the text), an optional cache of vision tokens, and metadata
//! (scope, turn range, its [`Layout`]: render profile, size, text tokens and the turn pieces its
//! text is made of; created and last-access stamps, access count, pin, checksums, and when the
//! caller's policy next wants to look at it). As pages age,
//! [`Store::transition`] swaps in a lower-resolution image and tokens in one transaction, and every
//! tier change is written to an audit log ([`Store::history`]), so what was forgotten, and when,
//! stays inspectable. [`Store::due_pages`] and [`Store::due_by_time`] find the pages whose time
//! has come through an index, so maintenance costs what changed, not what is stored.
//!
//! The store speaks plain data: images are PNG bytes, tokens are raw tensor bytes with shape and
//! dtype, render profiles are opaque strings. It never reads a clock; stamps are parameters.
//! Records live in an engine (sled 0.34.7, behind a small private engine trait); images and
//! token caches live beside it as content-addressed files (`blobs/`), written and synced before the
//! record that names them and deleted when no record does. A store folder holds a `LOCK` file (one
//! process at a time), the engine's `db/` folder and `blobs/`; it records its schema version,
//! migrates stores of schemas 1 and 2 on open (keeping a copy of what it changes) and refuses
//! others.
//! [`Store::export`] writes a portable folder that [`Store::import`] reads back exactly (layout in
//! [`export`]).
//!
//! ```
//! use lethe_memory::{Due, Layout, Mode, NewPage, NewTurn, Piece, Scope, Stamp, Store, Tier, Transition};
//!
//! # fn main() -> lethe_memory::Result<()> {
//! let dir = std::env::temp_dir().join(format!("lethe-memory-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let store = Store::open(&dir)?;
//! let scope = Scope::session("s1").with_user("ada");
//! let turns = store.append(&scope, &[NewTurn::new("user", "hello", 0), NewTurn::new("assistant", "hi", 1)])?;
//!
//! // Page the two turns out at tier 0. The page keeps its text, the two turns' pieces, from which
//! // the caller lays the page out again, so no image needs storing; the policy wants to look at
//! // the page again at turn 12.
//! let piece = |speaker: &str, len| Piece { speaker: speaker.into(), len, ..Piece::default() };
//! let layout = Layout { pieces: vec![piece("user", 5), piece("assistant", 2)], ..Layout::default() };
//! let page = store.page_out(&scope, turns, NewPage {
//!     layout,
//!     tier: Tier::At(Mode::Large),
//!     text: "hellohi".into(),
//!     image: None,
//!     tokens: None,
//!     at: Stamp::new(2, 10),
//!     reason: "page-out".into(),
//!     due: Due { turn: Some(12), time: None },
//! })?;
//! assert!(store.hot_turns(&scope)?.is_empty());
//! assert!(store.due_pages(&scope, 11)?.is_empty());
//! assert_eq!(store.due_pages(&scope, 12)?, [page]);
//!
//! // Age it one tier down, dropping its text: now its image is stored (a stand-in PNG here).
//! let png = |tag: &[u8]| [&b"\x89PNG\r\n\x1a\n"[..], tag].concat();
//! store.transition(page, Transition {
//!     tier: Tier::At(Mode::Base),
//!     image: Some(png(b"base")),
//!     tokens: None,
//!     reason: "age 10 turns".into(),
//!     at: Stamp::new(12, 500),
//!     due: Due::NEVER,
//! })?;
//! store.drop_text(page, None, "policy drops text", Stamp::new(12, 500))?;
//! assert!(store.page(page)?.layout.pieces.is_empty());
//! assert_eq!(store.page(page)?.tier, Tier::At(Mode::Base));
//! assert_eq!(store.image(page)?, Some(png(b"base")));
//! assert_eq!(store.history(page)?.len(), 3);
//! let stats = store.stats()?;
//! assert_eq!((stats.pages, stats.blob_files), (1, 1));
//! assert!(stats.bytes_on_disk > 0);
//! # drop(store);
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod blobs;
mod compact;
mod engine;
mod error;
pub mod export;
mod keys;
mod migrate;
mod options;
mod pages;
mod sled_engine;
mod stats;
mod store;
#[cfg(test)]
mod tests;
mod turns;
mod types;

pub use blobs::{BlobId, BLOB_DIR};
pub use error::{Error, Result};
pub use options::{StoreOptions, StoreOptionsBuilder};
pub use store::{
    Store, ENGINE_DIR, LOCK_FILE, SCHEMA1_BACKUP_DIR, SCHEMA2_BACKUP_DIR, SCHEMA_VERSION,
};
pub use types::{
    dtype_size, Checksum, Compaction, Due, Layout, Listing, MadeOf, Mode, NewPage, NewTurn, Page,
    PageId, PageRecord, Piece, Scope, Stamp, Stats, Tier, TierChange, TierStats, TokenCache,
    TokenMeta, Transition, TurnRange, TurnRecord,
};
