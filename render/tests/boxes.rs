//! Character boxes: they cover exactly the page's text, in order, and sit where the ink is.

mod common;

use common::{code_turns, latin_turns, mixed_script_turns, prose};
use lethe_render::{Mode, Page, PageImage, RenderProfile, Renderer, Turn};

fn turns() -> Vec<Turn> {
    let mut turns = latin_turns();
    turns.extend(mixed_script_turns());
    turns.extend(code_turns());
    turns.push(Turn::new(
        "User",
        "ligatures ffi fl, marks e\u{301} a\u{308}, the end",
    ));
    turns.push(Turn::new(
        "Tool",
        format!("{}\n{}", "x".repeat(300), prose(1500)),
    ));
    turns
}

/// Joins the boxes' characters line by line with `\n`.
fn text_of(page: &Page, boxes: &[lethe_render::CharBox]) -> String {
    let mut lines = vec![String::new(); page.lines.len()];
    for b in boxes {
        lines[b.line].push(b.ch);
    }
    lines.join("\n")
}

#[test]
fn boxes_cover_the_page_text_in_order_at_every_mode() {
    let r = Renderer::new().unwrap();
    let pages = r.paginate(&turns()).unwrap();
    assert!(pages.len() >= 2, "{} pages", pages.len());
    for mode in [
        Mode::Tiny,
        Mode::Small,
        Mode::Base,
        Mode::Large,
        Mode::Gundam,
    ] {
        for page in &pages {
            let (w, h) = page.pixel_size(mode);
            let boxes = page.char_boxes(w, h);
            assert_eq!(
                text_of(page, &boxes),
                page.text,
                "page {} {mode}",
                page.index
            );
            assert_eq!(
                boxes.len() + page.lines.len().saturating_sub(1),
                page.chars,
                "page {} {mode}: one box per character but the line breaks",
                page.index
            );
            // Byte offsets point at the character, strictly increasing.
            for pair in boxes.windows(2) {
                assert!(pair[0].byte < pair[1].byte);
            }
            for b in &boxes {
                assert_eq!(page.text[b.byte..].chars().next(), Some(b.ch));
                assert!(b.x0 <= b.x1 && b.y0 < b.y1, "{b:?}");
                assert!(b.x0 >= -0.5 && b.x1 <= w as f32 + 0.5, "{b:?} outside {w}");
                assert!(b.y0 >= 0.0 && b.y1 <= h as f32 + 0.5, "{b:?} outside {h}");
            }
        }
    }
}

/// Darkest pixel inside a box (a quarter of its width trimmed on each side, so the antialiased
/// edges of its neighbours do not count).
fn darkest(img: &PageImage, b: &lethe_render::CharBox) -> u8 {
    let (w, h) = (img.width as i64, img.height as i64);
    let (dx, dy) = ((b.x1 - b.x0) * 0.25, 0.0);
    let x0 = ((b.x0 + dx).round() as i64).clamp(0, w - 1);
    let x1 = ((b.x1 - dx).round() as i64).clamp(x0 + 1, w);
    let y0 = ((b.y0 + dy).round() as i64).clamp(0, h - 1);
    let y1 = ((b.y1 - dy).round() as i64).clamp(y0 + 1, h);
    let mut min = 255u8;
    for y in y0..y1 {
        for x in x0..x1 {
            min = min.min(img.pixels[(y * w + x) as usize]);
        }
    }
    min
}

#[test]
fn every_visible_character_has_ink_in_its_box_and_spaces_have_none() {
    // A monospace page: every advance is a glyph's own cell, so a space's box holds no ink.
    let profile = RenderProfile {
        font_family: lethe_render::FontFamily::Mono,
        speaker_label: lethe_render::LabelStyle::Plain,
        ..RenderProfile::default()
    };
    let r = Renderer::builder().profile(profile).build().unwrap();
    let text = format!("{} path/to/file_v2.rs:42 {{x}} [ok] 0xDEAD", prose(600));
    let pages = r.paginate(&[Turn::new("User", text)]).unwrap();
    for mode in [Mode::Small, Mode::Base] {
        let img = r.rasterize(&pages[0], mode);
        let boxes = pages[0].char_boxes(img.width, img.height);
        let mut inked = 0;
        for b in &boxes {
            let d = darkest(&img, b);
            if b.ch == ' ' {
                assert!(d > 200, "{mode}: ink {d} in the box of a space {b:?}");
            } else {
                assert!(d < 128, "{mode}: no ink for {:?} in {b:?}", b.ch);
                inked += 1;
            }
        }
        assert!(inked > 500, "{inked} visible characters");
    }
}

#[test]
fn boxes_scale_with_the_mode() {
    let r = Renderer::new().unwrap();
    let pages = r.paginate(&latin_turns()).unwrap();
    let tiny = pages[0].char_boxes(512, 512);
    let large = pages[0].char_boxes(1280, 1280);
    assert_eq!(tiny.len(), large.len());
    for (a, b) in tiny.iter().zip(&large) {
        assert!((a.x0 * 2.5 - b.x0).abs() < 1e-2 && (a.y1 * 2.5 - b.y1).abs() < 1e-2);
    }
}
