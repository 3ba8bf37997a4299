//! Tensor helpers shared by the decoder's blocks: linear layers (plain or quantised), RMSNorm,
//! rotary position tables, the causal mask.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, DType, Device, Module, Storage, Tensor, D};
use candle_nn::VarBuilder;
use lethe_kernels::{Act, MatRef, PackedB};

use crate::error::{Error, Result};

/// How the decoder's linear layers are stored and multiplied.
///
/// Quantised forms are made from the f32/bf16 checkpoint at load time (ggml's block formats, as
/// candle quantises). On the CPU, `q8_0` layers are `lethe-kernels` panels widened as the
/// products read them, with f32 activations; `q4k` uses candle's quantised matmul. Norms, the MoE gate, the embedding and everything outside the
/// linear layers stay in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Quantization {
    /// No quantisation: weights in the compute dtype (f32 on CPU).
    #[default]
    None,
    /// ggml `Q8_0`: 8-bit blocks of 32 with an f16 scale (8.5 bits a weight).
    Q8_0,
    /// ggml `Q4_K`: 4-bit super-blocks of 256 (4.5 bits a weight). Layers whose input width is
    /// not a multiple of 256 (e.g. the experts' `down_proj`, width 896) fall back to `Q8_0`.
    Q4K,
}

impl Quantization {
    /// Parses `none`/`f32`, `q8_0`/`q8`, `q4k`/`q4_k`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "f32" | "bf16" | "f16" => Ok(Self::None),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            "q4k" | "q4_k" => Ok(Self::Q4K),
            other => Err(Error::Input(format!(
                "unknown quantisation {other:?} (expected none, q8_0 or q4k)"
            ))),
        }
    }

    /// The ggml type for a weight of input width `in_dim`, or `None` to keep it unquantised.
    fn ggml_type(self, in_dim: usize) -> Option<GgmlDType> {
        match self {
            Self::None => None,
            Self::Q8_0 if in_dim.is_multiple_of(32) => Some(GgmlDType::Q8_0),
            Self::Q4K if in_dim.is_multiple_of(256) => Some(GgmlDType::Q4K),
            Self::Q4K if in_dim.is_multiple_of(32) => Some(GgmlDType::Q8_0),
            _ => None,
        }
    }

    /// Short name (`none`, `q8_0`, `q4k`).
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4k",
        }
    }
}

impl std::str::FromStr for Quantization {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone)]
enum LinearWeight {
    /// f32 or `q8_0` on the CPU: packed once at load for Lethe's GEMM (`lethe-kernels`), the
    /// checkpoint's tensor dropped, so the weight is held once.
    Packed(Arc<PackedB>),
    /// Any other device or dtype: candle's matmul.
    Dense(Tensor),
    /// Any other quantisation, or `q8_0` on a GPU: candle's quantised matmul.
    Quant(QMatMul),
}

/// A bias-free linear layer `y = x W^T`, with `W` stored `[out, in]` as in PyTorch.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    out_dim: usize,
}

impl Linear {
    /// Reads `weight` of shape `[out_dim, in_dim]` under `vb` and stores it as `quant` asks.
    pub fn load(
        vb: &VarBuilder,
        in_dim: usize,
        out_dim: usize,
        quant: Quantization,
    ) -> Result<Self> {
        let w = vb.get((out_dim, in_dim), "weight")?;
        Self::from_given(w, vb.dtype(), quant)
    }

    /// Wraps a `[out, in]` weight as a `VarBuilder` of dtype `compute` returned it: in that
    /// dtype, or, from a CPU builder keeping half (`Checkpoint::var_builder_keeping_half`), in
    /// the 16 bits it was stored in, which are packed as they are unless `quant` quantises.
    pub fn from_given(w: Tensor, compute: DType, quant: Quantization) -> Result<Self> {
        if w.dtype() == compute {
            return Self::from_weight(w, quant);
        }
        let (out_dim, in_dim) = w.dims2()?;
        if quant.ggml_type(in_dim).is_none() {
            if let Some(p) = lethe_weights::packed_from_bits(&w) {
                return Ok(Self {
                    weight: LinearWeight::Packed(Arc::new(p)),
                    out_dim,
                });
            }
        }
        Self::from_weight(lethe_weights::to_f32(&w)?.to_dtype(compute)?, quant)
    }

