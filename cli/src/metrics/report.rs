//! Per-page records, their aggregation per series (optical mode or baseline) and per token bucket,
//! and the report's renderings: aligned text table, JSON and CSV. The plot lives in
//! [`super::plot`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::error::{Error, Result};
use super::spans::{span_recall, SpanRecall};
use super::stats::{Bucket, Summary};
use super::text::{char_f1, normalized_edit_distance, word_precision};
use super::tokens::{Keep, TextTokenizer};

/// The default token bucket width: 100 text tokens, as the DeepSeek-OCR paper's Fox table.
pub const DEFAULT_BUCKET_WIDTH: usize = 100;

/// Every metric of one decoded page against its source.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PageScores {
    /// [`word_precision`](super::word_precision), higher is better.
    pub word_precision: f64,
    /// [`normalized_edit_distance`](super::normalized_edit_distance), lower is better.
    pub edit_distance: f64,
    /// [`char_f1`](super::char_f1), higher is better.
    pub char_f1: f64,
    /// [`span_recall`](super::span_recall).
    pub spans: SpanRecall,
}

/// Scores `output` against `source` with every metric.
///
/// ```
/// use lethe_cli::metrics::score_page;
/// let s = score_page("id 42", "id 42");
/// assert_eq!((s.word_precision, s.edit_distance, s.char_f1), (1.0, 0.0, 1.0));
/// assert_eq!(s.spans.recall(), Some(1.0));
/// ```
pub fn score_page(source: &str, output: &str) -> PageScores {
    PageScores {
        word_precision: word_precision(source, output),
        edit_distance: normalized_edit_distance(source, output),
        char_f1: char_f1(source, output),
        spans: span_recall(source, output),
    }
}

/// Which curve a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesKind {
    /// The page rendered at a mode, encoded and decoded back by the model.
    Optical,
    /// Baseline: the first N text tokens of the page, N = the mode's decoder positions for the page.
    Truncation,
    /// Baseline: the page's text itself, every text token kept (ratio 1).
    Uncompressed,
}

/// One page scored in one series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PageRecord {
    /// The transcript or image set the page comes from.
    pub document: String,
    /// The page index within the document, from 0.
    pub page: usize,
    /// Which curve this record belongs to.
    pub kind: SeriesKind,
    /// The resolution mode (optical) or the mode whose budget was used (truncation); `None` for
    /// uncompressed.
    pub mode: Option<String>,
    /// Text tokens of the page's source text.
    pub text_tokens: usize,
    /// Decoder positions the page costs: what the decoder reads (vision tokens with newlines and
    /// separator); for baselines, the text tokens kept or allowed.
    pub positions: usize,
    /// Nominal vision tokens (the paper's count, without newlines and separator); for baselines,
    /// equal to `positions`.
    pub nominal_tokens: usize,
    /// The scores.
    pub scores: PageScores,
}

/// A page's source text with its token count, from which records of every series are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePage {
    /// The transcript or image set the page comes from.
    pub document: String,
    /// The page index within the document, from 0.
    pub page: usize,
    /// The source text (what the page shows).
    pub text: String,
    /// Its text tokens, by the report's tokenizer.
    pub text_tokens: usize,
}

impl SourcePage {
    /// Counts the tokens of `text` with `tokenizer`.
    pub fn new(
        document: impl Into<String>,
        page: usize,
        text: impl Into<String>,
        tokenizer: &dyn TextTokenizer,
    ) -> Result<Self> {
        let document = document.into();
        let text = text.into();
        let text_tokens = tokenizer.count(&text).map_err(|source| Error::Tokenizer {
            tokenizer: tokenizer.name(),
            document: document.clone(),
            page,
            source,
        })?;
        Ok(SourcePage {
            document,
            page,
            text,
            text_tokens,
        })
    }

    /// Scores a decoder's `output` for this page rendered at `mode`, which cost `positions` decoder
    /// positions and `nominal_tokens` nominal vision tokens.
    pub fn optical(
        &self,
        mode: &str,
        positions: usize,
        nominal_tokens: usize,
        output: &str,
    ) -> PageRecord {
        self.record(
            SeriesKind::Optical,
            Some(mode),
            positions,
            nominal_tokens,
            output,
        )
    }

    /// The truncation baseline at `mode`'s budget: keeps the first or last `positions` text
    /// tokens of the page (by `tokenizer`) and scores them against the whole page.
    pub fn truncation(
        &self,
        mode: &str,
        positions: usize,
        keep: Keep,
        tokenizer: &dyn TextTokenizer,
    ) -> Result<PageRecord> {
        let kept = tokenizer
            .truncate(&self.text, positions, keep)
            .map_err(|source| Error::Tokenizer {
                tokenizer: tokenizer.name(),
                document: self.document.clone(),
                page: self.page,
                source,
            })?;
        Ok(self.record(
            SeriesKind::Truncation,
            Some(mode),
            positions,
            positions,
            &kept,
        ))
    }

