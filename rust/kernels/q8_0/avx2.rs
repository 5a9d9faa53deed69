//! Q8_0 rows on AVX2.

use std::arch::x86_64::*;

/// runq.c's Q8_0 row dot product for group sizes that are multiples of 32. The integer sum of
/// each group is exact (|w| <= 128 times |x| <= 127 fits `vpmaddubsw`'s i16 pairs), and the
/// float part runs in group order as in the scalar reference, so the result is bit-identical.
///
/// # Safety
/// The CPU has AVX2; `group_size` is a positive multiple of 32, `x.len() >= w.len()`, and
/// both scale slices hold `w.len() / group_size` values.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn dot(w: &[i8], w_scales: &[f32], x: &[i8], x_scales: &[f32], group_size: usize) -> f32 {
    debug_assert!(group_size > 0 && group_size.is_multiple_of(32) && x.len() >= w.len());
    debug_assert!(w_scales.len() >= w.len() / group_size && x_scales.len() >= w.len() / group_size);
    let ones = _mm256_set1_epi16(1);
    let mut sum = 0.0f32;
    for g in 0..w.len() / group_size {
        let mut acc = _mm256_setzero_si256();
        let mut k = g * group_size;
        while k < (g + 1) * group_size {
            // SAFETY: k + 32 <= (g + 1) * group_size <= w.len() <= x.len(): both loads are
            // inside their slices.
            let (wv, xv) = unsafe {
                (_mm256_loadu_si256(w.as_ptr().add(k) as *const _), _mm256_loadu_si256(x.as_ptr().add(k) as *const _))
            };
            // |w| as unsigned times x with w's sign: the same products, in maddubs' operand types.
            let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(xv, wv));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
            k += 32;
        }
        let mut lanes = [0i32; 8];
        // SAFETY: `lanes` is the 32 bytes the store writes.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut _, acc) };
        let idot: i32 = lanes.iter().sum();
        sum += idot as f32 * w_scales[g] * x_scales[g];
    }
    sum
}
