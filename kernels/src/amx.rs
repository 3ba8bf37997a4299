//! Products with a bf16 B on Intel AMX, at f32 accuracy.
//!
//! An AMX tile multiply (`tdpbf16ps`) takes bf16 pairs and sums in f32. A weight held in bf16
//! is exact as it is; the f32 rows of A are not, so each is split in three bf16 parts,
//! `a = hi + mid + lo`, which hold its 24 significand bits exactly (each part's product with a
//! bf16 weight is exact in f32, and only the sums round, as in the f32 kernels). Three tile
//! multiplies a step still outrun the f32 micro-kernel. On a Xeon with AMX (Sapphire Rapids
//! class, under KVM), a bf16-held 1600 x 768 x 3072 product: one core 118-122 -> 160-181
//! GFLOP/s, two 242 -> 329-345 (MKL's f32 GEMM through PyTorch: 155-171 and 305-335).
//!
//! The sums run in another order than the f32 kernels' (a tile multiply adds pairs, and C's
//! block starts from what it holds), so the values differ from theirs in the last bits; both
//! are within the bound of a sum's rounding (`amx_products_are_within_a_sums_rounding`). A
//! page's embeddings moved by at most 1.2e-5 (1.5e-6 of the largest value). An infinite input
//! gives NaN here (its parts are infinity and NaN), where the f32 kernels give infinity.
//! `LETHE_CPU_KERNEL` set to anything but `amx` keeps the f32 kernels (`avx512`, `avx2`).
//!
//! Layouts, for a block of `kc` inputs rounded up to `kp` (a multiple of 32, zeros past `kc`):
//! - A: three parts, each `[rows rounded up to 32][kp]` bf16 bits, row-major;
//! - B: each 32-column panel `[kp / 2][32][2]`: the two inputs of a pair side by side for
//!   each column (the tile multiply's "VNNI" order).

use std::arch::asm;
use std::sync::OnceLock;

use crate::NR;

/// Inputs a tile multiply consumes a step (16 pairs).
pub(crate) const KSTEP: usize = 32;

/// Rows (and columns) of the block of C one kernel call computes: 2 x 2 tiles of 16 x 16.
pub(crate) const ROWS: usize = 32;

const _: () = assert!(NR == ROWS);

/// Whether this CPU and OS run AMX bf16 tile multiplies for this process, asked once: the
/// CPU's AMX-TILE and AMX-BF16 bits, the OS's tile state enabled, and Linux's permission for
/// this process to use it (granted on request), and AVX-512F and BW (the parts and the pair
/// order use them). `LETHE_CPU_KERNEL` set to anything but `amx` turns it off.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var("LETHE_CPU_KERNEL").is_ok_and(|v| v != "amx") {
            return false;
        }
        detect()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    let (max, leaf7) = (__cpuid(0).eax, __cpuid_count(7, 0));
    let amx = max >= 7 && leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0;
    // XSAVE enabled by the OS (CPUID.1:ECX.OSXSAVE), then tile state in XCR0 (bits 17, 18).
    let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
    // The splitting and pair order use AVX-512F and BW (every AMX CPU has both).
    let avx512 =
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw");
    if !amx || !osxsave || !avx512 {
        return false;
    }
    let xcr0: u64;
    // SAFETY: `xgetbv` with ECX = 0 reads XCR0, allowed in user mode once OSXSAVE is set.
    unsafe {
        let (lo, hi): (u32, u32);
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack));
        xcr0 = u64::from(hi) << 32 | u64::from(lo);
    }
    if xcr0 & (3 << 17) != 3 << 17 {
        return false;
    }
    // arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): Linux lends the tile state to a
    // process only when asked; it then holds for all its threads.
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the syscall only changes which state the kernel saves for this process.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// `kc` rounded up to whole tile steps.
pub(crate) fn padded(kc: usize) -> usize {
    kc.div_ceil(KSTEP) * KSTEP
}

/// bf16 bits of `x` cut (not rounded): what remains, `x - widen(cut)`, is exact in f32.
#[inline(always)]
fn cut(x: f32) -> u16 {
    (x.to_bits() >> 16) as u16
}

