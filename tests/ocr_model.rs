//! `OcrModel` on the tiny fixture checkpoint: streaming, early stop, option checks.

use std::path::{Path, PathBuf};

use lethe::{Mode, OcrModel, OcrOptions, Sampling, Tier};

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
    let model = tiny(options(12)).unwrap();
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
fn readings_side_by_side_read_as_readings_one_at_a_time() {
    // Each reading generates on its own copy of the decoder, so threads sharing one model do
    // not wait for each other, and each gets what it would alone.
    let model = tiny(options(16)).unwrap();
    let pages = [
        ("inputs/card_500x400.png", Mode::Tiny),
        ("inputs/doc_900x1400.png", Mode::Small),
        ("inputs/wide_2000x700.png", Mode::Base),
    ];
    let read = |(file, mode): (&str, Mode)| {
        model
            .read_file(&fixtures().join(file), mode, &mut |_| true)
            .unwrap()
            .text
    };
    let alone: Vec<String> = pages.iter().map(|&p| read(p)).collect();
    assert!(alone.iter().all(|t| !t.is_empty()));
    let together: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|t| {
                let read = &read;
                s.spawn(move || (0..3).map(|i| read(pages[(i + t) % 3])).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (t, texts) in together.iter().enumerate() {
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(text, &alone[(i + t) % 3], "thread {t}, reading {i}");
        }
    }
}

#[test]
fn the_callback_stops_generation() {
    let model = tiny(options(64)).unwrap();
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
        let model = tiny(OcrOptions {
            sampling: Sampling::Sample {
                temperature: 1.0,
                top_p: 1.0,
                top_k: 0,
                seed,
            },
            no_repeat_ngram: Some(0),
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

    let model = tiny(options(4)).unwrap();
    let err = model
        .read_file(Path::new("/nonexistent/page.png"), Mode::Tiny, &mut |_| {
            true
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/page.png"), "{err}");
}

/// A copy of the tiny checkpoint folder, plus `extra` files, in a temporary folder.
fn tiny_copy(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("tiny")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn a_model_folder_declares_the_profile_and_tiers_it_reads() {
    use lethe::{Lethe, Reader, Scope, Turn};

    let profile = "font_family = \"mono\"\nfont_size = 40.0\nline_height = 1.5\n";
    let policy = "clock = \"turns\"\nage_from = \"created\"\nfloor = \"tiny\"\n\
                  [[ladder]]\nname = \"small\"\npositions = 111\n\
                  [[ladder]]\nname = \"tiny\"\npositions = 73\n\
                  [curve]\nkind = \"step\"\nafter = [3, 1000]\n";
    let declared = tiny_copy(&[(lethe::PROFILE_FILE, profile), (lethe::POLICY_FILE, policy)]);
    let plain = tiny_copy(&[]);
    let model = OcrModel::load(declared.path(), options(1)).unwrap();
    assert_eq!(model.render_profile().unwrap().font_size, 40.0);
    assert_eq!(model.policy().unwrap().ladder().levels().len(), 2);
    assert!(OcrModel::load(plain.path(), options(1))
        .unwrap()
        .render_profile()
        .is_none());

    // The same turns make more pages with the declared (larger) type, and those pages use only
    // the declared tiers.
    let turns: Vec<Turn> = (0..24)
        .map(|i| Turn::new("User", format!("Turn {i}: ").repeat(40)))
        .collect();
    let pages = |model_dir: &Path| {
        let store = tempfile::tempdir().unwrap();
        let mut lethe = Lethe::builder(store.path())
            .reader(Reader::Folder(model_dir.to_path_buf()))
            .ocr_options(options(1))
            .hot_turns(2)
            .build()
            .unwrap();
        let scope = Scope::session("s");
        for (i, t) in turns.iter().enumerate() {
            lethe
                .append(&scope, std::slice::from_ref(t), i as u64)
                .unwrap();
            lethe.maintain(i as u64).unwrap();
        }
        let pages = lethe.store().pages(Some(&scope)).unwrap().pages;
        // The tier each page was first made at: the top of the policy's ladder.
        let first: Vec<Tier> = pages
            .iter()
            .map(|p| lethe.history(p.id).unwrap()[0].to.unwrap())
            .collect();
        (pages, first)
    };
    let (with_profile, first_declared) = pages(declared.path());
    let (without, first_default) = pages(plain.path());
    assert!(
        with_profile.len() > 2 * without.len(),
        "{} pages with the declared 40-unit type vs {} with the default",
        with_profile.len(),
        without.len()
    );
    assert!(with_profile
        .iter()
        .all(|p| [Mode::Small, Mode::Tiny].map(Tier::At).contains(&p.tier)));
    assert!(
        first_declared.iter().all(|&t| t == Tier::At(Mode::Small)),
        "{first_declared:?}"
    );
    assert!(
        first_default.iter().all(|&t| t == Tier::At(Mode::Large)),
        "{first_default:?}"
    );
}

#[test]
fn a_bad_declared_profile_names_its_file() {
    let dir = tiny_copy(&[(lethe::PROFILE_FILE, "font_size = \"big\"\n")]);
    let err = tiny(options(1)).map(|_| ()).and(
        OcrModel::load(dir.path(), options(1))
            .map(|_| ())
            .map_err(|e| e.to_string()),
    );
    let err = err.unwrap_err();
    assert!(err.contains(lethe::PROFILE_FILE), "{err}");
}

#[test]
fn vision_tokens_are_lethes_own_type_and_read_as_a_fresh_encode_does() {
    let model = tiny(options(8)).unwrap();
    let png = std::fs::read(fixtures().join("inputs/card_500x400.png")).unwrap();
    let image = lethe::PageImage::from_png(&png).unwrap();
    let tokens = model.encode(&image, Mode::Tiny).unwrap();
    assert_eq!(
        tokens.positions(),
        73,
        "64 tokens, 8 row newlines, the separator"
    );
    let values = tokens.to_vec().unwrap();
    assert_eq!(values.len(), tokens.positions() * tokens.hidden());
    assert!(values.iter().all(|v| v.is_finite()));
    // Reading from the tokens equals reading from the image.
    let from_tokens = model.read(&image, Mode::Tiny, Some(&tokens)).unwrap();
    let from_image = model.read(&image, Mode::Tiny, None).unwrap();
    assert_eq!(from_tokens.text, from_image.text);
    assert_eq!(from_tokens.encode_secs, 0.0);
}

/// A copy of the tiny checkpoint whose folder declares `generation` as its
/// `generation_config.json` (none when `None`).
fn tiny_declaring(generation: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("tiny").join(file), dir.path().join(file)).unwrap();
    }
    if let Some(text) = generation {
        std::fs::write(dir.path().join(lethe::GENERATION_FILE), text).unwrap();
    }
    dir
}

#[test]
fn the_no_repeat_ban_is_the_callers_else_the_models_else_the_references() {
    let size = |generation: Option<&str>, asked: Option<usize>| {
        let dir = tiny_declaring(generation);
        let options = OcrOptions {
            no_repeat_ngram: asked,
            ..options(4)
        };
        OcrModel::load(dir.path(), options)
            .map(|m| m.options().no_repeat_ngram)
            .map_err(|e| e.to_string())
    };
    let declares_7 = Some(r#"{"no_repeat_ngram_size": 7, "max_length": 30}"#);
    assert_eq!(size(declares_7, None), Ok(Some(7)));
    assert_eq!(size(declares_7, Some(3)), Ok(Some(3)));
    assert_eq!(size(declares_7, Some(0)), Ok(Some(0)));
    // No file, or a file without the key: the reference infer()'s 20.
    assert_eq!(size(None, None), Ok(Some(20)));
    assert_eq!(size(Some(r#"{"temperature": 0.5}"#), None), Ok(Some(20)));
    let err = size(Some(r#"{"no_repeat_ngram_size": "seven"}"#), None).unwrap_err();
    assert!(err.contains(lethe::GENERATION_FILE), "{err}");
}

#[test]
fn a_declared_ban_shapes_what_greedy_generation_writes() {
    // The tiny checkpoint's random weights repeat themselves greedily (see the first test):
    // a declared ban of 2 keeps every pair of generated tokens unique; none lets it repeat.
    let page = fixtures().join("inputs/card_500x400.png");
    let read = |generation: &str| {
        let dir = tiny_declaring(Some(generation));
        let model = OcrModel::load(dir.path(), options(40)).unwrap();
        let reading = model.read_file(&page, Mode::Tiny, &mut |_| true).unwrap();
        (reading.text, reading.generated_tokens)
    };
    let (free, _) = read(r#"{"no_repeat_ngram_size": 0}"#);
    let (banned, n) = read(r#"{"no_repeat_ngram_size": 2}"#);
    assert_ne!(free, banned);
    assert!(n > 2, "{n} tokens");
}
