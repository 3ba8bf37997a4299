//! `Lethe::provider_context`: a scope's history for a hosted vision model within its own token
//! budget. Recent turns stay text; pages are drawn at the provider's size for their tier (older,
//! lower tiers smaller), cropped to their text, costed by the provider's rule and packed newest
//! first; the answer carries an honest account against plain text and truncation, and writes
//! itself as a request body in the provider's format.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::page::{turn_of, Relaid};
use crate::provider::{PayloadFormat, Provider};
use crate::*;

/// A page as it goes to a provider.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderPage {
    /// The page.
    pub id: PageId,
    /// Its turn range `[start, end)`.
    pub turns: (u64, u64),
    /// The tier whose size it is drawn at (its own, or lower when the budget is tight).
    pub shown_at: Mode,
    /// Image width sent (after cropping to the text).
    pub width: u32,
    /// Image height sent.
    pub height: u32,
    /// The provider's tokens for it.
    pub tokens: u64,
    /// Text tokens of the page's text ([`TextAccounting::tokenizer`]).
    pub text_tokens: u64,
    /// The PNG.
    #[serde(skip)]
    pub png: Vec<u8>,
}

/// The same history as plain text, beside the optical context.
#[derive(Debug, Clone, Serialize)]
pub struct TextAccounting {
    /// The tokenizer that counted the text (no provider tokenizer ships offline; the
    /// DeepSeek-OCR tokenizer stands in, and says so).
    pub tokenizer: String,
    /// The scope's whole history (pages' text and hot turns) as text tokens.
    pub history_text_tokens: u64,
    /// Text tokens of what this context includes (its pages' text and turns).
    pub included_text_tokens: u64,
    /// `included_text_tokens` over the tokens this context costs.
    pub ratio: f64,
    /// Turns of history the context covers (its pages' turns and the hot turns).
    pub turns_included: u64,
    /// Text tokens that truncation to the same budget keeps (the newest turns that fit).
    pub truncation_text_tokens: u64,
    /// Turns truncation keeps.
    pub truncation_turns: u64,
    /// Turns in the scope's history.
    pub history_turns: u64,
}

/// The answer of [`Lethe::provider_context`].
#[derive(Debug, Clone, Serialize)]
pub struct ProviderContext {
    /// The provider.
    pub provider: String,
    /// The model the request names.
    pub model: String,
    /// Its request format.
    pub format: PayloadFormat,
    /// The budget, in the provider's tokens (images) plus text tokens (turns).
    pub budget: u64,
    /// Pages, oldest first.
    pub pages: Vec<ProviderPage>,
    /// Hot turns, oldest first.
    pub turns: Vec<Turn>,
    /// Pages left out to fit the budget, newest first.
    pub dropped_pages: Vec<PageId>,
    /// The provider's tokens for the images.
    pub image_tokens: u64,
    /// Text tokens of the turns ([`TextAccounting::tokenizer`]).
    pub text_tokens: u64,
    /// `image_tokens + text_tokens`.
    pub total_tokens: u64,
    /// Against plain text and truncation.
    pub accounting: TextAccounting,
}

/// The turn texts of a page, in order (a continued piece joins the turn before it), with
/// whether the first continues a turn of the page before.
fn page_turn_texts(record: &PageRecord) -> Option<Vec<(bool, &str)>> {
    let text = record.text.as_deref()?;
    let mut at = 0usize;
    let mut out = Vec::new();
    for piece in &record.layout.pieces {
        let end = (at + piece.len as usize).min(text.len());
        out.push((piece.continued, text.get(at..end).unwrap_or("")));
        at = end;
    }
    Some(out)
}

/// Turns in the union of `[start, end)` ranges given in ascending order of start (pages chained
/// by a split turn share it).
fn covered(ranges: impl Iterator<Item = (u64, u64)>) -> u64 {
    let mut total = 0;
    let mut reached = 0;
    for (start, end) in ranges {
        let start = start.max(reached);
        if end > start {
            total += end - start;
            reached = end;
        }
    }
    total
}

