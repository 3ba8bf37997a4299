//! Decoder speed at the REAL DeepSeek-OCR dimensions, with random weights made here.
//!
//! Hidden 1280, 12 layers (layer 0 dense SwiGLU 6848, layers 1-11 MoE: 64 routed experts of 896,
//! top-6, 2 shared), 10 heads of 128, vocabulary 129280. Weights are N(0, 1/fan_in), so routing
//! is effectively random, rounded to bf16 as the checkpoint stores them: the f32 variant (`none`)
//! holds them in 16 bits and computes in f32, as it does with the real checkpoint.
//!
//! Memory: the full decoder is about 12.4 GB in f32 (6.2 GB held in bf16), more than this shared
//! machine can spare beside its other work, so the eleven MoE layers share ONE pool of 64 routed
//! experts (0.44 GB in bf16); every other tensor (embedding, `lm_head`, attention, dense MLP,
//! gates, shared experts) is distinct per layer. A decode step therefore still streams about
//! 1.2 GB of weights from DRAM (66 expert reads over 11 layers from the pool, far beyond the
//! caches), so per-token time is representative of the full model. Quantised variants quantise
//! each layer's reference to the pool separately (so their memory is the real model's, minus
//! nothing).
//!
//! Benches: `prefill/279` (one prompt of 279 positions, logits for the last one, as generation
//! does) and `decode/step` (one cached step at positions 279..343), for f32, q8_0 and q4k.
//! Ratios against PyTorch come from `scripts/side_by_side.py --decoder`, which runs the
//! project's PyTorch mirror and `memctl ocr` on one full-size folder in one invocation.
//!
//! `LETHE_BENCH_QUANT=none,q8_0,q4k` picks the variants (default all three);
//! `LETHE_BENCH_DECODE_ONLY=1` skips the prefill bench.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use lethe_decoder::{DecoderConfig, DecoderModel, LogitsFor, Quantization};

const PREFILL: usize = 279;
const DECODE_SPAN: usize = 64;

fn real_config() -> DecoderConfig {
    let text = include_str!("../tests/fixtures/deepseek-ocr/real/config.json");
    DecoderConfig::from_json_str(text).expect("real config parses")
}

fn randn(shape: &[usize], fan_in: usize, dev: &Device) -> Tensor {
    let std = 1.0 / (fan_in as f64).sqrt();
    Tensor::randn(0f32, std as f32, shape, dev)
        .and_then(|t| t.to_dtype(DType::BF16)?.to_dtype(DType::F32))
        .expect("randn")
}

/// Random weights under the checkpoint's tensor names, MoE layers sharing one expert pool.
fn random_weights(cfg: &DecoderConfig, dev: &Device) -> HashMap<String, Tensor> {
    let h = cfg.hidden_size;
    let v = cfg.vocab_size;
    let m = cfg.moe_intermediate_size;
    let e = cfg.n_routed_experts.unwrap_or(0);
    let s = cfg.n_shared_experts.unwrap_or(0);
    let mut w = HashMap::new();
    w.insert("model.embed_tokens.weight".into(), randn(&[v, h], 4, dev));
    w.insert("lm_head.weight".into(), randn(&[v, h], h, dev));
    w.insert(
        "model.norm.weight".into(),
        Tensor::ones(h, DType::F32, dev).expect("ones"),
    );
    let pool: Vec<[Tensor; 3]> = (0..e)
        .map(|_| {
            [
                randn(&[m, h], h, dev),
                randn(&[m, h], h, dev),
                randn(&[h, m], m, dev),
            ]
        })
        .collect();
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for n in ["input_layernorm", "post_attention_layernorm"] {
            w.insert(
                format!("{p}.{n}.weight"),
                Tensor::ones(h, DType::F32, dev).expect("ones"),
            );
        }
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            w.insert(format!("{p}.self_attn.{n}.weight"), randn(&[h, h], h, dev));
        }
        if cfg.is_moe_layer(l) {
            w.insert(format!("{p}.mlp.gate.weight"), randn(&[e, h], h, dev));
            for (k, [g, u, d]) in pool.iter().enumerate() {
                w.insert(format!("{p}.mlp.experts.{k}.gate_proj.weight"), g.clone());
                w.insert(format!("{p}.mlp.experts.{k}.up_proj.weight"), u.clone());
                w.insert(format!("{p}.mlp.experts.{k}.down_proj.weight"), d.clone());
            }
            let si = m * s;
            w.insert(
                format!("{p}.mlp.shared_experts.gate_proj.weight"),
                randn(&[si, h], h, dev),
            );
            w.insert(
                format!("{p}.mlp.shared_experts.up_proj.weight"),
                randn(&[si, h], h, dev),
            );
            w.insert(
                format!("{p}.mlp.shared_experts.down_proj.weight"),
                randn(&[h, si], si, dev),
            );
        } else {
            let i = cfg.intermediate_size;
            w.insert(format!("{p}.mlp.gate_proj.weight"), randn(&[i, h], h, dev));
            w.insert(format!("{p}.mlp.up_proj.weight"), randn(&[i, h], h, dev));
            w.insert(format!("{p}.mlp.down_proj.weight"), randn(&[h, i], i, dev));
        }
    }
    w
}

