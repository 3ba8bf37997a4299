//! CPU kernels for f32: a packed, cache-blocked SGEMM with an AVX2/FMA 6x16 micro-kernel
//! (portable fallback elsewhere), fused bias and activation epilogues, vectorised `exp`,
//! softmax and GELU. They work on plain slices; `ops` wraps them for tensors.
//!
//! The blocking follows the BLIS design: `KC` deep panels of B (`NR` columns) stay in L1
//! while `MR`-row panels of A stream from L2. Rows of C are split between threads.

use rayon::prelude::*;

const MR: usize = 6;
const NR: usize = 16;
const KC: usize = 256;
const MC: usize = 144;
const NC: usize = 3072;

/// A strided read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl MatRef<'_> {
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

/// What is applied to `A B (+ bias)` when it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Act {
    /// Nothing.
    None,
    /// Exact-erf GELU.
    Gelu,
    /// `x * sigmoid(1.702 x)`.
    QuickGelu,
}

/// `c[m, n] = act(a[m, k] b[k, n] + bias)` (c row-major, contiguous). B is packed once and
/// shared; row blocks of C are spread over the rayon threads when the product is large.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    bias: Option<&[f32]>,
    act: Act,
    c: &mut [f32],
) {
    let mut bp = Vec::new();
    pack_b_full(k, n, &b, &mut bp);
    let threads = rayon::current_num_threads().max(1);
    if threads == 1 || m * n * k < (1 << 21) || m < 2 * MR {
        sgemm_packed(m, n, k, a, &bp, bias, act, c);
        return;
    }
    // Near-equal row ranges, multiples of MR, a few per thread for balance.
    let per = m.div_ceil(threads * 2).div_ceil(MR) * MR;
    c[..m * n]
        .par_chunks_mut(per * n)
        .enumerate()
        .for_each(|(t, cc)| {
            let r0 = t * per;
            let rows = cc.len() / n;
            let a_sub = MatRef {
                data: &a.data[r0 * a.rs..],
                rs: a.rs,
                cs: a.cs,
            };
            sgemm_packed(rows, n, k, a_sub, &bp, bias, act, cc);
        });
}

/// Packs all of B (`k` x `n`) into `bp`: for each `KC` block of rows, `NR`-column panels of
/// `kc` x `NR` values, zero-padded to a multiple of `NR` columns.
pub(crate) fn pack_b_full(k: usize, n: usize, b: &MatRef, bp: &mut Vec<f32>) {
    let npad = n.div_ceil(NR) * NR;
    bp.clear();
    bp.resize(k * npad, 0.0);
    let mut pc = 0;
    while pc < k {
        let kc = KC.min(k - pc);
        pack_b(b, pc, kc, 0, n, &mut bp[pc * npad..(pc + kc) * npad]);
        pc += kc;
    }
}

