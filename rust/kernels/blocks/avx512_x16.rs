//! Q4_K and Q6_K rows times int8 activations on AVX-512 VNNI, 16 interleaved rows at a time
//! (`interleave.rs`'s layout): each `vpdpbusd` takes 4 bytes of each of 16 rows from one
//! load and the activation's 4 matching bytes broadcast from memory, so every lane is one row
//! and there is no reduction across lanes; the scales are bytes, widened 16 rows at a time.
//!
//! # Safety (every helper here)
//! The `#[inline(always)]` helpers run inside the `rows_*_x16` kernels, compiled with AVX-512
//! F, BW, VL, VNNI and F16C (Q6_K also GFNI), which the CPU has (`Kernels::new` checks before
//! it hands them out). A group's runs are whole (`interleave.rs`), and the activation has the
//! matrix's columns, so block b's loads stay inside its arrays.

use std::arch::x86_64::*;

use super::activation::BlockActivation;
use super::interleave::{q4k, q6k, ROWS};
use crate::kernels::affine::RowsOut;

/// Interleaved rows times int8 activations: groups `groups` of a `cols`-column matrix
/// (`interleaved` is `interleave::interleave`'s output for it), into `out` (token t, row
/// `16 g + lane`). Every version has this signature.
///
/// # Safety (of every version)
/// The table that hands it out was made for this CPU; `interleaved` holds at least
/// `groups.end` groups of `cols` columns, every activation has `cols` columns, `out` covers
/// `acts.len()` tokens of the groups' rows, and no other task writes those outputs meanwhile.
pub type InterleavedRows = unsafe fn(&[u8], usize, std::ops::Range<usize>, &[BlockActivation], RowsOut);

/// `InterleavedRows` for Q4_K.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI, and F16C; otherwise `InterleavedRows`' contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub(crate) unsafe fn rows_q4k_x16(
    interleaved: &[u8],
    cols: usize,
    groups: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { rows::<Q4K>(interleaved, cols, groups, acts, out) }
}

/// `InterleavedRows` for Q6_K.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI, F16C and GFNI; otherwise `InterleavedRows`'
/// contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,gfni")]
pub(crate) unsafe fn rows_q6k_x16(
    interleaved: &[u8],
    cols: usize,
    groups: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { rows::<Q6K>(interleaved, cols, groups, acts, out) }
}

/// A type's group of 16 rows times one activation, over all its 256-column runs.
trait GroupDot {
    const BYTES: usize;
    /// # Safety
    /// The module's contract: `group` is the group's runs, `act` has their columns.
    unsafe fn dot(group: &[u8], act: &BlockActivation) -> __m512;
}

struct Q4K;
struct Q6K;

/// # Safety
/// The module's contract and `InterleavedRows`'.
#[inline(always)]
unsafe fn rows<K: GroupDot>(
    interleaved: &[u8],
    cols: usize,
    groups: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    let group_bytes = cols / 256 * K::BYTES;
    debug_assert!(cols.is_multiple_of(256) && groups.end * group_bytes <= interleaved.len());
    debug_assert!(
        acts.iter().all(|a| a.cols == cols) && out.covers(acts.len(), &(ROWS * groups.start..ROWS * groups.end))
    );
    for g in groups {
        let group = &interleaved[g * group_bytes..(g + 1) * group_bytes];
        for (t, act) in acts.iter().enumerate() {
            // SAFETY: the group and activation have `cols` columns (the caller's contract), and
            // the group's 16 outputs of token t are the caller's to write.
            unsafe {
                let sums = K::dot(group, act);
                _mm512_storeu_ps(out.ptr_at(t, ROWS * g, ROWS), sums);
            }
        }
    }
}

/// The activation's 4 bytes at `x`, broadcast (folded into `vpdpbusd` as a memory broadcast).
///
/// # Safety
/// `x` has 4 readable bytes.
#[inline(always)]
unsafe fn broadcast4(x: *const i8) -> __m512i {
    // SAFETY: the caller's.
    unsafe { _mm512_set1_epi32((x as *const i32).read_unaligned()) }
}

/// 16 bytes at `p` widened to 16 fp32 values (unsigned or signed).
///
/// # Safety
/// `p` has 16 readable bytes.
#[inline(always)]
unsafe fn bytes_f32<const SIGNED: bool>(p: *const u8) -> __m512 {
    // SAFETY: the caller's: one 16-byte load.
    unsafe {
        let b = _mm_loadu_si128(p as *const _);
        _mm512_cvtepi32_ps(if SIGNED { _mm512_cvtepi8_epi32(b) } else { _mm512_cvtepu8_epi32(b) })
    }
}

impl GroupDot for Q4K {
    const BYTES: usize = q4k::BYTES;

