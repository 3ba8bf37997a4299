//! The policy: configuration, per-page decisions and the TOML form.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::curve::{retention, AgeFrom, Clock, Curve, RecallCurve, Reinforcement};
use crate::decision::{Decision, Due, Reason, Rule};
use crate::error::{PolicyError, Result};
use lethe_mode::{Mode, Tier};

use crate::ladder::{Ladder, Level};
use crate::page::PageState;

/// A forgetting policy: a ladder of tiers, a curve from age to tier, reinforcement by access,
/// pins, a floor, TTLs, and the recall estimate used to fit token budgets.
///
/// Build one with [`Policy::builder`], load one with [`Policy::from_toml_str`] or
/// [`Policy::from_path`], or take [`Policy::default`] (the same as `policies/default.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub(crate) ladder: Ladder,
    pub(crate) clock: Clock,
    pub(crate) age_from: AgeFrom,
    pub(crate) curve: Curve,
    pub(crate) reinforcement: Reinforcement,
    pub(crate) floor: Tier,
    pub(crate) pin: Option<Tier>,
    pub(crate) ttl_turns: Option<u64>,
    pub(crate) ttl_seconds: Option<u64>,
    pub(crate) drop_text: Option<Tier>,
    pub(crate) recall: RecallCurve,
}

impl Default for Policy {
    /// The documented default (`policies/default.toml`): ladder large (421) / base (273) / small
    /// (111) / tiny (73); ages in turns since the last access; retention curve with `S0 = 20`
    /// turns, growth 2 per access, thresholds 0.6 / 0.35 / 0.15 / 0.05; floor `tiny` (decay alone
    /// never evicts); pinned pages stay where they are; no TTL; recall estimate 97% at 10x, 60% at
    /// 20x, 10% at 40x; page text is kept at every tier.
    fn default() -> Self {
        Policy {
            ladder: Ladder::default(),
            clock: Clock::Turns,
            age_from: AgeFrom::LastAccess,
            curve: Curve::Retention {
                thresholds: vec![0.6, 0.35, 0.15, 0.05],
            },
            reinforcement: Reinforcement::default(),
            floor: Tier::At(Mode::Tiny),
            pin: None,
            ttl_turns: None,
            ttl_seconds: None,
            drop_text: None,
            recall: RecallCurve::default(),
        }
    }
}

impl Default for Reinforcement {
    /// `S0 = 20` clock units, growth 2 per access.
    fn default() -> Self {
        Reinforcement {
            stability: 20.0,
            growth: 2.0,
        }
    }
}

