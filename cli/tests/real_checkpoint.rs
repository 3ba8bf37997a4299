//! Opt-in: the real DeepSeek-OCR checkpoint reads a page Lethe drew. A wrong weight mapping, a
//! dtype mix-up or a broken projector writes garbage, which these assertions catch; printing the
//! text alone would not.
//!
//! ```sh
//! memctl model pull   # prints the folder
//! LETHE_DEEPSEEK_OCR_DIR=<folder> cargo test --release -p lethe-cli --test real_checkpoint -- --ignored --nocapture
//! ```
//!
//! `LETHE_QUANT=q8_0` runs the decoder quantised (about 3.6 GB of decoder weights instead of
//! 12.4 GB in f32).

use lethe::{Mode, OcrModel, OcrOptions, Quantization};
use lethe_cli::metrics::{char_f1, word_precision};
use lethe_render::{Renderer, Turn};

/// A known page of the kind Lethe pages out: prose, numbers and identifiers, in two turns.
const TURNS: [(&str, &str); 2] = [
    (
        "User",
        "The nightly build failed twice this week. Both times the integration suite timed out \
         while waiting for the payments service, which answered with status 503 after about \
         thirty seconds. Can you find out what changed on Tuesday?",
    ),
    (
        "Assistant",
        "On Tuesday the connection pool of the payments service went from 40 to 8 connections \
         in commit 4f2a9c1. Under the integration suite's load the pool runs dry and requests \
         queue until the gateway gives up. Raising the pool back to 40 and adding a retry with \
         backoff in the client should fix both failures.",
    ),
];

fn checkpoint() -> std::path::PathBuf {
    std::env::var("LETHE_DEEPSEEK_OCR_DIR")
        .expect("set LETHE_DEEPSEEK_OCR_DIR to the DeepSeek-OCR checkpoint folder")
        .into()
}

fn options() -> OcrOptions {
    let mut options = OcrOptions::default();
    if let Ok(q) = std::env::var("LETHE_QUANT") {
        options.quantization = q
            .parse::<Quantization>()
            .expect("LETHE_QUANT: none, q8_0 or q4k");
    }
    options
}

#[test]
#[ignore = "needs the real DeepSeek-OCR checkpoint: set LETHE_DEEPSEEK_OCR_DIR"]
fn the_real_checkpoint_reads_a_known_page_at_base_and_large() {
    let model = OcrModel::load(&checkpoint(), options()).expect("the checkpoint loads");
    // The real checkpoint reads pages at the default density (it declares no profile).
    let renderer = Renderer::builder()
        .profile(model.render_profile().cloned().unwrap_or_default())
        .build()
        .unwrap();
    let turns: Vec<Turn> = TURNS.iter().map(|(s, t)| Turn::new(*s, *t)).collect();
    let pages = renderer.paginate(&turns).unwrap();
    assert_eq!(pages.len(), 1, "the known text fits one page");
    let page = &pages[0];
    for mode in [Mode::Base, Mode::Large] {
        let image = renderer.rasterize(page, mode);
        let reading = model.read(&image, mode, None).expect("reads");
        let precision = word_precision(&page.text, &reading.text);
        let f1 = char_f1(&page.text, &reading.text);
        eprintln!(
            "{mode}: word precision {precision:.3}, char F1 {f1:.3}, {} tokens: {:?}",
            reading.generated_tokens, reading.text
        );
        assert!(!reading.hit_limit, "{mode}: the reading never ended");
        assert!(
            precision >= 0.95,
            "{mode}: word precision {precision:.3} < 0.95; the checkpoint does not read a clean \
             page, which points at a wrong weight mapping"
        );
    }
}
