//! Q4_K and Q6_K rows times a batch of int16 activations (prefill on AVX-512 VNNI): the affine
//! 4-bit `vpdpwssd` GEMM's panels and register tiles (`gemm_i16_avx512.rs`), fed from blocks.
//!
//! A Q4_K byte holds value l of two sub-blocks (low nibble: sub-block 2c, high: 2c + 1, in
//! 64-column chunk c), so it is one `vpdpwssd` pair once the activation's columns are put in
//! the same order (`pair_position`). The two values have different 6-bit scales, so each is
//! multiplied by its scale in int16 (at most 15 * 63 = 945) and the integer sum then spans a
//! whole 128-column activation block: one fp32 multiply-add per block, row and token, with
//! `d`. The mins (`dmin * m` per sub-block) go through the activation's sub-block sums.
//! 945 * 8191 * 128 < 2^31, so the activation is rounded to 14 bits (`LEVELS`): 64x finer
//! than llama.cpp's Q8_K still.
//!
//! Q6_K the same way: byte k of a 128-value half's low bits holds values k and k + 64 (with
//! two bits each from `qh`), one pair; `(q - 32) * scale` is at most 4096, so its activation
//! rounds to 12 bits (4096 * 4095 * 128 < 2^31, still 16x finer than Q8_K), and it has no mins.
//!
//! In cache (`benchmarks/block_kernels.rs`, 512 x 2048, one thread), 128 tokens: Q4_K 73
//! GMAC/s and Q6_K 76, against 57 and 46 for the row kernels that take four tokens per pass.

// Register tiles and panels are indexed by panel, row and token, as the math is written.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::dot_i8::{Q4K_BYTES, Q6K_BYTES};
use crate::kernels::affine::activation::Int16Activations;
use crate::kernels::affine::gemm_i16_avx512::{
    i16_tile_of, store_partials, tile_scales, transpose_16x16_epi32, I16Buffers, I16_PANEL, I16_PANELS, I16_ROWS,
    I16_TOKENS,
};
use crate::kernels::affine::RowsOut;
use crate::kernels::simd_x86::prefetch;
use crate::weights::{BlockData, BlockType};

/// Columns per activation block: half a block (four Q4_K sub-blocks, eight of Q6_K).
pub const BLOCK: usize = 128;
/// Rows one call of `gemm` computes.
pub const ROWS: usize = I16_ROWS;
const PAIRS: usize = BLOCK / 2;
const _: () = assert!(945 * 8191 * BLOCK < (1 << 31), "Q4_K: int32 sums of a block cannot overflow");
const _: () = assert!(4096 * 4095 * BLOCK < (1 << 31), "Q6_K: int32 sums of a block cannot overflow");

/// The activation's largest magnitude for `kind`'s GEMM (see the module doc), or `None`
/// where there is no GEMM for it.
pub fn levels(kind: BlockType) -> Option<f32> {
    match kind {
        BlockType::Q4K => Some(8191.0),
        BlockType::Q6K => Some(4095.0),
        _ => None,
    }
}

/// Where column `c` goes in the activation's pair order for `kind`: Q4_K's position 2l + e of
/// each 64-column chunk holds the chunk's column 32e + l (byte l's low nibble, then its high
/// nibble); Q6_K's position 2k + e of each 128 holds column 64e + k.
#[inline]
pub fn pair_position(kind: BlockType, c: usize) -> usize {
    if kind == BlockType::Q6K {
        let (half, i) = (c / 128, c % 128);
        128 * half + 2 * (i % 64) + i / 64
    } else {
        let (chunk, i) = (c / 64, c % 64);
        64 * chunk + 2 * (i % 32) + i / 32
    }
}

/// `x` (`[n_tokens, cols]`) with each token's columns in `kind`'s pair order, into `out`.
pub fn to_pair_order(kind: BlockType, x: &[f32], cols: usize, out: &mut Vec<f32>) {
    out.clear();
    out.resize(x.len(), 0.0);
    for (from, to) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        for (c, &v) in from.iter().enumerate() {
            to[pair_position(kind, c)] = v;
        }
    }
}

