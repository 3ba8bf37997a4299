//! Cross-path agreement: cached decoding equals uncached recompute; a batch of two equals two
//! singles.

mod common;

use candle_core::{IndexOp, Tensor};
use common::{load_case, max_abs_diff, FakeTokenizer};
use lethe_decoder::{
    build_prompt, generate, GenerationConfig, LogitsFor, Quantization, DEFAULT_PROMPT,
};

fn embeds_for(model: &lethe_decoder::DecoderModel, name: &str) -> (Vec<u32>, Tensor) {
    let case = load_case(name);
    let image = case["image_embeds"].clone();
    let cfg = model.config();
    let p = build_prompt(
        &FakeTokenizer,
        DEFAULT_PROMPT,
        &[image.dim(0).unwrap()],
        cfg.bos(),
        cfg.image_token_id(),
    )
    .unwrap();
    let e = model
        .embed_prompt(&p.ids, cfg.image_token_id(), Some(&image))
        .unwrap();
    (p.ids, e)
}

#[test]
fn cached_decoding_equals_uncached_recompute() {
    let mut model = common::tiny_model(Quantization::None);
    for name in ["card_small", "wide_base"] {
        let (ids, embeds) = embeds_for(&model, name);
        let cfg = GenerationConfig::builder()
            .max_new_tokens(16)
            .eos_token_ids(vec![])
            .record_step_logits(true)
            .build()
            .unwrap();
        let out = generate(&mut model, &ids, &embeds, &cfg, &mut |_| true).unwrap();
        let steps = out.step_logits.unwrap();
        // One cache-less forward over prompt + generated tokens.
        let gen_ids =
            Tensor::from_slice(&out.tokens, (1, out.tokens.len()), model.device()).unwrap();
        let gen_emb = model.embed_ids(&gen_ids).unwrap();
        let full = Tensor::cat(&[&embeds, &gen_emb], 1).unwrap();
        let logits = model.forward(&full, 0).unwrap().squeeze(0).unwrap();
        let t = ids.len();
        let mut worst = 0f32;
        for (s, row) in steps.iter().enumerate() {
            let want = logits.i(t - 1 + s).unwrap().to_vec1::<f32>().unwrap();
            worst = worst.max(common::max_abs_diff_vec(row, &want));
        }
        eprintln!("{name}: cached vs uncached max |diff| {worst:.3e}");
        assert!(
            worst <= 2e-5,
            "{name}: cached vs uncached max |diff| {worst:.3e}"
        );
    }
}

#[test]
fn batch_of_two_equals_two_singles() {
    let mut model = common::tiny_model(Quantization::None);
    let (_, a) = embeds_for(&model, "doc_tiny");
    let (_, b) = embeds_for(&model, "wide_tiny");
    let la = model.forward(&a, 0).unwrap();
    let lb = model.forward(&b, 0).unwrap();
    let both = model
        .forward(&Tensor::cat(&[&a, &b], 0).unwrap(), 0)
        .unwrap();
    let da = max_abs_diff(&both.i(0).unwrap(), &la.squeeze(0).unwrap());
    let db = max_abs_diff(&both.i(1).unwrap(), &lb.squeeze(0).unwrap());
    eprintln!("batch vs single max |diff|: {da:.3e}, {db:.3e}");
    assert!(
        da <= 1e-5 && db <= 1e-5,
        "batch vs single: {da:.3e}, {db:.3e}"
    );
    // Cached decoding of a batch: one more position for both sequences.
    let next = model
        .embed_ids(&Tensor::new(&[[5u32], [9u32]], model.device()).unwrap())
        .unwrap();
    let step = model.forward(&next, a.dim(1).unwrap()).unwrap();
    model.forward(&a, 0).unwrap();
    let sa = model
        .forward(&next.i(0..1).unwrap(), a.dim(1).unwrap())
        .unwrap();
    let d = max_abs_diff(&step.i(0).unwrap(), &sa.squeeze(0).unwrap());
    assert!(d <= 1e-5, "batched cached step vs single: {d:.3e}");
}

