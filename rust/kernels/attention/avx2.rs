//! Attention's two halves on AVX2 (+ FMA, + F16C for the fp16 cache). Each position asks for
//! the cache row `PREFETCH_AHEAD` bytes on (see `attention::PREFETCH_AHEAD`).
//!
//! # Safety (every function here)
//! The CPU has the features each one names in its `target_feature`. Any lengths are fine: the
//! loops run over `chunks_exact(head_size)` of the cache, and `head_size` bounds each access.

use std::arch::x86_64::*;

use half::f16;

use super::PREFETCH_AHEAD;
use crate::kernels::simd_x86::{axpy_avx2_inline, dot_f32_avx2_inline, hsum_avx2, prefetch};

/// `out[p] = dot(q, keys[p]) / scale`, in one call rather than one per position.
///
/// # Safety
/// The CPU has AVX2 and FMA. Any lengths are fine.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn scores_f32(q: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
    // SAFETY: the module's contract: the features are enabled here and the CPU has them; every load
    // is at an index below `head_size` of one query, key or value row.
    unsafe {
        for (o, key) in out.iter_mut().zip(keys.chunks_exact(q.len())) {
            prefetch_ahead(key.as_ptr(), q.len());
            *o = dot_f32_avx2_inline(q, key) / scale;
        }
    }
}

/// `out += sum_p att[p] * values[p]` (`values` `[positions, head_size]`), each position's
/// product and sum rounded separately in position order, as `axpy_avx2` (and run.c) does.
///
/// # Safety
/// The CPU has AVX2 and FMA. Any lengths are fine.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn sum_f32(att: &[f32], values: &[f32], out: &mut [f32]) {
    // SAFETY: the module's contract: the features are enabled here and the CPU has them; every load
    // is at an index below `head_size` of one query, key or value row.
    unsafe {
        let hs = out.len();
        for (&a, v) in att.iter().zip(values.chunks_exact(hs)) {
            prefetch_ahead(v.as_ptr(), hs);
            axpy_avx2_inline(out, a, v);
        }
    }
}

/// `scores_f32` over an fp16 cache: each key converted eight values at a time.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C. Any lengths are fine.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn scores_f16(q: &[f32], keys: &[f16], scale: f32, out: &mut [f32]) {
    // SAFETY: the module's contract: the features are enabled here and the CPU has them; every load
    // is at an index below `head_size` of one query, key or value row.
    unsafe {
        let hs = q.len();
        for (o, key) in out.iter_mut().zip(keys.chunks_exact(hs)) {
            prefetch_ahead(key.as_ptr(), hs);
            let (pq, pk) = (q.as_ptr(), key.as_ptr() as *const u16);
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= hs {
                for (j, acc_j) in acc.iter_mut().enumerate() {
                    let k = _mm256_cvtph_ps(_mm_loadu_si128(pk.add(i + 8 * j) as *const _));
                    *acc_j = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i + 8 * j)), k, *acc_j);
                }
                i += 32;
            }
            while i + 8 <= hs {
                let k = _mm256_cvtph_ps(_mm_loadu_si128(pk.add(i) as *const _));
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), k, acc[0]);
                i += 8;
            }
            let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut total = hsum_avx2(sum);
            while i < hs {
                total += q[i] * key[i].to_f32();
                i += 1;
            }
            *o = total / scale;
        }
    }
}

/// `sum_f32` over an fp16 cache; the conversion is exact, so this too equals the
/// scalar loop bit for bit.
///
/// # Safety
/// The CPU has AVX2 and F16C. Any lengths are fine.
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn sum_f16(att: &[f32], values: &[f16], out: &mut [f32]) {
    // SAFETY: the module's contract: the features are enabled here and the CPU has them; every load
    // is at an index below `head_size` of one query, key or value row.
    unsafe {
        let hs = out.len();
        let py = out.as_mut_ptr();
        for (&a, v) in att.iter().zip(values.chunks_exact(hs)) {
            prefetch_ahead(v.as_ptr(), hs);
            let av = _mm256_set1_ps(a);
            let pv = v.as_ptr() as *const u16;
            let mut i = 0;
            while i + 8 <= hs {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(pv.add(i) as *const _));
                _mm256_storeu_ps(py.add(i), _mm256_add_ps(_mm256_loadu_ps(py.add(i)), _mm256_mul_ps(av, x)));
                i += 8;
            }
            while i < hs {
                out[i] += a * v[i].to_f32();
                i += 1;
            }
        }
    }
}

/// Prefetch the `n` values `PREFETCH_AHEAD` bytes after `row` (a position's row).
#[inline(always)]
fn prefetch_ahead<T>(row: *const T, n: usize) {
    let start = (row as *const u8).wrapping_add(PREFETCH_AHEAD);
    let bytes = n * std::mem::size_of::<T>();
    let mut offset = 0;
    while offset < bytes {
        prefetch(start.wrapping_add(offset));
        offset += 64;
    }
}
