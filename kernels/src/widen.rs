//! Packed weights held in 16 bits when that loses nothing: a checkpoint stored in bf16 (the real
//! DeepSeek-OCR) or f16 (the embedded reader) is widened to f32 at load, so every value of its
//! f32 weight has an exact 16-bit form. Keeping that form halves the bytes a product streams;
//! each panel is widened back to f32 just before the micro-kernel reads it, so the arithmetic,
//! and its result, are exactly those of the f32 weight.
//!
//! `q8_0` weights (ggml's: 32 inputs share an f16 scale, one signed byte each) are held the same
//! way, in the panels' order: widening a value is `q * scale`, exact in f32 (8 bits times 11),
//! so products are those of the dequantised weight in f32.

use half::f16;

use crate::{KC, NR};

/// How a packed weight's values are held.
#[derive(Clone)]
pub(crate) enum Store {
    F32(Vec<f32>),
    /// Each value exactly, in the 16-bit form named.
    Half(Half, Vec<u16>),
    /// `q8_0`: one byte a value in the panels' order, and the f16 bits of one scale per 32
    /// inputs (`KC` blocks hold whole groups) and column, in the panels' order too (see
    /// [`q8_scales_at`]).
    Q8 {
        quants: Vec<i8>,
        scales: Vec<u16>,
        npad: usize,
    },
}

/// A 16-bit floating-point form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    /// bfloat16: the upper 16 bits of an f32.
    Bf16,
    /// IEEE half precision.
    F16,
}

/// The 16-bit form that holds every value of `data` exactly (bf16 is tried first), or `None`
/// when some value has neither: what a checkpoint stored in 16 bits gives once widened to f32.
pub fn exact_half(data: &[f32]) -> Option<Half> {
    use rayon::prelude::*;
    // Chunks checked in parallel; within one, an OR of the low halves (which vectorises).
    const CHUNK: usize = 1 << 16;
    if data
        .par_chunks(CHUNK)
        .all(|c| c.iter().fold(0, |low, x| low | (x.to_bits() & 0xffff)) == 0)
    {
        return Some(Half::Bf16);
    }
    if data.par_chunks(CHUNK).all(|c| {
        c.iter()
            .all(|&x| f16::from_f32(x).to_f32().to_bits() == x.to_bits())
    }) {
        return Some(Half::F16);
    }
    None
}

impl Store {
    pub(crate) fn panels(&self) -> Panels<'_> {
        match self {
            Self::F32(v) => Panels::F32(v),
            Self::Half(half, v) => Panels::Half(*half, v),
            Self::Q8 {
                quants,
                scales,
                npad,
            } => Panels::Q8 {
                quants,
                scales,
                npad: *npad,
            },
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        match self {
            Self::F32(v) => v.len() * 4,
            Self::Half(_, v) => v.len() * 2,
            Self::Q8 { quants, scales, .. } => quants.len() + scales.len() * 2,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::F32(_) => "f32",
            Self::Half(Half::Bf16, _) => "bf16",
            Self::Half(Half::F16, _) => "f16",
            Self::Q8 { .. } => "q8_0",
        }
    }
}

/// A borrowed [`Store`]: B's panels as the products read them.
#[derive(Clone, Copy)]
pub(crate) enum Panels<'a> {
    F32(&'a [f32]),
    Half(Half, &'a [u16]),
    Q8 {
        quants: &'a [i8],
        scales: &'a [u16],
        npad: usize,
    },
}

impl<'a> Panels<'a> {
    /// The `len` values from `at` as f32: borrowed when stored so, else widened into `buf`.
    #[inline(always)]
    pub(crate) fn slice<'b>(self, at: usize, len: usize, buf: &'b mut [f32]) -> &'b [f32]
    where
        'a: 'b,
    {
        match self {
            Self::F32(v) => &v[at..at + len],
            Self::Half(Half::Bf16, v) => {
                widen_bf16(&v[at..at + len], &mut buf[..len]);
                &buf[..len]
            }
            Self::Half(Half::F16, v) => {
                widen_f16(&v[at..at + len], &mut buf[..len]);
                &buf[..len]
            }
            Self::Q8 {
                quants,
                scales,
                npad,
            } => {
                // Products read whole panel blocks: `at = pc * npad + panel * NR * kc`.
                let pc = at / (KC * npad) * KC;
                let kc = len / NR;
                let panel = (at - pc * npad) / (NR * kc);
                let mut scale = [0f32; NR];
                for (g, (out, q)) in buf[..len]
                    .chunks_mut(Q8_GROUP * NR)
                    .zip(quants[at..at + len].chunks(Q8_GROUP * NR))
                    .enumerate()
                {
                    let row = q8_scales_at(npad, pc, kc, panel, g);
                    widen_f16(&scales[row..row + NR], &mut scale);
                    for (o, q) in out.chunks_exact_mut(NR).zip(q.chunks_exact(NR)) {
                        for ((o, &q), &d) in o.iter_mut().zip(q).zip(&scale) {
                            *o = f32::from(q) * d;
                        }
                    }
                }
                &buf[..len]
            }
        }
    }
}

