//! Reference kernels: plain loops, summing in the same order as llama2.c's run.c / runq.c.

use super::act::Int8Activation;
use super::{AffineRow, Kernels};

pub struct Scalar;

impl Kernels for Scalar {
    fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let mut sum = 0.0f32;
        for (x, y) in a.iter().zip(b) {
            sum += x * y;
        }
        sum
    }

    fn dot_q8(w: &[i8], w_scales: &[f32], x: &[i8], x_scales: &[f32], group_size: usize) -> f32 {
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

    fn dot_affine(row: AffineRow, x: &[f32], _x_group_sums: &[f32]) -> f32 {
        // Dequantize each weight, then multiply: the definition, with no factoring.
        let mut sum = 0.0f32;
        for (c, &xc) in x.iter().enumerate().take(row.cols) {
            let g = c / row.group_size;
            let q = if row.bits == 8 { row.values[c] } else { (row.values[c / 2] >> ((c % 2) * 4)) & 0x0f };
            let w = row.scales[g] * (q as f32 - row.zeros[g] as f32);
            sum += w * xc;
        }
        sum
    }
}

/// Reference for the integer 4-bit path: each weight dequantized, times the dequantized int8
/// activation, summed in column order.
pub fn dot_q4_i8(row: AffineRow, act: &Int8Activation) -> f32 {
    let mut sum = 0.0f32;
    for c in 0..row.cols {
        let g = c / row.group_size;
        let q = (row.values[c / 2] >> ((c % 2) * 4)) & 0x0f;
        sum += row.scales[g] * (q as f32 - row.zeros[g] as f32) * act.value(c);
    }
    sum
}