/// Bytes of weights one decode step reads (active experts, attention, dense MLP, `lm_head`).
fn active_bytes(cfg: &DecoderConfig, q: Quantization) -> f64 {
    let per = |in_dim: usize| -> f64 {
        match q {
            Quantization::Q8_0 => 34.0 / 32.0,
            Quantization::Q4K if in_dim.is_multiple_of(256) => 144.0 / 256.0,
            Quantization::Q4K => 34.0 / 32.0,
            _ => 2.0, // bf16 values, held in 16 bits
        }
    };
    let h = cfg.hidden_size;
    let m = cfg.moe_intermediate_size;
    let active = (cfg.experts_per_token() + cfg.n_shared_experts.unwrap_or(0)) as f64;
    let mut b = cfg.vocab_size as f64 * h as f64 * per(h);
    for l in 0..cfg.num_hidden_layers {
        b += 4.0 * (h * h) as f64 * per(h);
        if cfg.is_moe_layer(l) {
            b += (cfg.n_routed_experts.unwrap_or(0) * h) as f64 * 4.0;
            b += active * (2.0 * (h * m) as f64 * per(h) + (h * m) as f64 * per(m));
        } else {
            let i = cfg.intermediate_size;
            b += 2.0 * (h * i) as f64 * per(h) + (h * i) as f64 * per(i);
        }
    }
    b
}

/// FLOPs of a prefill of `t` positions with logits for the last one, as the decoder computes it:
/// every layer but the last for every position; the last projects q, k and v for every position
/// but attends, projects and runs its MLP for the last one alone (the others' outputs would feed
/// nothing).
fn prefill_flops(cfg: &DecoderConfig, t: usize) -> f64 {
    let h = cfg.hidden_size as f64;
    let lm = cfg.vocab_size as f64 * h;
    let per_token = cfg.active_parameters_per_token() as f64 - lm;
    let layers = cfg.num_hidden_layers;
    // q of width `h`, k and v of the kv heads, as `active_parameters_of_layer` counts them.
    let qkv = h * (h + 2.0 * (cfg.num_kv_heads() * cfg.head_dim()) as f64);
    let last = cfg.active_parameters_of_layer(layers - 1) as f64;
    let skipped = (t - 1) as f64 * (last - qkv);
    let attn = (layers - 1) as f64 * 4.0 * (t * t) as f64 * h + 4.0 * t as f64 * h;
    2.0 * (per_token * t as f64 - skipped) + 2.0 * lm + attn
}

fn rss_gb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1e6)
}

fn variants() -> Vec<Quantization> {
    let spec = std::env::var("LETHE_BENCH_QUANT").unwrap_or_else(|_| "none,q8_0,q4k".into());
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| Quantization::parse(s.trim()).expect("LETHE_BENCH_QUANT entry"))
        .collect()
}