impl Policy {
    /// A builder starting from [`Policy::default`].
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder {
            spec: PolicySpec::from(&Policy::default()),
        }
    }

    /// Parses and checks a policy written in TOML. Missing keys take the default's values;
    /// unknown keys are errors.
    ///
    /// # Errors
    /// [`PolicyError::Parse`] for malformed TOML or a wrong type or unknown key (the source names
    /// the key and line), [`PolicyError::Invalid`] naming the field for a bad value.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let spec: PolicySpec =
            toml::from_str(text).map_err(|source| PolicyError::Parse { path: None, source })?;
        spec.into_policy()
    }

    /// Reads [`Policy::from_toml_str`] from a file.
    ///
    /// # Errors
    /// [`PolicyError::Read`] when the file cannot be read; otherwise as
    /// [`Policy::from_toml_str`], with the path attached.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::from_toml_str(&text).map_err(|e| match e {
            PolicyError::Parse { source, .. } => PolicyError::Parse {
                path: Some(path.to_path_buf()),
                source,
            },
            PolicyError::Invalid { field, message, .. } => PolicyError::Invalid {
                field,
                message,
                path: Some(path.to_path_buf()),
            },
            other => other,
        })
    }

    /// The policy as TOML that [`Policy::from_toml_str`] reads back to an equal policy.
    ///
    /// # Errors
    /// [`PolicyError::Serialize`] if the TOML writer fails.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(&PolicySpec::from(self)).map_err(|source| PolicyError::Serialize { source })
    }

    /// The ladder of tiers.
    pub fn ladder(&self) -> &Ladder {
        &self.ladder
    }

    /// The clock ages are counted in.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// What ages are counted from.
    pub fn age_from(&self) -> AgeFrom {
        self.age_from
    }

    /// The forgetting curve.
    pub fn curve(&self) -> &Curve {
        &self.curve
    }

    /// Reinforcement by access.
    pub fn reinforcement(&self) -> Reinforcement {
        self.reinforcement
    }

    /// The lowest tier decay alone may take a page to ([`Tier::Evicted`] when there is no floor).
    pub fn floor(&self) -> Tier {
        self.floor
    }

    /// The tier pinned pages are moved to, or `None` when they stay where they are.
    pub fn pin_tier(&self) -> Option<Tier> {
        self.pin
    }

    /// Turns after creation at which an unpinned page is evicted, if any.
    pub fn ttl_turns(&self) -> Option<u64> {
        self.ttl_turns
    }

    /// Seconds after creation at which an unpinned page is evicted, if any.
    pub fn ttl_seconds(&self) -> Option<u64> {
        self.ttl_seconds
    }

    /// The highest tier at which unpinned pages lose their retained text (it and every tier
    /// below), or `None` when text is kept at every tier.
    pub fn drop_text_tier(&self) -> Option<Tier> {
        self.drop_text
    }

    /// Whether an unpinned page at `tier` should no longer keep its text.
    fn drops_text(&self, tier: Tier, pinned: bool) -> bool {
        !pinned && self.drop_text.is_some_and(|d| tier >= d)
    }

    /// The recall estimate used by budget fitting.
    pub fn recall_curve(&self) -> &RecallCurve {
        &self.recall
    }

    /// The page's age in the policy's clock, counted from creation or last access as configured.
    pub fn age(&self, page: &PageState, now: u64, turn: u64) -> u64 {
        let (at, t) = match self.age_from {
            AgeFrom::Created => (page.created_at, page.created_turn),
            AgeFrom::LastAccess => (page.last_access_at, page.last_access_turn),
        };
        match self.clock {
            Clock::Turns => turn.saturating_sub(t),
            Clock::Seconds => now.saturating_sub(at),
        }
    }

    /// The page's stability after its accesses.
    pub fn stability(&self, page: &PageState) -> f64 {
        self.reinforcement.stability(page.access_count)
    }

    /// The page's retention `exp(-age / stability)`, in `[0, 1]`.
    pub fn retention(&self, page: &PageState, now: u64, turn: u64) -> f64 {
        retention(self.age(page, now, turn) as f64, self.stability(page))
    }

    /// `ln` of the retention, which does not underflow; used to rank pages.
    pub(crate) fn log_retention(&self, page: &PageState, now: u64, turn: u64) -> f64 {
        let age = self.age(page, now, turn);
        if age == 0 {
            return 0.0;
        }
        // `+ 0.0` turns -0.0 (infinite stability) into 0.0 so ranks compare as equal.
        -(age as f64) / self.stability(page) + 0.0
    }

    /// The tier the curve alone gives the page now.
    pub fn curve_tier(&self, page: &PageState, now: u64, turn: u64) -> Tier {
        self.curve_tier_at_age(page, self.age(page, now, turn))
    }

    /// The tier the curve gives the page at `age` (in the policy's clock).
    fn curve_tier_at_age(&self, page: &PageState, age: u64) -> Tier {
        let index = match &self.curve {
            Curve::Step { after } => Curve::step_index(after, age),
            Curve::Retention { thresholds } => {
                Curve::retention_index(thresholds, retention(age as f64, self.stability(page)))
            }
        };
        self.ladder.tier_at(index)
    }

    /// When [`Policy::decide`] may next move the page from the tier it is at, if nothing happens
    /// to it meanwhile (no access, no pin or unpin, the same policy): the first turn and the first
    /// time at which it may change. A page whose decision changes already is due at `turn` and
    /// `now`; a page nothing but an access can move (pinned, evicted, held at the floor, or held
    /// above the curve) is never due.
    ///
    /// A store keeps pages indexed by this, so that maintenance looks only at the pages that are
    /// due instead of deciding every page at every turn.
    ///
    /// # Errors
    /// As [`Policy::decide`].
    pub fn due(&self, page: &PageState, now: u64, turn: u64) -> Result<Due> {
        if self.decide(page, now, turn)?.changed() {
            return Ok(Due {
                turn: Some(turn),
                time: Some(now),
            });
        }
        let mut due = Due::default();
        if page.tier.is_evicted() || page.pinned {
            return Ok(due);
        }
        due.turn = self.ttl_turns.map(|t| page.created_turn.saturating_add(t));
        due.time = self.ttl_seconds.map(|t| page.created_at.saturating_add(t));
        // The curve moves the page only downwards without an access, and only above the floor.
        if page.tier < self.floor {
            let age = self.age(page, now, turn);
            if let Some(at) = self.first_age_below(page, age) {
                let (origin_turn, origin_at) = match self.age_from {
                    AgeFrom::Created => (page.created_turn, page.created_at),
                    AgeFrom::LastAccess => (page.last_access_turn, page.last_access_at),
                };
                let (slot, origin) = match self.clock {
                    Clock::Turns => (&mut due.turn, origin_turn),
                    Clock::Seconds => (&mut due.time, origin_at),
                };
                let when = origin.saturating_add(at);
                *slot = Some(slot.map_or(when, |t| t.min(when)));
            }
        }
        Ok(due)
    }

    /// The least age above `age` at which the curve puts the page below its tier (the curve is
    /// monotone in age, so a doubling search then a bisection find it exactly).
    fn first_age_below(&self, page: &PageState, age: u64) -> Option<u64> {
        let below = |a: u64| self.curve_tier_at_age(page, a) > page.tier;
        let mut hi = age.saturating_add(1);
        while !below(hi) {
            if hi >= u64::MAX / 4 {
                return None;
            }
            hi = hi.saturating_mul(2);
        }
        let mut lo = age; // not below at `lo` (or `lo` is the current age, already decided)
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if below(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(hi)
    }

    /// Decides the page's tier at time `now` (seconds) and turn `turn`.
    ///
    /// In order: an evicted page stays evicted; a pinned page stays at its tier (or goes to the pin
    /// tier); a page past a TTL is evicted; otherwise the curve's tier, held at the floor, and never
    /// higher than the current tier unless the page was accessed since its last tier change.
    ///
    /// # Errors
    /// [`PolicyError::NotOnLadder`] when the page's tier is not on this policy's ladder.
    pub fn decide(&self, page: &PageState, now: u64, turn: u64) -> Result<Decision> {
        if !self.ladder.contains(page.tier) {
            return Err(PolicyError::NotOnLadder {
                id: page.id,
                tier: page.tier,
                levels: names(&self.ladder),
            });
        }
        let current = page.tier;
        let age = self.age(page, now, turn);
        let stability = self.stability(page);
        let r = retention(age as f64, stability);
        let wanted = self.curve_tier(page, now, turn);
        let name = |t: Tier| t.name();
        let basis = format!(
            "age {age} {} since {}, retention {r:.3} (stability {stability:.1}, {} access{})",
            self.clock.unit(),
            match self.age_from {
                AgeFrom::Created => "creation",
                AgeFrom::LastAccess => "last access",
            },
            page.access_count,
            if page.access_count == 1 { "" } else { "es" },
        );

        let (tier, rule, text) = if current.is_evicted() {
            (current, Rule::AlreadyEvicted, "already evicted".to_owned())
        } else if page.pinned {
            match self.pin {
                Some(pin) if pin != current => (
                    pin,
                    Rule::Pinned,
                    format!("pinned: moves to the pin tier {}", name(pin)),
                ),
                _ => (
                    current,
                    Rule::Pinned,
                    format!("pinned: stays at {}", name(current)),
                ),
            }
        } else if let Some(text) = self.ttl_expired(page, now, turn) {
            (Tier::Evicted, Rule::TtlExpired, text)
        } else {
            let floored = wanted.min(self.floor);
            if floored < current {
                if page.accessed_since_tier_change() {
                    (
                        floored,
                        Rule::Reinforced,
                        format!(
                            "{basis}: accessed since reaching {}, rises to {}",
                            name(current),
                            name(floored)
                        ),
                    )
                } else {
                    (
                        current,
                        Rule::Held,
                        format!(
                            "{basis}: curve gives {}, but no access since reaching {}; stays",
                            name(wanted),
                            name(current)
                        ),
                    )
                }
            } else if floored < wanted {
                (
                    floored,
                    Rule::Floor,
                    format!(
                        "{basis}: curve gives {}, held at the floor {}",
                        name(wanted),
                        name(floored)
                    ),
                )
            } else {
                let verb = if floored == current {
                    "stays at"
                } else {
                    "moves down to"
                };
                (
                    floored,
                    Rule::Curve,
                    format!("{basis}: curve {verb} {}", name(floored)),
                )
            }
        };
        Ok(Decision {
            id: page.id,
            from: current,
            tier,
            drop_text: self.drops_text(tier, page.pinned),
            reason: Reason {
                rule,
                clock: self.clock,
                age,
                retention: r,
                stability,
                wanted,
                text,
            },
        })
    }

    /// [`Policy::decide`] for each page, in order.
    ///
    /// # Errors
    /// The first page's error, as [`Policy::decide`].
    pub fn decide_all(&self, pages: &[PageState], now: u64, turn: u64) -> Result<Vec<Decision>> {
        pages.iter().map(|p| self.decide(p, now, turn)).collect()
    }

    fn ttl_expired(&self, page: &PageState, now: u64, turn: u64) -> Option<String> {
        if let Some(ttl) = self.ttl_turns {
            let age = turn.saturating_sub(page.created_turn);
            if age >= ttl {
                return Some(format!(
                    "TTL expired: {age} turns since creation, ttl_turns = {ttl}"
                ));
            }
        }
        if let Some(ttl) = self.ttl_seconds {
            let age = now.saturating_sub(page.created_at);
            if age >= ttl {
                return Some(format!(
                    "TTL expired: {age} s since creation, ttl_seconds = {ttl}"
                ));
            }
        }
        None
    }
}