    /// Wraps a `[out, in]` weight.
    pub fn from_weight(w: Tensor, quant: Quantization) -> Result<Self> {
        let (out_dim, in_dim) = w.dims2()?;
        let weight = match quant.ggml_type(in_dim) {
            Some(GgmlDType::Q8_0) if w.device().is_cpu() => {
                // ggml's Q8_0, held in the kernels' panel order: decode steps widen it in
                // registers, a prefill one panel at a time into the GEMM.
                let w = w.to_dtype(DType::F32)?;
                let packed =
                    with_host_f32(&w, |values| PackedB::from_rows_q8(values, out_dim, in_dim))?;
                LinearWeight::Packed(Arc::new(packed))
            }
            Some(t) => {
                let q = QTensor::quantize(&w.to_dtype(DType::F32)?, t)?;
                LinearWeight::Quant(QMatMul::from_qtensor(q)?)
            }
            _ if w.device().is_cpu() && w.dtype() == DType::F32 => {
                // Packed from the tensor's own storage; a checkpoint stored in bf16 or f16
                // keeps its 16 bits (the same products).
                let packed = with_host_f32(&w, |values| {
                    PackedB::from_rows_compact(values, out_dim, in_dim)
                })?;
                LinearWeight::Packed(Arc::new(packed))
            }
            _ => LinearWeight::Dense(w),
        };
        Ok(Self { weight, out_dim })
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// The weight when it is packed for `lethe-kernels` (f32, bf16/f16 held, or `q8_0` on the
    /// CPU), for products computed on host slices.
    pub(crate) fn packed(&self) -> Option<&PackedB> {
        match &self.weight {
            LinearWeight::Packed(p) => Some(p),
            _ => None,
        }
    }

    /// Bytes held by the weight.
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            LinearWeight::Packed(p) => p.bytes(),
            LinearWeight::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            LinearWeight::Quant(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            LinearWeight::Quant(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => {
                w.elem_count() * w.dtype().size_in_bytes()
            }
        }
    }

    /// Applies the layer over the last dimension of `x` (any rank).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims.last().copied().unwrap_or(0);
        let rows = x.elem_count() / in_dim.max(1);
        let x2 = x.reshape((rows, in_dim))?;
        let y = match &self.weight {
            LinearWeight::Packed(p) => {
                // Read in place when the rows are contiguous f32 (no copy).
                let y = with_host_f32(&x2.to_dtype(DType::F32)?, |x| packed_product(p, x, rows))?;
                Tensor::from_vec(y, (rows, self.out_dim), x2.device())?.to_dtype(x2.dtype())?
            }
            LinearWeight::Dense(w) => x2.matmul(&w.t()?)?,
            LinearWeight::Quant(q) => {
                let dt = x2.dtype();
                q.forward(&x2.to_dtype(DType::F32)?)?.to_dtype(dt)?
            }
        };
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = self.out_dim;
        }
        Ok(y.reshape(out_dims)?)
    }
}

/// Calls `f` on the f32 values of a CPU tensor, in place when its storage is contiguous, else on
/// a copy.
pub(crate) fn with_host_f32<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    {
        let (guard, layout) = t.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) =
            (&*guard, layout.contiguous_offsets())
        {
            return Ok(f(&v[start..end]));
        }
    }
    Ok(f(&t.flatten_all()?.to_vec1::<f32>()?))
}

/// `x W^T` for `rows` rows of `x` (row-major), with `W` packed.
pub(crate) fn packed_product(w: &PackedB, x: &[f32], rows: usize) -> Vec<f32> {
    w.matmul_vec(rows, MatRef::rows(x, w.k()), None, Act::None)
}

/// RMSNorm as the reference: normalise in f32, cast back, then multiply by the weight.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Reads `weight` of shape `[dim]` under `vb`.
    pub fn load(vb: &VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: lethe_weights::to_f32(&vb.get(dim, "weight")?)?.to_dtype(vb.dtype())?,
            eps,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dt = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_mul(&(var + self.eps)?.sqrt()?.recip()?)?;
        normed
            .to_dtype(dt)?
            .broadcast_mul(&self.weight.to_dtype(dt)?)
    }
}

/// Rotary position tables (non-interleaved, rotate-half), computed in f32 as the reference.
#[derive(Debug, Clone)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    /// Tables for positions `0..max_positions` and head dimension `head_dim`.
    pub fn new(head_dim: usize, theta: f64, max_positions: usize, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let base = theta as f32;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0f32 / base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for f in &inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_positions, half), device)?,
            sin: Tensor::from_vec(sin, (max_positions, half), device)?,
        })
    }

    /// Number of positions the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotates `x` of shape `[b, heads, t, head_dim]` at positions `offset..offset + t`.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (_, _, t, _) = x.dims4()?;
        if offset + t > self.max_positions() {
            return Err(Error::Input(format!(
                "sequence of {} positions exceeds max_position_embeddings {}",
                offset + t,
                self.max_positions()
            )));
        }
        let dt = x.dtype();
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        let y = candle_nn::rotary_emb::rope(&x.to_dtype(DType::F32)?.contiguous()?, &cos, &sin)?;
        Ok(y.to_dtype(dt)?)
    }
}

/// Additive causal mask `[t, offset + t]`: 0 where query `i` may see key `j`, -inf elsewhere.
pub fn causal_mask(t: usize, offset: usize, device: &Device) -> Result<Tensor> {
    let total = offset + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j <= i + offset {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, total), device)?)
}

