//! The recall-against-compression plot: word precision (y) against compression ratio in text
//! tokens per decoder position (x), one series per optical mode and per baseline, drawn as SVG
//! (written by hand) and as PNG (the same shapes rasterised with tiny-skia, labels in a built-in
//! 5x7 bitmap font).

use std::fmt::Write as _;

use tiny_skia::{Color, FillRule, Paint, PathBuilder, Pixmap, Rect, Stroke, StrokeDash, Transform};

use super::error::{Error, Result};
use super::font;
use super::report::{BenchReport, SeriesKind};

/// One curve of the plot.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotSeries {
    /// Legend name: a mode (`base`), `truncation` or `uncompressed`.
    pub name: String,
    /// Which kind of curve (sets the line and marker style).
    pub kind: SeriesKind,
    /// `(compression ratio, word precision)` points, ascending in x.
    pub points: Vec<(f64, f64)>,
}

/// A plot of recall against compression ratio.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The curves, in legend order.
    pub series: Vec<PlotSeries>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Rgb(u8, u8, u8);

impl Rgb {
    fn hex(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }
}

const PALETTE: [Rgb; 8] = [
    Rgb(0x1f, 0x77, 0xb4),
    Rgb(0xd6, 0x27, 0x28),
    Rgb(0x2c, 0xa0, 0x2c),
    Rgb(0x94, 0x67, 0xbd),
    Rgb(0xff, 0x7f, 0x0e),
    Rgb(0x8c, 0x56, 0x4b),
    Rgb(0xe3, 0x77, 0xc2),
    Rgb(0x17, 0xbe, 0xcf),
];
const BLACK: Rgb = Rgb(0, 0, 0);
const GREY: Rgb = Rgb(0x70, 0x70, 0x70);
const GRID: Rgb = Rgb(0xe0, 0xe0, 0xe0);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Marker {
    Circle,
    Square,
    Diamond,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Anchor {
    Start,
    Middle,
    End,
}

/// A drawing primitive, in pixels; both back ends draw the same list.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    /// Opening of a series group (SVG `<g>`); index into `Plot::series`.
    GroupStart(String),
    GroupEnd,
    Line {
        points: Vec<(f32, f32)>,
        color: Rgb,
        width: f32,
        dashed: bool,
    },
    Marker {
        x: f32,
        y: f32,
        marker: Marker,
        color: Rgb,
    },
    Text {
        x: f32,
        y: f32,
        text: String,
        anchor: Anchor,
        color: Rgb,
    },
}

/// Text cap height in pixels (the bitmap font at scale 2).
const TEXT_SCALE: u32 = 2;
const TEXT_H: f32 = (font::GLYPH_H * TEXT_SCALE) as f32;

