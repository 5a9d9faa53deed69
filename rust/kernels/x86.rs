//! x86-64 SIMD kernels: AVX-512 (with VNNI `vpdpbusd`) and AVX2 (`vpmaddubsw`). Each function
//! is compiled for its instruction set and only called after run-time detection (`Isa`).
//! The scalar references they are tested against live in `scalar.rs` / `act.rs`.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use super::act::{Int8Activation, CHUNK, RESIDUAL};
use super::AffineRow;

// ---------------------------------------------------------------------------------------------
// fp32 dot products

#[target_feature(enable = "avx512f")]
pub unsafe fn dot_f32_avx512(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (k, acc_k) in acc.iter_mut().enumerate() {
            let x = _mm512_loadu_ps(pa.add(i + 16 * k));
            let y = _mm512_loadu_ps(pb.add(i + 16 * k));
            *acc_k = _mm512_fmadd_ps(x, y, *acc_k);
        }
        i += 64;
    }
    while i < n {
        let m: __mmask16 = if n - i >= 16 { 0xffff } else { (1u16 << (n - i)) - 1 };
        let x = _mm512_maskz_loadu_ps(m, pa.add(i));
        let y = _mm512_maskz_loadu_ps(m, pb.add(i));
        acc[0] = _mm512_fmadd_ps(x, y, acc[0]);
        i += 16;
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(sum)
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc_k) in acc.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(pa.add(i + 8 * k));
            let y = _mm256_loadu_ps(pb.add(i + 8 * k));
            *acc_k = _mm256_fmadd_ps(x, y, *acc_k);
        }
        i += 32;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    let mut total: f32 = lanes.iter().sum();
    while i < n {
        total += a[i] * b[i];
        i += 1;
    }
    total
}

// ---------------------------------------------------------------------------------------------
// 4-bit weights x int8 activations

/// `sum_g scales[g] * zeros[g] * group_sums[g]`: the zero-point part of a row's dot product.
#[inline(always)]
fn zero_term(row: &AffineRow, group_sums: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let n = row.scales.len();
    let mut g = 0;
    while g + 8 <= n {
        for k in 0..8 {
            acc[k] += row.scales[g + k] * row.zeros[g + k] as f32 * group_sums[g + k];
        }
        g += 8;
    }
    let mut total: f32 = acc.iter().sum();
    while g < n {
        total += row.scales[g] * row.zeros[g] as f32 * group_sums[g];
        g += 1;
    }
    total
}

/// One row of 4-bit weights times an int8 activation (see `act.rs` for the layout):
/// `sum_c s_g (q_c - z_g) x_c` = `sum_lanes s * d * idot` - `sum_g s_g z_g sum(x in g)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn dot_q4_i8_avx512(row: AffineRow, act: &Int8Activation, group_sums: &[f32]) -> f32 {
    let gs = row.group_size;
    let n_groups = row.scales.len();
    let chunks = act.padded / CHUNK;
    let low4 = _mm512_set1_epi8(0x0f);
    // Lane k of a chunk covers columns 8k..8k+7: its group within the chunk is 8k / gs.
    let per_chunk_groups = if gs < CHUNK { CHUNK / gs } else { 1 };
    let mut lane_groups = [0i32; 16];
    for (k, g) in lane_groups.iter_mut().enumerate() {
        *g = ((8 * k) / gs.min(CHUNK)) as i32;
    }
    let lane_group = _mm512_loadu_si512(lane_groups.as_ptr() as *const _);
    let broadcast = gs >= CHUNK || gs >= row.cols;
    let wp = row.values.as_ptr();
    let xp = act.interleaved.as_ptr();
    let rp = act.residual_interleaved.as_ptr();
    let dp = act.lane_scales.as_ptr();
    let inv_residual = _mm512_set1_ps(1.0 / RESIDUAL);
    let mut acc = _mm512_setzero_ps();
    for c in 0..chunks {
        let start = c * 64;
        let remaining = row.values.len().saturating_sub(start);
        let wv = if remaining >= 64 {
            _mm512_loadu_si512(wp.add(start) as *const _)
        } else {
            _mm512_maskz_loadu_epi8((1u64 << remaining) - 1, wp.add(start) as *const i8)
        };
        let lo = _mm512_and_si512(wv, low4);
        let hi = _mm512_and_si512(_mm512_srli_epi16(wv, 4), low4);
        let xe = _mm512_loadu_si512(xp.add(c * CHUNK) as *const _);
        let xo = _mm512_loadu_si512(xp.add(c * CHUNK + 64) as *const _);
        let re = _mm512_loadu_si512(rp.add(c * CHUNK) as *const _);
        let ro = _mm512_loadu_si512(rp.add(c * CHUNK + 64) as *const _);
        let idot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xe), hi, xo);
        let rdot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, re), hi, ro);
        let dot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(rdot), inv_residual, _mm512_cvtepi32_ps(idot));
        let d = _mm512_loadu_ps(dp.add(c * 16));
        let s = if broadcast {
            let g = if gs >= row.cols { 0 } else { (c * CHUNK / gs).min(n_groups - 1) };
            _mm512_set1_ps(*row.scales.get_unchecked(g))
        } else {
            let base = c * per_chunk_groups;
            let avail = (n_groups - base).min(per_chunk_groups);
            let v = _mm512_maskz_loadu_ps(((1u32 << avail) - 1) as u16, row.scales.as_ptr().add(base));
            _mm512_permutexvar_ps(lane_group, v)
        };
        acc = _mm512_fmadd_ps(_mm512_mul_ps(dot, d), s, acc);
    }
    _mm512_reduce_add_ps(acc) - zero_term(&row, group_sums)
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_q4_i8_avx2(row: AffineRow, act: &Int8Activation, group_sums: &[f32]) -> f32 {
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
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    lanes.iter().sum::<f32>() - zero_term(&row, group_sums)
}
