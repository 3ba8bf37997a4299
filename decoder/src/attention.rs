//! Multi-head self-attention with rotary positions and a KV cache.
//!
//! Mirrors the attention DeepSeek-OCR's decoder runs when `use_mla = false`: transformers'
//! `LlamaAttention` (eager) as called from `modeling_deepseekv2.py` of the DeepSeek-OCR HF remote
//! code. q, k, v, o without bias; rotate-half RoPE over the whole head; causal; softmax in f32.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use crate::config::DecoderConfig;
use crate::error::Result;
use lethe_kernels::{attend_step, causal_attention, KvBlocks};

use crate::ops::{with_host_f32, Linear, Quantization, Rotary};

/// One attention block (`model.layers.N.self_attn`).
#[derive(Debug, Clone)]
pub struct Attention {
    /// `q_proj`, `k_proj` and `v_proj` stacked (`[(heads + 2 kv_heads) head_dim, hidden]`):
    /// one product instead of three over the same input.
    qkv_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    kv_cache: Option<KvCache>,
}

/// Keys and values of the positions seen so far, `[b, kv_heads, capacity, head_dim]` each, the
/// first `len` positions filled. New positions are written in place; the buffers grow by
/// doubling, so a generated token copies only its own keys and values (concatenating on every
/// step copied the whole cache: quadratic in the sequence).
#[derive(Debug)]
struct KvCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

/// Positions a cache holds at least when it is first made, beyond the prefill.
const KV_HEADROOM: usize = 256;

impl KvCache {
    /// A cache holding `k`, `v` (`[b, kv_heads, t, head_dim]`), with room to grow.
    fn new(k: &Tensor, v: &Tensor) -> Result<Self> {
        let t = k.dim(2)?;
        let mut cache = Self {
            k: Self::buffer(k, t + KV_HEADROOM)?,
            v: Self::buffer(v, t + KV_HEADROOM)?,
            len: 0,
        };
        cache.append(k, v)?;
        Ok(cache)
    }

    fn buffer(like: &Tensor, capacity: usize) -> Result<Tensor> {
        let (b, h, _, d) = like.dims4()?;
        Ok(Tensor::zeros(
            (b, h, capacity, d),
            like.dtype(),
            like.device(),
        )?)
    }

    /// Writes `k`, `v` after the filled positions and returns views of all of them.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let capacity = self.k.dim(2)?;
        if self.len + t > capacity {
            let capacity = (2 * capacity).max(self.len + t);
            for buf in [&mut self.k, &mut self.v] {
                let grown = Self::buffer(buf, capacity)?;
                grown.slice_set(&buf.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                *buf = grown;
            }
        }
        self.k.slice_set(&k.contiguous()?, 2, self.len)?;
        self.v.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len += t;
        let (k, v) = (
            self.k.narrow(2, 0, self.len)?,
            self.v.narrow(2, 0, self.len)?,
        );
        if k.device().is_cpu() {
            // The CPU matmul reads the views as they are (each head's rows contiguous).
            Ok((k, v))
        } else {
            // Untested off the CPU: give the GPU's matmul the layout it always had.
            Ok((k.contiguous()?, v.contiguous()?))
        }
    }
}

impl KvCache {
    /// A decode step's attention on the CPU in f32: `q` (`[b, heads, 1, head_dim]`) against
    /// the cache as it lies (`lethe_kernels::attend_step`), returned as `[b, 1, heads *
    /// head_dim]`. `None` elsewhere (another device or dtype): the caller runs the general path.
    fn attend_step(&self, q: &Tensor, heads: usize, head_dim: usize) -> Result<Option<Tensor>> {
        if !q.device().is_cpu() || q.dtype() != DType::F32 || self.k.dtype() != DType::F32 {
            return Ok(None);
        }
        let (b, kv_heads, capacity, _) = self.k.dims4()?;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut out = vec![0f32; b * heads * head_dim];
        with_host_f32(q, |q| {
            with_host_f32(&self.k, |k| {
                with_host_f32(&self.v, |v| {
                    let kv = KvBlocks {
                        k,
                        v,
                        capacity,
                        len: self.len,
                    };
                    attend_step(b, heads, kv_heads, head_dim, q, kv, scale, &mut out)
                })
            })
        })???;
        Ok(Some(Tensor::from_vec(
            out,
            (b, 1, heads * head_dim),
            q.device(),
        )?))
    }
}

impl Clone for KvCache {
    /// A copy with buffers of its own (the originals are written in place).
    fn clone(&self) -> Self {
        let copy = |t: &Tensor| t.copy().expect("copying a KV cache buffer");
        Self {
            k: copy(&self.k),
            v: copy(&self.v),
            len: self.len,
        }
    }
}

