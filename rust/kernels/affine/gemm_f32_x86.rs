//! 4-bit rows times many fp32 activations (prefill on AVX2, or `exact` on AVX-512): a few rows
//! are dequantized at a time and run against every token of the batch in a K-blocked GEMM.
//! With the dequantization paid once per row for the whole batch, fp32 FMAs beat int8 dot
//! products with a residual, whose activation side costs 9 instructions per 128 weights per
//! token.

// Register tiles are indexed by row and token, as the math is written.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::{AffineRow, RowsOut};
use crate::kernels::simd_x86::{hsum_avx2, prefetch};

/// Rows dequantized per step, and tokens per register tile (ROWS x TOKENS accumulators).
pub const GEMM_ROWS: usize = 4;
const GEMM_TOKENS: usize = 4;

/// Dequantize one row (stored column order) into `out` (`[cols]`, fp32): `s * (q - z)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn dequantize_q4_row_avx512(row: &AffineRow, out: &mut [f32]) {
    // SAFETY: this function's contract: the instruction set is enabled here and the CPU has it;
    // loads of a row stop at its `cols.div_ceil(2)` bytes (masked at the end), the dequantized
    // buffer holds `GEMM_ROWS` rows of `stride` floats, and token loads stop at `cols` (the ragged
    // last step is masked or copied).
    unsafe {
        let cols = row.cols;
        let gs = row.group_size;
        let mut c = 0;
        while c < cols {
            // 16 columns: 8 packed bytes.
            let n = (cols - c).min(16);
            let bytes = n.div_ceil(2);
            prefetch(row.values.as_ptr().wrapping_add(c / 2 + 1024));
            let packed =
                _mm_maskz_loadu_epi8(((1u32 << bytes) - 1) as u16, row.values.as_ptr().add(c / 2) as *const i8);
            let wide = _mm512_cvtepu8_epi32(packed); // 16 lanes, bytes 0..15 (only 8 used)
                                                     // Lane j holds byte j/2's low (even j) or high
                                                     // (odd j) nibble.
            let idx = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
            let shifts = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
            let q =
                _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi32(idx, wide), shifts), _mm512_set1_epi32(15));
            let qf = _mm512_cvtepi32_ps(q);
            let (s, z) = if gs.is_multiple_of(16) || gs >= cols {
                let g = if gs >= cols { 0 } else { c / gs };
                (_mm512_set1_ps(row.scales[g]), _mm512_set1_ps(row.zeros[g] as f32))
            } else {
                let mut sv = [0.0f32; 16];
                let mut zv = [0.0f32; 16];
                for j in 0..n {
                    sv[j] = row.scales[(c + j) / gs];
                    zv[j] = row.zeros[(c + j) / gs] as f32;
                }
                (_mm512_loadu_ps(sv.as_ptr()), _mm512_loadu_ps(zv.as_ptr()))
            };
            let w = _mm512_mul_ps(s, _mm512_sub_ps(qf, z));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(c), ((1u32 << n) - 1) as u16, w);
            c += 16;
        }
    }
}

