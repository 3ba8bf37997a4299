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
    /// The bytes of the line's text ([`Line::text`]) this glyph draws: its shaping cluster. Glyphs of
    /// one cluster (a ligature, a base with marks, an emoji sequence) share the range.
    #[serde(default)]
    pub cluster: Range<usize>,
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

/// Where one character of a page's text landed in an image of the page, in pixels.
///
/// Across, the box spans the character's advance (a shaping cluster of several characters, such as
/// a ligature or an emoji sequence, is shared among them equally); down, the line box.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CharBox {
    /// Byte offset of the character in [`Page::text`].
    pub byte: usize,
    /// The character.
    pub ch: char,
    /// Index of its line in [`Page::lines`].
    pub line: usize,
    /// Left edge.
    pub x0: f32,
    /// Top edge.
    pub y0: f32,
    /// Right edge.
    pub x1: f32,
    /// Bottom edge.
    pub y1: f32,
}

impl CharBox {
    /// The box's centre `(x, y)`.
    pub fn centre(&self) -> (f32, f32) {
        ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)
    }
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
            None if mode == Mode::Gundam => self.size_at_long_edge(mode.page_px()),
            None => (mode.page_px(), mode.page_px()),
        }
    }

    /// Pixel size `(width, height)` of the page at its own aspect with its longer side `px`.
    pub fn size_at_long_edge(&self, px: u32) -> (u32, u32) {
        let long = self.width.max(self.height).max(1.0);
        let side = |v: f32| ((v / long) * px as f32).round().max(1.0) as u32;
        (side(self.width), side(self.height))
    }

    /// How the layout maps onto an image of `width x height` pixels: `(scale, x offset)`, pixels
    /// per logical unit and the left offset that centres the page across (it is top-aligned).
    pub fn placement(&self, width: u32, height: u32) -> (f32, f32) {
        let scale = (width as f32 / self.width).min(height as f32 / self.height);
        let ox = ((width as f32 - self.width * scale) / 2.0).max(0.0);
        (scale, ox)
    }

    /// Where every character of [`Page::text`] but the line breaks lands in an image of the page
    /// of `width x height` pixels, in text order. The characters of the boxes of line `i`, in
    /// order, are exactly the text of line `i`, so joining the lines with `\n` gives the page text.
    pub fn char_boxes(&self, width: u32, height: u32) -> Vec<CharBox> {
        let (scale, ox) = self.placement(width, height);
        let mut out = Vec::with_capacity(self.chars);
        for (li, line) in self.lines.iter().enumerate() {
            let text = &self.text[line.text.clone()];
            // Logical x span of each cluster, by its first byte.
            let mut spans: Vec<(usize, usize, f32, f32)> = Vec::new();
            for g in &line.glyphs {
                let start = g.cluster.start.min(text.len());
                let end = g.cluster.end.min(text.len());
                if start >= end {
                    continue;
                }
                let (x0, x1) = (g.x, g.x + g.advance.max(0.0));
                match spans.iter_mut().find(|s| s.0 == start) {
                    Some(s) => {
                        s.1 = s.1.max(end);
                        s.2 = s.2.min(x0);
                        s.3 = s.3.max(x1);
                    }
                    None => spans.push((start, end, x0, x1)),
                }
            }
            spans.sort_by_key(|s| s.0);
            let (y0, y1) = (line.top * scale, (line.top + line.height) * scale);
            let mut at = 0usize;
            let mut last_x = spans.first().map_or(0.0, |s| s.2);
            let mut push = |byte: usize, ch: char, x0: f32, x1: f32| {
                out.push(CharBox {
                    byte: line.text.start + byte,
                    ch,
                    line: li,
                    x0: x0.mul_add(scale, ox),
                    y0,
                    x1: x1.mul_add(scale, ox),
                    y1,
                });
            };
            for &(start, end, x0, x1) in &spans {
                if start < at {
                    continue; // overlaps a cluster already placed
                }
                // Characters no glyph drew (none in practice): zero width where the pen stood.
                for (i, ch) in text[at..start].char_indices() {
                    push(at + i, ch, last_x, last_x);
                }
                let chars: Vec<(usize, char)> = text[start..end].char_indices().collect();
                let w = (x1 - x0) / chars.len() as f32;
                for (k, (i, ch)) in chars.into_iter().enumerate() {
                    let a = x0 + w * k as f32;
                    push(start + i, ch, a, a + w);
                }
                at = end;
                last_x = x1;
            }
            for (i, ch) in text[at..].char_indices() {
                push(at + i, ch, last_x, last_x);
            }
        }
        out
    }

    /// The characters no bundled font covers (drawn as replacement boxes), each once, in the
    /// order they first appear.
    pub fn missing_chars(&self) -> Vec<char> {
        let mut out = Vec::new();
        for line in &self.lines {
            let text = &self.text[line.text.clone()];
            for g in line.glyphs.iter().filter(|g| g.missing) {
                for c in text.get(g.cluster.clone()).unwrap_or_default().chars() {
                    if !out.contains(&c) {
                        out.push(c);
                    }
                }
            }
        }
        out
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
