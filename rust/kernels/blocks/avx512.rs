//! Q4_K, Q5_K and Q6_K rows times int8 activations on AVX-512 VNNI (`vpdpbusd`: the 4-, 5- and
//! 6-bit weights are unsigned bytes, the activation signed). The 32-value types are in
//! `avx512_q4.rs`, on the same row driver.
//!
//! # Safety (every helper here)
//! The `#[inline(always)]` helpers run inside the `rows_*` kernels, compiled with AVX-512
//! F, BW, VL, VNNI and F16C (`rows_q6k_gfni` also GFNI), which the CPU has (`Kernels::new`
//! checks before it hands them out, and picks `rows_q6k_gfni` only with GFNI). A row (or the
//! piece of one a kernel gets, blocks `first..`) is whole blocks, and the activation has the
//! row's columns (so its arrays hold the block's values, scales and sums, and the loads of
//! block b stay inside them).

use std::arch::x86_64::*;

use super::activation::BlockActivation;
use super::avx2::bytes_to_f32;
use super::dot_i8::{scales_mins_k4_words, Q4K_BYTES, Q5K_BYTES, Q6K_BYTES};
use crate::kernels::affine::RowsOut;
use crate::kernels::simd_x86::prefetch;
use crate::weights::BlockData;

/// Rows end every KB or so and the hardware prefetcher restarts slowly across them: ask for
/// the weights this far ahead (as the 4-bit decode kernel does).
pub(super) const PREFETCH_AHEAD: usize = 6144;

/// Tokens per pass over a row: a block's weights and scales are unpacked once for all of them
/// (a prompt's batch), which halves the work per token of a prefill.
const TOKENS: usize = 4;

/// Columns per pass over a tile's activations when a prefill's rows are wider: 4 tokens'
/// activations for 2048 columns are about 11 KB and stay in L1 while a group of `GROUP` rows
/// streams past; at 8192 columns they were 44 KB and every row re-read them from L2 (in-cache
/// benchmark, 128 x 8192, 16 tokens: Q4_K 54 -> 63 GMAC/s, Q6_K 47 -> 60; 1024 and 4096
/// columns were slower than 2048).
const CHUNK_COLS: usize = 2048;
const GROUP: usize = 32;

/// `BlockRowsI8` for Q4_K.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI, and F16C; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
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
/// The CPU has AVX-512 F, BW, VL and VNNI, and F16C; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
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
/// The CPU has AVX-512 F, BW, VL and VNNI, and F16C; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub(crate) unsafe fn rows_q6k(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { rows::<Q6K<false>>(w, cols, range, acts, out) }
}

/// `rows_q6k` with GFNI: each of a block's four bit-pair extractions from `qh` one affine
/// byte transform instead of a shift, a mask and a shift.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI, F16C and GFNI; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,gfni")]
pub(crate) unsafe fn rows_q6k_gfni(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { rows::<Q6K<true>>(w, cols, range, acts, out) }
}

/// What the row driver needs of a block type: its block size and `N` tokens' dot products of
/// a row's blocks `first..first + row.len() / BYTES` (`row` those blocks' bytes). Zero-sized
/// types, so `rows::<K>` is compiled into each `#[target_feature]` caller.
pub(super) trait TileDot {
    const VALUES: usize;
    const BYTES: usize;
    /// # Safety
    /// The module's contract (the activations have the blocks `first..`).
    unsafe fn dot<const N: usize>(row: &[u8], first: usize, acts: &[BlockActivation]) -> [f32; N];
}

struct Q4K;
struct Q5K;
/// `GFNI`: the CPU has it and the caller is compiled with it.
struct Q6K<const GFNI: bool>;

impl TileDot for Q4K {
    const VALUES: usize = 256;
    const BYTES: usize = Q4K_BYTES;
    #[inline(always)]
    unsafe fn dot<const N: usize>(row: &[u8], first: usize, acts: &[BlockActivation]) -> [f32; N] {
        // SAFETY: the caller's (the module's) contract.
        unsafe { dot_k4::<N, false>(row, first, acts) }
    }
}

impl TileDot for Q5K {
    const VALUES: usize = 256;
    const BYTES: usize = Q5K_BYTES;
    #[inline(always)]
    unsafe fn dot<const N: usize>(row: &[u8], first: usize, acts: &[BlockActivation]) -> [f32; N] {
        // SAFETY: the caller's (the module's) contract.
        unsafe { dot_k4::<N, true>(row, first, acts) }
    }
}

