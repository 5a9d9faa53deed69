//! Q4_K, Q5_K and Q6_K rows times int8 activations on AVX-512 VNNI (`vpdpbusd`: the 4-, 5- and
//! 6-bit weights are unsigned bytes, the activation signed): one token row by row, a batch in
//! tiles of up to `K_TOKENS` tokens whose activations are first copied into records, one run
//! per block (`tiles_avx512.rs`). The 32-value types are in `avx512_q4.rs` (one token, and the
//! older row driver `rows`, four tokens per pass) and `avx512_tiles32.rs` (their tiles).
//!
//! # Safety (every helper here)
//! The `#[inline(always)]` helpers run inside the `rows_*` kernels, compiled with AVX-512
//! F, BW, VL, VNNI and F16C (`rows_q6k_gfni` also GFNI), which the CPU has (`Kernels::new`
//! checks before it hands them out, and picks `rows_q6k_gfni` only with GFNI). A row (or the
//! piece of one a kernel gets, blocks `first..`) is whole blocks, and the activation has the
//! row's columns (so its arrays hold the block's values, scales and sums, and the loads of
//! block b stay inside them); a tile's records hold every block of the row for each of its
//! tokens.

use std::arch::x86_64::*;

use super::activation::BlockActivation;
use super::avx2::bytes_to_f32;
use super::dot_i8::{scales_mins_k4_words, Q4K_BYTES, Q5K_BYTES, Q6K_BYTES};
use super::tiles_avx512::{rows_k, KQuant, Record};
use crate::kernels::affine::RowsOut;
use crate::kernels::simd_x86::prefetch;
use crate::weights::BlockData;

/// Rows end every KB or so and the hardware prefetcher restarts slowly across them: ask for
/// the weights this far ahead (as the 4-bit decode kernel does).
pub(super) const PREFETCH_AHEAD: usize = 6144;

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
    unsafe { rows_k::<Q4K>(w, cols, range, acts, out) }
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
    unsafe { rows_k::<Q5K>(w, cols, range, acts, out) }
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
    unsafe { rows_k::<Q6K<false>>(w, cols, range, acts, out) }
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
    unsafe { rows_k::<Q6K<true>>(w, cols, range, acts, out) }
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

/// Q4_K's and Q5_K's records: `q_k4`, `d_k4` and the scaled sums.
fn stage_k4(act: &BlockActivation, b: usize, record: &mut Record) {
    record.q.copy_from_slice(&act.q_k4[256 * b..256 * (b + 1)]);
    record.scales.copy_from_slice(&act.d_k4[16 * b..16 * (b + 1)]);
    for (e, s) in record.extra.iter_mut().zip(&act.scaled_sums32[8 * b..8 * (b + 1)]) {
        *e = s.to_bits();
    }
}

impl KQuant for Q4K {
    const LAYOUT: u64 = 0;
    fn stage(act: &BlockActivation, b: usize, record: &mut Record) {
        stage_k4(act, b, record)
    }
    #[inline(always)]
    unsafe fn dot_tile<const N: usize>(row: &[u8], tile: *const Record, ahead: isize) -> [f32; N] {
        // SAFETY: the caller's (the module's) contract.
        unsafe { dot_k4_tile::<N, false>(row, tile, ahead) }
    }
}

impl KQuant for Q5K {
    const LAYOUT: u64 = 0;
    fn stage(act: &BlockActivation, b: usize, record: &mut Record) {
        stage_k4(act, b, record)
    }
    #[inline(always)]
    unsafe fn dot_tile<const N: usize>(row: &[u8], tile: *const Record, ahead: isize) -> [f32; N] {
        // SAFETY: the caller's (the module's) contract.
        unsafe { dot_k4_tile::<N, true>(row, tile, ahead) }
    }
}

