//! One row of a matrix as fp32: the token embedding's lookup, for every encoding.

use super::Kernels;
use crate::weights::{AffineData, Matrix, MatrixData};

/// Row `row` of `m` as fp32, written into `out` (`[cols]`). For Q8_0 this dequantizes like
/// runq.c's `dequantize` (int8 * scale), which is how runq reads token embeddings.
pub fn row_into(m: &Matrix, row: usize, out: &mut [f32], k: &Kernels) {
    let span = row * m.cols..(row + 1) * m.cols;
    match &m.data {
        MatrixData::F32(w) => out.copy_from_slice(&w[span]),
        MatrixData::Q8(q) => {
            for (i, o) in span.zip(out.iter_mut()) {
                *o = q.values[i] as f32 * q.scales[i / q.group_size];
            }
        }
        MatrixData::Affine(a) => {
            let groups = a.n_groups(m.cols);
            let row_bytes = AffineData::row_bytes(a.bits, m.cols);
            let packed = &a.values[row * row_bytes..(row + 1) * row_bytes];
            for c in 0..m.cols {
                let g = row * groups + c / a.group_size;
                let w = a.scales.get(g) * (a.value(packed, c) as f32 - a.zeros[g] as f32);
                let feature = a.perm.as_ref().map_or(c, |p| p[c] as usize);
                out[feature] = w;
            }
        }
        MatrixData::Blocks(b) => {
            let row_bytes = b.kind.row_bytes(m.cols).expect("validated when the file was read");
            (k.dequantize_blocks)(b.kind, &b.values[row * row_bytes..(row + 1) * row_bytes], out);
        }
    }
}
