//! The DeepSeek-OCR tokenizer (byte-level BPE) through the `tokenizers` crate.
//!
//! A checkpoint folder's own `tokenizer.json` is always preferred. The crate also embeds the
//! project's rebuilt DeepSeek-OCR tokenizer (`assets/tokenizer/tokenizer.json`: DeepSeek-V3's BPE
//! plus the twelve DeepSeek-OCR special tokens, verified against every known id list), so text
//! tokens can be counted with no model folder at all: [`Tokenizer::deepseek_ocr`].

use std::path::Path;

use crate::error::{Error, Result};

/// The rebuilt DeepSeek-OCR `tokenizer.json`, embedded in the binary.
static DEEPSEEK_OCR_TOKENIZER_JSON: &[u8] = include_bytes!("../../assets/tokenizer/tokenizer.json");

/// Name of the embedded tokenizer, as reported next to token counts.
pub const DEEPSEEK_OCR_TOKENIZER_NAME: &str = "deepseek-ocr";

/// Something that turns a text piece into token ids, without special tokens.
///
/// [`Tokenizer`] implements it; tests and alternative vocabularies can supply their own (the
/// parity fixtures use a four-word fake vocabulary).
pub trait TextEncoder {
    /// Token ids of `text`, with no BOS/EOS added.
    fn encode_text(&self, text: &str) -> Result<Vec<u32>>;
}

/// A named `tokenizers` tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    name: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("name", &self.name)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

fn tok_err(what: impl Into<String>) -> impl FnOnce(tokenizers::Error) -> Error {
    let what = what.into();
    move |source| Error::Tokenizer { what, source }
}

impl Tokenizer {
    /// The embedded DeepSeek-OCR tokenizer, named `"deepseek-ocr"`.
    pub fn deepseek_ocr() -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(DEEPSEEK_OCR_TOKENIZER_JSON)
            .map_err(tok_err("loading the embedded deepseek-ocr tokenizer.json"))?;
        Ok(Self {
            inner,
            name: DEEPSEEK_OCR_TOKENIZER_NAME.to_string(),
        })
    }

    /// Parses the bytes of a `tokenizer.json` (one embedded in a binary) and names it `name`.
    pub fn from_bytes(name: impl Into<String>, json: &[u8]) -> Result<Self> {
        let name = name.into();
        let inner = tokenizers::Tokenizer::from_bytes(json)
            .map_err(tok_err(format!("loading the {name} tokenizer.json")))?;
        Ok(Self { inner, name })
    }

    /// Loads a `tokenizer.json` file; the tokenizer is named after the file's parent folder.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(tok_err(format!("loading {}", path.display())))?;
        let name = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(Self { inner, name })
    }

    /// Loads `DIR/tokenizer.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("tokenizer.json"))
    }

    /// Renames the tokenizer (the name is reported with token counts).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The tokenizer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, without special tokens added (`add_special_tokens=False`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(tok_err("encoding text"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Number of tokens of `text` (no special tokens added).
    pub fn count(&self, text: &str) -> Result<usize> {
        Ok(self.encode(text)?.len())
    }

    /// Text of `ids`; special tokens are dropped when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(tok_err("decoding ids"))
    }

    /// Id of a token string (e.g. `"<image>"`), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// An incremental decoder for streaming generated ids as text.
    pub fn stream(&self, skip_special: bool) -> TextStream<'_> {
        TextStream {
            tokenizer: self,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            skip_special,
        }
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

impl TextEncoder for Tokenizer {
    fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text)
    }
}

/// Streams text as ids arrive, emitting only complete characters (byte-level BPE can split one
/// character over several tokens).
#[derive(Debug)]
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special: bool,
}

impl TextStream<'_> {
    /// Adds one id; returns the new text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = self.tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            if let Some(new) = full.get(prefix.len()..) {
                let new = new.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                return Ok(Some(new));
            }
        }
        Ok(None)
    }

    /// Text of the ids not yet emitted by [`TextStream::push`] (an incomplete character at the
    /// end is decoded as U+FFFD).
    pub fn finish(&mut self) -> Result<Option<String>> {
        let prefix = self.tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(full
            .get(prefix.len()..)
            .filter(|s| !s.is_empty())
            .map(str::to_string))
    }

    /// The ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
