//! Opt-in: the real DeepSeek-OCR checkpoint (folder in `LETHE_DEEPSEEK_OCR_DIR`) loads and
//! encodes a page in every mode to the documented number of positions, 1280 wide.

mod common;

use lethe_encoder::{load_image, preprocess, Encoder, Mode};

#[test]
#[ignore = "needs the real DeepSeek-OCR checkpoint: set LETHE_DEEPSEEK_OCR_DIR"]
fn real_checkpoint_encodes_a_page() {
    let dir = std::env::var("LETHE_DEEPSEEK_OCR_DIR").expect("LETHE_DEEPSEEK_OCR_DIR");
    let enc = Encoder::builder()
        .model_dir(dir)
        .build()
        .expect("real checkpoint loads");
    let image = load_image(common::fixtures().join("inputs/doc_900x1400.png")).unwrap();
    for mode in Mode::ALL {
        let views = preprocess(&image, mode).unwrap();
        let t = enc.encode(&views).unwrap();
        assert_eq!(t.dims(), &[views.positions(), 1280], "{mode}");
        let sum = t
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(sum.is_finite() && sum > 0.0, "{mode}: {sum}");
    }
}

#[test]
fn tiny_checkpoint_has_every_listed_tensor() {
    let cfg =
        lethe_encoder::Config::from_file(common::fixtures().join("tiny/config.json")).unwrap();
    let tensors = common::load_tensors("tiny/model.safetensors");
    let list = lethe_encoder::weights::checkpoint_tensors(&cfg);
    assert_eq!(list.len(), 100);
    for (name, shape) in list {
        let t = tensors
            .get(&name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(t.dims(), shape.as_slice(), "{name}");
    }
}
