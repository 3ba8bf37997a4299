//! `Lethe::report`: pages, text tokens, decoder positions, ratios and bytes per tier.

use crate::page::cost;
use crate::*;

/// Per-tier figures of [`Lethe::report`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TierReport {
    /// Tier (mode name, `evicted`, or `hot` for turns still kept as text).
    pub tier: String,
    /// Pages at this tier (turns, for `hot`).
    pub pages: u64,
    /// Text tokens of their text.
    pub text_tokens: u64,
    /// Decoder positions of the pages.
    pub decoder_positions: u64,
    /// Nominal vision tokens.
    pub vision_tokens: u64,
    /// Text tokens per decoder position.
    pub ratio_positions: f64,
    /// Text tokens per nominal vision token.
    pub ratio_vision_tokens: f64,
    /// Bytes of images, token caches and text stored for the tier.
    pub bytes: u64,
    /// Of which stored PNGs (pages that keep their text store none: they are redrawn).
    pub image_bytes: u64,
    /// Of which vision-token caches.
    pub token_bytes: u64,
    /// Of which text (retained page text, or the hot turns).
    pub text_bytes: u64,
}

/// The whole store by tier, with the store's own bytes on disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// The tokenizer that counted text tokens.
    pub tokenizer: String,
    /// One row per tier in ladder order, then `evicted`, then `hot`.
    pub tiers: Vec<TierReport>,
    /// Totals over every page and hot turn.
    pub total: TierReport,
    /// Bytes the store occupies on disk.
    pub bytes_on_disk: u64,
    /// Pages whose records failed their checksum or could not be read.
    pub corrupt_pages: u64,
    /// The store's own counts: live bytes, bytes on disk, and what they are made of.
    pub store: StoreStats,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl Lethe {
    /// Pages, text tokens, decoder positions, compression ratios and bytes per tier.
    pub fn report(&self) -> Result<Report> {
        let ladder = self.policy.ladder();
        let mut rows: Vec<TierReport> = ladder
            .levels()
            .iter()
            .map(|l| TierReport {
                tier: l.mode.name().into(),
                ..TierReport::default()
            })
            .collect();
        rows.push(TierReport {
            tier: Tier::Evicted.name().into(),
            ..TierReport::default()
        });
        let listing = self.store.pages(None)?;
        for record in &listing.pages {
            let Some(row) = rows.iter_mut().find(|r| r.tier == record.tier.name()) else {
                continue;
            };
            row.pages += 1;
            row.text_tokens += record.layout.text_tokens;
            if let Tier::At(mode) = record.tier {
                let (positions, vision) = cost(&record.layout, mode);
                row.decoder_positions += positions;
                row.vision_tokens += vision;
            }
            row.image_bytes += record.image_len;
            row.token_bytes += record.tokens.as_ref().map_or(0, |t| t.len);
            row.text_bytes += record.text.as_ref().map_or(0, |t| t.len() as u64);
        }
        let mut hot = TierReport {
            tier: "hot".into(),
            ..TierReport::default()
        };
        for scope in self.store.scopes()? {
            for t in self.store.hot_turns(&scope)? {
                hot.pages += 1;
                hot.text_tokens += self.count_tokens(&t.text)?;
                hot.text_bytes += (t.speaker.len() + t.text.len()) as u64;
            }
        }
        // Hot turns cost their text tokens in context.
        hot.decoder_positions = hot.text_tokens;
        rows.push(hot);
        let mut total = TierReport {
            tier: "total".into(),
            ..TierReport::default()
        };
        for row in &mut rows {
            row.bytes = row.image_bytes + row.token_bytes + row.text_bytes;
            total.image_bytes += row.image_bytes;
            total.token_bytes += row.token_bytes;
            total.text_bytes += row.text_bytes;
            row.ratio_positions = ratio(row.text_tokens, row.decoder_positions);
            row.ratio_vision_tokens = ratio(row.text_tokens, row.vision_tokens);
            total.pages += row.pages;
            total.text_tokens += row.text_tokens;
            total.decoder_positions += row.decoder_positions;
            total.vision_tokens += row.vision_tokens;
            total.bytes += row.bytes;
        }
        total.ratio_positions = ratio(total.text_tokens, total.decoder_positions);
        total.ratio_vision_tokens = ratio(total.text_tokens, total.vision_tokens);
        let stats = self.store.stats()?;
        Ok(Report {
            tokenizer: self.tokenizer_name().to_string(),
            tiers: rows,
            total,
            bytes_on_disk: stats.bytes_on_disk,
            corrupt_pages: stats.corrupt,
            store: stats,
        })
    }
}
