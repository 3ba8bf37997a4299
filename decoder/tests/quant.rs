//! Quantised linear layers (q8_0, q4k) against f32: logit difference and greedy-token agreement,
//! on the tiny fixtures and on a random model whose widths are multiples of 256 (so q4k is used).

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::{load_case, max_abs_diff, FakeTokenizer};
use lethe_decoder::{
    build_prompt, generate, DecoderConfig, DecoderModel, GenerationConfig, LogitsFor, Prompt,
    Quantization, DEFAULT_PROMPT,
};

fn greedy(model: &mut DecoderModel, ids: &[u32], embeds: &Tensor, n: usize) -> Vec<u32> {
    let cfg = GenerationConfig::builder()
        .max_new_tokens(n)
        .eos_token_ids(vec![])
        .build()
        .unwrap();
    generate(model, ids, embeds, &cfg, &mut |_| true)
        .unwrap()
        .tokens
}

/// A fixture case's image embeddings and the default prompt around them.
fn case_prompt(name: &str) -> (Tensor, Prompt) {
    let image = load_case(name)["image_embeds"].clone();
    let p = build_prompt(
        &FakeTokenizer,
        DEFAULT_PROMPT,
        &[image.dim(0).unwrap()],
        0,
        1000,
    )
    .unwrap();
    (image, p)
}

#[test]
fn quantised_tiny_model_tracks_f32() {
    let mut f32m = common::tiny_model(Quantization::None);
    for quant in [Quantization::Q8_0, Quantization::Q4K] {
        let mut qm = common::tiny_model(quant);
        assert!(qm.weight_bytes() < f32m.weight_bytes());
        let mut worst = 0f32;
        let mut mean_sum = 0f32;
        let mut agree = 0usize;
        let mut total = 0usize;
        for name in ["card_tiny", "doc_small", "wide_base"] {
            let (image, p) = case_prompt(name);
            let e = f32m.embed_prompt(&p.ids, 1000, Some(&image)).unwrap();
            let a = f32m.forward(&e, 0).unwrap();
            let b = qm.forward(&e, 0).unwrap();
            worst = worst.max(max_abs_diff(&a, &b));
            mean_sum += (&a - &b)
                .unwrap()
                .abs()
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let ga = greedy(&mut f32m, &p.ids, &e, 24);
            let gb = greedy(&mut qm, &p.ids, &e, 24);
            agree += ga.iter().zip(&gb).take_while(|(x, y)| x == y).count();
            total += ga.len();
        }
        let mean = mean_sum / 3.0;
        eprintln!(
            "tiny {} (widths 64/32/128 are not multiples of 256, so q4k falls back to q8_0): logits vs f32 max |diff| {worst:.3e}, mean |diff| {mean:.3e}; greedy prefix agreement {agree}/{total}",
            quant.name()
        );
        // |logit| <= ~10 here. The maximum is dominated by the few positions whose router
        // top-3 flips (margins down to 1e-5, README §10); the typical error stays small.
        assert!(mean < 0.05, "{}: mean |logit diff| {mean}", quant.name());
        assert!(worst < 2.0, "{}: max |logit diff| {worst}", quant.name());
        assert!(agree * 10 >= total * 9, "{}: {agree}/{total}", quant.name());
    }
}

fn wide_config() -> DecoderConfig {
    DecoderConfig::from_json_str(
        r#"{"vocab_size": 2048, "hidden_size": 512, "intermediate_size": 1024,
            "moe_intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 4, "n_routed_experts": 8, "n_shared_experts": 1,
            "num_experts_per_tok": 2, "first_k_dense_replace": 1, "eos_token_id": 1}"#,
    )
    .unwrap()
}

