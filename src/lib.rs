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

mod embedded;
mod error;
mod model;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use error::{Error, Result};
pub use lethe_decoder::{Quantization, Sampling};
pub use lethe_memory::{Compaction, PageId, Scope, Stats as StoreStats, TierChange};
pub use lethe_policy::Policy;
pub use lethe_render::{Mode, PageImage, RenderProfile, Turn};
pub use model::{OcrModel, OcrOptions, Reading, POLICY_FILE, PROFILE_FILE};

use lethe_decoder::Tokenizer;
use lethe_memory::{
    Due, NewPage, NewTurn, PageId as StorePageId, PageRecord, Stamp, Store, StoreOptions,
    TokenCache, Transition,
};
use lethe_policy::{PageState, Tier};
use lethe_render::{Page, Renderer};

/// Default number of most recent turns kept as text.
pub const DEFAULT_HOT_TURNS: usize = 8;

/// A run of pages chained by split turns goes out once it is this long, even with no clean cut.
const MIN_CHAINED_PAGES: usize = 3;

/// Name of the evicted pseudo-tier in the store.
const EVICTED: &str = "evicted";

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

/// What [`Lethe::maintain`] did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Maintenance {
    /// Turns moved from the hot tier into pages.
    pub paged_out_turns: u64,
    /// Pages created.
    pub pages_created: u64,
    /// Tier changes applied (each logged in the page's history).
    pub transitions: u64,
    /// Pages evicted.
    pub evicted: u64,
    /// Pages whose retained text the policy dropped (`drop_text`); they decay by resampling.
    pub texts_dropped: u64,
    /// Characters no bundled font covers, in pages rendered by this call.
    pub missing_glyphs: u64,
    /// Cost of the call.
    pub usage: Usage,
}

/// Which pages [`Lethe::recall`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecallTarget {
    /// One page.
    Page(PageId),
    /// Every page of `scope` that holds any turn of `start..end`.
    Turns {
        /// The scope.
        scope: Scope,
        /// First turn index.
        start: u64,
        /// One past the last turn index.
        end: u64,
    },
}

/// One recalled page: the decoder's reading and the retained text, each labelled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecalledPage {
    /// The page.
    pub id: PageId,
    /// Its turn range.
    pub turns: (u64, u64),
    /// Its tier (mode name, or `evicted`).
    pub tier: String,
    /// The text the decoder read from the page image (`None` without a model or when evicted).
    pub decoded_text: Option<String>,
    /// The page text the store retained (`None` when the policy dropped it).
    pub stored_text: Option<String>,
}

/// The answer of [`Lethe::recall`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recall {
    /// The pages, in page order.
    pub pages: Vec<RecalledPage>,
    /// Cost of the call.
    pub usage: Usage,
}

/// A page as it enters an agent's context.
#[derive(Debug, Clone)]
pub struct ContextPage {
    /// The page.
    pub id: PageId,
    /// The mode it is shown at (may be below its stored tier when the budget is tight).
    pub mode: Mode,
    /// Decoder positions it costs.
    pub positions: u64,
    /// The page image at that mode.
    pub image: PageImage,
    /// Its vision tokens `[positions, hidden]` when a model is loaded.
    pub tokens: Option<candle_core::Tensor>,
}

/// The answer of [`Lethe::context`]: recent turns as text plus pages within a budget.
#[derive(Debug, Clone)]
pub struct Context {
    /// Hot turns, oldest first.
    pub turns: Vec<Turn>,
    /// Pages, oldest first.
    pub pages: Vec<ContextPage>,
    /// Pages left out to fit the budget.
    pub dropped_pages: Vec<PageId>,
    /// Cost: text tokens of the turns, decoder positions of the pages.
    pub usage: Usage,
}

/// Per-tier figures of [`Lethe::report`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TierReport {
    /// Tier (mode name, `evicted`, or `hot` for turns still kept as text).
    pub tier: String,
    /// Pages at this tier (turns, for `hot`).
    pub pages: u64,
    /// Text tokens of their text.
    pub text_tokens: u64,
    /// Decoder positions of the pages.
    pub decoder_positions: u64,
    /// Nominal vision tokens.
    pub vision_tokens: u64,
    /// Text tokens per decoder position.
    pub ratio_positions: f64,
    /// Text tokens per nominal vision token.
    pub ratio_vision_tokens: f64,
    /// Bytes of images, token caches and text stored for the tier.
    pub bytes: u64,
    /// Of which stored PNGs (pages that keep their text store none: they are redrawn).
    pub image_bytes: u64,
    /// Of which vision-token caches.
    pub token_bytes: u64,
    /// Of which text (retained page text, or the hot turns).
    pub text_bytes: u64,
}

