//! The encoder's part of DeepSeek-OCR's `config.json`, read in the checkpoint's own schema.
//!
//! The real checkpoint's `config.json` names only the widths, depths and head counts of SAM-base
//! and CLIP-L; the reference code (`deepencoder.py`) hard-codes the rest. Those hard-coded values
//! are optional keys here whose defaults are the real model's, so a smaller model (the tiny
//! parity fixture) can state its own.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The parts of `config.json` the encoder reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    /// `vision_config`: SAM and CLIP.
    pub vision_config: VisionConfig,
    /// `projector_config`: the linear projector into the decoder's width.
    pub projector_config: ProjectorConfig,
}

/// `vision_config`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionConfig {
    /// SAM's native input side in pixels (1024); its position table covers
    /// `image_size / patch_size` patches per side.
    pub image_size: usize,
    /// The two towers.
    pub width: VisionWidths,
}

/// `vision_config.width`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionWidths {
    /// `sam_vit_b`.
    #[serde(rename = "sam_vit_b")]
    pub sam: SamConfig,
    /// `clip-l-14-224`.
    #[serde(rename = "clip-l-14-224")]
    pub clip: ClipConfig,
}

/// `vision_config.width.sam_vit_b`: the SAM-base (ViTDet) image encoder.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SamConfig {
    /// Channels of `net_2` and `net_3` (real: 512, 1024).
    pub downsample_channels: Vec<usize>,
    /// Blocks with global attention (real: 2, 5, 8, 11); the others use windows.
    pub global_attn_indexes: Vec<usize>,
    /// Attention heads.
    pub heads: usize,
    /// Number of blocks.
    pub layers: usize,
    /// Embedding width (real: 768).
    pub width: usize,
    /// Neck width (real: 256).
    #[serde(default = "default_out_chans")]
    pub out_chans: usize,
    /// Attention window side (real: 14).
    #[serde(default = "default_window_size")]
    pub window_size: usize,
    /// Patch side in pixels (real: 16).
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    /// MLP width over embedding width (real: 4.0).
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
}

/// `vision_config.width.clip-l-14-224`: the CLIP-L tower.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipConfig {
    /// Attention heads.
    pub heads: usize,
    /// CLIP's native image side (224).
    pub image_size: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Patch side (14); with `image_size` it fixes the position table (16x16 + CLS).
    pub patch_size: usize,
    /// Hidden width (real: 1024).
    pub width: usize,
    /// MLP width (real: 4096).
    #[serde(default = "default_clip_ffn")]
    pub ffn_hidden_size: usize,
}

/// `projector_config`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProjectorConfig {
    /// Input width: CLIP width + SAM output channels (real: 2048).
    pub input_dim: usize,
    /// Output width, the decoder's hidden size (real: 1280).
    pub n_embed: usize,
    /// Projector kind; only `linear` exists in DeepSeek-OCR.
    #[serde(default = "default_projector_type")]
    pub projector_type: String,
}

fn default_out_chans() -> usize {
    256
}
fn default_window_size() -> usize {
    14
}
fn default_patch_size() -> usize {
    16
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_clip_ffn() -> usize {
    4096
}
fn default_projector_type() -> String {
    "linear".to_owned()
}

impl Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Config = serde_json::from_str(&text).map_err(|source| Error::Config {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a `config.json` text and validates it.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Config = serde_json::from_str(text).map_err(|source| Error::Config {
            path: "<string>".into(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the numbers fit together (head widths divide, projector input matches the towers).
    pub fn validate(&self) -> Result<()> {
        let s = &self.vision_config.width.sam;
        let c = &self.vision_config.width.clip;
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if s.downsample_channels.len() != 2 {
            return bad(format!(
                "sam_vit_b.downsample_channels must have 2 entries, found {}",
                s.downsample_channels.len()
            ));
        }
        if s.heads == 0 || !s.width.is_multiple_of(s.heads) {
            return bad(format!(
                "sam_vit_b.width {} is not a multiple of heads {}",
                s.width, s.heads
            ));
        }
        if c.heads == 0 || !c.width.is_multiple_of(c.heads) {
            return bad(format!(
                "clip width {} is not a multiple of heads {}",
                c.width, c.heads
            ));
        }
        if let Some(&i) = s.global_attn_indexes.iter().find(|&&i| i >= s.layers) {
            return bad(format!(
                "global attention index {i} is not below the {} SAM layers",
                s.layers
            ));
        }
        if s.patch_size == 0 || !self.vision_config.image_size.is_multiple_of(s.patch_size) {
            return bad(format!(
                "image_size {} is not a multiple of the SAM patch size {}",
                self.vision_config.image_size, s.patch_size
            ));
        }
        if s.window_size == 0 {
            return bad("sam_vit_b.window_size must be positive".into());
        }
        if c.patch_size == 0 || !c.image_size.is_multiple_of(c.patch_size) {
            return bad(format!(
                "clip image_size {} is not a multiple of its patch size {}",
                c.image_size, c.patch_size
            ));
        }
        let input = c.width + s.downsample_channels[1];
        if self.projector_config.input_dim != input {
            return bad(format!(
                "projector_config.input_dim is {} but CLIP width + SAM channels is {input}",
                self.projector_config.input_dim
            ));
        }
        if self.projector_config.projector_type != "linear" {
            return bad(format!(
                "projector_type {:?} is not supported (only \"linear\")",
                self.projector_config.projector_type
            ));
        }
        Ok(())
    }

    /// SAM's patch grid side for its native image size (64 for the real model).
    pub fn sam_native_grid(&self) -> usize {
        self.vision_config.image_size / self.vision_config.width.sam.patch_size
    }

    /// CLIP's position grid side (16 for CLIP-L/14 at 224).
    pub fn clip_native_grid(&self) -> usize {
        let c = &self.vision_config.width.clip;
        c.image_size / c.patch_size
    }

    /// SAM's MLP width.
    pub fn sam_mlp_dim(&self) -> usize {
        let s = &self.vision_config.width.sam;
        (s.width as f64 * s.mlp_ratio) as usize
    }

    /// Output width of the encoder (the decoder's hidden size).
    pub fn hidden_size(&self) -> usize {
        self.projector_config.n_embed
    }
}
