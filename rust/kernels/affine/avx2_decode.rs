//! 4-bit rows times int8 activations on AVX2 (`vpmaddubsw`), for decoding.
//!
//! # Safety (the helper)
//! `dot_i8_inline` runs inside `rows`, compiled with AVX2 and FMA, which the CPU has; it takes
//! a row and an activation of the same `cols` (see `avx512_decode`).

use std::arch::x86_64::*;

use super::activation::{Int8Activation, CHUNK, RESIDUAL};
use super::{debug_check_rows, zero_term, AffineRow, AffineRows, RowsOut};
use crate::kernels::simd_x86::hsum_avx2;

/// `RowsI8` on AVX2: rows `rows` of a 4-bit matrix times each int8 activation of `acts`.
///
/// # Safety
/// The CPU has AVX2 and FMA; otherwise `RowsI8`'s contract.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn rows(
    row: &AffineRows,
    rows: std::ops::Range<usize>,
    acts: &[Int8Activation],
    scale_buffer: &mut Vec<f32>,
    out: RowsOut,
) {
    debug_check_rows(row, &rows, acts, &out);
    // SAFETY: the module's contract: AVX2 and FMA are enabled here and the CPU has them; weight
    // loads past the row's end go through a zero-padded copy, activation loads stay inside the
    // padded activation of the same columns.
    unsafe {
        let last = rows.end.saturating_sub(1);
        for r in rows {
            row.prefetch_group_data((r + 8).min(last));
            let w = row.row(r, scale_buffer);
            for (t, act) in acts.iter().enumerate() {
                out.write(t, r, dot_i8_inline(w, act, act.group_sums()));
            }
        }
    }
}

#[inline(always)]
unsafe fn dot_i8_inline(row: AffineRow, act: &Int8Activation, group_sums: &[f32]) -> f32 {
    // SAFETY: the module's contract: AVX2 and FMA are enabled here and the CPU has them; weight
    // loads past the row's end go through a zero-padded copy, activation loads stay inside the
    // padded activation of the same columns.
    unsafe {
        let gs = row.group_size;
        let n_groups = row.scales.len();
        let halves = act.padded / 64;
        let low4 = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let wp = row.values.as_ptr();
        let xp = act.interleaved.as_ptr();
        let rp = act.residual_interleaved.as_ptr();
        let dp = act.lane_scales.as_ptr();
        let inv_residual = _mm256_set1_ps(1.0 / RESIDUAL);
        let mut acc = _mm256_setzero_ps();
        let mut tail = [0u8; 32];
        for h in 0..halves {
            let start = h * 32;
            let remaining = row.values.len().saturating_sub(start);
            let wv = if remaining >= 32 {
                _mm256_loadu_si256(wp.add(start) as *const _)
            } else {
                tail.fill(0);
                if remaining > 0 {
                    tail[..remaining].copy_from_slice(&row.values[start..]);
                }
                _mm256_loadu_si256(tail.as_ptr() as *const _)
            };
            let lo = _mm256_and_si256(wv, low4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(wv, 4), low4);
            // Half h of chunk c = h / 2: even columns at [c*128 + (h%2)*32], odd ones 64 further.
            let offset = (h / 2) * CHUNK + (h % 2) * 32;
            let xe = _mm256_loadu_si256(xp.add(offset) as *const _);
            let xo = _mm256_loadu_si256(xp.add(offset + 64) as *const _);
            let re = _mm256_loadu_si256(rp.add(offset) as *const _);
            let ro = _mm256_loadu_si256(rp.add(offset + 64) as *const _);
            // u4 * i8 pairs fit i16 (2 * 15 * 127), and so does the sum of both halves.
            let pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xe), _mm256_maddubs_epi16(hi, xo));
            let rpairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, re), _mm256_maddubs_epi16(hi, ro));
            let idot = _mm256_madd_epi16(pairs, ones);
            let rdot = _mm256_madd_epi16(rpairs, ones);
            let dot = _mm256_fmadd_ps(_mm256_cvtepi32_ps(rdot), inv_residual, _mm256_cvtepi32_ps(idot));
            let d = _mm256_loadu_ps(dp.add(h * 8));
            let first_col = h * 64;
            let s = if gs >= row.cols {
                _mm256_set1_ps(row.scales[0])
            } else if gs >= 64 {
                _mm256_set1_ps(row.scales[(first_col / gs).min(n_groups - 1)])
            } else {
                let mut lanes = [0.0f32; 8];
                for (k, lane) in lanes.iter_mut().enumerate() {
                    *lane = row.scales[((first_col + 8 * k) / gs).min(n_groups - 1)];
                }
                _mm256_loadu_ps(lanes.as_ptr())
            };
            acc = _mm256_fmadd_ps(_mm256_mul_ps(dot, d), s, acc);
        }
        hsum_avx2(acc) - zero_term(&row, group_sums)
    }
}