    /// `dot_q4k_scalar` for 16 rows: per run 64 `vpdpbusd`, in 8 chains (one per sub-block,
    /// independent, so they overlap); a step's low nibbles are masked, its high nibbles kept in
    /// place (16 times their value, undone once per run). Each sub-block's sum is scaled by
    /// its 16 rows' scales times the activation's block scale; the mins go through the
    /// activation's scaled block sums.
    #[inline(always)]
    unsafe fn dot(group: &[u8], act: &BlockActivation) -> __m512 {
        // SAFETY: the module's contract: run b's bytes are inside the group, and the
        // activation's 256 values, 8 scales and 8 scaled sums of block b inside its arrays.
        unsafe {
            let (low4, high4) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0xf0u8 as i8));
            let (mut total, mut mins) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for (b, run) in group.chunks_exact(q4k::BYTES).enumerate() {
                let p = run.as_ptr();
                let x = act.q.as_ptr().add(256 * b);
                let mut acc = [_mm512_setzero_si512(); 8];
                for s in 0..8 {
                    for c in 0..4 {
                        let w = _mm512_loadu_si512(p.add(q4k::QS + 64 * (8 * c + s)) as *const _);
                        let (xl, xh) = (broadcast4(x.add(64 * c + 4 * s)), broadcast4(x.add(64 * c + 32 + 4 * s)));
                        acc[2 * c] = _mm512_dpbusd_epi32(acc[2 * c], _mm512_and_si512(w, low4), xl);
                        acc[2 * c + 1] = _mm512_dpbusd_epi32(acc[2 * c + 1], _mm512_and_si512(w, high4), xh);
                    }
                }
                let (dx, sdx) = (act.d.as_ptr().add(8 * b), act.scaled_sums32.as_ptr().add(8 * b));
                let (mut even, mut odd, mut m) = (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
                for (j, &acc) in acc.iter().enumerate() {
                    let scale =
                        _mm512_mul_ps(bytes_f32::<false>(p.add(q4k::SCALES + 16 * j)), _mm512_set1_ps(*dx.add(j)));
                    let sum = _mm512_cvtepi32_ps(acc);
                    if j % 2 == 0 {
                        even = _mm512_fmadd_ps(sum, scale, even);
                    } else {
                        odd = _mm512_fmadd_ps(sum, scale, odd);
                    }
                    m = _mm512_fmadd_ps(bytes_f32::<false>(p.add(q4k::MINS + 16 * j)), _mm512_set1_ps(*sdx.add(j)), m);
                }
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(q4k::D) as *const _));
                let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(q4k::DMIN) as *const _));
                total = _mm512_fmadd_ps(d, _mm512_fmadd_ps(odd, _mm512_set1_ps(1.0 / 16.0), even), total);
                mins = _mm512_fmadd_ps(dmin, m, mins);
            }
            _mm512_sub_ps(total, mins)
        }
    }
}

impl GroupDot for Q6K {
    const BYTES: usize = q6k::BYTES;

    /// `dot_q6k_scalar` for 16 rows: per run 64 `vpdpbusd` in 16 chains (one per 16-value
    /// sub-block), each started from the activation's `-32 * sums16` (the offset, exact in the
    /// integer sum). Per pair of steps one load of top bits; each value's two top bits go to
    /// bits 4-5 with one GFNI affine transform and join the nibble in one ternary logic op.
    #[inline(always)]
    unsafe fn dot(group: &[u8], act: &BlockActivation) -> __m512 {
        // SAFETY: the module's contract: run b's bytes are inside the group, and the
        // activation's 256 values, 8 scales and 16 sums of block b inside its arrays.
        unsafe {
            let low4 = _mm512_set1_epi8(0x0f);
            // GFNI bit matrices (output bit 7 - i is the parity of qword byte i ANDed with the
            // input byte): bits s and s + 1 to bits 4 and 5, every other bit 0.
            let pair = |s: i64| _mm512_set1_epi64((1i64 << s) << 24 | (2i64 << s) << 16);
            let tops = [pair(0), pair(2), pair(4), pair(6)];
            let mut total = _mm512_setzero_ps();
            for (b, run) in group.chunks_exact(q6k::BYTES).enumerate() {
                let p = run.as_ptr();
                let x = act.q.as_ptr().add(256 * b);
                let sums16 = &act.sums16[16 * b..16 * b + 16];
                let mut acc: [__m512i; 16] = std::array::from_fn(|s| _mm512_set1_epi32(-32 * sums16[s]));
                for t in 0..16 {
                    let h = _mm512_loadu_si512(p.add(q6k::QH + 64 * t) as *const _);
                    for half in 0..2 {
                        let s = 2 * t + half;
                        let w = _mm512_loadu_si512(p.add(q6k::QL + 64 * s) as *const _);
                        let top_a = _mm512_gf2p8affine_epi64_epi8::<0>(h, tops[2 * half]);
                        let top_b = _mm512_gf2p8affine_epi64_epi8::<0>(h, tops[2 * half + 1]);
                        // (w & low4) | top, of the low and the (shifted) high nibbles.
                        let a = _mm512_ternarylogic_epi32::<0xea>(w, low4, top_a);
                        let bv = _mm512_ternarylogic_epi32::<0xea>(_mm512_srli_epi16::<4>(w), low4, top_b);
                        let (sa, sb) = (s / 4, 8 + s / 4);
                        acc[sa] = _mm512_dpbusd_epi32(acc[sa], a, broadcast4(x.add(4 * s)));
                        acc[sb] = _mm512_dpbusd_epi32(acc[sb], bv, broadcast4(x.add(128 + 4 * s)));
                    }
                }
                let dx = act.d.as_ptr().add(8 * b);
                let (mut even, mut odd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                for (s, &acc) in acc.iter().enumerate() {
                    let scale =
                        _mm512_mul_ps(bytes_f32::<true>(p.add(q6k::SCALES + 16 * s)), _mm512_set1_ps(*dx.add(s / 2)));
                    if s % 2 == 0 {
                        even = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), scale, even);
                    } else {
                        odd = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), scale, odd);
                    }
                }
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(q6k::D) as *const _));
                total = _mm512_fmadd_ps(d, _mm512_add_ps(even, odd), total);
            }
            total
        }
    }
}
