//! `lethe-render`: transcripts to page images.
//!
//! The renderer turns dialogue into pages an OCR-style vision encoder reads:
//!
//! 1. [`transcript`] parses plain text, `Speaker: text` lines, JSON Lines or an OpenAI-style messages
//!    array into [`Turn`]s (streaming with [`TurnReader`]), sanitising control characters and tabs.
//! 2. A [`Renderer`] paginates turns into [`Page`]s with a [`RenderProfile`]: text is shaped by
//!    cosmic-text over the fonts bundled in this crate (DejaVu Sans, Sans Bold, Sans Mono, Droid
//!    Sans Fallback for CJK, NanumSquare for Hangul, Noto Emoji; never system fonts; see
//!    `fonts/README.md`), wrapped, and fixed on the page in logical units,
//!    with the turns and bytes each page shows.
//! 3. A page is rasterised at any [`Mode`]'s pixel size as a vector re-render of the same layout
//!    (glyph coverage masks from swash blitted into an 8-bit buffer), giving a [`PageImage`] (gray or
//!    RGB) with deterministic PNG bytes. Characters no bundled font covers are drawn as boxes,
//!    counted in [`Page::missing_glyphs`] and named by [`Page::missing_chars`].
//!
//! ```
//! use lethe_render::{transcript, Mode, Renderer};
//!
//! let t = transcript::parse(
//!     "User: what is 6 x 7?\nAssistant: 42, or 四十二.\n".as_bytes(),
//!     &transcript::ParseOptions::new(),
//! )?;
//! let renderer = Renderer::builder().font_size(18.0).build()?;
//! let pages = renderer.paginate(&t.turns)?;
//! assert_eq!(pages.len(), 1);
//! assert_eq!(pages[0].missing_glyphs, 0);
//! let tiny = renderer.rasterize(&pages[0], Mode::Tiny);
//! assert_eq!((tiny.width, tiny.height, tiny.channels), (512, 512, 1));
//! let png = tiny.to_png()?;
//! assert_eq!(lethe_render::PageImage::from_png(&png)?, tiny);
//! # Ok::<(), lethe_render::Error>(())
//! ```
#![warn(missing_docs)]

pub mod error;
pub mod fonts;
pub mod image;
pub mod mode;
pub mod page;
pub mod profile;
pub mod renderer;
pub mod transcript;

pub use error::{Error, Result};
pub use fonts::Face;
pub use image::{PageImage, PixelFormat};
pub use mode::{
    find_closest_aspect_ratio, gundam_candidates, gundam_grid, Mode, Preprocess, TileGrid,
    GUNDAM_MAX_TILES, GUNDAM_MIN_TILES, GUNDAM_TILE_GRID, GUNDAM_TILE_PX,
};
pub use page::{CharBox, Glyph, Line, Page, Rule, Segment};
pub use profile::{FontFamily, LabelStyle, Margins, RenderProfile, TurnSeparator};
pub use renderer::{Pages, Paginator, Renderer, RendererBuilder};
pub use transcript::{Format, ParseOptions, Stats, Transcript, Turn, TurnReader};
