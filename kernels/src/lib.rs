//! Lethe's CPU kernels for f32, shared by the encoder and the decoder: a packed, cache-blocked
//! SGEMM with a 6x32 micro-kernel in AVX-512 or AVX2/FMA (a portable fallback elsewhere), fused
//! bias and activation epilogues, multi-head attention that reads the heads where the
//! projections left them ([`attention`], with SAM's relative-position bias; [`causal_attention`]
//! for a decoder's prefill), and a decode step's attention of one query row over a KV cache
//! ([`attend_step`]).
//! They work on plain slices; the model crates wrap them for tensors.
//!
//! The blocking follows the BLIS design: `KC` deep panels of B (`NR` columns) stay in L1
//! while `MR`-row panels of A stream from L2. A weight is packed once ([`PackedB`]) and every
//! product after that reads it in the kernel's order. Short products (a decode step, CLIP at
//! tiny, one expert's tokens) split their columns between the rayon threads, tall ones their
//! rows. Where the CPU has AMX, products of a bf16-held B (every checkpoint weight) run on its
//! tiles at f32 accuracy instead (`amx`). `LETHE_CPU_KERNEL=avx512` keeps the AVX-512 kernel on
//! an AMX machine, `LETHE_CPU_KERNEL=avx2` the AVX2 one on an AVX-512 machine.
//!
//! ```
//! use lethe_kernels::{Act, MatRef, PackedB};
//!
//! // A linear layer's weight, `[out = 3, in = 2]` row-major, packed once.
//! let w = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
//! let packed = PackedB::from_rows(&w, 3, 2);
//! // Two input rows: y = x W^T + bias.
//! let x = [2.0, 3.0, -1.0, 4.0];
//! let mut y = [0.0f32; 6];
//! packed.matmul(2, MatRef::rows(&x, 2), Some(&[0.5, 0.5, 0.5]), Act::None, &mut y);
//! assert_eq!(y, [2.5, 3.5, 5.5, -0.5, 4.5, 3.5]);
//! ```

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod amx;
mod hot;
mod step;
mod widen;
pub use hot::run_hot;
pub use step::{attend_step, KvBlocks};
pub use widen::{exact_half, Half};
use widen::{Panels, Store};

const MR: usize = 6;
const NR: usize = 32;
const KC: usize = 256;
const MC: usize = 144;
const NC: usize = 3072;
const NC_WIDENED: usize = 512;

/// A strided read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Distance between consecutive rows.
    pub rs: usize,
    /// Distance between consecutive columns.
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with rows of `cols` contiguous values.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

/// What is applied to `A B (+ bias)` when it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Nothing.
    None,
    /// Exact-erf GELU.
    Gelu,
    /// `x * sigmoid(1.702 x)`.
    QuickGelu,
}

#[cfg(test)]
/// `c[m, n] = act(a[m, k] b[k, n] + bias)` (c row-major, contiguous). B is packed once and
/// shared; the work is spread over the rayon threads when the product is large.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    bias: Option<&[f32]>,
    act: Act,
    c: &mut [f32],
) {
    assert!(
        c.len() >= m * n,
        "C holds {} values, not {m} x {n}",
        c.len()
    );
    let mut bp = Vec::new();
    pack_b_full(k, n, &b, &mut bp);
    // SAFETY: `c` holds `m * n` values (asserted above), borrowed mutably for the call.
    unsafe {
        sgemm_prepacked(
            m,
            n,
            k,
            a,
            Panels::F32(&bp),
            bias,
            act,
            OutPtr(c.as_mut_ptr()),
        )
    };
}

/// A weight matrix packed once for [`PackedB::matmul`]: `B = W^T` for a `[n, k]` row-major
/// `W` (a linear layer's `[out, in]` weight), laid out as [`pack_b_full`] lays it out. Keeping
/// weights packed saves re-reading and re-laying-out every weight on every call, which costs
/// as much as the product itself when `m` is small (CLIP at tiny has 65 rows).
///
/// [`PackedB::from_rows_compact`] holds the values in bf16 or f16 when they are exactly so (a
/// checkpoint stored in 16 bits): half the bytes to stream, the same f32 products.
#[derive(Clone)]
pub struct PackedB {
    data: Store,
    k: usize,
    n: usize,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedB({} x {}, {})", self.k, self.n, self.data.name())
    }
}

impl PackedB {
    /// Packs the transpose of row-major `w` (`n` rows of `k`).
    ///
    /// # Panics
    /// If `w` holds fewer than `n * k` values.
    pub fn from_rows(w: &[f32], n: usize, k: usize) -> Self {
        let mut data = vec![0f32; k * n.div_ceil(NR) * NR];
        pack_rows(w, n, k, &mut data, |x| x);
        Self {
            data: Store::F32(data),
            k,
            n,
        }
    }

    /// As [`PackedB::from_rows`], holding the values in 16 bits when every one of them is
    /// exactly a bf16 (else an f16) value, as the weights of a checkpoint stored in bf16 or f16
    /// are once widened to f32. Products are bit-for-bit those of [`PackedB::from_rows`]: each
    /// panel is widened back to f32 just before the micro-kernel reads it.
    ///
    /// # Panics
    /// If `w` holds fewer than `n * k` values.
    pub fn from_rows_compact(w: &[f32], n: usize, k: usize) -> Self {
        let Some(half) = widen::exact_half(&w[..n * k]) else {
            return Self::from_rows(w, n, k);
        };
        // Narrowed as it is packed: the load holds the 16-bit result and `w`, never a second
        // f32 copy.
        let mut out = vec![0u16; k * n.div_ceil(NR) * NR];
        // One build of the packing per form, so that no value goes through a `match`.
        match half {
            Half::Bf16 => pack_rows(w, n, k, &mut out, |x| (x.to_bits() >> 16) as u16),
            Half::F16 => pack_rows(w, n, k, &mut out, |x| half::f16::from_f32(x).to_bits()),
        }
        Self {
            data: Store::Half(half, out),
            k,
            n,
        }
    }

    /// Packs row-major 16-bit values of the form `half` (`n` rows of `k`, as a checkpoint
    /// stores them) as they are: what [`PackedB::from_rows_compact`] holds for the same values
    /// widened to f32, without the f32 copy or the scan for an exact form.
    ///
    /// # Panics
    /// If `w` holds fewer than `n * k` values.
    pub fn from_rows_half(w: &[u16], half: Half, n: usize, k: usize) -> Self {
        let mut out = vec![0u16; k * n.div_ceil(NR) * NR];
        pack_rows_u16(w, n, k, &mut out);
        Self {
            data: Store::Half(half, out),
            k,
            n,
        }
    }

    /// Quantises row-major `w` (`n` rows of `k`) to `q8_0` as ggml's reference does (32 inputs
    /// of a row share an f16 scale, one signed byte a value) and holds it in the panels' order:
    /// about a quarter of the f32 bytes. Each panel is widened to f32 as it is read, so products
    /// are bit-for-bit those of [`PackedB::from_rows`] over the dequantised weight
    /// ([`PackedB::to_rows`]), except the matrix-vector products on AVX-512 (up to 4 rows) and
    /// AVX2 (one row), which scale each group's sum once and so differ by rounding.
    ///
    /// # Panics
    /// If `k` is not a multiple of 32 or `w` holds fewer than `n * k` values.
    pub fn from_rows_q8(w: &[f32], n: usize, k: usize) -> Self {
        use widen::Q8_GROUP;
        assert!(
            k.is_multiple_of(Q8_GROUP),
            "q8_0 needs an input width divisible by 32, got {k}"
        );
        assert!(
            w.len() >= n * k,
            "{} values for a {n} x {k} weight",
            w.len()
        );
        let npad = n.div_ceil(NR) * NR;
        let groups = k / Q8_GROUP;
        // Each row quantised on its own (in parallel), its scales kept by row, then laid out
        // in the panels' order (`widen::q8_scales_at`).
        let mut rows = vec![0i8; n * k];
        let mut row_scales = vec![0u16; n * groups];
        rows.par_chunks_exact_mut(k)
            .zip(row_scales.par_chunks_exact_mut(groups))
            .zip(w[..n * k].par_chunks_exact(k))
            .for_each(|((q, d), v)| {
                for ((q, d), v) in q
                    .chunks_exact_mut(Q8_GROUP)
                    .zip(d)
                    .zip(v.chunks_exact(Q8_GROUP))
                {
                    *d = widen::quantize_q8(v, q);
                }
            });
        let mut scales = vec![0u16; groups * npad];
        for (col, d) in row_scales.chunks_exact(groups).enumerate() {
            for (g, &d) in d.iter().enumerate() {
                let pc = g * Q8_GROUP / KC * KC;
                let kc = KC.min(k - pc);
                let at = widen::q8_scales_at(npad, pc, kc, col / NR, g - pc / Q8_GROUP);
                scales[at + col % NR] = d;
            }
        }
        let mut quants = vec![0i8; k * npad];
        pack_rows(&rows, n, k, &mut quants, |q| q);
        Self {
            data: Store::Q8 {
                quants,
                scales,
                npad,
            },
            k,
            n,
        }
    }

    /// The weight as it multiplies, row-major `[n, k]` in f32 (dequantised when `q8_0`).
    pub fn to_rows(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let npad = n.div_ceil(NR) * NR;
        let mut out = vec![0f32; n * k];
        let mut buf = vec![0f32; KC * NR];
        let panels = self.data.panels();
        let mut pc = 0;
        while pc < k {
            let kc = KC.min(k - pc);
            for panel in 0..npad / NR {
                let block = panels.slice(pc * npad + panel * NR * kc, kc * NR, &mut buf);
                for (p, vals) in block.chunks_exact(NR).enumerate() {
                    for (j, &v) in vals.iter().enumerate() {
                        let col = panel * NR + j;
                        if col < n {
                            out[col * k + pc + p] = v;
                        }
                    }
                }
            }
            pc += kc;
        }
        out
    }

    /// Bytes held by the packed values (with the zero padding of the last panel).
    pub fn bytes(&self) -> usize {
        self.data.bytes()
    }

    /// How the values are held: `"f32"`, `"bf16"`, `"f16"` or `"q8_0"`.
    pub fn storage(&self) -> &'static str {
        self.data.name()
    }

    /// Inner dimension (the layer's input width).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Output columns (the layer's output width).
    pub fn n(&self) -> usize {
        self.n
    }

    /// `c[m, n] = act(a[m, k] B + bias)`.
    ///
    /// # Panics
    /// If `c` holds fewer than `m * n` values.
    pub fn matmul(&self, m: usize, a: MatRef, bias: Option<&[f32]>, act: Act, c: &mut [f32]) {
        assert!(
            c.len() >= m * self.n,
            "C holds {} values, not {m} x {}",
            c.len(),
            self.n
        );
        // SAFETY: `c` holds `m * n` values (asserted above), borrowed mutably for the call.
        unsafe { self.matmul_raw(m, a, bias, act, c.as_mut_ptr()) }
    }

    /// [`PackedB::matmul`] into a new vector of `m * n` values, which the product writes
    /// without zeroing them first (for a layer's output, a serial `memset` as large as the
    /// output, 2-3% of an encode).
    pub fn matmul_vec(&self, m: usize, a: MatRef, bias: Option<&[f32]>, act: Act) -> Vec<f32> {
        let len = m * self.n;
        let mut c = Vec::with_capacity(len);
        // SAFETY: the capacity is `m * n` values; `matmul_raw` writes every one of them.
        unsafe {
            self.matmul_raw(m, a, bias, act, c.as_mut_ptr());
            c.set_len(len);
        }
        c
    }

    /// Column ranges, on the packing's panel boundaries, that split a one-row product into
    /// pieces of about `bytes` of weights each (at least one panel a piece), for
    /// [`PackedB::row_product_part`]. Callers that run several products at once (a decode
    /// step's experts) put all their pieces in one parallel loop, where each product split on
    /// its own would join the threads once per product.
    pub fn row_pieces(&self, bytes: usize) -> Vec<std::ops::Range<usize>> {
        let panels = self.n.div_ceil(NR);
        let panel_bytes = (self.bytes() / panels.max(1)).max(1);
        let per = (bytes / panel_bytes).clamp(1, panels.max(1));
        (0..panels)
            .step_by(per)
            .map(|p| p * NR..((p + per) * NR).min(self.n))
            .collect()
    }

    /// Columns `cols` of the one-row product `x B` (no bias, no activation) into `out`
    /// (`cols.len()` values), on the calling thread: one of [`PackedB::row_pieces`]. The values
    /// are bit for bit those [`PackedB::matmul`] gives for these columns.
    ///
    /// # Panics
    /// If `x` holds fewer than `k` values, `out` fewer than `cols.len()`, or `cols` does not
    /// start and end on panel boundaries (or end at `n`).
    pub fn row_product_part(&self, x: &[f32], cols: std::ops::Range<usize>, out: &mut [f32]) {
        assert!(
            x.len() >= self.k,
            "x holds {} values, not {}",
            x.len(),
            self.k
        );
        assert!(
            cols.start.is_multiple_of(NR)
                && cols.start <= cols.end
                && (cols.end.is_multiple_of(NR) && cols.end <= self.n || cols.end == self.n),
            "columns {cols:?} of {} are not a piece of this product",
            self.n
        );
        let out = &mut out[..cols.len()];
        if out.is_empty() || self.k == 0 {
            out.fill(0.0);
            return;
        }
        let npad = self.n.div_ceil(NR) * NR;
        // Panel `p` writes C's columns from `p * NR`: C here starts `cols.start` columns
        // before `out` (only offsets from `cols.start` on are written).
        let c = OutPtr(out.as_mut_ptr().wrapping_sub(cols.start));
        let panels = cols.start / NR..cols.end.div_ceil(NR);
        // SAFETY: one row (`m = 1`); the panels' columns are exactly `cols.start..cols.end`
        // (asserted above: a panel that `cols.end` cuts is the product's last, which writes
        // only up to `n`), and they land on `out`, borrowed mutably for the call.
        unsafe {
            gemv_panels(
                Isa::detect(),
                1,
                self.n,
                self.k,
                x,
                self.data.panels(),
                npad,
                panels,
                None,
                Act::None,
                c,
            )
        };
    }

    /// [`PackedB::matmul`] through a pointer to C, which is only written before it is read
    /// (every value of C is written by the first `KC` block of the product).
    ///
    /// # Safety
    /// `c` must be valid for writes (and reads, once written) of `m * n` values that no other
    /// code touches during the call.
    unsafe fn matmul_raw(&self, m: usize, a: MatRef, bias: Option<&[f32]>, act: Act, c: *mut f32) {
        let c = OutPtr(c);
        // SAFETY: as the caller vouches.
        unsafe {
            if (1..=GEMV_MAX_ROWS).contains(&m) && self.k > 0 {
                gemv_packed(m, self.n, self.k, a, self.data.panels(), bias, act, c);
            } else {
                sgemm_prepacked(m, self.n, self.k, a, self.data.panels(), bias, act, c);
            }
        }
    }
}

/// Up to this many rows, [`PackedB::matmul`] is a matrix-vector product: each panel of B is
/// streamed once with every row's accumulators in registers, where the GEMM would pad A to `MR`
/// rows (six times the work for a decode step's one row). Such products are bound by reading B.
const GEMV_MAX_ROWS: usize = 4;

/// Matrix-vector products over at least this many weights split their panels over rayon's
/// workers; smaller ones (a routed expert) stay on one thread, since their callers run several
/// side by side (a decode step's MoE splits its experts' products itself, into pieces of one
/// parallel loop: `PackedB::row_pieces`).
const GEMV_PARALLEL_MIN: usize = 1_500_000;

/// One panel's accumulators: `R` rows of `NR` columns.
type PanelAcc = [[f32; NR]; GEMV_MAX_ROWS];

/// [`PackedB::matmul`] for `m <= GEMV_MAX_ROWS` rows.
///
/// # Safety
/// As [`PackedB::matmul_raw`] (C is only written).
#[allow(clippy::too_many_arguments)]
unsafe fn gemv_packed(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    bp: Panels,
    bias: Option<&[f32]>,
    act: Act,
    c: OutPtr,
) {
    let npad = n.div_ceil(NR) * NR;
    let panels = npad / NR;
    let mut x = vec![0f32; m * k];
    for (r, row) in x.chunks_exact_mut(k).enumerate() {
        for (p, v) in row.iter_mut().enumerate() {
            *v = a.at(r, p);
        }
    }
    let isa = Isa::detect();
    let threads = rayon::current_num_threads().max(1);
    let chunks = if threads > 1 && n * k >= GEMV_PARALLEL_MIN {
        (threads * 4).min(panels)
    } else {
        1
    };
    let per = panels.div_ceil(chunks);
    let run = |i: usize| {
        let part = i * per..((i + 1) * per).min(panels);
        // SAFETY: the parts' columns are disjoint; C as the caller vouches.
        unsafe { gemv_panels(isa, m, n, k, &x, bp, npad, part, bias, act, c) }
    };
    if chunks > 1 {
        (0..panels.div_ceil(per)).into_par_iter().for_each(run);
    } else {
        run(0);
    }
}

