//! `lethe-memory`: Lethe's tiered page store.
//!
//! Recent turns of a conversation stay as text (the hot tier). Older turns are paged out into
//! *pages*: a rendered PNG at some resolution tier, an optional cache of vision tokens, the page text
//! while retained, and metadata (scope, turn range, render profile, created and last-access stamps,
//! access count, pin, checksums). As pages age, [`Store::transition`] swaps in a lower-resolution
//! image and tokens in one transaction, and every tier change is written to an audit log
//! ([`Store::history`]), so what was forgotten, and when, stays inspectable.
//!
//! The store speaks plain data: images are PNG bytes, tokens are raw tensor bytes with shape and
//! dtype, render profiles are opaque strings. It never reads a clock; stamps are parameters. The
//! engine (sled 0.34.7) sits behind the small [`engine::Engine`] trait. A store folder holds a
//! `LOCK` file (one process at a time) and the engine's `db/` folder; it records its schema version
//! and refuses others. [`Store::export`] writes a portable folder that [`Store::import`] reads back
//! exactly (layout in [`export`]).
//!
//! ```
//! use lethe_memory::{NewPage, NewTurn, Scope, Stamp, Store, Tier, Transition};
//!
//! # fn main() -> lethe_memory::Result<()> {
//! let dir = std::env::temp_dir().join(format!("lethe-memory-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let store = Store::open(&dir)?;
//! let scope = Scope::session("s1").with_user("ada");
//! let turns = store.append(&scope, &[NewTurn::new("user", "hello", 0), NewTurn::new("assistant", "hi", 1)])?;
//!
//! // Page the two turns out at tier 0 (the caller renders the PNG; here a stand-in).
//! let png = |tag: &[u8]| [&b"\x89PNG\r\n\x1a\n"[..], tag].concat();
//! let page = store.page_out(&scope, turns, NewPage {
//!     profile: "{}".into(),
//!     tier: Tier::new(0, "large"),
//!     text: "user: hello\nassistant: hi".into(),
//!     image: png(b"large"),
//!     tokens: None,
//!     at: Stamp::new(2, 10),
//!     reason: "page-out".into(),
//! })?;
//! assert!(store.hot_turns(&scope)?.is_empty());
//!
//! // Age it one tier down.
//! store.transition(page, Transition {
//!     tier: Tier::new(1, "base"),
//!     image: png(b"base"),
//!     tokens: None,
//!     reason: "age 40 turns".into(),
//!     at: Stamp::new(42, 500),
//! })?;
//! assert_eq!(store.page(page)?.tier.mode, "base");
//! assert_eq!(store.history(page)?.len(), 2);
//! let stats = store.stats()?;
//! assert_eq!(stats.pages, 1);
//! assert!(stats.bytes_on_disk > 0);
//! # drop(store);
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod engine;
mod error;
pub mod export;
pub mod keys;
pub mod sled_engine;
mod store;
mod types;

pub use error::{Error, Result};
pub use store::{Store, StoreOptions, StoreOptionsBuilder, ENGINE_DIR, LOCK_FILE, SCHEMA_VERSION};
pub use types::{
    dtype_size, Checksum, Compaction, Listing, NewPage, NewTurn, Page, PageId, PageRecord, Scope,
    Stamp, Stats, Tier, TierChange, TierStats, TokenCache, TokenMeta, Transition, TurnRange,
    TurnRecord,
};
