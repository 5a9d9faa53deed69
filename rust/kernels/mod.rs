//! Matrix-vector kernels.
//!
//! Every kernel comes as a pair behind the `Kernels` trait: `scalar::Scalar`, a plain loop in
//! llama2.c's summation order that serves as the reference, and `fast::Fast`, which the model
//! runs. Tests check that they agree on random shapes. Row-parallel drivers (`matvec`) split
//! the output rows over the rayon pool the caller installed.

pub mod fast;
pub mod scalar;

use rayon::prelude::*;

use crate::tensor::{AffineData, Matrix, MatrixData};

/// The dot products a matrix-vector product is made of.
pub trait Kernels: Sync {
    /// `sum_i a[i] * b[i]`.
    fn dot_f32(a: &[f32], b: &[f32]) -> f32;

    /// runq.c's Q8_0 dot product of one weight row with a quantized activation:
    /// per group an exact integer dot product, then `sum += (idot as f32) * w_scale * x_scale`.
    fn dot_q8(w: &[i8], w_scales: &[f32], x: &[i8], x_scales: &[f32], group_size: usize) -> f32;

    /// One row of an affine-quantized matrix times fp32 `x` (already in stored column order):
    /// `sum_c scales[g] * (q[c] - zeros[g]) * x[c]`, `g = c / group_size`.
    /// `x_group_sums[g]` is `sum` of `x` over group `g` (for the zero-point term).
    fn dot_affine(row: AffineRow, x: &[f32], x_group_sums: &[f32]) -> f32;
}

/// One packed row of an affine-quantized matrix.
#[derive(Clone, Copy)]
pub struct AffineRow<'a> {
    pub bits: u32,
    pub values: &'a [u8], // [row_bytes]
    pub scales: &'a [f32], // [n_groups]
    pub zeros: &'a [u8],  // [n_groups]
    pub group_size: usize,
    pub cols: usize,
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
    pub fn quantize(&mut self, x: &[f32], group_size: usize) {
        debug_assert!(group_size > 0 && x.len() % group_size == 0);
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

/// Per-call working memory of `matvec`, reused across calls so decoding allocates nothing.
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    q8: QuantizedVec,      // [cols] the input quantized, for Q8_0 weights
    permuted: Vec<f32>,    // [cols] the input in stored column order, for act-order weights
    group_sums: Vec<f32>,  // [n_groups] input sums per group, for affine weights
}

/// Output rows per rayon task: enough work per task (~16K multiply-adds) that scheduling
/// does not dominate on small models.
fn rows_per_task(cols: usize) -> usize {
    (16 * 1024 / cols.max(1)).max(1)
}

