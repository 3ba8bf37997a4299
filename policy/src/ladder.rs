//! The ladder of resolution tiers a page moves down as it is forgotten.

use serde::{Deserialize, Serialize};

use crate::error::{PolicyError, Result};

/// Where a page sits on the ladder: a level (an index into [`Ladder::levels`], 0 = the most
/// resolution) or evicted (gone).
///
/// The order is by depth: `Level(0) < Level(1) < … < Evicted`, so a *greater* tier has *less*
/// resolution, and "moving up" means moving to a smaller tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Kept at the ladder level with this index.
    Level(usize),
    /// Forgotten: no image and no tokens are kept.
    Evicted,
}

impl Tier {
    /// The level index, or `None` when evicted.
    pub fn level(self) -> Option<usize> {
        match self {
            Tier::Level(i) => Some(i),
            Tier::Evicted => None,
        }
    }

    /// True when evicted.
    pub fn is_evicted(self) -> bool {
        self == Tier::Evicted
    }
}

/// Name used for [`Tier::Evicted`] in TOML and in explanations.
pub const EVICTED: &str = "evicted";

/// One rung of the ladder: a resolution mode's name and what a page costs there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    /// The mode's name, e.g. `"base"` (the renderer's mode names).
    pub name: String,
    /// Decoder positions one page takes at this level (vision tokens plus row newlines and the
    /// view separator), the unit of a token budget.
    pub positions: u32,
}

impl Level {
    /// A level named `name` costing `positions` decoder positions per page.
    pub fn new(name: impl Into<String>, positions: u32) -> Self {
        Level {
            name: name.into(),
            positions,
        }
    }
}

/// An ordered list of levels, most resolution first; below the last level a page is evicted.
///
/// Valid ladders have at least one level, unique non-empty names (none of them `"evicted"`) and
/// strictly decreasing, non-zero position costs.
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
            if level.name.trim().is_empty() {
                return Err(PolicyError::invalid(format!("{field}.name"), "is empty"));
            }
            if level.name == EVICTED {
                return Err(PolicyError::invalid(
                    format!("{field}.name"),
                    "`evicted` is reserved for the tier below the last level",
                ));
            }
            if levels[..i].iter().any(|l| l.name == level.name) {
                return Err(PolicyError::invalid(
                    format!("{field}.name"),
                    format!("`{}` appears twice", level.name),
                ));
            }
            if level.positions == 0 {
                return Err(PolicyError::invalid(
                    format!("{field}.positions"),
                    "must be at least 1",
                ));
            }
            if i > 0 && level.positions >= levels[i - 1].positions {
                return Err(PolicyError::invalid(
                    format!("{field}.positions"),
                    format!(
                        "must be smaller than the level above (`{}`: {}), got {}",
                        levels[i - 1].name,
                        levels[i - 1].positions,
                        level.positions
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
        Tier::Level(0)
    }

    /// The last level before eviction.
    pub fn bottom(&self) -> Tier {
        Tier::Level(self.levels.len() - 1)
    }

    /// The level of a tier, `None` for evicted or an index past the ladder.
    pub fn level(&self, tier: Tier) -> Option<&Level> {
        tier.level().and_then(|i| self.levels.get(i))
    }

    /// True when `tier` is evicted or one of this ladder's levels.
    pub fn contains(&self, tier: Tier) -> bool {
        match tier {
            Tier::Evicted => true,
            Tier::Level(i) => i < self.levels.len(),
        }
    }

    /// Decoder positions a page costs at `tier` (0 when evicted or off the ladder).
    pub fn positions(&self, tier: Tier) -> u32 {
        self.level(tier).map_or(0, |l| l.positions)
    }

    /// The tier's name: the level's name, or `"evicted"`.
    pub fn name(&self, tier: Tier) -> &str {
        match tier {
            Tier::Evicted => EVICTED,
            Tier::Level(_) => self.level(tier).map_or("<off the ladder>", |l| &l.name),
        }
    }

    /// The tier named `name` (a level's name or `"evicted"`).
    pub fn tier(&self, name: &str) -> Option<Tier> {
        if name == EVICTED {
            return Some(Tier::Evicted);
        }
        self.levels
            .iter()
            .position(|l| l.name == name)
            .map(Tier::Level)
    }

    /// One step down: the next level, or evicted after the last one (evicted stays evicted).
    pub fn lower(&self, tier: Tier) -> Tier {
        match tier {
            Tier::Level(i) if i + 1 < self.levels.len() => Tier::Level(i + 1),
            _ => Tier::Evicted,
        }
    }

    /// Tier for a level index that may be one past the end (meaning evicted).
    pub(crate) fn tier_at(&self, index: usize) -> Tier {
        if index < self.levels.len() {
            Tier::Level(index)
        } else {
            Tier::Evicted
        }
    }
}

impl Default for Ladder {
    /// DeepSeek-OCR's native modes: large (421 positions), base (273), small (111), tiny (73).
    fn default() -> Self {
        Ladder {
            levels: vec![
                Level::new("large", 421),
                Level::new("base", 273),
                Level::new("small", 111),
                Level::new("tiny", 73),
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
