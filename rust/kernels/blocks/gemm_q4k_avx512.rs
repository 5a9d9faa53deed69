//! Q4_K rows times a batch of int16 activations (prefill on AVX-512 VNNI): the affine 4-bit
//! `vpdpwssd` GEMM's panels and register tiles (`gemm_i16_avx512.rs`), fed from Q4_K blocks.
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
//! In cache (`benchmarks/block_kernels.rs`, 512 x 2048, one thread) 73 GMAC/s for 128 tokens
//! and 61 for 16, against 57 of the row kernel that takes four tokens per pass.

// Register tiles and panels are indexed by panel, row and token, as the math is written.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::dot_i8::Q4K_BYTES;
use crate::kernels::affine::activation::Int16Activations;
use crate::kernels::affine::gemm_i16_avx512::{
    i16_tile_of, transpose_16x16_epi32, I16Buffers, I16_PANEL, I16_PANELS, I16_TOKENS,
};
use crate::kernels::affine::RowsOut;
use crate::kernels::simd_x86::prefetch;
use crate::weights::BlockData;

/// Columns per activation block: half a Q4_K block (two 64-column chunks, four sub-blocks).
pub const BLOCK: usize = 128;
/// The activation's largest magnitude (see the module doc).
pub const LEVELS: f32 = 8191.0;
/// Rows one call of `gemm` computes.
pub const ROWS: usize = I16_PANEL * I16_PANELS;
const PAIRS: usize = BLOCK / 2;
const _: () = assert!(945 * 8191 * BLOCK < (1 << 31), "int32 sums of a block cannot overflow");

/// Where column `c` goes in the activation's pair order: position 2l + e of each 64-column
/// chunk holds the chunk's column 32e + l (byte l's low nibble, then its high nibble).
#[inline]
pub fn pair_position(c: usize) -> usize {
    let (chunk, i) = (c / 64, c % 64);
    64 * chunk + 2 * (i % 32) + i / 32
}

