//! CLIP-L tower of DeepSeek-OCR's DeepEncoder, fed with SAM's features as patch embeddings.
//!
//! Paper: "DeepSeek-OCR: Contexts Optical Compression" (arXiv 2510.18234); CLIP ViT-L/14
//! (arXiv 2103.00020). Mirrors `VitModel` / `CLIPVisionEmbeddings` / `NoTPTransformer` of the
//! reference `deepencoder.py`; tensors are read from the checkpoint's `model.vision_model.*`.
//! The stored `embeddings.patch_embedding` convolution is checked but never used, as in the
//! reference.

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops::{self, get, LayerNorm, Linear};

/// CLIP LayerNorm epsilon (`layernorm_epsilon=1e-5`).
const EPS: f32 = 1e-5;

#[derive(Debug, Clone)]
struct Layer {
    layer_norm1: LayerNorm,
    qkv: Linear,
    out: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl Layer {
    /// `x`: `[t, width]` of one image.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (t, c) = x.dims2()?;
        let qkv = self
            .qkv
            .forward(&self.layer_norm1.forward(x)?)?
            .reshape((1, t, 3 * c))?;
        let a = ops::attention(&qkv, self.heads)?.reshape((t, c))?;
        let h = (x + self.out.forward(&a)?)?;
        let hidden = self
            .fc1
            .forward_act(&self.layer_norm2.forward(&h)?, crate::cpu::Act::QuickGelu)?;
        let m = self.fc2.forward(&hidden)?;
        Ok((h + m)?)
    }
}

/// The CLIP-L transformer over SAM features.
#[derive(Debug, Clone)]
pub struct Clip {
    class_embedding: Tensor,
    /// `[1 + g * g, width]` at the native grid.
    position_embedding: Tensor,
    /// `position_embedding` resized for the grids seen so far.
    resized_positions: ops::PerGrid,
    native_grid: usize,
    pre_layrnorm: LayerNorm,
    layers: Vec<Layer>,
    width: usize,
}

impl Clip {
    /// Loads CLIP from `vb` (the checkpoint's `model.vision_model`).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let c = &cfg.vision_config.width.clip;
        let w = c.width;
        let g = cfg.clip_native_grid();
        let evb = vb.pp("embeddings");
        let class_embedding = get(&evb, &[w], "class_embedding")?;
        // Present in the checkpoint, unused by DeepSeek-OCR: checked, then dropped.
        get(
            &evb.pp("patch_embedding"),
            &[w, 3, c.patch_size, c.patch_size],
            "weight",
        )?;
        let position_embedding = get(&evb.pp("position_embedding"), &[g * g + 1, w], "weight")?;
        let pre_layrnorm = LayerNorm::load(&vb.pp("pre_layrnorm"), w, EPS)?;
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let l = vb.pp(format!("transformer.layers.{i}"));
            layers.push(Layer {
                layer_norm1: LayerNorm::load(&l.pp("layer_norm1"), w, EPS)?,
                qkv: Linear::load(&l.pp("self_attn.qkv_proj"), w, 3 * w, true)?,
                out: Linear::load(&l.pp("self_attn.out_proj"), w, w, true)?,
                layer_norm2: LayerNorm::load(&l.pp("layer_norm2"), w, EPS)?,
                fc1: Linear::load(&l.pp("mlp.fc1"), w, c.ffn_hidden_size, true)?,
                fc2: Linear::load(&l.pp("mlp.fc2"), c.ffn_hidden_size, w, true)?,
                heads: c.heads,
            });
        }
        Ok(Self {
            class_embedding,
            position_embedding,
            resized_positions: ops::PerGrid::default(),
            native_grid: g,
            pre_layrnorm,
            layers,
            width: w,
        })
    }

    /// Hidden width (1024 for the real model).
    pub fn width(&self) -> usize {
        self.width
    }

    /// The position table for a `grid` x `grid` token grid plus the class token,
    /// `[1 + grid * grid, width]` (`get_abs_pos`: the class row unchanged, the grid resized
    /// with antialiased bicubic).
    pub fn position_table(&self, grid: usize) -> Result<Tensor> {
        if grid == self.native_grid {
            return Ok(self.position_embedding.clone());
        }
        self.resized_positions.get_or(grid, || {
            let g = self.native_grid;
            let host = ops::to_host(&self.position_embedding.narrow(0, 1, g * g)?)?;
            let out = ops::resize_bicubic_aa(&host, (g, g, self.width), (grid, grid));
            let grid_t = Tensor::from_vec(out, (grid * grid, self.width), self.device())?
                .to_dtype(self.position_embedding.dtype())?;
            let cls = self.position_embedding.narrow(0, 0, 1)?;
            Ok(Tensor::cat(&[&cls, &grid_t], 0)?)
        })
    }

    /// Runs CLIP on SAM features `[n, t, width]` (t a square grid). Returns `[n, t, width]`
    /// with the class token dropped.
    pub fn forward(&self, sam: &Tensor) -> Result<Tensor> {
        self.forward_observed(sam, &mut |_, _| Ok(()))
    }

    /// [`Clip::forward`], calling `observe(stage, tensor)` with `embeddings`, `pre_layrnorm`
    /// and `layer{i}` (each `[1 + t, width]`, class token first) for each image.
    pub fn forward_observed(
        &self,
        sam: &Tensor,
        observe: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let (n, t, c) = sam.dims3()?;
        let grid = (t as f64).sqrt() as usize;
        if grid * grid != t || c != self.width {
            return Err(Error::BadInput(format!(
                "CLIP needs [n, g*g, {}] features, got {:?}",
                self.width,
                sam.dims()
            )));
        }
        let pos = self.position_table(grid)?;
        let cls = self.class_embedding.reshape((1, c))?;
        let mut outs = Vec::with_capacity(n);
        for i in 0..n {
            let x = Tensor::cat(&[&cls, &sam.get(i)?], 0)?;
            let x = (x + &pos)?;
            observe("embeddings", &x)?;
            let mut x = self.pre_layrnorm.forward(&x)?;
            observe("pre_layrnorm", &x)?;
            for (li, layer) in self.layers.iter().enumerate() {
                x = layer.forward(&x)?;
                observe(&format!("layer{li}"), &x)?;
            }
            outs.push(x.narrow(0, 1, t)?);
        }
        Ok(Tensor::stack(&outs, 0)?)
    }

    /// FLOPs of one forward over `t` tokens (plus the class token).
    pub fn flops(&self, t: usize) -> f64 {
        let s = (t + 1) as f64;
        self.layers
            .iter()
            .map(|l| {
                let per_row = l.qkv.macs_per_row()
                    + l.out.macs_per_row()
                    + l.fc1.macs_per_row()
                    + l.fc2.macs_per_row();
                2.0 * s * per_row as f64 + 2.0 * 2.0 * s * s * self.width as f64
            })
            .sum()
    }

    fn device(&self) -> &Device {
        self.position_embedding.device()
    }
}
