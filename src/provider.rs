//! How hosted vision models bill images, as data: `providers/providers.toml` (built in; a user's
//! copy can replace it) gives, per provider and model family, the image-size limits, the
//! downscaling rule and the token formula, with the document each follows.

use serde::{Deserialize, Serialize};

use crate::{Error, Mode, Result};

/// The built-in table, `providers/providers.toml`.
pub const PROVIDERS_TOML: &str = include_str!("../providers/providers.toml");

/// How one provider's models turn an image into tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum ImageRule {
    /// `ceil(w * h / pixels_per_token)` after shrinking to `max_long_edge` and `max_tokens`
    /// (Anthropic).
    Area {
        /// Pixels per token.
        pixels_per_token: f64,
        /// The longest edge kept; longer images are shrunk, aspect kept.
        max_long_edge: u32,
        /// Images over this many tokens are shrunk until they fit.
        max_tokens: u64,
    },
    /// Fit within `fit` x `fit`, shrink so the short side is at most `short_side`, then
    /// `base_tokens + tile_tokens` per `tile` px tile (OpenAI's tile-based models).
    Tiles {
        /// The square the image is first fitted into.
        fit: u32,
        /// The longest the short side may then be.
        short_side: u32,
        /// Tile edge.
        tile: u32,
        /// Tokens per image.
        base_tokens: u64,
        /// Tokens per tile.
        tile_tokens: u64,
        /// Tokens of any image at low detail.
        low_tokens: u64,
    },
    /// `ceil(w/patch) * ceil(h/patch)` patches, at most `max_patches` after the documented
    /// rescale, times `multiplier` (OpenAI's patch-based models).
    Patches {
        /// Patch edge.
        patch: u32,
        /// The most patches an image keeps.
        max_patches: u64,
        /// The model's token multiplier.
        multiplier: f64,
    },
    /// `small_tokens` when both sides are at most `small_edge`, else `tile_tokens` per `tile` px
    /// tile (Gemini 2.x).
    Gemini {
        /// The largest side of a one-unit image.
        small_edge: u32,
        /// Tokens of such an image.
        small_tokens: u64,
        /// Tile edge.
        tile: u32,
        /// Tokens per tile.
        tile_tokens: u64,
    },
    /// A fixed count per image (a media-resolution setting).
    Flat {
        /// Tokens per image.
        tokens: u64,
    },
}

/// An image as a provider bills it: the size it is scaled to and its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Billed {
    /// Width after the provider's own downscaling.
    pub width: u32,
    /// Height after the provider's own downscaling.
    pub height: u32,
    /// Tokens.
    pub tokens: u64,
}

fn scaled(w: u32, h: u32, factor: f64) -> (u32, u32) {
    if factor >= 1.0 {
        return (w, h);
    }
    let s = |v: u32| ((f64::from(v) * factor).floor() as u32).max(1);
    (s(w), s(h))
}

fn ceil_div(a: u32, b: u32) -> u64 {
    u64::from(a.div_ceil(b.max(1)))
}

