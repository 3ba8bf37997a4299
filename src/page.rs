//! What the facade keeps beside a page (its [`Layout`]: the render profile and the turn pieces its
//! text is made of, from which it is laid out and drawn again exactly) and what the policy sees of
//! it.

use lethe_memory::{Layout, Piece};

use crate::*;

/// The layout and the text a page keeps: the turn pieces it shows, their text concatenated, and
/// the facts counted when it was made. `profile` is the render profile serialised.
pub(crate) fn layout_of(
    page: &Page,
    turns: &[Turn],
    profile: &str,
    text_tokens: u64,
) -> (String, Layout) {
    let mut text = String::new();
    let mut pieces = Vec::with_capacity(page.segments.len());
    for seg in &page.segments {
        let turn = &turns[seg.turn];
        let words = &turn.text[seg.start..seg.end];
        text.push_str(words);
        pieces.push(Piece {
            speaker: turn.speaker.clone(),
            session: turn.session.clone(),
            time_label: turn.timestamp.clone(),
            continued: seg.start > 0 || turn.continued,
            len: words.len() as u64,
        });
    }
    let layout = Layout {
        profile: profile.to_owned(),
        size: [page.width.round() as u32, page.height.round() as u32],
        text_tokens,
        page_text_crc: Layout::checksum(&page.text),
        pieces,
    };
    (text, layout)
}

/// Decoder positions and nominal vision tokens of a page laid out as `layout`, at `mode`.
pub(crate) fn cost(layout: &Layout, mode: Mode) -> (u64, u64) {
    let (positions, vision) = mode.page_cost(layout.size[0], layout.size[1]);
    (positions as u64, vision as u64)
}

/// The page's turn pieces as turns a renderer paginates back into that one page; `None` when it
/// keeps no text or was not made of pieces.
pub(crate) fn source_turns(record: &PageRecord) -> Option<Vec<Turn>> {
    let text = record.text.as_deref()?;
    if record.layout.pieces.is_empty() {
        return None;
    }
    let mut at = 0usize;
    let turns = record
        .layout
        .pieces
        .iter()
        .map(|p| {
            let words = &text[at..at + p.len as usize];
            at += p.len as usize;
            let mut turn = Turn::new(p.speaker.clone(), words);
            turn.continued = p.continued;
            turn.session.clone_from(&p.session);
            turn.timestamp.clone_from(&p.time_label);
            turn
        })
        .collect();
    Some(turns)
}

/// A page laid out again, with the renderer that draws it.
pub(crate) struct Relaid {
    /// The renderer of the page's own profile, when it is not the memory's.
    other: Option<Renderer>,
    /// The page.
    pub(crate) page: Page,
}

impl Relaid {
    /// The page drawn at `mode`; `own` is the memory's renderer.
    pub(crate) fn rasterize(&self, own: &Renderer, mode: Mode) -> PageImage {
        self.other
            .as_ref()
            .unwrap_or(own)
            .rasterize(&self.page, mode)
    }
}

impl Relaid {
    /// The page drawn at its own aspect with its long edge `px` pixels (a provider's size).
    pub(crate) fn rasterize_long_edge(&self, own: &Renderer, px: u32) -> PageImage {
        self.other
            .as_ref()
            .unwrap_or(own)
            .rasterize_long_edge(&self.page, px)
    }
}

/// A hot turn as the renderer takes it: speaker, text, session and time label.
pub(crate) fn turn_of(t: &lethe_memory::TurnRecord) -> Turn {
    let mut turn = Turn::new(t.speaker.clone(), t.text.clone());
    turn.session.clone_from(&t.session);
    turn.timestamp.clone_from(&t.time_label);
    turn
}

impl Lethe {
    pub(crate) fn page_state(&self, record: &PageRecord) -> Result<PageState> {
        let mut state = PageState::new(
            record.id.0,
            record.created.turn,
            record.created.time,
            record.tier,
            record.layout.text_tokens.min(u64::from(u32::MAX)) as u32,
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

    /// The renderer a page was laid out with: `None` for this memory's own (the profiles match).
    fn renderer_for(&self, record: &PageRecord) -> Result<Option<Renderer>> {
        if record.layout.profile == self.profile_json {
            return Ok(None);
        }
        let profile: RenderProfile =
            serde_json::from_str(&record.layout.profile).map_err(|source| Error::PageMeta {
                page: record.id,
                source,
            })?;
        if profile == self.profile {
            return Ok(None);
        }
        Ok(Some(Renderer::builder().profile(profile).build()?))
    }

    /// Lays a page out again from its turn pieces, checked against the text it showed when it was
    /// made; `None` when it keeps no pieces (its text dropped, or made without them).
    pub(crate) fn relayout(&self, record: &PageRecord) -> Result<Option<Relaid>> {
        let Some(source) = source_turns(record) else {
            return Ok(None);
        };
        let other = self.renderer_for(record)?;
        let renderer = other.as_ref().unwrap_or(&self.renderer);
        // The pieces lay out as the same page again (a split last turn may leave a trailing page
        // with no turn text, only a running header); anything else would draw different text.
        let mut pages = renderer.paginate(&source)?;
        let rest_empty = pages[1..]
            .iter()
            .flat_map(|p| &p.segments)
            .all(|s| s.start == s.end);
        let same = pages
            .first()
            .is_some_and(|p| Layout::checksum(&p.text) == record.layout.page_text_crc);
        if !(rest_empty && same) {
            return Err(Error::Invalid(format!(
                "page {}: its turn pieces no longer lay out as the stored page ({} pages)",
                record.id,
                pages.len()
            )));
        }
        let page = pages.swap_remove(0);
        Ok(Some(Relaid { other, page }))
    }
}
