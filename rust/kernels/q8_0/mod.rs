//! llama2.c's Q8_0 (runq.c): int8 weight rows in groups, each with an fp32 scale, times an
//! activation quantized the same way.
//!
//! `dot_scalar` is the reference, `dot_portable` plain Rust, `avx2::dot` and `neon::dot` the
//! SIMD versions. The integer sum of a group is exact in every one of them and the float part
//! runs in group order, so all of them equal runq.c bit for bit.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;

/// An activation vector quantized to int8 in groups, as runq.c's `quantize` does.
#[derive(Debug, Default, Clone)]
pub struct QuantizedVec {
    pub values: Vec<i8>,  // [n]
    pub scales: Vec<f32>, // [n / group_size]
    pub group_size: usize,
}

impl QuantizedVec {
    pub fn with_capacity(n: usize, group_size: usize) -> Self {
        QuantizedVec { values: Vec::with_capacity(n), scales: Vec::with_capacity(n / group_size.max(1)), group_size }
    }

    /// Quantize `x` (length a multiple of the group size): scale = max|x| / 127 per group,
    /// value = round(x / scale) (half away from zero, like C's `round`).
    pub fn quantize(&mut self, x: &[f32], group_size: usize) {
        debug_assert!(group_size > 0 && x.len().is_multiple_of(group_size));
        self.group_size = group_size;
        self.values.clear();
        self.scales.clear();
        for group in x.chunks_exact(group_size) {
            let max_abs = group.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = max_abs / 127.0;
            self.scales.push(scale);
            if scale == 0.0 {
                // runq.c would divide by zero here; an all-zero group quantizes to zeros.
                self.values.extend(std::iter::repeat_n(0i8, group_size));
            } else {
                self.values.extend(group.iter().map(|v| (v / scale).round() as i8));
            }
        }
    }
}

/// The signature every Q8_0 row kernel has: `(w, w_scales, x, x_scales, group_size)`.
pub type DotQ8 = fn(&[i8], &[f32], &[i8], &[f32], usize) -> f32;

/// runq.c's Q8_0 dot product of one weight row with a quantized activation: per group an
/// exact integer dot product, then `sum += (idot as f32) * w_scale * x_scale`. The reference.
pub fn dot_scalar(w: &[i8], w_scales: &[f32], x: &[i8], x_scales: &[f32], group_size: usize) -> f32 {
    let mut sum = 0.0f32;
    for g in 0..w.len() / group_size {
        let mut idot = 0i32;
        for k in g * group_size..(g + 1) * group_size {
            idot += w[k] as i32 * x[k] as i32;
        }
        sum += idot as f32 * w_scales[g] * x_scales[g];
    }
    sum
}

/// `dot_scalar` in iterator form the compiler vectorizes (bit-identical: see the module).
#[inline]
pub fn dot_portable(w: &[i8], w_scales: &[f32], x: &[i8], x_scales: &[f32], group_size: usize) -> f32 {
    let mut sum = 0.0f32;
    for (g, (wg, xg)) in w.chunks_exact(group_size).zip(x.chunks_exact(group_size)).enumerate() {
        let idot: i32 = wg.iter().zip(xg).map(|(&a, &b)| a as i32 * b as i32).sum();
        sum += idot as f32 * w_scales[g] * x_scales[g];
    }
    sum
}