/// `BlockGemm` for Q4_K.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI and F16C; otherwise `gemm`'s contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_q4k(
    w: &BlockData,
    rows: usize,
    cols: usize,
    r0: usize,
    x: &Int16Activations,
    sums: &[f32],
    buffers: &mut I16Buffers,
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { gemm::<Q4K>(w, rows, cols, r0, x, sums, buffers, out) }
}

/// `BlockGemm` for Q6_K (`sums` unused: no mins).
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI and F16C; otherwise `gemm`'s contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_q6k(
    w: &BlockData,
    rows: usize,
    cols: usize,
    r0: usize,
    x: &Int16Activations,
    sums: &[f32],
    buffers: &mut I16Buffers,
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { gemm::<Q6K>(w, rows, cols, r0, x, sums, buffers, out) }
}

/// What the driver needs of a block type. Zero-sized types, so `gemm::<K>` is compiled into
/// each `#[target_feature]` caller.
trait GemmBlock {
    const KIND: BlockType;
    const BYTES: usize;
    /// The type has mins (`dmin * m` per 32-value sub-block), subtracted through the sums.
    const MINS: bool;
    /// # Safety
    /// The module's contract: `valid` (> 0) rows' blocks, the first at byte `at` of `values`
    /// and each next `stride` bytes on, are inside `values`.
    unsafe fn decode(values: &[u8], at: usize, stride: usize, valid: usize) -> PanelScales;
    /// Half `half` of the rows' blocks (row j's at `base + j * stride`, j < valid) into the 64
    /// pair vectors at `dst` (lane j = row j; zero for rows past `valid`).
    ///
    /// # Safety
    /// As `decode`; `dst` holds 64 vectors.
    unsafe fn unpack(
        base: *const u8,
        stride: usize,
        valid: usize,
        half: usize,
        scales: &PanelScales,
        dst: *mut __m512i,
    );
}

struct Q4K;
struct Q6K;