impl<const GFNI: bool> KQuant for Q6K<GFNI> {
    const LAYOUT: u64 = 1;
    fn stage(act: &BlockActivation, b: usize, record: &mut Record) {
        record.q.copy_from_slice(&act.q_q6[256 * b..256 * (b + 1)]);
        record.scales.copy_from_slice(&act.d_q6[16 * b..16 * (b + 1)]);
        for (e, &o) in record.extra.iter_mut().zip(&act.offsets_q6[16 * b..16 * (b + 1)]) {
            *e = o as u32;
        }
    }
    #[inline(always)]
    unsafe fn dot_tile<const N: usize>(row: &[u8], tile: *const Record, ahead: isize) -> [f32; N] {
        // SAFETY: the caller's (the module's) contract.
        unsafe { dot_q6k_tile::<N>(row, tile, ahead) }
    }
}

/// Tokens `t0..t0 + values.len()` of row `r`.
///
/// # Safety
/// `BlockRowsI8`'s output contract for those tokens.
#[inline(always)]
pub(super) unsafe fn write(out: &RowsOut, t0: usize, r: usize, values: &[f32]) {
    for (j, &v) in values.iter().enumerate() {
        // SAFETY: the caller's output contract.
        unsafe { out.write(t0 + j, r, v) };
    }
}

/// The 4x4 dword transpose within each 128-bit lane: dword t of lane L of vector u becomes
/// dword u of lane L of vector t. Applied to four vectors that each hold whole sub-blocks
/// per lane, it gives four whose dword (L, t) is in one sub-block in all of them.
#[inline(always)]
pub(super) unsafe fn transpose4(v: [__m512i; 4]) -> [__m512i; 4] {
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
/// started from `init`: one dependent chain, its lanes each one sub-block's partial sum. (Two
/// chains of two, added at the end, were slower: in-cache benchmark, Q4_K 1 token 50.4 ->
/// 49.5 GMAC/s, 8 tokens 102.5 -> 99.)
///
/// # Safety
/// `x` has 256 readable bytes; the module's contract.
#[inline(always)]
pub(super) unsafe fn dot_block(init: __m512i, w: &[__m512i; 4], x: *const i8) -> __m512i {
    // SAFETY: the caller's: four 64-byte loads inside the 256 bytes at x.
    unsafe {
        let mut i = init;
        for (v, &w) in w.iter().enumerate() {
            i = _mm512_dpbusd_epi32(i, w, _mm512_loadu_si512(x.add(64 * v) as *const _));
        }
        i
    }
}

/// Ask for the bytes `ahead` past a block (`PREFETCH_AHEAD` for one token's row by row pass,
/// which reads the matrix in order): a line per 64 bytes, and the last byte where the block
/// ends well into a line (Q5_K's 176; the next block's first request covers the rest).
#[inline(always)]
pub(super) fn prefetch_ahead(block: &[u8], ahead: isize) {
    let at = block.as_ptr().wrapping_offset(ahead);
    for line in (0..block.len()).step_by(64) {
        prefetch(at.wrapping_add(line));
    }
    if block.len() % 64 > 32 {
        prefetch(at.wrapping_add(block.len() - 1));
    }
}

/// The constants of `unpack_k4`, made once per row.
struct K4Consts {
    mask4: __m512i,
    one: __m512i,
    fifth_shift: [__m512i; 4],
    pick: __m512i,
    nibbles: __m512i,
    sixteenths: __m256,
}

impl K4Consts {
    #[inline(always)]
    unsafe fn new() -> K4Consts {
        // SAFETY: register-only AVX-512 F and AVX (the module's contract).
        unsafe {
            K4Consts {
                mask4: _mm512_set1_epi8(0x0f),
                one: _mm512_set1_epi8(1),
                // Vector v holds sub-blocks 4 (v / 2) + v % 2 (low half) and that + 2 (high half).
                fifth_shift: std::array::from_fn(|v| {
                    let j = (4 * (v / 2) + v % 2) as i16;
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_set1_epi16(j)), _mm256_set1_epi16(j + 2))
                }),
                // Lane 4 L + t of the transposed vectors is in sub-block 4 (t / 2) + 2 (L / 2) + t % 2.
                pick: _mm512_setr_epi32(0, 1, 4, 5, 0, 1, 4, 5, 2, 3, 6, 7, 2, 3, 6, 7),
                // Q4_K: lanes 4 L + t take the low nibbles for even t, the high ones (times 16) for
                // odd; sub-block j's scale over 16 where j is odd.
                nibbles: _mm512_set4_epi32(0xf0f0_f0f0u32 as i32, 0x0f0f_0f0f, 0xf0f0_f0f0u32 as i32, 0x0f0f_0f0f),
                sixteenths: _mm256_setr_ps(1.0, 0.0625, 1.0, 0.0625, 1.0, 0.0625, 1.0, 0.0625),
            }
        }
    }
}

