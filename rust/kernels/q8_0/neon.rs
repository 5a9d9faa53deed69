//! Q8_0 rows on aarch64 with the dot-product extension.

use std::arch::aarch64::*;

use crate::kernels::simd_neon::sdot;

/// runq.c's Q8_0 row dot product for groups of a multiple of 16: the integer sum of each
/// group with `sdot`, then the float part in group order (bit-identical to the reference).
///
/// # Safety
/// The CPU has NEON with the dot-product extension; `group_size` is a positive multiple of
/// 16, `x.len() >= w.len()`, and both scale slices hold `w.len() / group_size` values.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn dot(w: &[i8], w_scales: &[f32], x: &[i8], x_scales: &[f32], group_size: usize) -> f32 {
    debug_assert!(group_size > 0 && group_size.is_multiple_of(16) && x.len() >= w.len());
    debug_assert!(w_scales.len() >= w.len() / group_size && x_scales.len() >= w.len() / group_size);
    let mut sum = 0.0f32;
    for g in 0..w.len() / group_size {
        let mut acc = vdupq_n_s32(0);
        let mut k = g * group_size;
        while k < (g + 1) * group_size {
            // SAFETY: k + 16 <= (g + 1) * group_size <= w.len() <= x.len(); dotprod per the
            // contract.
            acc = unsafe { sdot(acc, vld1q_s8(w.as_ptr().add(k)), vld1q_s8(x.as_ptr().add(k))) };
            k += 16;
        }
        sum += vaddvq_s32(acc) as f32 * w_scales[g] * x_scales[g];
    }
    sum
}