impl<const GFNI: bool> TileDot for Q6K<GFNI> {
    const VALUES: usize = 256;
    const BYTES: usize = Q6K_BYTES;
    #[inline(always)]
    unsafe fn dot<const N: usize>(row: &[u8], first: usize, acts: &[BlockActivation]) -> [f32; N] {
        // SAFETY: the caller's (the module's) contract.
        unsafe { dot_q6k::<N, GFNI>(row, first, acts) }
    }
}

/// Rows `range` of a `K` matrix times `acts`, `TOKENS` tokens per pass over each row (over
/// `CHUNK_COLS` of it at a time). Tokens outside, rows inside: a tile's activations stay in L1
/// while the rows stream past; with rows outside, every row re-read all the tokens'
/// activations from L2 (16 tokens, in-cache benchmark: Q4_K 55 -> 61 GMAC/s, Q6_K 49 -> 53).
///
/// # Safety
/// The module's contract and `BlockRowsI8`'s.
#[inline(always)]
pub(super) unsafe fn rows<K: TileDot>(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    super::debug_check_rows(w, cols, &range, acts, &out);
    let blocks = cols / K::VALUES;
    let row_bytes = blocks * K::BYTES;
    let chunk = (CHUNK_COLS / K::VALUES).max(1);
    for (tile, acts) in acts.chunks(TOKENS).enumerate() {
        let t0 = tile * TOKENS;
        if acts.len() == 1 {
            // One token's activations fit in L1 whole: each row in one piece, no sums to keep
            // (in one piece 5% faster than through the sums below, in-cache benchmark).
            for r in range.clone() {
                let row = &w.values[r * row_bytes..(r + 1) * row_bytes];
                // SAFETY: the row and activations have the same columns (the module's
                // contract), and the output is the caller's (`BlockRowsI8`'s contract).
                unsafe { write(&out, t0, r, &K::dot::<1>(row, 0, acts)) };
            }
            continue;
        }
        // `chunk` blocks of a group of rows at a time, summed per row and token.
        for group in range.clone().step_by(GROUP) {
            let group = group..(group + GROUP).min(range.end);
            let mut sums = [[0.0f32; TOKENS]; GROUP];
            for first in (0..blocks).step_by(chunk) {
                let end = (first + chunk).min(blocks);
                for (r, sums) in group.clone().zip(&mut sums) {
                    let row = &w.values[r * row_bytes + first * K::BYTES..r * row_bytes + end * K::BYTES];
                    // SAFETY: blocks first..end of the row, which the activations have (the
                    // module's contract).
                    let part = unsafe { dot_tile::<K>(row, first, acts) };
                    for (s, p) in sums.iter_mut().zip(part) {
                        *s += p;
                    }
                }
            }
            for (r, sums) in group.zip(&sums) {
                // SAFETY: the caller's output contract (`BlockRowsI8`'s).
                unsafe { write(&out, t0, r, &sums[..acts.len()]) };
            }
        }
    }
}

/// `K::dot` for `acts.len()` (2 to `TOKENS`) tokens, padded with zeros to `TOKENS`. Each
/// `K::dot::<N>` is inlined once in `rows` (with a second copy of them the inliner gave up on
/// the 32-value kernels' helpers, 10 times slower).
///
/// # Safety
/// `TileDot::dot`'s.
#[inline(always)]
unsafe fn dot_tile<K: TileDot>(row: &[u8], first: usize, acts: &[BlockActivation]) -> [f32; TOKENS] {
    let pad = |v: &[f32]| std::array::from_fn(|j| v.get(j).copied().unwrap_or(0.0));
    // SAFETY: the caller's.
    unsafe {
        match acts.len() {
            2 => pad(&K::dot::<2>(row, first, acts)),
            3 => pad(&K::dot::<3>(row, first, acts)),
            _ => K::dot::<4>(row, first, acts),
        }
    }
}

/// Tokens `t0..t0 + values.len()` of row `r`.
///
/// # Safety
/// `BlockRowsI8`'s output contract for those tokens.
#[inline(always)]
unsafe fn write(out: &RowsOut, t0: usize, r: usize, values: &[f32]) {
    for (j, &v) in values.iter().enumerate() {
        // SAFETY: the caller's output contract.
        unsafe { out.write(t0 + j, r, v) };
    }
}