/// The columns of panels `part` of the matrix-vector product (`m <= GEMV_MAX_ROWS` rows of `x`,
/// each `k` long), written to C with the bias and activation: C's value `(r, j)` is at
/// `c.at(r * n + j)`.
///
/// # Safety
/// C must be valid for writes of those columns of its `m` rows, which no other code touches
/// during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemv_panels(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    bp: Panels,
    npad: usize,
    part: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    act: Act,
    c: OutPtr,
) {
    // Room for one block of a panel widened from 16 bits, where the kernel does not widen in
    // registers (AVX-512 does).
    let mut wide = match (isa, bp) {
        (Isa::Avx2 | Isa::Portable, Panels::Half(..) | Panels::Q8 { .. }) => vec![0f32; KC * NR],
        _ => Vec::new(),
    };
    // The bias is added (or 0.0, as the GEMM's epilogue does) in a loop of its own for each
    // case: an `lm_head`'s 129,280 columns took a millisecond a step with the choice inside.
    let zeros = [0f32; NR];
    for panel in part {
        let mut acc = [[0f32; NR]; GEMV_MAX_ROWS];
        gemv_panel(isa, m, k, x, bp, npad, panel, &mut acc, &mut wide);
        let j0 = panel * NR;
        let nr = NR.min(n - j0);
        let add = bias.map_or(&zeros[..nr], |b| &b[j0..j0 + nr]);
        for (r, acc_row) in acc.iter().enumerate().take(m) {
            let at = c.at(r * n + j0);
            for (j, (&v, &b)) in acc_row[..nr].iter().zip(add).enumerate() {
                // SAFETY: row `r < m`, column `j0 + j < n` of the C the caller vouches for.
                unsafe { at.add(j).write(apply(act, v + b)) };
            }
        }
    }
}

