//! Block rows times int8 activations on AVX2 (`vpmaddubsw`: unsigned weights times signed
//! activations into int16 pairs, which fit: 63 * 127 * 2 < 2^15; Q8_0's signed weights go in
//! as |w| times the activation with w's sign, 128 * 127 * 2 < 2^15).
//!
//! # Safety (every helper here)
//! The `#[inline(always)]` helpers run inside the `rows_*` kernels, compiled with AVX2 and FMA
//! (and F16C for the 32-value types), which the CPU has; a row is whole blocks and the
//! activation has the row's columns.

use std::arch::x86_64::*;

use super::activation::BlockActivation;
use super::dot_i8::{scales_mins_k4_words, Q4K_BYTES, Q4_0_BYTES, Q4_1_BYTES, Q5K_BYTES, Q6K_BYTES, Q8_0_BYTES};
use crate::kernels::affine::RowsOut;
use crate::kernels::simd_x86::{hsum_avx2, prefetch};
use crate::weights::BlockData;

const PREFETCH_AHEAD: usize = 6144;

/// `BlockRowsI8` for Q4_K.
///
/// # Safety
/// The CPU has AVX2 and FMA; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn rows_q4k(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { rows::<Q4K>(w, cols, range, acts, out) }
}

/// `BlockRowsI8` for Q5_K.
///
/// # Safety
/// The CPU has AVX2 and FMA; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn rows_q5k(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { rows::<Q5K>(w, cols, range, acts, out) }
}

/// `BlockRowsI8` for Q6_K.
///
/// # Safety
/// The CPU has AVX2 and FMA; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn rows_q6k(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { rows::<Q6K>(w, cols, range, acts, out) }
}

/// `BlockRowsI8` for Q8_0.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows_q8_0(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { rows::<Q80>(w, cols, range, acts, out) }
}

/// `BlockRowsI8` for Q4_0.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows_q4_0(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { rows::<Q40>(w, cols, range, acts, out) }
}

/// `BlockRowsI8` for Q4_1.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows_q4_1(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { rows::<Q41>(w, cols, range, acts, out) }
}

/// What the row driver needs of a block type: its block size and a row's dot product.
/// Zero-sized types, so `rows::<K>` is compiled into each `#[target_feature]` caller.
trait RowDot {
    const VALUES: usize;
    const BYTES: usize;
    /// # Safety
    /// The module's contract.
    unsafe fn dot(row: &[u8], act: &BlockActivation) -> f32;
}

struct Q4K;
struct Q5K;
struct Q6K;
struct Q80;
struct Q40;
struct Q41;

impl RowDot for Q4K {
    const VALUES: usize = 256;
    const BYTES: usize = Q4K_BYTES;
    #[inline(always)]
    unsafe fn dot(row: &[u8], act: &BlockActivation) -> f32 {
        // SAFETY: the caller's (the module's) contract.
        unsafe { dot_k4::<false>(row, act) }
    }
}

impl RowDot for Q5K {
    const VALUES: usize = 256;
    const BYTES: usize = Q5K_BYTES;
    #[inline(always)]
    unsafe fn dot(row: &[u8], act: &BlockActivation) -> f32 {
        // SAFETY: the caller's (the module's) contract.
        unsafe { dot_k4::<true>(row, act) }
    }
}

impl RowDot for Q6K {
    const VALUES: usize = 256;
    const BYTES: usize = Q6K_BYTES;
    #[inline(always)]
    unsafe fn dot(row: &[u8], act: &BlockActivation) -> f32 {
        // SAFETY: the caller's (the module's) contract.
        unsafe { dot_q6k(row, act) }
    }
}

impl RowDot for Q80 {
    const VALUES: usize = 32;
    const BYTES: usize = Q8_0_BYTES;
    #[inline(always)]
    unsafe fn dot(row: &[u8], act: &BlockActivation) -> f32 {
        // SAFETY: the caller's (the module's) contract.
        unsafe { dot_q8_0(row, act) }
    }
}

impl RowDot for Q40 {
    const VALUES: usize = 32;
    const BYTES: usize = Q4_0_BYTES;
    #[inline(always)]
    unsafe fn dot(row: &[u8], act: &BlockActivation) -> f32 {
        // SAFETY: the caller's (the module's) contract.
        unsafe { dot_q4_0(row, act) }
    }
}

