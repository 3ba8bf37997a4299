//! What the policy needs to know about a page.

use serde::{Deserialize, Serialize};

use lethe_mode::Tier;

/// A page's state as the policy sees it: plain data the store keeps in its page record.
///
/// Times are seconds on any clock the caller chooses (Unix seconds, say), turns are the
/// conversation's turn index; the policy only ever subtracts them, saturating at zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageState {
    /// The page's id.
    pub id: u64,
    /// Turn index at which the page was made.
    pub created_turn: u64,
    /// Time (seconds) at which the page was made.
    pub created_at: u64,
    /// Turn index of the last access (the creation turn if never accessed).
    pub last_access_turn: u64,
    /// Time (seconds) of the last access (the creation time if never accessed).
    pub last_access_at: u64,
    /// How many times the page has been accessed (recalled, or put into a context).
    pub access_count: u32,
    /// `access_count` as it was when the page was put at its current tier. A page may move up the
    /// ladder only when `access_count` has grown past it (an access since the last tier change),
    /// or when it is pinned.
    pub tier_access_count: u32,
    /// Pinned pages are never lowered by decay, TTL or a budget.
    pub pinned: bool,
    /// The tier the page is at now.
    pub tier: Tier,
    /// Text tokens on the page (the named tokenizer's count), used to estimate what each tier
    /// keeps of it when fitting a budget.
    pub text_tokens: u32,
}

impl PageState {
    /// A new, unpinned, never-accessed page at `tier`, made at `turn` and time `at`.
    pub fn new(id: u64, turn: u64, at: u64, tier: Tier, text_tokens: u32) -> Self {
        PageState {
            id,
            created_turn: turn,
            created_at: at,
            last_access_turn: turn,
            last_access_at: at,
            access_count: 0,
            tier_access_count: 0,
            pinned: false,
            tier,
            text_tokens,
        }
    }

    /// Records an access at `turn` and time `at`.
    pub fn record_access(&mut self, turn: u64, at: u64) {
        self.access_count = self.access_count.saturating_add(1);
        self.last_access_turn = self.last_access_turn.max(turn);
        self.last_access_at = self.last_access_at.max(at);
    }

    /// Moves the page to `tier`, remembering the access count at the change.
    pub fn set_tier(&mut self, tier: Tier) {
        self.tier = tier;
        self.tier_access_count = self.access_count;
    }

    /// True when the page was accessed since it was put at its current tier.
    pub fn accessed_since_tier_change(&self) -> bool {
        self.access_count > self.tier_access_count
    }
}
