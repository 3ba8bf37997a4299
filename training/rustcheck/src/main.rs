//! Throwaway check (not part of the project): load a model folder exported by
//! training/export.py with the project's own Rust loaders and compare with its check.safetensors.
use candle_core::{Device, Tensor};
use lethe_decoder::{build_prompt, generate, DecoderModel, GenerationConfig, Quantization, Tokenizer, DEFAULT_PROMPT};
use lethe_encoder::{load_image, preprocess, Encoder, Mode};
use std::time::Instant;

fn maxdiff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("model dir"));
    let dev = Device::Cpu;
    let check = candle_core::safetensors::load(dir.join("check.safetensors"), &dev).unwrap();
    let t0 = Instant::now();
    let enc = Encoder::builder().model_dir(&dir).device(dev.clone()).build().unwrap();
    let mut model = DecoderModel::load(&dir, &dev, Quantization::None).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    println!("load {:.3} s", t0.elapsed().as_secs_f64());
    let image = load_image(dir.join("check.global.png")).unwrap();
    let mode = match std::env::args().nth(2).as_deref() {
        Some("base") => Mode::Base,
        Some("small") => Mode::Small,
        _ => Mode::Tiny,
    };
    let views = preprocess(&image, mode).unwrap();
    let t1 = Instant::now();
    let emb = enc.encode(&views).unwrap();
    println!("encode {:.3} s, {:?}", t1.elapsed().as_secs_f64(), emb.dims());
    println!("image_embeds max|diff| {:.3e}", maxdiff(&emb, &check["image_embeds"]));
    let cfg = model.config().clone();
    let p = build_prompt(&tok, DEFAULT_PROMPT, &[emb.dims()[0]], cfg.bos(), cfg.image_token_id()).unwrap();
    let want_ids: Vec<i64> = check["input_ids"].to_vec1().unwrap();
    let ids_ok = p.ids.iter().map(|&x| x as i64).collect::<Vec<_>>() == want_ids;
    println!("prompt ids equal: {ids_ok} ({} ids)", p.ids.len());
    let e = model.embed_prompt(&p.ids, cfg.image_token_id(), Some(&emb)).unwrap();
    let logits = model.forward(&e, 0).unwrap().squeeze(0).unwrap();
    let d = maxdiff(&logits, &check["logits"]);
    let am: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
    let am_ref: Vec<u32> = check["logits"].argmax(1).unwrap().to_vec1().unwrap();
    println!("logits max|diff| {d:.3e}, argmax equal: {}", am == am_ref);
    let gcfg = GenerationConfig::builder().max_new_tokens(32).ngram_ban(None).build().unwrap();
    let out = generate(&mut model, &p.ids, &e, &gcfg, &mut |_| true).unwrap();
    let want: Vec<i64> = check["gen.plain"].to_vec1().unwrap();
    let want: Vec<u32> = want.iter().map(|&x| x as u32).take_while(|&x| x != 1).collect();
    println!("greedy tokens equal: {} ({} tokens; {:.1} tok/s; prefill {:.3} s) text {:?}",
        out.tokens == want, out.tokens.len(), out.decode_tokens_per_sec(), out.prefill_secs,
        tok.decode(&out.tokens, false).unwrap());
    let emb_d = maxdiff(&emb, &check["image_embeds"]);
    let ok = ids_ok && emb_d <= 1e-4 && d <= 2e-4 && am == am_ref && out.tokens == want;
    println!("{}", if ok { "OK: Rust matches the PyTorch export" } else { "MISMATCH" });
    if !ok {
        std::process::exit(1);
    }
}
