//! Summaries of per-page scores: mean, percentiles and token buckets.

use serde::Serialize;

/// The arithmetic mean of `values`, or `None` when there are none.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The `p`-th quantile (`p` in `[0, 1]`, clamped) of `values`, by linear interpolation between
/// closest ranks (Hyndman and Fan's type 7, numpy's and R's default): sort ascending as
/// `x[0..n]`, let `h = (n - 1) p`, and return `x[⌊h⌋] + (h - ⌊h⌋)(x[⌊h⌋ + 1] - x[⌊h⌋])`.
/// `None` when there are no values; NaNs sort last.
///
/// ```
/// use lethe_cli::metrics::percentile;
/// // h = 0.1 * 9 = 0.9 -> 1 + 0.9 * (2 - 1)
/// let v: Vec<f64> = (1..=10).map(f64::from).collect();
/// assert!((percentile(&v, 0.10).unwrap() - 1.9).abs() < 1e-12);
/// ```
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut x = values.to_vec();
    x.sort_by(|a, b| a.total_cmp(b));
    let h = (x.len() - 1) as f64 * p.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(x.len() - 1);
    Some(x[lo] + (h - lo as f64) * (x[hi] - x[lo]))
}

/// Mean and tails of one metric over a set of pages.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Summary {
    /// Pages that have a value (span recall leaves out pages without critical spans).
    pub n: usize,
    /// Arithmetic mean; `None` when `n == 0`.
    pub mean: Option<f64>,
    /// 10th percentile ([`percentile`] at 0.10): the worst decile of a higher-is-better metric.
    pub p10: Option<f64>,
    /// 90th percentile ([`percentile`] at 0.90): the worst decile of a lower-is-better metric
    /// (edit distance).
    pub p90: Option<f64>,
}

impl Summary {
    /// Summarises `values`.
    pub fn of(values: &[f64]) -> Self {
        Summary {
            n: values.len(),
            mean: mean(values),
            p10: percentile(values, 0.10),
            p90: percentile(values, 0.90),
        }
    }
}

/// A half-open range `[lo, hi)` of text tokens per page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Bucket {
    /// Inclusive lower bound.
    pub lo: usize,
    /// Exclusive upper bound.
    pub hi: usize,
}

impl Bucket {
    /// The bucket of width `width` holding `tokens`: `lo = ⌊tokens / width⌋ · width`,
    /// `hi = lo + width`. A `width` of 0 is treated as 1.
    ///
    /// ```
    /// use lethe_cli::metrics::Bucket;
    /// assert_eq!(Bucket::of(600, 100), Bucket { lo: 600, hi: 700 });
    /// assert_eq!(Bucket::of(699, 100), Bucket { lo: 600, hi: 700 });
    /// assert_eq!(Bucket::of(700, 100).to_string(), "700-800");
    /// ```
    pub fn of(tokens: usize, width: usize) -> Self {
        let width = width.max(1);
        let lo = tokens / width * width;
        Bucket { lo, hi: lo + width }
    }
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}
