//! Reading pages back: `Lethe::recall` (the decoder's text beside the retained text) and
//! `Lethe::context` (recent turns as text plus pages within a budget), and the page image at a mode.

use crate::page::{cost, turn_of, Relaid};
use crate::*;

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
    /// Its tier (written as the mode's name, or `evicted`).
    pub tier: Tier,
    /// The text the decoder read from the page image (`None` without a model or remote decoder,
    /// or when evicted).
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
    pub tokens: Option<VisionTokens>,
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

impl Lethe {
    /// Reads pages back: the decoder's text (the remote decoder's when one is set, else the
    /// loaded model's; none for an evicted page) and the retained text, each labelled. Counts as
    /// an access of each page (reinforcement), recorded once every page is read: a failed
    /// reading records none. With a model on the CPU, a range's pages are read side by side
    /// ([`read_side_by_side`]).
    pub fn recall(&self, target: RecallTarget, now: u64) -> Result<Recall> {
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
        // A model on the CPU reads the pages side by side (a small reader's decode step is too
        // little work to split over the cores); a remote decoder or a GPU model reads them in
        // turn (network waits would hold rayon's workers; each reading's cache would sit on the
        // device). The store's bookkeeping then runs in page order, once every page is read.
        let side_by_side =
            self.remote.is_none() && self.model.as_ref().is_some_and(|m| m.device().is_cpu());
        let lanes = if side_by_side {
            model::readings_at_once()
        } else {
            1
        };
        let readings = side_by_side_in(&records, lanes, |record| self.read_record(record))?;
        let mut pages = Vec::with_capacity(records.len());
        for (record, (decoded_text, positions, stored_text)) in records.iter().zip(readings) {
            let turn = self.store.next_turn(&record.scope)?;
            usage.decoder_positions += positions;
            usage.text_tokens += record.layout.text_tokens;
            usage.bytes += stored_text.as_ref().map_or(0, |t| t.len() as u64)
                + decoded_text.as_ref().map_or(0, |t| t.len() as u64);
            self.store.record_access(record.id, Stamp::new(turn, now))?;
            self.touch(&record.scope);
            pages.push(RecalledPage {
                id: record.id,
                turns: (record.turns.start, record.turns.end),
                tier: record.tier,
                decoded_text,
                stored_text,
            });
        }
        usage.millis = elapsed_ms(started);
        Ok(Recall { pages, usage })
    }

    /// One page of [`Lethe::recall`]: the decoder's text (none without a decoder, or for an
    /// evicted page), the decoder positions it cost, and the text as laid out on the page.
    fn read_record(&self, record: &PageRecord) -> Result<(Option<String>, u64, Option<String>)> {
        // Laid out once: it gives both the image the model reads and the text shown.
        let relaid = self.relayout(record)?;
        let (decoded_text, positions) = match (&self.remote, &self.model, record.tier) {
            (Some(remote), _, Tier::At(mode)) => {
                let png = self.image_from(record, relaid.as_ref(), mode)?.to_png()?;
                let reading = remote.read_image(&png, "image/png")?;
                (Some(reading.text), cost(&record.layout, mode).0)
            }
            (None, Some(model), Tier::At(mode)) => {
                let image = self.image_from(record, relaid.as_ref(), mode)?;
                let tokens = match self.store.tokens(record.id)? {
                    Some(cache) => Some(model::tokens_from_cache(&cache, model.device())?),
                    None => None,
                };
                let out = model.read(&image, mode, tokens.as_ref())?;
                (Some(out.text), out.positions as u64)
            }
            _ => (None, 0),
        };
        // The text as laid out on the page; a page made without pieces shows its text as is.
        let stored_text = match relaid {
            Some(relaid) => Some(relaid.page.text),
            None => record.text.clone(),
        };
        Ok((decoded_text, positions, stored_text))
    }