/// The whole store by tier, with the store's own bytes on disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// The tokenizer that counted text tokens.
    pub tokenizer: String,
    /// One row per tier in ladder order, then `evicted`, then `hot`.
    pub tiers: Vec<TierReport>,
    /// Totals over every page and hot turn.
    pub total: TierReport,
    /// Bytes the store occupies on disk.
    pub bytes_on_disk: u64,
    /// Pages whose records failed their checksum or could not be read.
    pub corrupt_pages: u64,
    /// The store's own counts: live bytes, bytes on disk, and what they are made of.
    pub store: StoreStats,
}

/// What the facade stores beside a page (in the store's opaque profile field): the render profile
/// and the page's source (the bytes of each turn it shows), from which the renderer lays out exactly
/// the same page again when a tier change re-renders it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PageMeta {
    profile: RenderProfile,
    /// The turn pieces the page shows, in order (dropped with the text).
    source: Option<Vec<Turn>>,
    /// Logical page size `[width, height]` (gundam tiling depends on it).
    size: [f32; 2],
    /// Text tokens of the page text, counted when the page was made.
    text_tokens: u64,
}

impl PageMeta {
    /// Decoder positions and nominal vision tokens of the page at `mode`.
    fn cost(&self, mode: Mode) -> (u64, u64) {
        let grid = match mode {
            Mode::Gundam => lethe_render::mode::gundam_grid(
                self.size[0].round() as u32,
                self.size[1].round() as u32,
            ),
            _ => None,
        };
        (
            mode.decoder_positions(grid) as u64,
            mode.vision_tokens(grid) as u64,
        )
    }
}

/// The turn pieces a page shows, as turns a renderer paginates back into that one page.
fn page_source(page: &Page, turns: &[Turn]) -> Vec<Turn> {
    page.segments
        .iter()
        .map(|seg| {
            let turn = &turns[seg.turn];
            let mut piece = Turn::new(
                turn.speaker.clone(),
                turn.text[seg.start..seg.end].to_string(),
            );
            piece.continued = seg.start > 0 || turn.continued;
            piece.session.clone_from(&turn.session);
            piece.timestamp.clone_from(&turn.timestamp);
            piece
        })
        .collect()
}

/// Which model reads pages back (and encodes them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Reader {
    /// The reader embedded in the build ([`OcrModel::embedded`]): the default.
    #[default]
    Embedded,
    /// A checkpoint folder, such as the real DeepSeek-OCR ([`OcrModel::load`]).
    Folder(PathBuf),
    /// No model: pages are rendered, stored and counted, but not encoded or read back.
    None,
}

impl Reader {
    /// Loads the model this names (`None` for [`Reader::None`]).
    pub fn load(&self, options: OcrOptions) -> Result<Option<OcrModel>> {
        Ok(match self {
            Reader::Embedded => Some(OcrModel::embedded(options)?),
            Reader::Folder(dir) => Some(OcrModel::load(dir, options)?),
            Reader::None => None,
        })
    }
}

/// Builder of a [`Lethe`] memory.
#[derive(Debug)]
pub struct LetheBuilder {
    path: PathBuf,
    policy: Option<Policy>,
    profile: Option<RenderProfile>,
    reader: Reader,
    ocr: OcrOptions,
    hot_turns: usize,
    retain_text: bool,
    cache_tokens: bool,
    wait: Option<std::time::Duration>,
}

impl LetheBuilder {
    /// The forgetting policy (default: [`Policy::default`], documented in `policies/default.toml`).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The render profile for new pages (default: the reader's declared profile, else
    /// [`RenderProfile::default`]).
    pub fn profile(mut self, profile: RenderProfile) -> Self {
        self.profile = Some(profile);
        self
    }

    /// A DeepSeek-OCR checkpoint folder (`config.json`, `*.safetensors`, `tokenizer.json`) to
    /// encode pages and decode them back, instead of the embedded reader.
    pub fn model(mut self, dir: impl Into<PathBuf>) -> Self {
        self.reader = Reader::Folder(dir.into());
        self
    }

    /// Which reader encodes pages and decodes them back (default [`Reader::Embedded`]).
    pub fn reader(mut self, reader: Reader) -> Self {
        self.reader = reader;
        self
    }

