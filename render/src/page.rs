//! Pages: text and layout fixed at pagination, in logical units, ready to rasterise at any size.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::fonts::Face;
use crate::mode::{gundam_grid, Mode, TileGrid};

/// One positioned glyph, in logical units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Glyph {
    /// The bundled face it comes from.
    pub face: Face,
    /// Glyph id in that face (0 is `.notdef`: see `missing`).
    pub id: u16,
    /// Pen x position.
    pub x: f32,
    /// Baseline y position.
    pub y: f32,
    /// Font size.
    pub size: f32,
    /// Advance width.
    pub advance: f32,
    /// No bundled font covers this character: a replacement box is drawn instead.
    pub missing: bool,
}

/// One line of a page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// Top of the line box.
    pub top: f32,
    /// Baseline.
    pub baseline: f32,
    /// Height of the line box.
    pub height: f32,
    /// The line's text, as a byte range of [`Page::text`].
    pub text: Range<usize>,
    /// Whether the line's base direction is right-to-left.
    pub rtl: bool,
    /// The glyphs, in visual order.
    pub glyphs: Vec<Glyph>,
}

/// A horizontal rule (turn separator), in logical units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Left end.
    pub x0: f32,
    /// Right end.
    pub x1: f32,
    /// Vertical centre.
    pub y: f32,
    /// Thickness.
    pub thickness: f32,
}

/// The part of one turn's text that a page shows: bytes `start..end` of [`crate::Turn::text`].
/// The segments of a turn over all pages are contiguous and cover its whole text exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Index of the turn in the paginated sequence (0-based).
    pub turn: usize,
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

/// A paginated page: its text and layout are fixed; it can be rasterised at any mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// 0-based position in the paginated sequence.
    pub index: usize,
    /// Logical width.
    pub width: f32,
    /// Logical height (`stack` page heights).
    pub height: f32,
    /// How many page heights this page stacks: 1, or up to the profile's `gundam_max_pages`.
    pub stack: u32,
    /// The visible text, line by line (`\n` between lines), labels and session headers included.
    pub text: String,
    /// The lines, top to bottom.
    pub lines: Vec<Line>,
    /// Turn separator rules.
    pub rules: Vec<Rule>,
    /// Indices of the turns this page shows (partly or wholly), `start..end`.
    pub turns: Range<usize>,
    /// Whether the first turn shown began on an earlier page.
    pub continues_turn: bool,
    /// Which bytes of which turns the page shows.
    pub segments: Vec<Segment>,
    /// Characters in [`Page::text`].
    pub chars: usize,
    /// Characters no bundled font covers (drawn as replacement boxes).
    pub missing_glyphs: usize,
}

impl Page {
    /// The gundam tile grid of this page (the reference's choice for an image of the page's
    /// logical size); `None` in other modes or for a page too small to tile.
    pub fn tile_grid(&self, mode: Mode) -> Option<TileGrid> {
        if mode != Mode::Gundam {
            return None;
        }
        gundam_grid(self.width.round() as u32, self.height.round() as u32)
    }

    /// Pixel size `(width, height)` of the page rasterised in `mode`: the mode's square size, or for
    /// gundam the tile grid's size (`640 cols x 640 rows`), so the encoder tiles it without resizing.
    pub fn pixel_size(&self, mode: Mode) -> (u32, u32) {
        match self.tile_grid(mode) {
            Some(grid) => grid.pixel_size(),
            None if mode == Mode::Gundam => {
                let long = self.width.max(self.height).max(1.0);
                let px = mode.page_px() as f32;
                (
                    ((self.width / long) * px).round().max(1.0) as u32,
                    ((self.height / long) * px).round().max(1.0) as u32,
                )
            }
            None => (mode.page_px(), mode.page_px()),
        }
    }

    /// Nominal vision tokens of this page in `mode`.
    pub fn vision_tokens(&self, mode: Mode) -> usize {
        mode.vision_tokens(self.tile_grid(mode))
    }

    /// Decoder positions of this page in `mode`.
    pub fn decoder_positions(&self, mode: Mode) -> usize {
        mode.decoder_positions(self.tile_grid(mode))
    }
}