/// `out[r] = dot(w[r, :], x)` for every row, rows in parallel on the current rayon pool.
pub fn matvec<K: Kernels>(out: &mut [f32], w: &Matrix, x: &[f32], scratch: &mut Scratch) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(out.len(), rows, "matvec: output length");
    assert_eq!(x.len(), cols, "matvec: input length");
    let min_len = rows_per_task(cols);
    match &w.data {
        MatrixData::F32(w) => {
            out.par_iter_mut().enumerate().with_min_len(min_len).for_each(|(r, o)| {
                *o = K::dot_f32(&w[r * cols..(r + 1) * cols], x);
            });
        }
        MatrixData::Q8(w) => {
            let gs = w.group_size;
            scratch.q8.quantize(x, gs);
            let xq = &scratch.q8;
            let groups = cols / gs;
            out.par_iter_mut().enumerate().with_min_len(min_len).for_each(|(r, o)| {
                *o = K::dot_q8(
                    &w.values[r * cols..(r + 1) * cols],
                    &w.scales[r * groups..(r + 1) * groups],
                    &xq.values,
                    &xq.scales,
                    gs,
                );
            });
        }
        MatrixData::Affine(a) => {
            let x = match &a.perm {
                None => x,
                Some(perm) => {
                    scratch.permuted.clear();
                    scratch.permuted.extend(perm.iter().map(|&p| x[p as usize]));
                    &scratch.permuted
                }
            };
            scratch.group_sums.clear();
            scratch.group_sums.extend(x.chunks(a.group_size).map(|g| g.iter().sum::<f32>()));
            let sums = &scratch.group_sums;
            let groups = a.n_groups(cols);
            let row_bytes = AffineData::row_bytes(a.bits, cols);
            out.par_iter_mut().enumerate().with_min_len(min_len).for_each(|(r, o)| {
                let row = AffineRow {
                    bits: a.bits,
                    values: &a.values[r * row_bytes..(r + 1) * row_bytes],
                    scales: &a.scales[r * groups..(r + 1) * groups],
                    zeros: &a.zeros[r * groups..(r + 1) * groups],
                    group_size: a.group_size,
                    cols,
                };
                *o = K::dot_affine(row, x, sums);
            });
        }
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
            matvec::<Fast>(&mut fast, &m, &x, &mut Scratch::default());
            matvec::<Scalar>(&mut scalar, &m, &x, &mut Scratch::default());
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
                let mut wq = QuantizedVec::default();
                wq.quantize(&w, gs);
                let x = rng.vec(cols);
                let mut xq = QuantizedVec::default();
                xq.quantize(&x, gs);
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
                matvec::<Fast>(&mut fast, &m, &x, &mut Scratch::default());
                matvec::<Scalar>(&mut scalar, &m, &x, &mut Scratch::default());
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

    /// Pack `q` (`[rows, cols]`, values < 2^bits) the way `AffineData` stores it.
    fn pack(q: &[u8], rows: usize, cols: usize, bits: u32) -> Vec<u8> {
        let row_bytes = AffineData::row_bytes(bits, cols);
        let mut out = vec![0u8; rows * row_bytes];
        for r in 0..rows {
            for c in 0..cols {
                let v = q[r * cols + c];
                if bits == 8 {
                    out[r * row_bytes + c] = v;
                } else {
                    out[r * row_bytes + c / 2] |= v << ((c % 2) * 4);
                }
            }
        }
        out
    }

    #[test]
    fn fast_affine_matches_scalar_and_float64_dequantization() {
        let mut rng = Rng(0xabcd_ef01);
        for &(rows, cols) in SHAPES {
            for bits in [4u32, 8] {
                for gs in [1usize, 3, 8, 32, 64, 128, cols] {
                    if gs > cols {
                        continue;
                    }
                    for act_order in [false, true] {
                        let top = (1u32 << bits) - 1;
                        let groups = cols.div_ceil(gs);
                        let unit = |r: &mut Rng| (r.next_f32() + 1.0) / 2.0; // [0, 1)
                        let q: Vec<u8> = (0..rows * cols).map(|_| (unit(&mut rng) * top as f32).round() as u8).collect();
                        let zeros: Vec<u8> = (0..rows * groups).map(|_| (unit(&mut rng) * top as f32).round() as u8).collect();
                        let scales: Vec<f32> = (0..rows * groups).map(|_| unit(&mut rng) * 0.1 + 0.001).collect();
                        // A deterministic shuffle of the columns for act-order.
                        let perm: Vec<u32> = if act_order {
                            let mut p: Vec<u32> = (0..cols as u32).collect();
                            for i in (1..cols).rev() {
                                let j = ((unit(&mut rng) * (i + 1) as f32) as usize).min(i);
                                p.swap(i, j);
                            }
                            p
                        } else {
                            Vec::new()
                        };
                        let x = rng.vec(cols);
                        let packed = pack(&q, rows, cols, bits);
                        let m = Matrix {
                            rows,
                            cols,
                            data: MatrixData::Affine(AffineData {
                                bits,
                                values: &packed,
                                scales: scales.clone().into(),
                                zeros: &zeros,
                                group_size: gs,
                                perm: act_order.then(|| perm.clone().into()),
                            }),
                        };
                        let (mut fast, mut scalar) = (vec![0.0; rows], vec![0.0; rows]);
                        matvec::<Fast>(&mut fast, &m, &x, &mut Scratch::default());
                        matvec::<Scalar>(&mut scalar, &m, &x, &mut Scratch::default());
                        for r in 0..rows {
                            let exact: f64 = (0..cols)
                                .map(|c| {
                                    let g = r * groups + c / gs;
                                    let w = scales[g] as f64 * (q[r * cols + c] as f64 - zeros[g] as f64);
                                    let feature = if act_order { perm[c] as usize } else { c };
                                    w * x[feature] as f64
                                })
                                .sum();
                            let tol = 1e-4 * (1.0 + exact.abs());
                            let what = format!("{rows}x{cols} bits {bits} gs {gs} act_order {act_order} row {r}");
                            assert!((fast[r] as f64 - exact).abs() < tol, "fast {what}: {} vs {exact}", fast[r]);
                            assert!((scalar[r] as f64 - exact).abs() < tol, "scalar {what}: {} vs {exact}", scalar[r]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn quantize_matches_hand_computed_values() {
        let mut q = QuantizedVec::default();
        q.quantize(&[1.0, -0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0], 4);
        assert_eq!(q.scales, vec![1.0 / 127.0, 0.0]);
        // 0.5 * 127 = 63.5 rounds away from zero; 0.25 * 127 = 31.75 -> 32.
        assert_eq!(q.values, vec![127, -64, 32, 0, 0, 0, 0, 0]);
    }
}