fn nice_step(range: f64, target_ticks: f64) -> f64 {
    let raw = (range / target_ticks).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

impl Plot {
    /// Image width in pixels.
    pub const WIDTH: u32 = 900;
    /// Image height in pixels.
    pub const HEIGHT: u32 = 540;
    const LEFT: f32 = 80.0;
    const TOP: f32 = 60.0;
    const RIGHT: f32 = 680.0;
    const BOTTOM: f32 = 460.0;

    /// The plot of a report: per optical mode, its token buckets as points `(ratio per position,
    /// mean word precision)`; all truncation baselines as one `truncation` series (every mode's
    /// budget, every bucket); the uncompressed baseline as one series. Points with no ratio are
    /// left out.
    pub fn from_report(report: &BenchReport) -> Self {
        let points_of = |kinds: &[SeriesKind], name: Option<&str>| {
            let mut pts: Vec<(f64, f64)> = report
                .series
                .iter()
                .filter(|s| kinds.contains(&s.kind) && name.is_none_or(|n| s.name == n))
                .flat_map(|s| s.buckets.iter())
                .filter_map(|b| {
                    Some((
                        b.aggregate.ratio_per_position?,
                        b.aggregate.word_precision.mean?,
                    ))
                })
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
            pts
        };
        let mut series: Vec<PlotSeries> = report
            .series
            .iter()
            .filter(|s| s.kind == SeriesKind::Optical)
            .map(|s| PlotSeries {
                name: s.name.clone(),
                kind: SeriesKind::Optical,
                points: points_of(&[SeriesKind::Optical], Some(&s.name)),
            })
            .collect();
        for (kind, name) in [
            (SeriesKind::Truncation, "truncation"),
            (SeriesKind::Uncompressed, "uncompressed"),
        ] {
            if report.series.iter().any(|s| s.kind == kind) {
                series.push(PlotSeries {
                    name: name.to_owned(),
                    kind,
                    points: points_of(&[kind], None),
                });
            }
        }
        Plot {
            title: format!(
                "Recall against compression (decoder {}, tokenizer {})",
                report.reader, report.tokenizer
            ),
            x_label: "compression ratio (text tokens per decoder position)".to_owned(),
            y_label: "word precision".to_owned(),
            series,
        }
    }

    fn shapes(&self) -> Vec<Shape> {
        let (l, t, r, b) = (Self::LEFT, Self::TOP, Self::RIGHT, Self::BOTTOM);
        let x_max_data = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .filter(|x| x.is_finite())
            .fold(1.0f64, f64::max);
        let step = nice_step(x_max_data * 1.05, 6.0);
        let x_max = (x_max_data * 1.05 / step).ceil() * step;
        let px = |x: f64| l + ((x / x_max) as f32) * (r - l);
        let py = |y: f64| b - (y.clamp(0.0, 1.0) as f32) * (b - t);
        let mut out = Vec::new();
        let text = |x: f32, y: f32, s: &str, anchor: Anchor| Shape::Text {
            x,
            y,
            text: s.to_owned(),
            anchor,
            color: BLACK,
        };
        // Grid and ticks.
        for i in 0..=5 {
            let v = f64::from(i) * 0.2;
            let y = py(v);
            out.push(Shape::Line {
                points: vec![(l, y), (r, y)],
                color: GRID,
                width: 1.0,
                dashed: false,
            });
            out.push(text(
                l - 8.0,
                y + TEXT_H / 2.0,
                &format!("{v:.1}"),
                Anchor::End,
            ));
        }
        let n_ticks = (x_max / step).round() as i64;
        for i in 0..=n_ticks {
            let v = i as f64 * step;
            let x = px(v);
            out.push(Shape::Line {
                points: vec![(x, t), (x, b)],
                color: GRID,
                width: 1.0,
                dashed: false,
            });
            out.push(text(
                x,
                b + 8.0 + TEXT_H,
                &tick_label(v, step),
                Anchor::Middle,
            ));
        }
        // Axes.
        out.push(Shape::Line {
            points: vec![(l, t), (l, b), (r, b)],
            color: BLACK,
            width: 1.5,
            dashed: false,
        });
        // Titles wider than the image are shortened with "..." (in both back ends alike).
        let max_chars = ((Self::WIDTH - 20) / (font::ADVANCE * TEXT_SCALE)) as usize;
        let title = if self.title.chars().count() > max_chars {
            let kept: String = self
                .title
                .chars()
                .take(max_chars.saturating_sub(3))
                .collect();
            format!("{kept}...")
        } else {
            self.title.clone()
        };
        out.push(text(
            Self::WIDTH as f32 / 2.0,
            10.0 + TEXT_H,
            &title,
            Anchor::Middle,
        ));
        out.push(text(
            (l + r) / 2.0,
            b + 44.0 + TEXT_H,
            &self.x_label,
            Anchor::Middle,
        ));
        out.push(text(l - 60.0, t - 14.0, &self.y_label, Anchor::Start));
        // Series and legend.
        let mut optical = 0;
        for (i, s) in self.series.iter().enumerate() {
            let (color, marker, dashed) = match s.kind {
                SeriesKind::Optical => {
                    optical += 1;
                    (
                        PALETTE[(optical - 1) % PALETTE.len()],
                        Marker::Circle,
                        false,
                    )
                }
                SeriesKind::Truncation => (GREY, Marker::Square, true),
                SeriesKind::Uncompressed => (BLACK, Marker::Diamond, false),
            };
            out.push(Shape::GroupStart(s.name.clone()));
            let pts: Vec<(f32, f32)> = s
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(|&(x, y)| (px(x), py(y)))
                .collect();
            if pts.len() >= 2 {
                out.push(Shape::Line {
                    points: pts.clone(),
                    color,
                    width: 2.0,
                    dashed,
                });
            }
            for &(x, y) in &pts {
                out.push(Shape::Marker {
                    x,
                    y,
                    marker,
                    color,
                });
            }
            let ly = t + 10.0 + 26.0 * i as f32;
            out.push(Shape::Line {
                points: vec![(r + 20.0, ly), (r + 50.0, ly)],
                color,
                width: 2.0,
                dashed,
            });
            out.push(Shape::Marker {
                x: r + 35.0,
                y: ly,
                marker,
                color,
            });
            out.push(Shape::Text {
                x: r + 58.0,
                y: ly + TEXT_H / 2.0,
                text: s.name.clone(),
                anchor: Anchor::Start,
                color: BLACK,
            });
            out.push(Shape::GroupEnd);
        }
        out
    }

    /// The plot as a standalone SVG document. Each series is one `<g class="series"
    /// data-series="NAME">` holding its curve, markers and legend entry.
    pub fn to_svg(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, sans-serif" font-size="13">"#,
            w = Self::WIDTH,
            h = Self::HEIGHT
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        for shape in self.shapes() {
            match shape {
                Shape::GroupStart(name) => {
                    let _ = writeln!(
                        s,
                        r#"<g class="series" data-series="{}">"#,
                        xml_escape(&name)
                    );
                }
                Shape::GroupEnd => s.push_str("</g>\n"),
                Shape::Line {
                    points,
                    color,
                    width,
                    dashed,
                } => {
                    let pts: Vec<String> = points
                        .iter()
                        .map(|(x, y)| format!("{x:.1},{y:.1}"))
                        .collect();
                    let dash = if dashed {
                        r#" stroke-dasharray="6 4""#
                    } else {
                        ""
                    };
                    let _ = writeln!(
                        s,
                        r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="{width}"{dash}/>"#,
                        pts.join(" "),
                        color.hex()
                    );
                }
                Shape::Marker {
                    x,
                    y,
                    marker,
                    color,
                } => {
                    let c = color.hex();
                    let _ = match marker {
                        Marker::Circle => {
                            writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{c}"/>"#)
                        }
                        Marker::Square => writeln!(
                            s,
                            r#"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="{c}"/>"#,
                            x - 4.0,
                            y - 4.0
                        ),
                        Marker::Diamond => writeln!(
                            s,
                            r#"<polygon points="{x:.1},{:.1} {:.1},{y:.1} {x:.1},{:.1} {:.1},{y:.1}" fill="{c}"/>"#,
                            y - 5.0,
                            x + 5.0,
                            y + 5.0,
                            x - 5.0
                        ),
                    };
                }
                Shape::Text {
                    x,
                    y,
                    text,
                    anchor,
                    color,
                } => {
                    let a = match anchor {
                        Anchor::Start => "start",
                        Anchor::Middle => "middle",
                        Anchor::End => "end",
                    };
                    let _ = writeln!(
                        s,
                        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{a}" fill="{}">{}</text>"#,
                        color.hex(),
                        xml_escape(&text)
                    );
                }
            }
        }
        s.push_str("</svg>\n");
        s
    }

    /// The same plot rasterised to an RGBA pixmap of [`Plot::WIDTH`] x [`Plot::HEIGHT`].
    pub fn to_pixmap(&self) -> Result<Pixmap> {
        let (w, h) = (Self::WIDTH, Self::HEIGHT);
        let mut pm = Pixmap::new(w, h).ok_or(Error::Canvas {
            width: w,
            height: h,
        })?;
        pm.fill(Color::WHITE);
        for shape in self.shapes() {
            match shape {
                Shape::GroupStart(_) | Shape::GroupEnd => {}
                Shape::Line {
                    points,
                    color,
                    width,
                    dashed,
                } => {
                    let mut pb = PathBuilder::new();
                    for (i, &(x, y)) in points.iter().enumerate() {
                        if i == 0 {
                            pb.move_to(x, y);
                        } else {
                            pb.line_to(x, y);
                        }
                    }
                    if let Some(path) = pb.finish() {
                        let stroke = Stroke {
                            width,
                            dash: if dashed {
                                StrokeDash::new(vec![6.0, 4.0], 0.0)
                            } else {
                                None
                            },
                            ..Stroke::default()
                        };
                        pm.stroke_path(&path, &paint(color), &stroke, Transform::identity(), None);
                    }
                }
                Shape::Marker {
                    x,
                    y,
                    marker,
                    color,
                } => {
                    let path = match marker {
                        Marker::Circle => PathBuilder::from_circle(x, y, 4.0),
                        Marker::Square => {
                            Rect::from_xywh(x - 4.0, y - 4.0, 8.0, 8.0).map(PathBuilder::from_rect)
                        }
                        Marker::Diamond => {
                            let mut pb = PathBuilder::new();
                            pb.move_to(x, y - 5.0);
                            pb.line_to(x + 5.0, y);
                            pb.line_to(x, y + 5.0);
                            pb.line_to(x - 5.0, y);
                            pb.close();
                            pb.finish()
                        }
                    };
                    if let Some(path) = path {
                        pm.fill_path(
                            &path,
                            &paint(color),
                            FillRule::Winding,
                            Transform::identity(),
                            None,
                        );
                    }
                }
                Shape::Text {
                    x,
                    y,
                    text,
                    anchor,
                    color,
                } => draw_text(&mut pm, x, y, &text, anchor, color),
            }
        }
        Ok(pm)
    }

    /// The same plot as PNG bytes (8-bit RGBA).
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let pm = self.to_pixmap()?;
        let mut bytes = Vec::new();
        let mut enc = png::Encoder::new(&mut bytes, pm.width(), pm.height());
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(Error::Png)?;
        // The background is opaque, so premultiplied and straight alpha agree.
        writer.write_image_data(pm.data()).map_err(Error::Png)?;
        writer.finish().map_err(Error::Png)?;
        Ok(bytes)
    }
}

