//! 4-bit weights times many int16 activations (prefill on AVX-512 VNNI): a `vpdpwssd` GEMM.

// Register tiles are indexed by row and token, as the math is written.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::activation::Int16Activations;
use super::RowsOut;
use crate::kernels::simd_x86::prefetch;
use crate::weights::AffineData;

// A 4-bit row stores columns 2k and 2k+1 in byte k, which is exactly the pair of 16-bit values
// one 32-bit lane of `vpdpwssd` multiplies. So a panel of 16 rows unpacks, per byte column k,
// into one zmm whose lane j holds row j's pair (q - z as int16); a token's pair of int16
// activations is broadcast against it. Per activation block (inside one weight group) the
// integer sums are scaled once: `sum += s_w[row] * s_x[token] * idot`. The unpacking runs once
// per block for all the batch's tokens; 32 multiply-adds per instruction against the fp32
// GEMM's 16.

/// Rows per panel (one zmm lane each), panels per register tile, tokens per register tile.
pub(crate) const I16_PANEL: usize = 16;
pub(crate) const I16_PANELS: usize = 2;
pub(crate) const I16_TOKENS: usize = 6;
const _: () = assert!(I16_TOKENS <= 8, "gemm dispatches tiles of up to 8 tokens");
/// Rows one call of `gemm` computes.
pub const I16_ROWS: usize = I16_PANEL * I16_PANELS;

/// Working memory of `gemm`, kept per thread across calls.
#[derive(Default)]
pub struct I16Buffers {
    pub(crate) weights: Vec<__m512i>, // [I16_PANELS, block / 2] unpacked column pairs, lane = row
    pub(crate) partial: Vec<__m512>,  // [tiles, I16_PANELS, I16_TOKENS] fp32 sums, lane = row
}

impl I16Buffers {
    /// Zeroed panels of `pairs` column pairs and tile sums for `n_tokens`; returns how many of
    /// rows `r0..r0 + I16_ROWS` exist, and how many of those each panel holds.
    pub(crate) fn prepare(
        &mut self,
        pairs: usize,
        n_tokens: usize,
        rows: usize,
        r0: usize,
    ) -> (usize, [usize; I16_PANELS]) {
        // SAFETY: zeroed vectors are valid values of every SIMD type (no instruction runs).
        let (zero_i, zero_f) = unsafe { (std::mem::zeroed::<__m512i>(), std::mem::zeroed::<__m512>()) };
        self.weights.clear();
        self.weights.resize(I16_PANELS * pairs, zero_i);
        self.partial.clear();
        self.partial.resize(n_tokens.div_ceil(I16_TOKENS) * I16_PANELS * I16_TOKENS, zero_f);
        let n_rows = rows.saturating_sub(r0).min(I16_ROWS);
        (n_rows, std::array::from_fn(|p| n_rows.saturating_sub(p * I16_PANEL).min(I16_PANEL)))
    }
}

