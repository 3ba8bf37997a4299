//! Helpers shared by the encoder's fixture tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use lethe_encoder::Mode;

/// `tests/fixtures/deepseek-ocr` of the workspace.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/deepseek-ocr")
}

/// One entry of `cases/index.json`.
pub struct Case {
    pub name: String,
    pub image: String,
    pub mode: Mode,
    pub width_tiles: usize,
    pub height_tiles: usize,
    pub global_png: String,
    pub tile_pngs: Vec<String>,
    pub slots: usize,
    pub grid: usize,
}

pub fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("cases/index.json")).expect("index.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("index.json parses");
    let cases = v["cases"].as_object().expect("cases object");
    let mut out: Vec<Case> = cases
        .iter()
        .filter(|(_, c)| c.get("global_png").is_some())
        .map(|(name, c)| Case {
            name: name.clone(),
            image: c["image"].as_str().expect("image").to_owned(),
            mode: c["mode"]
                .as_str()
                .expect("mode")
                .parse()
                .expect("mode name"),
            width_tiles: c["width_tiles"].as_u64().expect("wt") as usize,
            height_tiles: c["height_tiles"].as_u64().expect("ht") as usize,
            global_png: c["global_png"].as_str().expect("png").to_owned(),
            tile_pngs: c["tile_pngs"]
                .as_array()
                .expect("tiles")
                .iter()
                .map(|t| t.as_str().expect("tile").to_owned())
                .collect(),
            slots: c["num_image_slots"].as_u64().expect("slots") as usize,
            grid: c["global_grid"].as_u64().expect("grid") as usize,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        out.len() >= 13,
        "expected the 13 fixture cases, found {}",
        out.len()
    );
    out
}

pub fn load_tensors(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(rel), &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load {rel}: {e}"))
}

/// Max |a - b| over all elements (shapes must match).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
