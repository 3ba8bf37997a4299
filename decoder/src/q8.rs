//! `q8_0` weights multiplied in f32 on the CPU.
//!
//! The quantisation is ggml's `Q8_0` (what candle's `QTensor::quantize` makes): blocks of 32
//! weights along the input width, each stored as 32 signed bytes and one f16 scale
//! `d = max|w| / 127`, `q = round(w / d)`. What differs from candle's quantised matmul is the
//! product: the activations stay in f32 (candle quantises them to 8 bits too), each block's 32
//! products are summed in f32 and scaled once, and the output columns are split over the CPU
//! threads. A decode step is bound by reading weights, and these are 34 bytes per 32 weights, a
//! quarter of f32's.

use half::f16;

use crate::ops::{for_column_blocks, sum8};

/// Weights per quantisation block.
pub(crate) const BLOCK: usize = 32;

/// A `[out, in]` weight in `q8_0` form: `in` is a multiple of [`BLOCK`].
#[derive(Debug, Clone)]
pub(crate) struct Q8Matrix {
    out_dim: usize,
    in_dim: usize,
    /// One scale per block, row-major (`out * in / 32`), the f16 value widened to f32.
    scales: Vec<f32>,
    /// The quantised weights, row-major.
    quants: Vec<i8>,
}

impl Q8Matrix {
    /// Quantises a row-major `[out_dim, in_dim]` weight as ggml's reference `Q8_0` does.
    ///
    /// # Panics
    /// If `in_dim` is not a multiple of 32 or `w` is not `out_dim * in_dim` long.
    pub(crate) fn quantize(w: &[f32], out_dim: usize, in_dim: usize) -> Self {
        assert!(
            in_dim.is_multiple_of(BLOCK),
            "q8_0 needs an input width divisible by 32"
        );
        assert_eq!(w.len(), out_dim * in_dim, "weight length");
        let blocks = w.len() / BLOCK;
        let mut scales = Vec::with_capacity(blocks);
        let mut quants = Vec::with_capacity(w.len());
        for block in w.chunks_exact(BLOCK) {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d == 0.0 { 0.0 } else { 1.0 / d };
            scales.push(f16::from_f32(d).to_f32());
            quants.extend(block.iter().map(|v| (v * id).round() as i8));
        }
        Self {
            out_dim,
            in_dim,
            scales,
            quants,
        }
    }

    /// Output width.
    pub(crate) fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Bytes of the stored form as ggml counts it (34 per block).
    pub(crate) fn bytes(&self) -> usize {
        self.scales.len() * (2 + BLOCK)
    }

    /// The weight in f32, row-major `[out_dim, in_dim]`.
    pub(crate) fn dequantize(&self) -> Vec<f32> {
        use rayon::prelude::*;
        let mut out = vec![0f32; self.quants.len()];
        // Rows in parallel: prefill dequantises every weight it multiplies.
        out.par_chunks_mut(self.in_dim)
            .zip(self.quants.par_chunks(self.in_dim))
            .zip(self.scales.par_chunks(self.in_dim / BLOCK))
            .for_each(|((o, q), d)| {
                for ((ob, qb), &db) in o.chunks_exact_mut(BLOCK).zip(q.chunks_exact(BLOCK)).zip(d) {
                    for (v, &x) in ob.iter_mut().zip(qb) {
                        *v = f32::from(x) * db;
                    }
                }
            });
        out
    }

    /// `y = x W^T` for `rows` rows of `x` (row-major `[rows, in_dim]`); returns `[rows, out_dim]`.
    pub(crate) fn gemv(&self, x: &[f32], rows: usize) -> Vec<f32> {
        debug_assert_eq!(x.len(), rows * self.in_dim);
        let k = self.in_dim;
        let bpr = k / BLOCK;
        for_column_blocks(self.out_dim, self.out_dim * k, rows, |j0, j1, out| {
            let n = j1 - j0;
            for j in j0..j1 {
                let q = &self.quants[j * k..(j + 1) * k];
                let d = &self.scales[j * bpr..(j + 1) * bpr];
                for r in 0..rows {
                    out[r * n + (j - j0)] = dot_q8(q, d, &x[r * k..(r + 1) * k]);
                }
            }
        })
    }
}

/// `sum_b d[b] * sum_i q[32 b + i] x[32 b + i]`.
fn dot_q8(q: &[i8], d: &[f32], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::ops::has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked above); lengths are checked inside.
            return unsafe { dot_q8_avx2(q, d, x) };
        }
    }
    dot_q8_portable(q, d, x)
}

