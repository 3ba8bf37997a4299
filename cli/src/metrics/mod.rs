//! Recall of decoded text against its source, and the benchmark report built from it.
//!
//! Lethe's claim is measured, not asserted: for every page, the text a decoder reads back from the
//! page image is scored against the text the page was rendered from.
//!
//! - [`word_precision`]: Fox-style word precision, as in the DeepSeek-OCR paper's Fox table: the
//!   share of the source's unique [`words`] found in the output (CJK characters count as words).
//! - [`normalized_edit_distance`]: Levenshtein distance over chars / the longer text's length.
//! - [`char_f1`]: bag-of-characters F1.
//! - [`span_recall`]: exact recall of [`critical_spans`] (numbers, identifiers, URLs, paths,
//!   hashes, UUIDs, ticket ids, code lines).
//! - [`Summary`] (mean, 10th and 90th [`percentile`]) and [`Bucket`]s of text tokens per page.
//! - [`SourcePage`] makes [`PageRecord`]s for the optical series and the baselines (truncation to
//!   the same budget, and the uncompressed text); [`BenchReport`] aggregates them and renders a
//!   table, JSON and CSV; [`Plot`] draws recall against compression as SVG and PNG.
//!
//! Text tokens are counted by a caller-supplied [`TextTokenizer`], whose name every report carries.
//!
//! ```
//! use lethe_cli::metrics::{
//!     score_page, BenchReport, Keep, Plot, SourcePage, TextTokenizer, WhitespaceTokenizer,
//! };
//!
//! let source = "Deploy build 4f2a9c1 to https://ci.example.com/run/42 before 17:30.";
//! let decoded = "Deploy build 4f2a9c1 to https://ci.example.com/run/42 before 17:50.";
//! let s = score_page(source, decoded);
//! assert!(s.word_precision > 0.8 && s.word_precision < 1.0);
//! assert_eq!((s.spans.found, s.spans.total), (2, 3));
//!
//! let tok = WhitespaceTokenizer;
//! let page = SourcePage::new("notes", 0, source, &tok).unwrap();
//! let report = BenchReport::builder()
//!     .tokenizer(tok.name())
//!     .reader("example")
//!     .record(page.optical("tiny", 4, 3, decoded))
//!     .record(page.truncation("tiny", 4, Keep::Last, &tok).unwrap())
//!     .record(page.uncompressed())
//!     .build()
//!     .unwrap();
//! assert!(report.to_table().contains("truncation@tiny"));
//! assert!(Plot::from_report(&report).to_svg().starts_with("<svg"));
//! ```

mod error;
mod font;
pub mod plot;
pub mod report;
mod spans;
mod stats;
mod text;
mod tokens;

pub use error::{BoxError, Error, Result};
pub use plot::{Plot, PlotSeries};
pub use report::{
    score_page, Aggregate, BenchReport, BenchReportBuilder, BucketReport, PageRecord, PageScores,
    SeriesKind, SeriesReport, SourcePage, DEFAULT_BUCKET_WIDTH,
};
pub use spans::{critical_spans, span_found, span_recall, CriticalSpan, SpanKind, SpanRecall};
pub use stats::{mean, percentile, Bucket, Summary};
pub use text::{
    char_f1, is_cjk, levenshtein, normalize_whitespace, normalized_edit_distance, word_precision,
    words,
};
pub use tokens::{Keep, TextTokenizer, WhitespaceTokenizer};
