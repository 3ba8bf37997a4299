//! Tensor helpers shared by the SAM and CLIP towers: PyTorch-exact table interpolation,
//! convolutions as im2col matmuls over token-major (HWC) activations, and weight fetching with
//! shape checks.

use candle_core::{CpuStorage, DType, Storage, StorageRef, Tensor};
use candle_nn::VarBuilder;

use rayon::prelude::*;
use std::sync::{Arc, Mutex};

use crate::cpu::{self, Act, MatRef, PackedB};
use crate::error::{Error, Result};

/// Read access to the f32 values of a contiguous CPU tensor.
pub(crate) struct HostView<'a> {
    guard: StorageRef<'a>,
    start: usize,
    len: usize,
}

impl HostView<'_> {
    /// The tensor's values in row-major order.
    pub(crate) fn slice(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.start + self.len],
            // `host_view` only builds views over CPU f32 storage.
            _ => &[],
        }
    }
}

/// A [`HostView`] when `t` is a contiguous f32 tensor in CPU memory, `None` otherwise (then
/// callers take the device-generic candle path).
pub(crate) fn host_view(t: &Tensor) -> Option<HostView<'_>> {
    let (guard, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    if !matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))) {
        return None;
    }
    Some(HostView {
        guard,
        start,
        len: end - start,
    })
}

/// Fetches `name` under `vb` in `vb`'s dtype and checks its shape, naming the full tensor path
/// on error.
pub(crate) fn get(vb: &VarBuilder, shape: &[usize], name: &str) -> Result<Tensor> {
    in_dtype(vb, get_as_given(vb, shape, name)?)
}

/// `t` in `vb`'s dtype: a 16-bit tensor from a builder keeping half
/// ([`lethe_weights::Checkpoint::var_builder_keeping_half`]) widened, any other as it is.
fn in_dtype(vb: &VarBuilder, t: Tensor) -> Result<Tensor> {
    if t.dtype() == vb.dtype() {
        return Ok(t);
    }
    Ok(lethe_weights::to_f32(&t)?.to_dtype(vb.dtype())?)
}

/// [`get`] in the dtype `vb` gives it in: from a builder keeping half, 16 bits as stored.
fn get_as_given(vb: &VarBuilder, shape: &[usize], name: &str) -> Result<Tensor> {
    let full = if vb.prefix().is_empty() {
        name.to_owned()
    } else {
        format!("{}.{name}", vb.prefix())
    };
    if !vb.contains_tensor(name) {
        return Err(Error::MissingTensor { name: full });
    }
    let t = vb.get_unchecked_dtype(name, vb.dtype())?;
    if t.dims() != shape {
        return Err(Error::TensorShape {
            name: full,
            expected: shape.to_vec(),
            found: t.dims().to_vec(),
        });
    }
    Ok(t)
}

/// A linear layer `y = x W^T + b` over the last dimension.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

/// A linear layer's weight as it is kept.
#[derive(Debug, Clone)]
enum Weight {
    /// For the CPU kernels, packed once at load: from a checkpoint's stored 16 bits as they are,
    /// or from f32 values, in 16 bits when every value is exactly bf16 or f16 (the `[out, in]`
    /// tensor is dropped, so the weights are held once).
    Packed(Arc<PackedB>),
    /// Any other dtype or device: the `[out, in]` tensor, for candle's matmul.
    Tensor(Tensor),
}

impl Linear {
    /// Loads `weight` `[out, in]` and `bias` `[out]` (when `bias`) under `vb`.
    pub(crate) fn load(vb: &VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = get_as_given(vb, &[out_dim, in_dim], "weight")?;
        let bias = if bias {
            Some(get(vb, &[out_dim], "bias")?)
        } else {
            None
        };
        if weight.dtype() != vb.dtype() {
            // Stored in 16 bits and given so for an f32 encoder: packed from its bits, with no
            // f32 copy and no scan for an exact form.
            if let Some(p) = lethe_weights::packed_from_bits(&weight) {
                return Ok(Self {
                    weight: Weight::Packed(Arc::new(p)),
                    bias,
                });
            }
        }
        Self::from_weight(in_dtype(vb, weight)?, bias)
    }

    /// From an already shaped `[out, in]` weight.
    pub(crate) fn from_weight(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        // A bf16 checkpoint's (or the f16 reader's) weights stay in 16 bits, widened as the
        // kernels read them: the same products, half the memory.
        let packed = host_view(&weight)
            .map(|w| Arc::new(PackedB::from_rows_compact(w.slice(), out_dim, in_dim)));
        let weight = match packed {
            Some(p) => Weight::Packed(p),
            None => Weight::Tensor(weight),
        };
        Ok(Self { weight, bias })
    }