/// Token t, row r of `out` = `dot(W[r], x[t])` for rows `r0..r0 + I16_ROWS` (those that exist)
/// of a 4-bit matrix `w` of `rows` x `cols` and every token of `x` (quantized in blocks inside
/// weight groups, see `Int16Activations::block_for`).
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI; otherwise `GemmI16`'s contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn gemm(
    w: &AffineData,
    rows: usize,
    cols: usize,
    r0: usize,
    x: &Int16Activations,
    buffers: &mut I16Buffers,
    out: RowsOut,
) {
    debug_assert!(w.bits == 4 && x.cols == cols && x.block.is_multiple_of(32) && x.padded.is_multiple_of(x.block));
    debug_assert!(w.values.len() == rows * AffineData::row_bytes(4, cols) && w.zeros.len() == rows * w.n_groups(cols));
    debug_assert!(x.values.len() == x.n_tokens * x.padded && out.covers(x.n_tokens, &(r0..(r0 + I16_ROWS).min(rows))));
    // SAFETY: this function's contract: AVX-512 VNNI is enabled here and the CPU has it; weight
    // loads are masked at each row's end, activation pairs are read inside `x.values` (block b of
    // token t is [(b * n_tokens + t) * block, + block)), panel buffers are sized above, and stores
    // go through `RowsOut::ptr_at` for the rows that exist.
    unsafe {
        let (block, n_tokens) = (x.block, x.n_tokens);
        let kps = block / 2; // column pairs (bytes) per block
        let n_blocks = x.padded / block;
        let row_bytes = AffineData::row_bytes(4, cols);
        let n_groups = w.n_groups(cols);
        let tiles = n_tokens.div_ceil(I16_TOKENS);
        let (n_rows, valid) = buffers.prepare(kps, n_tokens, rows, r0);
        let x_pairs = x.values.as_ptr() as *const i32; // [n_blocks, n_tokens, kps]
        let x_stride = kps; // pairs per token within a block
        for b in 0..n_blocks {
            let g = if w.group_size >= cols { 0 } else { (b * block / w.group_size).min(n_groups - 1) };
            // The rows' next block, requested while this one is multiplied: 32 rows a KB or more
            // apart are more streams than the hardware prefetcher follows.
            if b + 1 < n_blocks {
                let next = (b + 1) * kps;
                for j in 0..n_rows {
                    let line = w.values.as_ptr().wrapping_add((r0 + j) * row_bytes + next);
                    prefetch(line);
                    prefetch(line.wrapping_add(kps - 1));
                }
            }
            let mut ws = [_mm512_setzero_ps(); I16_PANELS];
            for (p, ws_p) in ws.iter_mut().enumerate() {
                *ws_p = unpack_panel_avx512(
                    w,
                    r0 + p * I16_PANEL,
                    valid[p],
                    g,
                    n_groups,
                    row_bytes,
                    b * kps,
                    kps,
                    buffers,
                    p,
                );
            }
            let wp = buffers.weights.as_ptr();
            for tile in 0..tiles {
                let t0 = tile * I16_TOKENS;
                let nt = (n_tokens - t0).min(I16_TOKENS);
                let xp = x_pairs.add((b * n_tokens + t0) * kps);
                let xs = tile_scales(x, b, t0, nt);
                let partial = buffers.partial.as_mut_ptr().add(tile * I16_PANELS * I16_TOKENS);
                i16_tile_of(nt, wp, kps, xp, x_stride, &xs, &ws, partial);
            }
        }
        store_partials(buffers, n_tokens, r0, &valid, &out);
    }
}

/// The activation scales of block `b` for tokens `t0..t0 + nt` (a tile).
#[inline(always)]
pub(crate) fn tile_scales(x: &Int16Activations, b: usize, t0: usize, nt: usize) -> [f32; I16_TOKENS] {
    let n_blocks = x.padded / x.block;
    std::array::from_fn(|j| if j < nt { x.scales[(t0 + j) * n_blocks + b] } else { 0.0 })
}

/// Every tile's sums (`buffers.partial`) into `out`: token t, rows `r0 + 16 p ..` of panel p,
/// its `valid[p]` rows only.
///
/// # Safety
/// AVX-512 F; `out` covers every token of those rows (`GemmI16`'s contract).
#[inline(always)]
pub(crate) unsafe fn store_partials(
    buffers: &I16Buffers,
    n_tokens: usize,
    r0: usize,
    valid: &[usize; I16_PANELS],
    out: &RowsOut,
) {
    for tile in 0..n_tokens.div_ceil(I16_TOKENS) {
        let t0 = tile * I16_TOKENS;
        for j in 0..(n_tokens - t0).min(I16_TOKENS) {
            for (p, &n) in valid.iter().enumerate() {
                if n > 0 {
                    let v = buffers.partial[(tile * I16_PANELS + p) * I16_TOKENS + j];
                    // SAFETY: the caller's: the n rows of token t0 + j are inside `out`.
                    unsafe {
                        _mm512_mask_storeu_ps(out.ptr_at(t0 + j, r0 + p * I16_PANEL, n), ((1u32 << n) - 1) as u16, v)
                    };
                }
            }
        }
    }
}