/// A Q4_K (`FIFTH_BIT = false`) or Q5_K (`true`) block unpacked for `vpdpbusd`: per block two
/// 64-byte loads of nibbles; a load's low nibbles are sub-blocks 4L and 4L + 2 (halves), its
/// high nibbles 4L + 1 and 4L + 3. Q5_K's fifth bits (bit j of `qh[l]` for value l of sub-block
/// j) come from its 32 bytes of `qh`, broadcast to both halves and shifted per half. The four
/// vectors are transposed per lane (`transpose4`, `q_k4`'s order), so a block's four
/// `vpdpbusd` add up in one register that is converted and scaled once: one conversion and FMA
/// per block and token instead of four, each with a permute of the scales (in-cache benchmark,
/// 16 tokens: 61 -> 77 GMAC/s; 1 token unchanged, 42-43, the transpose costing what it saved,
/// until Q4_K's was folded into its nibble masks below). Returns the weights, the 16 lane
/// scales (`d * sc` of each lane's sub-block) and the 8 mins (`dmin * m`).
///
/// # Safety
/// `block` is one whole block of the row; the module's contract.
#[inline(always)]
unsafe fn unpack_k4<const FIFTH_BIT: bool>(block: &[u8], c: &K4Consts) -> ([__m512i; 4], __m512, __m256) {
    let qs = if FIFTH_BIT { 48 } else { 16 };
    // SAFETY: the loads stay inside the block (16 + 128 or 48 + 128 bytes).
    unsafe {
        // d and dmin with F16C; the eight 6-bit scales and mins as two words of bytes.
        let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([block[0], block[1], block[2], block[3]])));
        let (sc, m) = scales_mins_k4_words(&block[4..16]);
        let d = _mm256_broadcastss_ps(dd);
        let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
        let d = if FIFTH_BIT { d } else { _mm256_mul_ps(d, c.sixteenths) };
        let scale = _mm512_permutexvar_ps(c.pick, _mm512_castps256_ps512(_mm256_mul_ps(bytes_to_f32(sc), d)));
        let min = _mm256_mul_ps(bytes_to_f32(m), dmin);
        let w = if FIFTH_BIT {
            let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(block.as_ptr().add(16) as *const _));
            transpose4(std::array::from_fn(|v| {
                let wv = _mm512_loadu_si512(block.as_ptr().add(qs + 64 * (v / 2)) as *const _);
                let low = if v % 2 == 0 {
                    _mm512_and_si512(wv, c.mask4)
                } else {
                    _mm512_and_si512(_mm512_srli_epi16::<4>(wv), c.mask4)
                };
                // Bit j of each byte to bit 4: a 16-bit shift per half, then one bit per byte.
                let high = _mm512_and_si512(_mm512_srlv_epi16(qh, c.fifth_shift[v]), c.one);
                _mm512_or_si512(low, _mm512_slli_epi16::<4>(high))
            }))
        } else {
            // The transpose straight from the two loads: dwords [a[u], a[u], b[u], b[u]] per
            // lane, then low, high, low, high nibbles, the high ones left in place (16 times
            // their value, undone in `scale`): 4 shuffles and 4 ands for the 2 shifts, 4
            // ands and 8 unpacks (1 token 44 -> 50 GMAC/s, in-cache benchmark).
            let a = _mm512_castsi512_ps(_mm512_loadu_si512(block.as_ptr().add(qs) as *const _));
            let b = _mm512_castsi512_ps(_mm512_loadu_si512(block.as_ptr().add(qs + 64) as *const _));
            let nibble = |v: __m512| _mm512_and_si512(_mm512_castps_si512(v), c.nibbles);
            [
                nibble(_mm512_shuffle_ps::<0x00>(a, b)),
                nibble(_mm512_shuffle_ps::<0x55>(a, b)),
                nibble(_mm512_shuffle_ps::<0xaa>(a, b)),
                nibble(_mm512_shuffle_ps::<0xff>(a, b)),
            ]
        };
        (w, scale, min)
    }
}

