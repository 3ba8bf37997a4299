//! Forgetting curves: how age (and reinforcement by access) maps to a tier.

use serde::{Deserialize, Serialize};

use crate::error::{PolicyError, Result};

/// The unit ages are measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// Conversation turns.
    Turns,
    /// Seconds.
    Seconds,
}

impl Clock {
    /// The unit's plural name, for explanations.
    pub fn unit(self) -> &'static str {
        match self {
            Clock::Turns => "turns",
            Clock::Seconds => "s",
        }
    }
}

/// What a page's age is counted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgeFrom {
    /// The page's creation: accesses do not reset the age (they still grow stability).
    Created,
    /// The last access (or creation, if never accessed), as in spaced repetition.
    LastAccess,
}

/// How age maps to a level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Curve {
    /// Step thresholds: `after[i]` is the age (in the policy's clock) at which a page leaves level
    /// `i` for level `i + 1`; at `after[last]` it is evicted. A page whose age equals a threshold
    /// has reached it. One threshold per ladder level, non-decreasing.
    Step {
        /// Ages at which a page drops one level.
        after: Vec<u64>,
    },
    /// Exponential retention `R = exp(-age / S)` with stability `S` grown by accesses (see
    /// [`Reinforcement`]); a page stays at level `i` while `R >= thresholds[i]` (the first level
    /// whose threshold it meets), and is evicted below the last threshold. One threshold per ladder
    /// level, each in `[0, 1]`, non-increasing.
    Retention {
        /// Minimum retention to be kept at each level.
        thresholds: Vec<f64>,
    },
}

impl Curve {
    /// Level index (0-based; `thresholds.len()` means evicted) for a step curve at `age`.
    pub(crate) fn step_index(after: &[u64], age: u64) -> usize {
        after.iter().take_while(|&&t| age >= t).count()
    }

    /// Level index for a retention curve at retention `r`.
    pub(crate) fn retention_index(thresholds: &[f64], r: f64) -> usize {
        thresholds.iter().take_while(|&&t| r < t).count()
    }

