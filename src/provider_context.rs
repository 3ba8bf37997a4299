//! `Lethe::provider_context`: a scope's history for a hosted vision model within its own token
//! budget. Recent turns stay text; pages are drawn at the provider's size for their tier (older,
//! lower tiers smaller), cropped to their text, costed by the provider's rule and packed newest
//! first; the answer carries an honest account against plain text and truncation, and writes
//! itself as a request body in the provider's format.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::page::{source_turns, turn_of, Relaid};
use crate::provider::{PayloadFormat, Provider, ProviderLayout};
use crate::*;

/// A page as it goes to a provider: a strip of one of the context's images.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderPage {
    /// The page.
    pub id: PageId,
    /// Its turn range `[start, end)`.
    pub turns: (u64, u64),
    /// The tier whose size it is drawn at (its own, or lower when the budget is tight).
    pub shown_at: Mode,
    /// Its strip's width (after cropping to the text).
    pub width: u32,
    /// Its strip's height.
    pub height: u32,
    /// The provider's tokens it added to its image.
    pub tokens: u64,
    /// Text tokens of the page's text ([`TextAccounting::tokenizer`]).
    pub text_tokens: u64,
    /// Which of [`ProviderContext::images`] holds it.
    pub image: usize,
}

/// One image sent: consecutive pages stacked top to bottom, oldest first (a provider bills
/// every image at least a minimum, so small pages share one).
#[derive(Debug, Clone, Serialize)]
pub struct ProviderImage {
    /// The pages on it, oldest first.
    pub pages: Vec<PageId>,
    /// The turns they hold, `[start, end)`.
    pub turns: (u64, u64),
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// The provider's tokens for it.
    pub tokens: u64,
    /// The PNG.
    #[serde(skip)]
    pub png: Vec<u8>,
}

/// The same history as plain text, beside the optical context.
#[derive(Debug, Clone, Serialize)]
pub struct TextAccounting {
    /// The tokenizer that counted the text: the provider family's where one ships (OpenAI:
    /// `o200k_base`), else the memory's (`deepseek-ocr`), which stands in and says so.
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
    /// The images sent, oldest first.
    pub images: Vec<ProviderImage>,
    /// The pages on them, oldest first.
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

/// Gap between stacked pages, in pixels.
const GAP: u32 = 6;

/// One page's strip on an image.
struct Strip {
    /// The page's index in the scope's records.
    index: usize,
    shown_at: Mode,
    /// The provider tokens it added to its image.
    tokens: u64,
    image: PageImage,
}

/// An image being filled: page strips, newest first (drawn oldest at the top).
#[derive(Default)]
struct Sheet {
    strips: Vec<Strip>,
    width: u32,
    height: u32,
    tokens: u64,
}

impl Sheet {
    fn size_with(&self, strip: &PageImage) -> (u32, u32) {
        let gap = if self.strips.is_empty() { 0 } else { GAP };
        (
            self.width.max(strip.width),
            self.height + gap + strip.height,
        )
    }

    fn push(&mut self, strip: Strip) {
        let (w, h) = self.size_with(&strip.image);
        self.width = w;
        self.height = h;
        self.tokens += strip.tokens;
        self.strips.push(strip);
    }