/// Builds a [`Policy`] in code, starting from the default; [`PolicyBuilder::build`] checks it the
/// same way a TOML file is checked.
#[derive(Debug, Clone)]
pub struct PolicyBuilder {
    spec: PolicySpec,
}

impl PolicyBuilder {
    /// The ladder of levels, most resolution first.
    pub fn ladder(mut self, levels: Vec<Level>) -> Self {
        self.spec.ladder = levels;
        self
    }

    /// The clock ages are counted in.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.spec.clock = clock;
        self
    }

    /// What ages are counted from.
    pub fn age_from(mut self, age_from: AgeFrom) -> Self {
        self.spec.age_from = age_from;
        self
    }

    /// The forgetting curve.
    pub fn curve(mut self, curve: Curve) -> Self {
        self.spec.curve = curve;
        self
    }

    /// Reinforcement: stability `S0` (clock units) and growth per access.
    pub fn reinforcement(mut self, stability: f64, growth: f64) -> Self {
        self.spec.reinforcement = Reinforcement { stability, growth };
        self
    }

    /// The floor: decay alone never takes a page below the level named `name` (`"evicted"`: no
    /// floor).
    pub fn floor(mut self, name: impl Into<String>) -> Self {
        self.spec.floor = name.into();
        self
    }

    /// Pinned pages move to the level named `name`.
    pub fn pin_tier(mut self, name: impl Into<String>) -> Self {
        self.spec.pin = Some(name.into());
        self
    }

    /// Pinned pages stay at their tier (the default).
    pub fn pin_in_place(mut self) -> Self {
        self.spec.pin = None;
        self
    }

    /// Evict unpinned pages this many turns after creation (`None`: never).
    pub fn ttl_turns(mut self, ttl: Option<u64>) -> Self {
        self.spec.ttl_turns = ttl;
        self
    }

    /// Evict unpinned pages this many seconds after creation (`None`: never).
    pub fn ttl_seconds(mut self, ttl: Option<u64>) -> Self {
        self.spec.ttl_seconds = ttl;
        self
    }

    /// Unpinned pages lose their retained text at the level named `name` and below
    /// (`"evicted"`: when evicted); `None` keeps text at every tier (the default).
    pub fn drop_text(mut self, name: Option<String>) -> Self {
        self.spec.drop_text = name;
        self
    }

    /// The recall estimate as `[ratio, recall]` points.
    pub fn recall_curve(mut self, points: Vec<[f64; 2]>) -> Self {
        self.spec.budget.recall = points;
        self
    }

    /// Checks and builds the policy.
    ///
    /// # Errors
    /// [`PolicyError::Invalid`] naming the first bad field (as its TOML key).
    pub fn build(self) -> Result<Policy> {
        self.spec.into_policy()
    }
}

