//! Activations quantized to int8 for the block row kernels: blocks of 32 values share one
//! fp32 scale `d = max|x| / 127` (llama.cpp's Q8_K has one per 256 values, so this is at least
//! as close to the input), with the integer sum of every 16 values kept for the zero-point
//! and offset terms (Q4_K's mins, Q6_K's -32, Q4_0's -8, Q4_1's m).

/// Values per activation scale.
pub const BLOCK: usize = 32;

/// Round to the nearest integer (ties to even) with two adds: exact for |x| < 2^22, and it
/// compiles to vector code on every x86-64 (no libm call).
#[inline(always)]
fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (x + MAGIC) - MAGIC
}

#[derive(Debug, Default, Clone)]
pub struct BlockActivation {
    /// The fp32 input this was quantized from, so one input (q, k and v) is quantized once.
    source: Vec<f32>,
    pub cols: usize,
    pub q: Vec<i8>,       // [cols] natural order
    pub d: Vec<f32>,      // [cols / BLOCK]
    pub sums16: Vec<i32>, // [cols / 16] sum of q over each 16 values
    pub sums32: Vec<i32>, // [cols / BLOCK] sum of q over each block
    /// `sums16` as fp32, and `d * sums32` per block: the SIMD kernels' offset and min terms,
    /// computed once per input instead of once per matrix row.
    pub sums16_f32: Vec<f32>, // [cols / 16]
    pub scaled_sums32: Vec<f32>, // [cols / BLOCK]
    /// `q` with each 128 values as [0..32, 64..96, 32..64, 96..128]: the order of a 64-byte load
    /// of Q4_K nibbles (low nibbles of two 32-byte chunks, then their high nibbles). Empty
    /// unless `cols` is a multiple of 256 (whole K-quant blocks): only Q4_K reads it.
    pub q_k4: Vec<i8>, // [cols] or []
}

impl BlockActivation {
    /// Quantize `x` (its length a multiple of 32, the activation's block; the K-quant kernels
    /// need a multiple of 256, which their matrices' columns are).
    pub fn quantize(&mut self, x: &[f32]) {
        if self.source == x && !x.is_empty() {
            return;
        }
        assert!(x.len().is_multiple_of(BLOCK), "block activations are whole 32-value blocks");
        self.source.clear();
        self.source.extend_from_slice(x);
        self.cols = x.len();
        self.q.clear();
        self.d.clear();
        for block in x.chunks_exact(BLOCK) {
            let max_abs = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = max_abs / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            self.d.push(d);
            self.q.extend(block.iter().map(|v| round_even(v * inv) as i8));
        }
        self.sums16.clear();
        self.sums16.extend(self.q.chunks_exact(16).map(|c| c.iter().map(|&v| v as i32).sum::<i32>()));
        self.sums32.clear();
        self.sums32.extend(self.sums16.chunks_exact(2).map(|p| p[0] + p[1]));
        self.sums16_f32.clear();
        self.sums16_f32.extend(self.sums16.iter().map(|&s| s as f32));
        self.scaled_sums32.clear();
        self.scaled_sums32.extend(self.d.iter().zip(&self.sums32).map(|(&d, &s)| d * s as f32));
        self.q_k4.clear();
        if !x.len().is_multiple_of(256) {
            return; // no Q4_K row has these columns
        }
        for chunk in self.q.chunks_exact(128) {
            for range in [0..32, 64..96, 32..64, 96..128] {
                self.q_k4.extend_from_slice(&chunk[range]);
            }
        }
    }

    /// The dequantized value of column `c`.
    #[inline]
    pub fn value(&self, c: usize) -> f32 {
        self.d[c / BLOCK] * self.q[c] as f32
    }

    /// The integer sum of `q` over 32-value block `b`.
    #[inline]
    pub fn sum32(&self, b: usize) -> i32 {
        self.sums32[b]
    }
}
