//! The DeepSeek-V2 decoder as DeepSeek-OCR runs it.
//!
//! Paper: DeepSeek-OCR, "Contexts Optical Compression" (arXiv 2510.18234), decoder
//! DeepSeek-3B-MoE. Reference: `modeling_deepseekv2.py` (`DeepseekV2Model`,
//! `DeepseekV2DecoderLayer`, `DeepseekV2ForCausalLM`) and `modeling_deepseekocr.py` (the image
//! embedding scatter) of the DeepSeek-OCR HF remote code. Checkpoint: `deepseek-ai/DeepSeek-OCR`
//! (`model.embed_tokens`, `model.layers.N.*`, `model.norm`, `lm_head`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use lethe_kernels::Half;

use crate::attention::Attention;
use crate::config::DecoderConfig;
use crate::error::{Error, Result};
use crate::moe::{Mlp, Moe, Routing};
use crate::ops::{causal_mask, Linear, Quantization, RmsNorm, Rotary};

/// The dtype the decoder computes in on `device`: f32 on CPU, bf16 on CUDA/Metal. Norms, the MoE
/// gate and the logits are f32 in every case.
pub fn compute_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

#[derive(Debug, Clone)]
enum FeedForward {
    Dense(Mlp),
    Moe(Moe),
}

/// One pre-norm decoder layer (`model.layers.N`).
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: FeedForward,
}

impl DecoderLayer {
    /// Loads layer `idx` under `vb` (`model.layers.{idx}`).
    pub fn new(
        cfg: &DecoderConfig,
        idx: usize,
        vb: VarBuilder,
        quant: Quantization,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let mlp = if cfg.is_moe_layer(idx) {
            FeedForward::Moe(Moe::new(cfg, vb.pp("mlp"), quant)?)
        } else {
            FeedForward::Dense(Mlp::new(vb.pp("mlp"), h, cfg.intermediate_size, quant)?)
        };
        Ok(Self {
            input_layernorm: RmsNorm::load(&vb.pp("input_layernorm"), h, cfg.rms_norm_eps)?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"), quant)?,
            post_attention_layernorm: RmsNorm::load(
                &vb.pp("post_attention_layernorm"),
                h,
                cfg.rms_norm_eps,
            )?,
            mlp,
        })
    }

    fn forward(
        &mut self,
        x: &Tensor,
        rotary: &Rotary,
        mask: Option<&Tensor>,
        offset: usize,
    ) -> Result<(Tensor, Option<Routing>)> {
        let h = self.input_layernorm.forward(x)?;
        let h = self.self_attn.forward(&h, rotary, mask, offset)?;
        self.feed_forward(&(x + h)?)
    }

    /// As [`DecoderLayer::forward`] for the last position only, `[b, 1, hidden]`: the
    /// attention caches every position's keys and values, but the other positions' outputs,
    /// which only a later layer would read, are never computed.
    fn forward_last(&mut self, x: &Tensor, rotary: &Rotary, offset: usize) -> Result<Tensor> {
        let h = self.input_layernorm.forward(x)?;
        let h = self.self_attn.forward_last(&h, rotary, offset)?;
        let last = x.narrow(1, x.dim(1)? - 1, 1)?;
        Ok(self.feed_forward(&(last + h)?)?.0)
    }

    /// The residual stream `x` after attention through the post-attention norm and the MLP.
    fn feed_forward(&self, x: &Tensor) -> Result<(Tensor, Option<Routing>)> {
        let h = self.post_attention_layernorm.forward(x)?;
        let (b, t, hidden) = h.dims3()?;
        let (h, routing) = match &self.mlp {
            FeedForward::Dense(m) => (m.forward(&h)?, None),
            FeedForward::Moe(m) => {
                let (y, r) = m.forward(&h.reshape((b * t, hidden))?)?;
                (y.reshape((b, t, hidden))?, Some(r))
            }
        };
        Ok(((x + h)?, routing))
    }