#[test]
fn mismatched_offset_and_slot_counts_are_errors() {
    let mut model = common::tiny_model(Quantization::None);
    let (ids, embeds) = embeds_for(&model, "card_tiny");
    model.forward(&embeds, 0).unwrap();
    let err = model
        .forward(&embeds.i((.., 0..1, ..)).unwrap(), 5)
        .unwrap_err();
    assert!(err.to_string().contains("seqlen_offset"), "{err}");
    let image = load_case("card_tiny")["image_embeds"].clone();
    let err = model
        .embed_prompt(&ids[..ids.len() - 10], 1000, Some(&image))
        .unwrap_err();
    assert!(err.to_string().contains("image placeholder"), "{err}");
    // An id beyond the vocabulary (a tokenizer from another model) is named, not looked up.
    let mut foreign = ids.clone();
    let last = foreign.len() - 1;
    foreign[last] = 128_000;
    let err = model
        .embed_prompt(&foreign, 1000, Some(&image))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("id 128000") && msg.contains("vocabulary of 1024"),
        "{msg}"
    );
}

#[test]
fn chunked_forward_past_the_cache_capacity_equals_one_forward() {
    // The cache starts with room for the prefill plus 256 positions and grows by doubling: feed
    // 10 positions, then chunks of 97 to past 600, and compare every position's logits with one
    // forward over the whole sequence.
    let mut model = common::tiny_model(Quantization::None);
    let (_, embeds) = embeds_for(&model, "card_small");
    let mut parts = vec![embeds.clone()];
    while parts.iter().map(|p| p.dim(1).unwrap()).sum::<usize>() < 620 {
        parts.push(embeds.clone());
    }
    let all = Tensor::cat(&parts, 1).unwrap();
    let total = all.dim(1).unwrap();
    let whole = model.forward(&all, 0).unwrap();
    let mut pieces = vec![model.forward(&all.i((.., 0..10, ..)).unwrap(), 0).unwrap()];
    let mut pos = 10;
    while pos < total {
        let len = 97.min(total - pos);
        let chunk = all.i((.., pos..pos + len, ..)).unwrap();
        pieces.push(model.forward(&chunk, pos).unwrap());
        pos += len;
    }
    assert_eq!(model.cached_len(), total);
    let chunked = Tensor::cat(&pieces, 1).unwrap();
    let d = max_abs_diff(&chunked, &whole);
    eprintln!("{total} positions, chunked vs whole max |diff| {d:.3e}");
    assert!(d <= 2e-5, "chunked vs whole: {d:.3e}");
}

#[test]
fn one_position_at_a_time_past_the_cache_capacity_equals_one_forward() {
    // Decode steps (one position each) take the step attention over the cache where it lies;
    // step past the first growth (prefill + 256) and compare with one forward over it all.
    let mut model = common::tiny_model(Quantization::None);
    let (_, embeds) = embeds_for(&model, "card_tiny");
    let all = Tensor::cat(&[&embeds; 8], 1).unwrap();
    let prefill = 40;
    let total = all.dim(1).unwrap().min(prefill + 300);
    let all = all.i((.., 0..total, ..)).unwrap();
    let whole = model.forward(&all, 0).unwrap();
    let mut pieces = vec![model
        .forward(&all.i((.., 0..prefill, ..)).unwrap(), 0)
        .unwrap()];
    for pos in prefill..total {
        pieces.push(
            model
                .forward(&all.i((.., pos..pos + 1, ..)).unwrap(), pos)
                .unwrap(),
        );
    }
    assert_eq!(model.cached_len(), total);
    assert!(
        total > prefill + 256,
        "{total} positions do not grow the cache"
    );
    let stepped = Tensor::cat(&pieces, 1).unwrap();
    let d = max_abs_diff(&stepped, &whole);
    eprintln!("{total} positions, stepped vs whole max |diff| {d:.3e}");
    assert!(d <= 2e-5, "stepped vs whole: {d:.3e}");
}