/// The TOML shape of a policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PolicySpec {
    clock: Clock,
    age_from: AgeFrom,
    floor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_turns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drop_text: Option<String>,
    ladder: Vec<Level>,
    reinforcement: Reinforcement,
    curve: Curve,
    budget: BudgetSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BudgetSpec {
    recall: Vec<[f64; 2]>,
}

impl Default for BudgetSpec {
    fn default() -> Self {
        BudgetSpec {
            recall: RecallCurve::default().points().to_vec(),
        }
    }
}

impl Default for PolicySpec {
    fn default() -> Self {
        PolicySpec::from(&Policy::default())
    }
}

impl From<&Policy> for PolicySpec {
    fn from(p: &Policy) -> Self {
        PolicySpec {
            clock: p.clock,
            age_from: p.age_from,
            floor: p.floor.name().to_owned(),
            pin: p.pin.map(|t| t.name().to_owned()),
            ttl_turns: p.ttl_turns,
            ttl_seconds: p.ttl_seconds,
            drop_text: p.drop_text.map(|t| t.name().to_owned()),
            ladder: p.ladder.levels().to_vec(),
            reinforcement: p.reinforcement,
            curve: p.curve.clone(),
            budget: BudgetSpec {
                recall: p.recall.points().to_vec(),
            },
        }
    }
}

