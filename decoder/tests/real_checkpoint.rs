//! Opt-in test with the real DeepSeek-OCR checkpoint: set `LETHE_DEEPSEEK_OCR_DIR` to a folder
//! holding its `config.json`, `*.safetensors` and `tokenizer.json`, then
//! `cargo test -p lethe-decoder --test real_checkpoint -- --ignored --nocapture`.
//! Needs about 7 GB of memory in f32 (the bf16 weights are held in 16 bits).

mod common;

use std::path::PathBuf;

use candle_core::{Device, IndexOp, Tensor};
use lethe_decoder::{
    build_prompt, generate, DecoderModel, GenerationConfig, NgramBan, Quantization, Tokenizer,
    DEFAULT_PROMPT,
};
use lethe_encoder::{load_image, preprocess, Encoder, Mode};

fn model_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("LETHE_DEEPSEEK_OCR_DIR")
            .expect("set LETHE_DEEPSEEK_OCR_DIR to a DeepSeek-OCR checkpoint folder"),
    )
}

#[test]
#[ignore = "needs the real DeepSeek-OCR checkpoint (LETHE_DEEPSEEK_OCR_DIR) and ~7 GB of memory"]
fn real_checkpoint_decodes_consistently() {
    let dir = model_dir();
    let dev = Device::Cpu;
    // The folder's tokenizer must agree with the shipped rebuild on every recorded case.
    let folder_tok = Tokenizer::from_dir(&dir).unwrap();
    let shipped = Tokenizer::deepseek_ocr().unwrap();
    let text = std::fs::read_to_string(common::fixtures().join("tokenizer/cases.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in cases["cases"].as_array().unwrap() {
        let s = case["text"].as_str().unwrap();
        assert_eq!(
            folder_tok.encode(s).unwrap(),
            shipped.encode(s).unwrap(),
            "{s:?}"
        );
    }

    let encoder = Encoder::builder()
        .model_dir(&dir)
        .device(dev.clone())
        .build()
        .unwrap();
    let image = load_image(common::fixtures().join("inputs/card_500x400.png")).unwrap();
    let views = preprocess(&image, Mode::Tiny).unwrap();
    let image_embeds = encoder.encode(&views).unwrap();
    assert_eq!(image_embeds.dims(), &[73, 1280]);

    let mut model = DecoderModel::load(&dir, &dev, Quantization::None).unwrap();
    let cfg = model.config().clone();
    let p = build_prompt(&folder_tok, DEFAULT_PROMPT, &[73], cfg.bos(), 128_815).unwrap();
    assert_eq!(&p.ids[p.ids.len() - 4..], &[201, 21431, 126041, 16]);
    let e = model
        .embed_prompt(&p.ids, 128_815, Some(&image_embeds))
        .unwrap();
    let gen_cfg = GenerationConfig::builder()
        .max_new_tokens(32)
        .ngram_ban(Some(NgramBan::reference_hf()))
        .record_step_logits(true)
        .build()
        .unwrap();
    let out = generate(&mut model, &p.ids, &e, &gen_cfg, &mut |_| true).unwrap();
    let text = folder_tok.decode(&out.tokens, false).unwrap();
    eprintln!(
        "real checkpoint, card tiny: {:?} ({} tokens, prefill {:.2} s, {:.2} tok/s)",
        text,
        out.tokens.len(),
        out.prefill_secs,
        out.decode_tokens_per_sec()
    );
    let steps = out.step_logits.unwrap();
    assert!(steps.iter().flatten().all(|v| v.is_finite()));

    // Cached steps equal an uncached recompute at real scale.
    if !out.tokens.is_empty() {
        let g = Tensor::from_slice(&out.tokens, (1, out.tokens.len()), &dev).unwrap();
        let full = Tensor::cat(&[&e, &model.embed_ids(&g).unwrap()], 1).unwrap();
        let logits = model.forward(&full, 0).unwrap().squeeze(0).unwrap();
        let t = p.ids.len();
        for (s, row) in steps.iter().enumerate().take(out.tokens.len()) {
            let want = logits.i(t - 1 + s).unwrap().to_vec1::<f32>().unwrap();
            let d = common::max_abs_diff_vec(row, &want);
            assert!(d < 1e-3, "step {s}: cached vs uncached {d:.3e}");
        }
    }
}
