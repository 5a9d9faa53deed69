//! Affine (zero-point) 4- and 8-bit weights, as GPTQ produces them: `w = s * (q - z)` per
//! group of columns.
//!
//! Two ways to multiply, each a family of kernels tested against its reference here:
//! - **fp32 activations** (8-bit, `exact`, the portable kernels): `dot_f32_scalar` (the
//!   definition) and `dot_f32_portable` (zero points folded in per group);
//! - **int8 activations with a residual** (`activation.rs`) for 4-bit decode:
//!   `dot_i8_scalar` is the reference of `avx512_decode` (and of `avx512_batch`, where it
//!   sends batches), `avx2_decode` and `neon`.
//!
//! For prefill batches on x86: `gemm_f32_x86` (rows dequantized once per batch) and
//! `gemm_i16_avx512` (int16 activations, `vpdpwssd`).

pub mod activation;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2_decode;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512_batch;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512_decode;
#[cfg(target_arch = "x86_64")]
pub(crate) mod gemm_f32_x86;
#[cfg(target_arch = "x86_64")]
pub(crate) mod gemm_i16_avx512;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;

use activation::Int8Activation;

use crate::disjoint::DisjointSlice;
use crate::kernels::fp16::F16ToF32;
use crate::weights::AffineData;

/// One packed row of an affine-quantized matrix.
#[derive(Clone, Copy)]
pub struct AffineRow<'a> {
    pub bits: u32,
    pub values: &'a [u8],  // [row_bytes]
    pub scales: &'a [f32], // [n_groups]
    pub zeros: &'a [u8],   // [n_groups]
    pub group_size: usize,
    pub cols: usize,
}

/// The rows of an affine matrix as `AffineRow`s. fp16 scales are converted to fp32 one row at
/// a time into a buffer the caller keeps (`with_scale_buffer`), so the kernels read fp32 only.
#[derive(Clone, Copy)]
pub struct AffineRows<'a> {
    pub data: &'a AffineData<'a>,
    pub cols: usize,
    groups: usize,
    row_bytes: usize,
    /// The table's fp16 converter, for fp16 scales.
    f16_to_f32: F16ToF32,
}