/// Token t, row r of `out` = `dot(W[r], x[t])` for rows `r0..r0 + ROWS` (those that exist) of
/// a `K` matrix `w` (`rows` x `cols`) and every token of `x`: quantized from the input in
/// `pair_position` order, blocks of `BLOCK`, to `levels`. For a type with mins, `sums` is
/// `[n_tokens, cols / 32]`: each 32-column sub-block's sum of `x` as quantized.
///
/// # Safety
/// The module's contract; the output contract of `GemmI16`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn gemm<K: GemmBlock>(
    w: &BlockData,
    rows: usize,
    cols: usize,
    r0: usize,
    x: &Int16Activations,
    sums: &[f32],
    buffers: &mut I16Buffers,
    out: RowsOut,
) {
    debug_assert!(cols.is_multiple_of(256) && w.kind == K::KIND && w.values.len() == rows * cols / 256 * K::BYTES);
    debug_assert!(x.cols == cols && x.block == BLOCK && x.padded == cols && Some(x.levels) == levels(K::KIND));
    debug_assert!(!K::MINS || sums.len() == x.n_tokens * cols / 32);
    debug_assert!(out.covers(x.n_tokens, &(r0..(r0 + ROWS).min(rows))));
    // SAFETY: this function's contract: the features are enabled and the CPU has them; every
    // weight load is inside a block of a row that exists, activation pairs are read inside
    // `x.values` (block b of token t is [(b * n_tokens + t) * BLOCK, + BLOCK)), the panel
    // buffers are sized here, and stores go through `RowsOut::ptr_at` for the rows that exist.
    unsafe {
        let n_tokens = x.n_tokens;
        let n_blocks = cols / BLOCK;
        let row_bytes = cols / 256 * K::BYTES;
        let tiles = n_tokens.div_ceil(I16_TOKENS);
        let (n_rows, valid) = buffers.prepare(PAIRS, n_tokens, rows, r0);
        let x_pairs = x.values.as_ptr() as *const i32; // [n_blocks, n_tokens, PAIRS]
        let mut panel_scales = [PanelScales::default(); I16_PANELS];
        for b in 0..n_blocks {
            let (q, half) = (b / 2, b % 2);
            let block_at = |row: usize, q: usize| (r0 + row) * row_bytes + q * K::BYTES;
            if b + 1 < n_blocks {
                // The rows' next half block, requested while this one is multiplied.
                let (nq, nhalf) = (b.div_ceil(2), (b + 1) % 2);
                for j in 0..n_rows {
                    let next = w.values.as_ptr().wrapping_add(block_at(j, nq) + nhalf * K::BYTES / 2);
                    prefetch(next);
                    prefetch(next.wrapping_add(K::BYTES / 2));
                }
            }
            if half == 0 {
                for p in 0..I16_PANELS {
                    if valid[p] > 0 {
                        panel_scales[p] = K::decode(w.values, block_at(p * I16_PANEL, q), row_bytes, valid[p]);
                    }
                }
            }
            let mut ws = [_mm512_setzero_ps(); I16_PANELS];
            let mut mins = [[_mm512_setzero_ps(); 4]; I16_PANELS]; // [panel][sub-block of the half]
            for p in 0..I16_PANELS {
                let dst = buffers.weights.as_mut_ptr().add(p * PAIRS);
                if valid[p] == 0 {
                    for k in 0..PAIRS {
                        *dst.add(k) = _mm512_setzero_si512();
                    }
                    continue;
                }
                let sc = &panel_scales[p];
                ws[p] = sc.d;
                mins[p] = std::array::from_fn(|i| sc.mins[4 * half + i]);
                let base = w.values.as_ptr().add(block_at(p * I16_PANEL, q));
                K::unpack(base, row_bytes, valid[p], half, sc, dst);
            }
            let wp = buffers.weights.as_ptr();
            for tile in 0..tiles {
                let t0 = tile * I16_TOKENS;
                let nt = (n_tokens - t0).min(I16_TOKENS);
                let xp = x_pairs.add((b * n_tokens + t0) * PAIRS);
                let xs = tile_scales(x, b, t0, nt);
                let partial = buffers.partial.as_mut_ptr().add(tile * I16_PANELS * I16_TOKENS);
                i16_tile_of(nt, wp, PAIRS, xp, PAIRS, &xs, &ws, partial);
                // The mins: minus dmin * m per sub-block times the token's sum over it.
                for j in 0..nt * K::MINS as usize {
                    let s = &sums[(t0 + j) * (cols / 32) + 4 * b..][..4];
                    for p in 0..I16_PANELS {
                        let dst = partial.add(p * I16_TOKENS + j);
                        for i in 0..4 {
                            *dst = _mm512_fnmadd_ps(mins[p][i], _mm512_set1_ps(s[i]), *dst);
                        }
                    }
                }
            }
        }
        store_partials(buffers, n_tokens, r0, &valid, &out);
    }
}

/// One block's scales for a panel's 16 rows (lane j = row j).
#[derive(Clone, Copy)]
struct PanelScales {
    d: __m512,
    /// Q4_K: `dmin * m` of each of the 8 sub-blocks.
    mins: [__m512; 8],
    /// The scales of the two values of each pair, as int16 pairs: Q4_K's of sub-blocks
    /// (2c, 2c + 1) for each chunk c (4); Q6_K's of (8n + g, 8n + 4 + g) for half n, g < 4 (8).
    scale_pairs: [__m512i; 8],
}

impl Default for PanelScales {
    fn default() -> PanelScales {
        // SAFETY: zeroed vectors are valid values of every SIMD type (no instruction runs).
        unsafe { std::mem::zeroed() }
    }
}

/// Dword `offset` of `valid` rows' blocks (the first at byte `at` of `values`, each next
/// `stride` bytes on) in lane j = row j; zero past `valid`.
///
/// # Safety
/// The module's contract: those four bytes of every row's block are inside `values`.
#[inline(always)]
unsafe fn gather_dword(values: &[u8], at: usize, stride: usize, valid: usize, offset: usize) -> __m512i {
    debug_assert!(valid > 0 && at + (valid - 1) * stride + offset + 4 <= values.len());
    // SAFETY: the gather reads lanes 0..valid only (the mask), each inside its row's block.
    unsafe {
        let lanes = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(stride as i32),
        );
        let mask = ((1u32 << valid) - 1) as u16;
        let base = values.as_ptr().add(at + offset);
        _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), mask, lanes, base as *const _)
    }
}