fn dot_q8_portable(q: &[i8], d: &[f32], x: &[f32]) -> f32 {
    let mut total = 0f32;
    for ((qb, xb), &db) in q.chunks_exact(BLOCK).zip(x.chunks_exact(BLOCK)).zip(d) {
        let mut acc = [0f32; 8];
        for (qc, xc) in qb.chunks_exact(8).zip(xb.chunks_exact(8)) {
            for i in 0..8 {
                acc[i] += f32::from(qc[i]) * xc[i];
            }
        }
        total += db * sum8(acc);
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_q8_avx2(q: &[i8], d: &[f32], x: &[f32]) -> f32 {
    // SAFETY: the caller checked AVX2 and FMA; the assert below bounds every block read of `q`, `d` and `x`.
    unsafe {
        use std::arch::x86_64::*;
        let blocks = d.len();
        assert!(q.len() >= blocks * BLOCK && x.len() >= blocks * BLOCK);
        let (qp, xp) = (q.as_ptr(), x.as_ptr());
        // Two totals so consecutive blocks' scale-multiply-adds do not wait on each other.
        let mut tot = [_mm256_setzero_ps(), _mm256_setzero_ps()];
        for b in 0..blocks {
            let base = b * BLOCK;
            let mut acc = _mm256_setzero_ps();
            for c in 0..4 {
                let off = base + 8 * c;
                // SAFETY: `off + 8 <= blocks * 32 <= len` for both slices.
                let q8 = _mm_loadl_epi64(qp.add(off) as *const __m128i);
                let qf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
                acc = _mm256_fmadd_ps(qf, _mm256_loadu_ps(xp.add(off)), acc);
            }
            let t = &mut tot[b & 1];
            *t = _mm256_fmadd_ps(_mm256_set1_ps(*d.get_unchecked(b)), acc, *t);
        }
        crate::ops::hsum256(_mm256_add_ps(tot[0], tot[1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn quantisation_is_within_half_a_step_and_matches_candle() {
        let (out, k) = (37, 96);
        let w = weights(out * k, 1);
        let q = Q8Matrix::quantize(&w, out, k);
        assert_eq!(q.bytes(), out * k / 32 * 34);
        let back = q.dequantize();
        for (b, (wb, rb)) in w.chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
            let step = q.scales[b];
            for (a, r) in wb.iter().zip(rb) {
                // Half a quantisation step, plus the f16 rounding of the scale (127 steps).
                assert!((a - r).abs() <= step * 0.5 + 127.0 * step * 1e-3, "{a} {r}");
            }
        }
        // candle's Q8_0 quantiser gives the same weights.
        let dev = candle_core::Device::Cpu;
        let t = candle_core::Tensor::from_vec(w.clone(), (out, k), &dev).unwrap();
        let cq =
            candle_core::quantized::QTensor::quantize(&t, candle_core::quantized::GgmlDType::Q8_0)
                .unwrap();
        let cd = cq.dequantize(&dev).unwrap().flatten_all().unwrap();
        assert_eq!(cd.to_vec1::<f32>().unwrap(), back);
    }

    #[test]
    fn gemv_equals_the_dequantised_product_on_every_path() {
        // Big enough to be split over threads, small rows and a width of several blocks.
        for (out, k, rows) in [(2048, 1024, 1), (64, 96, 3), (1500, 1280, 4)] {
            let w = weights(out * k, out as u32);
            let x = weights(rows * k, 7);
            let q = Q8Matrix::quantize(&w, out, k);
            let wd = q.dequantize();
            let got = q.gemv(&x, rows);
            for r in 0..rows {
                for j in 0..out {
                    let want: f64 = (0..k)
                        .map(|i| f64::from(x[r * k + i]) * f64::from(wd[j * k + i]))
                        .sum();
                    let g = got[r * out + j];
                    assert!(
                        (f64::from(g) - want).abs() < 1e-4,
                        "[{out}x{k}] row {r} col {j}: {g} vs {want}"
                    );
                    let portable = dot_q8_portable(
                        &q.quants[j * k..(j + 1) * k],
                        &q.scales[j * k / 32..(j + 1) * k / 32],
                        &x[r * k..(r + 1) * k],
                    );
                    assert!((f64::from(portable) - want).abs() < 1e-4);
                }
            }
        }
    }
}