/// The 4x4 dword transpose within each 128-bit lane: dword t of lane L of vector u becomes
/// dword u of lane L of vector t. Applied to four vectors that each hold whole sub-blocks
/// per lane, it gives four whose dword (L, t) is in one sub-block in all of them.
#[inline(always)]
unsafe fn transpose4(v: [__m512i; 4]) -> [__m512i; 4] {
    // SAFETY: register-only AVX-512 F (the module's contract).
    unsafe {
        let (t0, t1) = (_mm512_unpacklo_epi32(v[0], v[1]), _mm512_unpackhi_epi32(v[0], v[1]));
        let (t2, t3) = (_mm512_unpacklo_epi32(v[2], v[3]), _mm512_unpackhi_epi32(v[2], v[3]));
        [
            _mm512_unpacklo_epi64(t0, t2),
            _mm512_unpackhi_epi64(t0, t2),
            _mm512_unpacklo_epi64(t1, t3),
            _mm512_unpackhi_epi64(t1, t3),
        ]
    }
}

/// The sum of a block's four `vpdpbusd` of weights `w` and the 256 activation values at `x`,
/// started from `init`: one dependent chain, its lanes each one sub-block's partial sum.
///
/// # Safety
/// `x` has 256 readable bytes; the module's contract.
#[inline(always)]
unsafe fn dot_block(init: __m512i, w: &[__m512i; 4], x: *const i8) -> __m512i {
    // SAFETY: the caller's: four 64-byte loads inside the 256 bytes at x.
    unsafe {
        let mut i = init;
        for (v, &w) in w.iter().enumerate() {
            i = _mm512_dpbusd_epi32(i, w, _mm512_loadu_si512(x.add(64 * v) as *const _));
        }
        i
    }
}