#[inline(always)]
fn widen(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// Packs `mc` rows of `kc` inputs of A, row `r` given by `row(r)`, as three bf16 parts into
/// `out` (resized), each `[mc rounded up to 32][padded(kc)]`, zeros in the padding.
pub(crate) fn pack_a<'a>(
    mc: usize,
    kc: usize,
    row: impl Fn(usize) -> &'a [f32],
    out: &mut Vec<u16>,
) {
    let (mp, kp) = (mc.div_ceil(ROWS) * ROWS, padded(kc));
    let part = mp * kp;
    // Only the padding is zeroed (zeroing the whole buffer each block was 4% of an encode).
    out.resize(3 * part, 0);
    for p in out.chunks_exact_mut(part) {
        for (r, row) in p.chunks_exact_mut(kp).enumerate() {
            row[if r < mc { kc } else { 0 }..].fill(0);
        }
    }
    let (hi, rest) = out.split_at_mut(part);
    let (mid, lo) = rest.split_at_mut(part);
    for r in 0..mc {
        let at = r * kp;
        let parts = (
            &mut hi[at..at + kc],
            &mut mid[at..at + kc],
            &mut lo[at..at + kc],
        );
        // SAFETY: `available()` (the caller's condition) checked AVX-512F.
        unsafe { split(&row(r)[..kc], parts) };
    }
}

/// Each `x` as `hi + mid + lo` in bf16 bits, 16 lanes at a time (compiled for AVX-512F).
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
unsafe fn split(x: &[f32], (hi, mid, lo): (&mut [u16], &mut [u16], &mut [u16])) {
    for (((&x, h), m), l) in x.iter().zip(hi).zip(mid).zip(lo) {
        let hb = cut(x);
        let r1 = x - widen(hb);
        let mb = cut(r1);
        *h = hb;
        *m = mb;
        *l = cut(r1 - widen(mb));
    }
}

/// Zeroes the pair rows of `panels` panels of `[kp / 2][NR][2]` in `out` past the `kc` inputs
/// [`pack_b`] wrote.
pub(crate) fn zero_b_padding(out: &mut [u16], panels: usize, kc: usize, kp: usize) {
    for panel in out.chunks_exact_mut(kp * NR).take(panels) {
        panel[kc.div_ceil(2) * 2 * NR..].fill(0);
    }
}

/// Lays out `panels` bf16 panels of one `KC` block of B (`[kc][NR]` each, one after
/// another, as `PackedB` holds them) in the tile multiply's pair order into `out`, which holds
/// `panels` panels of `[kp / 2][NR][2]`, at input `row0` of each (a multiple of 32). Compiled
/// for AVX-512F and BW, so that [`interleave`] is inlined.
///
/// # Safety
/// AVX-512F and AVX-512BW must be available ([`available`] checks both).
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn pack_b(
    bits: &[u16],
    panels: usize,
    kc: usize,
    row0: usize,
    kp: usize,
    out: &mut [u16],
) {
    debug_assert!(row0.is_multiple_of(KSTEP) && row0 + kc <= kp);
    for (src, dst) in bits
        .chunks_exact(kc * NR)
        .take(panels)
        .zip(out.chunks_exact_mut(kp * NR))
    {
        let dst = &mut dst[row0 * NR..];
        for (pair, rows) in dst.chunks_exact_mut(2 * NR).zip(src.chunks(2 * NR)) {
            let (r0, r1) = rows.split_at(NR);
            // SAFETY: AVX-512F and BW as the caller vouches; each row is NR values, the pair
            // 2 NR.
            unsafe { interleave(r0, (!r1.is_empty()).then_some(r1), pair) };
        }
    }
}

/// `pair[2 j] = r0[j]`, `pair[2 j + 1] = r1[j]` (0 without `r1`) for the `NR` columns.
///
/// # Safety
/// AVX-512F and AVX-512BW must be available; `r0`, `r1` hold `NR` values, `pair` `2 NR`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn interleave(r0: &[u16], r1: Option<&[u16]>, pair: &mut [u16]) {
    use std::arch::x86_64::*;
    debug_assert!(r0.len() == NR && pair.len() == 2 * NR && r1.is_none_or(|r| r.len() == NR));
    // Word indices into (r0, r1) for each half of the pair row: r0[j] is word j, r1[j] 32 + j.
    const fn index(half: usize) -> [i16; 32] {
        let mut ix = [0i16; 32];
        let mut j = 0;
        while j < 16 {
            ix[2 * j] = (16 * half + j) as i16;
            ix[2 * j + 1] = (32 + 16 * half + j) as i16;
            j += 1;
        }
        ix
    }
    const LO: [i16; 32] = index(0);
    const HI: [i16; 32] = index(1);
    // SAFETY: the lengths checked above; unaligned loads and stores.
    unsafe {
        let a = _mm512_loadu_si512(r0.as_ptr().cast());
        let b = match r1 {
            Some(r1) => _mm512_loadu_si512(r1.as_ptr().cast()),
            None => _mm512_setzero_si512(),
        };
        let lo = _mm512_permutex2var_epi16(a, _mm512_loadu_si512(LO.as_ptr().cast()), b);
        let hi = _mm512_permutex2var_epi16(a, _mm512_loadu_si512(HI.as_ptr().cast()), b);
        _mm512_storeu_si512(pair.as_mut_ptr().cast(), lo);
        _mm512_storeu_si512(pair.as_mut_ptr().add(NR).cast(), hi);
    }
}