    /// The uncompressed baseline: the page's own text, costing its own text tokens. Its scores
    /// are computed like any other (they come out perfect because the metrics are reflexive).
    pub fn uncompressed(&self) -> PageRecord {
        self.record(
            SeriesKind::Uncompressed,
            None,
            self.text_tokens,
            self.text_tokens,
            &self.text,
        )
    }

    fn record(
        &self,
        kind: SeriesKind,
        mode: Option<&str>,
        positions: usize,
        nominal_tokens: usize,
        output: &str,
    ) -> PageRecord {
        PageRecord {
            document: self.document.clone(),
            page: self.page,
            kind,
            mode: mode.map(str::to_owned),
            text_tokens: self.text_tokens,
            positions,
            nominal_tokens,
            scores: score_page(&self.text, output),
        }
    }
}

/// Totals and metric summaries over a set of records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Aggregate {
    /// Pages.
    pub pages: usize,
    /// Total text tokens.
    pub text_tokens: usize,
    /// Total decoder positions.
    pub positions: usize,
    /// Total nominal vision tokens.
    pub nominal_tokens: usize,
    /// Compression ratio against decoder positions: `Σ text tokens / Σ positions` (so the mean
    /// page's ratio, weighted by positions); `None` when no positions.
    pub ratio_per_position: Option<f64>,
    /// Compression ratio against nominal vision tokens: `Σ text tokens / Σ nominal tokens`.
    pub ratio_per_nominal: Option<f64>,
    /// Word precision over pages.
    pub word_precision: Summary,
    /// Normalised edit distance over pages (lower is better; its worst decile is `p90`).
    pub edit_distance: Summary,
    /// Character F1 over pages.
    pub char_f1: Summary,
    /// Critical-span recall over the pages that have critical spans.
    pub span_recall: Summary,
}

impl Aggregate {
    /// Aggregates `records`.
    pub fn of(records: &[&PageRecord]) -> Self {
        let text_tokens: usize = records.iter().map(|r| r.text_tokens).sum();
        let positions: usize = records.iter().map(|r| r.positions).sum();
        let nominal_tokens: usize = records.iter().map(|r| r.nominal_tokens).sum();
        let ratio = |den: usize| (den > 0).then(|| text_tokens as f64 / den as f64);
        let col = |f: fn(&PageRecord) -> Option<f64>| -> Vec<f64> {
            records.iter().filter_map(|r| f(r)).collect()
        };
        Aggregate {
            pages: records.len(),
            text_tokens,
            positions,
            nominal_tokens,
            ratio_per_position: ratio(positions),
            ratio_per_nominal: ratio(nominal_tokens),
            word_precision: Summary::of(&col(|r| Some(r.scores.word_precision))),
            edit_distance: Summary::of(&col(|r| Some(r.scores.edit_distance))),
            char_f1: Summary::of(&col(|r| Some(r.scores.char_f1))),
            span_recall: Summary::of(&col(|r| r.scores.spans.recall())),
        }
    }
}

/// The aggregate of one token bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BucketReport {
    /// The range of text tokens per page.
    pub bucket: Bucket,
    /// The pages whose text tokens fall in the bucket.
    #[serde(flatten)]
    pub aggregate: Aggregate,
}

/// One curve of the report: an optical mode, or a baseline at one mode's budget, or uncompressed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesReport {
    /// `base`, `truncation@base` or `uncompressed`.
    pub name: String,
    /// Which curve.
    pub kind: SeriesKind,
    /// The mode (optical) or the mode whose budget was used (truncation).
    pub mode: Option<String>,
    /// Over all pages.
    pub all: Aggregate,
    /// Per token bucket, ascending.
    pub buckets: Vec<BucketReport>,
}

/// The whole benchmark: every series, side by side, and the page records they summarise.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// The tokenizer that counted text tokens.
    pub tokenizer: String,
    /// The decoder that read the pages back.
    pub reader: String,
    /// Token bucket width.
    pub bucket_width: usize,
    /// Which end of each page the truncation baselines keep.
    pub truncation: Keep,
    /// Series in order: per mode (first appearance) the optical series then its truncation
    /// baseline; then uncompressed.
    pub series: Vec<SeriesReport>,
    /// Every page record.
    pub pages: Vec<PageRecord>,
}

/// Builds a [`BenchReport`] from page records.
#[derive(Debug, Clone)]
pub struct BenchReportBuilder {
    tokenizer: String,
    reader: String,
    bucket_width: usize,
    truncation: Keep,
    records: Vec<PageRecord>,
}

