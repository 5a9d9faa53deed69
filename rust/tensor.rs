//! Weight tensors as views into the memory-mapped file.
//!
//! Data borrowed from the map is used in place. The only copies ever made are of fp32
//! runs that sit at an address not aligned to 4 bytes (possible for Q8_0 scales after an
//! int8 block whose length is not a multiple of 4); those are small.

use std::borrow::Cow;

/// A row-major `[rows, cols]` weight matrix, fp32 or Q8_0.
#[derive(Debug)]
pub struct Matrix<'a> {
    pub rows: usize,
    pub cols: usize,
    pub data: MatrixData<'a>,
}

#[derive(Debug)]
pub enum MatrixData<'a> {
    /// `[rows * cols]` fp32.
    F32(Cow<'a, [f32]>),
    /// llama2.c version-2 "Q8_0": symmetric int8 in groups of `group_size` along each row.
    Q8(Q8Data<'a>),
}

#[derive(Debug)]
pub struct Q8Data<'a> {
    /// `[rows * cols]` int8 values.
    pub values: &'a [i8],
    /// `[rows * cols / group_size]` one fp32 scale per group.
    pub scales: Cow<'a, [f32]>,
    pub group_size: usize,
}

impl Matrix<'_> {
    /// Row `row` as fp32, written into `out` (`[cols]`). For Q8_0 this dequantizes like
    /// runq.c's `dequantize` (int8 * scale), which is how runq reads token embeddings.
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        let span = row * self.cols..(row + 1) * self.cols;
        match &self.data {
            MatrixData::F32(w) => out.copy_from_slice(&w[span]),
            MatrixData::Q8(q) => {
                for (i, o) in span.zip(out.iter_mut()) {
                    *o = q.values[i] as f32 * q.scales[i / q.group_size];
                }
            }
        }
    }

    pub fn group_size(&self) -> Option<usize> {
        match &self.data {
            MatrixData::F32(_) => None,
            MatrixData::Q8(q) => Some(q.group_size),
        }
    }
}