/// `out[t * out_stride + r] = dot(W[r], x[t])` for the `rows.len() <= GEMM_ROWS` rows given
/// and all `n_tokens` tokens of `x` (`[n_tokens, cols]`, fp32, stored column order). The rows
/// are dequantized once into `buffer` and reused by every token: the exact result, at GEMM speed.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VL; otherwise `GemmF32`'s contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn gemm_avx512(rows: &[AffineRow], x: &[f32], n_tokens: usize, buffer: &mut Vec<f32>, out: RowsOut) {
    // SAFETY: this function's contract: the instruction set is enabled here and the CPU has it;
    // loads of a row stop at its `cols.div_ceil(2)` bytes (masked at the end), the dequantized
    // buffer holds `GEMM_ROWS` rows of `stride` floats, and token loads stop at `cols` (the ragged
    // last step is masked or copied).
    unsafe {
        let cols = rows[0].cols;
        debug_assert!(!rows.is_empty() && rows.len() <= GEMM_ROWS && n_tokens > 0 && x.len() == n_tokens * cols);
        debug_assert!(rows.iter().all(|r| r.bits == 4 && r.cols == cols && r.values.len() == cols.div_ceil(2)));
        debug_assert!(out.covers(n_tokens, &(0..rows.len())));
        let stride = cols.div_ceil(16) * 16;
        buffer.clear();
        buffer.resize(GEMM_ROWS * stride, 0.0);
        for (i, row) in rows.iter().enumerate() {
            dequantize_q4_row_avx512(row, &mut buffer[i * stride..i * stride + cols]);
        }
        let wp = buffer.as_ptr();
        // K is walked in blocks of KB steps (KB * 16 columns) so the rows' block (4 x 4 KB) and a
        // token tile's block (4 x 4 KB) stay in L1 while every token tile passes over them;
        // partial sums wait in `partial` between blocks.
        const KB: usize = 64;
        let steps = stride / 16;
        let tail = cols % 16;
        let last_mask: u16 = if tail == 0 { 0xffff } else { ((1u32 << tail) - 1) as u16 };
        let tiles = n_tokens.div_ceil(GEMM_TOKENS);
        let mut partial = vec![_mm512_setzero_ps(); tiles * GEMM_ROWS * GEMM_TOKENS];
        let mut k0 = 0;
        while k0 < steps {
            let k1 = (k0 + KB).min(steps);
            for tile in 0..tiles {
                let t0 = tile * GEMM_TOKENS;
                let nt = (n_tokens - t0).min(GEMM_TOKENS);
                let saved = &mut partial[tile * GEMM_ROWS * GEMM_TOKENS..(tile + 1) * GEMM_ROWS * GEMM_TOKENS];
                let mut acc: [[__m512; GEMM_TOKENS]; GEMM_ROWS] =
                    std::array::from_fn(|i| std::array::from_fn(|j| saved[i * GEMM_TOKENS + j]));
                let xp: [*const f32; GEMM_TOKENS] =
                    std::array::from_fn(|j| x.as_ptr().add((t0 + j.min(nt - 1)) * cols));
                for k in k0..k1 {
                    // Plain loads in the hot loop; only the ragged last step (past `cols`) masks x.
                    let xv: [__m512; GEMM_TOKENS] = if k + 1 < steps || tail == 0 {
                        std::array::from_fn(|j| _mm512_loadu_ps(xp[j].add(16 * k)))
                    } else {
                        std::array::from_fn(|j| _mm512_maskz_loadu_ps(last_mask, xp[j].add(16 * k)))
                    };
                    for i in 0..GEMM_ROWS {
                        let wv = _mm512_loadu_ps(wp.add(i * stride + 16 * k));
                        for j in 0..GEMM_TOKENS {
                            acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
                        }
                    }
                }
                for i in 0..GEMM_ROWS {
                    for j in 0..GEMM_TOKENS {
                        saved[i * GEMM_TOKENS + j] = acc[i][j];
                    }
                }
            }
            k0 = k1;
        }
        for tile in 0..tiles {
            let t0 = tile * GEMM_TOKENS;
            let nt = (n_tokens - t0).min(GEMM_TOKENS);
            for i in 0..rows.len() {
                for j in 0..nt {
                    out.write(t0 + j, i, _mm512_reduce_add_ps(partial[(tile * GEMM_ROWS + i) * GEMM_TOKENS + j]));
                }
            }
        }
    }
}

/// Dequantize one row of 4-bit weights (stored column order) into `out` (`[cols]`):
/// plain Rust, vectorized by the compiler for the enclosing target features.
#[inline(always)]
fn dequantize_q4_row(row: &AffineRow, out: &mut [f32]) {
    let gs = row.group_size;
    for (g, (&scale, &zero)) in row.scales.iter().zip(row.zeros).enumerate() {
        let start = g * gs;
        let end = (start + gs).min(row.cols);
        let zero = zero as f32;
        for c in start..end {
            let q = (row.values[c / 2] >> ((c % 2) * 4)) & 0x0f;
            out[c] = scale * (q as f32 - zero);
        }
    }
}