/// Unpack bytes `byte0..byte0 + kps` of rows `row0..row0 + valid` into panel `p` of
/// `buffers.weights` (lane j = row j: low nibble - z in the low int16, high nibble - z in the
/// high one) and return the rows' weight scales for group `g`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn unpack_panel_avx512(
    w: &AffineData,
    row0: usize,
    valid: usize,
    g: usize,
    n_groups: usize,
    row_bytes: usize,
    byte0: usize,
    kps: usize,
    buffers: &mut I16Buffers,
    p: usize,
) -> __m512 {
    // SAFETY: this function's contract: AVX-512 VNNI is enabled here and the CPU has it; weight
    // loads are masked at each row's end, activation pairs are read inside `x.values` (block b of
    // token t is [(b * n_tokens + t) * block, + block)), panel buffers are sized above, and stores
    // go through `RowsOut::ptr_at` for the rows that exist.
    unsafe {
        let dst = buffers.weights.as_mut_ptr().add(p * kps);
        if valid == 0 {
            for k in 0..kps {
                *dst.add(k) = _mm512_setzero_si512();
            }
            return _mm512_setzero_ps();
        }
        let mut scales = [0.0f32; I16_PANEL];
        let mut zeros = [0i32; I16_PANEL];
        for j in 0..valid {
            let i = (row0 + j) * n_groups + g;
            scales[j] = w.scales.get(i);
            zeros[j] = w.zeros[i] as i32 * 0x0001_0001;
        }
        let zz = _mm512_loadu_si512(zeros.as_ptr() as *const _);
        let low = _mm512_set1_epi32(0x0000_000f);
        let high = _mm512_set1_epi32(0x000f_0000);
        // 64 bytes of each row at a time (masked at the row's end, so nothing past it is read and
        // the activation's zero padding meets zero bytes), transposed so lane j is row j.
        for slab in 0..kps.div_ceil(64) {
            let start = byte0 + 64 * slab;
            let n_bytes = (kps - 64 * slab).min(64);
            let in_row = row_bytes.saturating_sub(start).min(n_bytes);
            let mask = if in_row >= 64 { u64::MAX } else { (1u64 << in_row) - 1 };
            let rows: [__m512i; I16_PANEL] = std::array::from_fn(|j| {
                if j < valid && in_row > 0 {
                    _mm512_maskz_loadu_epi8(mask, w.values.as_ptr().add((row0 + j) * row_bytes + start) as *const i8)
                } else {
                    _mm512_setzero_si512()
                }
            });
            let columns = transpose_16x16_epi32(rows);
            for (d, &v) in columns.iter().enumerate().take(n_bytes / 4) {
                // Lane j: bytes 4d..4d+3 of row j's slab, i.e. four column pairs.
                for i in 0..4 {
                    let t = match i {
                        0 => v,
                        1 => _mm512_srli_epi32::<8>(v),
                        2 => _mm512_srli_epi32::<16>(v),
                        _ => _mm512_srli_epi32::<24>(v),
                    };
                    let pair =
                        _mm512_or_si512(_mm512_and_si512(t, low), _mm512_and_si512(_mm512_slli_epi32::<12>(t), high));
                    *dst.add(64 * slab + 4 * d + i) = _mm512_sub_epi16(pair, zz);
                }
            }
        }
        _mm512_loadu_ps(scales.as_ptr())
    }
}

