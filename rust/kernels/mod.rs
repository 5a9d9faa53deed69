//! Matrix-vector kernels.
//!
//! Every kernel comes as a pair behind the `Kernels` trait: `scalar::Scalar`, a plain loop in
//! llama2.c's summation order that serves as the reference, and `fast::Fast`, which the model
//! runs. Tests check that they agree on random shapes. Row-parallel drivers (`matvec`) split
//! the output rows over the rayon pool the caller installed.

pub mod fast;
pub mod scalar;

use rayon::prelude::*;

use crate::tensor::{Matrix, MatrixData};

/// The dot products a matrix-vector product is made of.
pub trait Kernels: Sync {
    /// `sum_i a[i] * b[i]`.
    fn dot_f32(a: &[f32], b: &[f32]) -> f32;

    /// runq.c's Q8_0 dot product of one weight row with a quantized activation:
    /// per group an exact integer dot product, then `sum += (idot as f32) * w_scale * x_scale`.
    fn dot_q8(w: &[i8], w_scales: &[f32], x: &[i8], x_scales: &[f32], group_size: usize) -> f32;
}

/// An activation vector quantized to int8 in groups, as runq.c's `quantize` does.
#[derive(Debug, Default, Clone)]
pub struct QuantizedVec {
    pub values: Vec<i8>,  // [n]
    pub scales: Vec<f32>, // [n / group_size]
    pub group_size: usize,
}

impl QuantizedVec {
    pub fn with_capacity(n: usize, group_size: usize) -> Self {
        QuantizedVec {
            values: Vec::with_capacity(n),
            scales: Vec::with_capacity(n / group_size.max(1)),
            group_size,
        }
    }

    /// Quantize `x` (length a multiple of the group size): scale = max|x| / 127 per group,
    /// value = round(x / scale) (half away from zero, like C's `round`).
    pub fn quantize(&mut self, x: &[f32]) {
        let gs = self.group_size;
        debug_assert!(gs > 0 && x.len() % gs == 0);
        self.values.clear();
        self.scales.clear();
        for group in x.chunks_exact(gs) {
            let max_abs = group.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = max_abs / 127.0;
            self.scales.push(scale);
            if scale == 0.0 {
                // runq.c would divide by zero here; an all-zero group quantizes to zeros.
                self.values.extend(std::iter::repeat_n(0i8, gs));
            } else {
                self.values.extend(group.iter().map(|v| (v / scale).round() as i8));
            }
        }
    }
}

/// The input of a matrix-vector product: fp32, or already quantized for Q8_0 weights.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    F32(&'a [f32]),
    Q8(&'a QuantizedVec),
}

/// Output rows per rayon task: enough work per task (~16K multiply-adds) that scheduling
/// does not dominate on small models.
fn rows_per_task(cols: usize) -> usize {
    (16 * 1024 / cols.max(1)).max(1)
}

/// `out[r] = dot(w[r, :], x)` for every row, rows in parallel on the current rayon pool.
pub fn matvec<K: Kernels>(out: &mut [f32], w: &Matrix, x: Input) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(out.len(), rows, "matvec: output length");
    let min_len = rows_per_task(cols);
    match (&w.data, x) {
        (MatrixData::F32(w), Input::F32(x)) => {
            assert_eq!(x.len(), cols, "matvec: input length");
            out.par_iter_mut().enumerate().with_min_len(min_len).for_each(|(r, o)| {
                *o = K::dot_f32(&w[r * cols..(r + 1) * cols], x);
            });
        }
        (MatrixData::Q8(w), Input::Q8(x)) => {
            let gs = w.group_size;
            assert_eq!(x.values.len(), cols, "matvec: input length");
            assert_eq!(x.group_size, gs, "matvec: group size of input and weights");
            let groups = cols / gs;
            out.par_iter_mut().enumerate().with_min_len(min_len).for_each(|(r, o)| {
                *o = K::dot_q8(
                    &w.values[r * cols..(r + 1) * cols],
                    &w.scales[r * groups..(r + 1) * groups],
                    &x.values,
                    &x.scales,
                    gs,
                );
            });
        }
        _ => panic!("matvec: input kind does not match the weight kind"),
    }
}

