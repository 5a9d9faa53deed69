//! fp32 dot products: fp32 weight rows times activations, and (through `attention`) queries
//! times keys.
//!
//! `dot_scalar` is the reference (run.c's summation order); `dot_portable` is plain Rust the
//! compiler vectorizes; `avx2::dot` is x86-64's. There is no AVX-512 version: with rows of a
//! few hundred to a few thousand floats, the AVX2 one (four 8-lane chains, cheap reduction)
//! measured faster on Zen 5 (476 vs 428 tok/s on stories15M's shape), and large fp32 matrices
//! are bound by memory either way.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;

/// `sum_i a[i] * b[i]` over the shorter of the two, in index order: the reference.
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        sum += x * y;
    }
    sum
}

/// Independent partial sums; 16 fills four 128-bit or two 256-bit registers.
const LANES: usize = 16;

/// `dot_scalar` with independent accumulators the compiler turns into SIMD lanes on stable
/// Rust, without target-specific code.
#[inline]
pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let mut a_chunks = a.chunks_exact(LANES);
    let mut b_chunks = b.chunks_exact(LANES);
    for (ca, cb) in a_chunks.by_ref().zip(b_chunks.by_ref()) {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in a_chunks.remainder().iter().zip(b_chunks.remainder()) {
        tail += x * y;
    }
    // Pairwise reduction keeps the rounding error of the lanes balanced.
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0] + tail
}