#[test]
fn a_cloned_model_keeps_its_own_cache() {
    let mut model = common::tiny_model(Quantization::None);
    let (_, embeds) = embeds_for(&model, "card_tiny");
    let t = embeds.dim(1).unwrap();
    model.forward(&embeds, 0).unwrap();
    let mut twin = model.clone();
    let a = model
        .embed_ids(&Tensor::new(&[[5u32]], model.device()).unwrap())
        .unwrap();
    let b = model
        .embed_ids(&Tensor::new(&[[9u32]], model.device()).unwrap())
        .unwrap();
    // Each steps with another token at the same position; then both step with the same one.
    model.forward(&a, t).unwrap();
    twin.forward(&b, t).unwrap();
    let la = model.forward(&a, t + 1).unwrap();
    let lb = twin.forward(&a, t + 1).unwrap();
    // Reference: the two sequences each run alone from scratch.
    let mut fresh = common::tiny_model(Quantization::None);
    fresh.forward(&embeds, 0).unwrap();
    fresh.forward(&a, t).unwrap();
    let want_a = fresh.forward(&a, t + 1).unwrap();
    fresh.forward(&embeds, 0).unwrap();
    fresh.forward(&b, t).unwrap();
    let want_b = fresh.forward(&a, t + 1).unwrap();
    assert!(max_abs_diff(&la, &want_a) <= 1e-6, "original");
    assert!(max_abs_diff(&lb, &want_b) <= 1e-6, "clone");
    assert!(max_abs_diff(&la, &lb) > 1e-4, "the two histories differ");
}

#[test]
fn logits_for_the_last_position_alone_equal_the_last_row_and_cache_the_same() {
    // With `LogitsFor::Last` the last layer computes only the last position (its keys and
    // values for all). Its logits equal the last row of every position's; the cache it leaves
    // is the same, so the next step's logits are bit for bit those after a full forward. Batches
    // of one and two, a prefill from 0 and a chunk after cached positions.
    let all_rows = common::tiny_model(Quantization::None);
    let (_, a) = embeds_for(&all_rows, "doc_tiny");
    let (_, b) = embeds_for(&all_rows, "wide_tiny");
    let t = a.dim(1).unwrap().min(b.dim(1).unwrap());
    let (a, b) = (a.i((.., 0..t, ..)).unwrap(), b.i((.., 0..t, ..)).unwrap());
    let split = t / 2;
    for input in [a.clone(), Tensor::cat(&[&a, &b], 0).unwrap()] {
        let batch = input.dim(0).unwrap();
        let next = all_rows
            .embed_ids(
                &Tensor::from_slice(&[5u32, 9][..batch], (batch, 1), all_rows.device()).unwrap(),
            )
            .unwrap();
        // (first position, chunk) pairs: the whole prefill, or its second half after the first.
        for from in [0, split] {
            let mut full = common::tiny_model(Quantization::None);
            let mut last = common::tiny_model(Quantization::None);
            let head = input.i((.., 0..from, ..)).unwrap();
            let chunk = input.i((.., from..t, ..)).unwrap();
            if from > 0 {
                full.forward(&head, 0).unwrap();
                last.forward(&head, 0).unwrap();
            }
            let want = full.forward(&chunk, from).unwrap();
            let want = want.i((.., t - from - 1.., ..)).unwrap();
            let got = last
                .forward_with(&chunk, from, LogitsFor::Last, None)
                .unwrap();
            assert_eq!(got.dims(), want.dims(), "batch {batch}, from {from}");
            let scale = common::max_abs(&want);
            let d = max_abs_diff(&got, &want);
            eprintln!("batch {batch}, from {from}: last alone vs last row max |diff| {d:.3e} (scale {scale:.2})");
            assert!(
                d <= 2e-6 * scale.max(1.0),
                "batch {batch}, from {from}: {d:.3e} against a scale of {scale:.2}"
            );
            assert_eq!(last.cached_len(), t);
            let step_full = full.forward(&next, t).unwrap();
            let step_last = last.forward(&next, t).unwrap();
            assert_eq!(
                step_full.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                step_last.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "batch {batch}, from {from}: the next step after a last-only forward"
            );
        }
    }
}