fn bench_decode(c: &mut Criterion) {
    let dev = Device::Cpu;
    let cfg = real_config();
    let t0 = Instant::now();
    let weights = random_weights(&cfg, &dev);
    eprintln!(
        "random real-dimension weights made in {:.1} s, RSS {:.2} GB",
        t0.elapsed().as_secs_f64(),
        rss_gb()
    );
    let prompt = randn(&[1, PREFILL, cfg.hidden_size], 1, &dev);
    let mut f32_logits: Option<(Vec<f32>, Vec<u32>)> = None;
    for quant in variants() {
        let t0 = Instant::now();
        let mut model =
            DecoderModel::from_tensors(&cfg, weights.clone(), &dev, quant).expect("model builds");
        eprintln!(
            "[{}] built in {:.1} s; weights held {:.2} GB (full model, unshared: {:.2} GB); RSS {:.2} GB",
            quant.name(),
            t0.elapsed().as_secs_f64(),
            model.weight_bytes() as f64 / 1e9,
            full_model_bytes(&cfg, quant) / 1e9,
            rss_gb()
        );

        // Agreement with f32 on this real-dimension random model: last-position logits and
        // 16 greedy tokens from the same prompt.
        let (logits, greedy) = greedy_run(&mut model, &prompt, 16);
        match &f32_logits {
            None => f32_logits = Some((logits, greedy)),
            Some((ref_l, ref_g)) => {
                let d = ref_l
                    .iter()
                    .zip(&logits)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                let scale = ref_l.iter().map(|v| v.abs()).fold(0f32, f32::max);
                let agree = ref_g
                    .iter()
                    .zip(&greedy)
                    .take_while(|(a, b)| a == b)
                    .count();
                eprintln!(
                    "[{}] vs f32: prefill logits max |diff| {d:.3e} (max |logit| {scale:.2}); greedy tokens equal for the first {agree}/16",
                    quant.name()
                );
            }
        }

        let mut g = c.benchmark_group(format!("decoder_real_{}", quant.name()));
        g.sample_size(10);
        g.warm_up_time(Duration::from_millis(500));
        g.measurement_time(Duration::from_secs(5));
        let mut prefill_times = Vec::new();
        let skip_prefill = std::env::var_os("LETHE_BENCH_DECODE_ONLY").is_some();
        if !skip_prefill {
            g.bench_function(format!("prefill/{PREFILL}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        let l = model
                            .forward_with(&prompt, 0, LogitsFor::Last, None)
                            .expect("prefill");
                        std::hint::black_box(l);
                        let el = t.elapsed();
                        prefill_times.push(el.as_secs_f64());
                        total += el;
                    }
                    total
                })
            });
        }
        let mut step_times = Vec::new();
        let tok = Tensor::from_slice(&[42u32], (1, 1), &dev).expect("ids");
        let emb = model.embed_ids(&tok).expect("embed");
        model
            .forward_with(&prompt, 0, LogitsFor::Last, None)
            .expect("prefill");
        g.bench_function("decode/step", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if model.cached_len() >= PREFILL + DECODE_SPAN {
                        model
                            .forward_with(&prompt, 0, LogitsFor::Last, None)
                            .expect("prefill");
                    }
                    let pos = model.cached_len();
                    let t = Instant::now();
                    let l = model
                        .forward_with(&emb, pos, LogitsFor::Last, None)
                        .expect("step");
                    std::hint::black_box(l);
                    let el = t.elapsed();
                    step_times.push(el.as_secs_f64());
                    total += el;
                }
                total
            })
        });
        g.finish();
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let p = med(&mut prefill_times);
        let s = med(&mut step_times);
        let bytes = active_bytes(&cfg, quant);
        let flops = prefill_flops(&cfg, PREFILL);
        eprintln!(
            "[{}] prefill {PREFILL}: median {p:.3} s ({:.1} GFLOP/s) | decode: median {:.1} ms/step = {:.2} tok/s ({:.1} GB/s of {:.2} GB active weights) | peak RSS so far {:.2} GB",
            quant.name(),
            flops / p / 1e9,
            s * 1e3,
            1.0 / s,
            bytes / s / 1e9,
            bytes / 1e9,
            peak_rss_gb(),
        );
        drop(model);
    }
}

fn greedy_run(model: &mut DecoderModel, prompt: &Tensor, n: usize) -> (Vec<f32>, Vec<u32>) {
    let l = model
        .forward_with(prompt, 0, LogitsFor::Last, None)
        .expect("prefill");
    let first = l
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("logits");
    let mut row = first.clone();
    let mut toks = Vec::new();
    for _ in 0..n {
        let next = row
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| {
                if v > b.1 {
                    (i, v)
                } else {
                    b
                }
            })
            .0 as u32;
        toks.push(next);
        let ids = Tensor::from_slice(&[next], (1, 1), model.device()).expect("ids");
        let emb = model.embed_ids(&ids).expect("embed");
        let pos = model.cached_len();
        row = model
            .forward_with(&emb, pos, LogitsFor::Last, None)
            .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
            .expect("step");
    }
    (first, toks)
}

fn full_model_bytes(cfg: &DecoderConfig, q: Quantization) -> f64 {
    let per = |in_dim: usize| -> f64 {
        match q {
            Quantization::Q8_0 => 34.0 / 32.0,
            Quantization::Q4K if in_dim.is_multiple_of(256) => 144.0 / 256.0,
            Quantization::Q4K => 34.0 / 32.0,
            _ => 2.0, // bf16 values, held in 16 bits
        }
    };
    let h = cfg.hidden_size;
    let m = cfg.moe_intermediate_size;
    let e = cfg.n_routed_experts.unwrap_or(0) + cfg.n_shared_experts.unwrap_or(0);
    // Embedding stays f32.
    let mut b = (cfg.vocab_size * h) as f64 * (4.0 + per(h));
    for l in 0..cfg.num_hidden_layers {
        b += 4.0 * (h * h) as f64 * per(h);
        if cfg.is_moe_layer(l) {
            b += e as f64 * (2.0 * (h * m) as f64 * per(h) + (h * m) as f64 * per(m));
        } else {
            let i = cfg.intermediate_size;
            b += 2.0 * (h * i) as f64 * per(h) + (h * i) as f64 * per(i);
        }
    }
    b
}

fn peak_rss_gb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1e6)
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