impl ImageRule {
    /// The tokens of a `width x height` image (high detail where the rule has a detail level).
    pub fn bill(&self, width: u32, height: u32) -> Billed {
        let (w, h) = (width.max(1), height.max(1));
        match *self {
            ImageRule::Area {
                pixels_per_token,
                max_long_edge,
                max_tokens,
            } => {
                let long = w.max(h);
                let (w, h) = scaled(w, h, f64::from(max_long_edge) / f64::from(long));
                let area = f64::from(w) * f64::from(h);
                let cap = max_tokens as f64 * pixels_per_token;
                let (w, h) = scaled(w, h, (cap / area).sqrt());
                let tokens = (f64::from(w) * f64::from(h) / pixels_per_token).ceil() as u64;
                Billed {
                    width: w,
                    height: h,
                    tokens,
                }
            }
            ImageRule::Tiles {
                fit,
                short_side,
                tile,
                base_tokens,
                tile_tokens,
                ..
            } => {
                let (w, h) = scaled(w, h, f64::from(fit) / f64::from(w.max(h)));
                let (w, h) = scaled(w, h, f64::from(short_side) / f64::from(w.min(h)));
                let tiles = ceil_div(w, tile) * ceil_div(h, tile);
                Billed {
                    width: w,
                    height: h,
                    tokens: base_tokens + tile_tokens * tiles,
                }
            }
            ImageRule::Patches {
                patch,
                max_patches,
                multiplier,
            } => {
                let p = f64::from(patch);
                let (mut fw, mut fh) = (f64::from(w), f64::from(h));
                if ceil_div(w, patch) * ceil_div(h, patch) > max_patches {
                    // The documented rescale: shrink to the patch budget, then a little more so
                    // that the width (or height) is a whole number of patches.
                    let r = (p * p * max_patches as f64 / (fw * fh)).sqrt();
                    let (pw, ph) = (fw * r / p, fh * r / p);
                    let r = r * (pw.floor() / pw).min(ph.floor() / ph);
                    fw = (fw * r).floor();
                    fh = (fh * r).floor();
                }
                let patches = (fw / p).ceil() * (fh / p).ceil();
                Billed {
                    width: fw as u32,
                    height: fh as u32,
                    tokens: (patches * multiplier).ceil() as u64,
                }
            }
            ImageRule::Gemini {
                small_edge,
                small_tokens,
                tile,
                tile_tokens,
            } => {
                let tokens = if w <= small_edge && h <= small_edge {
                    small_tokens
                } else {
                    tile_tokens * ceil_div(w, tile) * ceil_div(h, tile)
                };
                Billed {
                    width: w,
                    height: h,
                    tokens,
                }
            }
            ImageRule::Flat { tokens } => Billed {
                width: w,
                height: h,
                tokens,
            },
        }
    }
}

/// The request format a provider takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// Anthropic's Messages API.
    Anthropic,
    /// OpenAI's Chat Completions API.
    Openai,
    /// Gemini's `generateContent`.
    Gemini,
}

/// How a page's text is laid out for a provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderLayout {
    /// Laid out again with DeepSeek-OCR's default render profile (about 2,900 characters to a
    /// full page), so that a provider that bills by pixels gets more text per token than the
    /// store's own layout gives when that is a sparse reader's.
    #[default]
    Dense,
    /// The page exactly as stored.
    Page,
}

/// Long edges, in pixels, of a page image at each tier for one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSizes {
    /// At `large`.
    pub large: u32,
    /// At `base`.
    pub base: u32,
    /// At `small`.
    pub small: u32,
    /// At `tiny`.
    pub tiny: u32,
}

impl TierSizes {
    /// The long edge at `mode` (gundam pages are sent at `large`'s).
    pub fn at(&self, mode: Mode) -> u32 {
        match mode {
            Mode::Large | Mode::Gundam => self.large,
            Mode::Base => self.base,
            Mode::Small => self.small,
            Mode::Tiny => self.tiny,
        }
    }
}

/// One provider and model family: its rule, sizes and request format. (The rule's fields sit
/// beside these, so unknown keys cannot be refused here: serde's `flatten` does not allow it.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provider {
    /// `anthropic`, `openai` or `gemini` (any name for a user's own entry).
    pub name: String,
    /// The model names this entry covers; the first is the default.
    pub models: Vec<String>,
    /// The request format.
    pub format: PayloadFormat,
    /// The document the rule follows.
    pub source: String,
    /// When it was read (YYYY-MM-DD).
    pub read: String,
    /// The billing rule.
    #[serde(flatten)]
    pub rule: ImageRule,
    /// How page text is laid out for it (default `dense`).
    #[serde(default)]
    pub layout: ProviderLayout,
    /// The tokenizer of the provider's family that counts text, when one ships (`o200k_base`);
    /// otherwise the memory's own (DeepSeek-OCR's) stands in, and the accounting names it.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// The tallest image of stacked pages, in pixels (default 1568): pages share images,
    /// since each image costs at least the provider's minimum.
    #[serde(default = "default_sheet_height")]
    pub sheet_height: u32,
    /// Page long edges per tier (of a full page in that layout; images are then cropped to
    /// their text).
    pub tiers: TierSizes,
}

