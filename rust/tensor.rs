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

/// An fp32 value rounded to the nearest IEEE fp16 value (ties to even; overflow to infinity,
/// NaN stays NaN), as numpy's `astype(float16)` and F16C's `vcvtps2ph` round it.
pub fn f32_to_f16(value: f32) -> u16 {
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32;
    let mantissa = bits & 0x7f_ffff;
    if exponent == 0xff {
        let nan = if mantissa != 0 { 0x200 | (mantissa >> 13) as u16 } else { 0 };
        return sign | 0x7c00 | nan;
    }
    // The value as a 24-bit significand (hidden bit included) times 2^(e - 150).
    let e = exponent - 127 + 15; // fp16's biased exponent if the value stays normal
    let significand = if exponent == 0 { mantissa } else { mantissa | 0x80_0000 };
    // fp16 keeps 11 significant bits when normal; below e = 1 it drops one more per step.
    let shift = if e >= 1 { 13 } else { (14 - e) as u32 };
    if shift > 24 {
        return sign; // below half the smallest subnormal: rounds to zero
    }
    let kept = significand >> shift;
    let rest = significand & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    let rounded = kept + u32::from(rest > half || (rest == half && kept & 1 == 1));
    let magnitude = if e >= 1 {
        // `rounded` carries into the exponent by itself when the significand overflows.
        ((e as u32) << 10) + rounded - 0x400
    } else {
        rounded // a subnormal, or the smallest normal when it rounds up into it
    };
    sign | if magnitude >= 0x7c00 { 0x7c00 } else { magnitude as u16 }
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
    fn f32_to_f16_hand_computed() {
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(65520.0), 0x7c00); // halfway to 2^16: ties to even, which overflows
        assert_eq!(f32_to_f16(65519.0), 0x7bff);
        assert_eq!(f32_to_f16(1e6), 0x7c00);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY), 0xfc00);
        assert_eq!(f32_to_f16(f32::NAN) & 0x7e00, 0x7e00);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
        // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to the even 1.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02); // ties up to even
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11) + 2f32.powi(-20)), 0x3c01); // above half
        assert_eq!(f32_to_f16(2f32.powi(-24)), 0x0001); // smallest subnormal
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0x0000); // half of it: ties to even zero
        assert_eq!(f32_to_f16(1.5 * 2f32.powi(-25)), 0x0001);
        assert_eq!(f32_to_f16(1023.0 * 2f32.powi(-24)), 0x03ff);
        assert_eq!(f32_to_f16(1023.5 * 2f32.powi(-24)), 0x0400); // rounds up into the normals
        assert_eq!(f32_to_f16(2f32.powi(-14)), 0x0400);
        assert_eq!(f32_to_f16(1e-30), 0x0000);
        assert_eq!(f32_to_f16(0.1), 0x2e66); // numpy: float16(0.1).view(uint16)
    }

    #[test]
    fn f32_to_f16_round_trips_and_rounds_to_nearest() {
        for h in 0..=u16::MAX {
            let v = f16_to_f32(h);
            if v.is_nan() {
                continue;
            }
            assert_eq!(f32_to_f16(v), h, "{h:#06x}");
            // Just above and below every finite value still round to it (the gaps are much wider).
            if v.is_finite() && v != 0.0 {
                assert_eq!(f32_to_f16(f32::from_bits(v.to_bits() + 1)), h, "{h:#06x} up");
                assert_eq!(f32_to_f16(f32::from_bits(v.to_bits() - 1)), h, "{h:#06x} down");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f32_to_f16_equals_f16c() {
        if !std::arch::is_x86_feature_detected!("f16c") {
            return;
        }
        // Every 4099th fp32 pattern: normals, subnormals, overflow, ties.
        let mut bits = 0u32;
        while let Some(next) = bits.checked_add(4099) {
            let v = f32::from_bits(bits);
            // SAFETY: the feature is present.
            let expected = unsafe { f16c_one(v) };
            if !v.is_nan() {
                assert_eq!(f32_to_f16(v), expected, "{bits:#010x}");
            }
            bits = next;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "f16c")]
    unsafe fn f16c_one(v: f32) -> u16 {
        use std::arch::x86_64::*;
        _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set1_ps(v))) as u16
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
