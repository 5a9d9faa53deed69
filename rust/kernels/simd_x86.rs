//! Inline helpers shared by the x86-64 kernels of every family, written once.
//!
//! Each is `#[inline(always)]` and compiled into the `#[target_feature]` kernel that calls it,
//! so it runs with that kernel's instruction set; on its own it has none.
//!
//! # Safety (every function here)
//! The caller runs with AVX2 and FMA enabled (it is a `#[target_feature(enable = "avx2,fma")]`
//! function or one with more), which `Kernels::new` has checked the CPU has.

use std::arch::x86_64::*;

/// The sum of the eight lanes, in lane order.
///
/// # Safety
/// The caller is compiled with AVX2 and FMA, which the CPU has.
#[inline(always)]
pub(crate) unsafe fn hsum_avx2(v: __m256) -> f32 {
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds the eight floats the store writes; AVX per the module contract.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    lanes.iter().sum()
}

/// `sum_i a[i] * b[i]` over the shorter of the two: four 8-lane FMA chains, then the tail.
///
/// # Safety
/// The caller is compiled with AVX2 and FMA, which the CPU has.
#[inline(always)]
pub(crate) unsafe fn dot_f32_avx2_inline(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // SAFETY: every load reads 8 floats at i + 8k with i + 32 <= n, inside both slices;
    // AVX2 and FMA per the module contract.
    unsafe {
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
        let mut total = hsum_avx2(sum);
        while i < n {
            total += a[i] * b[i];
            i += 1;
        }
        total
    }
}

/// `y += a * x` (over the shorter of the two). Each element is rounded as run.c rounds it (a
/// product, then a sum; no FMA), so this equals the scalar loop bit for bit.
///
/// # Safety
/// The caller is compiled with AVX2 and FMA, which the CPU has.
#[inline(always)]
pub(crate) unsafe fn axpy_avx2_inline(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    let (py, px) = (y.as_mut_ptr(), x.as_ptr());
    // SAFETY: every access is at an index below n, inside both slices; AVX per the module
    // contract.
    unsafe {
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            let sum = _mm256_add_ps(_mm256_loadu_ps(py.add(i)), _mm256_mul_ps(av, _mm256_loadu_ps(px.add(i))));
            _mm256_storeu_ps(py.add(i), sum);
            i += 8;
        }
        while i < n {
            *py.add(i) += a * *px.add(i);
            i += 1;
        }
    }
}

/// Ask for the cache line at `address` (any address: a prefetch never faults).
#[inline(always)]
pub(crate) fn prefetch<T>(address: *const T) {
    // SAFETY: a prefetch is a hint with no architectural effect and never faults, whatever the
    // address; SSE is part of x86-64.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(address as *const i8) }
}

/// The tile drivers' weight prefetch (`blocks::avx512`, `affine::avx512_batch`): they read a
/// matrix in pieces (`piece_bytes` of a row, less at a row's end), for each group of up to
/// `group_rows` rows all the rows' first pieces, then their second ones, and so on, which is
/// not the order of the bytes when rows are longer than a piece. Returns how far past byte
/// `here` of the matrix the piece `visit` pieces into group `group`'s pass starts (piece
/// `visit / len` of row `visit % len`, or the next group's once past this one's `pieces`
/// pieces per row; 0 past `range`): the kernel asks for each line it reads that far ahead, a
/// line at a time, as one token's kernels ask for the bytes 6 KB on. (Asking for a whole
/// piece at once, 2 tokens of a 32768 x 2048 4-bit matrix from memory: 21-23 GMAC/s against
/// 27 row by row.)
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn piece_ahead(
    row_bytes: usize,
    piece_bytes: usize,
    pieces: usize,
    range: &std::ops::Range<usize>,
    group: &std::ops::Range<usize>,
    group_rows: usize,
    visit: usize,
    here: usize,
) -> isize {
    let (mut start, mut len, mut visit) = (group.start, group.len(), visit);
    if visit >= pieces * len {
        visit -= pieces * len;
        (start, len) = (group.end, (range.end - group.end).min(group_rows));
        if visit >= pieces * len {
            return 0;
        }
    }
    let (piece, r) = (visit / len, start + visit % len);
    (r * row_bytes + piece * piece_bytes) as isize - here as isize
}
