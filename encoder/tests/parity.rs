//! Numerical parity with the reference DeepEncoder on the tiny fixture model: interpolated
//! tables, per-block SAM/CLIP debug tensors (card_tiny), and SAM, CLIP, projector and the final
//! image-embedding sequence of every case.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use lethe_encoder::{load_image, preprocess, Encoder, Error};

const TOL: f32 = 1e-4;
const TOL_TABLE: f32 = 1e-5;

fn encoder() -> Encoder {
    Encoder::builder()
        .model_dir(common::fixtures().join("tiny"))
        .device(Device::Cpu)
        .build()
        .expect("tiny encoder loads")
}

fn check(what: &str, got: &Tensor, want: &Tensor, tol: f32, worst: &mut HashMap<String, f32>) {
    let d = common::max_abs_diff(got, want);
    assert!(d <= tol, "{what}: max abs diff {d:e} > {tol:e}");
    let stage = what.split(' ').nth(1).unwrap_or(what).to_owned();
    let w = worst.entry(stage).or_insert(0.0);
    *w = w.max(d);
}

#[test]
fn interpolated_tables_match() {
    let enc = encoder();
    let t = common::load_tensors("interp.safetensors");
    let mut worst = HashMap::new();
    for g in [32, 40, 80] {
        let got = enc.sam().abs_pos(g).unwrap().unsqueeze(0).unwrap();
        check(
            &format!("interp sam.pos_embed.{g}"),
            &got,
            &t[&format!("sam.pos_embed.{g}")],
            TOL_TABLE,
            &mut worst,
        );
    }
    for g in [8, 10, 20] {
        let got = enc.clip().position_table(g).unwrap().unsqueeze(0).unwrap();
        let key = format!("clip.position_embedding.{g}");
        check(
            &format!("interp {key}"),
            &got,
            &t[&key],
            TOL_TABLE,
            &mut worst,
        );
    }
    for block in [1, 3] {
        for side in [32, 40, 80] {
            let (rh, rw) = enc.sam().rel_pos(block, side).unwrap();
            for (axis, got) in [("h", rh), ("w", rw)] {
                let key = format!("sam.blocks.{block}.attn.rel_pos_{axis}.{}", 2 * side - 1);
                // Gather the reference table the way get_rel_pos does: R[i, j] = T[i - j + s - 1].
                let table = &t[&key];
                let idx: Vec<u32> = (0..side)
                    .flat_map(|i| (0..side).map(move |j| (i + side - 1 - j) as u32))
                    .collect();
                let idx = Tensor::from_vec(idx, side * side, &Device::Cpu).unwrap();
                let want = table
                    .index_select(&idx, 0)
                    .unwrap()
                    .reshape(got.dims())
                    .unwrap();
                check(&format!("interp {key}"), &got, &want, TOL_TABLE, &mut worst);
                if side == 32 {
                    let key = format!("sam.blocks.{block}.attn.get_rel_pos_{axis}.32");
                    check(
                        &format!("interp {key}"),
                        &got,
                        &t[&key],
                        TOL_TABLE,
                        &mut worst,
                    );
                }
            }
        }
    }
    eprintln!("interp worst: {worst:?}");
}

