//! The fp32 dot product on AVX2 + FMA.

use crate::kernels::simd_x86::dot_f32_avx2_inline;

/// `dot_scalar` on AVX2 + FMA (four 8-lane chains; another summation order).
///
/// # Safety
/// The CPU has AVX2 and FMA. Any lengths are fine (the shorter slice bounds the loop).
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: this function is compiled with AVX2 and FMA, the helper's contract.
    unsafe { dot_f32_avx2_inline(a, b) }
}