/// OpenAI's o200k_base as a `tokenizers` file (`assets/tokenizers/README.md`).
const O200K_BASE: &[u8] = include_bytes!("../assets/tokenizers/o200k_base.json");

/// The tokenizer a provider entry names, loaded once.
pub(crate) fn family_tokenizer(name: &str) -> Result<&'static lethe_decoder::Tokenizer> {
    static O200K: std::sync::OnceLock<std::result::Result<lethe_decoder::Tokenizer, String>> =
        std::sync::OnceLock::new();
    match name {
        "o200k_base" => O200K
            .get_or_init(|| {
                lethe_decoder::Tokenizer::from_bytes("o200k_base", O200K_BASE)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::Invalid(format!("the o200k_base tokenizer: {e}"))),
        other => Err(Error::Invalid(format!(
            "no tokenizer {other:?} ships with Lethe (o200k_base does)"
        ))),
    }
}

fn default_sheet_height() -> u32 {
    1568
}

/// The provider table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Providers {
    /// Every entry, in file order.
    pub provider: Vec<Provider>,
}

impl Providers {
    /// The built-in table ([`PROVIDERS_TOML`]).
    pub fn builtin() -> Self {
        Self::from_toml_str(PROVIDERS_TOML, "providers/providers.toml")
            .expect("the built-in provider table parses (tested)")
    }

    /// A table from TOML; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let table: Providers =
            toml::from_str(text).map_err(|e| Error::Invalid(format!("{origin}: {e}")))?;
        for p in &table.provider {
            if p.models.is_empty() {
                return Err(Error::Invalid(format!(
                    "{origin}: provider {} has no models",
                    p.name
                )));
            }
        }
        Ok(table)
    }

    /// The entry for `provider` and `model` (the provider's first entry when `model` is `None`).
    pub fn find(&self, provider: &str, model: Option<&str>) -> Result<&Provider> {
        let entries: Vec<&Provider> = self
            .provider
            .iter()
            .filter(|p| p.name == provider)
            .collect();
        if entries.is_empty() {
            let names: std::collections::BTreeSet<&str> =
                self.provider.iter().map(|p| p.name.as_str()).collect();
            return Err(Error::Invalid(format!(
                "no provider {provider:?} in the table; it has {}",
                names.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        match model {
            None => Ok(entries[0]),
            Some(model) => entries
                .iter()
                .find(|p| p.models.iter().any(|m| m == model))
                .copied()
                .ok_or_else(|| {
                    let known: Vec<&str> = entries
                        .iter()
                        .flat_map(|p| p.models.iter().map(String::as_str))
                        .collect();
                    Error::Invalid(format!(
                        "no model {model:?} for {provider} in the table; it knows {}",
                        known.join(", ")
                    ))
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::family_tokenizer;

    /// Ids from tiktoken 0.9.0's own encoder over the same ranks (assets/tokenizers/README.md).
    #[test]
    fn o200k_base_matches_tiktoken() {
        let t = family_tokenizer("o200k_base").unwrap();
        let cases: [(&str, &[u32]); 4] = [
            ("Hello, world!", &[13225, 11, 2375, 0]),
            (
                "Héllo wörld — 日本語 😀",
                &[39, 377, 72807, 286, 2877, 582, 2733, 17428, 40909, 88038],
            ),
            ("IT'S DON'T we'll", &[1468, 31233, 153384, 22782]),
            ("    fn main() {}\n", &[271, 9784, 2758, 416, 11421]),
        ];
        for (text, ids) in cases {
            assert_eq!(t.encode(text).unwrap(), ids, "{text:?}");
        }
        let sample = include_str!("../samples/agent-sessions.txt");
        let total: usize = sample.split("\n\n").map(|p| t.count(p).unwrap()).sum();
        assert_eq!(
            total, 41_276,
            "the sample's paragraphs, as tiktoken counts them"
        );
        assert!(family_tokenizer("cl100k_base").is_err());
    }
}