/// The sum of a zmm's lanes minus the sum of a ymm's.
#[inline(always)]
pub(super) unsafe fn reduce_minus(acc: __m512, mins: __m256) -> f32 {
    // SAFETY: register-only AVX-512 F (the module's contract).
    unsafe { _mm512_reduce_add_ps(_mm512_sub_ps(acc, _mm512_zextps256_ps512(mins))) }
}

/// `dot_q4k_scalar` (`FIFTH_BIT = false`) or `dot_q5k_scalar` (`true`) for `N` activations at
/// once, each block unpacked once for all of them (`unpack_k4`).
#[inline(always)]
unsafe fn dot_k4<const N: usize, const FIFTH_BIT: bool>(
    row: &[u8],
    first: usize,
    acts: &[BlockActivation],
) -> [f32; N] {
    debug_assert_eq!(acts.len(), N);
    let block_bytes = if FIFTH_BIT { Q5K_BYTES } else { Q4K_BYTES };
    // SAFETY: the module's contract: block b's bytes are inside the row, and each
    // activation's 256 values, 16 lane-ordered scales and 8 sums of block b inside its arrays.
    unsafe {
        let c = K4Consts::new();
        let mut acc = [_mm512_setzero_ps(); N];
        let mut mins = [_mm256_setzero_ps(); N];
        for (b, block) in (first..).zip(row.chunks_exact(block_bytes)) {
            prefetch_ahead(block, PREFETCH_AHEAD as isize);
            let (w, scale, min) = unpack_k4::<FIFTH_BIT>(block, &c);
            for (j, act) in acts.iter().enumerate().take(N) {
                mins[j] = _mm256_fmadd_ps(min, _mm256_loadu_ps(act.scaled_sums32.as_ptr().add(8 * b)), mins[j]);
                // Weight scale times activation scale per lane's sub-block.
                let scaled = _mm512_mul_ps(scale, _mm512_loadu_ps(act.d_k4.as_ptr().add(16 * b)));
                let i = dot_block(_mm512_setzero_si512(), &w, act.q_k4.as_ptr().add(256 * b));
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), scaled, acc[j]);
            }
        }
        std::array::from_fn(|j| reduce_minus(acc[j], mins[j]))
    }
}