    /// The strips stacked, oldest at the top, on white.
    fn compose(&self) -> PageImage {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut pixels = vec![255u8; w * h];
        let mut y0 = 0usize;
        for strip in self.strips.iter().rev() {
            let converted;
            let gray = if strip.image.channels == 1 {
                &strip.image
            } else {
                converted = strip.image.to_gray();
                &converted
            };
            let sw = gray.width as usize;
            for y in 0..gray.height as usize {
                pixels[(y0 + y) * w..(y0 + y) * w + sw]
                    .copy_from_slice(&gray.pixels[y * sw..(y + 1) * sw]);
            }
            y0 += gray.height as usize + GAP as usize;
        }
        PageImage {
            width: self.width,
            height: self.height,
            channels: 1,
            pixels,
        }
    }
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
        // Text is counted with the provider family's tokenizer where one ships.
        let family = provider
            .tokenizer
            .as_deref()
            .map(crate::provider::family_tokenizer)
            .transpose()?;
        let count = |text: &str| -> Result<u64> {
            Ok(match family {
                Some(t) => t.count(text)? as u64,
                None => self.count_tokens(text)?,
            })
        };
        let tokenizer_name = family
            .map_or(self.tokenizer_name(), |t| t.name())
            .to_string();
        let hot = self.store.hot_turns(scope)?;
        let mut turns = Vec::with_capacity(hot.len());
        let mut turn_tokens = Vec::with_capacity(hot.len());
        for t in &hot {
            turn_tokens.push(count(&t.text)?);
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
        // Each page's turn pieces, kept for laying the page out again below.
        let sources: Vec<Option<Vec<Turn>>> = records.iter().map(source_turns).collect();
        let mut history: Vec<u64> = Vec::new();
        let mut page_text_tokens = Vec::with_capacity(records.len());
        for (record, source) in records.iter().zip(&sources) {
            let mut page_tokens = 0;
            match source {
                Some(pieces) => {
                    for piece in pieces {
                        let n = count(&piece.text)?;
                        page_tokens += n;
                        match history.last_mut() {
                            Some(last) if piece.continued => *last += n,
                            _ => history.push(n),
                        }
                    }
                }
                None => {
                    // Its text was dropped: the count made when it was written stands in.
                    page_tokens = record.layout.text_tokens;
                    history.push(page_tokens);
                }
            }
            page_text_tokens.push(page_tokens);
        }
        history.extend(&turn_tokens);

        // The dense layout: every page's text laid out with DeepSeek-OCR's default profile
        // (pages already drawn with it lay out the same).
        let own_is_dense = self.profile == RenderProfile::default();
        let other_dense = match provider.layout {
            ProviderLayout::Dense if !own_is_dense => Some(
                Renderer::builder()
                    .profile(RenderProfile::default())
                    .build()?,
            ),
            _ => None,
        };
        let dense = match provider.layout {
            ProviderLayout::Dense => Some(other_dense.as_ref().unwrap_or(&self.renderer)),
            ProviderLayout::Page => None,
        };
        let mut left = budget - text_tokens;
        // Newest first: each page is drawn at its tier's size (lower ones when it does not fit)
        // and either stacked onto the image being filled or starts a new one, whichever costs
        // less of what is left.
        let mut sheets: Vec<Sheet> = Vec::new();
        let mut dropped_pages = Vec::new();
        for (index, record) in records.iter().enumerate().rev() {
            let Tier::At(mode) = record.tier else {
                dropped_pages.push(record.id);
                continue;
            };
            let dense_page = match (dense, &sources[index]) {
                (Some(renderer), Some(turns)) => {
                    let mut pages = renderer.paginate(turns)?;
                    // A page fits one dense page (a split last turn may add a page holding only
                    // a running header); anything else is sent as stored.
                    let rest_empty = pages[1..]
                        .iter()
                        .flat_map(|p| &p.segments)
                        .all(|s| s.start == s.end);
                    rest_empty.then(|| (renderer, pages.swap_remove(0)))
                }
                _ => None,
            };
            // The stored layout is needed only when the page is not laid out densely.
            let relaid = match dense_page {
                Some(_) => None,
                None => self.relayout(record)?,
            };
            // Its own tier's size first, then each lower tier's.
            let mut sizes: Vec<Mode> = Mode::ALL
                .into_iter()
                .filter(|m| *m != Mode::Gundam && m.page_px() <= mode.page_px())
                .collect();
            sizes.sort_by_key(|m| std::cmp::Reverse(m.page_px()));
            let mut done = false;
            for shown_at in sizes {
                let px = provider.tiers.at(shown_at);
                let strip = match &dense_page {
                    Some((renderer, page)) => renderer.rasterize_long_edge(page, px).crop_to_ink(),
                    None => self.provider_image(record, relaid.as_ref(), px, shown_at)?,
                };
                let alone = provider.rule.bill(strip.width, strip.height).tokens;
                let stacked = sheets.last().and_then(|sheet| {
                    let (w, h) = sheet.size_with(&strip);
                    (h <= provider.sheet_height)
                        .then(|| provider.rule.bill(w, h).tokens.saturating_sub(sheet.tokens))
                });
                // Stacking is preferred up to a tenth more than sending the page alone: fewer
                // images (Anthropic takes at most 100 in a request) and fewer labels.
                let choice = match stacked {
                    Some(more) if more * 10 <= alone * 11 && more <= left => Some((true, more)),
                    _ if alone <= left => Some((false, alone)),
                    Some(more) if more <= left => Some((true, more)),
                    _ => None,
                };
                let Some((stack, tokens)) = choice else {
                    continue;
                };
                if !stack {
                    sheets.push(Sheet::default());
                }
                sheets.last_mut().expect("a sheet").push(Strip {
                    index,
                    shown_at,
                    tokens,
                    image: strip,
                });
                left -= tokens;
                done = true;
                break;
            }
            if !done {
                dropped_pages.push(record.id);
            }
        }
        // Oldest first, each image's strips top to bottom.
        sheets.reverse();
        let mut images = Vec::with_capacity(sheets.len());
        let mut pages = Vec::new();
        for (n, sheet) in sheets.iter().enumerate() {
            let image = sheet.compose();
            let billed = provider.rule.bill(image.width, image.height);
            // Oldest first, as the image shows them.
            for strip in sheet.strips.iter().rev() {
                let record = &records[strip.index];
                pages.push(ProviderPage {
                    id: record.id,
                    turns: (record.turns.start, record.turns.end),
                    shown_at: strip.shown_at,
                    width: strip.image.width,
                    height: strip.image.height,
                    tokens: strip.tokens,
                    text_tokens: page_text_tokens[strip.index],
                    image: n,
                });
            }
            let on_it = &pages[pages.len() - sheet.strips.len()..];
            images.push(ProviderImage {
                pages: on_it.iter().map(|p| p.id).collect(),
                turns: (on_it[0].turns.0, on_it[on_it.len() - 1].turns.1),
                width: image.width,
                height: image.height,
                tokens: billed.tokens,
                png: image.to_png()?,
            });
        }
        let image_tokens: u64 = images.iter().map(|i| i.tokens).sum();
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
            tokenizer: tokenizer_name,
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
            images,
            pages,
            turns,
            dropped_pages,
            image_tokens,
            text_tokens,
            total_tokens,
            accounting,
        })
    }

    /// A page as stored, drawn with its long edge `px` pixels (`mode`'s image resampled when it
    /// keeps no text), cropped to its text.
    fn provider_image(
        &self,
        record: &PageRecord,
        relaid: Option<&Relaid>,
        px: u32,
        mode: Mode,
    ) -> Result<PageImage> {
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
            "Earlier conversation, as {} images of {} pages (oldest first, top to bottom; older \
             pages are smaller):",
            self.images.len(),
            self.pages.len()
        );
        let label = |i: &ProviderImage| format!("Turns {}..{}:", i.turns.0, i.turns.1);
        let mut recent = String::from("Recent turns:\n");
        for t in &self.turns {
            recent.push_str(&format!("{}: {}\n", t.speaker, t.text));
        }
        match self.format {
            PayloadFormat::Anthropic => {
                let mut content = vec![json!({"type": "text", "text": intro})];
                for p in &self.images {
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
                for p in &self.images {
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
                for p in &self.images {
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
