//! Activations quantized to int8 for the integer 4-bit kernels: blocks of 32 values share one
//! fp32 scale `d = max|x| / 127`, and the vector is zero-padded to a multiple of 128 so every
//! SIMD step is whole.
//!
//! One int8 pass alone loses ~1% of a layer's output (the rounding error is up to d/2 on every
//! value), more than the fp16/bf16 kernels of GPTQ tools. So the rounding error is quantized
//! too: `x ~ d * (q + r / 256)` with `r = round(256 * (x/d - q))` clamped to [-127, 127]
//! (the clamp only touches values within 1/512 of a rounding tie, and costs them at most
//! d/256). Two integer dot products per weight load give ~16-bit activations, and with the
//! power-of-two unit the kernel combines them in integers: `idot * 256 + rdot`.
//!
//! The 4-bit weights keep two columns per byte (even column in the low nibble), so a SIMD load
//! of 64 weight bytes unpacks into the 64 even and the 64 odd columns of a 128-column chunk.
//! `interleaved` stores the activation in that order (per chunk: 64 even-column values, then
//! 64 odd-column values), so the integer dot products line up with no shuffles. A 32-bit lane
//! of those products covers 8 consecutive columns, hence `lane_scales`: the block scale of
//! each 8-column lane.

use rayon::prelude::*;

use crate::disjoint::DisjointSlice;

/// Columns per SIMD chunk (64 weight bytes).
pub const CHUNK: usize = 128;
/// Values per activation scale.
pub const BLOCK: usize = 32;
/// The residual's unit is `d / RESIDUAL`; a power of two, so `idot << RESIDUAL_BITS` + `rdot`
/// is the combined dot product in residual units.
pub const RESIDUAL_BITS: u32 = 8;
pub const RESIDUAL: f32 = (1u32 << RESIDUAL_BITS) as f32;

/// Round to the nearest integer (ties to even) with two adds: exact for |x| < 2^22, and unlike
/// `f32::round` it compiles to vector code on every x86-64 (no libm call).
#[inline(always)]
fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (x + MAGIC) - MAGIC
}

/// Reorder each 128-value chunk into its 64 even-position values, then its 64 odd ones.
fn interleave(natural: &[i8], out: &mut Vec<i8>) {
    out.clear();
    out.resize(natural.len(), 0);
    for (c, chunk) in natural.chunks_exact(CHUNK).enumerate() {
        let out = &mut out[c * CHUNK..(c + 1) * CHUNK];
        for j in 0..CHUNK / 2 {
            out[j] = chunk[2 * j];
            out[CHUNK / 2 + j] = chunk[2 * j + 1];
        }
    }
}
/// Columns per 32-bit lane of products (4 even + 4 odd).
pub const LANE: usize = 8;

#[derive(Debug, Default, Clone)]
pub struct Int8Activation {
    /// The fp32 input this was quantized from, so the same input (q, k and v; w1 and w3 read
    /// one) is quantized once.
    source: Vec<f32>,
    /// This quantization's own number (`staging::next_generation`): kernels that copy a
    /// batch into their own layout know their copy is current by it.
    pub generation: u64,
    pub cols: usize,
    pub padded: usize,
    pub natural: Vec<i8>,              // [padded] natural column order
    pub residual: Vec<i8>,             // [padded] the rounding error, in units of d / RESIDUAL
    pub interleaved: Vec<i8>,          // [padded] per chunk: even columns, then odd columns
    pub residual_interleaved: Vec<i8>, // [padded] the same for `residual`
    pub block_scales: Vec<f32>,        // [padded / BLOCK]
    pub lane_scales: Vec<f32>,         // [padded / LANE]
    pub lane_units: Vec<f32>,          // [padded / LANE] lane_scales / RESIDUAL
    /// Sums of the dequantized values per group of `sums_group_size` columns (the zero-point
    /// term), kept with the activation so matrices that share an input compute them once.
    sums: Vec<f32>, // [n_groups]
    sums_group_size: usize,            // 0: not computed for the current input
}

impl Int8Activation {
    pub fn quantize(&mut self, x: &[f32]) {
        if self.source == x && !x.is_empty() {
            return;
        }
        self.source.clear();
        self.source.extend_from_slice(x);
        self.generation = crate::kernels::staging::next_generation();
        self.sums_group_size = 0;
        let cols = x.len();
        let padded = cols.div_ceil(CHUNK) * CHUNK;
        self.cols = cols;
        self.padded = padded;
        self.natural.clear();
        self.natural.resize(padded, 0);
        self.residual.clear();
        self.residual.resize(padded, 0);
        self.block_scales.clear();
        for (b, block) in x.chunks(BLOCK).enumerate() {
            let max_abs = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = max_abs / 127.0;
            self.block_scales.push(scale);
            if scale > 0.0 {
                let inv = 1.0 / scale;
                for (i, v) in block.iter().enumerate() {
                    let scaled = v * inv;
                    let q = round_even(scaled);
                    self.natural[b * BLOCK + i] = q as i8;
                    self.residual[b * BLOCK + i] = round_even((scaled - q) * RESIDUAL).clamp(-127.0, 127.0) as i8;
                }
            }
        }
        self.block_scales.resize(padded / BLOCK, 0.0);
        interleave(&self.natural, &mut self.interleaved);
        interleave(&self.residual, &mut self.residual_interleaved);
        self.lane_scales.clear();
        self.lane_scales.extend((0..padded / LANE).map(|l| self.block_scales[l * LANE / BLOCK]));
        self.lane_units.clear();
        self.lane_units.extend(self.lane_scales.iter().map(|d| d / RESIDUAL));
    }