    fn weight_bytes(&self) -> usize {
        self.self_attn.weight_bytes()
            + match &self.mlp {
                FeedForward::Dense(m) => m.weight_bytes(),
                FeedForward::Moe(m) => m.weight_bytes(),
            }
    }
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Every position: `[b, t, vocab]`.
    All,
    /// Only the last position of each sequence: `[b, 1, vocab]` (what generation needs). The
    /// last layer then computes that position alone (every position's keys and values are still
    /// cached), so a prefill skips nearly a layer's work; the logits equal the last row of
    /// [`LogitsFor::All`]'s to rounding.
    Last,
}

/// Intermediate values of one forward pass, for layer-level parity checks.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// Residual stream after each layer, `[b, t, hidden]`.
    pub layer_outputs: Vec<Tensor>,
    /// Routing of each layer (`None` for dense layers), tokens flattened batch-major.
    pub routing: Vec<Option<Routing>>,
    /// Output of the final norm, `[b, t, hidden]`.
    pub final_norm: Option<Tensor>,
}

/// The decoder: token embedding, layers, final norm and `lm_head`, with a KV cache.
#[derive(Debug, Clone)]
pub struct DecoderModel {
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    cfg: DecoderConfig,
    device: Device,
    dtype: DType,
    quant: Quantization,
    seqlen: usize,
}