impl RowDot for Q41 {
    const VALUES: usize = 32;
    const BYTES: usize = Q4_1_BYTES;
    #[inline(always)]
    unsafe fn dot(row: &[u8], act: &BlockActivation) -> f32 {
        // SAFETY: the caller's (the module's) contract.
        unsafe { dot_q4_1(row, act) }
    }
}

/// Rows `range` of a `K` matrix times each activation of `acts`.
///
/// # Safety
/// The module's contract and `BlockRowsI8`'s.
#[inline(always)]
unsafe fn rows<K: RowDot>(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    super::debug_check_rows(w, cols, &range, acts, &out);
    let row_bytes = cols / K::VALUES * K::BYTES;
    for r in range {
        let row = &w.values[r * row_bytes..(r + 1) * row_bytes];
        for (t, act) in acts.iter().enumerate() {
            // SAFETY: the module's contract; the output is the caller's.
            unsafe { out.write(t, r, K::dot(row, act)) };
        }
    }
}

/// Eight int32 sums of four products each of unsigned `w` and signed `x` bytes.
#[inline(always)]
unsafe fn dot_u8_i8(w: __m256i, x: __m256i) -> __m256i {
    // SAFETY: AVX2 per the module's contract.
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)) }
}

/// Eight unsigned bytes as eight fp32 lanes (the AVX-512 K-quant kernels' too).
#[inline(always)]
pub(super) unsafe fn bytes_to_f32(v: u64) -> __m256 {
    // SAFETY: AVX2 per the module's contract.
    unsafe { _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v as i64))) }
}

/// Lane `i` of `v` in every lane.
#[inline(always)]
unsafe fn lane(v: __m256, i: i32) -> __m256 {
    // SAFETY: AVX2 per the module's contract.
    unsafe { _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(i)) }
}

/// A Q4_K row (`FIFTH_BIT = false`) or a Q5_K row (`true`: Q4_K's layout with the 32 bytes
/// `qh` between scales and nibbles, bit j of `qh[l]` adding 16 to value l of sub-block j).
/// Per block the eight sub-block scales (times the activation's) and mins are one vector
/// each, and the sub-blocks' products go to four FMA chains; per-sub-block scalar scales and
/// a scalar chain of mins made the kernel 2.2x slower (`benchmarks/block_kernels.rs`).
#[inline(always)]
unsafe fn dot_k4<const FIFTH_BIT: bool>(row: &[u8], act: &BlockActivation) -> f32 {
    let (block_bytes, qs) = if FIFTH_BIT { (Q5K_BYTES, 48) } else { (Q4K_BYTES, 16) };
    // SAFETY: the module's contract: block b's bytes are inside the row and its 256 values,
    // 8 scales and 8 scaled sums inside the activation.
    unsafe {
        let (mask4, one) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(1));
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut mins = _mm256_setzero_ps();
        for (b, block) in row.chunks_exact(block_bytes).enumerate() {
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD));
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD + 64));
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD + 128));
            if FIFTH_BIT {
                prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD + 175));
            }
            let dd = fp16_pair(block);
            let (d, dmin) = (_mm256_broadcastss_ps(dd), _mm256_broadcastss_ps(_mm_movehdup_ps(dd)));
            let (sc, m) = scales_mins_k4_words(&block[4..16]);
            let xd = _mm256_loadu_ps(act.d.as_ptr().add(8 * b));
            let scale = _mm256_mul_ps(_mm256_mul_ps(bytes_to_f32(sc), d), xd); // [8] per sub-block
            let min = _mm256_mul_ps(bytes_to_f32(m), dmin);
            mins = _mm256_fmadd_ps(min, _mm256_loadu_ps(act.scaled_sums32.as_ptr().add(8 * b)), mins);
            let qh =
                if FIFTH_BIT { _mm256_loadu_si256(block.as_ptr().add(16) as *const _) } else { _mm256_setzero_si256() };
            let x = act.q.as_ptr().add(256 * b);
            for (c, chain) in acc.iter_mut().enumerate() {
                let wv = _mm256_loadu_si256(block.as_ptr().add(qs + 32 * c) as *const _);
                for (half, w) in [_mm256_and_si256(wv, mask4), _mm256_and_si256(_mm256_srli_epi16::<4>(wv), mask4)]
                    .into_iter()
                    .enumerate()
                {
                    let j = 2 * c + half;
                    let w = if FIFTH_BIT {
                        // Bit j of each byte to bit 4 (a 16-bit shift, then one bit per byte).
                        let high = _mm256_and_si256(shift_right_16(qh, j as i32), one);
                        _mm256_or_si256(w, _mm256_slli_epi16::<4>(high))
                    } else {
                        w
                    };
                    let xv = _mm256_loadu_si256(x.add(32 * j) as *const _);
                    let products = _mm256_cvtepi32_ps(dot_u8_i8(w, xv));
                    *chain = _mm256_fmadd_ps(products, lane(scale, j as i32), *chain);
                }
            }
        }
        let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum_avx2(_mm256_sub_ps(acc, mins))
    }
}