/// Byte `i` of each dword of `v`, zero-extended.
#[inline(always)]
unsafe fn byte_of(v: __m512i, i: u32) -> __m512i {
    // SAFETY: AVX-512 F per the module's contract.
    unsafe { _mm512_and_si512(_mm512_srlv_epi32(v, _mm512_set1_epi32(8 * i as i32)), _mm512_set1_epi32(0xff)) }
}

/// How byte k of a row's 64 becomes a pair (a trait, not a closure: a closure's body would not
/// get the kernel's target features, and its intrinsics would stay calls).
trait PairOf {
    /// # Safety
    /// The module's contract.
    unsafe fn pair(&self, t: __m512i, k: usize) -> __m512i;
}

/// Unpacks the bytes of `lines[j]` (row j's, transposed here so lane j = row j) into 64 pair
/// vectors at `dst`: byte k of each becomes `pair(t, k)` for `t` = the dword holding it
/// shifted so it is the low byte.
#[inline(always)]
unsafe fn transposed_pairs<P: PairOf>(lines: [__m512i; I16_PANEL], dst: *mut __m512i, pair: &P) {
    // SAFETY: the module's contract; `dst` holds 64 vectors.
    unsafe {
        // Lane j of column d: bytes 4d..4d+4 of row j's 64, i.e. pairs 4d..4d+4.
        for (dw, v) in transpose_16x16_epi32(lines).into_iter().enumerate() {
            for i in 0..4 {
                let t = match i {
                    0 => v,
                    1 => _mm512_srli_epi32::<8>(v),
                    2 => _mm512_srli_epi32::<16>(v),
                    _ => _mm512_srli_epi32::<24>(v),
                };
                *dst.add(4 * dw + i) = pair.pair(t, 4 * dw + i);
            }
        }
    }
}

impl GemmBlock for Q4K {
    const KIND: BlockType = BlockType::Q4K;
    const BYTES: usize = Q4K_BYTES;
    const MINS: bool = true;

    /// Four 32-bit gathers of the block's first 16 bytes, then `scales_mins_k4_words`' bit
    /// operations in vectors: decoding them row by row in scalar code cost as much as the
    /// unpacking of the nibbles.
    #[inline(always)]
    unsafe fn decode(values: &[u8], at: usize, stride: usize, valid: usize) -> PanelScales {
        // SAFETY: the module's contract (every row's 144-byte block is inside `values`).
        unsafe { decode_q4k(values, at, stride, valid) }
    }

    #[inline(always)]
    unsafe fn unpack(base: *const u8, stride: usize, valid: usize, half: usize, sc: &PanelScales, dst: *mut __m512i) {
        // SAFETY: the module's contract: row j's block is at base + j * stride, and its 64
        // nibble bytes of this half at 16 + 64 half.
        unsafe {
            let lines: [__m512i; I16_PANEL] = std::array::from_fn(|j| {
                if j < valid {
                    _mm512_loadu_si512(base.add(j * stride + 16 + 64 * half) as *const _)
                } else {
                    _mm512_setzero_si512()
                }
            });
            let pairs = Q4KPairs { scale_pairs: [sc.scale_pairs[2 * half], sc.scale_pairs[2 * half + 1]] };
            transposed_pairs(lines, dst, &pairs);
        }
    }
}

/// Q4_K's byte k of a half: (low nibble, high nibble) times the scales of chunk k / 32's
/// two sub-blocks.
struct Q4KPairs {
    scale_pairs: [__m512i; 2],
}

impl PairOf for Q4KPairs {
    #[inline(always)]
    unsafe fn pair(&self, t: __m512i, k: usize) -> __m512i {
        // SAFETY: AVX-512 F and BW per the module's contract.
        unsafe {
            let low = _mm512_and_si512(t, _mm512_set1_epi32(0x0000_000f));
            let high = _mm512_and_si512(_mm512_slli_epi32::<12>(t), _mm512_set1_epi32(0x000f_0000));
            _mm512_mullo_epi16(_mm512_or_si512(low, high), self.scale_pairs[k / 32])
        }
    }
}