/// Accumulates rows `0..m` of `x` (rows of `k`) times panel `panel` of B, packed in `bp` by
/// [`pack_b_full`] (in block `pc` of `kc` rows, the panel's `kc` x `NR` values start at
/// `pc * npad + panel * NR * kc`), into `acc`.
#[allow(clippy::too_many_arguments)]
fn gemv_panel(
    isa: Isa,
    m: usize,
    k: usize,
    x: &[f32],
    bp: Panels,
    npad: usize,
    panel: usize,
    acc: &mut PanelAcc,
    wide: &mut [f32],
) {
    match (isa, bp) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` was detected on this CPU.
        (Isa::Avx512, Panels::Half(Half::Bf16, h)) => unsafe {
            match m {
                1 => gemv_half_avx512::<true, 1>(k, x, h, npad, panel, acc),
                2 => gemv_half_avx512::<true, 2>(k, x, h, npad, panel, acc),
                3 => gemv_half_avx512::<true, 3>(k, x, h, npad, panel, acc),
                _ => gemv_half_avx512::<true, 4>(k, x, h, npad, panel, acc),
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx512, Panels::Half(Half::F16, h)) => unsafe {
            match m {
                1 => gemv_half_avx512::<false, 1>(k, x, h, npad, panel, acc),
                2 => gemv_half_avx512::<false, 2>(k, x, h, npad, panel, acc),
                3 => gemv_half_avx512::<false, 3>(k, x, h, npad, panel, acc),
                _ => gemv_half_avx512::<false, 4>(k, x, h, npad, panel, acc),
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx512, Panels::Q8 { quants, scales, .. }) => unsafe {
            match m {
                1 => gemv_q8_avx512::<1>(k, x, quants, scales, npad, panel, acc),
                2 => gemv_q8_avx512::<2>(k, x, quants, scales, npad, panel, acc),
                3 => gemv_q8_avx512::<3>(k, x, quants, scales, npad, panel, acc),
                _ => gemv_q8_avx512::<4>(k, x, quants, scales, npad, panel, acc),
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx512, _) => unsafe { gemv_panel_avx512(m, k, x, bp, npad, panel, acc, wide) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above (`Isa::Avx2` includes F16C).
        (Isa::Avx2, Panels::Half(half, h)) if m <= 2 => unsafe {
            match (half, m) {
                (Half::Bf16, 1) => gemv_half_avx2::<true, 1>(k, x, h, npad, panel, acc),
                (Half::Bf16, _) => gemv_half_avx2::<true, 2>(k, x, h, npad, panel, acc),
                (Half::F16, 1) => gemv_half_avx2::<false, 1>(k, x, h, npad, panel, acc),
                (Half::F16, _) => gemv_half_avx2::<false, 2>(k, x, h, npad, panel, acc),
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx2, Panels::Q8 { quants, scales, .. }) if m <= 2 => unsafe {
            match m {
                1 => gemv_q8_avx2::<1>(k, x, quants, scales, npad, panel, acc),
                _ => gemv_q8_avx2::<2>(k, x, quants, scales, npad, panel, acc),
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx2, _) => unsafe { gemv_panel_avx2(m, k, x, bp, npad, panel, acc, wide) },
        _ => gemv_panel_rows(m, k, x, bp, npad, panel, acc, wide),
    }
}

/// [`gemv_panel`] for a panel held in 16 bits (bf16 when `BF16`, else f16), widened in
/// registers as it is read: the weight's bytes are streamed once, at half the f32 size. Each
/// lane multiplies and then adds, in the order [`gemv_panel_rows`]' loop does, so the sums are bit-for-bit
/// those of the f32 panel.
/// How far ahead of its reads a matrix-vector product asks for the weight's cache lines. One
/// core's hardware prefetchers keep too few lines in flight for a stream that is consumed this
/// fast (16-bit panels most of all). Measured on an `lm_head`-sized bf16 weight (129,280 x 1,280)
/// on an Intel Xeon (family 6 model 207), two threads: 16.4-19.1 GB/s without, 23.8-26.3 GB/s
/// 8 KB ahead (1 KB: 22; 4 KB: 24-25; 32 KB: 25); one thread 8.7 -> 13.1 GB/s; f32 panels
/// 23.7-25.3 -> 26.8-27.1 GB/s.
const PREFETCH_BYTES: usize = 8192;

/// Asks for the cache line at `p` before it is read; a hint that never faults.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    // SAFETY: a prefetch reads nothing architecturally and cannot fault, whatever the address.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast())
    }
}

/// One input of a matrix-vector product: each row's accumulators `+= x[r, i] * (b0, b1)`, a
/// multiply then an add per lane, in [`gemv_panel_rows`]' order.
///
/// # Safety
/// AVX-512F must be enabled in the caller, and `x` must hold `R` rows of `k` with `i < k`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn accumulate_rows<const R: usize>(
    sums: &mut [[std::arch::x86_64::__m512; 2]; R],
    x: &[f32],
    k: usize,
    i: usize,
    b0: std::arch::x86_64::__m512,
    b1: std::arch::x86_64::__m512,
) {
    use std::arch::x86_64::*;
    for (r, row) in sums.iter_mut().enumerate() {
        // SAFETY: the caller's bounds on `x`; AVX-512F as the caller guarantees.
        unsafe {
            let xv = _mm512_set1_ps(*x.as_ptr().add(r * k + i));
            row[0] = _mm512_add_ps(row[0], _mm512_mul_ps(xv, b0));
            row[1] = _mm512_add_ps(row[1], _mm512_mul_ps(xv, b1));
        }
    }
}

/// Stores a panel's register accumulators into `acc` (NR = 32 values a row).
///
/// # Safety
/// AVX-512F must be enabled in the caller.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_sums<const R: usize>(
    sums: &[[std::arch::x86_64::__m512; 2]; R],
    acc: &mut PanelAcc,
) {
    use std::arch::x86_64::*;
    for (row, out) in sums.iter().zip(acc.iter_mut()) {
        // SAFETY: each accumulator row holds NR = 32 values.
        unsafe {
            _mm512_storeu_ps(out.as_mut_ptr(), row[0]);
            _mm512_storeu_ps(out.as_mut_ptr().add(16), row[1]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gemv_half_avx512<const BF16: bool, const R: usize>(
    k: usize,
    x: &[f32],
    h: &[u16],
    npad: usize,
    panel: usize,
    acc: &mut PanelAcc,
) {
    use std::arch::x86_64::*;
    assert!(R <= GEMV_MAX_ROWS && x.len() >= R * k && h.len() >= k * npad);
    let mut sums = [[_mm512_setzero_ps(); 2]; R];
    let mut pc = 0;
    while pc < k {
        let kc = KC.min(k - pc);
        let base = pc * npad + panel * NR * kc;
        for p in 0..kc {
            // SAFETY: the panel's block holds `kc * NR` values from `base`, inside `h` (checked
            // above: `h` holds all `k * npad`); the x reads are inside `x` (`R * k` values).
            unsafe {
                let at = h.as_ptr().add(base + p * NR);
                prefetch(at.wrapping_add(PREFETCH_BYTES / 2));
                let lo = _mm256_loadu_si256(at.cast());
                let hi = _mm256_loadu_si256(at.add(16).cast());
                let (b0, b1) = if BF16 {
                    (
                        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(lo))),
                        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(hi))),
                    )
                } else {
                    (_mm512_cvtph_ps(lo), _mm512_cvtph_ps(hi))
                };
                accumulate_rows(&mut sums, x, k, pc + p, b0, b1);
            }
        }
        pc += kc;
    }
    // SAFETY: AVX-512F is enabled here.
    unsafe { store_sums(&sums, acc) };
}

/// [`gemv_panel`] for a `q8_0` panel, widened in registers as it is read (a quarter of the f32
/// bytes streamed). Each group of 32 inputs is summed as `x * q` with fused multiply-adds and
/// scaled once, where multiplying every byte by its scale first (the dequantised value) and
/// then adding cost two more vector operations a byte row: with five a row on the two vector
/// ports, the kernel read its weights at 85% of a streaming read's rate, and 14-20% faster
/// with three (two threads, expert- and `qkv`-shaped weights). The sums differ from the
/// dequantised f32 panel's by rounding only (each `x * q` is exact in an FMA, the scale's
/// product rounds once a group).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gemv_q8_avx512<const R: usize>(
    k: usize,
    x: &[f32],
    quants: &[i8],
    scales: &[u16],
    npad: usize,
    panel: usize,
    acc: &mut PanelAcc,
) {
    use std::arch::x86_64::*;
    use widen::{q8_scales_at, Q8_GROUP};
    assert!(R <= GEMV_MAX_ROWS && x.len() >= R * k && quants.len() >= k * npad);
    assert!(k.is_multiple_of(Q8_GROUP) && scales.len() >= k / Q8_GROUP * npad);
    let mut sums = [[_mm512_setzero_ps(); 2]; R];
    let mut pc = 0;
    while pc < k {
        let kc = KC.min(k - pc);
        let base = pc * npad + panel * NR * kc;
        for g in 0..kc / Q8_GROUP {
            // SAFETY: the group's NR scales from `q8_scales_at` lie inside the block's
            // `kc / 32 * npad`, inside `scales` (checked above); the quants read below are the
            // panel block's `kc * NR` bytes from `base`, inside `quants`; x reads as in
            // `gemv_half_avx512`.
            unsafe {
                let s = scales.as_ptr().add(q8_scales_at(npad, pc, kc, panel, g));
                let mut group = [[_mm512_setzero_ps(); 2]; R];
                for p in g * Q8_GROUP..(g + 1) * Q8_GROUP {
                    let at = quants.as_ptr().add(base + p * NR);
                    prefetch(at.wrapping_add(PREFETCH_BYTES));
                    let lo = _mm_loadu_si128(at.cast());
                    let hi = _mm_loadu_si128(at.add(16).cast());
                    let q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo));
                    let q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi));
                    for (r, row) in group.iter_mut().enumerate() {
                        let xv = _mm512_set1_ps(*x.as_ptr().add(r * k + pc + p));
                        row[0] = _mm512_fmadd_ps(xv, q0, row[0]);
                        row[1] = _mm512_fmadd_ps(xv, q1, row[1]);
                    }
                }
                let s0 = _mm512_cvtph_ps(_mm256_loadu_si256(s.cast()));
                let s1 = _mm512_cvtph_ps(_mm256_loadu_si256(s.add(16).cast()));
                for (row, part) in sums.iter_mut().zip(&group) {
                    row[0] = _mm512_fmadd_ps(part[0], s0, row[0]);
                    row[1] = _mm512_fmadd_ps(part[1], s1, row[1]);
                }
            }
        }
        pc += kc;
    }
    // SAFETY: AVX-512F is enabled here.
    unsafe { store_sums(&sums, acc) };
}

/// [`accumulate_rows`] for AVX2: `sums[r] += x[r, i] * b`, eight lanes a register, four
/// registers a panel row (NR = 32).
///
/// # Safety
/// AVX2 must be enabled in the caller, and `x` must hold `R` rows of `k` with `i < k`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn accumulate_rows_avx2<const R: usize>(
    sums: &mut [[std::arch::x86_64::__m256; 4]; R],
    x: &[f32],
    k: usize,
    i: usize,
    b: &[std::arch::x86_64::__m256; 4],
) {
    use std::arch::x86_64::*;
    for (r, row) in sums.iter_mut().enumerate() {
        // SAFETY: the caller's bounds on `x`; AVX2 as the caller guarantees.
        unsafe {
            let xv = _mm256_set1_ps(*x.as_ptr().add(r * k + i));
            for (s, &bq) in row.iter_mut().zip(b) {
                *s = _mm256_add_ps(*s, _mm256_mul_ps(xv, bq));
            }
        }
    }
}

/// Stores a panel's AVX2 register accumulators into `acc`.
///
/// # Safety
/// AVX2 must be enabled in the caller.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_sums_avx2<const R: usize>(
    sums: &[[std::arch::x86_64::__m256; 4]; R],
    acc: &mut PanelAcc,
) {
    use std::arch::x86_64::*;
    for (row, out) in sums.iter().zip(acc.iter_mut()) {
        for (q, s) in row.iter().enumerate() {
            // SAFETY: each accumulator row holds NR = 32 values, 8 a register.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * q), *s) };
        }
    }
}

/// [`gemv_half_avx512`] for AVX2 (one or two rows: four accumulators a row stay in the sixteen
/// registers): the panel widened in registers as it is read, not through a buffer, the same
/// sums bit for bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_half_avx2<const BF16: bool, const R: usize>(
    k: usize,
    x: &[f32],
    h: &[u16],
    npad: usize,
    panel: usize,
    acc: &mut PanelAcc,
) {
    use std::arch::x86_64::*;
    assert!(R <= 2 && x.len() >= R * k && h.len() >= k * npad);
    let mut sums = [[_mm256_setzero_ps(); 4]; R];
    let mut pc = 0;
    while pc < k {
        let kc = KC.min(k - pc);
        let base = pc * npad + panel * NR * kc;
        for p in 0..kc {
            let mut b = [_mm256_setzero_ps(); 4];
            // SAFETY: as in `gemv_half_avx512`: the panel block's `kc * NR` values from `base`
            // are inside `h`, the x reads inside `x`.
            unsafe {
                let at = h.as_ptr().add(base + p * NR);
                prefetch(at.wrapping_add(PREFETCH_BYTES / 2));
                for (q, bq) in b.iter_mut().enumerate() {
                    let v = _mm_loadu_si128(at.add(8 * q).cast());
                    *bq = if BF16 {
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
                    } else {
                        _mm256_cvtph_ps(v)
                    };
                }
                accumulate_rows_avx2(&mut sums, x, k, pc + p, &b);
            }
        }
        pc += kc;
    }
    // SAFETY: AVX2 is enabled here.
    unsafe { store_sums_avx2(&sums, acc) };
}

/// [`gemv_panel`] for a `q8_0` panel on AVX2: one row as `gemv_q8_avx512` sums it (each
/// group's `x * q` scaled once); two rows with each byte times its scale (the dequantised value)
/// before the multiply-add, bit for bit the dequantised f32 panel's sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_q8_avx2<const R: usize>(
    k: usize,
    x: &[f32],
    quants: &[i8],
    scales: &[u16],
    npad: usize,
    panel: usize,
    acc: &mut PanelAcc,
) {
    use std::arch::x86_64::*;
    use widen::{q8_scales_at, Q8_GROUP};
    assert!(R <= 2 && x.len() >= R * k && quants.len() >= k * npad);
    assert!(k.is_multiple_of(Q8_GROUP) && scales.len() >= k / Q8_GROUP * npad);
    let mut sums = [[_mm256_setzero_ps(); 4]; R];
    let mut pc = 0;
    while pc < k {
        let kc = KC.min(k - pc);
        let base = pc * npad + panel * NR * kc;
        for g in 0..kc / Q8_GROUP {
            let mut scale = [_mm256_setzero_ps(); 4];
            // SAFETY: as in `gemv_q8_avx512`: the group's NR scales and the panel block's
            // `kc * NR` bytes from `base` are inside `scales` and `quants`.
            unsafe {
                let s = scales.as_ptr().add(q8_scales_at(npad, pc, kc, panel, g));
                for (q, sq) in scale.iter_mut().enumerate() {
                    *sq = _mm256_cvtph_ps(_mm_loadu_si128(s.add(8 * q).cast()));
                }
                if R == 1 {
                    // One row: the group's `x * q` summed with FMAs and scaled once, as
                    // `gemv_q8_avx512` does (two rows would need 8 more registers than AVX2
                    // has).
                    let mut group = [_mm256_setzero_ps(); 4];
                    for p in g * Q8_GROUP..(g + 1) * Q8_GROUP {
                        let at = quants.as_ptr().add(base + p * NR);
                        prefetch(at.wrapping_add(PREFETCH_BYTES));
                        let xv = _mm256_set1_ps(*x.as_ptr().add(pc + p));
                        for (q, part) in group.iter_mut().enumerate() {
                            let v = _mm256_cvtepi8_epi32(_mm_loadl_epi64(at.add(8 * q).cast()));
                            *part = _mm256_fmadd_ps(xv, _mm256_cvtepi32_ps(v), *part);
                        }
                    }
                    for ((sum, part), &sq) in sums[0].iter_mut().zip(&group).zip(&scale) {
                        *sum = _mm256_fmadd_ps(*part, sq, *sum);
                    }
                    continue;
                }
                for p in g * Q8_GROUP..(g + 1) * Q8_GROUP {
                    let at = quants.as_ptr().add(base + p * NR);
                    prefetch(at.wrapping_add(PREFETCH_BYTES));
                    let mut b = [_mm256_setzero_ps(); 4];
                    for (q, (bq, &sq)) in b.iter_mut().zip(&scale).enumerate() {
                        let v = _mm256_cvtepi8_epi32(_mm_loadl_epi64(at.add(8 * q).cast()));
                        *bq = _mm256_mul_ps(_mm256_cvtepi32_ps(v), sq);
                    }
                    accumulate_rows_avx2(&mut sums, x, k, pc + p, &b);
                }
            }
        }
        pc += kc;
    }
    // SAFETY: AVX2 is enabled here.
    unsafe { store_sums_avx2(&sums, acc) };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemv_panel_avx512(
    m: usize,
    k: usize,
    x: &[f32],
    bp: Panels,
    npad: usize,
    panel: usize,
    acc: &mut PanelAcc,
    wide: &mut [f32],
) {
    gemv_panel_rows(m, k, x, bp, npad, panel, acc, wide)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemv_panel_avx2(
    m: usize,
    k: usize,
    x: &[f32],
    bp: Panels,
    npad: usize,
    panel: usize,
    acc: &mut PanelAcc,
    wide: &mut [f32],
) {
    gemv_panel_rows(m, k, x, bp, npad, panel, acc, wide)
}

/// Dispatches on the row count, so each count's loop keeps its accumulators in registers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemv_panel_rows(
    m: usize,
    k: usize,
    x: &[f32],
    bp: Panels,
    npad: usize,
    panel: usize,
    acc: &mut PanelAcc,
    wide: &mut [f32],
) {
    match m {
        1 => gemv_panel_body::<1>(k, x, bp, npad, panel, acc, wide),
        2 => gemv_panel_body::<2>(k, x, bp, npad, panel, acc, wide),
        3 => gemv_panel_body::<3>(k, x, bp, npad, panel, acc, wide),
        _ => gemv_panel_body::<4>(k, x, bp, npad, panel, acc, wide),
    }
}

/// The loop the vectoriser compiles for the instruction set of the function it is inlined into.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemv_panel_body<const R: usize>(
    k: usize,
    x: &[f32],
    bp: Panels,
    npad: usize,
    panel: usize,
    acc: &mut PanelAcc,
    wide: &mut [f32],
) {
    let mut sums = [[0f32; NR]; R];
    let rows: [&[f32]; R] = std::array::from_fn(|r| &x[r * k..(r + 1) * k]);
    let mut pc = 0;
    while pc < k {
        let kc = KC.min(k - pc);
        let block = bp.slice(pc * npad + panel * NR * kc, kc * NR, wide);
        for (p, bv) in block.chunks_exact(NR).enumerate() {
            prefetch(bv.as_ptr().wrapping_add(PREFETCH_BYTES / 4));
            let bv: &[f32; NR] = bv.try_into().expect("NR values");
            for (sum, row) in sums.iter_mut().zip(&rows) {
                let xv = row[pc + p];
                for (s, &bj) in sum.iter_mut().zip(bv) {
                    *s += xv * bj;
                }
            }
        }
        pc += kc;
    }
    acc[..R].copy_from_slice(&sums);
}

/// Products with fewer rows than this split their columns between threads (each thread reads
/// its share of B once); taller ones split their rows.
const SPLIT_COLUMNS_BELOW: usize = 4 * MC;

/// [`sgemm`] with B packed by [`pack_b_full`], parallel when the product is large.
///
/// # Safety
/// As [`PackedB::matmul_raw`].
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_prepacked(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    bp: Panels,
    bias: Option<&[f32]>,
    act: Act,
    c: OutPtr,
) {
    let threads = rayon::current_num_threads().max(1);
    let npad = n.div_ceil(NR) * NR;
    let isa = Isa::detect();
    // One thread's block of rows `r0..r0 + rows`, or all of them.
    let rows_on_one = |r0: usize, rows: usize| {
        let a = MatRef {
            data: &a.data[r0 * a.rs..],
            rs: a.rs,
            cs: a.cs,
        };
        // SAFETY: rows `r0..r0 + rows` of the C the caller vouches for, `n` apart; the threads
        // of a row split write disjoint rows.
        unsafe {
            gemm_block_raw(
                isa,
                rows,
                k,
                ASrc::Raw(a),
                bp,
                npad,
                0,
                n,
                bias,
                act,
                c.at(r0 * n),
                n,
            )
        }
    };
    if threads == 1 || m * n * k < (1 << 21) {
        rows_on_one(0, m);
        return;
    }
    if m < SPLIT_COLUMNS_BELOW {
        // Column ranges of whole panels, one or two per thread, over A packed once and shared;
        // each writes its columns of C in place.
        let panels = npad / NR;
        if panels < 2 {
            rows_on_one(0, m);
            return;
        }
        // On AMX each part splits A's rows into bf16 parts itself, from A as it lies.
        #[cfg(target_arch = "x86_64")]
        let amx = amx_bits(isa, bp, m).is_some();
        #[cfg(not(target_arch = "x86_64"))]
        let amx = false;
        let mut ap = Vec::new();
        if !amx {
            pack_a_into(m, k, &a, &mut ap);
        }
        let mpad = m.div_ceil(MR) * MR;
        let per = panels.div_ceil(threads * 2).max(1) * NR;
        (0..n.div_ceil(per)).into_par_iter().for_each(|i| {
            let j0 = i * per;
            let len = per.min(n - j0);
            let a = if amx {
                ASrc::Raw(a)
            } else {
                ASrc::Packed { data: &ap, mpad }
            };
            // SAFETY: the C the caller vouches for; the parts write disjoint column ranges
            // `j0..j0 + len` of it.
            unsafe { gemm_block_raw(isa, m, k, a, bp, npad, j0, len, bias, act, c.at(j0), n) };
        });
        return;
    }
    if m < 2 * MR {
        rows_on_one(0, m);
        return;
    }
    // Near-equal row ranges, multiples of MR, a few per thread for balance.
    let per = m.div_ceil(threads * 2).div_ceil(MR) * MR;
    (0..m.div_ceil(per))
        .into_par_iter()
        .for_each(|i| rows_on_one(i * per, per.min(m - i * per)));
}

/// Lays out the transpose of row-major `w` (`n` rows of `k`) as [`pack_b_full`] lays out B,
/// each value through `f`, into `out` (`k` x `n` rounded up to `NR`, zeros where the last panel
/// is padded). A weight's load: each panel of each `KC` block is a job for rayon, written from
/// `NR` rows of `w` read in order.
///
/// # Panics
/// If `w` holds fewer than `n * k` values or `out` is not `k * npad` long.
fn pack_rows<S, T>(w: &[S], n: usize, k: usize, out: &mut [T], f: impl Fn(S) -> T + Sync)
where
    S: Copy + Sync,
    T: Copy + Default + Send,
{
    pack_rows_turning(w, n, k, out, f, |_, _, _| false);
}

/// [`pack_rows`] of 16-bit values kept as they are: a whole panel's eight inputs at a time
/// turned in registers (AVX2) where the CPU has them, at about a quarter of the scalar turn's
/// time.
fn pack_rows_u16(w: &[u16], n: usize, k: usize, out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        return pack_rows_turning(
            w,
            n,
            k,
            out,
            |x| x,
            |src, stride, dst| {
                // SAFETY: AVX2 was detected above; `turn_32x8_u16_avx2` checks the bounds.
                unsafe { turn_32x8_u16_avx2(src, stride, dst) };
                true
            },
        );
    }
    pack_rows(w, n, k, out, |x| x);
}

/// [`pack_rows`], with `whole(src, k, dst)` offered each whole `NR` x 8 block first: `src`
/// starts at the block's first value (row after row `k` apart) and `dst` is the block's eight
/// rows of `NR` outputs; it returns false to leave the block to the scalar turn.
fn pack_rows_turning<S, T>(
    w: &[S],
    n: usize,
    k: usize,
    out: &mut [T],
    f: impl Fn(S) -> T + Sync,
    whole: impl Fn(&[S], usize, &mut [T]) -> bool + Sync,
) where
    S: Copy + Sync,
    T: Copy + Default + Send,
{
    let npad = n.div_ceil(NR) * NR;
    assert!(
        w.len() >= n * k,
        "{} values for a {n} x {k} weight",
        w.len()
    );
    assert_eq!(out.len(), k * npad, "packing a {n} x {k} weight");
    if out.is_empty() {
        return;
    }
    out.par_chunks_mut(KC * npad)
        .enumerate()
        .for_each(|(block, out)| {
            let pc = block * KC;
            let kc = out.len() / npad;
            out.par_chunks_mut(NR * kc)
                .enumerate()
                .for_each(|(panel, out)| {
                    let j0 = panel * NR;
                    let lanes = NR.min(n - j0);
                    // Eight inputs of every row at a time, turned in a small block on the
                    // stack, so that both `w` and `out` are read and written in order.
                    let mut block = [[T::default(); NR]; 8];
                    let mut p0 = 0;
                    while p0 < kc {
                        let len = 8.min(kc - p0);
                        if lanes == NR
                            && len == 8
                            && whole(
                                &w[j0 * k + pc + p0..(j0 + NR - 1) * k + pc + p0 + 8],
                                k,
                                &mut out[p0 * NR..(p0 + 8) * NR],
                            )
                        {
                            p0 += 8;
                            continue;
                        }
                        let rows = w[j0 * k..n * k].chunks_exact(k).take(lanes);
                        for (l, row) in rows.enumerate() {
                            let inputs = &row[pc + p0..pc + p0 + len];
                            for (b, &v) in block.iter_mut().zip(inputs) {
                                b[l] = f(v);
                            }
                        }
                        for (dp, b) in block[..len].iter().enumerate() {
                            let at = (p0 + dp) * NR;
                            out[at..at + lanes].copy_from_slice(&b[..lanes]);
                        }
                        p0 += len;
                    }
                });
        });
}

/// Turns a block of 16-bit values: `NR` (32) rows of eight, `stride` apart in `src`, into eight
/// rows of 32 in `dst`. Each of two halves loads rows `r` and `r + 8` into the two lanes of a
/// register and turns both 8 x 8 squares at once (16-, 32-, then 64-bit interleaves), so that
/// each result register holds one input of 16 rows.
///
/// # Panics
/// If `src` is shorter than `31 * stride + 8` or `dst` than 256.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn turn_32x8_u16_avx2(src: &[u16], stride: usize, dst: &mut [u16]) {
    use std::arch::x86_64::*;
    assert!(src.len() >= 31 * stride + 8 && dst.len() >= 8 * NR);
    for half in 0..2 {
        let row = |r: usize| {
            let at = (half * 16 + r) * stride;
            // SAFETY: `at + 8 <= src.len()` by the assertion above (r < 16, half < 2).
            unsafe { _mm_loadu_si128(src.as_ptr().add(at).cast()) }
        };
        let a: [__m256i; 8] = std::array::from_fn(|r| _mm256_set_m128i(row(r + 8), row(r)));
        let t = [
            _mm256_unpacklo_epi16(a[0], a[1]),
            _mm256_unpackhi_epi16(a[0], a[1]),
            _mm256_unpacklo_epi16(a[2], a[3]),
            _mm256_unpackhi_epi16(a[2], a[3]),
            _mm256_unpacklo_epi16(a[4], a[5]),
            _mm256_unpackhi_epi16(a[4], a[5]),
            _mm256_unpacklo_epi16(a[6], a[7]),
            _mm256_unpackhi_epi16(a[6], a[7]),
        ];
        let u = [
            _mm256_unpacklo_epi32(t[0], t[2]),
            _mm256_unpackhi_epi32(t[0], t[2]),
            _mm256_unpacklo_epi32(t[1], t[3]),
            _mm256_unpackhi_epi32(t[1], t[3]),
            _mm256_unpacklo_epi32(t[4], t[6]),
            _mm256_unpackhi_epi32(t[4], t[6]),
            _mm256_unpacklo_epi32(t[5], t[7]),
            _mm256_unpackhi_epi32(t[5], t[7]),
        ];
        // Input p of rows 0-7 (low lane) and 8-15 (high lane).
        let v = [
            _mm256_unpacklo_epi64(u[0], u[4]),
            _mm256_unpackhi_epi64(u[0], u[4]),
            _mm256_unpacklo_epi64(u[1], u[5]),
            _mm256_unpackhi_epi64(u[1], u[5]),
            _mm256_unpacklo_epi64(u[2], u[6]),
            _mm256_unpackhi_epi64(u[2], u[6]),
            _mm256_unpacklo_epi64(u[3], u[7]),
            _mm256_unpackhi_epi64(u[3], u[7]),
        ];
        for (p, v) in v.into_iter().enumerate() {
            // SAFETY: `p * NR + half * 16 + 16 <= 8 * NR <= dst.len()`.
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(p * NR + half * 16).cast(), v) };
        }
    }
}

/// Packs all of B (`k` x `n`) into `bp`: for each `KC` block of rows, `NR`-column panels of
/// `kc` x `NR` values, zero-padded to a multiple of `NR` columns.
fn pack_b_full(k: usize, n: usize, b: &MatRef, bp: &mut Vec<f32>) {
    let npad = n.div_ceil(NR) * NR;
    // Every value is written below (panels are zero-padded as they are packed).
    bp.resize(k * npad, 0.0);
    let mut pc = 0;
    while pc < k {
        let kc = KC.min(k - pc);
        pack_b(b, pc, kc, 0, n, &mut bp[pc * npad..(pc + kc) * npad]);
        pc += kc;
    }
}

/// `c[.., ..len] = act(a B[:, j0..j0 + len] + bias[j0..])` on one thread, where `bp` holds all
/// of B packed with `npad` columns, `j0` is a multiple of `NR` and C's rows are `ldc` apart.
/// `isa` must come from [`Isa::detect`] (or name less than it).
#[allow(clippy::too_many_arguments)]
fn gemm_block(
    isa: Isa,
    m: usize,
    k: usize,
    a: ASrc,
    bp: Panels,
    npad: usize,
    j0: usize,
    len: usize,
    bias: Option<&[f32]>,
    act: Act,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || len == 0 {
        return;
    }
    assert!(
        len <= ldc && c.len() >= (m - 1) * ldc + len,
        "C holds {} values, not {m} rows of {len} at {ldc} apart",
        c.len()
    );
    // SAFETY: just checked that every row of the block lies inside `c`, which is borrowed
    // mutably for the call.
    unsafe {
        gemm_block_raw(
            isa,
            m,
            k,
            a,
            bp,
            npad,
            j0,
            len,
            bias,
            act,
            c.as_mut_ptr(),
            ldc,
        )
    }
}

/// Where a GEMM reads A: as it lies, packed block by block as the product goes, or already
/// packed by [`pack_a_into`] for `mpad` rows (shared by the threads of a column split).
#[derive(Clone, Copy)]
enum ASrc<'a> {
    Raw(MatRef<'a>),
    Packed { data: &'a [f32], mpad: usize },
}

/// C's first element, shared by the threads of a split product (each writes its own rows or
/// columns).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: the threads sharing it write disjoint parts of C (see `sgemm_prepacked`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The address of the `j`-th value from C's first.
    fn at(self, j: usize) -> *mut f32 {
        self.0.wrapping_add(j)
    }
}

/// Packs all of A (`m` x `k`) into `ap` (resized; every value written) as `MR`-row panels, one
/// `KC` block of columns after another: block `pc` starts at `pc * mpad` (`mpad` = `m` rounded
/// up to `MR`), and within it the panel of rows `i..i + MR` at `i * kc`, as [`gemm_block_raw`]
/// reads it. The blocks are packed in parallel, so that a column split's threads do not wait
/// for one of them to copy all of A.
fn pack_a_into(m: usize, k: usize, a: &MatRef, ap: &mut Vec<f32>) {
    let mpad = m.div_ceil(MR) * MR;
    ap.resize(mpad * k, 0.0);
    ap.par_chunks_mut(mpad * KC)
        .enumerate()
        .for_each(|(i, block)| pack_a(a, 0, m, i * KC, block.len() / mpad, block));
}

/// [`gemm_block`] writing through a raw pointer: `c` is row 0, column `j0`'s element of C.
///
/// # Safety
/// `c.add(i * ldc + j)` must be valid for writes for every `i < m`, `j < len`, and no other
/// thread may touch those elements during the call. They may be uninitialised: each is written
/// by the first `KC` block of the product before any later block reads it.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_block_raw(
    isa: Isa,
    m: usize,
    k: usize,
    a: ASrc,
    bp: Panels,
    npad: usize,
    j0: usize,
    len: usize,
    bias: Option<&[f32]>,
    act: Act,
    c: *mut f32,
    ldc: usize,
) {
    debug_assert_eq!(j0 % NR, 0);
    if m == 0 || len == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..len {
                // SAFETY: inside the block the caller vouches for.
                unsafe { *c.add(i * ldc + j) = apply(act, bias.map_or(0.0, |b| b[j0 + j])) };
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let (Some(bits), ASrc::Raw(ar)) = (amx_bits(isa, bp, m), a) {
        // Whole blocks of 32 rows on AMX, the rest (fewer) on the f32 kernels: a 32-row
        // block for CLIP's last token at tiny (65 rows) made its products half as long again.
        let main = m / amx::ROWS * amx::ROWS;
        // SAFETY: as the caller vouches; `amx_bits` checked AMX.
        unsafe { gemm_block_amx(main, k, ar, bits, npad, j0, len, bias, act, c, ldc) };
        if main < m {
            let rest = MatRef {
                data: &ar.data[main * ar.rs..],
                ..ar
            };
            // SAFETY: the caller's rows `main..m` of C.
            unsafe {
                gemm_block_raw(
                    isa,
                    m - main,
                    k,
                    ASrc::Raw(rest),
                    bp,
                    npad,
                    j0,
                    len,
                    bias,
                    act,
                    c.add(main * ldc),
                    ldc,
                )
            };
        }
        return;
    }
    AP.with(|ap| {
        let mut ap = ap.borrow_mut();
        if ap.len() < KC * MC {
            ap.resize(KC * MC, 0.0);
        }
        // A bf16 B read by a few tiles a panel only is widened in the SIMD kernels'
        // registers; else each block of panels is widened once, here, for all of A's rows
        // (a panel widened once per block of `MC` rows was 6% of a small-mode encode).
        let direct = match bp {
            Panels::Half(Half::Bf16, bits)
                if isa != Isa::Portable && m.div_ceil(MR) <= DIRECT_TILES =>
            {
                Some(bits)
            }
            _ => None,
        };
        let mut wide = WIDE.with(|w| std::mem::take(&mut *w.borrow_mut()));
        // Widened blocks are kept narrow enough to stay in L2 beside A's block.
        let nc_max = match bp {
            Panels::F32(_) => NC,
            _ => NC_WIDENED,
        };
        let mut jc = 0;
        while jc < len {
            let nc = nc_max.min(len - jc);
            let panels = nc.div_ceil(NR);
            let mut pc = 0;
            while pc < k {
                let kc = KC.min(k - pc);
                let first = pc == 0;
                let last = pc + kc == k;
                let at0 = pc * npad + (j0 + jc) / NR * NR * kc;
                let block: &[f32] = match bp {
                    _ if direct.is_some() => &[],
                    Panels::F32(v) => &v[at0..at0 + panels * NR * kc],
                    _ => {
                        if wide.len() < panels * NR * kc {
                            wide.resize(panels * NR * kc, 0.0);
                        }
                        for (i, out) in wide[..panels * NR * kc]
                            .chunks_exact_mut(NR * kc)
                            .enumerate()
                        {
                            bp.slice(at0 + i * NR * kc, NR * kc, out);
                        }
                        &wide[..panels * NR * kc]
                    }
                };
                let mut ic = 0;
                while ic < m {
                    let mc = MC.min(m - ic);
                    let ablock: &[f32] = match a {
                        ASrc::Raw(a) => {
                            pack_a(&a, ic, mc, pc, kc, &mut ap);
                            &ap
                        }
                        ASrc::Packed { data, mpad } => &data[pc * mpad + ic * kc..],
                    };
                    let mut jr = 0;
                    while jr < nc {
                        let nr = NR.min(nc - jr);
                        let at = jr * kc;
                        let bpanel = match direct {
                            Some(bits) => B::Bf16(&bits[at0 + at..at0 + at + NR * kc]),
                            None => B::F32(&block[at..at + NR * kc]),
                        };
                        let mut ir = 0;
                        while ir < mc {
                            let mr = MR.min(mc - ir);
                            let apanel = &ablock[ir * kc..(ir + MR) * kc];
                            let c0 = (ic + ir) * ldc + jc + jr;
                            let col = j0 + jc + jr;
                            let tile = Tile {
                                mr,
                                nr,
                                ldc,
                                first,
                                last,
                                bias: bias.map(|b| &b[col..col + nr]),
                                act,
                            };
                            // SAFETY: `isa` was detected on this CPU; the panels hold
                            // `kc * MR` / `kc * NR` values and the tile stays inside the
                            // caller's block of C (`mr`/`nr` clip the edges).
                            unsafe {
                                match bpanel {
                                    B::F32(b) => kernel(isa, kc, apanel, b, c.add(c0), &tile),
                                    #[cfg(target_arch = "x86_64")]
                                    B::Bf16(b) if isa == Isa::Avx512 => kernel_avx512_rows::<true>(
                                        kc,
                                        apanel,
                                        b.as_ptr().cast(),
                                        c.add(c0),
                                        &tile,
                                    ),
                                    #[cfg(target_arch = "x86_64")]
                                    B::Bf16(b) => kernel_avx2_rows::<true>(
                                        kc,
                                        apanel,
                                        b.as_ptr().cast(),
                                        c.add(c0),
                                        &tile,
                                    ),
                                    #[cfg(not(target_arch = "x86_64"))]
                                    B::Bf16(_) => unreachable!("no AVX2 off x86-64"),
                                }
                            };
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
        WIDE.with(|w| *w.borrow_mut() = wide);
    });
}

/// A bf16 B's values when a product of `m` rows runs on AMX (see [`amx`]): the CPU has it, and
/// A has a whole block of 32 rows (its last rows, fewer, run on the f32 kernels).
#[cfg(target_arch = "x86_64")]
fn amx_bits<'a>(isa: Isa, bp: Panels<'a>, m: usize) -> Option<&'a [u16]> {
    match bp {
        Panels::Half(Half::Bf16, bits)
            if isa == Isa::Avx512 && m >= amx::ROWS && amx::available() =>
        {
            Some(bits)
        }
        _ => None,
    }
}

/// An AMX product's blocks: `NC_AMX` columns of B laid out in the tile multiply's pair order
/// at a time, `KC_AMX` inputs summed in one pass of the tiles (a multiple of `KC`), `MC_AMX`
/// rows of A split in three parts at a time. B's block (1 MB) and A's (384 KB) stay in L2.
#[cfg(target_arch = "x86_64")]
const NC_AMX: usize = 512;
#[cfg(target_arch = "x86_64")]
const KC_AMX: usize = 4 * KC;
#[cfg(target_arch = "x86_64")]
const MC_AMX: usize = 64;

thread_local! {
    /// Per-thread buffers of an AMX product: A's block in three bf16 parts, a row of A, and
    /// B's block in pair order.
    #[cfg(target_arch = "x86_64")]
    static AMX_BUFS: std::cell::RefCell<(Vec<u16>, Vec<f32>, Vec<u16>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// [`gemm_block_raw`] for a bf16 B on AMX: the same blocks (`NC_AMX` columns, `KC` inputs, `MC`
/// rows), each 32 x 32 block of C summed in tiles over a `KC` block, then stored by
/// [`store_tile`] (bias, accumulation and activation as every kernel does).
///
/// # Safety
/// As [`gemm_block_raw`], and [`amx::available`] must be true.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_block_amx(
    m: usize,
    k: usize,
    a: MatRef,
    bits: &[u16],
    npad: usize,
    j0: usize,
    len: usize,
    bias: Option<&[f32]>,
    act: Act,
    c: *mut f32,
    ldc: usize,
) {
    #[cfg(test)]
    tests::AMX_PRODUCTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: AMX as the caller vouches; released below.
    unsafe { amx::configure() };
    AMX_BUFS.with(|bufs| {
        let (ap, gathered, bv) = &mut *bufs.borrow_mut();
        let mut jc = 0;
        while jc < len {
            let nc = NC_AMX.min(len - jc);
            let panels = nc.div_ceil(NR);
            // Inputs `pc..pc + kc` in one pass of the tiles (several of B's `KC` blocks).
            let mut pc = 0;
            while pc < k {
                let kc = KC_AMX.min(k - pc);
                let kp = amx::padded(kc);
                bv.resize(panels * kp * NR, 0);
                let mut ps = pc;
                while ps < pc + kc {
                    let kcs = KC.min(k - ps);
                    let at = ps * npad + (j0 + jc) / NR * NR * kcs;
                    // SAFETY: AMX, as the caller vouches, comes with AVX-512F and BW.
                    unsafe {
                        amx::pack_b(
                            &bits[at..at + panels * NR * kcs],
                            panels,
                            kcs,
                            ps - pc,
                            kp,
                            bv,
                        )
                    };
                    ps += kcs;
                }
                amx::zero_b_padding(bv, panels, kc, kp);
                let mut ic = 0;
                while ic < m {
                    let mc = MC_AMX.min(m - ic);
                    if a.cs == 1 {
                        amx::pack_a(mc, kc, |r| &a.data[(ic + r) * a.rs + pc..][..kc], ap);
                    } else {
                        // A strided A's rows gathered first.
                        gathered.clear();
                        gathered.resize(mc * kc, 0.0);
                        for (r, out) in gathered.chunks_exact_mut(kc).enumerate() {
                            for (p, v) in out.iter_mut().enumerate() {
                                *v = a.at(ic + r, pc + p);
                            }
                        }
                        amx::pack_a(mc, kc, |r| &gathered[r * kc..][..kc], ap);
                    }
                    let part = mc.div_ceil(amx::ROWS) * amx::ROWS * kp;
                    let mut out = [[0f32; NR]; amx::ROWS];
                    for jr in 0..panels {
                        let nr = NR.min(nc - jr * NR);
                        let col = j0 + jc + jr * NR;
                        for ir in (0..mc).step_by(amx::ROWS) {
                            let at = ir * kp;
                            let parts = [&ap[at..], &ap[part + at..], &ap[2 * part + at..]];
                            let tile = Tile {
                                mr: amx::ROWS.min(mc - ir),
                                nr,
                                ldc,
                                first: pc == 0,
                                last: pc + kc == k,
                                bias: bias.map(|b| &b[col..col + nr]),
                                act,
                            };
                            let whole = tile.whole(amx::ROWS);
                            let cb = c.wrapping_add((ic + ir) * ldc + jc + jr * NR);
                            // A whole block is summed in C itself (from what it holds after
                            // the first pass); an edge block in `out`, stored by `store_tile`.
                            let (dst, ld) = if whole {
                                (cb, ldc)
                            } else {
                                (out.as_mut_ptr().cast::<f32>(), NR)
                            };
                            // SAFETY: AMX configured above as the caller vouches; each part
                            // holds 32 rows of `kp` from `at` (`mc` rounded up to 32), the
                            // panel `kp * NR`; `dst` is a whole block of C or `out`.
                            unsafe {
                                amx::block(
                                    parts.map(<[u16]>::as_ptr),
                                    kp,
                                    bv[jr * kp * NR..][..kp * NR].as_ptr(),
                                    kp / amx::KSTEP,
                                    dst,
                                    ld,
                                    whole && pc > 0,
                                );
                                finish_amx_block(&out, cb, &tile);
                            }
                        }
                    }
                    ic += mc;
                }
                pc += kc;
            }
            jc += nc;
        }
    });
    // SAFETY: as above.
    unsafe { amx::release() };
}

/// Up to this many tiles a panel (rows of A), the SIMD kernels read bf16 panels as they are
/// held and widen them in registers: for the few rows of a routed expert, widening each panel
/// into a buffer first cost as much as a fifth of the product.
const DIRECT_TILES: usize = 3;

/// One panel of B as a tile reads it.
#[derive(Clone, Copy)]
enum B<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

thread_local! {
    /// Per-thread buffer for one block of B's panels (up to `KC` x `NC_WIDENED`) widened from
    /// 16 bits or from q8_0.
    static WIDE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread buffer for packed A blocks.
    static AP: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Packs rows `ic..ic+mc`, columns `pc..pc+kc` of A into `MR`-row panels (`kc` x `MR` each,
/// zero-padded).
fn pack_a(a: &MatRef, ic: usize, mc: usize, pc: usize, kc: usize, ap: &mut [f32]) {
    pack_panels::<MR>(a, ic, mc, pc, kc, ap);
}

/// Packs rows `pc..pc+kc`, columns `jc..jc+nc` of B into `NR`-column panels (`kc` x `NR`
/// each, zero-padded).
fn pack_b(b: &MatRef, pc: usize, kc: usize, jc: usize, nc: usize, bp: &mut [f32]) {
    // B's columns are the panels' lanes: pack its transpose as A is packed.
    let bt = MatRef {
        data: b.data,
        rs: b.cs,
        cs: b.rs,
    };
    pack_panels::<NR>(&bt, jc, nc, pc, kc, bp);
}

/// Packs rows `o0..o0+olen` (the lanes), columns `i0..i0+ilen` of `src` into `W`-lane panels:
/// in panel `q`, element `(o0 + q W + l, i0 + p)` lands at `p * W + l`; lanes past `olen` are 0.
fn pack_panels<const W: usize>(
    src: &MatRef,
    o0: usize,
    olen: usize,
    i0: usize,
    ilen: usize,
    dst: &mut [f32],
) {
    for (panel, q) in (0..olen).step_by(W).enumerate() {
        let dst = &mut dst[panel * W * ilen..(panel + 1) * W * ilen];
        let lanes = W.min(olen - q);
        if src.rs == 1 && lanes == W {
            // Lanes contiguous in memory: one copy per column.
            for p in 0..ilen {
                let from = &src.data[(i0 + p) * src.cs + o0 + q..][..W];
                dst[p * W..(p + 1) * W].copy_from_slice(from);
            }
        } else if src.cs == 1 && lanes == W {
            // Rows contiguous, a whole panel: interleave the W rows, writing `dst` in order.
            let rows: [&[f32]; W] =
                std::array::from_fn(|l| &src.data[(o0 + q + l) * src.rs + i0..][..ilen]);
            for (p, out) in dst.chunks_exact_mut(W).take(ilen).enumerate() {
                for (o, row) in out.iter_mut().zip(&rows) {
                    *o = row[p];
                }
            }
        } else if src.cs == 1 {
            // Rows contiguous: read each lane's row once.
            for l in 0..W {
                if l < lanes {
                    let row = &src.data[(o0 + q + l) * src.rs + i0..][..ilen];
                    for (p, &v) in row.iter().enumerate() {
                        dst[p * W + l] = v;
                    }
                } else {
                    for p in 0..ilen {
                        dst[p * W + l] = 0.0;
                    }
                }
            }
        } else {
            for p in 0..ilen {
                for l in 0..W {
                    dst[p * W + l] = if l < lanes {
                        src.at(o0 + q + l, i0 + p)
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

impl Tile<'_> {
    /// Whether the tile is all of a kernel's `rows` x `NR`: the SIMD kernels then store it
    /// straight from their registers, activation included.
    fn whole(&self, rows: usize) -> bool {
        self.mr == rows && self.nr == NR
    }
}

/// Stores an `MR` x `NR` accumulator block into C at `c`.
///
/// # Safety
/// `c.add(r * t.ldc + j)` must be valid for writes for `r < t.mr`, `j < t.nr`, and for reads
/// too unless `t.first` (the first k-block only writes C, which may be uninitialised), and
/// untouched by other threads during the call.
#[inline(always)]
unsafe fn store_tile(acc: &[[f32; NR]], c: *mut f32, t: &Tile) {
    for (r, acc_row) in acc.iter().enumerate().take(t.mr) {
        let mut row = *acc_row;
        // SAFETY: one row of the tile, inside the block the caller vouches for.
        let dst = unsafe { c.add(r * t.ldc) };
        if t.nr == NR {
            // A whole row: lengths known at compile time, so the loops below unroll and the
            // copy is a few vector moves instead of a `memcpy` call.
            // SAFETY: as above, read only when the caller allows it.
            unsafe { finish_row(&mut row, dst, t) };
            // SAFETY: `NR` values of the row; `[f32; NR]` needs only `f32`'s alignment.
            unsafe { dst.cast::<[f32; NR]>().write(row) };
        } else {
            // SAFETY: as above.
            unsafe { finish_row(&mut row[..t.nr], dst, t) };
            // SAFETY: the tile's `t.nr` values of the row.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), dst, t.nr) };
        }
    }
}

/// One row of a tile before it is stored at `dst`: the bias on the first k-block (else what C
/// holds so far, read from `dst`) added, and the activation applied on the last.
///
/// # Safety
/// Unless `t.first`, `dst` must be valid for reads of `row.len()` values.
#[inline(always)]
unsafe fn finish_row(row: &mut [f32], dst: *const f32, t: &Tile) {
    if t.first {
        if let Some(b) = t.bias {
            for (x, &bv) in row.iter_mut().zip(b) {
                *x += bv;
            }
        }
    } else {
        // SAFETY: the caller vouches for the row after the first k-block.
        let held = unsafe { std::slice::from_raw_parts(dst, row.len()) };
        for (x, &d) in row.iter_mut().zip(held) {
            *x += d;
        }
    }
    if t.last {
        activate(row, t.act);
    }
}

/// `act` applied to each value of `row`, in place. Plain loops (not `for_each`, which is not
/// inlined) so that the activation vectorises at the width of the kernel this is inlined into.
#[inline(always)]
fn activate(row: &mut [f32], act: Act) {
    match act {
        Act::None => {}
        Act::Gelu => {
            for x in row.iter_mut() {
                *x = apply(Act::Gelu, *x);
            }
        }
        Act::QuickGelu => {
            for x in row.iter_mut() {
                *x = apply(Act::QuickGelu, *x);
            }
        }
    }
}

/// # Safety
/// As [`store_tile`].
unsafe fn kernel_portable(kc: usize, a: &[f32], b: &[f32], c: *mut f32, t: &Tile) {
    let mut acc = [[0f32; NR]; MR];
    for (ap, bv) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        for (row, &av) in acc.iter_mut().zip(ap) {
            for (x, &bj) in row.iter_mut().zip(bv) {
                *x += av * bj;
            }
        }
    }
    // SAFETY: the caller's guarantee.
    unsafe { store_tile(&acc, c, t) };
}

/// The instruction set the micro-kernel uses, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// AVX-512F: each row of the tile is two 16-lane registers, 12 accumulators.
    Avx512,
    /// AVX2 + FMA: the tile in two halves of 16 columns, 12 accumulators each.
    Avx2,
    /// Plain Rust.
    Portable,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && !force_avx2() {
                return Self::Avx512;
            }
        }
        if has_fma() {
            return Self::Avx2;
        }
        Self::Portable
    }
}

/// `LETHE_CPU_KERNEL=avx2` keeps the AVX2 micro-kernel on an AVX-512 machine (to compare or
/// to test both paths); read once.
#[cfg(target_arch = "x86_64")]
fn force_avx2() -> bool {
    static FORCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCE.get_or_init(|| std::env::var("LETHE_CPU_KERNEL").is_ok_and(|v| v == "avx2"))
}

/// One `MR` x `NR` tile: `a` holds `kc * MR` packed values, `b` `kc * NR`; C's tile starts at
/// `c`.
///
/// # Safety
/// `isa` must be supported by this CPU (from [`Isa::detect`]), and `c` as [`store_tile`] needs
/// it.
#[inline(always)]
unsafe fn kernel(isa: Isa, kc: usize, a: &[f32], b: &[f32], c: *mut f32, t: &Tile) {
    debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR);
    match isa {
        // SAFETY: the caller guarantees the CPU has the instructions of `isa`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { kernel_avx512_rows::<false>(kc, a, b.as_ptr().cast(), c, t) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { kernel_avx2_rows::<false>(kc, a, b.as_ptr().cast(), c, t) },
        // SAFETY: as above.
        _ => unsafe { kernel_portable(kc, a, b, c, t) },
    }
}

/// A tile of `$t.mr` rows sent to the kernel built for that many: `$short` up to 3 rows,
/// `$whole` from 4 (`MR` for a whole tile); `$bf16` and the arguments passed through.
#[cfg(target_arch = "x86_64")]
macro_rules! by_rows {
    ($t:expr, $short:ident, $whole:ident, $bf16:ident, $($arg:expr),+) => {
        match $t.mr {
            1 => $short::<1, $bf16>($($arg),+),
            2 => $short::<2, $bf16>($($arg),+),
            3 => $short::<3, $bf16>($($arg),+),
            4 => $whole::<4, $bf16>($($arg),+),
            5 => $whole::<5, $bf16>($($arg),+),
            _ => $whole::<MR, $bf16>($($arg),+),
        }
    };
}

/// An AVX2 tile of `t.mr` rows (see [`kernel`]), B read as f32 or, with `BF16`, as bf16 bits
/// widened in registers.
///
/// # Safety
/// As [`kernel_avx2`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn kernel_avx2_rows<const BF16: bool>(
    kc: usize,
    a: &[f32],
    b: *const u8,
    c: *mut f32,
    t: &Tile,
) {
    // SAFETY: as the caller vouches.
    unsafe {
        // A product's last tile multiplies only its own rows (a routed expert's 26 rows
        // were five whole tiles, 30 rows' work: 76 -> 86 GFLOP/s on one Zen 3 core).
        by_rows!(t, kernel_avx2_short, kernel_avx2, BF16, kc, a, b, c, t)
    }
}

/// Eight lanes of a B panel from `$b` (a byte pointer) at value `$at`: f32, or with `$bf16`
/// bf16 bits widened in registers (zero-extended to 32 bits, moved to the upper half).
#[cfg(target_arch = "x86_64")]
macro_rules! load_b {
    ($bf16:expr, $b:expr, $at:expr) => {
        if $bf16 {
            let bits = _mm_loadu_si128($b.cast::<u16>().add($at).cast());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
        } else {
            _mm256_loadu_ps($b.cast::<f32>().add($at))
        }
    };
}

/// Stores a whole tile's accumulators, two registers of `$w` lanes a row for columns `$col..`,
/// straight into C at `$c`: plus the bias on the first k-block, else plus what C holds. The
/// intrinsics name the register width; call it where the caller's `unsafe` covers the loads
/// and stores (a whole tile inside the block `$t` describes).
#[cfg(target_arch = "x86_64")]
macro_rules! store_whole {
    ($acc:expr, $c:expr, $t:expr, $col:expr, $w:expr, $load:ident, $add:ident, $store:ident) => {{
        let bias = $t.bias.map(|b| {
            (
                $load(b.as_ptr().add($col)),
                $load(b.as_ptr().add($col + $w)),
            )
        });
        for (r, row) in $acc.iter().enumerate() {
            let cp = $c.add(r * $t.ldc + $col);
            let (mut v0, mut v1) = (row[0], row[1]);
            if $t.first {
                if let Some((x0, x1)) = bias {
                    v0 = $add(v0, x0);
                    v1 = $add(v1, x1);
                }
            } else {
                v0 = $add(v0, $load(cp));
                v1 = $add(v1, $load(cp.add($w)));
            }
            if $t.last && $t.act != Act::None {
                // The row's two registers through the vectorised scalar code (which keeps
                // them in registers): no trip through `store_tile`'s buffer.
                let mut lanes = [0f32; 2 * $w];
                $store(lanes.as_mut_ptr(), v0);
                $store(lanes.as_mut_ptr().add($w), v1);
                activate(&mut lanes, $t.act);
                v0 = $load(lanes.as_ptr());
                v1 = $load(lanes.as_ptr().add($w));
            }
            $store(cp, v0);
            $store(cp.add($w), v1);
        }
    }};
}

/// Finishes an AMX block of C at `c` after [`amx::block`]: a whole one, summed in C, gets
/// the bias on the first k-block and the activation on the last, in AVX-512 registers; an edge
/// one, summed in `out`, is stored by [`store_tile`].
///
/// # Safety
/// As [`store_tile`] for `t`'s rows and columns of C at `c`, with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn finish_amx_block(out: &[[f32; NR]; amx::ROWS], c: *mut f32, t: &Tile) {
    use std::arch::x86_64::*;
    if !t.whole(amx::ROWS) {
        // SAFETY: as the caller vouches.
        unsafe { store_tile(out, c, t) };
        return;
    }
    // C holds the whole sum already: what is left is a first block's bias and a last block's
    // activation, which `store_whole!` adds to registers loaded from C (as "first", so that it
    // does not add C to itself).
    let bias = t.bias.filter(|_| t.first);
    if bias.is_none() && !(t.last && t.act != Act::None) {
        return;
    }
    let t = Tile {
        first: true,
        bias,
        ..*t
    };
    // SAFETY: the whole block's rows, written by the tiles.
    unsafe {
        let acc: [[__m512; 2]; amx::ROWS] = std::array::from_fn(|r| {
            let row = c.add(r * t.ldc);
            [_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16))]
        });
        store_whole!(
            acc,
            c,
            t,
            0,
            16,
            _mm512_loadu_ps,
            _mm512_add_ps,
            _mm512_storeu_ps
        );
    }
}

/// An AVX-512 tile of `t.mr` rows (see [`kernel`]), B read as f32 or, with `BF16`, as bf16
/// bits widened in registers. A product's last tile multiplies only its own rows.
///
/// # Safety
/// As [`kernel_avx512`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn kernel_avx512_rows<const BF16: bool>(
    kc: usize,
    a: &[f32],
    b: *const u8,
    c: *mut f32,
    t: &Tile,
) {
    // SAFETY: as the caller vouches.
    unsafe { by_rows!(t, kernel_avx512, kernel_avx512, BF16, kc, a, b, c, t) }
}

/// Sixteen lanes of a B panel from `$b` (a byte pointer) at value `$at`: f32, or with `$bf16`
/// bf16 bits widened in registers (as [`load_b`] does for eight).
#[cfg(target_arch = "x86_64")]
macro_rules! load_b16 {
    ($bf16:expr, $b:expr, $at:expr) => {
        if $bf16 {
            let bits = _mm256_loadu_si256($b.cast::<u16>().add($at).cast());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
        } else {
            _mm512_loadu_ps($b.cast::<f32>().add($at))
        }
    };
}

/// Asks for the `R` rows of C's tile at `c` (`ldc` apart, `NR` values each: two cache lines,
/// or three where C is not 64-byte aligned, as a large buffer from `malloc` is not) while the
/// micro-kernel multiplies: a large product's C is far from the core, and its store waited on
/// each row's load (or, on the first k-block, on the line's ownership).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_tile<const R: usize>(c: *mut f32, ldc: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for r in 0..R {
        let row = c.wrapping_add(r * ldc).cast::<i8>();
        // SAFETY: a prefetch is a hint: it reads nothing the program sees and does not fault.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(row);
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(64));
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(NR * 4 - 1));
        }
    }
}

/// The AVX-512 micro-kernel for a tile of `R` rows (`t.mr == R`): each row two 16-lane
/// registers, `2 R` accumulators. `b` points at the panel's `kc * NR` values: f32, or with
/// `BF16` bf16 bits widened as they are loaded. Each element is summed in the same order at
/// every `R`, so a short tile's values are those of a whole one.
///
/// # Safety
/// As [`kernel`], with AVX-512F, `t.mr == R`, and `b` valid for reads of `kc * NR` values of
/// its type.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512<const R: usize, const BF16: bool>(
    kc: usize,
    a: &[f32],
    b: *const u8,
    c: *mut f32,
    t: &Tile,
) {
    debug_assert_eq!(t.mr, R);
    // SAFETY: the caller checked AVX-512F; every load reads within `a` (`kc * MR` values, of
    // which the first `R` a step) and `b` (`kc * NR` of its type), and every store writes
    // within the tile of `c` that `t` describes.
    unsafe {
        use std::arch::x86_64::*;
        prefetch_tile::<R>(c, t.ldc);
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let ap = a.as_ptr();
        for p in 0..kc {
            let b0 = load_b16!(BF16, b, p * NR);
            let b1 = load_b16!(BF16, b, p * NR + 16);
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(p * MR + r));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            }
        }
        if t.whole(R) {
            store_whole!(
                acc,
                c,
                t,
                0,
                16,
                _mm512_loadu_ps,
                _mm512_add_ps,
                _mm512_storeu_ps
            );
            return;
        }
        let mut tmp = [[0f32; NR]; R];
        for (r, row) in acc.iter().enumerate() {
            _mm512_storeu_ps(tmp[r].as_mut_ptr(), row[0]);
            _mm512_storeu_ps(tmp[r].as_mut_ptr().add(16), row[1]);
        }
        store_tile(&tmp, c, t);
    }
}

/// The AVX2 micro-kernel for a tile of `R` rows (4 to `MR`, `t.mr == R`; [`kernel_avx2_short`]
/// takes fewer): the `NR` columns in two halves of 16, `2 R` accumulators each. `b` points at
/// the panel's `kc * NR` values: f32, or with `BF16` bf16 bits widened as they are loaded.
///
/// # Safety
/// As [`kernel`], with AVX2 and FMA, and `b` valid for reads of `kc * NR` values of its type.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2<const R: usize, const BF16: bool>(
    kc: usize,
    a: &[f32],
    b: *const u8,
    c: *mut f32,
    t: &Tile,
) {
    // SAFETY: the caller checked AVX2 and FMA; every load reads within `a` (`kc * MR` values)
    // and `b` (`kc * NR` of its type); the tile is stored (by `store_whole!` or `store_tile`)
    // within `t`'s bounds.
    unsafe {
        use std::arch::x86_64::*;
        // Written whole (both halves of every row) before it is read, and only on the path
        // that needs it: zeroing it on entry was a `memset` call a tile, 3% of an encode.
        let mut tmp = std::mem::MaybeUninit::<[[f32; NR]; R]>::uninit();
        let tp = tmp.as_mut_ptr().cast::<f32>();
        let ap = a.as_ptr();
        let whole = t.whole(R);
        prefetch_tile::<R>(c, t.ldc);
        for half in 0..2 {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for p in 0..kc {
                let b0 = load_b!(BF16, b, p * NR + half * 16);
                let b1 = load_b!(BF16, b, p * NR + half * 16 + 8);
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*ap.add(p * MR + r));
                    row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                    row[1] = _mm256_fmadd_ps(av, b1, row[1]);
                }
            }
            if whole {
                let col = half * 16;
                store_whole!(
                    acc,
                    c,
                    t,
                    col,
                    8,
                    _mm256_loadu_ps,
                    _mm256_add_ps,
                    _mm256_storeu_ps
                );
                continue;
            }
            for (r, row) in acc.iter().enumerate() {
                _mm256_storeu_ps(tp.add(r * NR + half * 16), row[0]);
                _mm256_storeu_ps(tp.add(r * NR + half * 16 + 8), row[1]);
            }
        }
        if whole {
            return;
        }
        store_tile(&tmp.assume_init(), c, t);
    }
}

/// [`kernel_avx2`] for a tile of `R <= 3` rows (the last rows of a product whose row count is
/// not a multiple of `MR`: a routed expert's few dozen tokens): all `NR` columns in one pass,
/// `4 R` accumulators, instead of the whole `MR`-row tile in two halves with its padding rows
/// multiplied too. Each element is summed in the same order, so the values are the same.
///
/// # Safety
/// As [`kernel_avx2`], with `t.mr == R`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2_short<const R: usize, const BF16: bool>(
    kc: usize,
    a: &[f32],
    b: *const u8,
    c: *mut f32,
    t: &Tile,
) {
    debug_assert_eq!(t.mr, R);
    // SAFETY: as in `kernel_avx2`; the A panel holds `MR` values a step, of which the first
    // `R` are read.
    unsafe {
        use std::arch::x86_64::*;
        prefetch_tile::<R>(c, t.ldc);
        let mut lo = [[_mm256_setzero_ps(); 2]; R];
        let mut hi = [[_mm256_setzero_ps(); 2]; R];
        let ap = a.as_ptr();
        for p in 0..kc {
            // The row values first, then one B vector at a time (at three rows, 12
            // accumulators, 3 broadcasts and one B vector fill the 16 registers).
            let mut av = [_mm256_setzero_ps(); R];
            for (r, v) in av.iter_mut().enumerate() {
                *v = _mm256_broadcast_ss(&*ap.add(p * MR + r));
            }
            let b0 = load_b!(BF16, b, p * NR);
            for r in 0..R {
                lo[r][0] = _mm256_fmadd_ps(av[r], b0, lo[r][0]);
            }
            let b1 = load_b!(BF16, b, p * NR + 8);
            for r in 0..R {
                lo[r][1] = _mm256_fmadd_ps(av[r], b1, lo[r][1]);
            }
            let b2 = load_b!(BF16, b, p * NR + 16);
            for r in 0..R {
                hi[r][0] = _mm256_fmadd_ps(av[r], b2, hi[r][0]);
            }
            let b3 = load_b!(BF16, b, p * NR + 24);
            for r in 0..R {
                hi[r][1] = _mm256_fmadd_ps(av[r], b3, hi[r][1]);
            }
        }
        if t.whole(R) {
            for (half, acc) in [lo, hi].iter().enumerate() {
                store_whole!(
                    acc,
                    c,
                    t,
                    half * 16,
                    8,
                    _mm256_loadu_ps,
                    _mm256_add_ps,
                    _mm256_storeu_ps
                );
            }
            return;
        }
        let mut tmp = [[0f32; NR]; R];
        for r in 0..R {
            _mm256_storeu_ps(tmp[r].as_mut_ptr(), lo[r][0]);
            _mm256_storeu_ps(tmp[r].as_mut_ptr().add(8), lo[r][1]);
            _mm256_storeu_ps(tmp[r].as_mut_ptr().add(16), hi[r][0]);
            _mm256_storeu_ps(tmp[r].as_mut_ptr().add(24), hi[r][1]);
        }
        store_tile(&tmp, c, t);
    }
}

/// Whether the AVX2 code paths ([`Isa::Avx2`], softmax) can run: AVX2, FMA and F16C (the
/// matrix-vector products widen f16 in registers; every AVX2 CPU made has all three).
fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
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

/// `gate[i] = silu(gate[i]) * up[i]` (SwiGLU's gating, `silu(x) = x / (1 + e^-x)`), with the
/// crate's `exp` (relative error about 1e-7), 16 lanes at a time where the CPU has AVX-512F and
/// 8 where it has AVX2 and FMA.
///
/// # Panics
/// If the slices differ in length.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(
        gate.len(),
        up.len(),
        "silu_mul: gate and up differ in length"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if Isa::detect() == Isa::Avx512 {
            // SAFETY: `Isa::detect` found AVX-512F.
            unsafe { silu_mul_avx512(gate, up) };
            return;
        }
        if has_fma() {
            // SAFETY: `has_fma` found AVX2 and FMA.
            unsafe { silu_mul_avx2(gate, up) };
            return;
        }
    }
    silu_mul_body(gate, up);
}

#[inline(always)]
fn silu_mul_body(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(gate: &mut [f32], up: &[f32]) {
    silu_mul_body(gate, up);
}

/// [`silu_mul_body`] eight lanes at a time: the baseline build has no vector `floor` and calls
/// `floorf` once a value. The same arithmetic, so the same results.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) {
    silu_mul_body(gate, up);
}

/// Scales each `t`-long row of `s`, adds the decomposed relative bias (rows of `h` and `w`
/// of length `side`), and replaces it by its softmax numerators `exp(x - max)`, writing the
/// inverse of each row's sum to `inv`: the caller scales the (much narrower) rows of
/// `softmax . v` instead of the probabilities, a pass over the scores saved.
#[inline(always)]
fn bias_softmax(
    s: &mut [f32],
    t: usize,
    scale: f32,
    bias: Option<(&[f32], &[f32], usize)>,
    causal_from: Option<usize>,
    inv: &mut [f32],
) {
    for (i, (row, inv)) in s.chunks_exact_mut(t).zip(inv.iter_mut()).enumerate() {
        // Causal rows (the first being query `r0`) see keys up to their own position: the
        // rest get probability 0.
        let row = match causal_from {
            Some(r0) => {
                let (seen, masked) = row.split_at_mut((r0 + i + 1).min(t));
                masked.fill(0.0);
                seen
            }
            None => row,
        };
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
            None => {
                for x in row.iter_mut() {
                    *x *= scale;
                }
            }
        }
        let max = row_max(row);
        *inv = 1.0 / exp_sum(row, max);
    }
}

/// [`bias_softmax`] compiled for AVX-512F: `exp` 16 lanes at a time (the same arithmetic, so
/// the same results, as the other builds).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bias_softmax_avx512(
    s: &mut [f32],
    t: usize,
    scale: f32,
    bias: Option<(&[f32], &[f32], usize)>,
    causal_from: Option<usize>,
    inv: &mut [f32],
) {
    bias_softmax(s, t, scale, bias, causal_from, inv)
}

/// [`bias_softmax`] compiled for AVX2 + FMA so that `exp` vectorises.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bias_softmax_avx2(
    s: &mut [f32],
    t: usize,
    scale: f32,
    bias: Option<(&[f32], &[f32], usize)>,
    causal_from: Option<usize>,
    inv: &mut [f32],
) {
    bias_softmax(s, t, scale, bias, causal_from, inv)
}

/// `exp` in f32 (Cephes range reduction and polynomial; relative error about 1e-7), written
/// so that loops over it vectorise. The polynomial's steps are fused multiply-adds: one
/// instruction each where the build has FMA (every AVX2 and AVX-512 path here), and `fmaf`'s
/// correctly rounded result in the plain build, so every build gives the same bits.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.336_55, 88.376_26);
    let fx = (x * LOG2E + 0.5).floor();
    let r = x - fx * C1 - fx * C2;
    let z = r * r;
    let mut y = 1.987_569_1e-4_f32;
    y = y.mul_add(r, 1.398_199_9e-3);
    y = y.mul_add(r, 8.333_452e-3);
    y = y.mul_add(r, 4.166_579_6e-2);
    y = y.mul_add(r, 1.666_666_5e-1);
    y = y.mul_add(r, 0.5);
    y = y.mul_add(z, r) + 1.0;
    // 2^fx from the exponent bits. `fx` is a whole number in [-127, 128], so adding 1.5 * 2^23
    // leaves it in the low mantissa bits exactly: the same integer `fx as i32` gives, in
    // arithmetic that vectorises (Rust's saturating `as` does not).
    let whole = (fx + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000);
    let bits = whole.wrapping_add(127) << 23;
    y * f32::from_bits(bits)
}

/// `erf` in f32: `x P(x^2) / Q(x^2)` on [-4, 4] (erf(4) is 1 to 2e-8), with P and Q of degree
/// 5 fitted to erf on that range (absolute error below 3e-7 everywhere, as tested). Two short
/// independent Horner chains and one division: under half the operations, and a third of the
/// dependency chain, of a Taylor series beside Abramowitz & Stegun 7.1.26 (GELU is the
/// epilogue of SAM's widest products).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let z = x * x;
    let mut p: f32 = 2.082_064e-6;
    p = p.mul_add(z, 2.834_996e-4);
    p = p.mul_add(z, 3.656_822_5e-3);
    p = p.mul_add(z, 5.240_54e-2);
    p = p.mul_add(z, 1.877_139_4e-1);
    p = p.mul_add(z, std::f32::consts::FRAC_2_SQRT_PI);
    let mut q: f32 = 3.835_741_5e-5;
    q = q.mul_add(z, 1.138_414e-3);
    q = q.mul_add(z, 1.474_638_9e-2);
    q = q.mul_add(z, 1.130_086e-1);
    q = q.mul_add(z, 4.996_900_3e-1);
    q = q.mul_add(z, 1.0);
    x * (p / q)
}

/// Numerically stable softmax of one row, in place.
#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let max = row_max(row);
    let inv = 1.0 / exp_sum(row, max);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// The largest value of `row` (negative infinity when empty), in sixteen independent lanes
/// (one AVX-512 register, two AVX2) so that the reduction vectorises. A comparison, not
/// `f32::max`: that one's NaN rule took three instructions a vector, and a NaN is skipped
/// either way.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            if v > *l {
                *l = v;
            }
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(lanes.iter())
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Lanes of the softmax's reductions: the same in every build, so that every build sums in
/// the same order and gives the same bits.
const LANES: usize = 16;

/// Replaces each value `v` of `row` by `exp(v - max)` and returns their sum, in one pass
/// (sixteen lanes, then the remainder).
#[inline(always)]
fn exp_sum(row: &mut [f32], max: f32) -> f32 {
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (l, v) in sums.iter_mut().zip(c.iter_mut()) {
            *v = exp(*v - max);
            *l += *v;
        }
    }
    let mut rest = 0f32;
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        rest += *v;
    }
    rest + sums.iter().sum::<f32>()
}

/// SAM's decomposed relative positions for [`attention`] over a `side` x `side` token grid:
/// the two tables of `2 * side - 1` rows of `hd` values (already resized to the grid), as the
/// reference's `get_rel_pos` leaves them. Query `(y, x)` and key `(ky, kx)` get the bias
/// `q . h[y - ky + side - 1] + q . w[x - kx + side - 1]` with the unscaled query.
#[derive(Clone, Copy, Debug)]
pub struct RelPos<'a> {
    /// `[2 * side - 1, hd]`, along the grid's rows.
    pub h: &'a [f32],
    /// `[2 * side - 1, hd]`, along the grid's columns.
    pub w: &'a [f32],
    /// Key grid side (`t = side * side`).
    pub side: usize,
}

/// Multi-head attention straight from a fused q|k|v projection: `qkv` is `[blocks, t, 3,
/// heads, hd]` (a `[.., t, 3 * heads * hd]` linear layer's output, as it lies) and `out`
/// receives `[blocks, t, heads, hd]` (what the output projection reads), so no head is copied
/// out or back. Each block and head computes `softmax(q k^T * scale + bias) v`, the bias from
/// `rel` when given, in blocks of query rows so that the scores stay small; blocks and heads
/// run in parallel.
///
/// `queries`, when given, holds for each block how many of its query rows are wanted: the
/// first that many are computed (against all `t` keys) and the rest of that block's rows of
/// `out` are left as they are. SAM's windows at the bottom edge of a grid are mostly padding,
/// whose outputs the model drops.
///
/// # Panics
/// If `qkv` or `out` is shorter than those shapes, `queries` does not have one count of at
/// most `t` per block, or `rel`'s grid or tables do not match `t` and `hd`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    blocks: usize,
    heads: usize,
    t: usize,
    hd: usize,
    qkv: &[f32],
    scale: f32,
    rel: Option<RelPos>,
    queries: Option<&[usize]>,
    out: &mut [f32],
) {
    if let Some(queries) = queries {
        assert!(
            queries.len() == blocks && queries.iter().all(|&n| n <= t),
            "{} query counts for {blocks} blocks of {t} tokens: {queries:?}",
            queries.len()
        );
    }
    let width = heads * hd;
    let fused = |part: usize| Operand {
        data: qkv.get(part * width..).unwrap_or_default(),
        block: t * 3 * width,
        head: hd,
        row: 3 * width,
    };
    let shape = Shape {
        blocks,
        heads,
        kv_heads: heads,
        t,
        hd,
    };
    let (q, k, v) = (fused(0), fused(1), fused(2));
    attend_heads(shape, [q, k, v], scale, rel, Rows::Wanted(queries), out);
}

/// Causal multi-head attention (a decoder's prefill): query `i` sees keys `0..=i`. `q` is
/// `[blocks, heads, t, hd]`, `k` and `v` `[blocks, kv_heads, t, hd]` (each kv head serves
/// `heads / kv_heads` query heads), and `out` receives `[blocks, t, heads, hd]`, as the output
/// projection reads it. The masked scores are never computed: each block of query rows
/// multiplies only the keys it can see.
///
/// # Panics
/// If a slice is shorter than its shape, or `heads` is not a multiple of `kv_heads`.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention(
    blocks: usize,
    heads: usize,
    kv_heads: usize,
    t: usize,
    hd: usize,
    [q, k, v]: [&[f32]; 3],
    scale: f32,
    out: &mut [f32],
) {
    let split = |data, heads: usize| Operand {
        data,
        block: heads * t * hd,
        head: t * hd,
        row: hd,
    };
    let shape = Shape {
        blocks,
        heads,
        kv_heads,
        t,
        hd,
    };
    let operands = [split(q, heads), split(k, kv_heads), split(v, kv_heads)];
    attend_heads(shape, operands, scale, None, Rows::Causal, out);
}

