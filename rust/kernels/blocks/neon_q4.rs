//! Q8_0, Q4_0 and Q4_1 rows times int8 activations on aarch64 with the dot-product extension
//! (`sdot`: signed bytes times signed bytes, four products into each int32 lane). Every block's
//! integer dot product is exact, as in the scalar references: Q4_0's nibbles have the 8
//! subtracted in the vector (they stay within int8), so only Q4_1's `m` goes through the
//! activation's scaled sums.
//!
//! # Safety (every helper here)
//! The `#[inline(always)]` helpers run inside the `rows_*` kernels, compiled with NEON and
//! dotprod, which the CPU has (`Kernels::new` checks before it hands them out); a row is whole
//! blocks and the activation has the row's columns (32 values and one scale per block).

use std::arch::aarch64::*;

use super::activation::BlockActivation;
use super::dot_i8::{Q4_0_BYTES, Q4_1_BYTES, Q8_0_BYTES};
use super::half_at;
use crate::kernels::affine::RowsOut;
use crate::kernels::simd_neon::sdot;
use crate::weights::BlockData;

/// `BlockRowsI8` for Q8_0.
///
/// # Safety
/// The CPU has NEON with the dot-product extension; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn rows_q8_0(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { super::rows_with(w, cols, range, acts, out, dot_q8_0) }
}

/// `BlockRowsI8` for Q4_0.
///
/// # Safety
/// The CPU has NEON with the dot-product extension; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn rows_q4_0(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { super::rows_with(w, cols, range, acts, out, dot_q4_0) }
}

/// `BlockRowsI8` for Q4_1.
///
/// # Safety
/// The CPU has NEON with the dot-product extension; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn rows_q4_1(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { super::rows_with(w, cols, range, acts, out, dot_q4_1) }
}

/// The 32 signed weights at `w` (two 16-byte halves) times the activation's 32 values at `x`.
#[inline(always)]
unsafe fn block_idot(low: int8x16_t, high: int8x16_t, x: *const i8) -> int32x4_t {
    // SAFETY: dotprod per the module's contract; the caller's 32 values at x are inside the
    // activation.
    unsafe { sdot(sdot(vdupq_n_s32(0), low, vld1q_s8(x)), high, vld1q_s8(x.add(16))) }
}

/// A 4-bit block's 16 nibble bytes at `p` as its values 0..16 (low nibbles) and 16..32 (high).
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    // SAFETY: NEON per the module's contract; the caller's 16 bytes at p are inside its block.
    unsafe {
        let v = vld1q_u8(p);
        (vandq_u8(v, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(v))
    }
}

/// `dot_q8_0_scalar`: per block two `sdot` of 16 weights each.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_q8_0(row: &[u8], act: &BlockActivation) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    for (b, block) in row.chunks_exact(Q8_0_BYTES).enumerate() {
        // SAFETY: the module's contract: the block's bytes 2..34 are its weights, and its 32
        // values are inside the activation.
        let idot = unsafe {
            let w = block.as_ptr().add(2) as *const i8;
            block_idot(vld1q_s8(w), vld1q_s8(w.add(16)), act.q.as_ptr().add(32 * b))
        };
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(idot), half_at(block, 0) * act.d[b]);
    }
    vaddvq_f32(acc)
}

/// `dot_q4_0_scalar`: the nibbles minus 8 as signed bytes, two `sdot` per block.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_q4_0(row: &[u8], act: &BlockActivation) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    for (b, block) in row.chunks_exact(Q4_0_BYTES).enumerate() {
        // SAFETY: the module's contract: the block's bytes 2..18 are its nibbles, and its 32
        // values are inside the activation.
        let idot = unsafe {
            let (low, high) = nibbles(block.as_ptr().add(2));
            let eight = vdupq_n_s8(8);
            let (low, high) = (vsubq_s8(vreinterpretq_s8_u8(low), eight), vsubq_s8(vreinterpretq_s8_u8(high), eight));
            block_idot(low, high, act.q.as_ptr().add(32 * b))
        };
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(idot), half_at(block, 0) * act.d[b]);
    }
    vaddvq_f32(acc)
}

/// `dot_q4_1_scalar`: the nibbles (0..16, so also signed bytes), two `sdot` per block, and `m`
/// times the activation's scaled block sum.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_q4_1(row: &[u8], act: &BlockActivation) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    let mut mins = 0.0f32;
    for (b, block) in row.chunks_exact(Q4_1_BYTES).enumerate() {
        // SAFETY: the module's contract: the block's bytes 4..20 are its nibbles, and its 32
        // values are inside the activation.
        let idot = unsafe {
            let (low, high) = nibbles(block.as_ptr().add(4));
            block_idot(vreinterpretq_s8_u8(low), vreinterpretq_s8_u8(high), act.q.as_ptr().add(32 * b))
        };
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(idot), half_at(block, 0) * act.d[b]);
        mins += half_at(block, 2) * act.scaled_sums32[b];
    }
    vaddvq_f32(acc) + mins
}