fn paint(c: Rgb) -> Paint<'static> {
    let mut p = Paint::default();
    p.set_color_rgba8(c.0, c.1, c.2, 255);
    p.anti_alias = true;
    p
}

/// Draws `text` in the bitmap font with its baseline at `y`.
fn draw_text(pm: &mut Pixmap, x: f32, y: f32, text: &str, anchor: Anchor, color: Rgb) {
    let s = TEXT_SCALE as f32;
    let width = font::text_width(text) as f32 * s;
    let left = match anchor {
        Anchor::Start => x,
        Anchor::Middle => x - width / 2.0,
        Anchor::End => x - width,
    }
    .round();
    let top = (y - TEXT_H).round();
    let mut p = paint(color);
    p.anti_alias = false;
    for (i, c) in text.chars().enumerate() {
        let gx = left + (i as u32 * font::ADVANCE) as f32 * s;
        for (row, bits) in font::glyph(c).iter().enumerate() {
            for col in 0..font::GLYPH_W {
                if bits & (1 << (font::GLYPH_W - 1 - col)) != 0 {
                    if let Some(r) =
                        Rect::from_xywh(gx + col as f32 * s, top + row as f32 * s, s, s)
                    {
                        pm.fill_rect(r, &p, Transform::identity(), None);
                    }
                }
            }
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