/// The sizes of one attention call.
#[derive(Clone, Copy)]
struct Shape {
    blocks: usize,
    heads: usize,
    kv_heads: usize,
    t: usize,
    hd: usize,
}

/// Where q, k or v lies in its slice: row `i` of block `b`'s head `h` is the `hd` values from
/// `b * block + h * head + i * row`.
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    block: usize,
    head: usize,
    row: usize,
}

impl<'a> Operand<'a> {
    /// The last value `heads` heads of `s` read, plus one.
    fn extent(&self, s: Shape, heads: usize) -> usize {
        (s.blocks - 1) * self.block + (heads - 1) * self.head + (s.t - 1) * self.row + s.hd
    }

    /// Rows `i0..i0 + n` of block `b`'s head `h` as a matrix.
    fn rows(&self, b: usize, h: usize, i0: usize, n: usize, hd: usize) -> MatRef<'a> {
        let at = b * self.block + h * self.head + i0 * self.row;
        MatRef {
            data: &self.data[at..at + (n - 1) * self.row + hd],
            rs: self.row,
            cs: 1,
        }
    }
}

/// Query rows per block of scores. A multiple of `KC`, so that a causal block's keys end on a
/// `KC` boundary of the packed values (or at `t`) and the packing of all `t` can be read for
/// the first keys alone.
const RB: usize = 256;
const _: () = assert!(RB.is_multiple_of(KC));