/// Inputs that share one `q8_0` scale.
pub(crate) const Q8_GROUP: usize = 32;

/// Where the `NR` scales of group `g` of panel `panel` start, in the block of `kc` inputs from
/// input `pc` of a `q8_0` weight `npad` columns wide. The scales are laid out as the bytes they
/// scale are: block by block, panel by panel within a block, group by group within a panel. So
/// a panel block's scales are one run of `kc / 32 * NR` values, which a matrix-vector product
/// reads in order beside its bytes. (With one row of scales for all columns, a panel's next
/// group was `2 * npad` bytes on: past the hardware's stride prefetcher for `npad` above 1,024,
/// so every group's scales missed the cache.)
#[inline(always)]
pub(crate) fn q8_scales_at(npad: usize, pc: usize, kc: usize, panel: usize, g: usize) -> usize {
    pc / Q8_GROUP * npad + (panel * (kc / Q8_GROUP) + g) * NR
}

/// ggml's reference `Q8_0` quantisation of `values` (one group): the scale's f16 bits and each
/// value's byte. The scale is `max |v| / 127`, rounded to f16 once stored; the bytes round
/// `v / scale` taken before that rounding, as ggml does.
pub(crate) fn quantize_q8(values: &[f32], quants: &mut [i8]) -> u16 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected.
        return unsafe { quantize_q8_avx2(values, quants) };
    }
    quantize_q8_body(values, quants)
}

/// [`quantize_q8_body`] in AVX2 registers for a whole group of finite values with a finite
/// inverse scale (the same bytes and scale; any other group, or any other length, goes
/// through the body, whose NaN and infinity bytes the vector conversion does not give). With `f32::round`, a call to `roundf` a value took 10%
/// of a `q8_0` load, and the body compiled for AVX2 still 13%.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_q8_avx2(values: &[f32], quants: &mut [i8]) -> u16 {
    use std::arch::x86_64::*;
    if values.len() != Q8_GROUP || quants.len() != Q8_GROUP {
        return quantize_q8_body(values, quants);
    }
    let sign = _mm256_set1_ps(-0.0);
    // SAFETY: `values` holds 32 values, four registers' worth.
    let v: [__m256; 4] =
        std::array::from_fn(|i| unsafe { _mm256_loadu_ps(values.as_ptr().add(8 * i)) });
    // A NaN or an infinity anywhere: the body's bytes (0 for NaN, saturated for infinities).
    let special = v.iter().fold(0, |m, &x| {
        m | _mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q))
    });
    let abs = v.map(|x| _mm256_andnot_ps(sign, x));
    let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    if special != 0 || !amax.is_finite() || !id.is_finite() {
        return quantize_q8_body(values, quants);
    }
    let id = _mm256_set1_ps(id);
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    let q = v.map(|x| {
        let y = _mm256_mul_ps(x, id);
        // Half away from zero, as the body rounds: `y - trunc(y)` is exact.
        let t = _mm256_round_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(y, t));
        let step = _mm256_or_ps(_mm256_and_ps(sign, y), one);
        let up = _mm256_and_ps(_mm256_cmp_ps(frac, half, _CMP_GE_OQ), step);
        _mm256_cvttps_epi32(_mm256_add_ps(t, up))
    });
    // Saturating packs interleave 128-bit lanes; the permutation puts the bytes back in order.
    let bytes = _mm256_packs_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: `quants` holds 32 bytes.
    unsafe { _mm256_storeu_si256(quants.as_mut_ptr().cast(), bytes) };
    f16::from_f32(d).to_bits()
}