/// `dot_k4` for the `N` tokens of a tile's records (`KQuant::dot_tile`).
#[inline(always)]
unsafe fn dot_k4_tile<const N: usize, const FIFTH_BIT: bool>(
    row: &[u8],
    tile: *const Record,
    ahead: isize,
) -> [f32; N] {
    let block_bytes = if FIFTH_BIT { Q5K_BYTES } else { Q4K_BYTES };
    // SAFETY: the module's contract: block b's bytes are inside the row, and its N records
    // at tile + N b (the caller's).
    unsafe {
        let c = K4Consts::new();
        let mut acc = [_mm512_setzero_ps(); N];
        let mut mins = [_mm256_setzero_ps(); N];
        for (b, block) in row.chunks_exact(block_bytes).enumerate() {
            prefetch_ahead(block, ahead);
            let (w, scale, min) = unpack_k4::<FIFTH_BIT>(block, &c);
            let records = tile.add(N * b);
            for j in 0..N {
                let r = records.add(j);
                let sums = std::ptr::addr_of!((*r).extra) as *const f32;
                mins[j] = _mm256_fmadd_ps(min, _mm256_load_ps(sums), mins[j]);
                let scaled = _mm512_mul_ps(scale, _mm512_load_ps(std::ptr::addr_of!((*r).scales) as *const f32));
                let i = dot_block(_mm512_setzero_si512(), &w, std::ptr::addr_of!((*r).q) as *const i8);
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), scaled, acc[j]);
            }
        }
        std::array::from_fn(|j| reduce_minus(acc[j], mins[j]))
    }
}

/// The constants of `unpack_q6k`, made once per row.
struct Q6Consts {
    mask4: __m512i,
    mask2: __m512i,
    shift_lo: __m512i,
    shift_hi: __m512i,
    pair_lo: __m512i,
    pair_hi: __m512i,
    pick: __m512i,
}

impl Q6Consts {
    #[inline(always)]
    unsafe fn new() -> Q6Consts {
        // SAFETY: register-only AVX-512 F (the module's contract).
        unsafe {
            // Shifts per 16-bit lane: the low 256 bits take qh >> 0 (or >> 4), the high >> 2 (>> 6).
            let shift = |a: i16, b: i16| {
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_set1_epi16(a)), _mm256_set1_epi16(b))
            };
            // The same as GFNI bit matrices (output bit 7 - i is the parity of qword byte i ANDed
            // with the input byte): bits s and s + 1 to bits 4 and 5, s per half as above.
            let pair = |a: i64, b: i64| {
                let m = |s: i64| (1i64 << s) << 24 | (2i64 << s) << 16;
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_set1_epi64x(m(a))), _mm256_set1_epi64x(m(b)))
            };
            Q6Consts {
                mask4: _mm512_set1_epi8(0x0f),
                mask2: _mm512_set1_epi8(3),
                shift_lo: shift(0, 2),
                shift_hi: shift(4, 6),
                pair_lo: pair(0, 2),
                pair_hi: pair(4, 6),
                // Lane 4 L + t of the transposed vectors is in sub-block 4 t + L.
                pick: _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15),
            }
        }
    }
}

/// A Q6_K block unpacked for `vpdpbusd`: per 128-value half one 64-byte load of low nibbles
/// (values 0..64 of the half) and its high nibbles (64..128), each with two bits from the 32
/// bytes of `qh`. Each vector's lanes are then whole 16-value sub-blocks; transposed per lane
/// (`transpose4`, `q_q6`'s order) a block's four `vpdpbusd` add up in one register, started
/// from the activation's `-32 * sums16` (the offset, exact in the integer sum), converted and
/// scaled once (in-cache benchmark, 16 tokens: 53 -> 72 GMAC/s; 1 token 35 -> 36). Returns the
/// weights and the 16 lane scales.
///
/// # Safety
/// `block` is one whole block of the row; the module's contract (GFNI: the caller has it).
#[inline(always)]
unsafe fn unpack_q6k<const GFNI: bool>(block: &[u8], c: &Q6Consts) -> ([__m512i; 4], __m512) {
    // SAFETY: the loads stay inside the block's 210 bytes.
    unsafe {
        let d = _mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([block[208], block[209]]) as i32));
        let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(block.as_ptr().add(192) as *const _)));
        // One per 16-value sub-block, in lane order.
        let scale = _mm512_permutexvar_ps(c.pick, _mm512_mul_ps(sc, _mm512_broadcastss_ps(d)));
        let mut w = [_mm512_setzero_si512(); 4];
        for half in 0..2 {
            let ql = _mm512_loadu_si512(block.as_ptr().add(64 * half) as *const _);
            let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(block.as_ptr().add(128 + 32 * half) as *const _));
            // One GFNI transform per bit pair instead of three operations (in-cache
            // benchmark, 1 token: 37 -> 41 GMAC/s; 16 tokens 71 -> 69-70, within the noise,
            // and no better with GFNI for one token only).
            let (high_lo, high_hi) = if GFNI {
                (_mm512_gf2p8affine_epi64_epi8::<0>(qh, c.pair_lo), _mm512_gf2p8affine_epi64_epi8::<0>(qh, c.pair_hi))
            } else {
                (
                    _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srlv_epi16(qh, c.shift_lo), c.mask2)),
                    _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srlv_epi16(qh, c.shift_hi), c.mask2)),
                )
            };
            // (ql & mask4) | high, and the same of the high nibbles.
            w[2 * half] = _mm512_ternarylogic_epi32::<0xea>(ql, c.mask4, high_lo);
            w[2 * half + 1] = _mm512_ternarylogic_epi32::<0xea>(_mm512_srli_epi16::<4>(ql), c.mask4, high_hi);
        }
        (transpose4(w), scale)
    }
}