/// `dot_q4k_scalar` (`FIFTH_BIT = false`) or `dot_q5k_scalar` (`true`) for `N` activations at
/// once: per block two 64-byte loads of nibbles; a load's low nibbles are sub-blocks 4L and
/// 4L + 2 (halves), its high nibbles 4L + 1 and 4L + 3. Q5_K's fifth bits (bit j of `qh[l]`
/// for value l of sub-block j) come from its 32 bytes of `qh`, broadcast to both halves and
/// shifted per half. The four vectors are transposed per lane (`transpose4`, `q_k4`'s order),
/// so a block's four `vpdpbusd` add up in one register that is converted and scaled once: one
/// conversion and FMA per block and token instead of four, each with a permute of the scales
/// (in-cache benchmark, 16 tokens: 61 -> 77 GMAC/s; 1 token unchanged, 42-43, the transpose
/// costing what it saved, until Q4_K's was folded into its nibble masks below). Weights and
/// scales are unpacked once per block for all `N`.
#[inline(always)]
unsafe fn dot_k4<const N: usize, const FIFTH_BIT: bool>(
    row: &[u8],
    first: usize,
    acts: &[BlockActivation],
) -> [f32; N] {
    debug_assert_eq!(acts.len(), N);
    let (block_bytes, qs) = if FIFTH_BIT { (Q5K_BYTES, 48) } else { (Q4K_BYTES, 16) };
    // SAFETY: the module's contract: block b's bytes are inside the row, and each
    // activation's 256 values, 8 scales, 16 lane-ordered scales and 8 sums of block b inside
    // its arrays.
    unsafe {
        let (mask4, one) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(1));
        // Vector v holds sub-blocks 4 (v / 2) + v % 2 (low half) and that + 2 (high half).
        let fifth_shift: [__m512i; 4] = std::array::from_fn(|v| {
            let j = (4 * (v / 2) + v % 2) as i16;
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_set1_epi16(j)), _mm256_set1_epi16(j + 2))
        });
        // Lane 4 L + t of the transposed vectors is in sub-block 4 (t / 2) + 2 (L / 2) + t % 2.
        let pick = _mm512_setr_epi32(0, 1, 4, 5, 0, 1, 4, 5, 2, 3, 6, 7, 2, 3, 6, 7);
        // Q4_K: lanes 4 L + t take the low nibbles for even t, the high ones (times 16) for odd;
        // sub-block j's scale over 16 where j is odd.
        let nibbles = _mm512_set4_epi32(0xf0f0_f0f0u32 as i32, 0x0f0f_0f0f, 0xf0f0_f0f0u32 as i32, 0x0f0f_0f0f);
        let sixteenths = _mm256_setr_ps(1.0, 0.0625, 1.0, 0.0625, 1.0, 0.0625, 1.0, 0.0625);
        let mut acc = [_mm512_setzero_ps(); N];
        let mut mins = [_mm256_setzero_ps(); N];
        for (b, block) in (first..).zip(row.chunks_exact(block_bytes)) {
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD));
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD + 64));
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD + 128));
            if FIFTH_BIT {
                prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD + 175));
            }
            // d and dmin with F16C; the eight 6-bit scales and mins as two words of bytes.
            let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([block[0], block[1], block[2], block[3]])));
            let (sc, m) = scales_mins_k4_words(&block[4..16]);
            let d = _mm256_broadcastss_ps(dd);
            let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
            let d = if FIFTH_BIT { d } else { _mm256_mul_ps(d, sixteenths) };
            let scale = _mm512_permutexvar_ps(pick, _mm512_castps256_ps512(_mm256_mul_ps(bytes_to_f32(sc), d)));
            let min = _mm256_mul_ps(bytes_to_f32(m), dmin);
            let qh = if FIFTH_BIT {
                _mm512_broadcast_i64x4(_mm256_loadu_si256(block.as_ptr().add(16) as *const _))
            } else {
                _mm512_setzero_si512()
            };
            let w = if FIFTH_BIT {
                transpose4(std::array::from_fn(|v| {
                    let wv = _mm512_loadu_si512(block.as_ptr().add(qs + 64 * (v / 2)) as *const _);
                    let low = if v % 2 == 0 {
                        _mm512_and_si512(wv, mask4)
                    } else {
                        _mm512_and_si512(_mm512_srli_epi16::<4>(wv), mask4)
                    };
                    // Bit j of each byte to bit 4: a 16-bit shift per half, then one bit per byte.
                    let high = _mm512_and_si512(_mm512_srlv_epi16(qh, fifth_shift[v]), one);
                    _mm512_or_si512(low, _mm512_slli_epi16::<4>(high))
                }))
            } else {
                // The transpose straight from the two loads: dwords [a[u], a[u], b[u], b[u]] per
                // lane, then low, high, low, high nibbles, the high ones left in place (16 times
                // their value, undone in `scale`): 4 shuffles and 4 ands for the 2 shifts, 4
                // ands and 8 unpacks (1 token 44 -> 50 GMAC/s, in-cache benchmark).
                let a = _mm512_castsi512_ps(_mm512_loadu_si512(block.as_ptr().add(qs) as *const _));
                let b = _mm512_castsi512_ps(_mm512_loadu_si512(block.as_ptr().add(qs + 64) as *const _));
                let nibble = |v: __m512| _mm512_and_si512(_mm512_castps_si512(v), nibbles);
                [
                    nibble(_mm512_shuffle_ps::<0x00>(a, b)),
                    nibble(_mm512_shuffle_ps::<0x55>(a, b)),
                    nibble(_mm512_shuffle_ps::<0xaa>(a, b)),
                    nibble(_mm512_shuffle_ps::<0xff>(a, b)),
                ]
            };
            for (j, act) in acts.iter().enumerate().take(N) {
                mins[j] = _mm256_fmadd_ps(min, _mm256_loadu_ps(act.scaled_sums32.as_ptr().add(8 * b)), mins[j]);
                // Weight scale times activation scale per lane's sub-block.
                let scaled = _mm512_mul_ps(scale, _mm512_loadu_ps(act.d_k4.as_ptr().add(16 * b)));
                let i = dot_block(_mm512_setzero_si512(), &w, act.q_k4.as_ptr().add(256 * b));
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), scaled, acc[j]);
            }
        }
        std::array::from_fn(|j| {
            let mut lanes8 = [0.0f32; 8];
            _mm256_storeu_ps(lanes8.as_mut_ptr(), mins[j]);
            _mm512_reduce_add_ps(acc[j]) - lanes8.iter().sum::<f32>()
        })
    }
}