    pub(crate) fn validate(&self, levels: usize) -> Result<()> {
        match self {
            Curve::Step { after } => {
                if after.len() != levels {
                    return Err(PolicyError::invalid(
                        "curve.after",
                        format!(
                            "needs one age per ladder level ({levels}), got {}",
                            after.len()
                        ),
                    ));
                }
                if let Some(i) = after.windows(2).position(|w| w[1] < w[0]) {
                    return Err(PolicyError::invalid(
                        format!("curve.after[{}]", i + 1),
                        format!(
                            "ages must not decrease, got {} after {}",
                            after[i + 1],
                            after[i]
                        ),
                    ));
                }
            }
            Curve::Retention { thresholds } => {
                if thresholds.len() != levels {
                    return Err(PolicyError::invalid(
                        "curve.thresholds",
                        format!(
                            "needs one retention per ladder level ({levels}), got {}",
                            thresholds.len()
                        ),
                    ));
                }
                for (i, &t) in thresholds.iter().enumerate() {
                    if !(0.0..=1.0).contains(&t) {
                        return Err(PolicyError::invalid(
                            format!("curve.thresholds[{i}]"),
                            format!("must be within [0, 1], got {t}"),
                        ));
                    }
                    if i > 0 && t > thresholds[i - 1] {
                        return Err(PolicyError::invalid(
                            format!("curve.thresholds[{i}]"),
                            format!(
                                "thresholds must not increase, got {t} after {}",
                                thresholds[i - 1]
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Spaced-repetition reinforcement: stability `S = stability * growth ^ access_count`.
///
/// Used by the retention curve, and by budget fitting (under either curve) to rank pages.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Reinforcement {
    /// `S0`: stability of a never-accessed page, in the policy's clock units (> 0).
    pub stability: f64,
    /// Factor applied to the stability by each access (>= 1, so an access never hastens
    /// forgetting).
    pub growth: f64,
}

impl Reinforcement {
    /// Stability after `access_count` accesses; always > 0, possibly infinite.
    pub fn stability(&self, access_count: u32) -> f64 {
        let exp = i32::try_from(access_count).unwrap_or(i32::MAX);
        self.stability * self.growth.powi(exp)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(self.stability.is_finite() && self.stability > 0.0) {
            return Err(PolicyError::invalid(
                "reinforcement.stability",
                format!("must be a finite number > 0, got {}", self.stability),
            ));
        }
        if !(self.growth.is_finite() && self.growth >= 1.0) {
            return Err(PolicyError::invalid(
                "reinforcement.growth",
                format!("must be a finite number >= 1, got {}", self.growth),
            ));
        }
        Ok(())
    }
}

/// Retention `exp(-age / stability)`, in `[0, 1]`; 1 at age 0, non-increasing in age.
///
/// A non-positive or NaN stability is treated as "forgets at once" (0 for any age > 0).
pub fn retention(age: f64, stability: f64) -> f64 {
    if age <= 0.0 || age.is_nan() {
        return 1.0;
    }
    if stability.is_nan() || stability <= 0.0 {
        return 0.0;
    }
    (-age / stability).exp().clamp(0.0, 1.0)
}

/// Estimated fraction of a page's text the decoder recovers at a compression ratio (text tokens
/// per decoder position): a piecewise-linear curve through `(ratio, recall)` points, flat before the
/// first point and after the last.
///
/// Budget fitting uses it to value each tier of each page: demoting a short page costs little,
/// demoting a dense one costs much.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<[f64; 2]>", into = "Vec<[f64; 2]>")]
pub struct RecallCurve {
    points: Vec<[f64; 2]>,
}

impl RecallCurve {
    /// Checks and builds a curve from `(ratio, recall)` points: at least one, ratios finite, >= 0 and
    /// strictly increasing, recalls in `[0, 1]` and non-increasing.
    ///
    /// # Errors
    /// [`PolicyError::Invalid`] (field `budget.recall`) naming the bad point.
    pub fn new(points: Vec<[f64; 2]>) -> Result<Self> {
        if points.is_empty() {
            return Err(PolicyError::invalid(
                "budget.recall",
                "needs at least one [ratio, recall] point",
            ));
        }
        for (i, &[ratio, recall]) in points.iter().enumerate() {
            let field = format!("budget.recall[{i}]");
            if !(ratio.is_finite() && ratio >= 0.0) {
                return Err(PolicyError::invalid(
                    field,
                    format!("ratio must be a finite number >= 0, got {ratio}"),
                ));
            }
            if !(0.0..=1.0).contains(&recall) {
                return Err(PolicyError::invalid(
                    field,
                    format!("recall must be within [0, 1], got {recall}"),
                ));
            }
            if i > 0 {
                let [prev_ratio, prev_recall] = points[i - 1];
                if ratio <= prev_ratio {
                    return Err(PolicyError::invalid(
                        field,
                        format!("ratios must increase, got {ratio} after {prev_ratio}"),
                    ));
                }
                if recall > prev_recall {
                    return Err(PolicyError::invalid(
                        field,
                        format!("recall must not increase, got {recall} after {prev_recall}"),
                    ));
                }
            }
        }
        Ok(RecallCurve { points })
    }

    /// The `(ratio, recall)` points.
    pub fn points(&self) -> &[[f64; 2]] {
        &self.points
    }

    /// Estimated recall at `ratio` text tokens per decoder position.
    pub fn recall(&self, ratio: f64) -> f64 {
        let first = self.points[0];
        if ratio.is_nan() || ratio <= first[0] {
            return first[1];
        }
        for w in self.points.windows(2) {
            let ([x0, y0], [x1, y1]) = (w[0], w[1]);
            if ratio <= x1 {
                return y0 + (y1 - y0) * (ratio - x0) / (x1 - x0);
            }
        }
        self.points[self.points.len() - 1][1]
    }
}

impl Default for RecallCurve {
    /// About 97% below 10x, about 60% at 20x (DeepSeek-OCR, arXiv 2510.18234, Fox benchmark), and
    /// an extrapolated 10% at 40x.
    fn default() -> Self {
        RecallCurve {
            points: vec![[10.0, 0.97], [20.0, 0.6], [40.0, 0.1]],
        }
    }
}

impl TryFrom<Vec<[f64; 2]>> for RecallCurve {
    type Error = PolicyError;

    fn try_from(points: Vec<[f64; 2]>) -> Result<Self> {
        RecallCurve::new(points)
    }
}

impl From<RecallCurve> for Vec<[f64; 2]> {
    fn from(curve: RecallCurve) -> Self {
        curve.points
    }
}
