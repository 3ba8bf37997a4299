//! The text-token counter the caller supplies (the DeepSeek-OCR tokenizer lives in the decoder
//! crate), used for compression ratios, buckets and the truncation baseline.

use super::error::BoxError;

/// A named text tokenizer: counts tokens and truncates text to its first `n` tokens.
///
/// Compression ratios are only meaningful with the tokenizer named, so every report carries
/// [`TextTokenizer::name`].
pub trait TextTokenizer {
    /// A name for reports, e.g. `deepseek-ocr (assets/tokenizer/tokenizer.json)`.
    fn name(&self) -> String;
    /// The number of tokens `text` encodes to (no special tokens).
    fn count(&self, text: &str) -> Result<usize, BoxError>;
    /// The text of the first `n` tokens of `text` (encode, keep `n`, decode); all of `text` when
    /// it has at most `n` tokens.
    fn truncate(&self, text: &str, n: usize) -> Result<String, BoxError>;
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

    /// Keeps the source text up to the end of its `n`-th chunk (original spacing kept).
    fn truncate(&self, text: &str, n: usize) -> Result<String, BoxError> {
        if n == 0 {
            return Ok(String::new());
        }
        let mut seen = 0;
        let mut in_word = false;
        for (i, c) in text.char_indices() {
            if c.is_whitespace() {
                if in_word {
                    seen += 1;
                    if seen == n {
                        return Ok(text[..i].to_owned());
                    }
                }
                in_word = false;
            } else {
                in_word = true;
            }
        }
        Ok(text.to_owned())
    }
}