impl DecoderModel {
    /// Builds the decoder from `vb` rooted at the checkpoint's top level (tensor names
    /// `model.embed_tokens.weight`, `model.layers.N.*`, `model.norm.weight`, `lm_head.weight`).
    pub fn new(cfg: &DecoderConfig, vb: VarBuilder, quant: Quantization) -> Result<Self> {
        cfg.validate()?;
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let h = cfg.hidden_size;
        let m = vb.pp("model");
        let embed_tokens = compact_table(m.pp("embed_tokens").get((cfg.vocab_size, h), "weight")?)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, i, m.pp("layers").pp(i), quant))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(&m.pp("norm"), h, cfg.rms_norm_eps)?;
        let lm_head = Linear::load(&vb.pp("lm_head"), h, cfg.vocab_size, quant)?;
        let rotary = Rotary::new(
            cfg.head_dim(),
            cfg.rope_theta,
            cfg.max_position_embeddings,
            &device,
        )?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            cfg: cfg.clone(),
            device,
            dtype,
            quant,
            seqlen: 0,
        })
    }

    /// Loads `DIR/config.json` and every `DIR/*.safetensors` onto `device`, in [`compute_dtype`],
    /// with the linear layers stored as `quant` asks. Tensors are read one at a time
    /// ([`lethe_weights::Checkpoint`]), so loading needs the weights kept plus one tensor.
    pub fn load(dir: impl AsRef<Path>, device: &Device, quant: Quantization) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg = DecoderConfig::from_file(dir.join("config.json"))?;
        let files = safetensors_files(dir)?;
        let dtype = compute_dtype(device);
        // On the CPU, 16-bit weights are packed from their stored bits: no f32 copy, and no
        // scan for an exact 16-bit form.
        let vb = lethe_weights::Checkpoint::open(&files)
            .map_err(|source| Error::Weights {
                origin: dir.display().to_string(),
                source,
            })?
            .var_builder_for(dtype, device);
        Self::new(&cfg, vb, quant).map_err(|e| match e {
            Error::Candle(source) => Error::Weights {
                origin: dir.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Builds the decoder from the bytes of one safetensors file held in memory (a model embedded
    /// in a binary), in [`compute_dtype`], with the linear layers stored as `quant` asks.
    pub fn from_safetensors_bytes(
        cfg: &DecoderConfig,
        bytes: &[u8],
        device: &Device,
        quant: Quantization,
    ) -> Result<Self> {
        let weights = |source| Error::Weights {
            origin: "in-memory safetensors".to_string(),
            source,
        };
        let vb = VarBuilder::from_slice_safetensors(bytes, compute_dtype(device), device)
            .map_err(weights)?;
        Self::new(cfg, vb, quant).map_err(|e| match e {
            Error::Candle(source) => weights(source),
            other => other,
        })
    }

    /// Builds the decoder from in-memory f32 tensors named as in the checkpoint (tests, benches).
    pub fn from_tensors(
        cfg: &DecoderConfig,
        tensors: std::collections::HashMap<String, Tensor>,
        device: &Device,
        quant: Quantization,
    ) -> Result<Self> {
        let vb = VarBuilder::from_tensors(tensors, compute_dtype(device), device);
        Self::new(cfg, vb, quant)
    }

    /// The configuration.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// How the linear layers are stored.
    pub fn quantization(&self) -> Quantization {
        self.quant
    }

    /// Positions currently held in the KV cache.
    pub fn cached_len(&self) -> usize {
        self.seqlen
    }

    /// Bytes held by all weights (embedding included).
    pub fn weight_bytes(&self) -> usize {
        self.embed_tokens.elem_count() * self.embed_tokens.dtype().size_in_bytes()
            + self
                .layers
                .iter()
                .map(DecoderLayer::weight_bytes)
                .sum::<usize>()
            + self.lm_head.weight_bytes()
    }

    /// Embeds token ids `[b, t]` (u32) to `[b, t, hidden]`.
    pub fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        let max = flat.max(0)?.to_scalar::<u32>()?;
        if max as usize >= self.cfg.vocab_size {
            return Err(Error::Input(format!(
                "token id {max} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        Ok(self
            .embed_tokens
            .index_select(&flat, 0)?
            .to_dtype(self.dtype)?
            .reshape((b, t, self.cfg.hidden_size))?)
    }

    /// Embeds one prompt `[1, t, hidden]`: token embeddings, with the rows of `image_embeds`
    /// `[slots, hidden]` scattered in order into the positions holding `image_token_id`.
    pub fn embed_prompt(
        &self,
        ids: &[u32],
        image_token_id: u32,
        image_embeds: Option<&Tensor>,
    ) -> Result<Tensor> {
        let slots = ids.iter().filter(|&&i| i == image_token_id).count();
        let given = match image_embeds {
            Some(e) => {
                let (n, h) = e.dims2()?;
                if h != self.cfg.hidden_size {
                    return Err(Error::Input(format!(
                        "image embeddings have width {h}, the decoder's hidden size is {}",
                        self.cfg.hidden_size
                    )));
                }
                n
            }
            None => 0,
        };
        if slots != given {
            return Err(Error::Input(format!(
                "the prompt has {slots} image placeholder(s) (id {image_token_id}) but {given} image embedding row(s) were given"
            )));
        }
        if let Some((at, &id)) = ids
            .iter()
            .enumerate()
            .find(|&(_, &i)| i != image_token_id && i as usize >= self.cfg.vocab_size)
        {
            return Err(Error::Input(format!(
                "prompt token {at} has id {id}, outside the decoder's vocabulary of {} entries: \
                 the tokenizer does not belong to this model",
                self.cfg.vocab_size
            )));
        }
        let t = ids.len();
        let text = Tensor::from_slice(ids, (1, t), &self.device)?;
        if slots == 0 {
            return self.embed_ids(&text);
        }
        let Some(image) = image_embeds else {
            return self.embed_ids(&text);
        };
        let image = image.to_dtype(self.dtype)?;
        // Replace placeholder ids with 0 for the lookup, then splice runs of image rows in.
        let safe: Vec<u32> = ids
            .iter()
            .map(|&i| if i == image_token_id { 0 } else { i })
            .collect();
        let tok = self
            .embed_ids(&Tensor::from_slice(&safe, (1, t), &self.device)?)?
            .squeeze(0)?;
        let mut pieces = Vec::new();
        let mut next_image = 0usize;
        let mut pos = 0usize;
        while pos < t {
            let is_img = ids[pos] == image_token_id;
            let start = pos;
            while pos < t && (ids[pos] == image_token_id) == is_img {
                pos += 1;
            }
            let len = pos - start;
            if is_img {
                pieces.push(image.narrow(0, next_image, len)?);
                next_image += len;
            } else {
                pieces.push(tok.narrow(0, start, len)?);
            }
        }
        Ok(Tensor::cat(&pieces, 0)?.unsqueeze(0)?)
    }

    /// Runs `input_embeds` `[b, t, hidden]` at positions `seqlen_offset..seqlen_offset + t`,
    /// appending to the KV cache, and returns f32 logits for every position `[b, t, vocab]`.
    ///
    /// `seqlen_offset` must equal the cached length (0 starts a new sequence and drops the cache).
    pub fn forward(&mut self, input_embeds: &Tensor, seqlen_offset: usize) -> Result<Tensor> {
        self.forward_with(input_embeds, seqlen_offset, LogitsFor::All, None)
    }

    /// As [`DecoderModel::forward`], choosing which positions get logits and optionally
    /// recording intermediate values (a trace records every layer's output at every position,
    /// so with one the last layer computes every position even for [`LogitsFor::Last`]).
    pub fn forward_with(
        &mut self,
        input_embeds: &Tensor,
        seqlen_offset: usize,
        logits_for: LogitsFor,
        trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        if !self.device.is_cpu() {
            return self.forward_here(input_embeds, seqlen_offset, logits_for, trace);
        }
        // On the CPU the whole pass runs on one of rayon's workers: its products then split
        // over the other workers as local joins, where a caller outside the pool hands each one
        // over and sleeps until it is done (a decode step makes about 85 such products, one
        // wake-up each). The other workers spin for the pass's length (`run_hot`) instead of
        // sleeping between products.
        lethe_kernels::run_hot(|| self.forward_here(input_embeds, seqlen_offset, logits_for, trace))
    }

    /// [`DecoderModel::forward_with`] on the calling thread.
    fn forward_here(
        &mut self,
        input_embeds: &Tensor,
        seqlen_offset: usize,
        logits_for: LogitsFor,
        mut trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let (_, t, h) = input_embeds.dims3()?;
        if h != self.cfg.hidden_size {
            return Err(Error::Input(format!(
                "input embeddings have width {h}, expected {}",
                self.cfg.hidden_size
            )));
        }
        if t == 0 {
            return Err(Error::Input("empty input sequence".into()));
        }
        if seqlen_offset == 0 {
            self.clear_kv_cache();
        } else if seqlen_offset != self.seqlen {
            return Err(Error::Input(format!(
                "seqlen_offset {seqlen_offset} does not match the {} cached positions",
                self.seqlen
            )));
        }
        let mask = if t > 1 {
            Some(causal_mask(t, seqlen_offset, &self.device)?)
        } else {
            None
        };
        let mut x = input_embeds.to_dtype(self.dtype)?;
        // With logits for the last position only (and no trace asking for every layer's
        // output), the last layer computes that position alone: the others' outputs would feed
        // nothing, while their keys and values are still cached. A prefill saves nearly a
        // layer's work (llama.cpp skips the same rows).
        let last_alone = logits_for == LogitsFor::Last && trace.is_none();
        let layers = self.layers.len();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            if last_alone && i + 1 == layers {
                x = layer.forward_last(&x, &self.rotary, seqlen_offset)?;
                break;
            }
            let (y, routing) = layer.forward(&x, &self.rotary, mask.as_ref(), seqlen_offset)?;
            x = y;
            if let Some(tr) = trace.as_deref_mut() {
                tr.layer_outputs.push(x.clone());
                tr.routing.push(routing);
            }
        }
        self.seqlen = seqlen_offset + t;
        let x = match logits_for {
            LogitsFor::Last if !last_alone => x.narrow(1, t - 1, 1)?,
            _ => x,
        };
        let x = self.norm.forward(&x)?;
        if let Some(tr) = trace {
            tr.final_norm = Some(x.clone());
        }
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// Drops the KV cache of every layer.
    pub fn clear_kv_cache(&mut self) {
        for layer in &mut self.layers {
            layer.self_attn.clear_kv_cache();
        }
        self.seqlen = 0;
    }
}

/// The embedding table in bf16 (else f16) when it is f32 on the CPU and every value is exactly
/// one (a checkpoint stored in 16 bits, widened at load): half the bytes, the same rows once
/// widened.
fn compact_table(table: Tensor) -> Result<Tensor> {
    if !table.device().is_cpu() || table.dtype() != DType::F32 {
        return Ok(table);
    }
    let form = crate::ops::with_host_f32(&table, lethe_kernels::exact_half)?;
    Ok(match form {
        Some(Half::Bf16) => table.to_dtype(DType::BF16)?,
        Some(Half::F16) => table.to_dtype(DType::F16)?,
        None => table,
    })
}

/// The `*.safetensors` files of a checkpoint folder, sorted.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "safetensors") {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::NoWeights(dir.to_path_buf()));
    }
    Ok(files)
}
