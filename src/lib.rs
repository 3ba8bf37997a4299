//! Lethe: optical context-compression memory for LLM agents.
//!
//! An agent's recent turns stay as text. When they fall out of the hot window, [`Lethe::maintain`]
//! renders them to pages (`lethe-render`), encodes each page to vision tokens when a model is
//! loaded (`lethe-encoder`), and stores page, image and tokens (`lethe-memory`). As pages age, the
//! policy (`lethe-policy`) moves them down a ladder of resolution tiers; each move re-renders the
//! same page layout at the tier's smaller pixel size (or resamples the image when the text was
//! dropped), re-encodes it and swaps it in one transaction. [`Lethe::recall`] decodes pages back to
//! text with the MoE decoder (`lethe-decoder`), and [`Lethe::context`] packs recent turns and pages
//! into a token budget. Every call returns a [`Usage`] record.
//!
//! ```
//! use lethe::{Lethe, Scope, Turn};
//!
//! # fn main() -> lethe::Result<()> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! let mut memory = Lethe::builder(dir.path()).hot_turns(2).build()?;
//! let scope = Scope::session("demo");
//! for i in 0..30 {
//!     let text = format!("Message {i}: the ledger service listens on port 8443. ").repeat(10);
//!     memory.append(&scope, &[Turn::new("User", text)], i)?;
//! }
//! let report = memory.maintain(30)?;
//! assert!(report.pages_created >= 2); // old turns became pages; the 2 newest stay text
//!
//! // Recent turns as text plus pages as images within 4,000 tokens.
//! let context = memory.context(&scope, 4_000, 30)?;
//! assert!(context.turns.len() >= 2);
//! assert!(!context.pages.is_empty());
//! assert!(context.usage.text_tokens + context.usage.decoder_positions <= 4_000);
//!
//! // Without a model, recall returns the page text the store retained.
//! let recalled = memory.recall(lethe::RecallTarget::Page(context.pages[0].id), 31)?;
//! assert!(recalled.pages[0].stored_text.as_deref().unwrap_or("").contains("port 8443"));
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod builder;
mod embedded;
mod error;
mod maintain;
mod model;
mod page;
mod provider;
mod provider_context;
mod read;
mod remote;
mod report;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use builder::{LetheBuilder, Reader};
pub use error::{Error, Result};
pub use lethe_decoder::{Quantization, Sampling, DEFAULT_PROMPT};
pub use lethe_memory::{
    Compaction, Error as StoreError, PageId, PageRecord, Scope, Stats as StoreStats, TierChange,
};
pub use lethe_mode::{Mode, Tier};
pub use lethe_policy::Policy;
pub use lethe_render::{PageImage, RenderProfile, Turn};
pub use maintain::Maintenance;
pub use model::{
    OcrModel, OcrOptions, Reading, VisionTokens, GENERATION_FILE, POLICY_FILE, PROFILE_FILE,
};
pub use provider::{
    Billed, ImageRule, PayloadFormat, Provider, ProviderLayout, Providers, TierSizes,
    PROVIDERS_TOML,
};
pub use provider_context::{ProviderContext, ProviderPage, TextAccounting};
pub use read::{read_side_by_side, Context, ContextPage, Recall, RecallTarget, RecalledPage};
pub use remote::{RemoteDecoder, RemoteOptions, RemoteReading};
pub use report::{Report, TierReport};

use lethe_decoder::Tokenizer;
use lethe_memory::{
    Due, NewPage, NewTurn, PageId as StorePageId, Stamp, Store, StoreOptions, TokenCache,
    Transition,
};
use lethe_policy::PageState;
use lethe_render::{Page, Renderer};

/// Default number of most recent turns kept as text.
pub const DEFAULT_HOT_TURNS: usize = 8;

/// The store tag that holds the fingerprint of the policy that set the pages' due stamps.
const POLICY_TAG: &str = "lethe.policy";

/// What a call cost and produced: text tokens (with the tokenizer that counted them), decoder
/// positions of the pages involved, bytes written or returned, and wall time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Text tokens of the text involved.
    pub text_tokens: u64,
    /// The tokenizer that counted them (`deepseek-ocr` unless the model folder has its own).
    pub tokenizer: String,
    /// Decoder positions of the pages involved (vision tokens + row newlines + separator).
    pub decoder_positions: u64,
    /// Nominal vision tokens of the pages involved.
    pub vision_tokens: u64,
    /// Bytes written (append, maintain) or returned (context, recall).
    pub bytes: u64,
    /// Wall time in milliseconds.
    pub millis: f64,
}