    /// `(out, in)`.
    fn dims(&self) -> (usize, usize) {
        match &self.weight {
            Weight::Packed(p) => (p.n(), p.k()),
            Weight::Tensor(t) => {
                let d = t.dims();
                (d[0], d[1])
            }
        }
    }

    /// Applies the layer to `x` of shape `[.., in]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Act::None)
    }

    /// Applies the layer and then `act`, fused on CPU.
    pub(crate) fn forward_act(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let (out_dim, w_in) = self.dims();
        if in_dim != w_in {
            return Err(Error::BadInput(format!(
                "linear layer expects width {w_in}, got {in_dim}"
            )));
        }
        let rows = x.elem_count() / in_dim.max(1);
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = out_dim;
        let x = x.contiguous()?;
        let weight = match &self.weight {
            Weight::Packed(packed) => {
                let xv = host_view(&x).ok_or_else(|| {
                    Error::BadInput(format!(
                        "a CPU f32 layer was given a {:?} tensor on {:?}",
                        x.dtype(),
                        x.device()
                    ))
                })?;
                let bv = self.bias.as_ref().and_then(host_view);
                let out = packed.matmul_vec(
                    rows,
                    MatRef {
                        data: xv.slice(),
                        rs: in_dim,
                        cs: 1,
                    },
                    bv.as_ref().map(|b| b.slice()),
                    act,
                );
                return Ok(Tensor::from_vec(out, out_dims, x.device())?);
            }
            Weight::Tensor(w) => w,
        };
        let mut y = x.reshape((rows, in_dim))?.matmul(&weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let y = match act {
            Act::None => y,
            Act::Gelu => gelu(&y)?,
            Act::QuickGelu => quick_gelu(&y)?,
        };
        Ok(y.reshape(out_dims)?)
    }

    /// The bias `[out]`, or zeros for a layer without one: what the layer gives a zero row.
    pub(crate) fn bias_or_zeros(&self, device: &candle_core::Device) -> Result<Tensor> {
        match &self.bias {
            Some(b) => Ok(b.clone()),
            None => Ok(Tensor::zeros(self.dims().0, DType::F32, device)?),
        }
    }

    /// Multiply-accumulates of one row.
    pub(crate) fn macs_per_row(&self) -> usize {
        let (out_dim, in_dim) = self.dims();
        out_dim * in_dim
    }
}

/// A LayerNorm over the last dimension.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// Loads `weight` and `bias` `[dim]` under `vb`.
    pub(crate) fn load(vb: &VarBuilder, dim: usize, eps: f32) -> Result<Self> {
        Ok(Self {
            weight: get(vb, &[dim], "weight")?,
            bias: get(vb, &[dim], "bias")?,
            eps,
        })
    }

    /// Normalises the last dimension of `x`. Low-precision inputs are normalised in f32 and the
    /// result rounded back to their dtype, as PyTorch's bf16 LayerNorm does.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        if dtype == DType::F32 {
            let x = x.contiguous()?;
            return Ok(candle_nn::ops::layer_norm(
                &x,
                &self.weight,
                &self.bias,
                self.eps,
            )?);
        }
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let y = candle_nn::ops::layer_norm(
            &f32(x)?.contiguous()?,
            &f32(&self.weight)?,
            &f32(&self.bias)?,
            self.eps,
        )?;
        Ok(y.to_dtype(dtype)?)
    }
}

/// A bias-free 3x3 convolution (padding 1) over an HWC image, as an im2col matmul.
#[derive(Debug, Clone)]
pub(crate) struct Conv3x3 {
    /// `[out, 3 * 3 * in]`, taps ordered (kh, kw, in).
    linear: Linear,
    out_ch: usize,
    stride: usize,
}

impl Conv3x3 {
    /// Loads a PyTorch `[out, in, 3, 3]` weight stored at `vb` + `weight` and reorders it once.
    pub(crate) fn load(
        vb: &VarBuilder,
        in_ch: usize,
        out_ch: usize,
        stride: usize,
    ) -> Result<Self> {
        let w = get(vb, &[out_ch, in_ch, 3, 3], "weight")?;
        let weight = w
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .reshape((out_ch, 9 * in_ch))?;
        Ok(Self {
            linear: Linear::from_weight(weight, None)?,
            out_ch,
            stride,
        })
    }