    /// Recent turns of `scope` as text plus its pages as images (and vision tokens when a model
    /// is loaded), within `budget` tokens: text tokens of the turns plus decoder positions of the
    /// pages. When the pages do not fit at their stored tiers, the policy's budget fit shows some
    /// at lower modes (rendered on the fly; the store is not changed) or leaves them out.
    pub fn context(&self, scope: &Scope, budget: u64, now: u64) -> Result<Context> {
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
            .filter(|p| !p.tier.is_evicted())
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
            let Tier::At(mode) = decision.tier else {
                dropped_pages.push(record.id);
                continue;
            };
            // At its stored tier a page's image and (cached) tokens are read back; below it, the
            // page is rendered and encoded on the fly.
            let at_stored_tier = record.tier == decision.tier;
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
            let (positions, vision) = cost(&record.layout, mode);
            usage.decoder_positions += positions;
            usage.vision_tokens += vision;
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

    /// A page's image at `mode` (its own tier's when `None`), as [`Lethe::context`] shows it.
    /// Does not count as an access. Fails for an unknown page, and for an evicted page asked
    /// for at its own tier.
    pub fn page_image(&self, page: PageId, mode: Option<Mode>) -> Result<PageImage> {
        let record = self.store.page(page)?;
        let mode = match (mode, record.tier) {
            (Some(mode), _) | (None, Tier::At(mode)) => mode,
            (None, Tier::Evicted) => {
                return Err(Error::Invalid(format!(
                    "page {page} is evicted: ask for its image at a mode"
                )))
            }
        };
        self.image_at(&record, mode)
    }

    /// The page image at `mode`: a vector re-render of the page's layout when its text is
    /// retained (exactly the image drawn at page-out: the renderer's golden hashes hold it to
    /// that), else the stored image, resampled when `mode` is not its tier's.
    pub(crate) fn image_at(&self, record: &PageRecord, mode: Mode) -> Result<PageImage> {
        let relaid = self.relayout(record)?;
        self.image_from(record, relaid.as_ref(), mode)
    }

    /// [`Lethe::image_at`] for a page already laid out again (`None`: it has no pieces).
    pub(crate) fn image_from(
        &self,
        record: &PageRecord,
        relaid: Option<&Relaid>,
        mode: Mode,
    ) -> Result<PageImage> {
        if let Some(relaid) = relaid {
            return Ok(relaid.rasterize(&self.renderer, mode));
        }
        let png = self.store.image(record.id)?.ok_or_else(|| {
            Error::Invalid(format!(
                "page {} was evicted and its text dropped: nothing is left to render",
                record.id
            ))
        })?;
        let image = PageImage::from_png(&png)?;
        Ok(if record.tier == Tier::At(mode) {
            image
        } else {
            image.resample(mode.page_px())
        })
    }

    /// Whether page writes encode vision tokens (a model is loaded and caching is on).
    pub(crate) fn caches_tokens(&self) -> bool {
        self.model.is_some() && self.cache_tokens
    }

    pub(crate) fn encode_cache(&self, image: &PageImage, mode: Mode) -> Result<Option<TokenCache>> {
        match &self.model {
            Some(model) if self.cache_tokens => {
                let tokens = model.encode(image, mode)?;
                Ok(Some(model::tokens_to_cache(&tokens)?))
            }
            _ => Ok(None),
        }
    }
}

/// `read` of every item of `items`, in their order, run side by side on rayon's workers: in as
/// many lanes as [`OcrModel`] lends decoder copies at once (one a worker, up to 4), each taking
/// the next item when done with one. A decode step of a small reader is too little work to
/// split over the cores, so whole readings are: on 2 cores, reading 16 pages back with the
/// embedded reader went from 15-18 s to 8-10 s (lanes on threads of their own, each handing its
/// reading's parallel work to the pool, took 10-11 s). Stops at the first error, and returns
/// the first failing item's, as reading in turn would. One item, one worker, or a caller
/// already on a rayon worker reads on the calling thread. All callers together run at most
/// [`OcrModel`]'s bound of lanes at once: a caller waits for the first, and takes more only if
/// they are free.
///
/// [`Lethe::recall`] reads a range of turns this way; `memctl` scores pages this way.
///
/// ```
/// let squares = lethe::read_side_by_side(&[1, 2, 3], |i| Ok::<_, lethe::Error>(i * i)).unwrap();
/// assert_eq!(squares, [1, 4, 9]);
/// ```
pub fn read_side_by_side<T: Sync, R: Send, E: Send>(
    items: &[T],
    read: impl Fn(&T) -> std::result::Result<R, E> + Sync,
) -> std::result::Result<Vec<R>, E> {
    side_by_side_in(items, model::readings_at_once(), read)
}

/// Lanes running at once in this process, all callers together: a permit each, at most
/// [`model::readings_at_once`]. Lanes read on rayon's workers, which never wait for a decoder
/// copy (`Copies::lend`), so this is what bounds the copies that lanes hold (at most as many
/// again as the threads calling in from outside the pool, which wait for one).
static LANES: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
static LANE_FREED: std::sync::Condvar = std::sync::Condvar::new();

/// A lane's permit, given back when dropped.
struct LanePermit;

impl LanePermit {
    fn running() -> std::sync::MutexGuard<'static, usize> {
        LANES.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A permit, once one is free.
    fn wait() -> Self {
        let mut running = Self::running();
        while *running >= model::readings_at_once() {
            running = LANE_FREED.wait(running).unwrap_or_else(|p| p.into_inner());
        }
        *running += 1;
        LanePermit
    }