#[inline(always)]
fn quantize_q8_body(values: &[f32], quants: &mut [i8]) -> u16 {
    let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    for (q, v) in quants.iter_mut().zip(values) {
        let y = v * id;
        // `y.round()` (half away from zero, ggml's `roundf`) from `trunc`, which x86 has as an
        // instruction where `round` is a library call: `y - t` is exact, so a fraction of at
        // least a half steps away from zero.
        let t = y.trunc();
        let r = if (y - t).abs() >= 0.5 {
            t + 1f32.copysign(y)
        } else {
            t
        };
        *q = r as i8;
    }
    f16::from_f32(d).to_bits()
}

/// bf16 to f32: the 16 bits become the upper half. The loop vectorises as it is, 16 lanes at a
/// time where the CPU has AVX-512F (a prefill widens every panel of B this way).
fn widen_bf16(src: &[u16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected.
            unsafe { widen_bf16_avx512(src, dst) };
            return;
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected.
            unsafe { widen_bf16_avx2(src, dst) };
            return;
        }
    }
    widen_bf16_body(src, dst);
}

#[inline(always)]
fn widen_bf16_body(src: &[u16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits(u32::from(s) << 16);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn widen_bf16_avx512(src: &[u16], dst: &mut [f32]) {
    widen_bf16_body(src, dst);
}

/// [`widen_bf16_body`] eight lanes at a time (the SSE2 build does four).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn widen_bf16_avx2(src: &[u16], dst: &mut [f32]) {
    widen_bf16_body(src, dst);
}

/// f16 to f32 (exact): F16C / AVX-512F where the CPU has them, else `half`'s conversion.
fn widen_f16(src: &[u16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected.
            unsafe { widen_f16_avx512(src, dst) };
            return;
        }
        if std::is_x86_feature_detected!("f16c") && std::is_x86_feature_detected!("avx") {
            // SAFETY: F16C and AVX were detected.
            unsafe { widen_f16_f16c(src, dst) };
            return;
        }
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_bits(s).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn widen_f16_avx512(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: `i + 16 <= n` keeps the 16-value load and store inside both slices.
        unsafe {
            let h = _mm256_loadu_si256(src.as_ptr().add(i).cast());
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
        }
        i += 16;
    }
    for j in i..n {
        dst[j] = f16::from_bits(src[j]).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16_f16c(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n` keeps the 8-value load and store inside both slices.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    for j in i..n {
        dst[j] = f16::from_bits(src[j]).to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_rounds_halves_away_from_zero_as_ggml_does_on_every_path() {
        // max |v| = 127 makes the scale 1, so these are the bytes themselves: halves round away
        // from zero (2.5 -> 3, -0.5 -> -1), the rest to nearest.
        let mut group: Vec<f32> = vec![
            127.0, -0.5, 0.5, 2.5, -2.5, 126.5, -126.5, 0.49999997, -1.5000001, 3.4999998, 0.0,
            -0.0, 1e-30, 64.5, -64.5, 7.25,
        ];
        let want: Vec<i8> = vec![127, -1, 1, 3, -3, 127, -127, 0, -2, 3, 0, 0, 0, 65, -65, 7];
        // A second half from a seeded spread, rounded as `f32::round` (ggml's `roundf`) does.
        let mut x = 0x9e37_79b9u32;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        group.extend((0..16).map(|_| (next() % 25_400) as f32 / 100.0 - 127.0));
        let want: Vec<i8> = want
            .into_iter()
            .chain(group[16..].iter().map(|v| v.round() as i8))
            .collect();
        let mut got = [0i8; Q8_GROUP];
        let scale = quantize_q8(&group, &mut got);
        assert_eq!(f16::from_bits(scale).to_f32(), 1.0);
        assert_eq!(got.to_vec(), want, "the dispatched path");
        let mut body = [0i8; Q8_GROUP];
        assert_eq!(quantize_q8_body(&group, &mut body), scale);
        assert_eq!(body, got, "the plain build");
        let mut zeros = [1i8; Q8_GROUP];
        assert_eq!(quantize_q8(&[0.0; Q8_GROUP], &mut zeros), 0);
        assert_eq!(zeros, [0; Q8_GROUP]);
        // Groups at scales from 1e-6 to 1e4, then groups with a NaN, an infinity, or values
        // so small that the inverse scale overflows: the same bytes and scale on both builds.
        for g in 0..400 {
            let scale = 10f32.powi(g % 11 - 6);
            let mut group: Vec<f32> = (0..Q8_GROUP)
                .map(|_| (next() as f32 / u32::MAX as f32 - 0.5) * scale)
                .collect();
            match g % 50 {
                0 => group[(g as usize / 50) % Q8_GROUP] = f32::NAN,
                1 => group[(g as usize / 50 * 7) % Q8_GROUP] = f32::NEG_INFINITY,
                2 => group.iter_mut().for_each(|v| *v *= 1e-37),
                _ => {}
            }
            let (mut fast, mut plain) = ([0i8; Q8_GROUP], [0i8; Q8_GROUP]);
            let s = quantize_q8(&group, &mut fast);
            let want = quantize_q8_body(&group, &mut plain);
            // A NaN scale is NaN either way; its bits may differ.
            assert!(s == want || f16::from_bits(s).is_nan(), "group {g}");
            assert_eq!(fast, plain, "group {g}");
        }
    }

    #[test]
    fn the_smallest_exact_form_is_picked_and_round_trips() {
        let bf = [
            1.0f32,
            -2.5,
            0.0,
            f32::from_bits(0x7f7f_0000),
            f32::from_bits(0x3f81_0000),
        ];
        // 1 + 2^-10 is an f16 but not a bf16; 6e-8 is an f16 subnormal.
        let h = [1.0f32 + 1.0 / 1024.0, -0.5, 5.960_464_5e-8, 65504.0];
        assert_eq!(exact_half(&bf), Some(Half::Bf16));
        assert_eq!(exact_half(&h), Some(Half::F16));
        assert_eq!(exact_half(&[0.1f32, 1.0]), None);
        // Checked in chunks: one value past the first chunk decides.
        let mut long = vec![0.5f32; 3 << 16];
        assert_eq!(exact_half(&long), Some(Half::Bf16));
        long[(3 << 16) - 1] = h[0];
        assert_eq!(exact_half(&long), Some(Half::F16));
        long[1 << 16] = 0.1;
        assert_eq!(exact_half(&long), None);
        for (half, data) in [(Half::Bf16, &bf[..]), (Half::F16, &h[..])] {
            let values = data
                .iter()
                .map(|&x| match half {
                    Half::Bf16 => (x.to_bits() >> 16) as u16,
                    Half::F16 => f16::from_f32(x).to_bits(),
                })
                .collect();
            let store = Store::Half(half, values);
            let mut buf = vec![0f32; data.len()];
            let got = store.panels().slice(0, data.len(), &mut buf).to_vec();
            assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                data.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn widening_bf16_matches_half_for_every_bit_pattern() {
        // 65,539 values: the vector builds' tails (the length is not a multiple of 8 or 16)
        // take the scalar loop.
        let all: Vec<u16> = (0..=u16::MAX).chain([0x3f80, 0x8000, 0xffff]).collect();
        let mut got = vec![0f32; all.len()];
        widen_bf16(&all, &mut got);
        for (&h, g) in all.iter().zip(&got) {
            let want = half::bf16::from_bits(h).to_f32();
            // `half` quiets signalling NaNs; widening keeps every bit, so a NaN stays a NaN.
            assert!(
                want.to_bits() == g.to_bits() || (want.is_nan() && g.is_nan()),
                "{h:#06x}: {g} vs {want}"
            );
        }
    }

    #[test]
    fn widening_f16_matches_half_for_every_bit_pattern() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let mut got = vec![0f32; all.len()];
        widen_f16(&all, &mut got);
        for (&h, g) in all.iter().zip(&got) {
            let want = f16::from_bits(h).to_f32();
            assert!(
                want.to_bits() == g.to_bits() || (want.is_nan() && g.is_nan()),
                "{h:#06x}: {g} vs {want}"
            );
        }
    }
}
