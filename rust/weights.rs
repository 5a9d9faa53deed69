//! The model's weights as typed views into the memory-mapped file: what every format reader
//! returns and the kernels read.
//!
//! Data borrowed from the map is used in place. The only copies ever made are of fp32
//! runs that sit at an address not aligned to 4 bytes (possible for Q8_0 scales after an
//! int8 block whose length is not a multiple of 4, or in a hand-made safetensors file); our
//! file's reader copies at most 16 MiB of one and refuses larger ones.

use std::borrow::Cow;

use half::f16;

/// A row-major `[rows, cols]` weight matrix: fp32, Q8_0 or affine 4/8-bit.
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
    /// llama.cpp's blocks (and fp16/bf16), as GGUF files store them.
    Blocks(BlockData<'a>),
}

/// The block encodings of llama.cpp's `ggml-common.h` that we run, and fp16/bf16 (blocks of
/// one value). Each row of `cols` values is `cols / elements()` blocks of `bytes()` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockType {
    F16,
    Bf16,
    /// 32 values: fp16 `d`, 32 x int8; `w = d * q`.
    Q8_0,
    /// 32 values: fp16 `d`, 16 bytes of nibbles (values j and j + 16 share byte j); `w = d * (q - 8)`.
    Q4_0,
    /// 32 values: fp16 `d`, fp16 `m`, 16 bytes of nibbles as Q4_0; `w = d * q + m`.
    Q4_1,
    /// 256 values in 8 sub-blocks of 32, each with a 6-bit scale and min: fp16 `d`, `dmin`,
    /// 12 bytes of packed scales/mins, 128 bytes of nibbles; `w = d * sc * q - dmin * m`.
    Q4K,
    /// Q4_K plus a fifth bit per value (32 bytes of high bits before the nibbles).
    Q5K,
    /// 256 values in 16 sub-blocks of 16: 128 bytes of low nibbles, 64 bytes of 2-bit highs,
    /// 16 int8 scales, fp16 `d`; `w = d * sc * (q - 32)`.
    Q6K,
}

impl BlockType {
    pub const ALL: [BlockType; 8] = [
        BlockType::F16,
        BlockType::Bf16,
        BlockType::Q8_0,
        BlockType::Q4_0,
        BlockType::Q4_1,
        BlockType::Q4K,
        BlockType::Q5K,
        BlockType::Q6K,
    ];

    /// llama.cpp's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            BlockType::F16 => "F16",
            BlockType::Bf16 => "BF16",
            BlockType::Q8_0 => "Q8_0",
            BlockType::Q4_0 => "Q4_0",
            BlockType::Q4_1 => "Q4_1",
            BlockType::Q4K => "Q4_K",
            BlockType::Q5K => "Q5_K",
            BlockType::Q6K => "Q6_K",
        }
    }

    /// Values per block.
    pub fn elements(self) -> usize {
        match self {
            BlockType::F16 | BlockType::Bf16 => 1,
            BlockType::Q8_0 | BlockType::Q4_0 | BlockType::Q4_1 => 32,
            BlockType::Q4K | BlockType::Q5K | BlockType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn bytes(self) -> usize {
        match self {
            BlockType::F16 | BlockType::Bf16 => 2,
            BlockType::Q8_0 => 34,
            BlockType::Q4_0 => 18,
            BlockType::Q4_1 => 20,
            BlockType::Q4K => 144,
            BlockType::Q5K => 176,
            BlockType::Q6K => 210,
        }
    }

    /// Bytes of a row of `cols` values, or None when `cols` is not a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        cols.is_multiple_of(self.elements()).then(|| cols / self.elements() * self.bytes())
    }
}

/// A matrix of llama.cpp blocks: `values` is `[rows, row_bytes]`.
#[derive(Debug)]
pub struct BlockData<'a> {
    pub kind: BlockType,
    pub values: &'a [u8],
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
            Scales::F16(b) => f16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32(),
        }
    }

    /// Scales `start..start + n` as fp32: the file's own for fp32, converted into `buf` by
    /// `convert` (the kernel table's) for fp16.
    #[inline]
    pub fn slice<'s>(
        &'s self,
        start: usize,
        n: usize,
        buf: &'s mut Vec<f32>,
        convert: fn(&[u8], &mut [f32]),
    ) -> &'s [f32] {
        match self {
            Scales::F32(s) => &s[start..start + n],
            Scales::F16(b) => {
                if buf.len() < n {
                    buf.resize(n, 0.0);
                }
                let out = &mut buf[..n];
                convert(&b[2 * start..2 * (start + n)], out);
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
    /// `[head_size / 2]`: each RoPE frequency is divided by its factor (Llama 3.1's long-context
    /// scaling, as GGUF's `rope_freqs.weight` stores it); `None`: no scaling.
    pub rope_freq_factors: Option<Cow<'a, [f32]>>,
}

/// The first RoPE divisor that is not a positive finite number, if any (a file holding one is
/// corrupt: it would turn the rotation into NaN or infinity).
pub fn bad_rope_divisor(factors: &[f32]) -> Option<f32> {
    factors.iter().copied().find(|v| !(v.is_finite() && *v > 0.0))
}

impl<'a> Weights<'a> {
    pub fn classifier(&self) -> &Matrix<'a> {
        self.classifier.as_ref().unwrap_or(&self.token_embedding)
    }
}
