//! Decoder parity with the reference on the tiny fixtures (README §4, §10): logits of every case
//! within 2e-4, layer outputs and routing of `card_tiny`, greedy continuations token for token
//! (plain, HF n-gram 20, HF n-gram 3) and the per-step logits of the plain run.

mod common;

use candle_core::{Device, IndexOp, Tensor};
use common::{load_case, max_abs_diff, to_i64_vec, FakeTokenizer};
use lethe_decoder::{
    build_prompt, generate, DecoderModel, GenerationConfig, LogitsFor, NgramBan, Quantization,
    Trace, DEFAULT_PROMPT,
};

const TOL: f32 = 2e-4;

fn prompt_for(
    case: &std::collections::HashMap<String, Tensor>,
    model: &DecoderModel,
) -> (Vec<u32>, Tensor) {
    let image = case["image_embeds"].clone();
    let slots = image.dim(0).unwrap();
    let cfg = model.config();
    let prompt = build_prompt(
        &FakeTokenizer,
        DEFAULT_PROMPT,
        &[slots],
        cfg.bos(),
        cfg.image_token_id(),
    )
    .unwrap();
    let want: Vec<u32> = to_i64_vec(&case["input_ids"])
        .iter()
        .map(|&v| v as u32)
        .collect();
    assert_eq!(prompt.ids, want, "prompt ids");
    let mask: Vec<bool> = case["images_seq_mask"]
        .to_vec1::<u8>()
        .unwrap()
        .iter()
        .map(|&m| m != 0)
        .collect();
    assert_eq!(prompt.image_mask, mask, "image mask");
    let embeds = model
        .embed_prompt(&prompt.ids, cfg.image_token_id(), Some(&image))
        .unwrap();
    (prompt.ids, embeds)
}

#[test]
fn logits_of_every_case_match_the_reference() {
    let mut model = common::tiny_model(Quantization::None);
    let mut report = Vec::new();
    let mut worst = 0f32;
    for name in common::case_names() {
        let case = load_case(&name);
        let (_, embeds) = prompt_for(&case, &model);
        let logits = model.forward(&embeds, 0).unwrap().squeeze(0).unwrap();
        let positions: Vec<u32> = to_i64_vec(&case["logits_positions"])
            .iter()
            .map(|&p| p as u32)
            .collect();
        let idx = Tensor::new(positions.as_slice(), &Device::Cpu).unwrap();
        let got = logits.index_select(&idx, 0).unwrap();
        let want = &case["logits"];
        let d = max_abs_diff(&got, want);
        let am_got = got.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let am_want = want.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(am_got, am_want, "{name}: argmax per stored position");
        report.push(format!("{name}: {d:.3e}"));
        worst = worst.max(d);
    }
    eprintln!("logits max |diff| per case: {}", report.join(", "));
    assert!(
        worst <= TOL,
        "observed max |logit diff| {worst:.3e} > {TOL:.0e}: {}",
        report.join(", ")
    );
    eprintln!("observed max |logit diff| over all cases: {worst:.3e} (tolerance {TOL:.0e})");
}

#[test]
fn card_tiny_layers_norm_and_routing_match_the_reference() {
    let mut model = common::tiny_model(Quantization::None);
    let case = load_case("card_tiny");
    let (_, embeds) = prompt_for(&case, &model);
    let mut trace = Trace::default();
    model
        .forward_with(&embeds, 0, LogitsFor::All, Some(&mut trace))
        .unwrap();
    for (i, out) in trace.layer_outputs.iter().enumerate() {
        let want = &case[&format!("debug.decoder.layer{i}.out")];
        let d = max_abs_diff(&out.squeeze(0).unwrap(), want);
        assert!(d <= 1e-4, "layer {i} output: max |diff| {d:.3e}");
        eprintln!("layer {i} output max |diff| {d:.3e}");
    }
    let norm = trace.final_norm.as_ref().unwrap().squeeze(0).unwrap();
    let d = max_abs_diff(&norm, &case["debug.decoder.final_norm"]);
    assert!(d <= 1e-4, "final norm: max |diff| {d:.3e}");
    for layer in [1usize, 2] {
        let routing = trace.routing[layer].as_ref().expect("MoE layer routes");
        let idx = &case[&format!("debug.decoder.layer{layer}.gate.topk_idx")];
        let w = &case[&format!("debug.decoder.layer{layer}.gate.topk_weight")];
        let rows = idx.dim(0).unwrap();
        assert_eq!(routing.experts.len(), rows);
        for r in 0..rows {
            let want_idx = to_i64_vec(&idx.i(r).unwrap());
            let want_w = w.i(r).unwrap().to_vec1::<f32>().unwrap();
            let mut pairs: Vec<(i64, f32)> = want_idx.into_iter().zip(want_w).collect();
            pairs.sort_by_key(|p| p.0);
            let mut got: Vec<(i64, f32)> = routing.experts[r]
                .iter()
                .map(|&e| e as i64)
                .zip(routing.weights[r].iter().copied())
                .collect();
            got.sort_by_key(|p| p.0);
            let got_ids: Vec<i64> = got.iter().map(|p| p.0).collect();
            let want_ids: Vec<i64> = pairs.iter().map(|p| p.0).collect();
            assert_eq!(got_ids, want_ids, "layer {layer} row {r}: expert set");
            for (g, w) in got.iter().zip(&pairs) {
                assert!(
                    (g.1 - w.1).abs() <= 1e-5,
                    "layer {layer} row {r}: weight {} vs {}",
                    g.1,
                    w.1
                );
            }
        }
    }
}

fn gen_cfg(ban: Option<NgramBan>, record: bool) -> GenerationConfig {
    GenerationConfig::builder()
        .max_new_tokens(24)
        .greedy()
        .eos_token_ids(vec![1])
        .ngram_ban(ban)
        .record_step_logits(record)
        .build()
        .unwrap()
}

#[test]
fn greedy_continuations_and_step_logits_match_the_reference() {
    let mut model = common::tiny_model(Quantization::None);
    let mut worst = 0f32;
    for name in common::case_names() {
        let case = load_case(&name);
        let (ids, embeds) = prompt_for(&case, &model);
        let runs = [
            ("gen.plain", None),
            ("gen.ngram20", Some(NgramBan::Whole { size: 20 })),
            ("gen.ngram3", Some(NgramBan::Whole { size: 3 })),
        ];
        for (key, ban) in runs {
            let record = ban.is_none();
            let mut streamed = Vec::new();
            let out = generate(&mut model, &ids, &embeds, &gen_cfg(ban, record), &mut |t| {
                streamed.push(t);
                true
            })
            .unwrap();
            let want: Vec<u32> = to_i64_vec(&case[key]).iter().map(|&v| v as u32).collect();
            assert_eq!(out.tokens, want, "{name} {key}");
            assert_eq!(streamed, want, "{name} {key}: callback order");
            assert!(out.hit_limit(), "{name} {key}: 24 tokens, no EOS");
            if let Some(steps) = out.step_logits {
                let want = case["gen.plain.step_logits"].to_vec2::<f32>().unwrap();
                assert_eq!(steps.len(), want.len());
                for (s, (g, w)) in steps.iter().zip(&want).enumerate() {
                    let d = common::max_abs_diff_vec(g, w);
                    assert!(d <= TOL, "{name} step {s}: max |diff| {d:.3e}");
                    worst = worst.max(d);
                }
            }
        }
    }
    eprintln!("observed max |step logit diff| over all cases: {worst:.3e} (tolerance {TOL:.0e})");
}
