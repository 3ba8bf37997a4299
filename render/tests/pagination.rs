//! Pagination invariants, layout across modes, missing glyphs, gundam pages.

mod common;

use common::{code_turns, latin_turns, mixed_script_turns, prose};
use lethe_render::{Mode, Page, PixelFormat, RenderProfile, Renderer, Turn, TurnSeparator};

fn check_coverage(turns: &[Turn], pages: &[Page]) {
    // Every byte of every turn is on exactly one page, in order.
    let mut next = vec![0usize; turns.len()];
    let mut last_turn_start = 0;
    for page in pages {
        assert!(
            page.turns.start >= last_turn_start,
            "turn ranges go backwards"
        );
        last_turn_start = page.turns.start;
        for seg in &page.segments {
            assert!(
                page.turns.contains(&seg.turn),
                "segment outside the page's turns"
            );
            assert_eq!(
                seg.start, next[seg.turn],
                "gap or overlap in turn {}",
                seg.turn
            );
            assert!(seg.end >= seg.start);
            next[seg.turn] = seg.end;
        }
        assert_eq!(page.chars, page.text.chars().count());
    }
    for (i, t) in turns.iter().enumerate() {
        assert_eq!(next[i], t.text.len(), "turn {i} not fully covered");
        let joined: String = pages
            .iter()
            .flat_map(|p| p.segments.iter())
            .filter(|s| s.turn == i)
            .map(|s| &t.text[s.start..s.end])
            .collect();
        assert_eq!(joined, t.text);
    }
}

fn visible(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

#[test]
fn every_character_on_exactly_one_page_in_order() {
    let r = Renderer::new().unwrap();
    let mut turns = latin_turns();
    turns.extend(mixed_script_turns());
    turns.extend(code_turns());
    turns.push(Turn::new(
        "User",
        format!("{}\n\n\n{}", prose(9000), prose(300)),
    ));
    turns.push(Turn::new("Assistant", ""));
    let pages = r.paginate(&turns).unwrap();
    assert!(pages.len() >= 3, "{}", pages.len());
    check_coverage(&turns, &pages);
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(p.index, i);
    }
    // The visible text of the pages, without session headers (repeated on every page of a
    // session), labels and whitespace, is the turns' text in order.
    let all_pages: String = pages
        .iter()
        .flat_map(|p| p.text.lines())
        .filter(|l| !(l.starts_with("=== ") && l.ends_with(" ===")))
        .map(visible)
        .collect();
    let mut pos = 0;
    for t in &turns {
        let v = visible(&t.text);
        let found = all_pages[pos..].find(&v).map(|i| i + pos);
        // Long turns are split across pages with a label in between; check their pieces instead.
        match found {
            Some(at) => pos = at + v.len(),
            None => {
                for piece in t.text.split_whitespace() {
                    let at = all_pages[pos..].find(piece).unwrap_or_else(|| {
                        panic!(
                            "piece {piece:?} missing after {:?}",
                            &all_pages[pos.saturating_sub(80)..pos]
                        )
                    }) + pos;
                    pos = at + piece.len();
                }
            }
        }
    }
}

#[test]
fn a_long_turn_spans_pages() {
    let r = Renderer::new().unwrap();
    let turns = vec![
        Turn::new("User", "short"),
        Turn::new("Assistant", prose(12_000)),
    ];
    let pages = r.paginate(&turns).unwrap();
    assert!(pages.len() >= 3);
    assert_eq!(pages[0].turns, 0..2);
    assert!(!pages[0].continues_turn);
    for p in &pages[1..] {
        assert_eq!(p.turns, 1..2);
        assert!(p.continues_turn);
    }
    check_coverage(&turns, &pages);
}

/// Found by the fuzzer: a paragraph longer than a shaping chunk (8 KiB) whose chunk midpoint falls
/// inside a multi-byte character.
#[test]
fn a_long_paragraph_of_multibyte_characters_is_shaped_in_pieces() {
    let r = Renderer::new().unwrap();
    let text = format!("x{}", "\u{e9}".repeat(6_000));
    let turns = vec![Turn::new("User", text)];
    let pages = r.paginate(&turns).unwrap();
    assert!(!pages.is_empty());
    check_coverage(&turns, &pages);
}

#[test]
fn a_page_holds_about_a_thousand_tokens_of_prose() {
    let r = Renderer::new().unwrap();
    let pages = r
        .paginate(&[Turn::new("Assistant", prose(20_000))])
        .unwrap();
    let first = &pages[0];
    // ~4 characters per token for English: 3,600..5,200 characters is 900..1,300 tokens.
    assert!(
        (3600..=5200).contains(&first.chars),
        "{} chars on a full page",
        first.chars
    );
}

