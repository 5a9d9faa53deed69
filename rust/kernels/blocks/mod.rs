//! llama.cpp's block encodings (GGUF's tensor types), dequantized a row at a time.
//!
//! `dequantize_scalar` is the reference, written from `ggml-common.h`'s block layouts (the same
//! floats as gguf-py's `gguf.quants.dequantize`, which the Python tests compare against). Every
//! type's row is a run of whole blocks (`BlockType::row_bytes`).

pub mod activation;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512_q4;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512_tiles32;
pub mod dot_i8;
#[cfg(target_arch = "x86_64")]
pub mod gemm_k_avx512;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon_k;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon_q4;
#[cfg(target_arch = "x86_64")]
pub(crate) mod tiles_avx512;

use half::f16;

use activation::BlockActivation;

use crate::kernels::affine::RowsOut;
use crate::weights::{BlockData, BlockType};

/// Dequantize one row: `bytes` is `kind.row_bytes(out.len())` bytes. Every version has this
/// signature.
pub type Dequantize = fn(BlockType, &[u8], &mut [f32]);

/// The fp16 value at `bytes[at..at + 2]`.
#[inline]
pub(crate) fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// The 6-bit scale and min of sub-block `j` (0..8) from a K-quant block's 12 packed bytes:
/// bytes 0-3 hold scales 0-3 (and the top bits of scales 4-7), bytes 4-7 mins 0-3 (and the top
/// bits of mins 4-7), bytes 8-11 the low nibbles of scales and mins 4-7.
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// `out` = the row's values, exactly (every block value is a product of fp16 and small
/// integers, computed in fp32 as llama.cpp's `dequantize_row_*` does).
pub fn dequantize_scalar(kind: BlockType, bytes: &[u8], out: &mut [f32]) {
    let (n, size) = (kind.elements(), kind.bytes());
    assert_eq!(Some(bytes.len()), kind.row_bytes(out.len()), "{}: row of {} values", kind.name(), out.len());
    for (block, y) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(n)) {
        match kind {
            BlockType::F16 => y[0] = half_at(block, 0),
            BlockType::Bf16 => y[0] = f32::from_bits((u16::from_le_bytes([block[0], block[1]]) as u32) << 16),
            BlockType::Q8_0 => {
                let d = half_at(block, 0);
                for (y, &q) in y.iter_mut().zip(&block[2..34]) {
                    *y = d * (q as i8) as f32;
                }
            }
            BlockType::Q4_0 => {
                let d = half_at(block, 0);
                for (j, &q) in block[2..18].iter().enumerate() {
                    y[j] = d * ((q & 0x0f) as i32 - 8) as f32;
                    y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
                }
            }
            BlockType::Q4_1 => {
                let (d, m) = (half_at(block, 0), half_at(block, 2));
                for (j, &q) in block[4..20].iter().enumerate() {
                    y[j] = d * (q & 0x0f) as f32 + m;
                    y[j + 16] = d * (q >> 4) as f32 + m;
                }
            }
            BlockType::Q4K | BlockType::Q5K => {
                let (d, dmin) = (half_at(block, 0), half_at(block, 2));
                let scales = &block[4..16];
                let (qh, qs) =
                    if kind == BlockType::Q5K { (&block[16..48], &block[48..176]) } else { (&[][..], &block[16..144]) };
                // Four 64-value chunks; each is sub-blocks 2c (low nibbles) and 2c + 1 (high).
                for c in 0..4 {
                    let q = &qs[32 * c..32 * c + 32];
                    for half in 0..2 {
                        let j = 2 * c + half;
                        let (sc, m) = scale_min_k4(j, scales);
                        let (d1, m1) = (d * sc as f32, dmin * m as f32);
                        for l in 0..32 {
                            let low = if half == 0 { q[l] & 0x0f } else { q[l] >> 4 };
                            let high = if qh.is_empty() { 0 } else { ((qh[l] >> j) & 1) << 4 };
                            y[64 * c + 32 * half + l] = d1 * (low | high) as f32 - m1;
                        }
                    }
                }
            }
            BlockType::Q6K => {
                let (ql, qh, sc) = (&block[0..128], &block[128..192], &block[192..208]);
                let d = half_at(block, 208);
                // Two 128-value halves; within one, value l + 32i takes nibble (i even: low,
                // odd: high) of ql[l + 32 * (i % 2)] and bits 2i..2i+1 of qh[l].
                for h in 0..2 {
                    let (ql, qh, sc, y) = (&ql[64 * h..], &qh[32 * h..], &sc[8 * h..], &mut y[128 * h..]);
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0f) | (qh[l] & 3) << 4) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0f) | ((qh[l] >> 2) & 3) << 4) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
    }
}

/// Rows `range` of a block matrix (K-quant, Q8_0, Q4_0 or Q4_1) of `cols` columns times each int8 activation of `acts`,
/// into `out` (token t, row r). Every version (one per type and instruction set) has this
/// signature.
///
/// # Safety (of every version)
/// The table that hands it out was made for this CPU and for `w.kind`; `range` is inside the
/// matrix, every activation has `cols` columns, `out` covers `acts.len()` tokens of `range`, and
/// no other task writes those outputs meanwhile.
pub type BlockRowsI8 = unsafe fn(&BlockData, usize, std::ops::Range<usize>, &[BlockActivation], RowsOut);