#[cfg(test)]
mod tests {
    use super::fast::Fast;
    use super::scalar::Scalar;
    use super::*;

    /// Small deterministic generator (xorshift) so tests need no extra crates.
    struct Rng(u64);
    impl Rng {
        fn next_f32(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next_f32()).collect()
        }
    }

    const SHAPES: &[(usize, usize)] =
        &[(1, 1), (3, 7), (5, 8), (17, 31), (9, 33), (64, 64), (172, 64), (64, 172), (13, 129), (7, 300)];

    #[test]
    fn fast_f32_dot_matches_scalar() {
        let mut rng = Rng(0x1234_5678);
        for &(rows, cols) in SHAPES {
            let w = rng.vec(rows * cols);
            let x = rng.vec(cols);
            let m = Matrix { rows, cols, data: MatrixData::F32(w.clone().into()) };
            let (mut fast, mut scalar) = (vec![0.0; rows], vec![0.0; rows]);
            matvec::<Fast>(&mut fast, &m, Input::F32(&x));
            matvec::<Scalar>(&mut scalar, &m, Input::F32(&x));
            for r in 0..rows {
                // Independent expectation: a float64 sum.
                let exact: f64 = (0..cols).map(|c| w[r * cols + c] as f64 * x[c] as f64).sum();
                let tol = 1e-5 * (cols as f64).sqrt().max(1.0);
                assert!((fast[r] as f64 - exact).abs() < tol, "fast {rows}x{cols} row {r}");
                assert!((scalar[r] as f64 - exact).abs() < tol, "scalar {rows}x{cols} row {r}");
            }
        }
    }

    #[test]
    fn fast_q8_dot_equals_scalar_exactly() {
        let mut rng = Rng(0x9e37_79b9);
        for &(rows, cols) in SHAPES {
            for gs in [1usize, 2, 4, 8, 32, 64] {
                if cols % gs != 0 {
                    continue;
                }
                let w = rng.vec(rows * cols);
                let mut wq = QuantizedVec::with_capacity(rows * cols, gs);
                wq.quantize(&w);
                let x = rng.vec(cols);
                let mut xq = QuantizedVec::with_capacity(cols, gs);
                xq.quantize(&x);
                let m = Matrix {
                    rows,
                    cols,
                    data: MatrixData::Q8(crate::tensor::Q8Data {
                        values: &wq.values,
                        scales: wq.scales.clone().into(),
                        group_size: gs,
                    }),
                };
                let (mut fast, mut scalar) = (vec![0.0; rows], vec![0.0; rows]);
                matvec::<Fast>(&mut fast, &m, Input::Q8(&xq));
                matvec::<Scalar>(&mut scalar, &m, Input::Q8(&xq));
                assert_eq!(fast, scalar, "{rows}x{cols} gs {gs}");
                // Independent expectation: dequantize both and multiply in float64.
                for r in 0..rows {
                    let exact: f64 = (0..cols)
                        .map(|c| {
                            let i = r * cols + c;
                            (wq.values[i] as f64 * wq.scales[i / gs] as f64)
                                * (xq.values[c] as f64 * xq.scales[c / gs] as f64)
                        })
                        .sum();
                    assert!((fast[r] as f64 - exact).abs() < 1e-4, "{rows}x{cols} gs {gs} row {r}");
                }
            }
        }
    }

    #[test]
    fn quantize_matches_hand_computed_values() {
        let mut q = QuantizedVec::with_capacity(8, 4);
        q.quantize(&[1.0, -0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(q.scales, vec![1.0 / 127.0, 0.0]);
        // 0.5 * 127 = 63.5 rounds away from zero; 0.25 * 127 = 31.75 -> 32.
        assert_eq!(q.values, vec![127, -64, 32, 0, 0, 0, 0, 0]);
    }
}
