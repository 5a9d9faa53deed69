//! Fast kernels in portable Rust: independent accumulators the compiler turns into SIMD
//! lanes on stable Rust, without target-specific code.

use super::{AffineRow, Kernels};

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

    #[inline]
    fn dot_affine(row: AffineRow, x: &[f32], x_group_sums: &[f32]) -> f32 {
        // sum_c s (q_c - z) x_c = s * (sum_c q_c x_c - z * sum_c x_c): the zero point costs one
        // multiply per group, with the group sums of x computed once per input vector.
        let gs = row.group_size;
        let mut sum = 0.0f32;
        for (g, (&scale, &zero)) in row.scales.iter().zip(row.zeros).enumerate() {
            let start = g * gs;
            let end = (start + gs).min(row.cols);
            let qx = if row.bits == 8 {
                dot_u8_f32(&row.values[start..end], &x[start..end])
            } else if start % 2 == 0 {
                dot_nibbles_f32(&row.values[start / 2..end.div_ceil(2)], &x[start..end])
            } else {
                // Odd group sizes put group starts mid-byte: rare, so the plain loop.
                (start..end).map(|c| ((row.values[c / 2] >> ((c % 2) * 4)) & 0x0f) as f32 * x[c]).sum()
            };
            sum += scale * (qx - zero as f32 * x_group_sums[g]);
        }
        sum
    }
}

/// `sum_i q[i] * x[i]` for 8-bit unsigned values.
#[inline]
fn dot_u8_f32(q: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut qc = q.chunks_exact(8);
    let mut xc = x.chunks_exact(8);
    for (a, b) in qc.by_ref().zip(xc.by_ref()) {
        for i in 0..8 {
            acc[i] += a[i] as f32 * b[i];
        }
    }
    let tail: f32 = qc.remainder().iter().zip(xc.remainder()).map(|(&a, &b)| a as f32 * b).sum();
    acc.iter().sum::<f32>() + tail
}

/// `sum_i q[i] * x[i]` where `q` is packed two 4-bit values per byte (low nibble first) and
/// `x.len()` may be odd (then the last byte's high nibble is ignored).
#[inline]
fn dot_nibbles_f32(packed: &[u8], x: &[f32]) -> f32 {
    let mut lo_acc = [0.0f32; 8];
    let mut hi_acc = [0.0f32; 8];
    let pairs = x.len() / 2;
    let mut bytes = packed[..pairs].chunks_exact(8);
    let mut xs = x[..2 * pairs].chunks_exact(16);
    for (b, xv) in bytes.by_ref().zip(xs.by_ref()) {
        for i in 0..8 {
            lo_acc[i] += (b[i] & 0x0f) as f32 * xv[2 * i];
            hi_acc[i] += (b[i] >> 4) as f32 * xv[2 * i + 1];
        }
    }
    let mut tail = 0.0f32;
    for (b, xv) in bytes.remainder().iter().zip(xs.remainder().chunks_exact(2)) {
        tail += (b & 0x0f) as f32 * xv[0] + (b >> 4) as f32 * xv[1];
    }
    if x.len() % 2 == 1 {
        tail += (packed[pairs] & 0x0f) as f32 * x[x.len() - 1];
    }
    lo_acc.iter().sum::<f32>() + hi_acc.iter().sum::<f32>() + tail
}