/// Q4_K or Q6_K rows times a batch of int16 activations (`gemm_k_avx512`).
///
/// # Safety
/// The table that hands it out was made for this CPU and for `w.kind`; `x` and `sums` were
/// made as `gemm_k_avx512::gemm` says, and `out` covers every token of the rows it computes,
/// written by no other task meanwhile.
#[cfg(target_arch = "x86_64")]
pub type BlockGemm = unsafe fn(
    &BlockData,
    usize,
    usize,
    usize,
    &crate::kernels::affine::activation::Int16Activations,
    &[f32],
    &mut crate::kernels::affine::gemm_i16_avx512::I16Buffers,
    RowsOut,
);

/// `BlockRowsI8`'s contract, checked in debug builds at the entry of every version.
#[inline(always)]
pub(crate) fn debug_check_rows(
    w: &BlockData,
    cols: usize,
    range: &std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: &RowsOut,
) {
    debug_assert!(w.kind.row_bytes(cols).is_some_and(|b| range.end * b <= w.values.len()));
    debug_assert!(acts.iter().all(|a| a.cols == cols) && out.covers(acts.len(), range));
}

/// Rows one token at a time: `dot` per row and token (the scalar references', and the NEON
/// kernels', which pass a `#[target_feature]` dot; inlined, so that call is direct).
///
/// # Safety
/// `BlockRowsI8`'s output contract, and `dot` may be called on a row of `w` and an activation
/// of `acts` (for a `#[target_feature]` dot: the CPU has its features).
#[inline(always)]
pub(crate) unsafe fn rows_with(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
    dot: unsafe fn(&[u8], &BlockActivation) -> f32,
) {
    debug_check_rows(w, cols, &range, acts, &out);
    let row_bytes = w.kind.row_bytes(cols).expect("validated when the file was read");
    for r in range {
        let row = &w.values[r * row_bytes..(r + 1) * row_bytes];
        for (t, act) in acts.iter().enumerate() {
            // SAFETY: the caller's output contract and its promise about `dot`.
            unsafe { out.write(t, r, dot(row, act)) };
        }
    }
}

/// `BlockRowsI8` for Q4_K with the scalar reference.
///
/// # Safety
/// `BlockRowsI8`'s contract.
pub(crate) unsafe fn rows_q4k_scalar(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: the caller's output contract.
    unsafe { rows_with(w, cols, range, acts, out, dot_i8::dot_q4k_scalar) }
}

/// `BlockRowsI8` for Q5_K with the scalar reference.
///
/// # Safety
/// `BlockRowsI8`'s contract.
pub(crate) unsafe fn rows_q5k_scalar(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: the caller's output contract.
    unsafe { rows_with(w, cols, range, acts, out, dot_i8::dot_q5k_scalar) }
}

/// `BlockRowsI8` for Q6_K with the scalar reference.
///
/// # Safety
/// `BlockRowsI8`'s contract.
pub(crate) unsafe fn rows_q6k_scalar(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: the caller's output contract.
    unsafe { rows_with(w, cols, range, acts, out, dot_i8::dot_q6k_scalar) }
}

/// `BlockRowsI8` for Q8_0 with the scalar reference.
///
/// # Safety
/// `BlockRowsI8`'s contract.
pub(crate) unsafe fn rows_q8_0_scalar(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: the caller's output contract.
    unsafe { rows_with(w, cols, range, acts, out, dot_i8::dot_q8_0_scalar) }
}

/// `BlockRowsI8` for Q4_0 with the scalar reference.
///
/// # Safety
/// `BlockRowsI8`'s contract.
pub(crate) unsafe fn rows_q4_0_scalar(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: the caller's output contract.
    unsafe { rows_with(w, cols, range, acts, out, dot_i8::dot_q4_0_scalar) }
}

