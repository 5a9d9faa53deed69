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
    /// This quantization's own number (`staging::next_generation`): kernels that copy a
    /// batch into their own layout know their copy is current by it.
    pub generation: u64,
    pub cols: usize,
    pub q: Vec<i8>,       // [cols] natural order
    pub d: Vec<f32>,      // [cols / BLOCK]
    pub sums16: Vec<i32>, // [cols / 16] sum of q over each 16 values
    pub sums32: Vec<i32>, // [cols / BLOCK] sum of q over each block
    /// `sums16` as fp32, and `d * sums32` per block: the SIMD kernels' offset and min terms,
    /// computed once per input instead of once per matrix row.
    pub sums16_f32: Vec<f32>, // [cols / 16]
    pub scaled_sums32: Vec<f32>, // [cols / BLOCK]
    /// `q` in the lane order of the AVX-512 Q4_K/Q5_K kernel: per 256-value block, 4 vectors u
    /// of 4 lanes L of 4 dwords t of 4 values, dword (u, L, t) being values
    /// `32 j + 16 (L % 2) + 4 u .. + 4` of sub-block `j = 4 (t / 2) + 2 (L / 2) + t % 2`. Dword
    /// (L, t) is then in the same sub-block in all four vectors, so the kernel sums a block's four
    /// `vpdpbusd` in one register and scales it once (the nibble loads, transposed per lane,
    /// have that order). Empty unless `cols` is a multiple of 256: only those kernels read it.
    pub q_k4: Vec<i8>, // [cols] or []
    /// `d` in that kernel's lane order: `d[8 b + j]` at `16 b + 4 L + t`, j as above.
    pub d_k4: Vec<f32>, // [cols / 16] or []
    /// `q` in the lane order of the AVX-512 Q6_K kernel: dword (u, L, t) of a block is values
    /// `64 t + 16 L + 4 u .. + 4`, in 16-value sub-block `4 t + L`.
    pub q_q6: Vec<i8>, // [cols] or []
    /// `d` and `-32 * sums16` in that kernel's lane order (lane `4 L + t` is sub-block
    /// `4 t + L`): the scale and Q6_K's offset, the offset the start of the integer sum.
    pub d_q6: Vec<f32>, // [cols / 16] or []
    pub offsets_q6: Vec<i32>, // [cols / 16] or []
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
        self.generation = crate::kernels::staging::next_generation();
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
        self.d_k4.clear();
        self.q_q6.clear();
        self.d_q6.clear();
        self.offsets_q6.clear();
        if !x.len().is_multiple_of(256) {
            return; // no K-quant row has these columns
        }
        for (b, block) in self.q.chunks_exact(256).enumerate() {
            for u in 0..4 {
                for l in 0..4 {
                    for t in 0..4 {
                        let j = 4 * (t / 2) + 2 * (l / 2) + t % 2;
                        let at = 32 * j + 16 * (l % 2) + 4 * u;
                        self.q_k4.extend_from_slice(&block[at..at + 4]);
                        let at = 64 * t + 16 * l + 4 * u;
                        self.q_q6.extend_from_slice(&block[at..at + 4]);
                    }
                }
            }
            for l in 0..4 {
                for t in 0..4 {
                    self.d_k4.push(self.d[8 * b + 4 * (t / 2) + 2 * (l / 2) + t % 2]);
                    let s = 4 * t + l;
                    self.d_q6.push(self.d[8 * b + s / 2]);
                    self.offsets_q6.push(-32 * self.sums16[16 * b + s]);
                }
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
