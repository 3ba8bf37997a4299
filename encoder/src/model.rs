//! The whole DeepEncoder: loading a checkpoint folder, choosing the device, and running
//! SAM -> CLIP -> projector -> layout over a page's views (`DeepseekOCRModel.forward` of the
//! reference `modeling_deepseekocr.py`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::clip::Clip;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::layout;
use crate::ops::get;
use crate::preprocess::Views;
use crate::projector::Projector;
use crate::sam::Sam;

/// The dtype the encoder computes in on `device` unless [`EncoderBuilder::dtype`] says otherwise:
/// f32 on the CPU (parity is defined in f32, and the fast CPU kernels are f32), bf16 on CUDA and
/// Metal. Weights are converted to it at load; position tables are resized in f32 and converted.
pub fn compute_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

/// The one place that picks the device: CUDA 0 or Metal 0 when built with the `cuda` /
/// `metal` feature and such a device exists, the CPU otherwise. `LETHE_DEVICE=cpu` keeps a GPU
/// build on the CPU (to compare the two on one machine).
pub fn default_device() -> Result<Device> {
    if std::env::var("LETHE_DEVICE").is_ok_and(|d| d.eq_ignore_ascii_case("cpu")) {
        return Ok(Device::Cpu);
    }
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = Device::new_cuda(0) {
            return Ok(d);
        }
    }
    #[cfg(feature = "metal")]
    {
        if let Ok(d) = Device::new_metal(0) {
            return Ok(d);
        }
    }
    Ok(Device::Cpu)
}

/// Builds an [`Encoder`] from a checkpoint folder.
#[derive(Debug, Clone, Default)]
pub struct EncoderBuilder {
    model_dir: Option<PathBuf>,
    in_memory: Option<(Config, &'static [u8])>,
    device: Option<Device>,
    dtype: Option<DType>,
}

impl EncoderBuilder {
    /// The folder holding `config.json` and the `*.safetensors` weights.
    pub fn model_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.model_dir = Some(dir.into());
        self
    }

    /// A checkpoint held in memory instead of a folder: its config and the bytes of one
    /// safetensors file (a model embedded in a binary with `include_bytes!`).
    pub fn in_memory(mut self, config: Config, safetensors: &'static [u8]) -> Self {
        self.in_memory = Some((config, safetensors));
        self
    }

    /// The device to run on (default: [`default_device`]).
    pub fn device(mut self, device: Device) -> Self {
        self.device = Some(device);
        self
    }

    /// The dtype to compute in (default: [`compute_dtype`] of the device). Any float dtype runs
    /// everywhere through candle's generic ops; only f32 on the CPU takes the fast kernels.
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = Some(dtype);
        self
    }

    /// Reads the config, maps the weights and builds the encoder.
    pub fn build(self) -> Result<Encoder> {
        let device = match self.device {
            Some(d) => d,
            None => default_device()?,
        };
        let dtype = self.dtype.unwrap_or_else(|| compute_dtype(&device));
        if let Some((cfg, bytes)) = self.in_memory {
            let vb = VarBuilder::from_slice_safetensors(bytes, dtype, &device)?;
            return Encoder::new(&cfg, vb);
        }
        let dir = self.model_dir.ok_or_else(|| {
            Error::BadInput("EncoderBuilder needs a model_dir or in-memory weights".into())
        })?;
        if !dir.is_dir() {
            return Err(Error::MissingFolder { path: dir });
        }
        let cfg = Config::from_file(dir.join("config.json"))?;
        let files = safetensors_files(&dir)?;
        // Tensors are read one at a time, so loading needs the weights kept plus one tensor. On
        // the CPU, 16-bit weights are packed from their stored bits, never widened to f32.
        let vb = lethe_weights::Checkpoint::open(&files)?.var_builder_for(dtype, &device);
        Encoder::new(&cfg, vb)
    }
}

/// The `*.safetensors` files of a folder, sorted; an error naming `model.safetensors` if none.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for e in entries {
        let e = e.map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let p = e.path();
        if p.extension().is_some_and(|x| x == "safetensors") && p.is_file() {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(Error::MissingFile {
            path: dir.join("model.safetensors"),
        });
    }
    files.sort();
    Ok(files)
}

/// DeepSeek-OCR's vision encoder: SAM-base, CLIP-L, the projector and the token layout.
#[derive(Debug, Clone)]
pub struct Encoder {
    cfg: Config,
    sam: Sam,
    clip: Clip,
    projector: Projector,
    image_newline: Tensor,
    view_seperator: Tensor,
    device: Device,
}

/// Every intermediate of one encode, for parity checks. Token tensors are `[n, t, c]`.
#[derive(Debug, Clone)]
pub struct Stages {
    /// SAM output of the global view, `[1, g * g, sam_channels]` (token-major).
    pub sam_global: Tensor,
    /// CLIP output of the global view without the class token, `[1, g * g, clip_width]`.
    pub clip_global: Tensor,
    /// Projector output of the global view, `[1, g * g, hidden]`.
    pub proj_global: Tensor,
    /// The same three for the tiles (gundam with tiles only).
    pub tiles: Option<[Tensor; 3]>,
    /// The final sequence, `[positions, hidden]`.
    pub image_embeds: Tensor,
    /// Wall-clock seconds spent in each stage.
    pub timings: Timings,
}