impl Lethe {
    /// `scope`'s history for `provider`'s `model` within `budget` tokens: the hot turns as text
    /// (counted with [`Lethe::tokenizer_name`]'s tokenizer; they must fit), then pages newest
    /// first, each drawn at the provider's size for its tier (a lower tier's when it does not
    /// fit), cropped to its text and costed by the provider's rule, until the budget is spent.
    /// Does not count as an access of the pages.
    pub fn provider_context(
        &self,
        scope: &Scope,
        budget: u64,
        provider: &Provider,
        model: Option<&str>,
    ) -> Result<ProviderContext> {
        let model = model.unwrap_or(&provider.models[0]).to_string();
        let hot = self.store.hot_turns(scope)?;
        let mut turns = Vec::with_capacity(hot.len());
        let mut turn_tokens = Vec::with_capacity(hot.len());
        for t in &hot {
            turn_tokens.push(self.count_tokens(&t.text)?);
            turns.push(turn_of(t));
        }
        let text_tokens: u64 = turn_tokens.iter().sum();
        if text_tokens > budget {
            return Err(Error::Invalid(format!(
                "the {} hot turns alone need {text_tokens} text tokens, more than the budget of \
                 {budget}",
                hot.len()
            )));
        }
        let mut records = self.store.pages(Some(scope))?.pages;
        records.sort_by_key(|r| r.turns.start);

        // Every turn of the history as text tokens, oldest first (truncation's view).
        let mut history: Vec<u64> = Vec::new();
        let mut page_text_tokens = Vec::with_capacity(records.len());
        for record in &records {
            let mut page_tokens = 0;
            match page_turn_texts(record) {
                Some(pieces) => {
                    for (continued, words) in pieces {
                        let n = self.count_tokens(words)?;
                        page_tokens += n;
                        match history.last_mut() {
                            Some(last) if continued => *last += n,
                            _ => history.push(n),
                        }
                    }
                }
                None => {
                    page_tokens = record.layout.text_tokens;
                    history.push(page_tokens);
                }
            }
            page_text_tokens.push(page_tokens);
        }
        history.extend(&turn_tokens);

        let mut left = budget - text_tokens;
        let mut pages = Vec::new();
        let mut dropped_pages = Vec::new();
        for (record, &page_tokens) in records.iter().zip(&page_text_tokens).rev() {
            let Tier::At(mode) = record.tier else {
                dropped_pages.push(record.id);
                continue;
            };
            let relaid = self.relayout(record)?;
            let mut placed = None;
            // Its own tier's size first, then each lower tier's.
            let mut sizes: Vec<Mode> = Mode::ALL
                .into_iter()
                .filter(|m| *m != Mode::Gundam && m.page_px() <= mode.page_px())
                .collect();
            sizes.sort_by_key(|m| std::cmp::Reverse(m.page_px()));
            for shown_at in sizes {
                let image = self.provider_image(record, relaid.as_ref(), provider, shown_at)?;
                let billed = provider.rule.bill(image.width, image.height);
                if billed.tokens <= left {
                    placed = Some((shown_at, image, billed));
                    break;
                }
            }
            let Some((shown_at, image, billed)) = placed else {
                dropped_pages.push(record.id);
                continue;
            };
            left -= billed.tokens;
            pages.push(ProviderPage {
                id: record.id,
                turns: (record.turns.start, record.turns.end),
                shown_at,
                width: image.width,
                height: image.height,
                tokens: billed.tokens,
                text_tokens: page_tokens,
                png: image.to_png()?,
            });
        }
        pages.reverse();
        let image_tokens: u64 = pages.iter().map(|p| p.tokens).sum();
        let total_tokens = image_tokens + text_tokens;

        let included_text_tokens = text_tokens + pages.iter().map(|p| p.text_tokens).sum::<u64>();
        let mut truncation_text_tokens = 0;
        let mut truncation_turns = 0;
        for &n in history.iter().rev() {
            if truncation_text_tokens + n > budget {
                break;
            }
            truncation_text_tokens += n;
            truncation_turns += 1;
        }
        let accounting = TextAccounting {
            tokenizer: self.tokenizer_name().to_string(),
            history_text_tokens: history.iter().sum(),
            included_text_tokens,
            ratio: included_text_tokens as f64 / total_tokens.max(1) as f64,
            turns_included: hot.len() as u64 + covered(pages.iter().map(|p| p.turns)),
            truncation_text_tokens,
            truncation_turns,
            history_turns: history.len() as u64,
        };
        Ok(ProviderContext {
            provider: provider.name.clone(),
            model,
            format: provider.format,
            budget,
            pages,
            turns,
            dropped_pages,
            image_tokens,
            text_tokens,
            total_tokens,
            accounting,
        })
    }

