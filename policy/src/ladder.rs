//! The ladder of resolution tiers a page moves down as it is forgotten.

use lethe_mode::{Mode, Tier};
use serde::{Deserialize, Serialize};

use crate::error::{PolicyError, Result};

/// One rung of the ladder: a mode and the decoder positions one page costs there.
///
/// The cost is the mode's own ([`Mode::decoder_positions`]): a fixed mode's level that says
/// otherwise is refused. Only gundam, whose cost depends on each page's size, takes a cost from
/// the policy, used when fitting a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LevelSpec", into = "LevelSpec")]
pub struct Level {
    /// The mode pages are kept at on this level.
    pub mode: Mode,
    /// Decoder positions one page takes at this level (vision tokens plus row newlines and the
    /// view separator), the unit of a token budget.
    pub positions: u32,
}

impl Level {
    /// A level at `mode`, costing what a page at that mode costs (an untiled page for gundam).
    pub fn new(mode: Mode) -> Self {
        Level {
            mode,
            positions: mode.decoder_positions(None) as u32,
        }
    }

    /// A gundam level whose pages are costed at `positions` each when fitting a budget.
    pub fn gundam(positions: u32) -> Self {
        Level {
            mode: Mode::Gundam,
            positions,
        }
    }

    /// The level's tier.
    pub fn tier(self) -> Tier {
        Tier::At(self.mode)
    }

    /// Checks the cost against the mode's; `field` names the level in errors.
    fn check(self, field: &str) -> Result<Self> {
        let own = self.mode.decoder_positions(None) as u32;
        if self.mode == Mode::Gundam {
            if self.positions < own {
                return Err(PolicyError::invalid(
                    format!("{field}.positions"),
                    format!(
                        "a gundam page costs at least {own} positions, got {}",
                        self.positions
                    ),
                ));
            }
        } else if self.positions != own {
            return Err(PolicyError::invalid(
                format!("{field}.positions"),
                format!(
                    "a {} page costs {own} decoder positions, got {} (leave `positions` out)",
                    self.mode, self.positions
                ),
            ));
        }
        Ok(self)
    }
}

/// A level as written in a policy file: `name` is the mode, `positions` may be left out except
/// for gundam.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelSpec {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    positions: Option<u32>,
}

impl TryFrom<LevelSpec> for Level {
    type Error = PolicyError;

    fn try_from(spec: LevelSpec) -> Result<Self> {
        let mode: Mode = spec.name.parse().map_err(|_| {
            PolicyError::invalid(
                "ladder.name",
                format!(
                    "{:?} is not a mode (one of tiny, small, base, large, gundam)",
                    spec.name
                ),
            )
        })?;
        let level = match (mode, spec.positions) {
            (_, Some(positions)) => Level { mode, positions },
            (Mode::Gundam, None) => {
                return Err(PolicyError::invalid(
                    "ladder.positions",
                    "a gundam level needs `positions`: its pages' cost depends on their size",
                ))
            }
            (_, None) => Level::new(mode),
        };
        level.check("ladder")
    }
}

impl From<Level> for LevelSpec {
    fn from(level: Level) -> Self {
        LevelSpec {
            name: level.mode.name().to_owned(),
            positions: (level.mode == Mode::Gundam).then_some(level.positions),
        }
    }
}

/// An ordered list of levels, most resolution first; below the last level a page is evicted.
///
/// Valid ladders have at least one level, each mode at most once and in order down the ladder
/// (gundam, large, base, small, tiny), each costing what its mode costs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Level>", into = "Vec<Level>")]
pub struct Ladder {
    levels: Vec<Level>,
}

impl Ladder {
    /// Checks and builds a ladder.
    ///
    /// # Errors
    /// [`PolicyError::Invalid`] (field `ladder`) when the levels break a rule listed on [`Ladder`].
    pub fn new(levels: Vec<Level>) -> Result<Self> {
        if levels.is_empty() {
            return Err(PolicyError::invalid("ladder", "needs at least one level"));
        }
        for (i, level) in levels.iter().enumerate() {
            let field = format!("ladder[{i}]");
            level.check(&field)?;
            if i > 0 && level.tier() <= levels[i - 1].tier() {
                return Err(PolicyError::invalid(
                    format!("{field}.name"),
                    format!(
                        "`{}` must have less resolution than the level above (`{}`): levels go \
                         gundam, large, base, small, tiny, each at most once",
                        level.mode,
                        levels[i - 1].mode
                    ),
                ));
            }
        }
        Ok(Ladder { levels })
    }

    /// The levels, most resolution first.
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// Number of levels (not counting evicted).
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    /// Always false: a valid ladder has a level.
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// The tier with the most resolution.
    pub fn top(&self) -> Tier {
        self.levels[0].tier()
    }

    /// The last level before eviction.
    pub fn bottom(&self) -> Tier {
        self.levels[self.levels.len() - 1].tier()
    }

    /// Where `tier` is on the ladder: its level's index (0 = the most resolution), the number of
    /// levels for evicted, `None` for a mode the ladder does not have.
    pub fn index(&self, tier: Tier) -> Option<usize> {
        match tier {
            Tier::Evicted => Some(self.levels.len()),
            Tier::At(mode) => self.levels.iter().position(|l| l.mode == mode),
        }
    }

    /// The level of a tier, `None` for evicted or a mode off the ladder.
    pub fn level(&self, tier: Tier) -> Option<&Level> {
        let mode = tier.mode()?;
        self.levels.iter().find(|l| l.mode == mode)
    }

    /// True when `tier` is evicted or one of this ladder's levels.
    pub fn contains(&self, tier: Tier) -> bool {
        self.index(tier).is_some()
    }

    /// Decoder positions a page costs at `tier` (0 when evicted or off the ladder).
    pub fn positions(&self, tier: Tier) -> u32 {
        self.level(tier).map_or(0, |l| l.positions)
    }

    /// One step down: the next level, or evicted after the last one (evicted, and a mode off the
    /// ladder, go to evicted).
    pub fn lower(&self, tier: Tier) -> Tier {
        self.index(tier)
            .map_or(Tier::Evicted, |i| self.tier_at(i + 1))
    }

    /// The tier at a level index, evicted past the last level.
    pub fn tier_at(&self, index: usize) -> Tier {
        self.levels.get(index).map_or(Tier::Evicted, |l| l.tier())
    }
}

impl Default for Ladder {
    /// DeepSeek-OCR's native modes: large (421 positions), base (273), small (111), tiny (73).
    fn default() -> Self {
        Ladder {
            levels: vec![
                Level::new(Mode::Large),
                Level::new(Mode::Base),
                Level::new(Mode::Small),
                Level::new(Mode::Tiny),
            ],
        }
    }
}

impl TryFrom<Vec<Level>> for Ladder {
    type Error = PolicyError;

    fn try_from(levels: Vec<Level>) -> Result<Self> {
        Ladder::new(levels)
    }
}

impl From<Ladder> for Vec<Level> {
    fn from(ladder: Ladder) -> Self {
        ladder.levels
    }
}
