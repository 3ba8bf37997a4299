//! Shared helpers for the decoder's fixture tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use lethe_decoder::{DecoderModel, Quantization, TextEncoder};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/deepseek-ocr")
}

pub fn index() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("cases/index.json")).expect("index.json");
    serde_json::from_str(&text).expect("index.json parses")
}

pub fn case_names() -> Vec<String> {
    let idx = index();
    let mut names: Vec<String> = idx["cases"]
        .as_object()
        .expect("cases")
        .iter()
        .filter(|(_, v)| v.get("skipped").is_none())
        .map(|(k, _)| k.clone())
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        14,
        "14 cases (card_gundam is skipped, README §3)"
    );
    names
}

pub fn load_case(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join(format!("cases/{name}.safetensors")),
        &Device::Cpu,
    )
    .expect("case safetensors")
}

pub fn tiny_model(quant: Quantization) -> DecoderModel {
    DecoderModel::load(fixtures().join("tiny"), &Device::Cpu, quant).expect("tiny model loads")
}

/// The word-level fake tokenizer the fixtures were made with (README §5).
pub struct FakeTokenizer;

impl TextEncoder for FakeTokenizer {
    fn encode_text(&self, text: &str) -> lethe_decoder::Result<Vec<u32>> {
        let mut rest = text;
        let mut ids = Vec::new();
        let vocab: [(&str, u32); 4] = [("\n", 201), ("Free", 731), (" OCR", 732), (".", 16)];
        'outer: while !rest.is_empty() {
            for (w, id) in vocab {
                if let Some(r) = rest.strip_prefix(w) {
                    ids.push(id);
                    rest = r;
                    continue 'outer;
                }
            }
            return Err(lethe_decoder::Error::Input(format!(
                "fake tokenizer cannot encode {rest:?}"
            )));
        }
        Ok(ids)
    }
}

pub fn to_i64_vec(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

/// The largest magnitude in `t` (f32): the scale a tolerance is taken relative to.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

pub fn max_abs_diff_vec(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