impl BenchReport {
    /// A builder with bucket width [`DEFAULT_BUCKET_WIDTH`] and no records.
    ///
    /// ```
    /// use lethe_cli::metrics::{BenchReport, Keep, SourcePage, WhitespaceTokenizer};
    /// let tok = WhitespaceTokenizer;
    /// let page = SourcePage::new("doc", 0, "alpha beta gamma delta", &tok).unwrap();
    /// let report = BenchReport::builder()
    ///     .tokenizer("whitespace")
    ///     .reader("identity")
    ///     .record(page.optical("tiny", 2, 1, "alpha beta"))
    ///     .record(page.truncation("tiny", 2, Keep::First, &tok).unwrap())
    ///     .record(page.uncompressed())
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(report.series.len(), 3);
    /// assert_eq!(report.series[0].all.ratio_per_position, Some(2.0));
    /// assert_eq!(report.series[0].all.word_precision.mean, Some(0.5));
    /// ```
    pub fn builder() -> BenchReportBuilder {
        BenchReportBuilder {
            tokenizer: String::new(),
            reader: String::new(),
            bucket_width: DEFAULT_BUCKET_WIDTH,
            truncation: Keep::First,
            records: Vec::new(),
        }
    }
}

impl BenchReportBuilder {
    /// Names the tokenizer that counted text tokens.
    pub fn tokenizer(mut self, name: impl Into<String>) -> Self {
        self.tokenizer = name.into();
        self
    }

    /// Names the decoder that read pages back.
    pub fn reader(mut self, name: impl Into<String>) -> Self {
        self.reader = name.into();
        self
    }

    /// Sets the token bucket width (at least 1).
    pub fn bucket_width(mut self, width: usize) -> Self {
        self.bucket_width = width;
        self
    }

    /// Says which end of each page the truncation records kept (default [`Keep::First`]).
    pub fn truncation(mut self, keep: Keep) -> Self {
        self.truncation = keep;
        self
    }

    /// Adds one record.
    pub fn record(mut self, record: PageRecord) -> Self {
        self.records.push(record);
        self
    }

    /// Adds records.
    pub fn records(mut self, records: impl IntoIterator<Item = PageRecord>) -> Self {
        self.records.extend(records);
        self
    }