    /// The dequantized value of column `c`.
    #[inline]
    pub fn value(&self, c: usize) -> f32 {
        let d = self.block_scales[c / BLOCK];
        d * self.natural[c] as f32 + (d / RESIDUAL) * self.residual[c] as f32
    }

    /// Compute the sums of the dequantized values per group of `group_size` columns, unless
    /// they are already there for this input.
    pub fn update_group_sums(&mut self, group_size: usize) {
        if self.sums_group_size == group_size {
            return;
        }
        // Per group, per block inside it: the exact integer sum of q * 256 + r, scaled once.
        self.sums.clear();
        for g in 0..self.cols.div_ceil(group_size) {
            let (mut c, end) = (g * group_size, ((g + 1) * group_size).min(self.cols));
            let mut sum = 0.0f32;
            while c < end {
                let block_end = ((c / BLOCK + 1) * BLOCK).min(end);
                let units: i32 = self.natural[c..block_end]
                    .iter()
                    .zip(&self.residual[c..block_end])
                    .map(|(&q, &r)| ((q as i32) << RESIDUAL_BITS) + r as i32)
                    .sum();
                sum += self.block_scales[c / BLOCK] / RESIDUAL * units as f32;
                c = block_end;
            }
            self.sums.push(sum);
        }
        self.sums_group_size = group_size;
    }

    /// `[n_groups]`: what `update_group_sums` computed.
    pub fn group_sums(&self) -> &[f32] {
        &self.sums
    }
}

/// A batch of activation vectors quantized to int16 for the prefill GEMM (`vpdpwssd`): blocks
/// of `block` columns share one fp32 scale `max|x| / 32767`, each block inside one weight group,
/// so a block's integer dot product needs one weight scale and one activation scale. 15 bits
/// keep the GEMM at least as close to the exact result as an fp16-activation kernel.
#[derive(Debug, Default, Clone)]
pub struct Int16Activations {
    /// The fp32 input this was quantized from (q, k and v read one input; w1 and w3 another).
    source: Vec<f32>,
    pub n_tokens: usize,
    pub cols: usize,
    pub block: usize,
    /// The largest magnitude a value is rounded to (32767 unless a kernel needs headroom).
    pub levels: f32,
    /// Columns per token, `cols` rounded up to whole blocks (the padding is zero).
    pub padded: usize,
    /// Block-major, so one block of consecutive tokens is contiguous for the GEMM's tiles
    /// (token-major rows `padded` apart would put a tile's tokens in one cache set).
    pub values: Vec<i16>, // [padded / block, n_tokens, block]
    pub scales: Vec<f32>, // [n_tokens, padded / block]
}

/// Largest int16 activation block: 128 columns, fewer when weight groups are smaller.
pub const INT16_BLOCK: usize = 128;

impl Int16Activations {
    /// The activation block for weights in groups of `group_size` columns (a group may span
    /// the row): a power of two from 32 to 128 that divides the group, or `None` when the
    /// groups are too small or ragged for the GEMM.
    pub fn block_for(group_size: usize, cols: usize) -> Option<usize> {
        if group_size >= cols {
            return Some(INT16_BLOCK);
        }
        [128, 64, 32].into_iter().find(|b| group_size.is_multiple_of(*b))
    }

    /// Quantize `x` (`[n_tokens, cols]`) in blocks of `block` columns, to 15 bits.
    pub fn quantize(&mut self, x: &[f32], n_tokens: usize, cols: usize, block: usize) {
        self.quantize_to(x, n_tokens, cols, block, 32767.0);
    }

    /// `quantize` with each block's largest magnitude mapped to `levels` (at most 32767).
    pub fn quantize_to(&mut self, x: &[f32], n_tokens: usize, cols: usize, block: usize, levels: f32) {
        debug_assert!((1.0..=32767.0).contains(&levels));
        if self.source == x && self.cols == cols && self.block == block && self.levels == levels && !x.is_empty() {
            return;
        }
        self.source.clear();
        self.source.extend_from_slice(x);
        let padded = cols.div_ceil(block) * block;
        (self.n_tokens, self.cols, self.block, self.padded, self.levels) = (n_tokens, cols, block, padded, levels);
        let n_blocks = padded / block;
        self.values.clear();
        self.values.resize(n_tokens * padded, 0);
        self.scales.clear();
        self.scales.resize(n_tokens * n_blocks, 0.0);
        // Tokens in parallel (the GEMM's threads would otherwise wait for this): token t owns
        // its scales row and its block of every block row of `values`.
        let values = DisjointSlice::new(&mut self.values);
        self.scales.par_chunks_mut(n_blocks).zip(x.par_chunks_exact(cols)).enumerate().for_each(|(t, (scales, xt))| {
            let values = &values;
            for (b, part) in xt.chunks(block).enumerate() {
                let max_abs = part.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let scale = max_abs / levels;
                scales[b] = scale;
                if scale > 0.0 {
                    let inv = 1.0 / scale;
                    // SAFETY: t < n_tokens (the zip with the n_tokens rows of scales) and
                    // b < n_blocks, so the block is inside `values`, and it is token t's alone.
                    let out = unsafe { values.slice_mut((b * n_tokens + t) * block, block) };
                    for (o, v) in out.iter_mut().zip(part) {
                        *o = round_even(v * inv).clamp(-levels, levels) as i16;
                    }
                }
            }
        });
    }