    /// A permit if one is free now.
    fn try_take() -> Option<Self> {
        let mut running = Self::running();
        (*running < model::readings_at_once()).then(|| {
            *running += 1;
            LanePermit
        })
    }
}

impl Drop for LanePermit {
    fn drop(&mut self) {
        *Self::running() -= 1;
        LANE_FREED.notify_one();
    }
}

/// [`read_side_by_side`] in at most `lanes` lanes. A caller outside rayon's pool waits for a
/// lane's permit (it holds no decoder copy, so waiting is safe) and starts as many more lanes
/// as permits are free; a caller on a worker (a reading inside a lane) reads in turn.
fn side_by_side_in<T: Sync, R: Send, E: Send>(
    items: &[T],
    lanes: usize,
    read: impl Fn(&T) -> std::result::Result<R, E> + Sync,
) -> std::result::Result<Vec<R>, E> {
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let lanes = lanes.min(rayon::current_num_threads()).min(items.len());
    if lanes <= 1 || rayon::current_thread_index().is_some() {
        return items.iter().map(read).collect();
    }
    let permits: Vec<LanePermit> = std::iter::once(LanePermit::wait())
        .chain((1..lanes).map_while(|_| LanePermit::try_take()))
        .collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let mut done: Vec<(usize, std::result::Result<R, E>)> = permits
        .into_par_iter()
        .flat_map_iter(|permit| {
            let mut done = Vec::new();
            while !failed.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = read(item);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                done.push((i, r));
            }
            drop(permit);
            done
        })
        .collect();
    // In the items' order, so the error is the first failing item's.
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_side_by_side_come_back_in_order_and_stop_at_an_error() {
        for lanes in [1, 2, 4] {
            for n in [0usize, 1, 2, 7, 50] {
                let items: Vec<usize> = (0..n).collect();
                let got = side_by_side_in(&items, lanes, |i| Ok::<_, String>(i * 10)).unwrap();
                assert_eq!(got, items.iter().map(|i| i * 10).collect::<Vec<_>>());
            }
            let items: Vec<usize> = (0..50).collect();
            let read = std::sync::atomic::AtomicUsize::new(0);
            let e = side_by_side_in(&items, lanes, |&i| {
                read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match i {
                    3 | 30 => Err(format!("page {i} is unreadable")),
                    _ => Ok(i),
                }
            })
            .unwrap_err();
            assert_eq!(e, "page 3 is unreadable");
            if lanes == 1 {
                // In one lane, nothing after the failing page is read.
                assert_eq!(read.into_inner(), 4);
            }
        }
    }
}