/// The AVX2 version of `gemm_avx512`: 4 rows x 3 tokens of 8-lane accumulators
/// (12 of the 16 registers), the same K-blocking.
///
/// # Safety
/// The CPU has AVX2 and FMA; otherwise `GemmF32`'s contract.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemm_avx2(rows: &[AffineRow], x: &[f32], n_tokens: usize, buffer: &mut Vec<f32>, out: RowsOut) {
    // SAFETY: this function's contract: the instruction set is enabled here and the CPU has it;
    // loads of a row stop at its `cols.div_ceil(2)` bytes (masked at the end), the dequantized
    // buffer holds `GEMM_ROWS` rows of `stride` floats, and token loads stop at `cols` (the ragged
    // last step is masked or copied).
    unsafe {
        const R: usize = GEMM_ROWS;
        const T: usize = 3;
        const KB: usize = 128; // steps of 8 columns per K block
        let cols = rows[0].cols;
        debug_assert!(!rows.is_empty() && rows.len() <= GEMM_ROWS && n_tokens > 0 && x.len() == n_tokens * cols);
        debug_assert!(rows.iter().all(|r| r.bits == 4 && r.cols == cols && r.values.len() == cols.div_ceil(2)));
        debug_assert!(out.covers(n_tokens, &(0..rows.len())));
        let stride = cols.div_ceil(8) * 8;
        buffer.clear();
        buffer.resize(R * stride + 8, 0.0);
        for (i, row) in rows.iter().enumerate() {
            dequantize_q4_row(row, &mut buffer[i * stride..i * stride + cols]);
        }
        let wp = buffer.as_ptr();
        let full = cols / 8;
        let tiles = n_tokens.div_ceil(T);
        let mut partial = vec![_mm256_setzero_ps(); tiles * R * T];
        let mut xtail = [[0.0f32; 8]; T];
        let mut k0 = 0;
        let steps = stride / 8;
        while k0 < steps {
            let k1 = (k0 + KB).min(steps);
            for tile in 0..tiles {
                let t0 = tile * T;
                let nt = (n_tokens - t0).min(T);
                let saved = &mut partial[tile * R * T..(tile + 1) * R * T];
                let mut acc: [[__m256; T]; R] = std::array::from_fn(|i| std::array::from_fn(|j| saved[i * T + j]));
                let xp: [*const f32; T] = std::array::from_fn(|j| x.as_ptr().add((t0 + j.min(nt - 1)) * cols));
                for k in k0..k1 {
                    let xv: [__m256; T] = if k < full {
                        std::array::from_fn(|j| _mm256_loadu_ps(xp[j].add(8 * k)))
                    } else {
                        // The ragged last step: copy the tail of each token, zero-padded.
                        for j in 0..T {
                            xtail[j] = [0.0; 8];
                            for c in 8 * k..cols {
                                xtail[j][c - 8 * k] = *xp[j].add(c);
                            }
                        }
                        std::array::from_fn(|j| _mm256_loadu_ps(xtail[j].as_ptr()))
                    };
                    for i in 0..R {
                        let wv = _mm256_loadu_ps(wp.add(i * stride + 8 * k));
                        for j in 0..T {
                            acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);
                        }
                    }
                }
                for i in 0..R {
                    for j in 0..T {
                        saved[i * T + j] = acc[i][j];
                    }
                }
            }
            k0 = k1;
        }
        for tile in 0..tiles {
            let t0 = tile * T;
            let nt = (n_tokens - t0).min(T);
            for i in 0..rows.len() {
                for j in 0..nt {
                    out.write(t0 + j, i, hsum_avx2(partial[(tile * R + i) * T + j]));
                }
            }
        }
    }
}