/// A Q6_K row: the sixteen sub-block scales (times the activation's) as two vectors, the -32
/// offsets through the activation's 16-value sums in two FMAs, and four FMA chains (as in
/// `dot_k4`; 2.2x the scalar-scale version).
#[inline(always)]
unsafe fn dot_q6k(row: &[u8], act: &BlockActivation) -> f32 {
    // SAFETY: as in `dot_k4`; the 16 scale bytes are the block's bytes 192..208.
    unsafe {
        let (mask4, mask2) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3));
        // Lanes 0-3 take sub-block s, lanes 4-7 sub-block s + 1 (s = 2k within a half's vector).
        let pick: [__m256i; 4] = std::array::from_fn(|k| {
            let s = 2 * k as i32;
            _mm256_setr_epi32(s, s, s, s, s + 1, s + 1, s + 1, s + 1)
        });
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut offsets = _mm256_setzero_ps();
        for (b, block) in row.chunks_exact(Q6K_BYTES).enumerate() {
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD));
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD + 64));
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD + 128));
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD + 192));
            let d = _mm256_set1_ps(fp16_first(&block[208..210]));
            let xd = _mm256_loadu_ps(act.d.as_ptr().add(8 * b)); // one per 32 values: two sub-blocks
            let sc = _mm_loadu_si128(block.as_ptr().add(192) as *const _);
            // Sub-blocks 0-7 and 8-15: scale * d * the activation scale of their 32 values.
            let f: [__m256; 2] = std::array::from_fn(|h| {
                let bytes = if h == 0 { sc } else { _mm_unpackhi_epi64(sc, sc) };
                let first = 4 * h as i32; // activation block of sub-blocks 8h and 8h + 1
                let pairs =
                    _mm256_setr_epi32(first, first, first + 1, first + 1, first + 2, first + 2, first + 3, first + 3);
                let xd_pairs = _mm256_permutevar8x32_ps(xd, pairs);
                _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), d), xd_pairs)
            });
            for (h, fh) in f.iter().enumerate() {
                let sums = _mm256_loadu_ps(act.sums16_f32.as_ptr().add(16 * b + 8 * h));
                offsets = _mm256_fmadd_ps(*fh, sums, offsets);
            }
            let x = act.q.as_ptr().add(256 * b);
            for (half, f_half) in f.iter().enumerate() {
                let qh = _mm256_loadu_si256(block.as_ptr().add(128 + 32 * half) as *const _);
                for k in 0..4 {
                    let ql = _mm256_loadu_si256(block.as_ptr().add(64 * half + 32 * (k % 2)) as *const _);
                    let low = if k < 2 {
                        _mm256_and_si256(ql, mask4)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql), mask4)
                    };
                    let bits = _mm256_and_si256(shift_right_16(qh, 2 * k as i32), mask2);
                    let w = _mm256_or_si256(low, _mm256_slli_epi16::<4>(bits));
                    let xv = _mm256_loadu_si256(x.add(128 * half + 32 * k) as *const _);
                    // Lanes 0-3 are sub-block 8 half + 2k, lanes 4-7 the next.
                    let scale = _mm256_permutevar8x32_ps(*f_half, pick[k]);
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8_i8(w, xv)), scale, acc[k]);
                }
            }
        }
        let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum_avx2(_mm256_fnmadd_ps(_mm256_set1_ps(32.0), offsets, acc))
    }
}

/// Every 16-bit lane of `v` shifted right by `n` (0..8).
#[inline(always)]
unsafe fn shift_right_16(v: __m256i, n: i32) -> __m256i {
    // SAFETY: AVX2 per the module's contract.
    unsafe { _mm256_srl_epi16(v, _mm_cvtsi32_si128(n)) }
}