fn wide_weights(cfg: &DecoderConfig) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    let h = cfg.hidden_size;
    // Deterministic N(0, 1/fan_in) weights (SplitMix64 + Box-Muller), so the test never flakes.
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut r = |shape: &[usize], fan_in: usize| {
        let n: usize = shape.iter().product();
        let std = (1.0 / fan_in as f64).sqrt();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let (u1, u2) = (next().max(1e-300), next());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
            })
            .collect();
        Tensor::from_vec(v, shape, &dev).unwrap()
    };
    let mut w = HashMap::new();
    w.insert(
        "model.embed_tokens.weight".to_string(),
        r(&[cfg.vocab_size, h], 1),
    );
    w.insert("lm_head.weight".to_string(), r(&[cfg.vocab_size, h], h));
    w.insert(
        "model.norm.weight".to_string(),
        Tensor::ones(h, DType::F32, &dev).unwrap(),
    );
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for n in ["input_layernorm", "post_attention_layernorm"] {
            w.insert(
                format!("{p}.{n}.weight"),
                Tensor::ones(h, DType::F32, &dev).unwrap(),
            );
        }
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            w.insert(format!("{p}.self_attn.{n}.weight"), r(&[h, h], h));
        }
        let mut mlp = |prefix: String, inter: usize| {
            w.insert(format!("{prefix}.gate_proj.weight"), r(&[inter, h], h));
            w.insert(format!("{prefix}.up_proj.weight"), r(&[inter, h], h));
            w.insert(format!("{prefix}.down_proj.weight"), r(&[h, inter], inter));
        };
        if cfg.is_moe_layer(l) {
            let m = cfg.moe_intermediate_size;
            for e in 0..cfg.n_routed_experts.unwrap() {
                mlp(format!("{p}.mlp.experts.{e}"), m);
            }
            mlp(format!("{p}.mlp.shared_experts"), m);
            w.insert(
                format!("{p}.mlp.gate.weight"),
                r(&[cfg.n_routed_experts.unwrap(), h], h),
            );
        } else {
            mlp(format!("{p}.mlp"), cfg.intermediate_size);
        }
    }
    w
}

#[test]
fn quantised_random_model_with_q4k_widths_tracks_f32() {
    let cfg = wide_config();
    let w = wide_weights(&cfg);
    let dev = Device::Cpu;
    let mut f32m = DecoderModel::from_tensors(&cfg, w.clone(), &dev, Quantization::None).unwrap();
    let ids: Vec<u32> = (0..40u32).map(|i| (i * 37 + 5) % 2048).collect();
    let e = f32m
        .embed_ids(&Tensor::from_slice(&ids, (1, ids.len()), &dev).unwrap())
        .unwrap();
    let a = f32m.forward_with(&e, 0, LogitsFor::All, None).unwrap();
    let scale = common::max_abs(&a);
    let ga = greedy(&mut f32m, &ids, &e, 16);
    // Random weights are a worst case for quantisation (no outliers to protect, router
    // margins tiny); the bounds are what 8.5-bit and 4.5-bit weights give on them.
    for (quant, bound, argmax_min) in [
        (Quantization::Q8_0, 0.05f32, 0.9f32),
        (Quantization::Q4K, 0.3, 0.6),
    ] {
        let mut qm = DecoderModel::from_tensors(&cfg, w.clone(), &dev, quant).unwrap();
        let b = qm.forward_with(&e, 0, LogitsFor::All, None).unwrap();
        let d = max_abs_diff(&a, &b);
        let am_a = a.i(0).unwrap().argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let am_b = b.i(0).unwrap().argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let same = am_a.iter().zip(&am_b).filter(|(x, y)| x == y).count();
        let gb = greedy(&mut qm, &ids, &e, 16);
        let prefix = ga.iter().zip(&gb).take_while(|(x, y)| x == y).count();
        eprintln!(
            "random 512-wide {}: weights {:.2} MB vs f32 {:.2} MB; logits max |diff| {d:.3e} (max |logit| {scale:.2}, rel {:.2e}); argmax equal at {same}/{} positions; greedy prefix {prefix}/16",
            quant.name(),
            qm.weight_bytes() as f64 / 1e6,
            f32m.weight_bytes() as f64 / 1e6,
            d / scale,
            am_a.len()
        );
        assert!(
            d / scale < bound,
            "{}: relative logit error {}",
            quant.name(),
            d / scale
        );
        assert!(
            same as f32 >= argmax_min * am_a.len() as f32,
            "{}: argmax {same}/{}",
            quant.name(),
            am_a.len()
        );
    }
}