    /// A page drawn with its long edge at the provider's size for `mode`, cropped to its text.
    fn provider_image(
        &self,
        record: &PageRecord,
        relaid: Option<&Relaid>,
        provider: &Provider,
        mode: Mode,
    ) -> Result<PageImage> {
        let px = provider.tiers.at(mode);
        let image = match relaid {
            Some(relaid) => relaid.rasterize_long_edge(&self.renderer, px),
            None => self.image_from(record, None, mode)?.resample(px),
        };
        Ok(image.crop_to_ink())
    }
}

impl ProviderContext {
    /// The request body in the provider's own format, ready to POST: the pages as base64 PNGs
    /// (oldest first, each labelled), then the recent turns as text, then `question`.
    pub fn payload(&self, question: &str, max_tokens: u64) -> Value {
        let b64 = |png: &[u8]| base64::engine::general_purpose::STANDARD.encode(png);
        let intro = format!(
            "Earlier conversation, as {} page images (oldest first; older pages are smaller):",
            self.pages.len()
        );
        let label =
            |p: &ProviderPage| format!("Page {} (turns {}..{}):", p.id, p.turns.0, p.turns.1);
        let mut recent = String::from("Recent turns:\n");
        for t in &self.turns {
            recent.push_str(&format!("{}: {}\n", t.speaker, t.text));
        }
        match self.format {
            PayloadFormat::Anthropic => {
                let mut content = vec![json!({"type": "text", "text": intro})];
                for p in &self.pages {
                    content.push(json!({"type": "text", "text": label(p)}));
                    content.push(json!({"type": "image", "source": {
                        "type": "base64", "media_type": "image/png", "data": b64(&p.png)}}));
                }
                content.push(json!({"type": "text", "text": recent}));
                content.push(json!({"type": "text", "text": question}));
                json!({"model": self.model, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": content}]})
            }
            PayloadFormat::Openai => {
                let mut content = vec![json!({"type": "text", "text": intro})];
                for p in &self.pages {
                    content.push(json!({"type": "text", "text": label(p)}));
                    content.push(json!({"type": "image_url", "image_url": {
                        "url": format!("data:image/png;base64,{}", b64(&p.png)), "detail": "high"}}));
                }
                content.push(json!({"type": "text", "text": recent}));
                content.push(json!({"type": "text", "text": question}));
                json!({"model": self.model, "max_completion_tokens": max_tokens,
                       "messages": [{"role": "user", "content": content}]})
            }
            PayloadFormat::Gemini => {
                let mut parts = vec![json!({"text": intro})];
                for p in &self.pages {
                    parts.push(json!({"text": label(p)}));
                    parts.push(
                        json!({"inline_data": {"mime_type": "image/png", "data": b64(&p.png)}}),
                    );
                }
                parts.push(json!({"text": recent}));
                parts.push(json!({"text": question}));
                json!({"contents": [{"role": "user", "parts": parts}],
                       "generationConfig": {"maxOutputTokens": max_tokens}})
            }
        }
    }
}