/// The 64-byte tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct Config([u8; 64]);

const CONFIG: Config = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    Config(c)
};

/// Loads the tile configuration on this thread: call before [`block`] (the configuration
/// lasts until [`release`]).
///
/// # Safety
/// [`available`] must be true.
pub(crate) unsafe fn configure() {
    // SAFETY: AMX as the caller vouches; the configuration is 64 readable bytes.
    unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack)) };
}

/// Releases the tiles (the OS then saves no tile state for the thread).
///
/// # Safety
/// [`available`] must be true.
pub(crate) unsafe fn release() {
    // SAFETY: AMX as the caller vouches.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// `C (+)= A B` for one 32 x 32 block of C at `c` (rows `ldc` values apart): `a` the three
/// parts' first values of the block's 32 rows (rows `lda` values apart), `b` a panel in pair
/// order, `ksteps` steps of 32 inputs. With `accumulate` the sums start from what C holds,
/// else from zero.
///
/// # Safety
/// [`configure`] must have run on this thread. Each part must hold 32 rows of
/// `lda >= 32 * ksteps` values from its pointer, `b` `ksteps * 32 * NR` values, and `c` 32 rows
/// of 32 values (readable too with `accumulate`); `ksteps > 0`.
pub(crate) unsafe fn block(
    a: [*const u16; 3],
    lda: usize,
    b: *const u16,
    ksteps: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    debug_assert!(ksteps > 0);
    // Tiles: 0-3 the four 16 x 16 blocks of C, 4-5 the two 16-row halves of A's part, 6-7 the
    // two 16-column halves of B's step (pair rows 128 bytes apart).
    // SAFETY: the caller vouches for the configuration, the reads and C's block.
    unsafe {
        asm!(
            "test {acc}, {acc}",
            "jz 3f",
            "tileloadd tmm0, [{c} + {ldc}]",
            "tileloadd tmm1, [{c} + {ldc} + 64]",
            "lea {t}, [{c} + {ldc16}]",
            "tileloadd tmm2, [{t} + {ldc}]",
            "tileloadd tmm3, [{t} + {ldc} + 64]",
            "jmp 2f",
            "3:",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm6, [{b} + {s128}]",
            "tileloadd tmm7, [{b} + {s128} + 64]",
            "tileloadd tmm4, [{a0} + {lda}]",
            "lea {t}, [{a0} + {lda16}]",
            "tileloadd tmm5, [{t} + {lda}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "tileloadd tmm4, [{a1} + {lda}]",
            "lea {t}, [{a1} + {lda16}]",
            "tileloadd tmm5, [{t} + {lda}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "tileloadd tmm4, [{a2} + {lda}]",
            "lea {t}, [{a2} + {lda16}]",
            "tileloadd tmm5, [{t} + {lda}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {b}, 2048",
            "add {a0}, 64",
            "add {a1}, 64",
            "add {a2}, 64",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c} + {ldc}], tmm0",
            "tilestored [{c} + {ldc} + 64], tmm1",
            "lea {t}, [{c} + {ldc16}]",
            "tilestored [{t} + {ldc}], tmm2",
            "tilestored [{t} + {ldc} + 64], tmm3",
            acc = in(reg) usize::from(accumulate),
            b = inout(reg) b => _,
            a0 = inout(reg) a[0] => _,
            a1 = inout(reg) a[1] => _,
            a2 = inout(reg) a[2] => _,
            lda = in(reg) lda * 2,
            lda16 = in(reg) lda * 32,
            s128 = in(reg) 128usize,
            c = in(reg) c,
            ldc = in(reg) ldc * 4,
            ldc16 = in(reg) ldc * 64,
            n = inout(reg) ksteps => _,
            t = out(reg) _,
            options(nostack),
        );
    }
}