/// `dot_q6k_scalar` for `N` activations at once: per 128-value half one 64-byte load of low
/// nibbles (values 0..64 of the half) and its high nibbles (64..128), each with two bits from
/// the 32 bytes of `qh`; unpacked once per block for all `N`. Each vector's lanes are then
/// whole 16-value sub-blocks; transposed per lane (`transpose4`, `q_q6`'s order) a block's four
/// `vpdpbusd` add up in one register, started from the activation's `-32 * sums16` (the
/// offset, exact in the integer sum), converted and scaled once (in-cache benchmark, 16 tokens:
/// 53 -> 72 GMAC/s; 1 token 35 -> 36).
#[inline(always)]
unsafe fn dot_q6k<const N: usize, const GFNI: bool>(row: &[u8], first: usize, acts: &[BlockActivation]) -> [f32; N] {
    debug_assert_eq!(acts.len(), N);
    // SAFETY: the module's contract: block b's 210 bytes are inside the row, and each
    // activation's 256 values and 16 lane-ordered scales and offsets of block b inside its
    // arrays.
    unsafe {
        let (mask4, mask2) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(3));
        // Shifts per 16-bit lane: the low 256 bits take qh >> 0 (or >> 4), the high >> 2 (>> 6).
        let shift = |a: i16, b: i16| {
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_set1_epi16(a)), _mm256_set1_epi16(b))
        };
        let (shift_lo, shift_hi) = (shift(0, 2), shift(4, 6));
        // The same as GFNI bit matrices (output bit 7 - i is the parity of qword byte i ANDed
        // with the input byte): bits s and s + 1 to bits 4 and 5, s per half as above.
        let pair = |a: i64, b: i64| {
            let m = |s: i64| (1i64 << s) << 24 | (2i64 << s) << 16;
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_set1_epi64x(m(a))), _mm256_set1_epi64x(m(b)))
        };
        let (pair_lo, pair_hi) = (pair(0, 2), pair(4, 6));
        // Lane 4 L + t of the transposed vectors is in sub-block 4 t + L.
        let pick = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let mut acc = [_mm512_setzero_ps(); N];
        for (b, block) in (first..).zip(row.chunks_exact(Q6K_BYTES)) {
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD));
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD + 64));
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD + 128));
            prefetch(block.as_ptr().wrapping_add(PREFETCH_AHEAD + 192));
            let d = _mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([block[208], block[209]]) as i32));
            let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(block.as_ptr().add(192) as *const _)));
            // One per 16-value sub-block, in lane order.
            let scale = _mm512_permutexvar_ps(pick, _mm512_mul_ps(sc, _mm512_broadcastss_ps(d)));
            let mut w = [_mm512_setzero_si512(); 4];
            for half in 0..2 {
                let ql = _mm512_loadu_si512(block.as_ptr().add(64 * half) as *const _);
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(block.as_ptr().add(128 + 32 * half) as *const _));
                // One GFNI transform per bit pair instead of three operations (in-cache
                // benchmark, 1 token: 37 -> 41 GMAC/s; 16 tokens 71 -> 69-70, within the noise,
                // and no better with GFNI for one token only).
                let (high_lo, high_hi) = if GFNI {
                    (_mm512_gf2p8affine_epi64_epi8::<0>(qh, pair_lo), _mm512_gf2p8affine_epi64_epi8::<0>(qh, pair_hi))
                } else {
                    (
                        _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srlv_epi16(qh, shift_lo), mask2)),
                        _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srlv_epi16(qh, shift_hi), mask2)),
                    )
                };
                // (ql & mask4) | high, and the same of the high nibbles.
                w[2 * half] = _mm512_ternarylogic_epi32::<0xea>(ql, mask4, high_lo);
                w[2 * half + 1] = _mm512_ternarylogic_epi32::<0xea>(_mm512_srli_epi16::<4>(ql), mask4, high_hi);
            }
            let w = transpose4(w);
            for (j, act) in acts.iter().enumerate().take(N) {
                let scaled = _mm512_mul_ps(scale, _mm512_loadu_ps(act.d_q6.as_ptr().add(16 * b)));
                let offsets = _mm512_loadu_si512(act.offsets_q6.as_ptr().add(16 * b) as *const _);
                let i = dot_block(offsets, &w, act.q_q6.as_ptr().add(256 * b));
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), scaled, acc[j]);
            }
        }
        std::array::from_fn(|j| _mm512_reduce_add_ps(acc[j]))
    }
}
