//! `OcrModel` on the tiny fixture checkpoint: streaming, early stop, option checks.

use std::path::{Path, PathBuf};

use lethe::{Mode, OcrModel, OcrOptions, Sampling};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/deepseek-ocr")
}

/// Loads the tiny checkpoint; errors as their message.
fn tiny(options: OcrOptions) -> Result<OcrModel, String> {
    OcrModel::load(&fixtures().join("tiny"), options).map_err(|e| e.to_string())
}

fn options(max_new_tokens: usize) -> OcrOptions {
    OcrOptions {
        // The tiny vocabulary has 1024 entries: the default prompt's text would fall outside it.
        prompt: "<image>".into(),
        max_new_tokens,
        ..OcrOptions::default()
    }
}

#[test]
fn streamed_pieces_make_the_text_and_greedy_repeats_itself() {
    let mut model = tiny(options(12)).unwrap();
    let page = fixtures().join("inputs/card_500x400.png");
    let mut streamed = String::new();
    let first = model
        .read_file(&page, Mode::Tiny, &mut |piece| {
            streamed.push_str(piece);
            true
        })
        .unwrap();
    assert_eq!(streamed, first.text);
    assert_eq!(first.positions, 73);
    assert_eq!(first.prompt_positions, 74);
    assert!(first.generated_tokens > 0 && first.generated_tokens <= 12);
    assert_eq!(first.hit_limit, first.generated_tokens == 12);
    assert!(!first.interrupted);
    assert!(first.encode_secs > 0.0);
    let again = model.read_file(&page, Mode::Tiny, &mut |_| true).unwrap();
    assert_eq!(again.text, first.text);
    assert_eq!(again.generated_tokens, first.generated_tokens);
}

#[test]
fn the_callback_stops_generation() {
    let mut model = tiny(options(64)).unwrap();
    let page = fixtures().join("inputs/card_500x400.png");
    let mut pieces = 0;
    let reading = model
        .read_file(&page, Mode::Tiny, &mut |_| {
            pieces += 1;
            false
        })
        .unwrap();
    assert_eq!(pieces, 1);
    assert!(reading.interrupted);
    assert!(!reading.hit_limit);
    assert!(
        reading.generated_tokens < 64,
        "{}",
        reading.generated_tokens
    );
}

#[test]
fn sampling_is_reproducible_by_seed() {
    let sampled = |seed| {
        let mut model = tiny(OcrOptions {
            sampling: Sampling::Sample {
                temperature: 1.0,
                top_p: 1.0,
                top_k: 0,
                seed,
            },
            no_repeat_ngram: None,
            ..options(16)
        })
        .unwrap();
        let page = fixtures().join("inputs/card_500x400.png");
        model
            .read_file(&page, Mode::Tiny, &mut |_| true)
            .unwrap()
            .text
    };
    assert_eq!(sampled(7), sampled(7));
}

#[test]
fn bad_options_and_inputs_are_named() {
    let err = tiny(OcrOptions {
        prompt: "Free OCR.".into(),
        ..options(4)
    })
    .unwrap_err();
    assert!(
        err.contains("<image>") && err.contains("Free OCR."),
        "{err}"
    );

    let err = tiny(OcrOptions {
        sampling: Sampling::Sample {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        },
        ..options(4)
    })
    .unwrap_err();
    assert!(err.contains("temperature"), "{err}");

    let mut model = tiny(options(4)).unwrap();
    let err = model
        .read_file(Path::new("/nonexistent/page.png"), Mode::Tiny, &mut |_| {
            true
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/page.png"), "{err}");
}