    /// Options of the model (prompt, token limit, quantisation).
    pub fn ocr_options(mut self, options: OcrOptions) -> Self {
        self.ocr = options;
        self
    }

    /// How many of the most recent turns stay as text (default [`DEFAULT_HOT_TURNS`]).
    pub fn hot_turns(mut self, turns: usize) -> Self {
        self.hot_turns = turns;
        self
    }

    /// Whether pages keep their text beside the image (default true).
    pub fn retain_text(mut self, retain: bool) -> Self {
        self.retain_text = retain;
        self
    }

    /// Whether every page's vision tokens are encoded and stored as the page is written and each
    /// time it changes tier (default true: [`Lethe::context`] and recall then skip the encoder).
    /// Off, pages are encoded when they are read, and writing them costs no encoder time.
    pub fn cache_tokens(mut self, cache: bool) -> Self {
        self.cache_tokens = cache;
        self
    }

    /// When another process has the store open, wait up to this long for it (default: fail at
    /// once with an error that names the holder's PID).
    pub fn wait(mut self, wait: Option<std::time::Duration>) -> Self {
        self.wait = wait;
        self
    }

    /// Opens (or creates) the store and loads the model, if any.
    pub fn build(self) -> Result<Lethe> {
        let store = Store::open_with(
            StoreOptions::builder()
                .path(&self.path)
                .retain_text(self.retain_text)
                .wait(self.wait)
                .build()?,
        )?;
        let model = self.reader.load(self.ocr)?;
        // Explicit settings win; then what the reader declares; then the defaults.
        let profile = self
            .profile
            .or_else(|| model.as_ref().and_then(|m| m.render_profile().cloned()))
            .unwrap_or_default();
        let policy = self
            .policy
            .or_else(|| model.as_ref().and_then(|m| m.policy().cloned()))
            .unwrap_or_default();
        // Due stamps were set by the policy in force when they were written: under another policy
        // every page is looked at again once.
        let fingerprint = format!("{:016x}", fnv1a(policy.to_toml()?.as_bytes()));
        if store.tag(POLICY_TAG)?.as_deref() != Some(fingerprint.as_str()) {
            store.mark_all_due()?;
            store.set_tag(POLICY_TAG, &fingerprint)?;
        }
        let renderer = Renderer::builder().profile(profile.clone()).build()?;
        // Text tokens are counted with the DeepSeek-OCR tokenizer, so ratios compare across
        // readers; a checkpoint folder with its own tokenizer counts with that one.
        let tokenizer = match &model {
            Some(m) if !m.is_embedded() => m.text_tokenizer()?,
            _ => Tokenizer::deepseek_ocr()?,
        };
        Ok(Lethe {
            store,
            policy,
            renderer,
            profile,
            model,
            tokenizer,
            hot_turns: self.hot_turns,
            cache_tokens: self.cache_tokens,
            touched: None,
        })
    }
}

