//! What the policy decided for a page, and why.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::curve::Clock;
use lethe_mode::Tier;

/// The tier chosen for one page, with the reason, ready for the store's audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The page's id.
    pub id: u64,
    /// The tier the page was at.
    pub from: Tier,
    /// The tier the page should be at now.
    pub tier: Tier,
    /// True when the page should no longer keep its text at `tier` (the policy's `drop_text`;
    /// never for a pinned page). The caller drops it after re-rendering, if it still has it.
    pub drop_text: bool,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// True when the page changes tier.
    pub fn changed(&self) -> bool {
        self.from != self.tier
    }
}

/// When a page's decision may next change (see [`Policy::due`](crate::Policy::due)): the first
/// turn and the first time, whichever comes first; `None` for a clock that never moves it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Due {
    /// The first turn (of the page's conversation) at which the page may move.
    pub turn: Option<u64>,
    /// The first time (seconds) at which the page may move.
    pub time: Option<u64>,
}

impl Due {
    /// True when the page may move at turn `turn` and time `now`.
    pub fn is_due(&self, now: u64, turn: u64) -> bool {
        self.turn.is_some_and(|t| turn >= t) || self.time.is_some_and(|t| now >= t)
    }

    /// True when no clock moves the page (only an access, a pin or a new policy can).
    pub fn is_never(&self) -> bool {
        self.turn.is_none() && self.time.is_none()
    }
}

/// Which rule settled a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rule {
    /// The page was already evicted; nothing is left to move.
    AlreadyEvicted,
    /// The page is pinned: it stays where it is, or goes to the policy's pin tier.
    Pinned,
    /// The page outlived a TTL and is evicted (floors do not hold against a TTL).
    TtlExpired,
    /// The forgetting curve's tier, applied as it is (down, or unchanged).
    Curve,
    /// The curve asked for a tier below the floor; the floor holds the page.
    Floor,
    /// The curve asked for a higher tier, but the page was not accessed since its last tier
    /// change, so it stays (pages never move up without an access or a pin).
    Held,
    /// The page was accessed since its last tier change and moves up to the curve's tier.
    Reinforced,
    /// Budget fitting lowered the page below what decay alone chose.
    Budget,
}

/// A structured explanation of a [`Decision`]: the rule that settled it, the numbers behind it,
/// and the same in words (its `Display`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// The rule that settled the tier.
    pub rule: Rule,
    /// The clock ages are counted in.
    pub clock: Clock,
    /// The page's age used by the curve, in `clock` units.
    pub age: u64,
    /// Retention `exp(-age / stability)`, in `[0, 1]`.
    pub retention: f64,
    /// Stability after the page's accesses, in `clock` units.
    pub stability: f64,
    /// The tier the curve alone asked for (before pins, TTL, floor, hold and budget).
    pub wanted: Tier,
    /// The explanation in words, with tier names.
    pub text: String,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
