//! `Lethe::maintain`: paging out turns older than the hot window, and deciding the pages that
//! are due (tier changes re-render or resample, re-encode, and swap in one transaction).

use crate::page::{cost, layout_of, turn_of};
use crate::*;

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

/// A run of pages chained by split turns goes out once it is this long, even with no clean cut.
const MIN_CHAINED_PAGES: usize = 3;

impl Lethe {
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
        // The touched set is cleared only once the call succeeds: after an error, the next call
        // looks at the same scopes again.
        let touched = self
            .touched
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let scopes = match touched {
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
        *self.touched.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(BTreeSet::new());
        done.usage.millis = elapsed_ms(started);
        Ok(done)
    }

    /// Decides one due page: moves it, drops its text, and sets when it is next due.
    pub(crate) fn maintain_page(
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
            // A page drawn from its text needs its image stored before the text goes.
            let image = match (&record.image_blob, record.tier) {
                (None, Tier::At(mode)) => Some(self.image_at(&record, mode)?.to_png()?),
                _ => None,
            };
            let reason = format!(
                "policy drops page text at {} (drop_text = {:?})",
                decision.tier,
                self.policy
                    .drop_text_tier()
                    .map(Tier::name)
                    .unwrap_or_default(),
            );
            self.store.drop_text(record.id, image, &reason, stamp)?;
            done.texts_dropped += 1;
        }
        Ok(())
    }

    /// When the policy next wants to look at a page in `state`, as the store indexes it.
    pub(crate) fn due(&self, state: &PageState, now: u64, turn: u64) -> Result<Due> {
        let due = self.policy.due(state, now, turn)?;
        Ok(Due {
            turn: due.turn,
            time: due.time,
        })
    }

    /// Renders `turns` (hot records of one scope, oldest first) to pages and moves them out of
    /// the hot tier. Pages that share a turn (a long turn spanning pages) move together as a run,
    /// and the last run, whose last page may not be full yet, stays hot until more turns arrive.
    pub(crate) fn page_out(
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
        let mode = self.policy.ladder().levels()[0].mode;
        let top = Tier::At(mode);
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
                let text_tokens = self.count_tokens(&page.text)?;
                let (text, layout) = layout_of(&page, &input, &self.profile_json, text_tokens);
                let (positions, vision) = cost(&layout, mode);
                done.missing_glyphs += page.missing_glyphs as u64;
                done.usage.text_tokens += text_tokens;
                done.usage.decoder_positions += positions;
                done.usage.vision_tokens += vision;
                done.usage.bytes += png.as_ref().map_or(0, |p| p.len() as u64);
                let state = PageState::new(
                    0,
                    turn,
                    now,
                    top,
                    text_tokens.min(u64::from(u32::MAX)) as u32,
                );
                new_pages.push(NewPage {
                    layout,
                    tier: top,
                    text,
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
    pub(crate) fn move_page(
        &mut self,
        record: &PageRecord,
        tier: Tier,
        reason: &str,
        at: Stamp,
        due: Due,
        done: &mut Maintenance,
    ) -> Result<PageRecord> {
        let (image, tokens) = match tier {
            Tier::At(mode) => {
                // A page that keeps its text is redrawn when needed; only the encoder, or a page
                // without its text, needs the image now.
                let redrawable = record.text.is_some() && !record.layout.pieces.is_empty();
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
                done.usage.decoder_positions += cost(&record.layout, mode).0;
                (png, tokens)
            }
            Tier::Evicted => {
                done.evicted += 1;
                (None, None)
            }
        };
        done.usage.bytes += image.as_ref().map_or(0, |i| i.len() as u64);
        let moved = self.store.transition(
            record.id,
            Transition {
                tier,
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
}