/// Single-threaded [`sgemm`] with B already packed by [`pack_b_full`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_packed(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    bp: &[f32],
    bias: Option<&[f32]>,
    act: Act,
    c: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = apply(act, bias.map_or(0.0, |b| b[j]));
            }
        }
        return;
    }
    let simd = has_fma();
    let npad = n.div_ceil(NR) * NR;
    AP.with(|ap| {
        let mut ap = ap.borrow_mut();
        if ap.len() < KC * MC {
            ap.resize(KC * MC, 0.0);
        }
        let mut jc = 0;
        while jc < n {
            let nc = NC.min(n - jc);
            let mut pc = 0;
            while pc < k {
                let kc = KC.min(k - pc);
                let first = pc == 0;
                let last = pc + kc == k;
                let block = &bp[pc * npad..(pc + kc) * npad];
                let mut ic = 0;
                while ic < m {
                    let mc = MC.min(m - ic);
                    pack_a(&a, ic, mc, pc, kc, &mut ap);
                    let mut jr = 0;
                    while jr < nc {
                        let nr = NR.min(nc - jr);
                        let panel = (jc + jr) / NR;
                        let bpanel = &block[panel * NR * kc..(panel + 1) * NR * kc];
                        let mut ir = 0;
                        while ir < mc {
                            let mr = MR.min(mc - ir);
                            let apanel = &ap[ir * kc..(ir + MR) * kc];
                            let c0 = (ic + ir) * n + jc + jr;
                            let tile = Tile {
                                mr,
                                nr,
                                ldc: n,
                                first,
                                last,
                                bias: bias.map(|b| &b[jc + jr..jc + jr + nr]),
                                act,
                            };
                            if simd {
                                // SAFETY: `has_fma()` checked the CPU supports AVX2 and FMA;
                                // the panels hold `kc * MR` / `kc * NR` values and the tile
                                // stays inside `c` (`mr`/`nr` clip the edges).
                                #[cfg(target_arch = "x86_64")]
                                unsafe {
                                    kernel_fma(kc, apanel, bpanel, &mut c[c0..], &tile)
                                };
                            } else {
                                kernel_portable(kc, apanel, bpanel, &mut c[c0..], &tile);
                            }
                            ir += MR;
                        }
                        jr += NR;
                    }
                    ic += mc;
                }
                pc += kc;
            }
            jc += nc;
        }
    });
}