    /// `x`: `[h, w, c]`; returns `[ho, wo, out]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (h, w, c) = x.dims3()?;
        let s = self.stride;
        let ho = (h + 2 - 3) / s + 1;
        let wo = (w + 2 - 3) / s + 1;
        if let Some(v) = host_view(x) {
            // On the CPU: the `[ho * wo, 9 c]` patches in one parallel pass (candle's pads,
            // narrows and concatenation were serial copies on the main thread).
            let (src, zeros) = (v.slice(), vec![0f32; c]);
            let col = tokens_in_parallel(ho * wo * 9, c, wo * 9, |yo, j| {
                let (xo, tap) = (j / 9, j % 9);
                let (y, x) = (
                    (yo * s + tap / 3).wrapping_sub(1),
                    (xo * s + tap % 3).wrapping_sub(1),
                );
                if y < h && x < w {
                    &src[(y * w + x) * c..][..c]
                } else {
                    &zeros
                }
            });
            let col = Tensor::from_vec(col, (ho * wo, 9 * c), x.device())?;
            return Ok(self.linear.forward(&col)?.reshape((ho, wo, self.out_ch))?);
        }
        // Pad so that every strided window fits a reshape by `s`.
        let ph = (ho - 1) * s + 3;
        let pw = (wo - 1) * s + 3;
        let padded = x
            .pad_with_zeros(0, 1, (ph + s).saturating_sub(h + 1))?
            .pad_with_zeros(1, 1, (pw + s).saturating_sub(w + 1))?;
        let mut taps = Vec::with_capacity(9);
        for kh in 0..3 {
            let rows = padded.narrow(0, kh, ho * s)?;
            let rows = if s > 1 {
                rows.reshape((ho, s, padded.dim(1)?, c))?
                    .narrow(1, 0, 1)?
                    .squeeze(1)?
            } else {
                rows
            };
            for kw in 0..3 {
                let cols = rows.narrow(1, kw, wo * s)?;
                let cols = if s > 1 {
                    cols.reshape((ho, wo, s, c))?.narrow(2, 0, 1)?.squeeze(2)?
                } else {
                    cols
                };
                taps.push(cols);
            }
        }
        let col = Tensor::cat(&taps, 2)?.reshape((ho * wo, 9 * c))?;
        let out = self.linear.forward(&col)?;
        Ok(out.reshape((ho, wo, self.out_ch))?)
    }

    /// Multiply-accumulates per output pixel.
    pub(crate) fn macs_per_pixel(&self) -> usize {
        self.linear.macs_per_row()
    }
}

/// `tokens` tokens of `c` values, copied in parallel in groups of `group` tokens: token `j` of
/// group `g` is `source(g, j)`. The vector is not zeroed first (at small, zeroing SAM's windows
/// alone was a serial `memset` of 16 MB a block).
///
/// # Panics
/// If a source is not `c` values long, or `group` does not divide `tokens`.
pub(crate) fn tokens_in_parallel<'a>(
    tokens: usize,
    c: usize,
    group: usize,
    source: impl Fn(usize, usize) -> &'a [f32] + Sync,
) -> Vec<f32> {
    assert!(
        c > 0 && group > 0 && tokens.is_multiple_of(group),
        "{tokens} tokens in groups of {group}"
    );
    let mut out = Vec::with_capacity(tokens * c);
    out.spare_capacity_mut()[..tokens * c]
        .par_chunks_mut(group * c)
        .enumerate()
        .for_each(|(g, dst)| {
            for (j, token) in dst.chunks_exact_mut(c).enumerate() {
                let src = source(g, j);
                assert_eq!(src.len(), c, "a token of {c} values");
                for (d, &v) in token.iter_mut().zip(src) {
                    d.write(v);
                }
            }
        });
    // SAFETY: the groups cover the `tokens * c` values exactly (`group` divides `tokens`) and
    // every token of every group was written whole just above.
    unsafe { out.set_len(tokens * c) };
    out
}

/// Tensors made once per grid side and kept: a position table resized for a mode's grid
/// (an antialiased bicubic resize, serial on the main thread, ~0.8% of a small encode when
/// made on every call).
#[derive(Debug, Default)]
pub(crate) struct PerGrid(Mutex<Vec<(usize, Tensor)>>);

impl Clone for PerGrid {
    fn clone(&self) -> Self {
        Self(Mutex::new(self.held().clone()))
    }
}

