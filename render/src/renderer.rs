//! [`Renderer`]: paginates turns into [`Page`]s and rasterises pages into [`PageImage`]s.

use std::sync::{Mutex, MutexGuard};

use cosmic_text::{
    Attrs, AttrsList, BufferLine, CacheKey, CacheKeyFlags, Ellipsize, Family, Hinting, LineEnding,
    Shaping, SwashContent, Weight, Wrap,
};

use crate::error::Result;
use crate::fonts::{Fonts, MONO_FAMILY, SANS_FAMILY};
use crate::image::{PageImage, PixelFormat};
use crate::mode::Mode;
use crate::page::{Glyph, Line, Page, Rule, Segment};
use crate::profile::{FontFamily, LabelStyle, Margins, RenderProfile, TurnSeparator};
use crate::transcript::Turn;

/// Longest paragraph piece shaped at once, in bytes; longer paragraphs are shaped in pieces cut at
/// a space (or any character boundary), which bounds memory for huge single-line inputs.
const SHAPE_CHUNK: usize = 16 * 1024;

/// Paginates and rasterises with one [`RenderProfile`] over the bundled fonts.
///
/// A renderer owns a cosmic-text font system and glyph cache behind a mutex, so one renderer can be
/// shared; make one per thread for parallel rasterising.
pub struct Renderer {
    profile: RenderProfile,
    fonts: Mutex<Fonts>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Renderer`]: start from a profile (or the default) and override single settings.
#[derive(Debug, Clone, Default)]
pub struct RendererBuilder {
    profile: RenderProfile,
}

impl RendererBuilder {
    /// Replaces the whole profile.
    pub fn profile(mut self, profile: RenderProfile) -> Self {
        self.profile = profile;
        self
    }

    /// Logical page size.
    pub fn page_size(mut self, width: f32, height: f32) -> Self {
        self.profile.page_width = width;
        self.profile.page_height = height;
        self
    }

    /// Margins.
    pub fn margins(mut self, margins: Margins) -> Self {
        self.profile.margins = margins;
        self
    }

    /// Body font family.
    pub fn font_family(mut self, family: FontFamily) -> Self {
        self.profile.font_family = family;
        self
    }

    /// Font size in logical units.
    pub fn font_size(mut self, size: f32) -> Self {
        self.profile.font_size = size;
        self
    }

    /// Line height as a multiple of the font size.
    pub fn line_height(mut self, factor: f32) -> Self {
        self.profile.line_height = factor;
        self
    }

    /// Speaker label style.
    pub fn speaker_label(mut self, style: LabelStyle) -> Self {
        self.profile.speaker_label = style;
        self
    }

    /// Turn separator.
    pub fn turn_separator(mut self, separator: TurnSeparator) -> Self {
        self.profile.turn_separator = separator;
        self
    }

    /// Gundam pages on or off, and how many page heights one may stack.
    pub fn gundam(mut self, on: bool, max_pages: u32) -> Self {
        self.profile.gundam = on;
        self.profile.gundam_max_pages = max_pages;
        self
    }

    /// Validates the profile and loads the bundled fonts.
    pub fn build(self) -> Result<Renderer> {
        self.profile.validate()?;
        Ok(Renderer {
            profile: self.profile,
            fonts: Mutex::new(Fonts::new()?),
        })
    }
}

impl Renderer {
    /// A builder starting from the default profile.
    pub fn builder() -> RendererBuilder {
        RendererBuilder::default()
    }

    /// A renderer with the default profile.
    pub fn new() -> Result<Self> {
        Self::builder().build()
    }

    /// The profile.
    pub fn profile(&self) -> &RenderProfile {
        &self.profile
    }

    fn fonts(&self) -> MutexGuard<'_, Fonts> {
        self.fonts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Paginates all turns at once.
    pub fn paginate(&self, turns: &[Turn]) -> Result<Vec<Page>> {
        let mut p = self.paginator();
        let mut pages = Vec::new();
        for turn in turns {
            pages.extend(p.push(turn));
        }
        pages.extend(p.finish());
        Ok(pages)
    }

    /// An incremental paginator: push turns, collect pages as they fill (bounded memory).
    pub fn paginator(&self) -> Paginator<'_> {
        Paginator {
            renderer: self,
            page: PageBuilder::default(),
            next_index: 0,
            next_turn: 0,
            session: None,
            header: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Streams pages from a stream of turns (e.g. a [`crate::TurnReader`]); stops at the first error.
    pub fn pages<I>(&self, turns: I) -> Pages<'_, I::IntoIter>
    where
        I: IntoIterator<Item = Result<Turn>>,
    {
        Pages {
            paginator: Some(self.paginator()),
            turns: turns.into_iter(),
            ready: std::collections::VecDeque::new(),
        }
    }

    /// Rasterises a page in a mode, in 8-bit gray, at [`Page::pixel_size`].
    pub fn rasterize(&self, page: &Page, mode: Mode) -> PageImage {
        self.rasterize_as(page, mode, PixelFormat::Gray)
    }

    /// Rasterises a page in a mode in the given pixel format.
    pub fn rasterize_as(&self, page: &Page, mode: Mode, format: PixelFormat) -> PageImage {
        let (w, h) = page.pixel_size(mode);
        self.rasterize_px(page, w, h, format)
    }

    /// Rasterises a page in 8-bit gray at its own aspect with its longer side `px` pixels (the
    /// size a hosted model is sent, rather than one of DeepSeek-OCR's modes).
    pub fn rasterize_long_edge(&self, page: &Page, px: u32) -> PageImage {
        let (w, h) = page.size_at_long_edge(px);
        self.rasterize_px(page, w, h, PixelFormat::Gray)
    }

    /// Rasterises a page at any pixel size: the layout is scaled uniformly to fit, centred across,
    /// top-aligned, on white. Text is black; missing glyphs are drawn as boxes.
    pub fn rasterize_px(
        &self,
        page: &Page,
        width: u32,
        height: u32,
        format: PixelFormat,
    ) -> PageImage {
        let mut img = PageImage::blank(width, height, PixelFormat::Gray);
        let (scale, ox) = page.placement(width, height);
        let oy = 0.0;
        {
            let mut guard = self.fonts();
            let fonts = &mut *guard;
            let mut canvas = Canvas {
                w: width as i32,
                h: height as i32,
                px: &mut img.pixels,
            };
            for line in &page.lines {
                for g in &line.glyphs {
                    if g.missing {
                        draw_missing_box(&mut canvas, g, scale, ox, oy);
                        continue;
                    }
                    let (font_id, weight) = fonts.id(g.face);
                    let (key, ix, iy) = CacheKey::new(
                        font_id,
                        g.id,
                        g.size * scale,
                        (g.x.mul_add(scale, ox), g.y.mul_add(scale, oy).trunc()),
                        weight,
                        CacheKeyFlags::empty(),
                    );
                    let Fonts { system, cache, .. } = fonts;
                    if let Some(image) = cache.get_image(system, key) {
                        let p = image.placement;
                        let x0 = ix + p.left;
                        let y0 = iy - p.top;
                        match image.content {
                            SwashContent::Mask => canvas.blit(
                                x0,
                                y0,
                                p.width as i32,
                                p.height as i32,
                                &image.data,
                                1,
                                0,
                            ),
                            SwashContent::Color => canvas.blit(
                                x0,
                                y0,
                                p.width as i32,
                                p.height as i32,
                                &image.data,
                                4,
                                3,
                            ),
                            SwashContent::SubpixelMask => canvas.blit(
                                x0,
                                y0,
                                p.width as i32,
                                p.height as i32,
                                &image.data,
                                4,
                                1,
                            ),
                        }
                    }
                }
            }
            for r in &page.rules {
                let t = (r.thickness * scale).max(1.0);
                canvas.fill_rect(
                    r.x0.mul_add(scale, ox),
                    (r.y * scale + oy) - t / 2.0,
                    (r.x1 - r.x0) * scale,
                    t,
                    160,
                );
            }
        }
        match format {
            PixelFormat::Gray => img,
            PixelFormat::Rgb => img.to_rgb(),
        }
    }
}

/// A gray canvas that glyph masks are blitted into (black ink over the current value).
struct Canvas<'a> {
    w: i32,
    h: i32,
    px: &'a mut [u8],
}

impl Canvas<'_> {
    /// Blits a coverage mask of `w x h` cells of `stride` bytes, coverage at byte `at` of each cell.
    #[allow(clippy::too_many_arguments)]
    fn blit(&mut self, x0: i32, y0: i32, w: i32, h: i32, data: &[u8], stride: usize, at: usize) {
        if w <= 0 || h <= 0 || data.len() < (w * h) as usize * stride {
            return;
        }
        let cx0 = x0.max(0);
        let cx1 = (x0 + w).min(self.w);
        let cy0 = y0.max(0);
        let cy1 = (y0 + h).min(self.h);
        if cx0 >= cx1 || cy0 >= cy1 {
            return;
        }
        for y in cy0..cy1 {
            let src_row = ((y - y0) * w) as usize * stride;
            let dst_row = (y * self.w) as usize;
            let dst = &mut self.px[dst_row + cx0 as usize..dst_row + cx1 as usize];
            let skip = (cx0 - x0) as usize;
            for (i, d) in dst.iter_mut().enumerate() {
                let a = data[src_row + (skip + i) * stride + at];
                if a != 0 {
                    *d = ink(*d, a);
                }
            }
        }
    }

    /// Fills a rectangle (logical position already scaled to pixels) with gray `value`.
    fn fill_rect(&mut self, x: f32, y: f32, w: f32, h: f32, value: u8) {
        let x0 = (x.round() as i32).clamp(0, self.w);
        let x1 = ((x + w).round() as i32)
            .clamp(0, self.w)
            .max(x0 + 1)
            .min(self.w);
        let y0 = (y.round() as i32).clamp(0, self.h);
        let y1 = ((y + h).round() as i32)
            .clamp(0, self.h)
            .max(y0 + 1)
            .min(self.h);
        for yy in y0..y1 {
            let row = (yy * self.w) as usize;
            for p in &mut self.px[row + x0 as usize..row + x1 as usize] {
                *p = (*p).min(value);
            }
        }
    }
}

/// `dst` darkened by coverage `a` of black ink: `dst * (255 - a) / 255`, rounded.
#[inline]
fn ink(dst: u8, a: u8) -> u8 {
    let x = u32::from(dst) * (255 - u32::from(a)) + 128;
    ((x + (x >> 8)) >> 8) as u8
}

/// Draws the visible replacement for a character no font covers: a hollow box.
fn draw_missing_box(c: &mut Canvas<'_>, g: &Glyph, scale: f32, ox: f32, oy: f32) {
    let w = (g.advance.max(g.size * 0.5) * 0.8) * scale;
    let h = g.size * 0.72 * scale;
    let x = (g.x + g.advance.max(g.size * 0.5) * 0.1).mul_add(scale, ox);
    let y = g.y.mul_add(scale, oy) - h;
    let t = (g.size * 0.07 * scale).max(1.0);
    c.fill_rect(x, y, w, t, 0);
    c.fill_rect(x, y + h - t, w, t, 0);
    c.fill_rect(x, y, t, h, 0);
    c.fill_rect(x + w - t, y, t, h, 0);
}

/// The page being filled.
#[derive(Default)]
struct PageBuilder {
    text: String,
    lines: Vec<Line>,
    rules: Vec<Rule>,
    segments: Vec<Segment>,
    first_turn: Option<usize>,
    last_turn: usize,
    continues_turn: bool,
    y: f32,
    started: bool,
    missing: usize,
}

/// The vertical space a turn separator takes: half a line.
fn separator_gap(profile: &RenderProfile) -> f32 {
    profile.line_px() * 0.5
}

/// A shaped visual line waiting to be placed.
#[derive(Clone)]
struct PendingLine {
    glyphs: Vec<Glyph>,
    ascent: f32,
    descent: f32,
    rtl: bool,
    text: String,
    segment: Option<Segment>,
    missing: usize,
}

/// Incremental pagination (see [`Renderer::paginator`]).
pub struct Paginator<'r> {
    renderer: &'r Renderer,
    page: PageBuilder,
    next_index: usize,
    next_turn: usize,
    session: Option<String>,
    /// The current session's header, shaped, repeated at the top of every page of the session.
    header: Vec<PendingLine>,
    out: Vec<Page>,
}

impl std::fmt::Debug for Paginator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paginator")
            .field("next_index", &self.next_index)
            .field("next_turn", &self.next_turn)
            .finish_non_exhaustive()
    }
}

impl Paginator<'_> {
    /// Lays out one turn; returns the pages it completed (the last, partly filled page is kept).
    pub fn push(&mut self, turn: &Turn) -> Vec<Page> {
        let profile = self.renderer.profile.clone();
        let turn_index = self.next_turn;
        self.next_turn += 1;
        let mut guard = self.renderer.fonts();
        let fonts = &mut *guard;

        // Session header: drawn where the session changes, kept on the page of the turn's first
        // line, and repeated at the top of every later page of the session (`place`).
        if profile.session_headers && turn.session.is_some() && turn.session != self.session {
            self.session = turn.session.clone();
            let header = format!("=== {} ===", turn.session.as_deref().unwrap_or_default());
            self.header = shape_mixed(fonts, &profile, &header, 0, Style::Bold, Style::Bold)
                .into_iter()
                .map(|l| l.into_pending(&header, None))
                .collect();
            let needed =
                2.0 * separator_gap(&profile) + (self.header.len() + 1) as f32 * profile.line_px();
            if self.page.started && self.page.y + needed > self.capacity_bottom(&profile) + 1e-3 {
                self.flush(&profile);
            }
            if self.page.started {
                self.separator(&profile);
                for l in self.header.clone() {
                    self.place_line(&profile, l);
                }
            }
        } else if turn.session.is_some() {
            self.session = turn.session.clone();
        }

        if !turn.continued {
            self.separator(&profile);
        }

        let label = if turn.continued
            || turn.speaker.is_empty()
            || profile.speaker_label == LabelStyle::None
        {
            String::new()
        } else {
            match &turn.timestamp {
                Some(ts) => format!("{} [{ts}]: ", turn.speaker),
                None => format!("{}: ", turn.speaker),
            }
        };
        let label_style = if profile.speaker_label == LabelStyle::Bold {
            Style::Bold
        } else {
            Style::Body
        };

        let mut in_code = false;
        let mut para_start = 0usize;
        let text = &turn.text;
        let n_paras = text.split('\n').count();
        for (pi, para) in text.split('\n').enumerate() {
            let fence = profile.code_in_mono && para.trim_start().starts_with("```");
            let mono = in_code || fence;
            if fence {
                in_code = !in_code;
            }
            let body = if mono { Style::Mono } else { Style::Body };
            let last_para = pi + 1 == n_paras;
            // Shape the paragraph in chunks.
            let mut chunk_start = 0usize;
            let chunks = chunk_bounds(para, SHAPE_CHUNK);
            let n_chunks = chunks.len();
            for (ci, chunk_end) in chunks.into_iter().enumerate() {
                let piece = &para[chunk_start..chunk_end];
                let lab = if pi == 0 && ci == 0 {
                    label.as_str()
                } else {
                    ""
                };
                let shaped_text = format!("{lab}{piece}");
                let lines =
                    shape_mixed(fonts, &profile, &shaped_text, lab.len(), label_style, body);
                let n_lines = lines.len();
                for (li, l) in lines.into_iter().enumerate() {
                    let s0 = l.start.saturating_sub(lab.len());
                    let mut s1 = l.end.saturating_sub(lab.len());
                    let last_of_para = li + 1 == n_lines && ci + 1 == n_chunks;
                    if last_of_para && !last_para {
                        s1 += 1; // the '\n' after the paragraph
                    }
                    let seg = Segment {
                        turn: turn_index,
                        start: para_start + chunk_start + s0,
                        end: para_start + chunk_start + s1,
                    };
                    let pending = l.into_pending(&shaped_text, Some(seg));
                    self.place(&profile, pending);
                }
                chunk_start = chunk_end;
            }
            para_start += para.len() + 1;
        }
        drop(guard);
        std::mem::take(&mut self.out)
    }

    /// Ends pagination: returns the last page, if it has any content.
    pub fn finish(mut self) -> Option<Page> {
        let profile = self.renderer.profile.clone();
        self.flush(&profile);
        self.out.pop()
    }

    fn separator(&mut self, profile: &RenderProfile) {
        if !self.page.started {
            return;
        }
        let gap = separator_gap(profile);
        match profile.turn_separator {
            TurnSeparator::None => {}
            TurnSeparator::Space => self.page.y += gap,
            TurnSeparator::Rule => {
                self.page.rules.push(Rule {
                    x0: profile.margins.left,
                    x1: profile.page_width - profile.margins.right,
                    y: self.page.y + gap / 2.0,
                    thickness: (profile.font_size * 0.06).max(0.5),
                });
                self.page.y += gap;
            }
        }
    }

    fn capacity_bottom(&self, profile: &RenderProfile) -> f32 {
        let stack = if profile.gundam {
            profile.gundam_max_pages
        } else {
            1
        };
        profile.page_height * stack as f32 - profile.margins.bottom
    }

    /// Places a line, starting a new page first if it does not fit; a new page opens with the
    /// current session's header.
    fn place(&mut self, profile: &RenderProfile, line: PendingLine) {
        let lh = profile.line_px();
        if self.page.started && self.page.y + lh > self.capacity_bottom(profile) + 1e-3 {
            self.flush(profile);
        }
        if !self.page.started && profile.session_headers && !self.header.is_empty() {
            for h in self.header.clone() {
                self.place_line(profile, h);
            }
            self.separator(profile);
        }
        self.place_line(profile, line);
    }

    /// Places a line at the current position (the caller checked that it fits).
    fn place_line(&mut self, profile: &RenderProfile, line: PendingLine) {
        let lh = profile.line_px();
        if !self.page.started {
            self.page.y = profile.margins.top;
        }
        // A rule whose gap ended up below the last line is dropped with the page flush above.
        let page = &mut self.page;
        page.started = true;
        let top = page.y;
        let baseline = top + (lh - (line.ascent + line.descent)) / 2.0 + line.ascent;
        let start = page.text.len();
        if !page.lines.is_empty() {
            page.text.push('\n');
        }
        let text_start = page.text.len().max(start);
        page.text.push_str(&line.text);
        let glyphs = line
            .glyphs
            .into_iter()
            .map(|mut g| {
                g.y += baseline;
                g
            })
            .collect();
        page.lines.push(Line {
            top,
            baseline,
            height: lh,
            text: text_start..page.text.len(),
            rtl: line.rtl,
            glyphs,
        });
        page.missing += line.missing;
        if let Some(seg) = line.segment {
            if page.first_turn.is_none() {
                page.first_turn = Some(seg.turn);
                page.continues_turn = seg.start > 0;
            }
            page.last_turn = seg.turn;
            match page.segments.last_mut() {
                Some(last) if last.turn == seg.turn && last.end == seg.start => last.end = seg.end,
                _ => page.segments.push(seg),
            }
        }
        page.y += lh;
    }

    fn flush(&mut self, profile: &RenderProfile) {
        let page = std::mem::take(&mut self.page);
        if !page.started || page.lines.is_empty() {
            return;
        }
        let used = page.y + profile.margins.bottom;
        let stack = if profile.gundam {
            ((used / profile.page_height).ceil() as u32).clamp(1, profile.gundam_max_pages)
        } else {
            1
        };
        let rules = page
            .rules
            .into_iter()
            .filter(|r| page.lines.last().is_some_and(|l| r.y < l.top))
            .collect();
        let (turns, continues_turn) = match page.first_turn {
            Some(first) => (first..page.last_turn + 1, page.continues_turn),
            None => (self.next_turn..self.next_turn, false),
        };
        let chars = page.text.chars().count();
        self.out.push(Page {
            index: self.next_index,
            width: profile.page_width,
            height: profile.page_height * stack as f32,
            stack,
            text: page.text,
            lines: page.lines,
            rules,
            turns,
            continues_turn,
            segments: page.segments,
            chars,
            missing_glyphs: page.missing,
        });
        self.next_index += 1;
    }
}