thread_local! {
    /// Per-thread buffer for packed A blocks.
    static AP: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Packs rows `ic..ic+mc`, columns `pc..pc+kc` of A into `MR`-row panels (`kc` x `MR` each,
/// zero-padded).
fn pack_a(a: &MatRef, ic: usize, mc: usize, pc: usize, kc: usize, ap: &mut [f32]) {
    for (panel, ir) in (0..mc).step_by(MR).enumerate() {
        let dst = &mut ap[panel * MR * kc..(panel + 1) * MR * kc];
        let mr = MR.min(mc - ir);
        if a.cs == 1 {
            for r in 0..MR {
                if r < mr {
                    let row = &a.data[(ic + ir + r) * a.rs + pc..][..kc];
                    for (p, &v) in row.iter().enumerate() {
                        dst[p * MR + r] = v;
                    }
                } else {
                    for p in 0..kc {
                        dst[p * MR + r] = 0.0;
                    }
                }
            }
        } else {
            for p in 0..kc {
                for r in 0..MR {
                    dst[p * MR + r] = if r < mr {
                        a.at(ic + ir + r, pc + p)
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Packs rows `pc..pc+kc`, columns `jc..jc+nc` of B into `NR`-column panels (`kc` x `NR`
/// each, zero-padded).
fn pack_b(b: &MatRef, pc: usize, kc: usize, jc: usize, nc: usize, bp: &mut [f32]) {
    for (panel, jr) in (0..nc).step_by(NR).enumerate() {
        let dst = &mut bp[panel * NR * kc..(panel + 1) * NR * kc];
        let nr = NR.min(nc - jr);
        if b.cs == 1 && nr == NR {
            for p in 0..kc {
                let src = &b.data[(pc + p) * b.rs + jc + jr..][..NR];
                dst[p * NR..(p + 1) * NR].copy_from_slice(src);
            }
        } else if b.rs == 1 {
            // Column-major source (a Linear weight read as its transpose).
            for j in 0..NR {
                if j < nr {
                    let col = &b.data[(jc + jr + j) * b.cs + pc..][..kc];
                    for (p, &v) in col.iter().enumerate() {
                        dst[p * NR + j] = v;
                    }
                } else {
                    for p in 0..kc {
                        dst[p * NR + j] = 0.0;
                    }
                }
            }
        } else {
            for p in 0..kc {
                for j in 0..NR {
                    dst[p * NR + j] = if j < nr {
                        b.at(pc + p, jc + jr + j)
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Where and how one micro-tile is stored.
struct Tile<'a> {
    mr: usize,
    nr: usize,
    ldc: usize,
    /// First k-block: overwrite C (plus bias) instead of accumulating.
    first: bool,
    /// Last k-block: apply the activation.
    last: bool,
    bias: Option<&'a [f32]>,
    act: Act,
}

/// Stores an `MR` x `NR` accumulator block into C.
#[inline(always)]
fn store_tile(acc: &[[f32; NR]; MR], c: &mut [f32], t: &Tile) {
    for (r, acc_row) in acc.iter().enumerate().take(t.mr) {
        let dst = &mut c[r * t.ldc..r * t.ldc + t.nr];
        let mut row = *acc_row;
        if t.first {
            if let Some(b) = t.bias {
                for (x, &bv) in row.iter_mut().zip(b) {
                    *x += bv;
                }
            }
        } else {
            for (x, &d) in row.iter_mut().zip(dst.iter()) {
                *x += d;
            }
        }
        if t.last {
            match t.act {
                Act::None => {}
                Act::Gelu => row.iter_mut().for_each(|x| *x = apply(Act::Gelu, *x)),
                Act::QuickGelu => row.iter_mut().for_each(|x| *x = apply(Act::QuickGelu, *x)),
            }
        }
        dst.copy_from_slice(&row[..t.nr]);
    }
}

fn kernel_portable(kc: usize, a: &[f32], b: &[f32], c: &mut [f32], t: &Tile) {
    let mut acc = [[0f32; NR]; MR];
    for (ap, bv) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        for (row, &av) in acc.iter_mut().zip(ap) {
            for (x, &bj) in row.iter_mut().zip(bv) {
                *x += av * bj;
            }
        }
    }
    store_tile(&acc, c, t);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_fma(kc: usize, a: &[f32], b: &[f32], c: &mut [f32], t: &Tile) {
    // SAFETY: the caller checked AVX2 and FMA (`has_fma`); every load reads within `a` (`kc * MR` values) and `b` (`kc * NR`), and every store writes within the tile of `c` that `t` describes.
    unsafe {
        use std::arch::x86_64::*;
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let ap = a.as_ptr();
        let bp = b.as_ptr();
        for p in 0..kc {
            let b0 = _mm256_loadu_ps(bp.add(p * NR));
            let b1 = _mm256_loadu_ps(bp.add(p * NR + 8));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(p * MR + r));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
        }
        let full = t.mr == MR && t.nr == NR;
        if full && t.act == Act::None {
            let bias0 = t.bias.map(|b| {
                (
                    _mm256_loadu_ps(b.as_ptr()),
                    _mm256_loadu_ps(b.as_ptr().add(8)),
                )
            });
            for (r, row) in acc.iter().enumerate() {
                let cp = c.as_mut_ptr().add(r * t.ldc);
                let (mut v0, mut v1) = (row[0], row[1]);
                if t.first {
                    if let Some((x0, x1)) = bias0 {
                        v0 = _mm256_add_ps(v0, x0);
                        v1 = _mm256_add_ps(v1, x1);
                    }
                } else {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(cp));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(cp.add(8)));
                }
                _mm256_storeu_ps(cp, v0);
                _mm256_storeu_ps(cp.add(8), v1);
            }
            return;
        }
        let mut tmp = [[0f32; NR]; MR];
        for (r, row) in acc.iter().enumerate() {
            _mm256_storeu_ps(tmp[r].as_mut_ptr(), row[0]);
            _mm256_storeu_ps(tmp[r].as_mut_ptr().add(8), row[1]);
        }
        store_tile(&tmp, c, t);
    }
}

/// Whether the AVX2 + FMA kernel can run.
fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[inline(always)]
fn apply(act: Act, x: f32) -> f32 {
    match act {
        Act::None => x,
        Act::Gelu => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        Act::QuickGelu => x / (1.0 + exp(-1.702 * x)),
    }
}

/// Scales each `t`-long row of `s`, adds the decomposed relative bias (rows of `h` and `w`
/// of length `side`), and applies softmax.
#[inline(always)]
fn bias_softmax(s: &mut [f32], t: usize, scale: f32, bias: Option<(&[f32], &[f32], usize)>) {
    for (i, row) in s.chunks_exact_mut(t).enumerate() {
        match bias {
            Some((h, w, side)) => {
                let rh = &h[i * side..(i + 1) * side];
                let rw = &w[i * side..(i + 1) * side];
                for (seg, &hv) in row.chunks_exact_mut(side).zip(rh) {
                    for (x, &wv) in seg.iter_mut().zip(rw) {
                        *x = *x * scale + hv + wv;
                    }
                }
            }
            None => row.iter_mut().for_each(|x| *x *= scale),
        }
        softmax_row(row);
    }
}

/// [`bias_softmax`] compiled for AVX2 + FMA so that `exp` vectorises.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bias_softmax_avx2(
    s: &mut [f32],
    t: usize,
    scale: f32,
    bias: Option<(&[f32], &[f32], usize)>,
) {
    bias_softmax(s, t, scale, bias)
}

/// `exp` in f32 (Cephes range reduction and polynomial; relative error about 1e-7), written
/// so that loops over it vectorise.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.336_55, 88.376_26);
    let fx = (x * LOG2E + 0.5).floor();
    let r = x - fx * C1 - fx * C2;
    let z = r * r;
    let mut y = 1.987_569_1e-4_f32;
    y = y * r + 1.398_199_9e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 1.666_666_5e-1;
    y = y * r + 0.5;
    y = y * z + r + 1.0;
    let bits = ((fx as i32 + 127) as u32) << 23;
    y * f32::from_bits(bits)
}

/// `erf` in f32: a Taylor series below |x| = 0.8, Abramowitz & Stegun 7.1.26 above
/// (absolute error below 3e-7 everywhere); branch-free so that loops vectorise.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let s = x.signum();
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let far = s * (1.0 - poly * exp(-a * a));
    // 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1)), n = 0..=8.
    let z = x * x;
    let mut series: f32 = 1.0 / (40_320.0 * 17.0);
    series = series * -z + 1.0 / (5_040.0 * 15.0);
    series = series * -z + 1.0 / (720.0 * 13.0);
    series = series * -z + 1.0 / (120.0 * 11.0);
    series = series * -z + 1.0 / (24.0 * 9.0);
    series = series * -z + 1.0 / (6.0 * 7.0);
    series = series * -z + 1.0 / (2.0 * 5.0);
    series = series * -z + 1.0 / 3.0;
    series = series * -z + 1.0;
    let near = x * series * std::f32::consts::FRAC_2_SQRT_PI;
    if a < 0.8 {
        near
    } else {
        far
    }
}

/// Numerically stable softmax of one row, in place.
#[inline(always)]
pub(crate) fn softmax_row(row: &mut [f32]) {
    // Eight independent lanes so that the reductions vectorise.
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(lanes.iter())
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let mut sums = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in sums.iter_mut().zip(c) {
            *l += v;
        }
    }
    let sum: f32 = chunks.remainder().iter().sum::<f32>() + sums.iter().sum::<f32>();
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Decomposed relative-position bias of SAM attention: for query `i = (y, x)` and key
/// `(ky, kx)` the score gains `h[(b, i), ky] + w[(b, i), kx]`.
#[derive(Clone, Copy)]
pub(crate) struct RelPos<'a> {
    /// `[bh, t, side]`.
    pub h: &'a [f32],
    /// `[bh, t, side]`.
    pub w: &'a [f32],
    /// Key grid side (`t = side * side`).
    pub side: usize,
}

/// Multi-head attention over `bh` independent `[t, hd]` query/key/value blocks:
/// `out = softmax(q k^T * scale + bias) v`, in blocks of query rows so that the scores stay
/// small, parallel over heads and windows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    bh: usize,
    t: usize,
    hd: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    rel: Option<RelPos>,
    out: &mut [f32],
) {
    const RB: usize = 256;
    let rb_max = RB.min(t);
    let simd = has_fma();
    out[..bh * t * hd]
        .par_chunks_mut(t * hd)
        .enumerate()
        .for_each_init(
            || (vec![0f32; rb_max * t], Vec::new(), Vec::new()),
            |(buf, kp, vp), (b, ob)| {
                let qb = &q[b * t * hd..(b + 1) * t * hd];
                let kb = &k[b * t * hd..(b + 1) * t * hd];
                let vb = &v[b * t * hd..(b + 1) * t * hd];
                pack_b_full(
                    hd,
                    t,
                    &MatRef {
                        data: kb,
                        rs: 1,
                        cs: hd,
                    },
                    kp,
                );
                pack_b_full(
                    t,
                    hd,
                    &MatRef {
                        data: vb,
                        rs: hd,
                        cs: 1,
                    },
                    vp,
                );
                let mut r0 = 0;
                while r0 < t {
                    let rb = RB.min(t - r0);
                    let s = &mut buf[..rb * t];
                    let qm = MatRef {
                        data: &qb[r0 * hd..],
                        rs: hd,
                        cs: 1,
                    };
                    sgemm_packed(rb, t, hd, qm, kp, None, Act::None, s);
                    let bias = rel.map(|rel| {
                        let at = (b * t + r0) * rel.side;
                        let len = rb * rel.side;
                        (&rel.h[at..at + len], &rel.w[at..at + len], rel.side)
                    });
                    if simd {
                        // SAFETY: `has_fma()` checked the CPU supports AVX2 and FMA.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            bias_softmax_avx2(s, t, scale, bias)
                        };
                    } else {
                        bias_softmax(s, t, scale, bias);
                    }
                    let pm = MatRef {
                        data: s,
                        rs: t,
                        cs: 1,
                    };
                    let out_rows = &mut ob[r0 * hd..(r0 + rb) * hd];
                    sgemm_packed(rb, hd, t, pm, vp, None, Act::None, out_rows);
                    r0 += rb;
                }
            },
        );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn sgemm_matches_naive_on_ragged_sizes() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (7, 17, 3),
            (13, 33, 300),
            (150, 40, 513),
            (64, 3100, 20),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
                .collect();
            let want = naive(m, n, k, &a, &b);
            let mut c = vec![0f32; m * n];
            let am = MatRef {
                data: &a,
                rs: k,
                cs: 1,
            };
            let bm = MatRef {
                data: &b,
                rs: n,
                cs: 1,
            };
            sgemm(m, n, k, am, bm, None, Act::None, &mut c);
            for (x, y) in c.iter().zip(&want) {
                assert!(
                    (x - y).abs() <= 1e-3 * (1.0 + y.abs()),
                    "{m}x{n}x{k}: {x} vs {y}"
                );
            }
            // B read transposed from a row-major [n, k] copy, with bias.
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32).collect();
            let btm = MatRef {
                data: &bt,
                rs: 1,
                cs: k,
            };
            sgemm(m, n, k, am, btm, Some(&bias), Act::None, &mut c);
            for (idx, (x, y)) in c.iter().zip(&want).enumerate() {
                let y = y + (idx % n) as f32;
                assert!(
                    (x - y).abs() <= 1e-3 * (1.0 + y.abs()),
                    "{m}x{n}x{k} t: {x} vs {y}"
                );
            }
        }
    }

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in -2000..2000 {
            let x = i as f32 / 50.0;
            let e = exp(x);
            let want = (x as f64).exp();
            assert!(((e as f64 - want) / want).abs() < 3e-7, "exp({x})");
        }
        for i in -175..175 {
            let x = i as f32 / 50.0;
            let want = libm_erf(x as f64);
            assert!((erf(x) as f64 - want).abs() < 3e-7, "erf({x})");
        }
    }

    /// erf by its Taylor series in f64, good to 1e-10 on |x| < 3.5.
    fn libm_erf(x: f64) -> f64 {
        // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 || n < 5.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
            if n > 400.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
