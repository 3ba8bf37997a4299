//! Attention for a decode step: one new query row per head against a KV cache.
//!
//! A GEMM for a single query row is mostly overhead (packing, dispatch, a second pass for the
//! softmax): here each head is three passes over its cached rows: dot products, softmax, and a
//! weighted sum of the value rows, all reading the cache where it lies.

use rayon::prelude::*;

use crate::{has_fma, softmax_row};

/// A KV cache as the decoder keeps it: `k` and `v` are each `blocks` blocks of
/// `[capacity, head_dim]` row-major (one block per batch row and key/value head, in that order),
/// of which the first `len` rows are filled. Rows past `len` are never read.
#[derive(Clone, Copy)]
pub struct KvBlocks<'a> {
    /// Keys.
    pub k: &'a [f32],
    /// Values, laid out as the keys.
    pub v: &'a [f32],
    /// Rows a block has room for.
    pub capacity: usize,
    /// Rows filled, the new position's included.
    pub len: usize,
}

/// Below this many multiply-adds a step runs on the calling thread: a thread hand-off costs
/// about what a few heads of a short cache do.
const PARALLEL_MIN_WORK: usize = 1 << 17;

/// `out = softmax(q k^T * scale) v` for one query row per head: `q` and `out` are
/// `[batch, heads, head_dim]`, `kv` holds `batch * kv_heads` blocks, and query head `h` reads
/// key/value head `h / (heads / kv_heads)` of its batch row (grouped-query attention when
/// `kv_heads < heads`). Every cached row attends: a decode step's causal mask masks nothing.
///
/// # Panics
/// If `heads` is not a multiple of `kv_heads`, `len` is 0 or above `capacity`, or a slice is
/// shorter than its shape says.
#[allow(clippy::too_many_arguments)]
pub fn attend_step(
    batch: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    q: &[f32],
    kv: KvBlocks,
    scale: f32,
    out: &mut [f32],
) {
    assert!(
        kv_heads > 0 && heads.is_multiple_of(kv_heads),
        "{heads} query heads over {kv_heads} key/value heads"
    );
    assert!(
        kv.len > 0 && kv.len <= kv.capacity,
        "{} cached rows in blocks of {}",
        kv.len,
        kv.capacity
    );
    let rows = batch * heads;
    let block = kv.capacity * head_dim;
    assert!(q.len() >= rows * head_dim && out.len() >= rows * head_dim);
    assert!(kv.k.len() >= batch * kv_heads * block && kv.v.len() >= batch * kv_heads * block);
    let group = heads / kv_heads;
    let simd = has_fma();
    let one = |r: usize, o: &mut [f32], scores: &mut Vec<f32>| {
        let (b, h) = (r / heads, r % heads);
        let at = (b * kv_heads + h / group) * block;
        let filled = kv.len * head_dim;
        let k = &kv.k[at..at + filled];
        let v = &kv.v[at..at + filled];
        let q = &q[r * head_dim..(r + 1) * head_dim];
        scores.clear();
        scores.resize(kv.len, 0.0);
        if simd {
            // SAFETY: `has_fma()` checked that the CPU has AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                match head_dim {
                    64 => head_avx2_64(q, k, v, scale, scores, o),
                    _ => head_avx2(q, k, v, scale, scores, o),
                }
            };
        } else {
            head(q, k, v, scale, scores, o);
        }
    };
    let out = &mut out[..rows * head_dim];
    if rows * kv.len * head_dim >= PARALLEL_MIN_WORK && rows > 1 {
        out.par_chunks_mut(head_dim)
            .enumerate()
            .for_each_init(Vec::new, |scores, (r, o)| one(r, o, scores));
    } else {
        let mut scores = Vec::new();
        for (r, o) in out.chunks_mut(head_dim).enumerate() {
            one(r, o, &mut scores);
        }
    }
}

/// [`head`] compiled for AVX2 + FMA so that its loops vectorise.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_avx2(q: &[f32], k: &[f32], v: &[f32], scale: f32, s: &mut [f32], o: &mut [f32]) {
    head(q, k, v, scale, s, o)
}

/// [`head`] for heads 64 wide (the embedded reader's), in AVX2 registers with fused
/// multiply-adds (so equal to it up to rounding, not bit for bit): the query row and then the output row stay in eight registers across the
/// cached rows. With a width known only at run time, the output row went through memory every
/// cached row, each row's adds waiting on the last row's stores.
///
/// # Panics
/// If `q` or `o` is shorter than 64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_avx2_64(q: &[f32], k: &[f32], v: &[f32], scale: f32, s: &mut [f32], o: &mut [f32]) {
    use std::arch::x86_64::*;
    const D: usize = 64;
    assert!(q.len() >= D && o.len() >= D);
    let load = |row: &[f32], i: usize| {
        // SAFETY: every row passed holds `D` values and `i < D / 8`.
        unsafe { _mm256_loadu_ps(row.as_ptr().add(8 * i)) }
    };
    let qv: [__m256; 8] = std::array::from_fn(|i| load(q, i));
    for (sj, kj) in s.iter_mut().zip(k.chunks_exact(D)) {
        let mut a0 = _mm256_mul_ps(qv[0], load(kj, 0));
        let mut a1 = _mm256_mul_ps(qv[1], load(kj, 1));
        for i in (2..8).step_by(2) {
            a0 = _mm256_fmadd_ps(qv[i], load(kj, i), a0);
            a1 = _mm256_fmadd_ps(qv[i + 1], load(kj, i + 1), a1);
        }
        let a = _mm256_add_ps(a0, a1);
        let h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_movehdup_ps(h));
        *sj = _mm_cvtss_f32(h) * scale;
    }
    softmax_row(s);
    let mut acc = [_mm256_setzero_ps(); 8];
    for (&p, vj) in s.iter().zip(v.chunks_exact(D)) {
        let w = _mm256_set1_ps(p);
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(w, load(vj, i), *a);
        }
    }
    for (i, a) in acc.into_iter().enumerate() {
        // SAFETY: `o` holds at least `D` values (asserted above).
        unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * i), a) };
    }
}