/// Iterator of pages over a stream of turns (see [`Renderer::pages`]).
pub struct Pages<'r, I> {
    paginator: Option<Paginator<'r>>,
    turns: I,
    ready: std::collections::VecDeque<Page>,
}

impl<I> std::fmt::Debug for Pages<'_, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages")
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl<I: Iterator<Item = Result<Turn>>> Iterator for Pages<'_, I> {
    type Item = Result<Page>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(p) = self.ready.pop_front() {
                return Some(Ok(p));
            }
            let paginator = self.paginator.as_mut()?;
            match self.turns.next() {
                Some(Ok(turn)) => self.ready.extend(paginator.push(&turn)),
                Some(Err(e)) => {
                    self.paginator = None;
                    return Some(Err(e));
                }
                None => {
                    let last = self.paginator.take().and_then(Paginator::finish);
                    self.ready.extend(last);
                }
            }
        }
    }
}

/// Text styles used on a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Body,
    Bold,
    Mono,
}

/// One visual line straight from the shaper, positions relative to the left margin and baseline.
struct ShapedLine {
    glyphs: Vec<Glyph>,
    ascent: f32,
    descent: f32,
    rtl: bool,
    /// Byte range of the shaped text the line covers (contiguous over the lines of one paragraph).
    start: usize,
    end: usize,
    missing: usize,
}