#[test]
fn ten_thousand_character_word_is_broken_at_the_page_width() {
    let r = Renderer::new().unwrap();
    let word = "x".repeat(10_000);
    let turns = vec![Turn::new("User", word.clone())];
    let pages = r.paginate(&turns).unwrap();
    check_coverage(&turns, &pages);
    let p = r.profile();
    let right = p.page_width - p.margins.right + 0.5;
    let mut glyphs = 0;
    for page in &pages {
        for line in &page.lines {
            for g in &line.glyphs {
                assert!(g.x + g.advance <= right, "glyph at {} overflows", g.x);
                assert!(g.x >= p.margins.left - 0.5);
            }
            glyphs += line.glyphs.len();
        }
    }
    assert_eq!(glyphs, 10_000 + "User: ".len());
    assert_eq!(
        visible(&pages.iter().map(|p| p.text.clone()).collect::<String>()),
        format!("User:{word}")
    );
}

#[test]
fn scripts_render_without_missing_glyphs_and_emoji_are_counted() {
    let r = Renderer::new().unwrap();
    let pages = r.paginate(&mixed_script_turns()).unwrap();
    assert_eq!(pages.iter().map(|p| p.missing_glyphs).sum::<usize>(), 0);
    // RTL lines are marked.
    assert!(
        pages[0].lines.iter().any(|l| l.rtl)
            || pages[0].lines.iter().any(|l| l.glyphs.iter().any(|_| true))
    );
    // Chat emoji, with ZWJ sequences and variation selectors, come from the bundled Noto Emoji.
    let emoji = vec![Turn::new(
        "User",
        "ship it 🚀 now 🎉! 👍 💪 🧘\u{200d}\u{2640}\u{fe0f} 🌟 ❤\u{fe0f}",
    )];
    let pages = r.paginate(&emoji).unwrap();
    assert_eq!(pages[0].missing_glyphs, 0, "{:?}", pages[0].missing_chars());
    // What no bundled font covers is counted, named, and drawn as a visible box: the page has
    // more ink than the same text without those characters.
    let pages = r
        .paginate(&[Turn::new("User", "ship it \u{13000} now \u{13001}!")])
        .unwrap();
    assert_eq!(pages[0].missing_glyphs, 2);
    assert_eq!(pages[0].missing_chars(), ['\u{13000}', '\u{13001}']);
    let plain = r.paginate(&[Turn::new("User", "ship it  now !")]).unwrap();
    let ink = |p: &Page| {
        r.rasterize(p, Mode::Base)
            .pixels
            .iter()
            .map(|&v| 255 - u64::from(v))
            .sum::<u64>()
    };
    assert!(ink(&pages[0]) > ink(&plain[0]) + 500);
    // Control pictures from sanitising are covered by the bundled fonts.
    let ctl = vec![Turn::new("Tool", "bell \u{FFFD} esc \u{FFFD}")];
    assert_eq!(r.paginate(&ctl).unwrap()[0].missing_glyphs, 0);
}

/// Rows (as fractions of the page height) where ink bands start.
fn band_starts(img: &lethe_render::PageImage) -> Vec<f32> {
    let w = img.width as usize;
    let inked: Vec<bool> = img
        .pixels
        .chunks_exact(w)
        .map(|row| row.iter().any(|&v| v < 128))
        .collect();
    let mut starts = Vec::new();
    for y in 0..inked.len() {
        if inked[y] && (y == 0 || !inked[y - 1]) {
            starts.push(y as f32 / img.height as f32);
        }
    }
    starts
}

#[test]
fn same_page_at_two_modes_has_the_same_line_layout() {
    let r = Renderer::builder()
        .line_height(1.5)
        .turn_separator(TurnSeparator::Rule)
        .build()
        .unwrap();
    let pages = r.paginate(&latin_turns()).unwrap();
    let large = r.rasterize(&pages[0], Mode::Large);
    let base = r.rasterize(&pages[0], Mode::Base);
    assert_eq!((large.width, base.width), (1280, 1024));
    let a = band_starts(&large);
    let b = band_starts(&base);
    assert!(a.len() > 10);
    let tops: Vec<f32> = pages[0].lines.iter().map(|l| l.top / 1024.0).collect();
    assert_eq!(
        a.len(),
        b.len(),
        "different number of text bands: {a:?}\n{b:?}\n{tops:?}"
    );
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 3.0 / 1024.0, "band at {x} vs {y}");
    }
    // Each band starts near a laid-out line (or rule).
    // One band per laid-out line (rules are light gray, below the ink threshold).
    assert_eq!(a.len(), pages[0].lines.len());
    assert!(!pages[0].rules.is_empty());
}