impl PolicySpec {
    fn into_policy(self) -> Result<Policy> {
        let ladder = Ladder::new(self.ladder)?;
        let floor = tier_named(&ladder, &self.floor).ok_or_else(|| {
            PolicyError::invalid(
                "floor",
                format!(
                    "`{}` is not a ladder level or `evicted`; levels: {}",
                    self.floor,
                    names(&ladder)
                ),
            )
        })?;
        let pin = match &self.pin {
            None => None,
            Some(name) => match tier_named(&ladder, name) {
                Some(Tier::At(mode)) => Some(Tier::At(mode)),
                _ => {
                    return Err(PolicyError::invalid(
                        "pin",
                        format!(
                            "`{name}` is not a ladder level (pinned pages are never evicted); \
                             levels: {}",
                            names(&ladder)
                        ),
                    ))
                }
            },
        };
        if let Some(pin) = pin {
            if pin > floor {
                return Err(PolicyError::invalid(
                    "pin",
                    format!("`{pin}` is below the floor `{floor}`",),
                ));
            }
        }
        self.reinforcement.validate()?;
        self.curve.validate(ladder.len())?;
        if self.ttl_turns == Some(0) {
            return Err(PolicyError::invalid(
                "ttl_turns",
                "must be at least 1 (leave it out for no TTL)",
            ));
        }
        if self.ttl_seconds == Some(0) {
            return Err(PolicyError::invalid(
                "ttl_seconds",
                "must be at least 1 (leave it out for no TTL)",
            ));
        }
        let drop_text = match &self.drop_text {
            None => None,
            Some(name) => Some(tier_named(&ladder, name).ok_or_else(|| {
                PolicyError::invalid(
                    "drop_text",
                    format!(
                        "`{name}` is not a ladder level or `evicted`; levels: {}",
                        names(&ladder)
                    ),
                )
            })?),
        };
        let recall = RecallCurve::new(self.budget.recall)?;
        Ok(Policy {
            ladder,
            clock: self.clock,
            age_from: self.age_from,
            curve: self.curve,
            reinforcement: self.reinforcement,
            floor,
            pin,
            ttl_turns: self.ttl_turns,
            ttl_seconds: self.ttl_seconds,
            drop_text,
            recall,
        })
    }
}

/// The tier called `name` when it is `evicted` or one of the ladder's levels.
fn tier_named(ladder: &Ladder, name: &str) -> Option<Tier> {
    name.parse().ok().filter(|&t| ladder.contains(t))
}

fn names(ladder: &Ladder) -> String {
    ladder
        .levels()
        .iter()
        .map(|l| l.mode.name())
        .collect::<Vec<_>>()
        .join(", ")
}