/// What [`Lethe::append`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Appended {
    /// The turn indices the appended turns took in their scope: `start..end`.
    pub turns: (u64, u64),
    /// Cost of the call.
    pub usage: Usage,
}

/// The memory an agent embeds: a store of hot turns and pages, a policy, a renderer and an
/// optional model. See the crate documentation for the data flow.
pub struct Lethe {
    store: Store,
    policy: Policy,
    renderer: Renderer,
    profile: RenderProfile,
    /// `profile` serialised, as page layouts record it.
    profile_json: String,
    model: Option<OcrModel>,
    /// Reads pages in place of the model's decoder when set.
    remote: Option<RemoteDecoder>,
    tokenizer: Tokenizer,
    hot_turns: usize,
    cache_tokens: bool,
    /// Scopes appended to, recalled or pinned since the last maintenance (`None`: every scope,
    /// as after opening, when another process may have written). Behind a lock so that appends
    /// and reads share the memory across threads (`&self`).
    touched: Mutex<Option<BTreeSet<Scope>>>,
}

impl std::fmt::Debug for Lethe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lethe")
            .field("store", &self.store.path())
            .field("model", &self.model.is_some())
            .field("hot_turns", &self.hot_turns)
            .finish_non_exhaustive()
    }
}

impl Lethe {
    /// Opens (or creates) a memory at `path` with the defaults (the embedded reader).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder(path).build()
    }

    /// A builder for a memory at `path`.
    pub fn builder(path: impl AsRef<Path>) -> LetheBuilder {
        LetheBuilder::new(path.as_ref())
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The loaded model, if any.
    pub fn model(&self) -> Option<&OcrModel> {
        self.model.as_ref()
    }

    /// The remote decoder that reads pages back, if one is set.
    pub fn remote_decoder(&self) -> Option<&RemoteDecoder> {
        self.remote.as_ref()
    }

    /// The name of the tokenizer that counts text tokens.
    pub fn tokenizer_name(&self) -> &str {
        self.tokenizer.name()
    }

    /// Counts the text tokens of `text` with [`Lethe::tokenizer_name`]'s tokenizer.
    pub fn count_tokens(&self, text: &str) -> Result<u64> {
        Ok(self.tokenizer.count(text)? as u64)
    }

    /// The underlying store (read access: pages, history, stats, export).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Appends turns to `scope`'s hot tier at time `now` (seconds; any monotone clock), in one
    /// transaction, and says which turn indices they took. Safe from many threads at once: the
    /// store serialises writers, and each call's turns stay together and in order.
    pub fn append(&self, scope: &Scope, turns: &[Turn], now: u64) -> Result<Appended> {
        let started = Instant::now();
        let mut usage = self.usage();
        let new: Vec<NewTurn> = turns
            .iter()
            .map(|t| NewTurn {
                session: t.session.clone(),
                time_label: t.timestamp.clone(),
                ..NewTurn::new(t.speaker.clone(), t.text.clone(), now)
            })
            .collect();
        for t in turns {
            usage.text_tokens += self.count_tokens(&t.text)?;
            usage.bytes += (t.speaker.len() + t.text.len()) as u64;
        }
        let range = self.store.append(scope, &new)?;
        self.touch(scope);
        usage.millis = elapsed_ms(started);
        Ok(Appended {
            turns: (range.start, range.end),
            usage,
        })
    }

    /// Marks a scope for the next maintenance.
    fn touch(&self, scope: &Scope) {
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(touched) = touched.as_mut() {
            touched.insert(scope.clone());
        }
    }

    /// Pins or unpins a page (a pinned page keeps its tier, or goes to the policy's pin tier).
    pub fn pin(&self, page: PageId, pinned: bool) -> Result<()> {
        let record = self.store.set_pinned(page, pinned)?;
        self.touch(&record.scope);
        Ok(())
    }

    /// A page's tier changes, oldest first.
    pub fn history(&self, page: PageId) -> Result<Vec<TierChange>> {
        Ok(self.store.history(page)?)
    }

    /// Flushes the store to disk.
    pub fn flush(&self) -> Result<()> {
        Ok(self.store.flush()?)
    }

    /// Rewrites the store's files with only the live records: the engine keeps the space that
    /// tier changes free until then. Crash-safe; see [`Store::compact`].
    pub fn compact(&mut self) -> Result<Compaction> {
        Ok(self.store.compact()?)
    }

    fn usage(&self) -> Usage {
        Usage {
            tokenizer: self.tokenizer.name().to_string(),
            ..Usage::default()
        }
    }
}

/// FNV-1a, 64 bits: a fingerprint that stays the same across builds and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

// A memory is shared across threads (a service's handlers): reads and appends take `&self`.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Lethe>();
    shared::<OcrModel>();
};