/// `silu(gate) * up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((candle_nn::ops::silu(gate)? * up)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded values in [-1, 1) (xorshift64*, seed fixed), so a run is reproducible.
    fn seeded(seed: u64, n: usize) -> Vec<f32> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
                v as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn q8_linear_holds_candles_q8_0_weights_and_multiplies_them_in_f32() {
        let dev = Device::Cpu;
        // A decode step (one thread and split), an expert's few tokens, a prefill.
        for (case, &(rows, out, k)) in [(1, 37, 96), (1, 2048, 1024), (3, 64, 96), (40, 300, 1280)]
            .iter()
            .enumerate()
        {
            let w = Tensor::from_vec(seeded(30 + case as u64, out * k), (out, k), &dev).unwrap();
            let lin = Linear::from_weight(w.clone(), Quantization::Q8_0).unwrap();
            let LinearWeight::Packed(p) = &lin.weight else {
                panic!("q8_0 on the CPU is packed");
            };
            assert_eq!(p.storage(), "q8_0");
            // The same weights as candle's Q8_0 quantiser makes (ggml's reference).
            let cq = candle_core::quantized::QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
            let deq = cq.dequantize(&dev).unwrap();
            let want_w = deq.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(p.to_rows(), want_w, "{out}x{k}: dequantised weights");
            // Products against the dequantised weight in f64, activations kept in f32.
            let x = seeded(40 + case as u64, rows * k);
            let got = lin
                .forward(&Tensor::from_vec(x.clone(), (rows, k), &dev).unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for r in 0..rows {
                for j in 0..out {
                    let want: f64 = (0..k)
                        .map(|i| f64::from(x[r * k + i]) * f64::from(want_w[j * k + i]))
                        .sum();
                    let g = f64::from(got[r * out + j]);
                    assert!(
                        (g - want).abs() < 1e-4,
                        "{out}x{k} row {r} col {j}: {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn packed_linear_equals_candle_matmul() {
        let dev = Device::Cpu;
        // A decode step's rows (one thread below 2 M products, columns split above), an expert's
        // share of a prefill, a whole prefill; widths not multiples of the 32-column panels.
        for (rows, out, k) in [
            (1, 1001, 300),
            (3, 2000, 1000),
            (4, 2000, 1000),
            (26, 900, 1280),
        ]
        .into_iter()
        .chain([(279, 330, 256)])
        {
            let seed = (rows * 31 + out) as u64;
            let x = Tensor::from_vec(seeded(seed, rows * k), (rows, k), &dev).unwrap();
            let w = Tensor::from_vec(seeded(seed + 1, out * k), (out, k), &dev).unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let linear = Linear::from_weight(w, Quantization::None).unwrap();
            assert!(matches!(linear.weight, LinearWeight::Packed(_)));
            // Held once, in f32 (random values have no 16-bit form), the last panel padded.
            assert_eq!(linear.weight_bytes(), out.div_ceil(32) * 32 * k * 4);
            let got = linear.forward(&x).unwrap();
            assert_eq!(got.dims(), &[rows, out]);
            let d = (want - got)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            // Two summation orders of k products, each at most 1 in size, differ by at most about
            // 2 k eps (the classic bound); the reorderings here stay far inside it.
            let bound = 2.0 * k as f32 * f32::EPSILON;
            assert!(d <= bound, "rows {rows}, out {out}, k {k}: {d} > {bound}");
        }
    }

    #[test]
    fn a_bf16_checkpoint_keeps_half_the_bytes_and_the_same_products() {
        let dev = Device::Cpu;
        let (rows, out, k) = (5, 96, 640);
        let x = Tensor::from_vec(seeded(7, rows * k), (rows, k), &dev).unwrap();
        // A bf16 tensor as a checkpoint stores it, widened to f32 as the loader reads it.
        let w = Tensor::from_vec(seeded(8, out * k), (out, k), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let plain = Tensor::from_vec(
            w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            (out, k),
            &dev,
        )
        .unwrap();
        let linear = Linear::from_weight(w, Quantization::None).unwrap();
        assert_eq!(linear.weight_bytes(), out * k * 2);
        let want = x.matmul(&plain.t().unwrap()).unwrap();
        let got = linear.forward(&x).unwrap();
        let d = (want - got).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() <= 2.0 * k as f32 * f32::EPSILON);
    }

    #[test]
    fn quantization_names_parse() {
        assert_eq!(Quantization::parse("q8_0").unwrap(), Quantization::Q8_0);
        assert_eq!(Quantization::parse("Q4K").unwrap(), Quantization::Q4K);
        assert_eq!(Quantization::parse("none").unwrap(), Quantization::None);
        assert!(Quantization::parse("q3").is_err());
    }
}