impl Attention {
    /// Loads `q_proj`, `k_proj`, `v_proj`, `o_proj` under `vb`.
    pub fn new(cfg: &DecoderConfig, vb: VarBuilder, quant: Quantization) -> Result<Self> {
        let h = cfg.hidden_size;
        let hd = cfg.head_dim();
        let nh = cfg.num_attention_heads;
        let nkv = cfg.num_kv_heads();
        Ok(Self {
            qkv_proj: Linear::from_given(
                Tensor::cat(
                    &[
                        vb.pp("q_proj").get((nh * hd, h), "weight")?,
                        vb.pp("k_proj").get((nkv * hd, h), "weight")?,
                        vb.pp("v_proj").get((nkv * hd, h), "weight")?,
                    ],
                    0,
                )?,
                vb.dtype(),
                quant,
            )?,
            o_proj: Linear::load(&vb.pp("o_proj"), nh * hd, h, quant)?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            kv_cache: None,
        })
    }

    /// Attends `x` `[b, t, hidden]` at positions `offset..offset + t` over the cached keys plus
    /// its own; `mask` is the additive causal mask `[t, offset + t]` (`None` when `t == 1`).
    pub fn forward(
        &mut self,
        x: &Tensor,
        rotary: &Rotary,
        mask: Option<&Tensor>,
        offset: usize,
    ) -> Result<Tensor> {
        self.forward_rows(x, rotary, mask, offset, false)
    }

    /// As [`Attention::forward`], returning only the last position's output `[b, 1, hidden]`:
    /// every position's keys and values are cached, but only the last query is attended and
    /// projected (it sees every position, so no mask is needed). A prefill's last layer needs
    /// no more when only the last position gets logits.
    pub fn forward_last(&mut self, x: &Tensor, rotary: &Rotary, offset: usize) -> Result<Tensor> {
        self.forward_rows(x, rotary, None, offset, true)
    }

    fn forward_rows(
        &mut self,
        x: &Tensor,
        rotary: &Rotary,
        mask: Option<&Tensor>,
        offset: usize,
        last_only: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let split = |y: Tensor, heads: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let qkv = self.qkv_proj.forward(x)?;
        let (qw, kw) = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let q = split(qkv.narrow(2, 0, qw)?, self.num_heads)?;
        let k = split(qkv.narrow(2, qw, kw)?, self.num_kv_heads)?;
        let v = split(qkv.narrow(2, qw + kw, kw)?, self.num_kv_heads)?;
        let q = rotary.apply(&q, offset)?;
        let k = rotary.apply(&k, offset)?;
        let (q, rows) = if last_only && t > 1 {
            (q.narrow(2, t - 1, 1)?.contiguous()?, 1)
        } else {
            (q, t)
        };

        let (k, v) = match &mut self.kv_cache {
            Some(cache) if offset > 0 => cache.append(&k, &v)?,
            _ => {
                self.kv_cache = Some(KvCache::new(&k, &v)?);
                (k, v)
            }
        };
        if rows == 1 && (offset > 0 || last_only) {
            // One query against the whole cache: a decode step's attention.
            if let Some(cache) = &self.kv_cache {
                if let Some(out) = cache.attend_step(&q, self.num_heads, self.head_dim)? {
                    return self.o_proj.forward(&out);
                }
            }
        }

        if offset == 0 && rows > 1 {
            if let Some(out) = self.causal_on_cpu(&q, &k, &v)? {
                return self.o_proj.forward(&out);
            }
        }
        let rep = self.num_heads / self.num_kv_heads;
        let (k, v) = if rep > 1 {
            (repeat_kv(&k, rep)?, repeat_kv(&v, rep)?)
        } else {
            (k, v)
        };
        let dt = q.dtype();
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dt)?;
        let out = probs.matmul(&v)?;
        let out = out
            .transpose(1, 2)?
            .reshape((b, rows, self.num_heads * self.head_dim))?;
        self.o_proj.forward(&out)
    }

    /// A prefill's causal attention on the CPU in f32 (`lethe_kernels::causal_attention`: the
    /// masked scores are never computed, and the heads are written where `o_proj` reads them),
    /// `[b, t, heads * head_dim]`; `None` elsewhere (another device or dtype).
    fn causal_on_cpu(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Option<Tensor>> {
        let f32_cpu = |x: &Tensor| x.device().is_cpu() && x.dtype() == DType::F32;
        if !(f32_cpu(q) && f32_cpu(k) && f32_cpu(v)) {
            return Ok(None);
        }
        let (b, heads, t, hd) = q.dims4()?;
        let kv_heads = k.dim(1)?;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; b * t * heads * hd];
        with_host_f32(q, |q| {
            with_host_f32(k, |k| {
                with_host_f32(v, |v| {
                    causal_attention(b, heads, kv_heads, t, hd, [q, k, v], scale, &mut out)
                })
            })
        })???;
        Ok(Some(Tensor::from_vec(out, (b, t, heads * hd), q.device())?))
    }

    /// Number of cached positions.
    pub fn cached_len(&self) -> usize {
        self.kv_cache.as_ref().map_or(0, |c| c.len)
    }

    /// Drops the cached keys and values.
    pub fn clear_kv_cache(&mut self) {
        self.kv_cache = None;
    }

    /// Bytes held by the projection weights.
    pub fn weight_bytes(&self) -> usize {
        self.qkv_proj.weight_bytes() + self.o_proj.weight_bytes()
    }
}

fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, h, rep, t, d))?
        .reshape((b, h * rep, t, d))?)
}