/// `BlockRowsI8` for Q4_1 with the scalar reference.
///
/// # Safety
/// `BlockRowsI8`'s contract.
pub(crate) unsafe fn rows_q4_1_scalar(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: the caller's output contract.
    unsafe { rows_with(w, cols, range, acts, out, dot_i8::dot_q4_1_scalar) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: BlockType, block: &[u8]) -> Vec<f32> {
        let mut out = vec![f32::NAN; kind.elements()];
        dequantize_scalar(kind, block, &mut out);
        out
    }

    #[test]
    fn packed_scale_unpacking_equals_the_per_subblock_one() {
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..1000 {
            let packed: Vec<u8> = (0..12)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let (sc, m) = dot_i8::scales_mins_k4(&packed);
            let (sw, mw) = dot_i8::scales_mins_k4_words(&packed);
            assert_eq!((sw.to_le_bytes(), mw.to_le_bytes()), (sc, m), "{packed:?}");
        }
    }

    #[test]
    fn block_sizes_are_ggml_commons() {
        // sizeof(block_q4_0) = 2 + 32/2 ... sizeof(block_q6_K) = 128 + 64 + 16 + 2.
        let sizes: Vec<usize> = BlockType::ALL.iter().map(|k| k.bytes()).collect();
        assert_eq!(sizes, [2, 2, 34, 18, 20, 144, 176, 210]);
        assert_eq!(BlockType::Q4K.row_bytes(512), Some(288));
        assert_eq!(BlockType::Q4K.row_bytes(300), None);
        assert_eq!(BlockType::Q4_0.row_bytes(96), Some(54));
    }

    #[test]
    fn hand_computed_blocks() {
        // d = 0.5 (fp16 0x3800), dmin = 0.25 (0x3400).
        let mut q4_0 = vec![0x00, 0x38];
        q4_0.extend([0x21u8; 16]); // low nibble 1, high nibble 2
        let y = row(BlockType::Q4_0, &q4_0);
        assert_eq!((y[0], y[15], y[16], y[31]), (-3.5, -3.5, -3.0, -3.0)); // 0.5 * (1 - 8), 0.5 * (2 - 8)

        let mut q4_1 = vec![0x00, 0x38, 0x00, 0x34];
        q4_1.extend([0xf0u8; 16]);
        let y = row(BlockType::Q4_1, &q4_1);
        assert_eq!((y[0], y[16]), (0.25, 7.75)); // 0.5 * 0 + 0.25, 0.5 * 15 + 0.25

        let mut q8_0 = vec![0x00, 0x38];
        q8_0.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = row(BlockType::Q8_0, &q8_0);
        assert_eq!((y[0], y[31]), (-8.0, 7.5));

        // Q4_K: scale 2 and min 3 for sub-block 0 (byte 0 = 2, byte 4 = 3); sub-block 4's
        // scale is 5 | (top bits of byte 0 = 1) << 4 = 21, its min 6 | (top of byte 4 = 2) << 4.
        let mut q4k = vec![0x00, 0x38, 0x00, 0x34];
        let mut scales = [0u8; 12];
        scales[0] = 2 | (1 << 6);
        scales[4] = 3 | (2 << 6);
        scales[8] = 5 | (6 << 4);
        q4k.extend(scales);
        q4k.extend([0x97u8; 128]); // low nibble 7, high nibble 9
        let y = row(BlockType::Q4K, &q4k);
        assert_eq!(scale_min_k4(4, &scales), (21, 38));
        assert_eq!(y[0], 0.5 * 2.0 * 7.0 - 0.25 * 3.0); // sub-block 0, low nibbles
        assert_eq!(y[128], 0.5 * 21.0 * 7.0 - 0.25 * 38.0); // chunk 2's low half is sub-block 4
        assert_eq!(y[32], -0.0); // sub-block 1: scale 0, min 0

        // Q5_K: the same with every fifth bit of sub-block 0 set: q = 7 + 16.
        let mut q5k = q4k[..16].to_vec();
        q5k.extend([0x01u8; 32]);
        q5k.extend([0x97u8; 128]);
        assert_eq!(row(BlockType::Q5K, &q5k)[5], 0.5 * 2.0 * 23.0 - 0.25 * 3.0);

        // Q6_K: value 0 = ql[0] low | (qh[0] & 3) << 4, minus 32, times d * sc[0].
        let mut q6k = vec![0u8; 210];
        q6k[0] = 0x05;
        q6k[128] = 0x02;
        q6k[192] = 0xfe; // scale -2
        q6k[208..210].copy_from_slice(&[0x00, 0x38]);
        let y = row(BlockType::Q6K, &q6k);
        assert_eq!(y[0], 0.5 * -2.0 * ((5 | 2 << 4) - 32) as f32);
        assert_eq!(y[64], 0.0 * (0 - 32) as f32); // sub-block 4: scale 0

        assert_eq!(row(BlockType::Bf16, &[0x80, 0x3f]), [1.0]);
        assert_eq!(row(BlockType::F16, &[0x00, 0xc0]), [-2.0]);
    }

    #[test]
    fn q5k_scalar_dot_matches_dequantized_product() {
        // Two blocks of pseudo-random bytes with small finite f16 scales (0x2c00 = 1/16).
        let mut state = 0x2545_f491u32;
        let mut bytes: Vec<u8> = (0..2 * dot_i8::Q5K_BYTES)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        for block in bytes.chunks_exact_mut(dot_i8::Q5K_BYTES) {
            block[..4].copy_from_slice(&[0x00, 0x2c, 0x00, 0x28]);
        }
        let mut weights = vec![0.0f32; 512];
        for (block, out) in bytes.chunks_exact(dot_i8::Q5K_BYTES).zip(weights.chunks_exact_mut(256)) {
            dequantize_scalar(BlockType::Q5K, block, out);
        }
        let x: Vec<f32> = (0..512).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let mut act = BlockActivation::default();
        act.quantize(&x);
        let want: f64 = (0..512).map(|c| weights[c] as f64 * act.value(c) as f64).sum();
        let got = dot_i8::dot_q5k_scalar(&bytes, &act) as f64;
        assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{got} vs {want}");
    }
}
