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
    /// Affine (zero-point) 4- or 8-bit groups, as GPTQ produces them.
    Affine(AffineData<'a>),
}

/// `w[r, c] = scales[r, g] * (q[r, c] - zeros[r, g])` with `g = c / group_size`, where `c` counts
/// *stored* columns: with act-order, stored column `j` holds input feature `perm[j]`, so the
/// kernel multiplies with `x[perm]`. The last group of a row may be shorter.
#[derive(Debug)]
pub struct AffineData<'a> {
    pub bits: u32, // 4 or 8
    /// `[rows, row_bytes]`: 8-bit values as bytes; 4-bit values two per byte, the even stored
    /// column in the low nibble; a row's odd last column leaves the high nibble 0.
    pub values: &'a [u8],
    pub scales: Scales<'a>, // [rows, n_groups]
    pub zeros: &'a [u8],    // [rows, n_groups]
    pub group_size: usize,
    pub perm: Option<Cow<'a, [u32]>>, // [cols]
}

/// Per-group weight scales as the file stores them: fp32, or fp16 (what GPTQ checkpoints hold,
/// and what export writes when every scale of a matrix is an fp16 value; 3% fewer bytes per
/// token at group size 128).
#[derive(Debug)]
pub enum Scales<'a> {
    F32(Cow<'a, [f32]>),
    /// Little-endian fp16 bit patterns, two bytes each, at any alignment.
    F16(&'a [u8]),
}

impl Scales<'_> {
    pub fn len(&self) -> usize {
        match self {
            Scales::F32(s) => s.len(),
            Scales::F16(b) => b.len() / 2,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Scales::F32(s) => s[i],
            Scales::F16(b) => f16_to_f32(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])),
        }
    }

    /// Scales `start..start + n` as fp32: the file's own for fp32, converted into `buf` for fp16.
    #[inline]
    pub fn slice<'s>(&'s self, start: usize, n: usize, buf: &'s mut Vec<f32>) -> &'s [f32] {
        match self {
            Scales::F32(s) => &s[start..start + n],
            Scales::F16(b) => {
                if buf.len() < n {
                    buf.resize(n, 0.0);
                }
                let out = &mut buf[..n];
                f16s_to_f32(&b[2 * start..2 * (start + n)], out);
                out
            }
        }
    }

    /// Where scale `i` starts in memory (for prefetching), and the bytes per scale.
    pub fn byte_address(&self, i: usize) -> (*const u8, usize) {
        match self {
            Scales::F32(s) => (s.as_ptr().wrapping_add(i) as *const u8, 4),
            Scales::F16(b) => (b.as_ptr().wrapping_add(2 * i), 2),
        }
    }
}

/// An IEEE fp16 value as fp32 (exact: every fp16 value is an fp32 value).
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits as u32) & 0x8000) << 16;
    let exponent = ((bits >> 10) & 0x1f) as u32;
    let mantissa = (bits & 0x3ff) as u32;
    let magnitude = match (exponent, mantissa) {
        (0, 0) => 0,
        // Subnormal: mantissa * 2^-24, exact in fp32.
        (0, m) => (m as f32 * f32::from_bits(0x3380_0000)).to_bits(),
        (0x1f, m) => 0x7f80_0000 | (m << 13), // infinity, NaN
        (e, m) => ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(sign | magnitude)
}

/// Convert little-endian fp16 bytes (`[2 * out.len()]`) into `out`, eight at a time with F16C
/// where the CPU has it.
pub fn f16s_to_f32(bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: the feature is present.
        unsafe { crate::kernels::x86::f16s_to_f32_f16c(bytes, out) };
        return;
    }
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

impl AffineData<'_> {
    /// Bytes per packed row.
    pub fn row_bytes(bits: u32, cols: usize) -> usize {
        (cols * bits as usize).div_ceil(8)
    }

    pub fn n_groups(&self, cols: usize) -> usize {
        cols.div_ceil(self.group_size)
    }

    /// The integer at stored column `c` of a packed row.
    #[inline]
    pub fn value(&self, row: &[u8], c: usize) -> u8 {
        if self.bits == 8 {
            row[c]
        } else {
            (row[c / 2] >> ((c % 2) * 4)) & 0x0f
        }
    }
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
            MatrixData::Affine(a) => {
                let groups = a.n_groups(self.cols);
                let row_bytes = AffineData::row_bytes(a.bits, self.cols);
                let packed = &a.values[row * row_bytes..(row + 1) * row_bytes];
                for c in 0..self.cols {
                    let g = row * groups + c / a.group_size;
                    let w = a.scales.get(g) * (a.value(packed, c) as f32 - a.zeros[g] as f32);
                    let feature = a.perm.as_ref().map_or(c, |p| p[c] as usize);
                    out[feature] = w;
                }
            }
        }
    }
}

#[derive(Debug)]
pub struct LayerWeights<'a> {
    pub rms_att: Cow<'a, [f32]>, // [dim]
    pub wq: Matrix<'a>,          // [n_heads * head_size, dim]
    pub wk: Matrix<'a>,          // [kv_dim, dim]
    pub wv: Matrix<'a>,          // [kv_dim, dim]
    pub wo: Matrix<'a>,          // [dim, n_heads * head_size]
    pub rms_ffn: Cow<'a, [f32]>, // [dim]
    pub w1: Matrix<'a>,          // [hidden_dim, dim]
    pub w2: Matrix<'a>,          // [dim, hidden_dim]
    pub w3: Matrix<'a>,          // [hidden_dim, dim]
}

#[derive(Debug)]
pub struct Weights<'a> {
    pub token_embedding: Matrix<'a>, // [vocab_size, dim]
    pub layers: Vec<LayerWeights<'a>>,
    pub rms_final: Cow<'a, [f32]>, // [dim]
    /// `[vocab_size, dim]`; `None` when the classifier shares the token embedding.
    pub classifier: Option<Matrix<'a>>,
}

impl<'a> Weights<'a> {
    pub fn classifier(&self) -> &Matrix<'a> {
        self.classifier.as_ref().unwrap_or(&self.token_embedding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_to_f32_hand_computed() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95); // 1365/4096
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14)); // smallest normal
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24)); // smallest subnormal
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn bulk_conversion_equals_the_scalar_one_for_every_pattern() {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
        // An odd length, so the tail after the 8-wide steps runs too.
        let n = 65535;
        let mut out = vec![0.0f32; n];
        f16s_to_f32(&bytes[..2 * n], &mut out);
        for (h, v) in (0..n as u32).zip(&out) {
            let expected = f16_to_f32(h as u16);
            assert!(v.to_bits() == expected.to_bits() || (v.is_nan() && expected.is_nan()), "{h:#06x}");
        }
    }
}
