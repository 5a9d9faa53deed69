//! Fast kernels in portable Rust: independent accumulators the compiler turns into SIMD
//! lanes on stable Rust, without target-specific code.

use super::Kernels;

pub struct Fast;

/// Independent partial sums; 16 fills four 128-bit or two 256-bit registers.
const LANES: usize = 16;

impl Kernels for Fast {
    #[inline]
    fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
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

    #[inline]
    fn dot_q8(w: &[i8], w_scales: &[f32], x: &[i8], x_scales: &[f32], group_size: usize) -> f32 {
        // The integer part is exact whatever the order, and the float part runs in group order,
        // so this equals the scalar reference bit for bit.
        let mut sum = 0.0f32;
        for (g, (wg, xg)) in w.chunks_exact(group_size).zip(x.chunks_exact(group_size)).enumerate() {
            let idot: i32 = wg.iter().zip(xg).map(|(&a, &b)| a as i32 * b as i32).sum();
            sum += idot as f32 * w_scales[g] * x_scales[g];
        }
        sum
    }
}
