//! Preprocessing is byte-exact with the reference `infer()` for every fixture case.

mod common;

use candle_core::{DType, Device, Tensor};
use lethe_encoder::{load_image, preprocess};

fn png(name: &str) -> image::RgbImage {
    image::open(common::fixtures().join("cases").join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .to_rgb8()
}

/// Centre 32x32 crop of `[n, 3, s, s]` and the per-channel f64 sums.
fn crop_and_sums(t: &Tensor) -> (Tensor, Vec<f64>) {
    let (n, _, s, _) = t.dims4().unwrap();
    let c0 = s / 2 - 16;
    let crop = t.narrow(2, c0, 32).unwrap().narrow(3, c0, 32).unwrap();
    let sums = t
        .to_dtype(DType::F64)
        .unwrap()
        .reshape((n * 3, s * s))
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    (crop, sums)
}

#[test]
fn views_match_reference_bytes_and_tensors() {
    let mut failures = Vec::new();
    for case in common::cases() {
        let image = load_image(common::fixtures().join("inputs").join(&case.image)).unwrap();
        let views = preprocess(&image, case.mode).unwrap();
        let want = png(&case.global_png);
        assert_eq!(
            views.global.dimensions(),
            want.dimensions(),
            "{}",
            case.name
        );
        let diffs: Vec<(usize, u8, u8)> = views
            .global
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| (i, *a, *b))
            .collect();
        if !diffs.is_empty() {
            let w = want.width() as usize * 3;
            let first: Vec<String> = diffs
                .iter()
                .take(8)
                .map(|(i, a, b)| format!("(y {} x {} c {}: {a} vs {b})", i / w, (i % w) / 3, i % 3))
                .collect();
            failures.push(format!(
                "{}: {} global bytes differ: {}",
                case.name,
                diffs.len(),
                first.join(" ")
            ));
            continue;
        }
        assert_eq!(views.tiles.len(), case.tile_pngs.len(), "{}", case.name);
        for (k, (tile, name)) in views.tiles.iter().zip(&case.tile_pngs).enumerate() {
            if tile.as_raw() != png(name).as_raw() {
                failures.push(format!("{} tile {k} differs", case.name));
            }
        }
        if !views.tiles.is_empty() {
            assert_eq!(views.tile_grid, (case.width_tiles, case.height_tiles));
        }
        assert_eq!(views.positions(), case.slots, "{}", case.name);

        let st = common::load_tensors(&format!("cases/{}.safetensors", case.name));
        let check = |t: &Tensor, key: &str| {
            let (crop, sums) = crop_and_sums(t);
            let want_crop = &st[&format!("pixel_values.{key}.center_crop32")];
            assert_eq!(
                common::max_abs_diff(&crop, want_crop),
                0.0,
                "{} {key} crop",
                case.name
            );
            let want_sums = st[&format!("pixel_values.{key}.channel_sum")]
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for (a, b) in sums.iter().zip(&want_sums) {
                assert!((a - b).abs() <= 1e-6, "{} {key} sum {a} vs {b}", case.name);
            }
        };
        check(&views.global_tensor(&Device::Cpu).unwrap(), "global");
        if let Some(t) = views.tiles_tensor(&Device::Cpu).unwrap() {
            check(&t, "tiles");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn card_gundam_has_no_tiles() {
    let image = load_image(common::fixtures().join("inputs/card_500x400.png")).unwrap();
    let g = preprocess(&image, lethe_encoder::Mode::Gundam).unwrap();
    let b = preprocess(&image, lethe_encoder::Mode::Base).unwrap();
    assert!(g.tiles.is_empty());
    assert_eq!(g.global, b.global);
    assert_eq!(g.positions(), 273);
}

#[test]
fn unreadable_image_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.png");
    std::fs::write(&p, b"not a png").unwrap();
    let err = load_image(&p).unwrap_err();
    assert!(err.to_string().contains("broken.png"), "{err}");
    let err = load_image(dir.path().join("absent.png")).unwrap_err();
    assert!(err.to_string().contains("absent.png"), "{err}");
}