/// The memory an agent embeds: a store of hot turns and pages, a policy, a renderer and an
/// optional model. See the crate documentation for the data flow.
pub struct Lethe {
    store: Store,
    policy: Policy,
    renderer: Renderer,
    profile: RenderProfile,
    model: Option<OcrModel>,
    tokenizer: Tokenizer,
    hot_turns: usize,
    cache_tokens: bool,
    /// Scopes appended to, recalled or pinned since the last maintenance (`None`: every scope,
    /// as after opening, when another process may have written).
    touched: Option<BTreeSet<Scope>>,
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
        LetheBuilder {
            path: path.as_ref().to_path_buf(),
            policy: None,
            profile: None,
            reader: Reader::default(),
            ocr: OcrOptions::default(),
            hot_turns: DEFAULT_HOT_TURNS,
            retain_text: true,
            cache_tokens: true,
            wait: None,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The loaded model, if any.
    pub fn model(&self) -> Option<&OcrModel> {
        self.model.as_ref()
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

    /// Appends turns to `scope`'s hot tier at time `now` (seconds; any monotone clock).
    pub fn append(&mut self, scope: &Scope, turns: &[Turn], now: u64) -> Result<Usage> {
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
        self.store.append(scope, &new)?;
        self.touch(scope);
        usage.millis = elapsed_ms(started);
        Ok(usage)
    }

    /// Marks a scope for the next maintenance.
    fn touch(&mut self, scope: &Scope) {
        if let Some(touched) = &mut self.touched {
            touched.insert(scope.clone());
        }
    }

    /// Pages out turns older than the hot window, then applies the policy to the pages that are
    /// due: a tier change re-renders (or resamples) the page at the new tier's mode, re-encodes it
    /// when tokens are cached, and swaps image and tokens in one transaction. `now` is the current
    /// time in seconds.
    ///
    /// Its cost follows what changed, not what is stored: only scopes with new turns (or pages
    /// read or pinned) since the last call are looked at, and only pages whose due turn or time
    /// has come, found through the store's due index. Each decided page gets its next due stamp
    /// from [`Policy::due`].
    pub fn maintain(&mut self, now: u64) -> Result<Maintenance> {
        let started = Instant::now();
        let mut done = Maintenance {
            usage: self.usage(),
            ..Maintenance::default()
        };
        let scopes = match self.touched.replace(BTreeSet::new()) {
            Some(touched) => touched.into_iter().collect(),
            None => self.store.scopes()?,
        };
        let mut due: BTreeSet<StorePageId> = BTreeSet::new();
        for scope in &scopes {
            let hot = self.store.hot_turns(scope)?;
            if hot.len() > self.hot_turns {
                let old = &hot[..hot.len() - self.hot_turns];
                self.page_out(scope, old, now, &mut done)?;
            }
            let turn = self.store.next_turn(scope)?;
            due.extend(self.store.due_pages(scope, turn)?);
        }
        due.extend(self.store.due_by_time(now)?);
        for id in due {
            let record = self.store.page(id)?;
            self.maintain_page(record, now, &mut done)?;
        }
        done.usage.millis = elapsed_ms(started);
        Ok(done)
    }

    /// Decides one due page: moves it, drops its text, and sets when it is next due.
    fn maintain_page(
        &mut self,
        record: PageRecord,
        now: u64,
        done: &mut Maintenance,
    ) -> Result<()> {
        let turn = self.store.next_turn(&record.scope)?;
        let stamp = Stamp::new(turn, now);
        let mut state = self.page_state(&record)?;
        let decision = self.policy.decide(&state, now, turn)?;
        if decision.changed() {
            state.set_tier(decision.tier);
        }
        let next = self.due(&state, now, turn)?;
        let record = if decision.changed() {
            self.move_page(
                &record,
                decision.tier,
                &decision.reason.text,
                stamp,
                next,
                done,
            )?
        } else if record.due != next {
            self.store.set_due(record.id, next)?
        } else {
            record
        };
        // After any re-render, which still had the text to draw from.
        if decision.drop_text && record.text.is_some() {
            let mut meta = page_meta(&record)?;
            // A page drawn from its text needs its image stored before the text goes.
            let image = match (&record.image_blob, decision.tier) {
                (None, Tier::Level(_)) => {
                    let mode = Mode::from_str(&record.tier.mode)?;
                    Some(self.image_at(&record, mode)?.to_png()?)
                }
                _ => None,
            };
            meta.source = None;
            let profile = serde_json::to_string(&meta)
                .map_err(|e| Error::Invalid(format!("page metadata: {e}")))?;
            let reason = format!(
                "policy drops page text at {} (drop_text = {:?})",
                self.policy.ladder().name(decision.tier),
                self.policy
                    .drop_text_tier()
                    .map(|t| self.policy.ladder().name(t))
                    .unwrap_or_default(),
            );
            self.store
                .drop_text(record.id, Some(profile), image, &reason, stamp)?;
            done.texts_dropped += 1;
        }
        Ok(())
    }

    /// When the policy next wants to look at a page in `state`, as the store indexes it.
    fn due(&self, state: &PageState, now: u64, turn: u64) -> Result<Due> {
        let due = self.policy.due(state, now, turn)?;
        Ok(Due {
            turn: due.turn,
            time: due.time,
        })
    }

    /// Reads pages back: the decoder's text (when a model is loaded and the page is not evicted)
    /// and the retained text, each labelled. Counts as an access of each page (reinforcement).
    pub fn recall(&mut self, target: RecallTarget, now: u64) -> Result<Recall> {
        let started = Instant::now();
        let mut usage = self.usage();
        let records: Vec<PageRecord> = match &target {
            RecallTarget::Page(id) => vec![self.store.page(*id)?],
            RecallTarget::Turns { scope, start, end } => self
                .store
                .pages(Some(scope))?
                .pages
                .into_iter()
                .filter(|p| p.turns.start < *end && *start < p.turns.end)
                .collect(),
        };
        if records.is_empty() {
            return Err(Error::Invalid(format!(
                "no page holds the turns asked for ({target:?})"
            )));
        }
        let mut pages = Vec::with_capacity(records.len());
        for record in records {
            let turn = self.store.next_turn(&record.scope)?;
            let evicted = record.tier.mode == EVICTED;
            let decoded_text = match (self.model.is_some(), evicted) {
                (true, false) => {
                    let mode = Mode::from_str(&record.tier.mode)?;
                    let image = self.image_at(&record, mode)?;
                    let cache = self.store.tokens(record.id)?;
                    let Some(model) = &mut self.model else {
                        unreachable!("checked above")
                    };
                    let tokens = match &cache {
                        Some(cache) => Some(model::tokens_from_cache(cache, model.device())?),
                        None => None,
                    };
                    let out = model.read(&image, mode, tokens.as_ref())?;
                    usage.decoder_positions += out.positions as u64;
                    Some(out.text)
                }
                _ => None,
            };
            let meta = page_meta(&record)?;
            usage.text_tokens += meta.text_tokens;
            usage.bytes += record.text.as_ref().map_or(0, |t| t.len() as u64)
                + decoded_text.as_ref().map_or(0, |t| t.len() as u64);
            self.store.record_access(record.id, Stamp::new(turn, now))?;
            self.touch(&record.scope);
            pages.push(RecalledPage {
                id: record.id,
                turns: (record.turns.start, record.turns.end),
                tier: record.tier.mode.clone(),
                decoded_text,
                stored_text: record.text.clone(),
            });
        }
        usage.millis = elapsed_ms(started);
        Ok(Recall { pages, usage })
    }

    /// Recent turns of `scope` as text plus its pages as images (and vision tokens when a model
    /// is loaded), within `budget` tokens: text tokens of the turns plus decoder positions of the
    /// pages. When the pages do not fit at their stored tiers, the policy's budget fit shows some
    /// at lower modes (rendered on the fly; the store is not changed) or leaves them out.
    pub fn context(&mut self, scope: &Scope, budget: u64, now: u64) -> Result<Context> {
        let started = Instant::now();
        let mut usage = self.usage();
        let hot = self.store.hot_turns(scope)?;
        let mut turns = Vec::with_capacity(hot.len());
        for t in &hot {
            usage.text_tokens += self.count_tokens(&t.text)?;
            turns.push(turn_of(t));
        }
        if usage.text_tokens > budget {
            return Err(Error::Invalid(format!(
                "the {} hot turns alone need {} text tokens, more than the budget of {budget}",
                hot.len(),
                usage.text_tokens
            )));
        }
        let records: Vec<PageRecord> = self
            .store
            .pages(Some(scope))?
            .pages
            .into_iter()
            .filter(|p| p.tier.mode != EVICTED)
            .collect();
        let states = records
            .iter()
            .map(|r| self.page_state(r))
            .collect::<Result<Vec<_>>>()?;
        let turn = self.store.next_turn(scope)?;
        let fit = self
            .policy
            .fit_budget(&states, budget - usage.text_tokens, now, turn)?;
        let mut pages = Vec::new();
        let mut dropped_pages = Vec::new();
        for (record, decision) in records.iter().zip(&fit.decisions) {
            let Tier::Level(_) = decision.tier else {
                dropped_pages.push(record.id);
                continue;
            };
            let mode = Mode::from_str(self.policy.ladder().name(decision.tier))?;
            // At its stored tier a page's image and (cached) tokens are read back; below it, the
            // page is rendered and encoded on the fly.
            let at_stored_tier = record.tier.mode == mode.name();
            let image = self.image_at(record, mode)?;
            let cached = match (&self.model, at_stored_tier) {
                (Some(_), true) => self.store.tokens(record.id)?,
                _ => None,
            };
            let tokens = match (&self.model, cached) {
                (Some(model), Some(cache)) => {
                    Some(model::tokens_from_cache(&cache, model.device())?)
                }
                (Some(model), None) => Some(model.encode(&image, mode)?),
                (None, _) => None,
            };
            let positions = u64::from(self.policy.ladder().positions(decision.tier));
            usage.decoder_positions += positions;
            usage.vision_tokens += mode.vision_tokens(None) as u64;
            usage.bytes += image.pixels.len() as u64;
            pages.push(ContextPage {
                id: record.id,
                mode,
                positions,
                image,
                tokens,
            });
        }
        usage.millis = elapsed_ms(started);
        Ok(Context {
            turns,
            pages,
            dropped_pages,
            usage,
        })
    }

    /// Pins or unpins a page (a pinned page keeps its tier, or goes to the policy's pin tier).
    pub fn pin(&mut self, page: PageId, pinned: bool) -> Result<()> {
        let record = self.store.set_pinned(page, pinned)?;
        self.touch(&record.scope);
        Ok(())
    }

    /// A page's tier changes, oldest first.
    pub fn history(&self, page: PageId) -> Result<Vec<TierChange>> {
        Ok(self.store.history(page)?)
    }

    /// Pages, text tokens, decoder positions, compression ratios and bytes per tier.
    pub fn report(&self) -> Result<Report> {
        let ladder = self.policy.ladder();
        let mut rows: Vec<TierReport> = ladder
            .levels()
            .iter()
            .map(|l| TierReport {
                tier: l.name.clone(),
                ..TierReport::default()
            })
            .collect();
        rows.push(TierReport {
            tier: EVICTED.into(),
            ..TierReport::default()
        });
        let listing = self.store.pages(None)?;
        for record in &listing.pages {
            let Some(row) = rows.iter_mut().find(|r| r.tier == record.tier.mode) else {
                continue;
            };
            let meta = page_meta(record)?;
            row.pages += 1;
            row.text_tokens += meta.text_tokens;
            if let Ok(mode) = Mode::from_str(&record.tier.mode) {
                let (positions, vision) = meta.cost(mode);
                row.decoder_positions += positions;
                row.vision_tokens += vision;
            }
            row.image_bytes += record.image_len;
            row.token_bytes += record.tokens.as_ref().map_or(0, |t| t.len);
            row.text_bytes += record.text.as_ref().map_or(0, |t| t.len() as u64);
        }
        let mut hot = TierReport {
            tier: "hot".into(),
            ..TierReport::default()
        };
        for scope in self.store.scopes()? {
            for t in self.store.hot_turns(&scope)? {
                hot.pages += 1;
                hot.text_tokens += self.count_tokens(&t.text)?;
                hot.text_bytes += (t.speaker.len() + t.text.len()) as u64;
            }
        }
        // Hot turns cost their text tokens in context.
        hot.decoder_positions = hot.text_tokens;
        rows.push(hot);
        let mut total = TierReport {
            tier: "total".into(),
            ..TierReport::default()
        };
        for row in &mut rows {
            row.bytes = row.image_bytes + row.token_bytes + row.text_bytes;
            total.image_bytes += row.image_bytes;
            total.token_bytes += row.token_bytes;
            total.text_bytes += row.text_bytes;
            row.ratio_positions = ratio(row.text_tokens, row.decoder_positions);
            row.ratio_vision_tokens = ratio(row.text_tokens, row.vision_tokens);
            total.pages += row.pages;
            total.text_tokens += row.text_tokens;
            total.decoder_positions += row.decoder_positions;
            total.vision_tokens += row.vision_tokens;
            total.bytes += row.bytes;
        }
        total.ratio_positions = ratio(total.text_tokens, total.decoder_positions);
        total.ratio_vision_tokens = ratio(total.text_tokens, total.vision_tokens);
        let stats = self.store.stats()?;
        Ok(Report {
            tokenizer: self.tokenizer_name().to_string(),
            tiers: rows,
            total,
            bytes_on_disk: stats.bytes_on_disk,
            corrupt_pages: stats.corrupt,
            store: stats,
        })
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

    /// Renders `turns` (hot records of one scope, oldest first) to pages and moves them out of
    /// the hot tier. Pages that share a turn (a long turn spanning pages) move together as a run,
    /// and the last run, whose last page may not be full yet, stays hot until more turns arrive.
    fn page_out(
        &mut self,
        scope: &Scope,
        turns: &[lethe_memory::TurnRecord],
        now: u64,
        done: &mut Maintenance,
    ) -> Result<()> {
        // A turn without a session continues the one before it, as the renderer draws it, so
        // that each page's source lays out as the same page again.
        let mut session = None;
        let input: Vec<Turn> = turns
            .iter()
            .map(|t| {
                let mut turn = turn_of(t);
                if turn.session.is_none() {
                    turn.session.clone_from(&session);
                }
                session.clone_from(&turn.session);
                turn
            })
            .collect();
        let mut groups: Vec<Vec<Page>> = Vec::new();
        for page in self.renderer.paginate(&input)? {
            match groups.last_mut() {
                Some(group) if page.continues_turn => group.push(page),
                _ => groups.push(vec![page]),
            }
        }
        // Hold back the last run, whose last page may not be full, until more turns arrive; a
        // single run (turns spanning pages all the way) goes out once it fills a few pages.
        if groups.len() > 1 || groups.first().is_some_and(|g| g.len() < MIN_CHAINED_PAGES) {
            groups.pop();
        }
        let top = self.policy.ladder().top();
        let mode = Mode::from_str(self.policy.ladder().name(top))?;
        let turn = self.store.next_turn(scope)?;
        let stamp = Stamp::new(turn, now);
        for group in groups {
            let start = turns[group[0].turns.start].index;
            let end = turns[group[group.len() - 1].turns.end - 1].index + 1;
            let mut new_pages = Vec::with_capacity(group.len());
            // A page that keeps its text is redrawn from it when needed: rendered now only to be
            // encoded, and stored as a PNG only when the store drops text.
            let keeps_text = self.store.options().retain_text();
            for page in group {
                let image = (!keeps_text || self.caches_tokens())
                    .then(|| self.renderer.rasterize(&page, mode));
                let png = match &image {
                    Some(image) if !keeps_text => Some(image.to_png()?),
                    _ => None,
                };
                let tokens = match &image {
                    Some(image) => self.encode_cache(image, mode)?,
                    None => None,
                };
                let meta = PageMeta {
                    profile: self.profile.clone(),
                    source: Some(page_source(&page, &input)),
                    size: [page.width, page.height],
                    text_tokens: self.count_tokens(&page.text)?,
                };
                let (positions, vision) = meta.cost(mode);
                done.missing_glyphs += page.missing_glyphs as u64;
                done.usage.text_tokens += meta.text_tokens;
                done.usage.decoder_positions += positions;
                done.usage.vision_tokens += vision;
                done.usage.bytes += png.as_ref().map_or(0, |p| p.len() as u64);
                let state = PageState::new(
                    0,
                    turn,
                    now,
                    top,
                    meta.text_tokens.min(u64::from(u32::MAX)) as u32,
                );
                new_pages.push(NewPage {
                    profile: serde_json::to_string(&meta)
                        .map_err(|e| Error::Invalid(format!("page metadata: {e}")))?,
                    tier: lethe_memory::Tier::new(tier_index(top), mode.name()),
                    text: page.text,
                    image: png,
                    tokens,
                    at: stamp,
                    reason: format!("paged out of the hot window at turn {turn}"),
                    due: self.due(&state, now, turn)?,
                });
            }
            let ids = self
                .store
                .page_out_many(scope, (start..end).into(), new_pages)?;
            done.pages_created += ids.len() as u64;
            done.paged_out_turns += end - start;
        }
        Ok(())
    }

    /// Applies one tier change to a stored page; returns the page as it now is.
    fn move_page(
        &mut self,
        record: &PageRecord,
        tier: Tier,
        reason: &str,
        at: Stamp,
        due: Due,
        done: &mut Maintenance,
    ) -> Result<PageRecord> {
        let (store_tier, image, tokens) = match tier {
            Tier::Level(level) => {
                let mode = Mode::from_str(self.policy.ladder().name(tier))?;
                // A page that keeps its text is redrawn when needed; only the encoder, or a page
                // without its text, needs the image now.
                let redrawable = record.text.is_some() && page_meta(record)?.source.is_some();
                let image = (!redrawable || self.caches_tokens())
                    .then(|| self.image_at(record, mode))
                    .transpose()?;
                let tokens = match &image {
                    Some(image) => self.encode_cache(image, mode)?,
                    None => None,
                };
                let png = match &image {
                    Some(image) if !redrawable => Some(image.to_png()?),
                    _ => None,
                };
                done.usage.decoder_positions += mode.decoder_positions(None) as u64;
                (
                    lethe_memory::Tier::new(level as u8, mode.name()),
                    png,
                    tokens,
                )
            }
            Tier::Evicted => {
                done.evicted += 1;
                let index = self.policy.ladder().len() as u8;
                (lethe_memory::Tier::new(index, EVICTED), None, None)
            }
        };
        done.usage.bytes += image.as_ref().map_or(0, |i| i.len() as u64);
        let moved = self.store.transition(
            record.id,
            Transition {
                tier: store_tier,
                image,
                tokens,
                reason: reason.to_string(),
                at,
                due,
            },
        )?;
        done.transitions += 1;
        Ok(moved)
    }

    /// The page image at `mode`: a vector re-render of the page's layout when its text is
    /// retained (exactly the image drawn at page-out: the renderer's golden hashes hold it to
    /// that), else the stored image, resampled when `mode` is not its tier's.
    fn image_at(&self, record: &PageRecord, mode: Mode) -> Result<PageImage> {
        let meta = page_meta(record)?;
        if let (Some(source), Some(_)) = (&meta.source, &record.text) {
            let renderer = if meta.profile == self.profile {
                &self.renderer
            } else {
                &Renderer::builder().profile(meta.profile.clone()).build()?
            };
            // The source lays out as the same page again (a split last turn may leave a
            // trailing page with no turn text, only a running header); anything else would
            // re-render different text.
            let pages = renderer.paginate(source)?;
            let page = pages
                .first()
                .filter(|p| Some(&p.text) == record.text.as_ref())
                .filter(|_| {
                    pages[1..]
                        .iter()
                        .flat_map(|p| &p.segments)
                        .all(|s| s.start == s.end)
                })
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "page {}: its source no longer lays out as the stored page ({} pages)",
                        record.id,
                        pages.len()
                    ))
                })?;
            return Ok(renderer.rasterize(page, mode));
        }
        let png = self.store.image(record.id)?.ok_or_else(|| {
            Error::Invalid(format!(
                "page {} was evicted and its text dropped: nothing is left to render",
                record.id
            ))
        })?;
        let image = PageImage::from_png(&png)?;
        Ok(if record.tier.mode == mode.name() {
            image
        } else {
            image.resample(mode.page_px())
        })
    }

    /// Whether page writes encode vision tokens (a model is loaded and caching is on).
    fn caches_tokens(&self) -> bool {
        self.model.is_some() && self.cache_tokens
    }

    fn encode_cache(&mut self, image: &PageImage, mode: Mode) -> Result<Option<TokenCache>> {
        match &mut self.model {
            Some(model) if self.cache_tokens => {
                let tokens = model.encode(image, mode)?;
                Ok(Some(model::tokens_to_cache(&tokens)?))
            }
            _ => Ok(None),
        }
    }

    fn page_state(&self, record: &PageRecord) -> Result<PageState> {
        let tier = if record.tier.mode == EVICTED {
            Tier::Evicted
        } else {
            self.policy
                .ladder()
                .tier(&record.tier.mode)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "page {} is at tier {:?}, which the policy's ladder does not have",
                        record.id, record.tier.mode
                    ))
                })?
        };
        let meta = page_meta(record)?;
        let mut state = PageState::new(
            record.id.0,
            record.created.turn,
            record.created.time,
            tier,
            meta.text_tokens.min(u64::from(u32::MAX)) as u32,
        );
        state.last_access_turn = record.last_access.turn;
        state.last_access_at = record.last_access.time;
        state.access_count = record.access_count.min(u64::from(u32::MAX)) as u32;
        state.pinned = record.pinned;
        // The policy compares access counts: `tier_access_count` is the count when the page
        // reached its tier. The record stamps its last tier change (stores of schema 1 did not:
        // their history does), so an access after it means at least one access since.
        let last_change = match record.tier_since {
            Some(at) => at,
            None => self
                .store
                .history(record.id)?
                .last()
                .map(|c| c.at)
                .unwrap_or(record.created),
        };
        state.tier_access_count = if record.last_access > last_change {
            state.access_count.saturating_sub(1)
        } else {
            state.access_count
        };
        Ok(state)
    }
}

/// A hot turn as the renderer takes it: speaker, text, session and time label.
fn turn_of(t: &lethe_memory::TurnRecord) -> Turn {
    let mut turn = Turn::new(t.speaker.clone(), t.text.clone());
    turn.session.clone_from(&t.session);
    turn.timestamp.clone_from(&t.time_label);
    turn
}

fn page_meta(record: &PageRecord) -> Result<PageMeta> {
    serde_json::from_str(&record.profile).map_err(|source| Error::PageMeta {
        page: record.id,
        source,
    })
}

fn tier_index(tier: Tier) -> u8 {
    match tier {
        Tier::Level(i) => i as u8,
        Tier::Evicted => u8::MAX,
    }
}

/// FNV-1a, 64 bits: a fingerprint that stays the same across builds and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}