/// Which query rows see which keys.
#[derive(Clone, Copy)]
enum Rows<'a> {
    /// Every key; a prefix of each block's rows when counts are given ([`attention`]).
    Wanted(Option<&'a [usize]>),
    /// All rows; row `i` sees keys `0..=i` ([`causal_attention`]).
    Causal,
}

/// The body of [`attention`] and [`causal_attention`].
fn attend_heads(
    s: Shape,
    [q, k, v]: [Operand; 3],
    scale: f32,
    rel: Option<RelPos>,
    rows: Rows,
    out: &mut [f32],
) {
    let causal = matches!(rows, Rows::Causal);
    let Shape {
        blocks,
        heads,
        kv_heads,
        t,
        hd,
    } = s;
    if blocks == 0 || heads == 0 || t == 0 || hd == 0 {
        return;
    }
    assert!(
        kv_heads > 0 && heads % kv_heads == 0,
        "{heads} query heads cannot share {kv_heads} key/value heads"
    );
    let width = heads * hd;
    for (name, op, n) in [("q", &q, heads), ("k", &k, kv_heads), ("v", &v, kv_heads)] {
        assert!(
            op.data.len() >= op.extent(s, n),
            "attention over {blocks} x {t} tokens of {n} x {hd} needs {} values of {name}, got {}",
            op.extent(s, n),
            op.data.len()
        );
    }
    assert!(
        out.len() >= blocks * t * width,
        "attention over {blocks} x {t} tokens of {heads} x {hd} writes {} values, got {}",
        blocks * t * width,
        out.len()
    );
    // The relative tables as B operands (`[hd, 2 side - 1]`), packed once for every head.
    let tables = rel.map(|rel| {
        let n = 2 * rel.side - 1;
        assert!(
            rel.side * rel.side == t && rel.h.len() >= n * hd && rel.w.len() >= n * hd,
            "relative positions of a {0} x {0} grid need {t} = {0}^2 tokens and tables of {n} \
             x {hd}",
            rel.side
        );
        let pack = |table: &[f32]| {
            let mut bp = Vec::new();
            pack_b_full(
                hd,
                n,
                &MatRef {
                    data: table,
                    rs: 1,
                    cs: hd,
                },
                &mut bp,
            );
            bp
        };
        (pack(rel.h), pack(rel.w), rel.side)
    });
    let rb_max = RB.min(t);
    let isa = Isa::detect();
    let simd = has_fma();
    let npad = hd.div_ceil(NR) * NR;
    let tpad = t.div_ceil(NR) * NR;
    let group = heads / kv_heads;
    let dst = OutPtr(out.as_mut_ptr());
    (0..blocks * heads).into_par_iter().for_each(|job| {
        SCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            let sc = &mut *guard;
            // Grown, never cleared: every value read is written first.
            if sc.scores.len() < rb_max * t {
                sc.scores.resize(rb_max * t, 0.0);
            }
            if sc.inv.len() < rb_max {
                sc.inv.resize(rb_max, 0.0);
            }
            let (b, h) = (job / heads, job % heads);
            // The query rows wanted: all, or a prefix.
            let tq = match rows {
                Rows::Wanted(Some(counts)) => counts[b],
                _ => t,
            };
            if tq == 0 {
                return;
            }
            // B = k^T (`hd` x `t`) and B = v (`t` x `hd`), packed straight from the rows.
            let km = k.rows(b, h / group, 0, t, hd);
            let kt = MatRef {
                data: km.data,
                rs: 1,
                cs: km.rs,
            };
            pack_b_full(hd, t, &kt, &mut sc.k);
            pack_b_full(t, hd, &v.rows(b, h / group, 0, t, hd), &mut sc.v);
            let mut r0 = 0;
            while r0 < tq {
                let rb = RB.min(tq - r0);
                // The keys these rows see: all, or (causal) up to the block's last row.
                let n = if causal { r0 + rb } else { t };
                let s = &mut sc.scores[..rb * n];
                // Packed once for the scores and both relative products.
                pack_a_into(rb, hd, &q.rows(b, h, r0, rb, hd), &mut sc.q);
                let qp = ASrc::Packed {
                    data: &sc.q,
                    mpad: rb.div_ceil(MR) * MR,
                };
                let kp = Panels::F32(&sc.k);
                gemm_block(isa, rb, hd, qp, kp, tpad, 0, n, None, Act::None, s, n);
                let bias = tables.as_ref().map(|(th, tw, side)| {
                    rel_bias(isa, rb, r0, hd, qp, th, tw, *side, &mut sc.rel);
                    let (bh, bw) = sc.rel.split_at(rb * side);
                    (&bh[..rb * side], &bw[..rb * side], *side)
                });
                let mask = causal.then_some(r0);
                let inv = &mut sc.inv[..rb];
                if isa == Isa::Avx512 {
                    // SAFETY: `Isa::detect` found AVX-512F.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        bias_softmax_avx512(s, n, scale, bias, mask, inv)
                    };
                } else if simd {
                    // SAFETY: `has_fma()` checked the CPU supports AVX2 and FMA.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        bias_softmax_avx2(s, n, scale, bias, mask, inv)
                    };
                } else {
                    bias_softmax(s, n, scale, bias, mask, inv);
                }
                let pm = MatRef {
                    data: s,
                    rs: n,
                    cs: 1,
                };
                // SAFETY: `out` holds `blocks * t * width` values (asserted above); this job
                // alone writes rows `r0..r0 + rb` of block `b`, columns `h * hd..(h + 1) * hd`
                // (rows `width` apart), so no two jobs touch the same element. `n` is `t` or a
                // multiple of `KC` (`RB` is), so v's packing for `t` rows serves the first `n`.
                unsafe {
                    let c = dst.at((b * t + r0) * width + h * hd);
                    gemm_block_raw(
                        isa,
                        rb,
                        n,
                        ASrc::Raw(pm),
                        Panels::F32(&sc.v),
                        npad,
                        0,
                        hd,
                        None,
                        Act::None,
                        c,
                        width,
                    );
                    // Each output row divided by its row's sum of numerators.
                    for (i, &f) in sc.inv[..rb].iter().enumerate() {
                        let row = std::slice::from_raw_parts_mut(c.add(i * width), hd);
                        row.iter_mut().for_each(|x| *x *= f);
                    }
                }
                r0 += rb;
            }
        })
    });
}