/// Wall-clock seconds of one encode, by stage (all views together).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Normalising the views into tensors.
    pub normalize: f64,
    /// SAM.
    pub sam: f64,
    /// CLIP.
    pub clip: f64,
    /// Projector and layout.
    pub projector: f64,
}

impl Timings {
    /// Sum over stages.
    pub fn total(&self) -> f64 {
        self.normalize + self.sam + self.clip + self.projector
    }
}

/// FLOPs of one encode, by stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Flops {
    /// SAM over every view.
    pub sam: crate::sam::SamFlops,
    /// CLIP over every view.
    pub clip: f64,
    /// The projector over every view.
    pub projector: f64,
}

impl Flops {
    /// Sum over stages.
    pub fn total(&self) -> f64 {
        self.sam.total() + self.clip + self.projector
    }
}

impl Encoder {
    /// A builder reading a checkpoint folder.
    pub fn builder() -> EncoderBuilder {
        EncoderBuilder::default()
    }

    /// Builds the encoder from a [`VarBuilder`] rooted at the checkpoint's top level (tensor
    /// names `model.sam_model.*`, ...). Used by [`EncoderBuilder::build`] and by callers that
    /// make their own weights.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let m = vb.pp("model");
        let n = cfg.projector_config.n_embed;
        Ok(Self {
            cfg: cfg.clone(),
            sam: Sam::new(cfg, m.pp("sam_model"))?,
            clip: Clip::new(cfg, m.pp("vision_model"))?,
            projector: Projector::new(cfg, m.pp("projector"))?,
            image_newline: get(&m, &[n], "image_newline")?,
            view_seperator: get(&m, &[n], "view_seperator")?,
            device: vb.device().clone(),
        })
    }

    /// Builds the encoder from tensors named as in the checkpoint (see
    /// [`crate::weights::checkpoint_tensors`]), computing in [`compute_dtype`] of `device`;
    /// tensors already in that dtype are used as they are, without a copy.
    pub fn from_tensors(
        cfg: &Config,
        tensors: std::collections::HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        Self::from_tensors_in(cfg, tensors, device, compute_dtype(device))
    }

    /// [`Encoder::from_tensors`] computing in `dtype`.
    pub fn from_tensors_in(
        cfg: &Config,
        tensors: std::collections::HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        Self::new(cfg, VarBuilder::from_tensors(tensors, dtype, device))
    }

    /// The dtype the encoder computes in.
    pub fn dtype(&self) -> DType {
        self.image_newline.dtype()
    }

    /// The config the encoder was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The SAM tower.
    pub fn sam(&self) -> &Sam {
        &self.sam
    }

    /// The CLIP tower.
    pub fn clip(&self) -> &Clip {
        &self.clip
    }

    /// Encodes a page's views to the decoder's image-embedding sequence `[positions, hidden]`:
    /// tiles with newlines (gundam), the global view with newlines, then `view_seperator`.
    pub fn encode(&self, views: &Views) -> Result<Tensor> {
        Ok(self.encode_stages(views)?.image_embeds)
    }

    /// [`Encoder::encode`] returning every stage's output.
    pub fn encode_stages(&self, views: &Views) -> Result<Stages> {
        let mut timings = Timings::default();
        let t = Instant::now();
        let dtype = self.dtype();
        let global = views.global_tensor(&self.device)?.to_dtype(dtype)?;
        let tiles = match views.tiles_tensor(&self.device)? {
            Some(t) => Some(t.to_dtype(dtype)?),
            None => None,
        };
        timings.normalize = t.elapsed().as_secs_f64();
        let [sam_global, clip_global, proj_global] = self.towers(&global, &mut timings)?;
        let tiles = match tiles {
            Some(t) => Some(self.towers(&t, &mut timings)?),
            None => None,
        };
        let t = Instant::now();
        let image_embeds = layout::image_sequence(
            &proj_global.squeeze(0)?,
            tiles.as_ref().map(|t| (&t[2], views.tile_grid)),
            &self.image_newline,
            &self.view_seperator,
        )?;
        timings.projector += t.elapsed().as_secs_f64();
        Ok(Stages {
            sam_global,
            clip_global,
            proj_global,
            tiles,
            image_embeds,
            timings,
        })
    }

    /// SAM, CLIP and projector over normalised images `[n, 3, S, S]`.
    fn towers(&self, images: &Tensor, timings: &mut Timings) -> Result<[Tensor; 3]> {
        let t = Instant::now();
        let sam = self.sam.forward(images)?;
        timings.sam += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let clip = self.clip.forward(&sam)?;
        timings.clip += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let proj = self.projector.forward(&clip, &sam)?;
        timings.projector += t.elapsed().as_secs_f64();
        Ok([sam, clip, proj])
    }

    /// FLOPs of encoding `views`.
    pub fn flops(&self, views: &Views) -> Flops {
        let mut f = Flops::default();
        let mut add = |side: usize, count: usize| {
            let s = self.sam.flops(side);
            let k = count as f64;
            f.sam.patch_embed += k * s.patch_embed;
            f.sam.linear += k * s.linear;
            f.sam.attention += k * s.attention;
            f.sam.convs += k * s.convs;
            let t = (side / 64) * (side / 64);
            f.clip += k * self.clip.flops(t);
            f.projector += k * self.projector.flops(t);
        };
        add(views.global.width() as usize, 1);
        if let Some(t) = views.tiles.first() {
            add(t.width() as usize, views.tiles.len());
        }
        f
    }
}