impl<'a> AffineRows<'a> {
    pub fn new(data: &'a AffineData<'a>, cols: usize, f16_to_f32: F16ToF32) -> Self {
        AffineRows {
            data,
            cols,
            groups: data.n_groups(cols),
            row_bytes: AffineData::row_bytes(data.bits, cols),
            f16_to_f32,
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.data.values.len() / self.row_bytes.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline(always)]
    pub fn row<'s>(&'s self, r: usize, buffer: &'s mut Vec<f32>) -> AffineRow<'s> {
        let g = self.groups;
        self.row_with_scales(r, self.data.scales.slice(r * g, g, buffer, self.f16_to_f32))
    }

    /// Row `r` with its scales already in fp32 (`[n_groups]`).
    #[inline(always)]
    pub fn row_with_scales<'s>(&'s self, r: usize, scales: &'s [f32]) -> AffineRow<'s> {
        let (a, g) = (self.data, self.groups);
        AffineRow {
            bits: a.bits,
            values: &a.values[r * self.row_bytes..(r + 1) * self.row_bytes],
            scales,
            zeros: &a.zeros[r * g..(r + 1) * g],
            group_size: a.group_size,
            cols: self.cols,
        }
    }

    pub fn n_groups(&self) -> usize {
        self.groups
    }

    /// Ask for row `r`'s scales and zero points ahead of use: they are streams of their own,
    /// of a few bytes per row, that the hardware prefetcher follows late.
    #[inline(always)]
    pub fn prefetch_group_data(&self, r: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::kernels::simd_x86::prefetch;
            let (scales, width) = self.data.scales.byte_address(r * self.groups);
            prefetch(scales);
            prefetch(scales.wrapping_add(width * self.groups));
            prefetch(self.data.zeros.as_ptr().wrapping_add(r * self.groups));
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = r;
    }
}

thread_local! {
    /// Per-thread room for one row's scales converted from fp16.
    static SCALE_BUFFER: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` with this thread's scale buffer (`AffineRows::row` converts fp16 scales into it).
pub fn with_scale_buffer<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    SCALE_BUFFER.with_borrow_mut(f)
}

/// `sum_g scales[g] * zeros[g] * group_sums[g]`: the zero-point part of a row's dot product.
#[inline(always)]
pub(crate) fn zero_term(row: &AffineRow, group_sums: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let n = row.scales.len();
    let mut g = 0;
    while g + 8 <= n {
        for k in 0..8 {
            acc[k] += row.scales[g + k] * row.zeros[g + k] as f32 * group_sums[g + k];
        }
        g += 8;
    }
    let mut total: f32 = acc.iter().sum();
    while g < n {
        total += row.scales[g] * row.zeros[g] as f32 * group_sums[g];
        g += 1;
    }
    total
}

/// One row times fp32 `x` (already in stored column order): `sum_c scales[g] * (q[c] -
/// zeros[g]) * x[c]`, `g = c / group_size`. `x_group_sums[g]` is the sum of `x` over group `g`
/// (for the zero-point term). Every version has this signature.
pub type DotF32 = fn(AffineRow, &[f32], &[f32]) -> f32;

/// The reference: dequantize each weight, then multiply; the definition, with no factoring.
pub fn dot_f32_scalar(row: AffineRow, x: &[f32], _x_group_sums: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (c, &xc) in x.iter().enumerate().take(row.cols) {
        let g = c / row.group_size;
        let q = if row.bits == 8 { row.values[c] } else { (row.values[c / 2] >> ((c % 2) * 4)) & 0x0f };
        let w = row.scales[g] * (q as f32 - row.zeros[g] as f32);
        sum += w * xc;
    }
    sum
}

/// `sum_c s (q_c - z) x_c = s * (sum_c q_c x_c - z * sum_c x_c)`: the zero point costs one
/// multiply per group, with the group sums of x computed once per input vector.
#[inline]
pub fn dot_f32_portable(row: AffineRow, x: &[f32], x_group_sums: &[f32]) -> f32 {
    let gs = row.group_size;
    let mut sum = 0.0f32;
    for (g, (&scale, &zero)) in row.scales.iter().zip(row.zeros).enumerate() {
        let start = g * gs;
        let end = (start + gs).min(row.cols);
        let qx = if row.bits == 8 {
            dot_u8_f32(&row.values[start..end], &x[start..end])
        } else if start.is_multiple_of(2) {
            dot_nibbles_f32(&row.values[start / 2..end.div_ceil(2)], &x[start..end])
        } else {
            // Odd group sizes put group starts mid-byte: rare, so the plain loop.
            (start..end).map(|c| ((row.values[c / 2] >> ((c % 2) * 4)) & 0x0f) as f32 * x[c]).sum()
        };
        sum += scale * (qx - zero as f32 * x_group_sums[g]);
    }
    sum
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

/// Reference for the integer 4-bit path: each weight dequantized, times the dequantized int8
/// activation, summed in column order.
pub fn dot_i8_scalar(row: AffineRow, act: &Int8Activation) -> f32 {
    let mut sum = 0.0f32;
    for c in 0..row.cols {
        let g = c / row.group_size;
        let q = (row.values[c / 2] >> ((c % 2) * 4)) & 0x0f;
        sum += row.scales[g] * (q as f32 - row.zeros[g] as f32) * act.value(c);
    }
    sum
}

/// Where a kernel writes a `[n_tokens, rows]` result: token `t`, row `r` at
/// `offset + t * stride + r` of `data`.
#[derive(Clone, Copy)]
pub struct RowsOut<'s, 'a> {
    pub data: &'s DisjointSlice<'a, f32>,
    pub offset: usize,
    pub stride: usize,
}

impl RowsOut<'_, '_> {
    /// # Safety
    /// The index is inside `data`, and no other task writes it while this one may (the
    /// contract of `DisjointSlice::write`).
    #[inline(always)]
    pub unsafe fn write(&self, t: usize, r: usize, value: f32) {
        // SAFETY: forwarded to the caller.
        unsafe { self.data.write(self.offset + t * self.stride + r, value) }
    }

    /// Where token `t`, row `r` is, for a SIMD store of `n` rows from there.
    ///
    /// # Safety
    /// As `write`, for all `n` indices.
    #[inline(always)]
    pub unsafe fn ptr_at(&self, t: usize, r: usize, n: usize) -> *mut f32 {
        // SAFETY: forwarded to the caller.
        unsafe { self.data.ptr_at(self.offset + t * self.stride + r, n) }
    }

    /// True when rows `rows` of `n_tokens` tokens all land inside `data`.
    pub fn covers(&self, n_tokens: usize, rows: &std::ops::Range<usize>) -> bool {
        n_tokens == 0 || rows.is_empty() || self.offset + (n_tokens - 1) * self.stride + rows.end <= self.data.len()
    }
}

/// Rows `rows` of a 4-bit matrix times each int8 activation of `acts`, into `out` (token t,
/// row r). Every version has this signature; `scale_buffer` is the thread's room for fp16
/// scales converted to fp32.
///
/// # Safety (of every version)
/// The table that hands it out was made for this CPU; `rows` is inside the matrix, every
/// activation has the matrix's columns, `out` covers `acts.len()` tokens of `rows`, and no
/// other task writes those outputs meanwhile.
pub type RowsI8 = unsafe fn(&AffineRows, std::ops::Range<usize>, &[Int8Activation], &mut Vec<f32>, RowsOut);

/// Up to `GEMM_ROWS` 4-bit rows of one matrix times every token of `x` (`[n_tokens, cols]`,
/// fp32, stored column order) into `out` (token t, row i of the rows given), through a
/// buffer the thread keeps.
///
/// # Safety (of every version)
/// The table that hands it out was made for this CPU; the rows are 4-bit rows of `x`'s
/// columns, and `out` covers `n_tokens` tokens of rows `0..rows.len()`, written by no other
/// task meanwhile.
pub type GemmF32 = unsafe fn(&[AffineRow], &[f32], usize, &mut Vec<f32>, RowsOut);

/// Rows `r0..r0 + I16_ROWS` (those below `rows`) of a 4-bit `rows` x `cols` matrix times every
/// token of an int16 batch, into `out` (token t, row r).
///
/// # Safety (of every version)
/// The table that hands it out was made for this CPU; `x` was quantized from `cols` columns in
/// blocks that fit the matrix's groups (`Int16Activations::block_for`), and `out` covers every
/// token of those rows, written by no other task meanwhile.
#[cfg(target_arch = "x86_64")]
pub type GemmI16 = unsafe fn(
    &AffineData,
    usize,
    usize,
    usize,
    &activation::Int16Activations,
    &mut gemm_i16_avx512::I16Buffers,
    RowsOut,
);

/// `RowsI8`'s contract, checked in debug builds at the entry of every version.
#[inline(always)]
pub(crate) fn debug_check_rows(
    rows: &AffineRows,
    range: &std::ops::Range<usize>,
    acts: &[Int8Activation],
    out: &RowsOut,
) {
    debug_assert!(rows.data.bits == 4 && range.end <= rows.len() && out.covers(acts.len(), range));
    debug_assert!(acts.iter().all(|a| a.cols == rows.cols && a.group_sums().len() == rows.n_groups()));
}

/// `RowsI8` one row at a time with the per-row kernel `dot`.
///
/// # Safety
/// `RowsI8`'s output contract.
#[inline(always)]
unsafe fn rows_each(
    rows: &AffineRows,
    range: std::ops::Range<usize>,
    acts: &[Int8Activation],
    scale_buffer: &mut Vec<f32>,
    out: RowsOut,
    dot: impl Fn(AffineRow, &Int8Activation) -> f32,
) {
    debug_check_rows(rows, &range, acts, &out);
    for r in range {
        let row = rows.row(r, scale_buffer);
        for (t, act) in acts.iter().enumerate() {
            // SAFETY: the caller's output contract.
            unsafe { out.write(t, r, dot(row, act)) };
        }
    }
}

/// `RowsI8` with the scalar reference, one row at a time.
///
/// # Safety
/// As `RowsI8` (only the output contract matters: `dot_i8_scalar` is safe).
pub(crate) unsafe fn rows_i8_scalar(
    rows: &AffineRows,
    range: std::ops::Range<usize>,
    acts: &[Int8Activation],
    scale_buffer: &mut Vec<f32>,
    out: RowsOut,
) {
    // SAFETY: the caller's output contract.
    unsafe { rows_each(rows, range, acts, scale_buffer, out, dot_i8_scalar) }
}

/// `RowsI8` with the NEON row kernel, one row at a time.
///
/// # Safety
/// As `RowsI8`: in particular the CPU has the dot-product extension.
#[cfg(target_arch = "aarch64")]
pub(crate) unsafe fn rows_i8_neon(
    rows: &AffineRows,
    range: std::ops::Range<usize>,
    acts: &[Int8Activation],
    scale_buffer: &mut Vec<f32>,
    out: RowsOut,
) {
    // SAFETY: the CPU has dotprod and each activation has the row's columns (the caller's
    // contract, checked in debug builds by `rows_each`).
    let dot = |row: AffineRow, act: &Int8Activation| unsafe { neon::dot_i8(row, act) };
    // SAFETY: the caller's output contract.
    unsafe { rows_each(rows, range, acts, scale_buffer, out, dot) }
}