/// `Q4K::decode` for `valid` > 0 rows.
///
/// # Safety
/// The module's contract: every row's 144-byte block is inside `values`.
#[inline(always)]
unsafe fn decode_q4k(values: &[u8], at: usize, stride: usize, valid: usize) -> PanelScales {
    // SAFETY: the module's contract; each dword read is inside the first 16 bytes of a block.
    unsafe {
        let (dd, w0, w1, w2) = (
            gather_dword(values, at, stride, valid, 0),
            gather_dword(values, at, stride, valid, 4),
            gather_dword(values, at, stride, valid, 8),
            gather_dword(values, at, stride, valid, 12),
        );
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd));
        let dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dd)));
        let (low6, low4, top2) =
            (_mm512_set1_epi32(0x3f3f_3f3f), _mm512_set1_epi32(0x0f0f_0f0f), _mm512_set1_epi32(0x0303_0303));
        // Bytes i of each: the scale (or min) of sub-block i (first) and 4 + i (second).
        let scales = [
            _mm512_and_si512(w0, low6),
            _mm512_or_si512(
                _mm512_and_si512(w2, low4),
                _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(w0), top2)),
            ),
        ];
        let mins = [
            _mm512_and_si512(w1, low6),
            _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi32::<4>(w2), low4),
                _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(w1), top2)),
            ),
        ];
        PanelScales {
            d,
            mins: std::array::from_fn(|j| {
                _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(byte_of(mins[j / 4], (j % 4) as u32)))
            }),
            scale_pairs: std::array::from_fn(|c| {
                if c >= 4 {
                    return _mm512_setzero_si512();
                }
                let v = scales[c / 2];
                let first = 2 * (c % 2) as u32;
                _mm512_or_si512(byte_of(v, first), _mm512_slli_epi32::<16>(byte_of(v, first + 1)))
            }),
        }
    }
}

impl GemmBlock for Q6K {
    const KIND: BlockType = BlockType::Q6K;
    const BYTES: usize = Q6K_BYTES;
    const MINS: bool = false;

    /// `d` (the last two bytes: the dword at 206, high half, so nothing past the block is
    /// read) and the 16 int8 scales (four dwords at 192), sign-extended into int16 pairs.
    #[inline(always)]
    unsafe fn decode(values: &[u8], at: usize, stride: usize, valid: usize) -> PanelScales {
        // SAFETY: the module's contract; every dword read is inside its row's 210-byte block.
        unsafe {
            let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(gather_dword(
                values, at, stride, valid, 206,
            ))));
            let s: [__m512i; 4] = [
                gather_dword(values, at, stride, valid, 192),
                gather_dword(values, at, stride, valid, 196),
                gather_dword(values, at, stride, valid, 200),
                gather_dword(values, at, stride, valid, 204),
            ];
            let mut scale_pairs = [_mm512_setzero_si512(); 8];
            for n in 0..2 {
                for g in 0..4 {
                    let (a, b) = (signed_byte(s, 8 * n + g), signed_byte(s, 8 * n + 4 + g));
                    scale_pairs[4 * n + g] =
                        _mm512_or_si512(_mm512_and_si512(a, _mm512_set1_epi32(0xffff)), _mm512_slli_epi32::<16>(b));
                }
            }
            PanelScales { d, mins: [_mm512_setzero_ps(); 8], scale_pairs }
        }
    }

    /// Byte k of the half's 64 low-bit bytes holds values k (low nibble) and k + 64 (high),
    /// whose top two bits are in `qh[k % 32]` at bits 0 and 4 (k < 32) or 2 and 6.
    #[inline(always)]
    unsafe fn unpack(base: *const u8, stride: usize, valid: usize, half: usize, sc: &PanelScales, dst: *mut __m512i) {
        // SAFETY: the module's contract: row j's block is at base + j * stride; this half's
        // 64 bytes of `ql` are at 64 half and its 32 of `qh` at 128 + 32 half.
        unsafe {
            let ql: [__m512i; I16_PANEL] = std::array::from_fn(|j| {
                if j < valid {
                    _mm512_loadu_si512(base.add(j * stride + 64 * half) as *const _)
                } else {
                    _mm512_setzero_si512()
                }
            });
            let qh: [__m512i; I16_PANEL] = std::array::from_fn(|j| {
                if j < valid {
                    _mm512_zextsi256_si512(_mm256_loadu_si256(base.add(j * stride + 128 + 32 * half) as *const _))
                } else {
                    _mm512_setzero_si512()
                }
            });
            let pairs = Q6KPairs {
                qh: transpose_16x16_epi32(qh),
                scale_pairs: std::array::from_fn(|g| sc.scale_pairs[4 * half + g]),
            };
            transposed_pairs(ql, dst, &pairs);
        }
    }
}