/// `dot_q6k_scalar` for `N` activations at once, each block unpacked once for all of them
/// (`unpack_q6k`).
#[inline(always)]
unsafe fn dot_q6k<const N: usize, const GFNI: bool>(row: &[u8], first: usize, acts: &[BlockActivation]) -> [f32; N] {
    debug_assert_eq!(acts.len(), N);
    // SAFETY: the module's contract: block b's 210 bytes are inside the row, and each
    // activation's 256 values and 16 lane-ordered scales and offsets of block b inside its
    // arrays.
    unsafe {
        let c = Q6Consts::new();
        let mut acc = [_mm512_setzero_ps(); N];
        for (b, block) in (first..).zip(row.chunks_exact(Q6K_BYTES)) {
            prefetch_ahead(block, PREFETCH_AHEAD as isize);
            let (w, scale) = unpack_q6k::<GFNI>(block, &c);
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

/// `dot_q6k` for the `N` tokens of a tile's records (`KQuant::dot_tile`). The bit pairs of
/// `qh` by shifts even where the CPU has GFNI: on Zen 4 `vgf2p8affineqb` takes the two pipes
/// that `vpdpbusd` does (a loop of 12 `vpdpbusd` ran 12 cycles, with 6 `vgf2p8affineqb` 18,
/// with 6 shifts or ands still 12), and a tile's dot products are the limit (in-cache
/// benchmark, 8 and 16 tokens: 95.5 and 94.4 GMAC/s with GFNI, 98.9 and 97.8 without).
#[inline(always)]
unsafe fn dot_q6k_tile<const N: usize>(row: &[u8], tile: *const Record, ahead: isize) -> [f32; N] {
    // SAFETY: the module's contract: block b's 210 bytes are inside the row, and its N
    // records at tile + N b (the caller's).
    unsafe {
        let c = Q6Consts::new();
        let mut acc = [_mm512_setzero_ps(); N];
        for (b, block) in row.chunks_exact(Q6K_BYTES).enumerate() {
            prefetch_ahead(block, ahead);
            let (w, scale) = unpack_q6k::<false>(block, &c);
            let records = tile.add(N * b);
            for (j, acc) in acc.iter_mut().enumerate() {
                let r = records.add(j);
                let scaled = _mm512_mul_ps(scale, _mm512_load_ps(std::ptr::addr_of!((*r).scales) as *const f32));
                let offsets = _mm512_load_si512(std::ptr::addr_of!((*r).extra) as *const _);
                let i = dot_block(offsets, &w, std::ptr::addr_of!((*r).q) as *const i8);
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), scaled, *acc);
            }
        }
        std::array::from_fn(|j| _mm512_reduce_add_ps(acc[j]))
    }
}