thread_local! {
    /// Each thread's attention buffers, kept from job to job and call to call (allocating and
    /// zeroing the scores for each call's jobs was 3% of an attention).
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// One attention job's buffers, kept across the jobs and calls a thread runs ([`SCRATCH`]).
#[derive(Default)]
struct Scratch {
    /// One block of query rows' scores, `[rb, t]`, then their softmax numerators.
    scores: Vec<f32>,
    /// The inverse of each row's sum of numerators, `[rb]`.
    inv: Vec<f32>,
    /// One block of query rows packed as A.
    q: Vec<f32>,
    /// k^T and v packed as B.
    k: Vec<f32>,
    v: Vec<f32>,
    /// The relative-position products `[rb, 2 side - 1]` for both tables, then the biases
    /// `[rb, side]` along rows and along columns.
    rel: Vec<f32>,
}

/// Fills `buf` with the row and column biases (`[rb, side]` each, one after the other) of the
/// query rows `r0..r0 + rb`, whose values `q` holds: `q . table[y - ky + side - 1]` for the row
/// table and `q . table[x - kx + side - 1]` for the column table, `(y, x)` the query's place on
/// the grid. `q` is those rows packed as A, `th` and `tw` the tables packed as B (`hd` x
/// `2 side - 1`); `isa` comes from [`Isa::detect`].
#[allow(clippy::too_many_arguments)]
fn rel_bias(
    isa: Isa,
    rb: usize,
    r0: usize,
    hd: usize,
    q: ASrc,
    th: &[f32],
    tw: &[f32],
    side: usize,
    buf: &mut Vec<f32>,
) {
    let n = 2 * side - 1;
    buf.resize(2 * rb * side + 2 * rb * n, 0.0);
    let (bias, products) = buf.split_at_mut(2 * rb * side);
    let (ph, pw) = products.split_at_mut(rb * n);
    let npad = n.div_ceil(NR) * NR;
    let (th, tw) = (Panels::F32(th), Panels::F32(tw));
    gemm_block(isa, rb, hd, q, th, npad, 0, n, None, Act::None, ph, n);
    gemm_block(isa, rb, hd, q, tw, npad, 0, n, None, Act::None, pw, n);
    let (bh, bw) = bias.split_at_mut(rb * side);
    for i in 0..rb {
        let (y, x) = ((r0 + i) / side, (r0 + i) % side);
        let (ph, pw) = (&ph[i * n..(i + 1) * n], &pw[i * n..(i + 1) * n]);
        for (kk, (h, w)) in bh[i * side..(i + 1) * side]
            .iter_mut()
            .zip(&mut bw[i * side..(i + 1) * side])
            .enumerate()
        {
            *h = ph[y + side - 1 - kk];
            *w = pw[x + side - 1 - kk];
        }
    }
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

    /// `act(a b^T + bias)` in f64 for a row-major `[n, k]` weight `w`.
    fn naive_linear(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        w: &[f32],
        bias: &[f32],
        act: Act,
    ) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|p| a[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum();
                c[i * n + j] = apply(act, (s + bias[j] as f64) as f32);
            }
        }
        c
    }

    pub(crate) fn seeded(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Seeded `a` (`m` x `k`), weight (`n` x `k`) and bias (`n`) for a test case.
    fn seeded_layer(m: usize, n: usize, k: usize, seed: u32) -> [Vec<f32>; 3] {
        [
            seeded(m * k, seed),
            seeded(n * k, seed + 100),
            seeded(n, seed + 200),
        ]
    }

    /// Every micro-kernel this machine can run, the portable one first.
    fn available_isas() -> Vec<Isa> {
        let mut isas = vec![Isa::Portable];
        if has_fma() {
            isas.push(Isa::Avx2);
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            isas.push(Isa::Avx512);
        }
        isas
    }

    #[test]
    fn every_kernel_and_split_matches_the_naive_product() {
        let isas = available_isas();
        eprintln!("kernels tested: {isas:?}");
        // Ragged edges in every dimension (a last tile of each row count), more than one KC
        // block, and (65 x 1000 x 64, and
        // 41 x 700 x 600 over three KC blocks of an A packed once and shared) products that
        // the threads split by columns, writing C in place; (700 x 40 x 100) one split by rows.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (case, &(m, n, k)) in [
            (7, 45, 300),
            (8, 45, 300),
            (9, 70, 260),
            (13, 64, 17),
            (150, 33, 513),
            (65, 1000, 64),
            (41, 700, 600),
            (700, 40, 100),
        ]
        .iter()
        .enumerate()
        {
            let [a, w, bias] = seeded_layer(m, n, k, 1 + case as u32);
            let packed = PackedB::from_rows(&w, n, k);
            let am = MatRef {
                data: &a,
                rs: k,
                cs: 1,
            };
            for act in [Act::None, Act::Gelu, Act::QuickGelu] {
                let want = naive_linear(m, n, k, &a, &w, &bias, act);
                let check = |c: &[f32], what: &str| {
                    for (idx, (x, y)) in c.iter().zip(&want).enumerate() {
                        check_one(*x, *y, k, || format!("{what} {m}x{n}x{k} {act:?} at {idx}"));
                    }
                };
                for &isa in &isas {
                    let mut c = vec![0f32; m * n];
                    let npad = n.div_ceil(NR) * NR;
                    gemm_block(
                        isa,
                        m,
                        k,
                        ASrc::Raw(am),
                        packed.data.panels(),
                        npad,
                        0,
                        n,
                        Some(&bias),
                        act,
                        &mut c,
                        n,
                    );
                    check(&c, &format!("{isa:?}"));
                }
                // NaN where C starts: every element must be written, none accumulated into.
                let mut c = vec![f32::NAN; m * n];
                pool.install(|| packed.matmul(m, am, Some(&bias), act, &mut c));
                check(&c, "threaded");
            }
        }
    }

    #[test]
    fn a_rows_values_do_not_depend_on_how_many_rows_are_multiplied() {
        // The last tile of a product runs a kernel for its own row count (1 to MR); each must
        // sum in the same order as a whole tile, so every row is bit-for-bit the same.
        let (n, k) = (70, 300);
        let rows = 2 * MR;
        let a = seeded(rows * k, 31);
        let w = seeded(n * k, 32);
        let bias = seeded(n, 33);
        let packed = PackedB::from_rows(&w, n, k);
        let npad = n.div_ceil(NR) * NR;
        for isa in available_isas() {
            for act in [Act::None, Act::Gelu] {
                let product = |m: usize| {
                    let mut c = vec![f32::NAN; m * n];
                    let am = MatRef::rows(&a[..m * k], k);
                    let src = ASrc::Raw(am);
                    let panels = packed.data.panels();
                    gemm_block(
                        isa,
                        m,
                        k,
                        src,
                        panels,
                        npad,
                        0,
                        n,
                        Some(&bias),
                        act,
                        &mut c,
                        n,
                    );
                    c
                };
                let all = product(rows);
                for m in 1..rows {
                    let part = product(m);
                    for (idx, (x, y)) in part.iter().zip(&all).enumerate() {
                        assert_eq!(
                            x.to_bits(),
                            y.to_bits(),
                            "{isa:?} {act:?}: {m} rows, element {idx}: {x} vs {y}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matrix_vector_path_matches_the_naive_product() {
        let isas = available_isas();
        // 1 to GEMV_MAX_ROWS rows; a ragged last panel and KC block (45 x 300); a product split
        // over the threads (1,600 x 1,000 weights, above GEMV_PARALLEL_MIN).
        for (case, &(n, k)) in [(45, 300), (32, 17), (1600, 1000)].iter().enumerate() {
            let w = seeded(n * k, 300 + case as u32);
            let bias = seeded(n, 400 + case as u32);
            let packed = PackedB::from_rows(&w, n, k);
            let npad = n.div_ceil(NR) * NR;
            for m in 1..=GEMV_MAX_ROWS {
                let a = seeded(m * k, 500 + (case * 10 + m) as u32);
                for act in [Act::None, Act::Gelu] {
                    let want = naive_linear(m, n, k, &a, &w, &bias, act);
                    for &isa in &isas {
                        for panel in 0..npad / NR {
                            let mut acc = [[0f32; NR]; GEMV_MAX_ROWS];
                            gemv_panel(
                                isa,
                                m,
                                k,
                                &a,
                                packed.data.panels(),
                                npad,
                                panel,
                                &mut acc,
                                &mut [],
                            );
                            for (r, row) in acc.iter().enumerate().take(m) {
                                let cols = NR.min(n - panel * NR);
                                for (j, &v) in row.iter().enumerate().take(cols) {
                                    let col = panel * NR + j;
                                    let got = apply(act, v + bias[col]);
                                    check_one(got, want[r * n + col], k, || format!("{isa:?}"));
                                }
                            }
                        }
                    }
                    let mut c = vec![0f32; m * n];
                    packed.matmul(m, MatRef::rows(&a, k), Some(&bias), act, &mut c);
                    for (x, y) in c.iter().zip(&want) {
                        check_one(*x, *y, k, || "matmul".to_string());
                    }
                }
            }
        }
    }

    /// Every matrix-vector kernel this CPU has, panel by panel: `held` (16-bit or q8_0; AVX-512,
    /// and AVX2 at one or two rows, widen it in registers, the others through a buffer) gives
    /// bit for bit what `wide`, the same weight in f32, gives for `m` rows of `a`.
    /// Whether the q8_0 matrix-vector kernel for `isa` and `m` rows sums each group's `x * q`
    /// and scales it once (so differs from the dequantised product by rounding).
    fn q8_scales_sums(isa: Isa, m: usize) -> bool {
        isa == Isa::Avx512 || isa == Isa::Avx2 && m == 1
    }

    fn assert_panels_match_f32(kind: &str, m: usize, a: &[f32], held: &PackedB, wide: &PackedB) {
        let (k, n) = (held.k, held.n);
        let npad = n.div_ceil(NR) * NR;
        let mut buf = vec![0f32; KC * NR];
        let bits = |v: &[[f32; NR]]| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
        // The dequantised rows, for the rounding bound of the group-scaled q8_0 kernels.
        let rows = wide.to_rows();
        for isa in available_isas() {
            for panel in 0..npad / NR {
                let mut got = [[0f32; NR]; GEMV_MAX_ROWS];
                let mut want = [[0f32; NR]; GEMV_MAX_ROWS];
                let (c, w32) = (held.data.panels(), wide.data.panels());
                gemv_panel(isa, m, k, a, c, npad, panel, &mut got, &mut buf);
                gemv_panel(isa, m, k, a, w32, npad, panel, &mut want, &mut []);
                if matches!(c, Panels::Q8 { .. }) && q8_scales_sums(isa, m) {
                    // Each group's sum scaled once: the same sums up to rounding.
                    let (j0, nr) = (panel * NR, NR.min(n - panel * NR));
                    let flat = |v: &[[f32; NR]]| -> Vec<f32> {
                        v.iter().flat_map(|r| r[..nr].to_vec()).collect()
                    };
                    let w = &rows[j0 * k..(j0 + nr) * k];
                    let zeros = vec![0f32; nr];
                    let (g, wa) = (flat(&got[..m]), flat(&want[..m]));
                    assert_within_rounding(&g, &wa, a, w, &zeros, (m, nr, k));
                    continue;
                }
                assert_eq!(
                    bits(&got[..m]),
                    bits(&want[..m]),
                    "{kind} {isa:?} {m}x{n}x{k} panel {panel}"
                );
            }
        }
    }

    #[test]
    fn products_write_c_without_reading_what_it_held() {
        // Every path of `matmul` (matrix-vector, one thread, split by columns, split by rows),
        // several KC blocks and an activation: C filled with NaN first must come out exactly
        // as C filled with zeros, and as `matmul_vec`'s uninitialised vector.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (case, &(m, n, k)) in [(3, 70, 300), (20, 40, 30), (65, 200, 600), (600, 64, 300)]
            .iter()
            .enumerate()
        {
            let [a, w, bias] = seeded_layer(m, n, k, 900 + case as u32);
            let packed = PackedB::from_rows(&w, n, k);
            let am = MatRef::rows(&a, k);
            let (mut zeros, mut nans) = (vec![0f32; m * n], vec![f32::NAN; m * n]);
            let fresh = pool.install(|| {
                packed.matmul(m, am, Some(&bias), Act::Gelu, &mut zeros);
                packed.matmul(m, am, Some(&bias), Act::Gelu, &mut nans);
                packed.matmul_vec(m, am, Some(&bias), Act::Gelu)
            });
            let want = naive_linear(m, n, k, &a, &w, &bias, Act::Gelu);
            for (i, &y) in zeros.iter().enumerate() {
                check_one(y, want[i], k, || format!("{m}x{n}x{k} value {i}"));
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&nans),
                bits(&zeros),
                "{m}x{n}x{k}: C's old values leak in"
            );
            assert_eq!(
                bits(&fresh),
                bits(&zeros),
                "{m}x{n}x{k}: matmul_vec differs"
            );
        }
    }

    #[test]
    fn sixteen_bit_weights_give_the_f32_products_bit_for_bit() {
        let to_bf16 = |x: f32| f32::from_bits(x.to_bits() & 0xffff_0000);
        let to_f16 = |x: f32| half::f16::from_f32(x).to_f32();
        // Matrix-vector products (1-4 rows, one split over the threads) and GEMMs (ragged,
        // several KC blocks, split by columns and by rows). Up to `DIRECT_TILES` tiles, the
        // SIMD kernels read bf16 panels as held (7, 10 and 17 rows on one thread, 16 split by
        // columns: every short and whole tile height).
        let shapes = [
            (1, 45, 300),
            (2, 100, 300),
            (3, 1600, 1000),
            (4, 32, 17),
            (7, 45, 300),
            (10, 70, 300),
            (17, 100, 600),
            (16, 1000, 300),
            (150, 33, 513),
            (65, 1000, 64),
            (300, 200, 700),
        ];
        for (kind, round) in [("bf16", to_bf16 as fn(f32) -> f32), ("f16", to_f16)] {
            for (case, &(m, n, k)) in shapes.iter().enumerate() {
                let w: Vec<f32> = seeded(n * k, 600 + case as u32)
                    .into_iter()
                    .map(round)
                    .collect();
                let a = seeded(m * k, 700 + case as u32);
                let bias = seeded(n, 800 + case as u32);
                let wide = PackedB::from_rows(&w, n, k);
                let compact = PackedB::from_rows_compact(&w, n, k);
                assert_eq!(compact.storage(), kind);
                // Packed from the stored bits: the same panels as narrowed from f32.
                let (form, bits): (Half, Vec<u16>) = match kind {
                    "bf16" => (
                        Half::Bf16,
                        w.iter().map(|x| (x.to_bits() >> 16) as u16).collect(),
                    ),
                    _ => (
                        Half::F16,
                        w.iter()
                            .map(|&x| half::f16::from_f32(x).to_bits())
                            .collect(),
                    ),
                };
                let stored = PackedB::from_rows_half(&bits, form, n, k);
                assert_eq!(stored.storage(), kind);
                assert_eq!(stored.to_rows(), compact.to_rows(), "{kind} {m}x{n}x{k}");
                assert_eq!(stored.bytes(), compact.bytes());
                assert_eq!(compact.bytes() * 2, wide.bytes());
                let (mut c16, mut c32) = (vec![0f32; m * n], vec![0f32; m * n]);
                let am = MatRef::rows(&a, k);
                compact.matmul(m, am, Some(&bias), Act::Gelu, &mut c16);
                wide.matmul(m, am, Some(&bias), Act::Gelu, &mut c32);
                if kind == "bf16" && amx_runs(m) {
                    // AMX sums in another order (`amx_products_are_within_a_sums_rounding`).
                    assert_within_rounding(&c16, &c32, &a, &w, &bias, (m, n, k));
                } else {
                    let same = c16
                        .iter()
                        .zip(&c32)
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{kind} {m}x{n}x{k}: products differ from f32 storage");
                }
                // Every matrix-vector kernel this CPU has, panel by panel: in registers or
                // through a buffer.
                if m <= GEMV_MAX_ROWS {
                    assert_panels_match_f32(kind, m, &a, &compact, &wide);
                }
            }
        }
        // Values with no exact 16-bit form stay f32.
        let w = seeded(45 * 300, 900);
        assert_eq!(PackedB::from_rows_compact(&w, 45, 300).storage(), "f32");
    }

    #[test]
    fn row_pieces_cover_the_columns_once_and_give_the_products_bits() {
        // Every storage, column counts on and off the panel width, pieces of one panel to the
        // whole product; the pieces run in reverse order into one buffer.
        let seed = 1500;
        eprintln!("seed {seed}");
        for (case, &(n, k)) in [(45, 96), (320, 64), (1000, 256), (33, 32)]
            .iter()
            .enumerate()
        {
            let w = seeded(n * k, seed + case as u32);
            let x = seeded(k, seed + 10 + case as u32);
            let half: Vec<u16> = w.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
            for packed in [
                PackedB::from_rows(&w, n, k),
                PackedB::from_rows_half(&half, Half::Bf16, n, k),
                PackedB::from_rows_q8(&w, n, k),
            ] {
                let whole = packed.matmul_vec(1, MatRef::rows(&x, k), None, Act::None);
                for bytes in [1, 5_000, 40_000, usize::MAX] {
                    let pieces = packed.row_pieces(bytes);
                    assert_eq!(pieces.first().map(|r| r.start), Some(0));
                    assert_eq!(pieces.last().map(|r| r.end), Some(n));
                    assert!(pieces.windows(2).all(|p| p[0].end == p[1].start));
                    let mut out = vec![f32::NAN; n];
                    for cols in pieces.iter().rev() {
                        packed.row_product_part(&x, cols.clone(), &mut out[cols.clone()]);
                    }
                    let same = out
                        .iter()
                        .zip(&whole)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{} {n}x{k}, pieces of {bytes} bytes",
                        packed.storage()
                    );
                }
            }
        }
    }

    #[test]
    fn q8_weights_give_the_dequantised_products() {
        // Matrix-vector products (1-4 rows, one split over the threads) and GEMMs, widths of
        // one to several KC blocks, column counts off the panel width.
        let shapes = [
            (1, 45, 96),
            (2, 100, 320),
            (3, 1600, 1024),
            (4, 33, 32),
            (1, 300, 1280),
            (7, 45, 288),
            (150, 33, 544),
            (300, 200, 768),
        ];
        for (case, &(m, n, k)) in shapes.iter().enumerate() {
            let w = seeded(n * k, 1000 + case as u32);
            let a = seeded(m * k, 1100 + case as u32);
            let bias = seeded(n, 1200 + case as u32);
            let q8 = PackedB::from_rows_q8(&w, n, k);
            assert_eq!(q8.storage(), "q8_0");
            let npad = n.div_ceil(NR) * NR;
            assert_eq!(q8.bytes(), k * npad + k / 32 * npad * 2);
            // The dequantised weight is within half a step of each group's scale (plus the
            // scale's f16 rounding, 127 steps' worth).
            let back = q8.to_rows();
            for (row, (wr, br)) in w.chunks(k).zip(back.chunks(k)).enumerate() {
                for (wg, bg) in wr.chunks(32).zip(br.chunks(32)) {
                    let step = wg.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                    for (x, y) in wg.iter().zip(bg) {
                        assert!(
                            (x - y).abs() <= step * (0.5 + 127.0 * 1e-3),
                            "{n}x{k} row {row}: {x} -> {y}"
                        );
                    }
                }
            }
            let wide = PackedB::from_rows(&back, n, k);
            let (mut cq, mut c32) = (vec![0f32; m * n], vec![0f32; m * n]);
            let am = MatRef::rows(&a, k);
            q8.matmul(m, am, Some(&bias), Act::Gelu, &mut cq);
            wide.matmul(m, am, Some(&bias), Act::Gelu, &mut c32);
            if m <= GEMV_MAX_ROWS && q8_scales_sums(Isa::detect(), m) {
                // These matrix-vector kernels scale each group's sum once.
                assert_within_rounding(&cq, &c32, &a, &back, &bias, (m, n, k));
            } else {
                let same = cq.iter().zip(&c32).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "q8_0 {m}x{n}x{k}: products differ from the dequantised f32"
                );
            }
            if m <= GEMV_MAX_ROWS {
                assert_panels_match_f32("q8_0", m, &a, &q8, &wide);
            }
        }
    }

    #[test]
    #[should_panic(expected = "divisible by 32")]
    fn q8_needs_whole_groups() {
        PackedB::from_rows_q8(&[0.0; 40], 1, 40);
    }

    /// Products of a bf16 B that ran on AMX, counted to show a test reached that path.
    pub(crate) static AMX_PRODUCTS: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    /// Whether a bf16 product of `m` rows runs on AMX on this machine.
    fn amx_runs(m: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let bits = [0u16; 1];
            amx_bits(Isa::detect(), Panels::Half(Half::Bf16, &bits), m).is_some()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = m;
            false
        }
    }

    /// `got` and `want`, two results of `gelu(a w^T + bias)` summed in different orders, each
    /// within the rounding bound of a sum of `k + 1` terms: `(k + 1) u S` with `u = 2^-24`
    /// and `S` the sum of the terms' magnitudes; GELU's slope is below 1.13, and its own
    /// rounding adds a few `u` of the value.
    fn assert_within_rounding(
        got: &[f32],
        want: &[f32],
        a: &[f32],
        w: &[f32],
        bias: &[f32],
        (m, n, k): (usize, usize, usize),
    ) {
        let u = f64::from(f32::EPSILON) / 2.0;
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|p| f64::from(a[i * k + p] * w[j * k + p]).abs())
                    .sum::<f64>()
                    + f64::from(bias[j]).abs();
                let (x, y) = (got[i * n + j], want[i * n + j]);
                let bound = 2.0 * 1.13 * (k + 1) as f64 * u * s + 8.0 * u * f64::from(y.abs());
                assert!(
                    (f64::from(x) - f64::from(y)).abs() <= bound,
                    "{m}x{n}x{k} [{i}, {j}]: {x} vs {y} (bound {bound:e})"
                );
            }
        }
    }

    #[test]
    fn amx_products_are_within_a_sums_rounding() {
        // A bf16 B on AMX (where this CPU has it; else the f32 kernels, compared the same way):
        // rows, columns and inputs off every block size (32-row blocks, 64-row `MC_AMX`,
        // 32-column panels, 512-column `NC_AMX`, 32-input steps, `KC` and `KC_AMX` blocks), on
        // one thread (A read in place) and two (A packed once and split by columns, or split
        // by rows), written into a C full of NaN (never read on the first pass).
        let before = AMX_PRODUCTS.load(std::sync::atomic::Ordering::Relaxed);
        let pools = [1, 2].map(|t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
        });
        // First a product whose A is all NaN, so that each thread's buffers hold NaN where
        // the next products' padding lies: the padding must be zeroed, not left as it was.
        for pool in &pools {
            let (m, n, k) = (150, 600, 1100);
            let w: Vec<f32> = seeded(n * k, 1299)
                .into_iter()
                .map(|x| f32::from_bits(x.to_bits() & 0xffff_0000))
                .collect();
            let held = PackedB::from_rows_compact(&w, n, k);
            let mut c = vec![0f32; m * n];
            let nan = vec![f32::NAN; m * k];
            pool.install(|| held.matmul(m, MatRef::rows(&nan, k), None, Act::None, &mut c));
        }
        let shapes = [
            (19, 33, 1),
            (32, 32, 32),
            (33, 70, 31),
            (64, 600, 100),
            (65, 512, 300),
            (100, 40, 1100),
            (150, 300, 1024),
            (700, 64, 300),
        ];
        for (case, &(m, n, k)) in shapes.iter().enumerate() {
            let w: Vec<f32> = seeded(n * k, 1300 + case as u32)
                .into_iter()
                .map(|x| f32::from_bits(x.to_bits() & 0xffff_0000))
                .collect();
            // Activations of all scales, so the three bf16 parts all matter.
            let a: Vec<f32> = seeded(m * k, 1400 + case as u32)
                .iter()
                .enumerate()
                .map(|(i, x)| x * [1e-3, 1.0, 37.0][i % 3])
                .collect();
            let bias = seeded(n, 1500 + case as u32);
            let (held, wide) = (
                PackedB::from_rows_compact(&w, n, k),
                PackedB::from_rows(&w, n, k),
            );
            assert_eq!(held.storage(), "bf16");
            let mut want = vec![0f32; m * n];
            wide.matmul(m, MatRef::rows(&a, k), Some(&bias), Act::Gelu, &mut want);
            for pool in &pools {
                let mut got = vec![f32::NAN; m * n];
                pool.install(|| {
                    held.matmul(m, MatRef::rows(&a, k), Some(&bias), Act::Gelu, &mut got)
                });
                assert_within_rounding(&got, &want, &a, &w, &bias, (m, n, k));
            }
            // A read through strides (its transpose's columns).
            let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let view = MatRef {
                data: &at,
                rs: 1,
                cs: m,
            };
            let mut got = vec![f32::NAN; m * n];
            held.matmul(m, view, Some(&bias), Act::Gelu, &mut got);
            assert_within_rounding(&got, &want, &a, &w, &bias, (m, n, k));
        }
        let ran = AMX_PRODUCTS.load(std::sync::atomic::Ordering::Relaxed) - before;
        if amx_runs(64) {
            assert!(ran > 0, "AMX is available, yet no product ran on it");
        } else {
            eprintln!("no AMX on this machine: the f32 kernels were compared instead");
        }
    }

    /// `x` against the naive `y`, to a tolerance that grows with the sum's length `k`.
    fn check_one(x: f32, y: f32, k: usize, what: impl FnOnce() -> String) {
        assert!(
            (x - y).abs() <= 1e-5 * (k as f32).sqrt() * (1.0 + y.abs()),
            "{}: {x} vs {y}",
            what()
        );
    }

    #[test]
    fn vector_builds_of_softmax_and_activations_match_the_scalar_ones_bit_for_bit() {
        // The AVX-512 and AVX2 builds vectorise the same arithmetic (Rust never fuses a
        // multiply and an add on its own), so they must agree with the plain build exactly.
        let (t, side) = (48, 8);
        let base: Vec<f32> = seeded(t * t, 7).iter().map(|v| v * 30.0).collect();
        let h = seeded(t * side, 8);
        let w = seeded(t * side, 9);
        let cases = [
            (None, None),
            (Some((&h[..], &w[..], side)), None),
            (None, Some(5)),
        ];
        for (bias, causal) in cases {
            let mut want = base.clone();
            let mut want_inv = vec![0f32; t];
            bias_softmax(&mut want, t, 0.125, bias, causal, &mut want_inv);
            // Numerators times the inverse sums are the softmax: each row sums to 1.
            for (row, f) in want.chunks_exact(t).zip(&want_inv) {
                let total: f32 = row.iter().map(|v| v * f).sum();
                assert!((total - 1.0).abs() < 1e-5, "row sums to {total}");
            }
            #[cfg(target_arch = "x86_64")]
            {
                let mut got = base.clone();
                let mut inv = vec![0f32; t];
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: AVX-512F detected.
                    unsafe { bias_softmax_avx512(&mut got, t, 0.125, bias, causal, &mut inv) };
                    assert_eq!(got, want, "AVX-512 softmax, {bias:?} {causal:?}");
                    assert_eq!(inv, want_inv, "AVX-512 softmax sums, {bias:?} {causal:?}");
                }
                if has_fma() {
                    let mut got = base.clone();
                    // SAFETY: AVX2 and FMA detected.
                    unsafe { bias_softmax_avx2(&mut got, t, 0.125, bias, causal, &mut inv) };
                    assert_eq!(got, want, "AVX2 softmax, {bias:?} {causal:?}");
                    assert_eq!(inv, want_inv, "AVX2 softmax sums, {bias:?} {causal:?}");
                }
            }
        }
        // Activations applied as tiles are stored: every kernel against the scalar `apply`.
        let (m, n, k) = (MR, NR, 40);
        let a: Vec<f32> = seeded(m * k, 10).iter().map(|v| v * 2.0).collect();
        let w = seeded(n * k, 11);
        let packed = PackedB::from_rows(&w, n, k);
        let product = |isa: Isa, act: Act| {
            let mut c = vec![0f32; m * n];
            let (a, b) = (MatRef::rows(&a, k), packed.data.panels());
            gemm_block(isa, m, k, ASrc::Raw(a), b, n, 0, n, None, act, &mut c, n);
            c
        };
        for act in [Act::Gelu, Act::QuickGelu] {
            let activate = |c: Vec<f32>| c.iter().map(|&x| apply(act, x)).collect::<Vec<f32>>();
            let want = activate(product(Isa::Portable, Act::None));
            for isa in available_isas() {
                let got = product(isa, act);
                assert_eq!(got, activate(product(isa, Act::None)), "{isa:?} {act:?}");
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 1e-5, "{isa:?} {act:?} off by {worst}");
            }
        }
    }

    #[test]
    fn silu_mul_is_swiglu_gating() {
        let gate: Vec<f32> = seeded(1000, 12).iter().map(|v| v * 40.0).collect();
        let up = seeded(1000, 13);
        let mut got = gate.clone();
        silu_mul(&mut got, &up);
        let mut plain = gate.clone();
        silu_mul_body(&mut plain, &up);
        assert_eq!(got, plain, "the vector build is the scalar arithmetic");
        for ((&g, &u), &y) in gate.iter().zip(&up).zip(&got) {
            let (g, u) = (f64::from(g), f64::from(u));
            let want = g / (1.0 + (-g).exp()) * u;
            let tol = 1e-6 * want.abs() + 1e-30;
            assert!(
                (f64::from(y) - want).abs() <= tol,
                "silu({g}) * {u}: {y} vs {want}"
            );
        }
    }

    /// Attention of one block and head written out the slow way, in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive_attention(
        (b, h): (usize, usize),
        heads: usize,
        t: usize,
        hd: usize,
        qkv: &[f32],
        scale: f32,
        rel: Option<RelPos>,
    ) -> Vec<f64> {
        let ld = 3 * heads * hd;
        let at = |part: usize, i: usize, c: usize| {
            f64::from(qkv[(b * t + i) * ld + part * heads * hd + h * hd + c])
        };
        let dot = |i: usize, other: &dyn Fn(usize) -> f64| {
            (0..hd).map(|c| at(0, i, c) * other(c)).sum::<f64>()
        };
        let mut out = vec![0f64; t * hd];
        for i in 0..t {
            let mut s: Vec<f64> = (0..t)
                .map(|j| {
                    let mut x = dot(i, &|c| at(1, j, c)) * f64::from(scale);
                    if let Some(r) = rel {
                        let n = r.side - 1;
                        let (y, xx, ky, kx) = (i / r.side, i % r.side, j / r.side, j % r.side);
                        x += dot(i, &|c| f64::from(r.h[(y + n - ky) * hd + c]));
                        x += dot(i, &|c| f64::from(r.w[(xx + n - kx) * hd + c]));
                    }
                    x
                })
                .collect();
            let max = s.iter().cloned().fold(f64::MIN, f64::max);
            s.iter_mut().for_each(|x| *x = (*x - max).exp());
            let sum: f64 = s.iter().sum();
            for c in 0..hd {
                out[i * hd + c] = (0..t).map(|j| s[j] / sum * at(2, j, c)).sum();
            }
        }
        out
    }

    #[test]
    fn attention_reads_fused_qkv_and_writes_heads_in_place() {
        // Two blocks of three heads; a 17 x 17 grid has more query rows (289) than one row
        // block (256), and a head width of 40 is not a whole panel.
        for &(blocks, heads, side, hd, with_rel) in &[
            (2, 3, 5, 16, true),
            (1, 2, 17, 40, true),
            (3, 2, 4, 8, false),
        ] {
            let t = side * side;
            let n = 2 * side - 1;
            let seed = (side * 100 + hd) as u32;
            eprintln!("attention case seed {seed}: {blocks} x {heads} heads, t {t}, hd {hd}");
            let qkv = seeded(blocks * t * 3 * heads * hd, seed);
            let (th, tw) = (seeded(n * hd, seed + 1), seeded(n * hd, seed + 2));
            let rel = with_rel.then_some(RelPos {
                h: &th,
                w: &tw,
                side,
            });
            let scale = 1.0 / (hd as f32).sqrt();
            let mut out = vec![f32::NAN; blocks * t * heads * hd];
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap();
            pool.install(|| attention(blocks, heads, t, hd, &qkv, scale, rel, None, &mut out));
            // Then only a prefix of each block's rows (none, a part of the first row block,
            // past it, all), over C full of NaN: those rows must be the same bits, the others
            // untouched.
            let counts: Vec<usize> = [0, t / 3, t.min(RB + 5), t]
                .into_iter()
                .cycle()
                .skip(blocks % 2)
                .take(blocks)
                .collect();
            let mut part = vec![f32::NAN; out.len()];
            pool.install(|| {
                attention(
                    blocks,
                    heads,
                    t,
                    hd,
                    &qkv,
                    scale,
                    rel,
                    Some(&counts),
                    &mut part,
                )
            });
            let block = t * heads * hd;
            for (b, ((got, want), &count)) in part
                .chunks(block)
                .zip(out.chunks(block))
                .zip(&counts)
                .enumerate()
            {
                let wanted = count * heads * hd;
                assert!(
                    got[..wanted]
                        .iter()
                        .zip(&want[..wanted])
                        .all(|(g, w)| g.to_bits() == w.to_bits()),
                    "block {b}: the first {count} rows differ from the full attention's"
                );
                assert!(
                    got[wanted..].iter().all(|g| g.is_nan()),
                    "block {b}: rows past the first {count} were written"
                );
            }
            for b in 0..blocks {
                for h in 0..heads {
                    let want = naive_attention((b, h), heads, t, hd, &qkv, scale, rel);
                    for i in 0..t {
                        for c in 0..hd {
                            let got = out[(b * t + i) * heads * hd + h * hd + c];
                            let w = want[i * hd + c] as f32;
                            check_one(got, w, t, || {
                                format!("block {b} head {h} row {i} col {c} (t {t}, hd {hd})")
                            });
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn causal_attention_sees_only_earlier_keys() {
        // Two kv heads shared by four query heads; 300 positions span two row blocks, the
        // first of which multiplies only its own 256 keys.
        let (blocks, heads, kv_heads, t, hd) = (2, 4, 2, 300, 24);
        eprintln!("causal attention seeds 31-33: {blocks} x {heads} heads, t {t}, hd {hd}");
        let q = seeded(blocks * heads * t * hd, 31);
        let k = seeded(blocks * kv_heads * t * hd, 32);
        let v = seeded(blocks * kv_heads * t * hd, 33);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![f32::NAN; blocks * t * heads * hd];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            causal_attention(
                blocks,
                heads,
                kv_heads,
                t,
                hd,
                [&q, &k, &v],
                scale,
                &mut out,
            )
        });
        let row = |x: &[f32], b: usize, h: usize, n: usize, i: usize| {
            let at = ((b * n + h) * t + i) * hd;
            x[at..at + hd]
                .iter()
                .map(|&v| f64::from(v))
                .collect::<Vec<_>>()
        };
        for b in 0..blocks {
            for h in 0..heads {
                let kh = h / (heads / kv_heads);
                for i in (0..t).step_by(7).chain([255, 256, t - 1]) {
                    let qi = row(&q, b, h, heads, i);
                    let s: Vec<f64> = (0..=i)
                        .map(|j| {
                            let kj = row(&k, b, kh, kv_heads, j);
                            qi.iter().zip(&kj).map(|(x, y)| x * y).sum::<f64>() * f64::from(scale)
                        })
                        .collect();
                    let max = s.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..hd {
                        let want: f64 = (0..=i)
                            .map(|j| e[j] / sum * row(&v, b, kh, kv_heads, j)[c])
                            .sum();
                        let got = out[(b * t + i) * heads * hd + h * hd + c];
                        check_one(got, want as f32, t, || {
                            format!("block {b} head {h} row {i} col {c}")
                        });
                    }
                }
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
        // Every 1/1000 up to 7, past where f32's erf reaches 1, and the GELU it makes.
        let mut worst = 0f64;
        for i in -7000..=7000 {
            let x = i as f32 / 1000.0;
            let want = reference_erf(x as f64);
            worst = worst.max((erf(x) as f64 - want).abs());
            let gelu = apply(Act::Gelu, x) as f64;
            let want = 0.5 * x as f64 * (1.0 + reference_erf(x as f64 / 2f64.sqrt()));
            assert!((gelu - want).abs() < 1e-6 * (1.0 + want.abs()), "gelu({x})");
        }
        assert!(worst < 3e-7, "erf is off by {worst:e}");
    }

    /// erf in f64: its Taylor series below 3.5, 1 - erfc's asymptotic series from there (both
    /// good to 1e-10).
    fn reference_erf(x: f64) -> f64 {
        if x.abs() < 3.5 {
            return taylor_erf(x);
        }
        // erfc(x) = exp(-x^2) / (x sqrt(pi)) * sum_n (-1)^n (2n-1)!! / (2 x^2)^n
        let a = x.abs();
        let (mut sum, mut term) = (0.0, 1.0);
        for n in 1..10 {
            sum += term;
            term *= -(2.0 * n as f64 - 1.0) / (2.0 * a * a);
        }
        let erfc = (-a * a).exp() / (a * std::f64::consts::PI.sqrt()) * sum;
        x.signum() * (1.0 - erfc)
    }

    /// erf by its Taylor series in f64, good to 1e-10 on |x| < 3.5.
    fn taylor_erf(x: f64) -> f64 {
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
