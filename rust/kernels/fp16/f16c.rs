//! fp16 conversions with F16C (and AVX-512's wider form), eight or sixteen per instruction.

use std::arch::x86_64::*;

use half::f16;

/// `f32_to_f16_scalar` with F16C, eight at a time (round to nearest even, as the scalar one).
///
/// # Safety
/// The CPU has AVX and F16C. Any lengths are fine (the shorter slice bounds the loop).
#[target_feature(enable = "avx,f16c")]
pub(crate) unsafe fn f32_to_f16(values: &[f32], out: &mut [f16]) {
    let n = values.len().min(out.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: elements i..i + 8 < n of both slices; f16 is a transparent u16, so eight of
        // them are the 16 bytes the store writes.
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(values.as_ptr().add(i)));
            _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, h);
        }
        i += 8;
    }
    super::f32_to_f16_scalar(&values[i..n], &mut out[i..n]);
}

/// `f16_to_f32_scalar` with F16C: eight conversions per instruction.
///
/// # Safety
/// The CPU has AVX and F16C. Any lengths are fine (the shorter one bounds the loop).
#[target_feature(enable = "avx,f16c")]
pub(crate) unsafe fn f16_to_f32(bytes: &[u8], out: &mut [f32]) {
    let n = out.len().min(bytes.len() / 2);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: bytes [2i, 2i + 16) and floats [i, i + 8) are inside the slices (i + 8 <= n).
        unsafe {
            let h = _mm_loadu_si128(bytes.as_ptr().add(2 * i) as *const _);
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    super::f16_to_f32_scalar(&bytes[2 * i..2 * n], &mut out[i..n]);
}

/// fp16 bytes (`[2 * out.len()]` at least) to fp32, 16 at a time with the tail masked, for the
/// AVX-512 decode kernel to inline.
///
/// # Safety
/// The caller is compiled with AVX-512 F and BW (and the CPU has them), and
/// `bytes.len() >= 2 * out.len()`.
#[inline(always)]
pub(crate) unsafe fn f16_to_f32_avx512_inline(bytes: &[u8], out: &mut [f32]) {
    debug_assert!(bytes.len() >= 2 * out.len());
    let n = out.len();
    let mut i = 0;
    while i < n {
        let k = (n - i).min(16);
        let mask = ((1u32 << k) - 1) as u16;
        // SAFETY: the masks touch only the k values from i, inside both slices; AVX-512 per
        // the contract.
        unsafe {
            let h = _mm256_maskz_loadu_epi16(mask, bytes.as_ptr().add(2 * i) as *const i16);
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), mask, _mm512_cvtph_ps(h));
        }
        i += 16;
    }
}
