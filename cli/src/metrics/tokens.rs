//! The text-token counter the caller supplies (the DeepSeek-OCR tokenizer lives in the decoder
//! crate), used for compression ratios, buckets and the truncation baseline.

use serde::Serialize;

use super::error::BoxError;

/// Which end of a text the truncation baseline keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The first `n` tokens (a page read from its top until the budget runs out).
    #[default]
    First,
    /// The last `n` tokens (an agent keeping its most recent context).
    Last,
}

impl Keep {
    /// `first` or `last`.
    pub fn name(self) -> &'static str {
        match self {
            Keep::First => "first",
            Keep::Last => "last",
        }
    }
}

impl std::str::FromStr for Keep {
    type Err = String;

    /// `first` or `last`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "first" => Ok(Keep::First),
            "last" => Ok(Keep::Last),
            _ => Err(format!("expected first or last, got {s:?}")),
        }
    }
}

/// A named text tokenizer: counts tokens and truncates text to its first or last `n` tokens.
///
/// Compression ratios are only meaningful with the tokenizer named, so every report carries
/// [`TextTokenizer::name`].
pub trait TextTokenizer: Sync {
    /// A name for reports, e.g. `deepseek-ocr (assets/tokenizer/tokenizer.json)`.
    fn name(&self) -> String;
    /// The number of tokens `text` encodes to (no special tokens).
    fn count(&self, text: &str) -> Result<usize, BoxError>;
    /// The text of the first or last `n` tokens of `text` (encode, keep `n`, decode); all of
    /// `text` when it has at most `n` tokens.
    fn truncate(&self, text: &str, n: usize, keep: Keep) -> Result<String, BoxError>;
}

/// A tokenizer that counts whitespace-separated chunks: for tests and examples, never for reported
/// figures (its name says so).
#[derive(Debug, Clone, Copy, Default)]
pub struct WhitespaceTokenizer;

impl TextTokenizer for WhitespaceTokenizer {
    fn name(&self) -> String {
        "whitespace".to_owned()
    }

    fn count(&self, text: &str) -> Result<usize, BoxError> {
        Ok(text.split_whitespace().count())
    }

    /// Keeps the source text from the start of the first kept chunk to the end of the last one
    /// (original spacing kept inside).
    fn truncate(&self, text: &str, n: usize, keep: Keep) -> Result<String, BoxError> {
        let chunks: Vec<(usize, usize)> = chunk_spans(text).collect();
        if chunks.len() <= n {
            return Ok(text.to_owned());
        }
        if n == 0 {
            return Ok(String::new());
        }
        Ok(match keep {
            Keep::First => text[..chunks[n - 1].1].to_owned(),
            Keep::Last => text[chunks[chunks.len() - n].0..].to_owned(),
        })
    }
}

/// Byte spans `(start, end)` of the whitespace-separated chunks of `text`.
fn chunk_spans(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = None;
    text.char_indices()
        .chain(std::iter::once((text.len(), ' ')))
        .filter_map(move |(i, c)| match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                start = None;
                Some((s, i))
            }
            (false, None) => {
                start = Some(i);
                None
            }
            _ => None,
        })
}
