//! The embedded reader (`models/lethe-reader`) reads back what Lethe drew: no file, no network.
//!
//! Issue 12 asks for a short line read back exactly. The reader shipped today gets every word of
//! these pages but not yet every character (a dropped or changed period, a stray blank line or
//! letter after the text), so this test asserts what it does do, with a margin below the figures
//! it measures: the text it writes has the page's words (word precision), is close to the page's
//! text (character F1, edit distance), and is closer to that page's text than to another page's,
//! so it comes from the pixels. Raise the floors as the reader improves; the figures are printed
//! on every run.

use lethe::{Mode, OcrModel, OcrOptions};
use lethe_cli::metrics::{char_f1, normalized_edit_distance, word_precision};
use lethe_render::{Renderer, Turn};

/// Two short pages of the kinds of turns agents write: prose, numbers, identifiers.
const PAGES: [&[(&str, &str)]; 2] = [
    &[
        ("User", "The deploy failed again on port 8443."),
        ("Assistant", "Restart the worker and check the queue."),
        ("Tool", "status=503 retry_after=30"),
    ],
    &[
        ("User", "Please check the logs from last night."),
        (
            "Assistant",
            "Done. The cache is warm again and the build passed.",
        ),
    ],
];

/// Floors at every tier, (character F1, edit distance), about 0.1 below the worst page the shipped
/// reader measured, never lowered (run a13 step 1,200 of stage 3: every page exact at both
/// tiers, F1 1.000, edit 0.000, word precision 1.000; floors raised then; run a12 step 900: base
/// F1 0.995 / 1.000, edit 0.008 / 0.000;
/// tiny F1 1.000 / 0.989, edit 0.000 / 0.009, word precision 1.000 on all four; run a11 step
/// 1,452: base F1 0.995 / 1.000, edit 0.016 / 0.000;
/// tiny F1 0.995 / 0.989, edit 0.008 / 0.009, word precision 1.000 on all four; floors raised
/// then; run a10 step 200: base F1 0.973 / 1.000, edit 0.081 / 0.000;
/// tiny F1 0.991 / 0.978, edit 0.008 / 0.019; run a8, not shipped, failed here: base edit 0.263;
/// run a7 step 650: base F1 0.995 / 0.961, edit 0.016 / 0.037;
/// tiny F1 0.849 / 0.900, edit 0.233 / 0.118; run a4 step 3,000: base F1 0.986 / 0.961, edit 0.023 /
/// 0.046; tiny F1 0.845 / 0.810, edit 0.247 / 0.258; step 2,000 had base F1 0.986 / 0.887,
/// tiny 0.865 / 0.874, edit 0.247 / 0.161; a2 step 1,750 base F1 0.875 / 0.977, tiny 0.762 /
/// 0.844).
const FLOORS: (f64, f64) = (0.9, 0.1);

/// Word precision on each page, at every tier: issue 12's bar for held-out pages (runs a11 to
/// a13 read every word of these pages at both tiers).
const MIN_WORD_PRECISION: f64 = 0.9;

#[test]
fn the_embedded_reader_reads_short_rendered_pages() {
    let model = OcrModel::embedded(OcrOptions::default()).expect("the embedded reader loads");
    assert!(model.is_embedded());
    let profile = model
        .render_profile()
        .cloned()
        .expect("the reader declares its render profile");
    let modes = model.modes().expect("the reader declares its tiers");
    assert_eq!(modes, [Mode::Base, Mode::Tiny]);
    let renderer = Renderer::builder().profile(profile).build().unwrap();
    let pages: Vec<_> = PAGES
        .iter()
        .map(|turns| {
            let turns: Vec<Turn> = turns.iter().map(|(s, t)| Turn::new(*s, *t)).collect();
            let pages = renderer.paginate(&turns).unwrap();
            assert_eq!(pages.len(), 1);
            pages.into_iter().next().unwrap()
        })
        .collect();
    let (min_f1, max_edit) = FLOORS;
    for &mode in &modes {
        for (i, page) in pages.iter().enumerate() {
            let image = renderer.rasterize(page, mode);
            let reading = model.read(&image, mode, None).unwrap();
            let other = &pages[1 - i].text;
            let (f1, edit) = (
                char_f1(&page.text, &reading.text),
                normalized_edit_distance(&page.text, &reading.text),
            );
            let words = word_precision(&page.text, &reading.text);
            eprintln!(
                "{mode} page {i}: char F1 {f1:.3}, edit distance {edit:.3}, word precision {words:.3}: {:?}",
                reading.text
            );
            assert!(!reading.hit_limit, "{mode}: no end of text");
            assert!(f1 >= min_f1, "{mode} page {i}: char F1 {f1:.3} < {min_f1}");
            assert!(
                edit <= max_edit,
                "{mode} page {i}: edit distance {edit:.3} > {max_edit}"
            );
            assert!(
                words >= MIN_WORD_PRECISION,
                "{mode} page {i}: word precision {words:.3} < {MIN_WORD_PRECISION}"
            );
            let edit_other = normalized_edit_distance(other, &reading.text);
            assert!(
                edit + 0.2 < edit_other,
                "{mode} page {i}: the reading is not much closer to its page ({edit:.3}) than to \
                 another ({edit_other:.3})"
            );
        }
    }
}

/// A retry log printed twice, as the sample transcript's agent sessions print theirs.
const REPEATS: &[(&str, &str)] = &[
    (
        "Tool",
        "retry 1: connection refused on db-7\nretry 1: connection refused on db-7",
    ),
    ("Assistant", "The database is down."),
];

/// The no-repeat n-gram ban counts tokens, and this reader's tokens are bytes: the reference's 20
/// (what the reader declares in its generation_config.json, which measured the same as no ban
/// over the sample transcript's 292 tiny pages: it breaks repeated lines, no ban lets rules of
/// dashes run on) keeps a line from being read twice; without the ban both copies come back.
#[test]
fn the_ngram_ban_decides_whether_a_repeated_line_is_read_twice() {
    let read = |no_repeat_ngram| {
        OcrModel::embedded(OcrOptions {
            no_repeat_ngram,
            ..OcrOptions::default()
        })
        .expect("the embedded reader loads")
    };
    let (declared, free) = (read(None), read(Some(0)));
    assert_eq!(declared.options().no_repeat_ngram, Some(20));
    let renderer = Renderer::builder()
        .profile(declared.render_profile().cloned().unwrap())
        .build()
        .unwrap();
    let turns: Vec<Turn> = REPEATS.iter().map(|(s, t)| Turn::new(*s, *t)).collect();
    let pages = renderer.paginate(&turns).unwrap();
    assert_eq!(pages.len(), 1);
    let line = "retry 1: connection refused on db-7";
    for mode in declared.modes().unwrap() {
        let image = renderer.rasterize(&pages[0], mode);
        let banned = declared.read(&image, mode, None).unwrap();
        let reading = free.read(&image, mode, None).unwrap();
        eprintln!(
            "{mode}: 20-byte ban {:?}, none {:?}",
            banned.text, reading.text
        );
        // The second copy, a line of its own: garbled by the ban, read exactly without it.
        let second = |text: &str| text.lines().nth(1).map(str::to_string);
        assert_ne!(second(&banned.text).as_deref(), Some(line), "{mode}");
        assert_eq!(second(&reading.text).as_deref(), Some(line), "{mode}");
        assert!(word_precision(&pages[0].text, &reading.text) >= MIN_WORD_PRECISION);
    }
}