    /// Aggregates the records.
    pub fn build(self) -> Result<BenchReport> {
        if self.bucket_width == 0 {
            return Err(Error::ZeroBucketWidth);
        }
        let mut modes: Vec<&str> = Vec::new();
        for r in &self.records {
            if let Some(m) = r.mode.as_deref() {
                if !modes.contains(&m) {
                    modes.push(m);
                }
            }
        }
        let mut keys: Vec<(SeriesKind, Option<&str>)> = Vec::new();
        for m in &modes {
            keys.push((SeriesKind::Optical, Some(m)));
            keys.push((SeriesKind::Truncation, Some(m)));
        }
        keys.push((SeriesKind::Uncompressed, None));
        let mut series = Vec::new();
        for (kind, mode) in keys {
            let recs: Vec<&PageRecord> = self
                .records
                .iter()
                .filter(|r| r.kind == kind && r.mode.as_deref() == mode)
                .collect();
            if recs.is_empty() {
                continue;
            }
            let mut by_bucket: BTreeMap<Bucket, Vec<&PageRecord>> = BTreeMap::new();
            for r in &recs {
                by_bucket
                    .entry(Bucket::of(r.text_tokens, self.bucket_width))
                    .or_default()
                    .push(r);
            }
            let name = match (kind, mode) {
                (SeriesKind::Optical, Some(m)) => m.to_owned(),
                (SeriesKind::Truncation, Some(m)) => format!("truncation@{m}"),
                _ => "uncompressed".to_owned(),
            };
            series.push(SeriesReport {
                name,
                kind,
                mode: mode.map(str::to_owned),
                all: Aggregate::of(&recs),
                buckets: by_bucket
                    .into_iter()
                    .map(|(bucket, rs)| BucketReport {
                        bucket,
                        aggregate: Aggregate::of(&rs),
                    })
                    .collect(),
            });
        }
        Ok(BenchReport {
            tokenizer: self.tokenizer,
            reader: self.reader,
            bucket_width: self.bucket_width,
            truncation: self.truncation,
            series,
            pages: self.records,
        })
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x"))
}

/// The columns shared by the table's two parts, after the leading ones.
const METRIC_HEADERS: [&str; 12] = [
    "pages",
    "text tok",
    "positions",
    "vision tok",
    "ratio/pos",
    "ratio/tok",
    "word prec",
    "p10",
    "edit dist",
    "p90",
    "char F1",
    "spans",
];

fn metric_cells(a: &Aggregate) -> Vec<String> {
    vec![
        a.pages.to_string(),
        a.text_tokens.to_string(),
        a.positions.to_string(),
        a.nominal_tokens.to_string(),
        fmt_ratio(a.ratio_per_position),
        fmt_ratio(a.ratio_per_nominal),
        fmt_opt(a.word_precision.mean, 3),
        fmt_opt(a.word_precision.p10, 3),
        fmt_opt(a.edit_distance.mean, 3),
        fmt_opt(a.edit_distance.p90, 3),
        fmt_opt(a.char_f1.mean, 3),
        fmt_opt(a.span_recall.mean, 3),
    ]
}

/// Renders rows as columns padded to their widest cell: the first `left` columns left-aligned,
/// the rest right-aligned; a dashed rule under the header.
fn aligned(rows: &[Vec<String>], left: usize) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c < left {
                    format!("{s:<w$}", w = widths[c])
                } else {
                    format!("{s:>w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

impl BenchReport {
    /// The report as an aligned text table: a summary row per series, then a row per series and
    /// token bucket. Ratios are text tokens per decoder position (`ratio/pos`) and per nominal
    /// vision token (`ratio/tok`); `p10` is the word-precision 10th percentile, `p90` the
    /// edit-distance 90th percentile (both the worst decile); `spans` is critical-span recall.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "text tokens by `{}`; pages decoded by `{}`; truncation@MODE keeps the {} N text \
             tokens of a page, N = MODE's decoder positions",
            self.tokenizer,
            self.reader,
            self.truncation.name()
        );
        out.push('\n');
        let mut rows = vec![std::iter::once("series")
            .chain(METRIC_HEADERS)
            .map(str::to_owned)
            .collect::<Vec<_>>()];
        for s in &self.series {
            let mut row = vec![s.name.clone()];
            row.extend(metric_cells(&s.all));
            rows.push(row);
        }
        out.push_str(&aligned(&rows, 1));
        out.push('\n');
        let _ = writeln!(out, "per {} text tokens per page:", self.bucket_width);
        let mut rows = vec![["series", "tokens"]
            .into_iter()
            .chain(METRIC_HEADERS)
            .map(str::to_owned)
            .collect::<Vec<_>>()];
        for s in &self.series {
            for b in &s.buckets {
                let mut row = vec![s.name.clone(), b.bucket.to_string()];
                row.extend(metric_cells(&b.aggregate));
                rows.push(row);
            }
        }
        out.push_str(&aligned(&rows, 2));
        out
    }

    /// The report as pretty JSON (every series, bucket and page record).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(Error::Json)
    }

    /// The CSV header of [`BenchReport::to_csv`].
    pub const CSV_HEADER: &'static str = "series,kind,mode,bucket,pages,text_tokens,positions,\
nominal_tokens,ratio_per_position,ratio_per_nominal,word_precision_mean,word_precision_p10,\
edit_distance_mean,edit_distance_p90,char_f1_mean,char_f1_p10,span_recall_mean,span_recall_p10,\
span_pages";

    /// The report as CSV: [`BenchReport::CSV_HEADER`], then per series a row with bucket `all` and
    /// a row per token bucket (`600-700`). Empty cells for undefined values; floats in full
    /// precision.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(Self::CSV_HEADER);
        out.push('\n');
        let f = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        let kind = |k: SeriesKind| match k {
            SeriesKind::Optical => "optical",
            SeriesKind::Truncation => "truncation",
            SeriesKind::Uncompressed => "uncompressed",
        };
        for s in &self.series {
            let rows = std::iter::once(("all".to_owned(), &s.all)).chain(
                s.buckets
                    .iter()
                    .map(|b| (b.bucket.to_string(), &b.aggregate)),
            );
            for (bucket, a) in rows {
                let cells = [
                    csv_field(&s.name),
                    kind(s.kind).to_owned(),
                    csv_field(s.mode.as_deref().unwrap_or("")),
                    bucket,
                    a.pages.to_string(),
                    a.text_tokens.to_string(),
                    a.positions.to_string(),
                    a.nominal_tokens.to_string(),
                    f(a.ratio_per_position),
                    f(a.ratio_per_nominal),
                    f(a.word_precision.mean),
                    f(a.word_precision.p10),
                    f(a.edit_distance.mean),
                    f(a.edit_distance.p90),
                    f(a.char_f1.mean),
                    f(a.char_f1.p10),
                    f(a.span_recall.mean),
                    f(a.span_recall.p10),
                    a.span_recall.n.to_string(),
                ];
                out.push_str(&cells.join(","));
                out.push('\n');
            }
        }
        out
    }
}

/// Quotes a CSV field when it holds a comma, quote or line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