#[test]
fn card_tiny_debug_stages_match() {
    let enc = encoder();
    let st = common::load_tensors("cases/card_tiny.safetensors");
    let image = load_image(common::fixtures().join("inputs/card_500x400.png")).unwrap();
    let views = preprocess(&image, lethe_encoder::Mode::Tiny).unwrap();
    let x = views.global_tensor(&Device::Cpu).unwrap();
    let mut worst = HashMap::new();
    let mut seen = 0;
    let sam = enc
        .sam()
        .forward_observed(&x, &mut |stage, t| {
            let (key, got) = match stage {
                "patch_embed" => ("debug.sam.patch_embed".to_owned(), t.unsqueeze(0)?),
                s if s.starts_with("block") => (format!("debug.sam.{s}"), t.unsqueeze(0)?),
                "neck" | "net_2" => (
                    format!("debug.sam.{stage}"),
                    t.permute((2, 0, 1))?.unsqueeze(0)?,
                ),
                _ => return Ok(()),
            };
            let want = st
                .get(&key)
                .unwrap_or_else(|| panic!("fixture lacks {key}"));
            check(&format!("card_tiny {key}"), &got, want, TOL, &mut worst);
            seen += 1;
            Ok::<(), Error>(())
        })
        .unwrap();
    assert_eq!(seen, 1 + 4 + 2);
    let mut seen = 0;
    enc.clip()
        .forward_observed(&sam, &mut |stage, t| {
            let key = format!("debug.clip.{stage}");
            let want = st
                .get(&key)
                .unwrap_or_else(|| panic!("fixture lacks {key}"));
            check(
                &format!("card_tiny {key}"),
                &t.unsqueeze(0)?,
                want,
                TOL,
                &mut worst,
            );
            seen += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, 2 + 2);
    eprintln!("card_tiny debug worst: {worst:?}");
}

#[test]
fn every_case_matches_reference_embeddings() {
    let enc = encoder();
    let mut worst: HashMap<String, f32> = HashMap::new();
    for case in common::cases() {
        let st = common::load_tensors(&format!("cases/{}.safetensors", case.name));
        let image = load_image(common::fixtures().join("inputs").join(&case.image)).unwrap();
        let views = preprocess(&image, case.mode).unwrap();
        let s = enc.encode_stages(&views).unwrap();
        let g = case.grid;
        // The reference stores SAM NCHW; ours is token-major.
        let sam_nchw = |t: &Tensor, side: usize| {
            let (n, _, c) = t.dims3().unwrap();
            t.reshape((n, side, side, c))
                .unwrap()
                .permute((0, 3, 1, 2))
                .unwrap()
        };
        let name = &case.name;
        check(
            &format!("{name} sam"),
            &sam_nchw(&s.sam_global, g),
            &st["sam.global"],
            TOL,
            &mut worst,
        );
        check(
            &format!("{name} clip"),
            &s.clip_global,
            &st["clip.global"],
            TOL,
            &mut worst,
        );
        check(
            &format!("{name} proj"),
            &s.proj_global,
            &st["proj.global"],
            TOL,
            &mut worst,
        );
        match &s.tiles {
            Some([sam, clip, proj]) => {
                check(
                    &format!("{name} sam"),
                    &sam_nchw(sam, 10),
                    &st["sam.tiles"],
                    TOL,
                    &mut worst,
                );
                check(
                    &format!("{name} clip"),
                    clip,
                    &st["clip.tiles"],
                    TOL,
                    &mut worst,
                );
                check(
                    &format!("{name} proj"),
                    proj,
                    &st["proj.tiles"],
                    TOL,
                    &mut worst,
                );
            }
            None => assert!(!st.contains_key("sam.tiles"), "{name}: tiles expected"),
        }
        assert_eq!(s.image_embeds.dims(), &[case.slots, 64], "{name}");
        check(
            &format!("{name} image_embeds"),
            &s.image_embeds,
            &st["image_embeds"],
            TOL,
            &mut worst,
        );
    }
    eprintln!("all cases, worst max abs diff per stage: {worst:?}");
    // Observed on x86_64 (AVX2/FMA kernels): sam 1.3e-5, clip 2.2e-5, proj 1.6e-5,
    // image_embeds 1.6e-5.
    assert!(
        worst.values().all(|&d| d <= TOL),
        "worst max abs diff per stage {worst:?} (observed: sam 1.3e-5, clip 2.2e-5, proj 1.6e-5, image_embeds 1.6e-5)"
    );
}

#[test]
fn load_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let err = Encoder::builder().model_dir(&missing).build().unwrap_err();
    assert!(matches!(err, Error::MissingFolder { .. }), "{err}");

    std::fs::copy(
        common::fixtures().join("tiny/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let err = Encoder::builder()
        .model_dir(dir.path())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    // A checkpoint whose image_newline has the wrong width.
    let mut tensors = common::load_tensors("tiny/model.safetensors");
    tensors.insert(
        "model.image_newline".into(),
        Tensor::zeros(63, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let err = Encoder::builder()
        .model_dir(dir.path())
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("model.image_newline") && msg.contains("[63]") && msg.contains("[64]"),
        "{msg}"
    );

    tensors.remove("model.image_newline");
    tensors.remove("model.sam_model.blocks.0.attn.qkv.weight");
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let err = Encoder::builder()
        .model_dir(dir.path())
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("model.sam_model.blocks.0.attn.qkv.weight"),
        "{err}"
    );
}