#[test]
fn rasterising_is_deterministic_across_renderers_and_formats() {
    let r1 = Renderer::new().unwrap();
    let r2 = Renderer::new().unwrap();
    let turns = mixed_script_turns();
    let p1 = r1.paginate(&turns).unwrap();
    let p2 = r2.paginate(&turns).unwrap();
    assert_eq!(p1, p2);
    for mode in Mode::ALL {
        let a = r1.rasterize(&p1[0], mode).to_png().unwrap();
        let b = r2.rasterize(&p2[0], mode).to_png().unwrap();
        assert_eq!(a, b, "{mode}");
    }
    let rgb = r1.rasterize_as(&p1[0], Mode::Small, PixelFormat::Rgb);
    assert_eq!(rgb.channels, 3);
    assert_eq!(rgb.to_gray(), r1.rasterize(&p1[0], Mode::Small));
    // A page survives serialisation and rasterises identically (memory stores pages).
    let json = serde_json::to_string(&p1[0]).unwrap();
    let back: Page = serde_json::from_str(&json).unwrap();
    assert_eq!(
        r1.rasterize(&back, Mode::Tiny),
        r1.rasterize(&p1[0], Mode::Tiny)
    );
}

#[test]
fn gundam_pages_stack_and_tile_like_the_reference() {
    let r = Renderer::builder().gundam(true, 3).build().unwrap();
    let turns = vec![Turn::new("Assistant", prose(11_000))];
    let pages = r.paginate(&turns).unwrap();
    check_coverage(&turns, &pages);
    assert_eq!(pages[0].stack, 3);
    assert_eq!((pages[0].width, pages[0].height), (1024.0, 3072.0));
    let grid = pages[0].tile_grid(Mode::Gundam).unwrap();
    assert_eq!((grid.cols, grid.rows), (1, 3));
    assert_eq!(pages[0].pixel_size(Mode::Gundam), (640, 1920));
    assert_eq!(pages[0].vision_tokens(Mode::Gundam), 256 + 300);
    assert_eq!(pages[0].decoder_positions(Mode::Gundam), 273 + 30 * 11);
    let img = r.rasterize(&pages[0], Mode::Gundam);
    assert_eq!((img.width, img.height), (640, 1920));
    // The last page only stacks what it needs.
    let last = pages.last().unwrap();
    assert!(last.stack >= 1 && last.stack <= 3);
    // Lower tiers render the same tall page into a square.
    let tiny = r.rasterize(&pages[0], Mode::Tiny);
    assert_eq!((tiny.width, tiny.height), (512, 512));
    // A single-page gundam page is tiled 2x2 at 1280 px, as the reference would.
    let one = r.paginate(&[Turn::new("User", "hi")]).unwrap();
    assert_eq!(one[0].stack, 1);
    assert_eq!(one[0].pixel_size(Mode::Gundam), (1280, 1280));
}

#[test]
fn profiles_load_from_toml_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let toml_path = dir.path().join("p.toml");
    std::fs::write(
        &toml_path,
        "font_size = 20.0\nspeaker_label = \"plain\"\nturn_separator = \"rule\"\n[margins]\ntop = 30.0\n",
    )
    .unwrap();
    let p = RenderProfile::load(&toml_path).unwrap();
    assert_eq!(p.font_size, 20.0);
    assert_eq!(p.margins.top, 30.0);
    assert_eq!(p.margins.left, RenderProfile::default().margins.left);
    let json_path = dir.path().join("p.json");
    std::fs::write(
        &json_path,
        r#"{"font_family": "mono", "gundam": true, "gundam_max_pages": 2}"#,
    )
    .unwrap();
    let p = RenderProfile::load(&json_path).unwrap();
    assert!(p.gundam);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "font_sise = 3\n").unwrap();
    let err = RenderProfile::load(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.toml"), "{err}");
    assert!(Renderer::builder().font_size(0.5).build().is_err());
    assert!(Renderer::builder().gundam(true, 12).build().is_err());
}

#[test]
fn every_page_of_a_session_opens_with_its_header_and_no_header_ends_a_page() {
    let r = Renderer::new().unwrap();
    let mut turns = Vec::new();
    for s in 1..=6 {
        let session = format!("Session {s} · 2026-03-{:02}", 10 + s);
        for i in 0..(s * 3) {
            let speaker = if i % 2 == 0 { "User" } else { "Assistant" };
            turns.push(Turn::new(speaker, prose(150 + 97 * i)).with_session(session.clone()));
        }
    }
    let pages = r.paginate(&turns).unwrap();
    assert!(pages.len() >= 6, "{} pages", pages.len());
    check_coverage(&turns, &pages);
    for p in &pages {
        let lines: Vec<&str> = p.text.lines().collect();
        let first_turn = &turns[p.turns.start];
        let header = format!("=== {} ===", first_turn.session.as_deref().unwrap());
        assert_eq!(
            lines[0], header,
            "page {} does not open with its session",
            p.index
        );
        let last = lines.last().unwrap();
        assert!(
            !last.starts_with("=== "),
            "page {} ends with a lone header {last:?}",
            p.index
        );
        // Mid-page session changes draw their header once, before the session's first turn.
        let headers = lines.iter().filter(|l| l.starts_with("=== ")).count();
        let sessions: std::collections::BTreeSet<_> = turns[p.turns.clone()]
            .iter()
            .map(|t| t.session.clone())
            .collect();
        assert_eq!(headers, sessions.len(), "page {}:\n{}", p.index, p.text);
    }
}
