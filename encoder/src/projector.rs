//! The linear projector of DeepSeek-OCR (`MlpProjector` with `projector_type="linear"`,
//! reference `deepencoder.py`): `cat([CLIP, SAM], -1) -> Linear(2048, 1280)`, read from the
//! checkpoint's `model.projector.layers.*`.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops::Linear;

/// `Linear(input_dim, n_embed)` over `[CLIP features, SAM features]`.
#[derive(Debug, Clone)]
pub struct Projector {
    layer: Linear,
    input_dim: usize,
}

impl Projector {
    /// Loads the projector from `vb` (the checkpoint's `model.projector`).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let p = &cfg.projector_config;
        Ok(Self {
            layer: Linear::load(&vb.pp("layers"), p.input_dim, p.n_embed, true)?,
            input_dim: p.input_dim,
        })
    }

    /// `clip`, `sam`: `[n, t, *]` with widths summing to `input_dim`. Returns `[n, t, n_embed]`.
    pub fn forward(&self, clip: &Tensor, sam: &Tensor) -> Result<Tensor> {
        let x = Tensor::cat(&[clip, sam], 2)?;
        if x.dim(2)? != self.input_dim {
            return Err(Error::BadInput(format!(
                "projector input width {} is not {}",
                x.dim(2)?,
                self.input_dim
            )));
        }
        self.layer.forward(&x)
    }

    /// FLOPs over `t` tokens.
    pub fn flops(&self, t: usize) -> f64 {
        2.0 * t as f64 * self.layer.macs_per_row() as f64
    }
}