    /// The dequantized value of token `t`, column `c`.
    #[inline]
    pub fn value(&self, t: usize, c: usize) -> f32 {
        let (b, i) = (c / self.block, c % self.block);
        self.scales[t * (self.padded / self.block) + b] * self.values[(b * self.n_tokens + t) * self.block + i] as f32
    }
}

/// True when the SIMD 4-bit kernels can apply one weight scale per 8-column lane: groups are
/// whole lanes and either tile a chunk or span whole chunks (or there is one group per row).
pub fn lanes_fit_groups(group_size: usize, cols: usize) -> bool {
    group_size >= cols
        || group_size.is_multiple_of(CHUNK)
        || (CHUNK.is_multiple_of(group_size) && group_size.is_multiple_of(LANE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int16_blocks_scales_and_padding() {
        assert_eq!(Int16Activations::block_for(128, 4096), Some(128));
        assert_eq!(Int16Activations::block_for(64, 4096), Some(64));
        assert_eq!(Int16Activations::block_for(96, 4096), Some(32));
        assert_eq!(Int16Activations::block_for(8, 4096), None);
        assert_eq!(Int16Activations::block_for(300, 300), Some(128));
        // Two tokens of 40 columns in blocks of 32: padded to 64.
        let x: Vec<f32> = (0..80).map(|i| (i as f32 - 37.0) / 8.0).collect();
        let mut a = Int16Activations::default();
        a.quantize(&x, 2, 40, 32);
        assert_eq!((a.padded, a.values.len(), a.scales.len()), (64, 128, 4));
        // Token 0, block 0 holds (0-37)/8 .. (31-37)/8: max |x| = 37/8 maps to -32767.
        assert_eq!(a.scales[0], 37.0 / 8.0 / 32767.0);
        assert_eq!(a.values[0], -32767);
        // Block-major: block 1 of token 0 (columns 32..39, then padding) follows block 0 of
        // both tokens.
        assert_eq!(a.values[64], -32767); // column 32: (32 - 37) / 8, the block's largest magnitude
        assert!(a.values[64 + 8..96].iter().all(|&v| v == 0));
        for t in 0..2 {
            for c in 0..40 {
                let (v, d) = (x[t * 40 + c], a.scales[t * 2 + c / 32]);
                assert!((a.value(t, c) - v).abs() <= d / 2.0 + 1e-7, "token {t} column {c}");
            }
        }
    }

    #[test]
    fn layout_and_scales() {
        let x: Vec<f32> = (0..130).map(|i| i as f32 - 60.0).collect();
        let mut a = Int8Activation::default();
        a.quantize(&x);
        assert_eq!((a.cols, a.padded), (130, 256));
        // Block 0 holds -60..-29: scale 60/127, and -60 maps to -127.
        assert_eq!(a.block_scales[0], 60.0 / 127.0);
        assert_eq!(a.natural[0], -127);
        // Interleaving: chunk 0 starts with columns 0, 2, 4 ... then 1, 3, 5 ...
        assert_eq!(a.interleaved[1], a.natural[2]);
        assert_eq!(a.interleaved[64], a.natural[1]);
        assert_eq!(a.interleaved[65], a.natural[3]);
        // Padding is zero; lane 16 (columns 128..135) uses block 4's scale.
        assert!(a.natural[130..].iter().all(|&v| v == 0));
        assert_eq!(a.lane_scales[16], a.block_scales[4]);
        a.update_group_sums(64);
        let sums = a.group_sums();
        assert_eq!(sums.len(), 3);
        let direct: f32 = (128..130).map(|c| a.value(c)).sum();
        assert!((sums[2] - direct).abs() <= 1e-6 * (1.0 + direct.abs()), "{} vs {direct}", sums[2]);
        let direct: f32 = (0..64).map(|c| a.value(c)).sum();
        assert!((sums[0] - direct).abs() <= 1e-5 * (1.0 + direct.abs()), "{} vs {direct}", sums[0]);
        // With the residual, every value is within d / 512 of the input, or d / 256 where the
        // residual was clamped.
        for (c, &v) in x.iter().enumerate() {
            let d = a.block_scales[c / BLOCK];
            let bound = if a.residual[c].abs() == 127 { d / 255.0 } else { d / 511.0 };
            assert!((a.value(c) - v).abs() <= bound, "column {c}: {} vs {v}", a.value(c));
        }
    }
}