/// One head: `s[j] = q . k_j * scale`, softmax over `s`, `o = sum_j s[j] v_j`.
#[inline(always)]
fn head(q: &[f32], k: &[f32], v: &[f32], scale: f32, s: &mut [f32], o: &mut [f32]) {
    let d = q.len();
    for (sj, kj) in s.iter_mut().zip(k.chunks_exact(d)) {
        *sj = dot(q, kj) * scale;
    }
    softmax_row(s);
    o.fill(0.0);
    for (&p, vj) in s.iter().zip(v.chunks_exact(d)) {
        for (x, &y) in o.iter_mut().zip(vj) {
            *x += p * y;
        }
    }
}

/// Dot product in sixteen independent lanes, so that it vectorises without reassociation.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::seeded;

    /// The definition, in f64.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        batch: usize,
        heads: usize,
        kv_heads: usize,
        d: usize,
        q: &[f32],
        kv: KvBlocks,
        scale: f32,
    ) -> Vec<f32> {
        let mut out = vec![0f32; batch * heads * d];
        for b in 0..batch {
            for h in 0..heads {
                let at = (b * kv_heads + h / (heads / kv_heads)) * kv.capacity * d;
                let qr = &q[(b * heads + h) * d..][..d];
                let s: Vec<f64> = (0..kv.len)
                    .map(|j| {
                        let kr = &kv.k[at + j * d..][..d];
                        qr.iter()
                            .zip(kr)
                            .map(|(&x, &y)| x as f64 * y as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..d {
                    let acc: f64 = (0..kv.len)
                        .map(|j| e[j] / sum * kv.v[at + j * d + c] as f64)
                        .sum();
                    out[(b * heads + h) * d + c] = acc as f32;
                }
            }
        }
        out
    }

    #[test]
    fn a_step_equals_the_definition_and_reads_only_filled_rows() {
        // (batch, heads, kv heads, head dim, filled, capacity): head dims on and off the
        // 16-lane width, grouped heads, short caches on one thread and long ones split.
        let seed = 19;
        eprintln!("seed {seed}");
        for &(batch, heads, kv_heads, d, len, cap) in &[
            (1, 4, 4, 64, 1, 8),
            (1, 10, 10, 128, 300, 512),
            (2, 6, 2, 72, 37, 40),
            (1, 8, 8, 40, 1000, 1000),
            (2, 3, 1, 17, 129, 256),
            (1, 4, 4, 64, 2000, 2048),
            (2, 10, 5, 128, 3, 9),
        ] {
            let q = seeded(batch * heads * d, seed);
            let mut k = seeded(batch * kv_heads * cap * d, seed + 1);
            let mut v = seeded(batch * kv_heads * cap * d, seed + 2);
            // Rows past `len` hold NaN: reading one would poison the result.
            for blk in 0..batch * kv_heads {
                for x in &mut k[(blk * cap + len) * d..(blk + 1) * cap * d] {
                    *x = f32::NAN;
                }
                for x in &mut v[(blk * cap + len) * d..(blk + 1) * cap * d] {
                    *x = f32::NAN;
                }
            }
            // Scores spread over a few units, as a trained model's are.
            let scale = 3.0 / (d as f32).sqrt();
            let kv = KvBlocks {
                k: &k,
                v: &v,
                capacity: cap,
                len,
            };
            let mut out = vec![0f32; batch * heads * d];
            attend_step(batch, heads, kv_heads, d, &q, kv, scale, &mut out);
            let want = reference(batch, heads, kv_heads, d, &q, kv, scale);
            let worst = out
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let magnitude = want.iter().map(|x| x.abs()).fold(0f32, f32::max);
            assert!(
                worst <= 1e-5 * magnitude.max(1e-3),
                "batch {batch} heads {heads}/{kv_heads} d {d} len {len}: max |diff| {worst:e} \
                 at magnitude {magnitude:e}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "query heads")]
    fn heads_must_group_evenly() {
        let z = vec![0f32; 64];
        let kv = KvBlocks {
            k: &z,
            v: &z,
            capacity: 4,
            len: 1,
        };
        attend_step(1, 3, 2, 4, &z, kv, 1.0, &mut [0f32; 12]);
    }
}