impl PerGrid {
    fn held(&self) -> std::sync::MutexGuard<'_, Vec<(usize, Tensor)>> {
        // A panic while holding the lock leaves whole entries only; keep using them.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The tensor kept for `grid`, or `make`'s, then kept.
    pub(crate) fn get_or(
        &self,
        grid: usize,
        make: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut held = self.held();
        if let Some((_, t)) = held.iter().find(|(g, _)| *g == grid) {
            return Ok(t.clone());
        }
        let t = make()?;
        held.push((grid, t.clone()));
        Ok(t)
    }
}

/// Reads a CPU-resident tensor as a host `Vec<f32>` (any layout).
pub(crate) fn to_host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// Weights and first index of an antialiased bicubic resize along one axis, as PyTorch's
/// `_upsample_bicubic2d_aa` computes them (`align_corners=False`, Keys `a = -0.5`).
fn aa_bicubic_weights(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f64>)> {
    fn filter(x: f64) -> f64 {
        const A: f64 = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
        } else {
            0.0
        }
    }
    let scale = in_size as f64 / out_size as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..out_size)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|j| filter((j as f64 - center + 0.5) * invscale))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin, w)
        })
        .collect()
}

/// `F.interpolate(x, (out_h, out_w), mode="bicubic", antialias=True, align_corners=False)` on
/// an HWC table `[in_h, in_w, c]`, width pass first as PyTorch does. Returns `[out_h, out_w, c]`.
pub(crate) fn resize_bicubic_aa(
    src: &[f32],
    (in_h, in_w, c): (usize, usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<f32> {
    let wx = aa_bicubic_weights(in_w, out_w);
    let wy = aa_bicubic_weights(in_h, out_h);
    let mut tmp = vec![0f64; in_h * out_w * c];
    for y in 0..in_h {
        for (x, (x0, w)) in wx.iter().enumerate() {
            let dst = &mut tmp[(y * out_w + x) * c..(y * out_w + x + 1) * c];
            for (t, &wt) in w.iter().enumerate() {
                let s = &src[(y * in_w + x0 + t) * c..(y * in_w + x0 + t + 1) * c];
                for (d, &v) in dst.iter_mut().zip(s) {
                    *d += wt * v as f64;
                }
            }
        }
    }
    let mut out = vec![0f32; out_h * out_w * c];
    for (y, (y0, w)) in wy.iter().enumerate() {
        for x in 0..out_w {
            let dst = &mut out[(y * out_w + x) * c..(y * out_w + x + 1) * c];
            for (ch, d) in dst.iter_mut().enumerate() {
                let mut acc = 0f64;
                for (t, &wt) in w.iter().enumerate() {
                    acc += wt * tmp[((y0 + t) * out_w + x) * c + ch];
                }
                *d = acc as f32;
            }
        }
    }
    out
}

/// `F.interpolate(x, size=out, mode="linear", align_corners=False)` along the rows of a
/// `[in, c]` table, with the source coordinate computed in f32 as PyTorch does on CPU.
pub(crate) fn resize_linear_rows(src: &[f32], (rows, c): (usize, usize), out: usize) -> Vec<f32> {
    let scale = rows as f32 / out as f32;
    let mut dst = vec![0f32; out * c];
    for i in 0..out {
        let real = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
        let i0 = real as usize;
        let i1 = if i0 < rows - 1 { i0 + 1 } else { i0 };
        let l1 = real - i0 as f32;
        let l0 = 1.0 - l1;
        for ch in 0..c {
            dst[i * c + ch] = l0 * src[i0 * c + ch] + l1 * src[i1 * c + ch];
        }
    }
    dst
}

/// Softmax over the last dimension computed in f32 whatever `x`'s dtype, returned as `dtype`.
///
/// Low-precision runs need the upcast: candle's CPU kernel sums a bf16 row in bf16, which lost
/// most of the encoder's accuracy; PyTorch and the GPU kernels accumulate in f32.
pub(crate) fn softmax_last_dim(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let p = candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?.contiguous()?)?;
    Ok(p.to_dtype(dtype)?)
}

/// `x * sigmoid(1.702 x)`.
pub(crate) fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    Ok((x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?)
}

/// Exact (erf) GELU, PyTorch's `nn.GELU()` default.
pub(crate) fn gelu(x: &Tensor) -> Result<Tensor> {
    Ok(x.gelu_erf()?)
}

/// Scaled dot-product attention without mask, from a fused projection's output `qkv`
/// `[b, t, 3 * heads * hd]` (q, k, v, each head after head) to `[b, t, heads * hd]`.
pub(crate) fn attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, dim3) = qkv.dims3()?;
    let dim = dim3 / 3;
    let hd = dim / heads;
    let scale = 1.0 / (hd as f64).sqrt();
    if let Some(x) = host_view(qkv) {
        // The kernel reads each head where the projection left it and writes the output
        // heads side by side: no copies on either side.
        let mut out = vec![0f32; b * t * dim];
        let x = x.slice();
        cpu::attention(b, heads, t, hd, x, scale as f32, None, None, &mut out);
        return Ok(Tensor::from_vec(out, (b, t, dim), qkv.device())?);
    }
    let (q, k, v) = split_heads(qkv, heads)?;
    let scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?;
    let probs = softmax_last_dim(&scores, v.dtype())?;
    merge_heads(&probs.matmul(&v)?, b)
}