impl ShapedLine {
    fn into_pending(self, shaped: &str, segment: Option<Segment>) -> PendingLine {
        let text = shaped[self.start..self.end].trim_end().to_string();
        PendingLine {
            glyphs: self.glyphs,
            ascent: self.ascent,
            descent: self.descent,
            rtl: self.rtl,
            text,
            segment,
            missing: self.missing,
        }
    }
}

fn attrs_for(style: Style, profile: &RenderProfile) -> Attrs<'static> {
    let body_family = match profile.font_family {
        FontFamily::Sans => SANS_FAMILY,
        FontFamily::Mono => MONO_FAMILY,
    };
    match style {
        Style::Body => Attrs::new().family(Family::Name(body_family)),
        Style::Bold => Attrs::new()
            .family(Family::Name(SANS_FAMILY))
            .weight(Weight::BOLD),
        Style::Mono => Attrs::new().family(Family::Name(MONO_FAMILY)),
    }
}

/// Shapes and wraps one paragraph whose first `label_len` bytes are in style `label`, the rest in
/// `body`; returns its visual lines.
fn shape_mixed(
    fonts: &mut Fonts,
    profile: &RenderProfile,
    text: &str,
    label_len: usize,
    label: Style,
    body: Style,
) -> Vec<ShapedLine> {
    let mut attrs = AttrsList::new(&attrs_for(body, profile));
    if label_len > 0 && label != body {
        attrs.add_span(0..label_len, &attrs_for(label, profile));
    }
    let mut line = BufferLine::new(text, LineEnding::None, attrs, Shaping::Advanced);
    let layout = line.layout(
        &mut fonts.system,
        profile.font_size,
        Some(profile.content_width()),
        Wrap::WordOrGlyph,
        Ellipsize::None,
        None,
        8,
        Hinting::Disabled,
    );
    let mut out: Vec<ShapedLine> = Vec::with_capacity(layout.len().max(1));
    let mut prev_end = 0usize;
    for (i, ll) in layout.iter().enumerate() {
        let start = if i == 0 {
            0
        } else {
            ll.glyphs
                .iter()
                .map(|g| g.start)
                .min()
                .unwrap_or(prev_end)
                .max(prev_end)
        };
        if let Some(prev) = out.last_mut() {
            prev.end = start;
        }
        let mut missing = 0;
        let mut last_cluster = None;
        let glyphs = ll
            .glyphs
            .iter()
            .map(|g| {
                let is_missing = g.glyph_id == 0;
                if is_missing && last_cluster != Some((g.start, g.end)) {
                    missing += text
                        .get(g.start..g.end)
                        .map_or(1, |s| s.chars().count().max(1));
                    last_cluster = Some((g.start, g.end));
                }
                Glyph {
                    face: fonts.face(g.font_id),
                    id: g.glyph_id,
                    x: profile.margins.left + g.x + g.font_size * g.x_offset,
                    y: g.y - g.font_size * g.y_offset,
                    size: g.font_size,
                    advance: g.w,
                    missing: is_missing,
                    cluster: g.start.saturating_sub(start)..g.end.saturating_sub(start),
                }
            })
            .collect();
        let rtl = ll.glyphs.first().is_some_and(|g| g.level.is_rtl());
        prev_end = ll
            .glyphs
            .iter()
            .map(|g| g.end)
            .max()
            .unwrap_or(start)
            .max(start);
        out.push(ShapedLine {
            glyphs,
            ascent: ll.max_ascent,
            descent: ll.max_descent,
            rtl,
            start,
            end: text.len(),
            missing,
        });
    }
    if out.is_empty() {
        out.push(ShapedLine {
            glyphs: Vec::new(),
            ascent: profile.font_size * 0.76,
            descent: profile.font_size * 0.24,
            rtl: false,
            start: 0,
            end: text.len(),
            missing: 0,
        });
    }
    if let Some(last) = out.last_mut() {
        last.end = text.len();
    }
    out
}

/// Ends of the pieces a paragraph is shaped in: at most `max` bytes each, cut after a space when one
/// is in the second half of the piece, else at a character boundary.
fn chunk_bounds(para: &str, max: usize) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut start = 0;
    while para.len() - start > max {
        let mut cut = start + max;
        while !para.is_char_boundary(cut) {
            cut -= 1;
        }
        // By bytes: the window's start need not be a character boundary, and a space byte
        // always is one.
        let half = start + max / 2;
        if let Some(sp) = para.as_bytes()[half..cut].iter().rposition(|&b| b == b' ') {
            cut = half + sp + 1;
        }
        ends.push(cut);
        start = cut;
    }
    ends.push(para.len());
    ends
}