/// Eight int32 sums of four products each of signed `w` and `x` bytes: |w| times x with w's
/// sign (x is never -128, so the sign flip cannot overflow).
#[inline(always)]
unsafe fn dot_i8_i8(w: __m256i, x: __m256i) -> __m256i {
    // SAFETY: AVX2 per the module's contract.
    unsafe { dot_u8_i8(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w)) }
}

/// The fp16 values at `block[0..2]` and `block[2..4]` in lanes 0 and 1 (F16C).
#[inline(always)]
unsafe fn fp16_pair(block: &[u8]) -> __m128 {
    // SAFETY: F16C per the module's contract; the four bytes are read with bounds checks.
    unsafe { _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([block[0], block[1], block[2], block[3]]))) }
}

/// The fp16 value at `block[0..2]` (F16C).
#[inline(always)]
unsafe fn fp16_first(block: &[u8]) -> f32 {
    // SAFETY: F16C per the module's contract; the two bytes are read with bounds checks.
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([block[0], block[1]]) as i32))) }
}

/// A 4-bit block's 16 nibble bytes at `p` as 32 unsigned bytes in value order: the low
/// nibbles (values 0..16), then the high ones (16..32). The AVX-512 kernels' tail blocks use
/// it too.
#[inline(always)]
pub(super) unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: AVX2 per the module's contract; the caller's 16 bytes at p are inside its block.
    unsafe {
        let v = _mm_loadu_si128(p as *const _);
        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(v), v), _mm256_set1_epi8(0x0f))
    }
}

/// `dot_q8_0_scalar`: per block one 32-byte load of weights and of the activation.
#[inline(always)]
unsafe fn dot_q8_0(row: &[u8], act: &BlockActivation) -> f32 {
    // SAFETY: the module's contract: block b's 34 bytes are inside the row (the 32 loaded from
    // offset 2 among them), and its 32 values and scale inside the activation.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (b, block) in row.chunks_exact(Q8_0_BYTES).enumerate() {
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD));
            let w = _mm256_loadu_si256(block.as_ptr().add(2) as *const _);
            let x = _mm256_loadu_si256(act.q.as_ptr().add(32 * b) as *const _);
            let scale = _mm256_set1_ps(fp16_first(block) * act.d[b]);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_i8_i8(w, x)), scale, acc);
        }
        hsum_avx2(acc)
    }
}

/// `dot_q4_0_scalar`: the nibbles as unsigned 0..16 times the activation, and the -8 through
/// the activation's block sums (one scalar multiply-add per block instead of two vector ops).
#[inline(always)]
unsafe fn dot_q4_0(row: &[u8], act: &BlockActivation) -> f32 {
    // SAFETY: as in `dot_q8_0`; the 16 nibble bytes are the block's bytes 2..18.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut offsets = 0.0f32;
        for (b, block) in row.chunks_exact(Q4_0_BYTES).enumerate() {
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD));
            let x = _mm256_loadu_si256(act.q.as_ptr().add(32 * b) as *const _);
            let d = fp16_first(block);
            let idot = dot_u8_i8(nibbles(block.as_ptr().add(2)), x);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(idot), _mm256_set1_ps(d * act.d[b]), acc);
            offsets += d * act.scaled_sums32[b];
        }
        hsum_avx2(acc) - 8.0 * offsets
    }
}

/// `dot_q4_1_scalar`: as `dot_q4_0`, with `m` times the activation's scaled block sums.
#[inline(always)]
unsafe fn dot_q4_1(row: &[u8], act: &BlockActivation) -> f32 {
    // SAFETY: as in `dot_q8_0`; the 16 nibble bytes are the block's bytes 4..20.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0.0f32;
        for (b, block) in row.chunks_exact(Q4_1_BYTES).enumerate() {
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD));
            let x = _mm256_loadu_si256(act.q.as_ptr().add(32 * b) as *const _);
            let dm = fp16_pair(block);
            let (d, m) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
            let idot = dot_u8_i8(nibbles(block.as_ptr().add(4)), x);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(idot), _mm256_set1_ps(d * act.d[b]), acc);
            mins += m * act.scaled_sums32[b];
        }
        hsum_avx2(acc) + mins
    }
}