/// The tensor path's q, k and v from a fused projection's output `[b, t, 3 * heads * hd]`:
/// each `[b * heads, t, hd]`, contiguous.
pub(crate) fn split_heads(qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, t, dim3) = qkv.dims3()?;
    let hd = dim3 / 3 / heads;
    let qkv = qkv
        .reshape((b, t, 3, heads, hd))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?
        .reshape((3, b * heads, t, hd))?;
    Ok((qkv.get(0)?, qkv.get(1)?, qkv.get(2)?))
}

/// [`split_heads`]'s inverse for an attention's output: `[b * heads, t, hd]` to
/// `[b, t, heads * hd]`.
pub(crate) fn merge_heads(x: &Tensor, b: usize) -> Result<Tensor> {
    let (bh, t, hd) = x.dims3()?;
    let heads = bh / b.max(1);
    Ok(x.reshape((b, heads, t, hd))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, t, heads * hd))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_sizes_are_identity() {
        let src: Vec<f32> = (0..4 * 4 * 2).map(|v| v as f32).collect();
        let out = resize_bicubic_aa(&src, (4, 4, 2), (4, 4));
        for (a, b) in src.iter().zip(&out) {
            assert!((a - b).abs() < 1e-5);
        }
        let lin = resize_linear_rows(&src, (8, 4), 8);
        assert_eq!(lin, src);
    }

    #[test]
    fn host_patches_match_candles_padded_taps() {
        // The host im2col (contiguous f32 input) against candle's pads, narrows and concat
        // (the same input as a strided view): odd sides, both strides, bit for bit.
        let dev = candle_core::Device::Cpu;
        let (c, out) = (3, 5);
        let w: Vec<f32> = (0..out * c * 9)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let weight = Tensor::from_vec(w, (out, c, 3, 3), &dev).unwrap();
        let weights = candle_nn::VarBuilder::from_tensors(
            [("weight".to_string(), weight)].into(),
            DType::F32,
            &dev,
        );
        for (h, wd, stride) in [(7, 5, 1), (7, 5, 2), (4, 6, 2), (2, 3, 1), (3, 2, 2)] {
            let conv = Conv3x3::load(&weights, c, out, stride).unwrap();
            let x: Vec<f32> = (0..h * wd * c)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
                .collect();
            let x = Tensor::from_vec(x, (h, wd, c), &dev).unwrap();
            let strided = x
                .transpose(0, 1)
                .unwrap()
                .contiguous()
                .unwrap()
                .transpose(0, 1)
                .unwrap();
            assert!(host_view(&x).is_some() && host_view(&strided).is_none());
            let (fast, slow) = (conv.forward(&x).unwrap(), conv.forward(&strided).unwrap());
            assert_eq!(fast.dims(), slow.dims(), "{h}x{wd} stride {stride}");
            let (fast, slow) = (to_host(&fast).unwrap(), to_host(&slow).unwrap());
            assert!(
                fast.iter()
                    .zip(&slow)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{h}x{wd} stride {stride}"
            );
        }
    }

    #[test]
    fn per_grid_keeps_what_it_made() {
        let dev = &candle_core::Device::Cpu;
        let kept = PerGrid::default();
        let made = |v: f32| move || Ok(Tensor::new(&[v], dev).unwrap());
        let first = kept.get_or(3, made(1.0)).unwrap();
        let again = kept.get_or(3, || panic!("made twice")).unwrap();
        let other = kept.clone().get_or(4, made(2.0)).unwrap();
        assert_eq!(to_host(&first).unwrap(), to_host(&again).unwrap());
        assert_eq!(to_host(&other).unwrap(), [2.0]);
        assert_eq!(to_host(&kept.get_or(4, made(5.0)).unwrap()).unwrap(), [5.0]);
    }
}