/// Token t, row r of `out` = `dot(W[r], x[t])` for rows `r0..r0 + ROWS` (those that exist) of
/// a Q4_K matrix `w` (`rows` x `cols`) and every token of `x`: quantized from the input in
/// `pair_position` order, blocks of `BLOCK`, to `LEVELS`. `sums` is `[n_tokens, cols / 32]`:
/// each 32-column sub-block's sum of `x` as quantized (its scale times the integer sum).
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI and F16C; the output contract of `GemmI16`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    w: &BlockData,
    rows: usize,
    cols: usize,
    r0: usize,
    x: &Int16Activations,
    sums: &[f32],
    buffers: &mut I16Buffers,
    out: RowsOut,
) {
    debug_assert!(cols.is_multiple_of(256) && w.values.len() == rows * cols / 256 * Q4K_BYTES);
    debug_assert!(x.cols == cols && x.block == BLOCK && x.padded == cols && x.levels == LEVELS);
    debug_assert!(sums.len() == x.n_tokens * cols / 32 && out.covers(x.n_tokens, &(r0..(r0 + ROWS).min(rows))));
    // SAFETY: this function's contract: the features are enabled and the CPU has them; every
    // weight load is inside a block of a row that exists, activation pairs are read inside
    // `x.values` (block b of token t is [(b * n_tokens + t) * BLOCK, + BLOCK)), the panel
    // buffers are sized here, and stores go through `RowsOut::ptr_at` for the rows that exist.
    unsafe {
        let n_tokens = x.n_tokens;
        let n_blocks = cols / BLOCK;
        let row_bytes = cols / 256 * Q4K_BYTES;
        let tiles = n_tokens.div_ceil(I16_TOKENS);
        buffers.weights.clear();
        buffers.weights.resize(I16_PANELS * PAIRS, _mm512_setzero_si512());
        buffers.partial.clear();
        buffers.partial.resize(tiles * I16_PANELS * I16_TOKENS, _mm512_setzero_ps());
        let n_rows = rows.saturating_sub(r0).min(ROWS);
        let valid: [usize; I16_PANELS] = std::array::from_fn(|p| n_rows.saturating_sub(p * I16_PANEL).min(I16_PANEL));
        let x_pairs = x.values.as_ptr() as *const i32; // [n_blocks, n_tokens, PAIRS]
        let row = |j: usize| &w.values[(r0 + j) * row_bytes..(r0 + j + 1) * row_bytes];
        let mut panel_scales = [PanelScales::default(); I16_PANELS];
        for b in 0..n_blocks {
            let (q, half) = (b / 2, b % 2);
            if b + 1 < n_blocks {
                // The rows' next 64 nibble bytes (and scales), while this block is multiplied.
                let (nq, nhalf) = (b.div_ceil(2), (b + 1) % 2);
                for j in 0..n_rows {
                    let block = row(j).as_ptr().wrapping_add(nq * Q4K_BYTES);
                    prefetch(block.wrapping_add(16 + 64 * nhalf));
                    prefetch(block.wrapping_add(16 + 64 * nhalf + 63));
                }
            }
            if half == 0 {
                for p in 0..I16_PANELS {
                    panel_scales[p] =
                        decode_scales(w.values, (r0 + p * I16_PANEL) * row_bytes + q * Q4K_BYTES, row_bytes, valid[p]);
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
                let scale_pairs = [sc.scale_pairs[2 * half], sc.scale_pairs[2 * half + 1]];
                let lines: [__m512i; I16_PANEL] = std::array::from_fn(|j| {
                    if j < valid[p] {
                        let block = &row(p * I16_PANEL + j)[q * Q4K_BYTES..(q + 1) * Q4K_BYTES];
                        _mm512_loadu_si512(block.as_ptr().add(16 + 64 * half) as *const _)
                    } else {
                        _mm512_setzero_si512()
                    }
                });
                let (low, high) = (_mm512_set1_epi32(0x0000_000f), _mm512_set1_epi32(0x000f_0000));
                // Lane j of column d: bytes 4d..4d+4 of row j's 64, i.e. pairs 4d..4d+4.
                for (dw, v) in transpose_16x16_epi32(lines).into_iter().enumerate() {
                    for i in 0..4 {
                        let t = match i {
                            0 => v,
                            1 => _mm512_srli_epi32::<8>(v),
                            2 => _mm512_srli_epi32::<16>(v),
                            _ => _mm512_srli_epi32::<24>(v),
                        };
                        let pair = _mm512_or_si512(
                            _mm512_and_si512(t, low),
                            _mm512_and_si512(_mm512_slli_epi32::<12>(t), high),
                        );
                        let k = 4 * dw + i;
                        *dst.add(k) = _mm512_mullo_epi16(pair, scale_pairs[k / 32]);
                    }
                }
            }
            let wp = buffers.weights.as_ptr();
            for tile in 0..tiles {
                let t0 = tile * I16_TOKENS;
                let nt = (n_tokens - t0).min(I16_TOKENS);
                let xp = x_pairs.add((b * n_tokens + t0) * PAIRS);
                let mut xs = [0.0f32; I16_TOKENS];
                for (j, s) in xs.iter_mut().enumerate().take(nt) {
                    *s = x.scales[(t0 + j) * n_blocks + b];
                }
                let partial = buffers.partial.as_mut_ptr().add(tile * I16_PANELS * I16_TOKENS);
                i16_tile_of(nt, wp, PAIRS, xp, PAIRS, &xs, &ws, partial);
                // The mins: minus dmin * m per sub-block times the token's sum over it.
                for j in 0..nt {
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
        for tile in 0..tiles {
            let t0 = tile * I16_TOKENS;
            for j in 0..(n_tokens - t0).min(I16_TOKENS) {
                for (p, &n) in valid.iter().enumerate() {
                    if n > 0 {
                        let v = buffers.partial[(tile * I16_PANELS + p) * I16_TOKENS + j];
                        let dst = out.ptr_at(t0 + j, r0 + p * I16_PANEL, n);
                        _mm512_mask_storeu_ps(dst, ((1u32 << n) - 1) as u16, v);
                    }
                }
            }
        }
    }
}

/// One Q4_K block's scales for a panel's 16 rows (lane j = row j).
#[derive(Clone, Copy)]
struct PanelScales {
    d: __m512,
    /// `dmin * m` of each of the 8 sub-blocks.
    mins: [__m512; 8],
    /// The 6-bit scales of sub-blocks (2c, 2c + 1) as an int16 pair, for each chunk c.
    scale_pairs: [__m512i; 4],
}

impl Default for PanelScales {
    fn default() -> PanelScales {
        // SAFETY: zeroed vectors are valid values of every SIMD type (no instruction runs).
        unsafe { std::mem::zeroed() }
    }
}

/// The scales of `valid` rows' Q4_K blocks, the first at byte `at` of `values` and each next
/// `stride` bytes on, decoded in vectors (lane = row): four 32-bit gathers of the block's
/// first 16 bytes, then `scales_mins_k4_words`' bit operations. Decoding them row by row in
/// scalar code cost as much as the unpacking of the nibbles.
///
/// # Safety
/// The module's contract: every row's 144-byte block is inside `values`.
#[inline(always)]
unsafe fn decode_scales(values: &[u8], at: usize, stride: usize, valid: usize) -> PanelScales {
    debug_assert!(valid == 0 || at + (valid - 1) * stride + Q4K_BYTES <= values.len());
    if valid == 0 {
        return PanelScales::default();
    }
    // SAFETY: the gathers read lanes 0..valid only (the mask), each inside its row's block.
    unsafe {
        let lanes = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(stride as i32),
        );
        let mask = ((1u32 << valid) - 1) as u16;
        let base = values.as_ptr().add(at);
        let word = |offset: usize| {
            _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), mask, lanes, base.add(offset) as *const _)
        };
        let (dd, w0, w1, w2) = (word(0), word(4), word(8), word(12));
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
        let byte = |v: __m512i, i: u32| {
            _mm512_and_si512(_mm512_srlv_epi32(v, _mm512_set1_epi32(8 * i as i32)), _mm512_set1_epi32(0xff))
        };
        PanelScales {
            d,
            mins: std::array::from_fn(|j| _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(byte(mins[j / 4], (j % 4) as u32)))),
            scale_pairs: std::array::from_fn(|c| {
                let v = scales[c / 2];
                let first = 2 * (c % 2) as u32;
                _mm512_or_si512(byte(v, first), _mm512_slli_epi32::<16>(byte(v, first + 1)))
            }),
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