/// Transpose 16 rows of 16 dwords: `out[d]` lane j = `rows[j]` dword d. Two unpack stages
/// gather four rows' dwords per 128-bit lane, two 128-bit lane shuffles finish the job.
#[inline(always)]
pub(crate) unsafe fn transpose_16x16_epi32(r: [__m512i; 16]) -> [__m512i; 16] {
    // SAFETY: this function's contract: AVX-512 VNNI is enabled here and the CPU has it; weight
    // loads are masked at each row's end, activation pairs are read inside `x.values` (block b of
    // token t is [(b * n_tokens + t) * block, + block)), panel buffers are sized above, and stores
    // go through `RowsOut::ptr_at` for the rows that exist.
    unsafe {
        // t[2i] lane L: rows 2i, 2i+1 at dwords 4L, 4L+1; t[2i+1]: at dwords 4L+2, 4L+3.
        let t: [__m512i; 16] = std::array::from_fn(|k| {
            let (a, b) = (r[k & !1], r[k | 1]);
            if k % 2 == 0 {
                _mm512_unpacklo_epi32(a, b)
            } else {
                _mm512_unpackhi_epi32(a, b)
            }
        });
        // u[4i + e] lane L: rows 4i..4i+3 at dword 4L + e.
        let u: [__m512i; 16] = std::array::from_fn(|k| {
            let (i, e) = (k / 4, k % 4);
            let (a, b) = (t[4 * i + e / 2], t[4 * i + 2 + e / 2]);
            if e % 2 == 0 {
                _mm512_unpacklo_epi64(a, b)
            } else {
                _mm512_unpackhi_epi64(a, b)
            }
        });
        let mut out = [_mm512_setzero_si512(); 16];
        for e in 0..4 {
            let (a, b, c, d) = (u[e], u[4 + e], u[8 + e], u[12 + e]);
            let s0 = _mm512_shuffle_i32x4::<0x44>(a, b); // a0 a1 b0 b1
            let s1 = _mm512_shuffle_i32x4::<0xee>(a, b); // a2 a3 b2 b3
            let s2 = _mm512_shuffle_i32x4::<0x44>(c, d);
            let s3 = _mm512_shuffle_i32x4::<0xee>(c, d);
            out[e] = _mm512_shuffle_i32x4::<0x88>(s0, s2); // lane 0 of a, b, c, d
            out[4 + e] = _mm512_shuffle_i32x4::<0xdd>(s0, s2);
            out[8 + e] = _mm512_shuffle_i32x4::<0x88>(s1, s3);
            out[12 + e] = _mm512_shuffle_i32x4::<0xdd>(s1, s3);
        }
        out
    }
}

/// `i16_tile` for `nt` (1..=8) tokens.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn i16_tile_of(
    nt: usize,
    w: *const __m512i,
    kps: usize,
    x: *const i32,
    x_stride: usize,
    x_scales: &[f32; I16_TOKENS],
    w_scales: &[__m512; I16_PANELS],
    partial: *mut __m512,
) {
    // SAFETY: `i16_tile`'s contract, which the caller's is.
    unsafe {
        match nt {
            8 => i16_tile::<8>(w, kps, x, x_stride, x_scales, w_scales, partial),
            7 => i16_tile::<7>(w, kps, x, x_stride, x_scales, w_scales, partial),
            6 => i16_tile::<6>(w, kps, x, x_stride, x_scales, w_scales, partial),
            5 => i16_tile::<5>(w, kps, x, x_stride, x_scales, w_scales, partial),
            4 => i16_tile::<4>(w, kps, x, x_stride, x_scales, w_scales, partial),
            3 => i16_tile::<3>(w, kps, x, x_stride, x_scales, w_scales, partial),
            2 => i16_tile::<2>(w, kps, x, x_stride, x_scales, w_scales, partial),
            _ => i16_tile::<1>(w, kps, x, x_stride, x_scales, w_scales, partial),
        }
    }
}

/// The register tile: `I16_PANELS` panels x `T` tokens of int32 sums over one block, then
/// `partial[p][t] += s_w[p] * s_x[t] * sum`.
#[inline(always)]
pub(crate) unsafe fn i16_tile<const T: usize>(
    w: *const __m512i,
    kps: usize,
    x: *const i32,
    x_stride: usize,
    x_scales: &[f32; I16_TOKENS],
    w_scales: &[__m512; I16_PANELS],
    partial: *mut __m512,
) {
    // SAFETY: this function's contract: AVX-512 VNNI is enabled here and the CPU has it; weight
    // loads are masked at each row's end, activation pairs are read inside `x.values` (block b of
    // token t is [(b * n_tokens + t) * block, + block)), panel buffers are sized above, and stores
    // go through `RowsOut::ptr_at` for the rows that exist.
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); T]; I16_PANELS];
        for k in 0..kps {
            let wv: [__m512i; I16_PANELS] = std::array::from_fn(|p| *w.add(p * kps + k));
            for t in 0..T {
                let xv = _mm512_set1_epi32(std::ptr::read_unaligned(x.add(t * x_stride + k)));
                for p in 0..I16_PANELS {
                    acc[p][t] = _mm512_dpwssd_epi32(acc[p][t], wv[p], xv);
                }
            }
        }
        for t in 0..T {
            let xs = _mm512_set1_ps(x_scales[t]);
            for p in 0..I16_PANELS {
                let dst = partial.add(p * I16_TOKENS + t);
                *dst = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[p][t]), _mm512_mul_ps(w_scales[p], xs), *dst);
            }
        }
    }
}