#[test]
fn a_bf16_checkpoint_is_held_in_half_the_bytes_with_the_same_rows() {
    let cfg = wide_config();
    let w = wide_weights(&cfg);
    let dev = Device::Cpu;
    // The same weights as a bf16 checkpoint gives them: rounded to bf16, widened to f32.
    let wb: HashMap<String, Tensor> = w
        .iter()
        .map(|(k, v)| {
            let r = v
                .to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            (k.clone(), r)
        })
        .collect();
    let f32m = DecoderModel::from_tensors(&cfg, w, &dev, Quantization::None).unwrap();
    let bf16m = DecoderModel::from_tensors(&cfg, wb.clone(), &dev, Quantization::None).unwrap();
    let ratio = bf16m.weight_bytes() as f64 / f32m.weight_bytes() as f64;
    eprintln!(
        "weights: {} bytes held for a bf16 checkpoint, {} for f32 values ({ratio:.3})",
        bf16m.weight_bytes(),
        f32m.weight_bytes()
    );
    // Everything but the router's small f32 gate is held in 16 bits.
    assert!((0.49..0.52).contains(&ratio), "{ratio}");
    let ids: Vec<u32> = vec![0, 7, 2047, 1000];
    let rows = bf16m
        .embed_ids(&Tensor::from_slice(&ids, (1, 4), &dev).unwrap())
        .unwrap();
    assert_eq!(rows.dtype(), DType::F32);
    let table = &wb["model.embed_tokens.weight"];
    let want = table
        .index_select(&Tensor::from_slice(&ids, 4, &dev).unwrap(), 0)
        .unwrap();
    assert_eq!(max_abs_diff(&rows.squeeze(0).unwrap(), &want), 0.0);
}

/// The tiny fixture written to a folder with every float tensor rounded to `dtype`, stored in
/// `dtype` (`stored`) or widened to f32.
fn rounded_copy(dtype: DType, stored: bool) -> tempfile::TempDir {
    let src = common::fixtures().join("tiny");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(name, t)| {
                let t = if t.dtype().is_float() {
                    let r = t.to_dtype(dtype).unwrap();
                    if stored {
                        r
                    } else {
                        r.to_dtype(DType::F32).unwrap()
                    }
                } else {
                    t
                };
                (name, t)
            })
            .collect();
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    dir
}

#[test]
fn a_16_bit_checkpoint_loads_as_its_values_widened_to_f32() {
    // Stored in 16 bits, the weights are packed from their bits; stored as the same values in
    // f32, narrowed after a scan. Both must give the same model, bit for bit.
    let (image, p) = case_prompt("card_tiny");
    for dtype in [DType::BF16, DType::F16] {
        let (kept, wide) = (rounded_copy(dtype, true), rounded_copy(dtype, false));
        for quant in [Quantization::None, Quantization::Q8_0] {
            let dev = Device::Cpu;
            let mut a = DecoderModel::load(kept.path(), &dev, quant).unwrap();
            let mut b = DecoderModel::load(wide.path(), &dev, quant).unwrap();
            assert_eq!(
                a.weight_bytes(),
                b.weight_bytes(),
                "{dtype:?} {}",
                quant.name()
            );
            let e = a.embed_prompt(&p.ids, 1000, Some(&image)).unwrap();
            let eb = b.embed_prompt(&p.ids, 1000, Some(&image)).unwrap();
            assert_eq!(max_abs_diff(&e, &eb), 0.0);
            let la = a.forward_with(&e, 0, LogitsFor::All, None).unwrap();
            let lb = b.forward_with(&e, 0, LogitsFor::All, None).unwrap();
            let bits = |t: &Tensor| {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            };
            assert_eq!(
                bits(&la),
                bits(&lb),
                "{dtype:?} {}: logits differ",
                quant.name()
            );
            assert_eq!(greedy(&mut a, &p.ids, &e, 8), greedy(&mut b, &p.ids, &e, 8));
        }
        // The encoder's weights, from the same folders.
        let image =
            lethe_encoder::load_image(common::fixtures().join("inputs/card_500x400.png")).unwrap();
        for mode in [lethe_encoder::Mode::Tiny, lethe_encoder::Mode::Base] {
            let views = lethe_encoder::preprocess(&image, mode).unwrap();
            let [a, b] = [&kept, &wide].map(|dir| {
                let enc = lethe_encoder::Encoder::builder()
                    .model_dir(dir.path())
                    .device(Device::Cpu)
                    .build()
                    .unwrap();
                let v = enc.encode(&views).unwrap();
                assert_eq!(v.dtype(), DType::F32);
                v.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            });
            assert!(a.iter().any(|x| *x != 0.0));
            let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{dtype:?} {mode:?}: image embeddings differ");
        }
    }
}