/// Byte `i` (0..16) of the four dwords `s` (lanes = rows), sign-extended: moved to the top of
/// its dword, then shifted back arithmetically.
#[inline(always)]
unsafe fn signed_byte(s: [__m512i; 4], i: usize) -> __m512i {
    // SAFETY: AVX-512 F per the module's contract.
    unsafe { _mm512_srai_epi32::<24>(_mm512_sllv_epi32(s[i / 4], _mm512_set1_epi32(24 - 8 * (i % 4) as i32))) }
}

/// Bits `shift` and `shift + 1` of each dword of `h`, as bits 4 and 5.
#[inline(always)]
unsafe fn two_bits_at_4(h: __m512i, shift: i32) -> __m512i {
    // SAFETY: AVX-512 F per the module's contract.
    unsafe {
        _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srlv_epi32(h, _mm512_set1_epi32(shift)), _mm512_set1_epi32(3)))
    }
}

/// Q6_K's byte k of a half: its nibbles with two bits each of `qh[k % 32]`, minus 32, times
/// the scales of values k and k + 64 (sub-blocks k / 16 and 4 + k / 16 of the half).
struct Q6KPairs {
    qh: [__m512i; 16], // transposed: column d holds qh bytes 4d..4d+4 (d < 8)
    scale_pairs: [__m512i; 4],
}

impl PairOf for Q6KPairs {
    #[inline(always)]
    unsafe fn pair(&self, t: __m512i, k: usize) -> __m512i {
        // SAFETY: AVX-512 F and BW per the module's contract.
        unsafe {
            let l = k % 32;
            // qh byte l, moved to the low byte as `t` was.
            let h = _mm512_srlv_epi32(self.qh[l / 4], _mm512_set1_epi32(8 * (l % 4) as i32));
            let (shift_low, shift_high) = if k < 32 { (0, 4) } else { (2, 6) };
            let low = _mm512_or_si512(_mm512_and_si512(t, _mm512_set1_epi32(0xf)), two_bits_at_4(h, shift_low));
            let high = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi32::<4>(t), _mm512_set1_epi32(0xf)),
                two_bits_at_4(h, shift_high),
            );
            let pair = _mm512_sub_epi16(_mm512_or_si512(low, _mm512_slli_epi32::<16>(high)), _mm512_set1_epi16(32));
            _mm512_mullo_epi16(pair, self.scale_pairs[k / 16])
        }
    }
}

/// `sums` for `gemm`: per token, each 32-column sub-block's sum of `x` as quantized (in pair
/// order, sub-block 2c + e of a 128-column block is every other position of chunk c from e).
pub fn sub_block_sums(x: &Int16Activations, sums: &mut Vec<f32>) {
    debug_assert!(x.block == BLOCK && x.padded == x.cols);
    let n_blocks = x.cols / BLOCK;
    sums.clear();
    for t in 0..x.n_tokens {
        for b in 0..n_blocks {
            let values = &x.values[(b * x.n_tokens + t) * BLOCK..][..BLOCK];
            let scale = x.scales[t * n_blocks + b];
            for i in 0..4 {
                let (c, e) = (i / 2, i % 2);
                let sum: i32 = values[64 * c..64 * c + 64].iter().skip(e).step_by(2).map(|&v| v as i32).sum();
                sums.push(scale * sum as f32);
            }
        }
    }
}
