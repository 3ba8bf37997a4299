//! What the facade keeps beside a page (its source and render profile, from which it is drawn
//! again exactly) and what the policy sees of it.

use crate::*;

/// What the facade stores beside a page (in the store's opaque profile field): the render profile
/// and the page's source (the bytes of each turn it shows), from which the renderer lays out exactly
/// the same page again when a tier change re-renders it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PageMeta {
    pub(crate) profile: RenderProfile,
    /// The turn pieces the page shows, in order (dropped with the text).
    pub(crate) source: Option<Vec<Turn>>,
    /// Logical page size `[width, height]` (gundam tiling depends on it).
    pub(crate) size: [f32; 2],
    /// Text tokens of the page text, counted when the page was made.
    pub(crate) text_tokens: u64,
}

impl PageMeta {
    /// Decoder positions and nominal vision tokens of the page at `mode`.
    pub(crate) fn cost(&self, mode: Mode) -> (u64, u64) {
        let (positions, vision) =
            mode.page_cost(self.size[0].round() as u32, self.size[1].round() as u32);
        (positions as u64, vision as u64)
    }
}

/// The turn pieces a page shows, as turns a renderer paginates back into that one page.
pub(crate) fn page_source(page: &Page, turns: &[Turn]) -> Vec<Turn> {
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

/// A hot turn as the renderer takes it: speaker, text, session and time label.
pub(crate) fn turn_of(t: &lethe_memory::TurnRecord) -> Turn {
    let mut turn = Turn::new(t.speaker.clone(), t.text.clone());
    turn.session.clone_from(&t.session);
    turn.timestamp.clone_from(&t.time_label);
    turn
}

pub(crate) fn page_meta(record: &PageRecord) -> Result<PageMeta> {
    serde_json::from_str(&record.profile).map_err(|source| Error::PageMeta {
        page: record.id,
        source,
    })
}

impl Lethe {
    pub(crate) fn page_state(&self, record: &PageRecord) -> Result<PageState> {
        let meta = page_meta(record)?;
        let mut state = PageState::new(
            record.id.0,
            record.created.turn,
            record.created.time,
            record.tier,
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
