//! Q4_K, Q5_K and Q6_K rows times int8 activations on aarch64 with the dot-product extension
//! (`sdot`: signed bytes times signed bytes, four products into each int32 lane). The K-quant
//! values are unsigned 0..32 (Q4_K, Q5_K) or 0..64 (Q6_K), so they are signed bytes as they
//! are; Q6_K's 32 is subtracted in the vector (-32..32, still a signed byte), so every
//! sub-block's integer dot product is exact, as in the scalar references, and only Q4_K's and
//! Q5_K's mins go through the activation's scaled sums. Per block the sub-blocks' `sdot` lanes
//! are summed pairwise into vectors of four sub-blocks, each scaled with one multiply-add.
//!
//! # Safety (every helper here)
//! The `#[inline(always)]` helpers run inside the `rows_*` kernels, compiled with NEON and
//! dotprod, which the CPU has (`Kernels::new` checks before it hands them out); a row is whole
//! blocks and the activation has the row's columns (256 values and eight scales per block).

use std::arch::aarch64::*;

use super::activation::BlockActivation;
use super::dot_i8::{scales_mins_k4_words, Q4K_BYTES, Q5K_BYTES, Q6K_BYTES};
use super::half_at;
use crate::kernels::affine::RowsOut;
use crate::kernels::simd_neon::sdot;
use crate::weights::BlockData;

/// `BlockRowsI8` for Q4_K.
///
/// # Safety
/// The CPU has NEON with the dot-product extension; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn rows_q4k(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { super::rows_with(w, cols, range, acts, out, dot_k4::<false>) }
}

/// `BlockRowsI8` for Q5_K.
///
/// # Safety
/// The CPU has NEON with the dot-product extension; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn rows_q5k(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { super::rows_with(w, cols, range, acts, out, dot_k4::<true>) }
}

/// `BlockRowsI8` for Q6_K.
///
/// # Safety
/// The CPU has NEON with the dot-product extension; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn rows_q6k(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { super::rows_with(w, cols, range, acts, out, dot_q6k) }
}

/// The 32 signed weights `w` (two 16-byte halves) times the activation's 32 values at `x`, in
/// the four lanes of one vector.
#[inline(always)]
unsafe fn idot32(w: (int8x16_t, int8x16_t), x: *const i8) -> int32x4_t {
    // SAFETY: dotprod per the module's contract; the caller's 32 values at x are inside the
    // activation.
    unsafe { sdot(sdot(vdupq_n_s32(0), w.0, vld1q_s8(x)), w.1, vld1q_s8(x.add(16))) }
}

/// The lane sums of four vectors, in that order: `[Σa, Σb, Σc, Σd]`.
#[inline(always)]
unsafe fn sums4(a: int32x4_t, b: int32x4_t, c: int32x4_t, d: int32x4_t) -> int32x4_t {
    // SAFETY: NEON per the module's contract.
    unsafe { vpaddq_s32(vpaddq_s32(a, b), vpaddq_s32(c, d)) }
}

/// Eight unsigned bytes (byte j of `word` is value j) as fp32, values 0..4 and 4..8.
#[inline(always)]
unsafe fn u8x8_to_f32(word: u64) -> (float32x4_t, float32x4_t) {
    // SAFETY: NEON per the module's contract.
    unsafe {
        let w = vmovl_u8(vcreate_u8(word));
        (vcvtq_f32_u32(vmovl_u16(vget_low_u16(w))), vcvtq_f32_u32(vmovl_high_u16(w)))
    }
}

/// Two unsigned byte vectors as signed ones (values below 128, so the same numbers).
#[inline(always)]
unsafe fn signed(v: (uint8x16_t, uint8x16_t)) -> (int8x16_t, int8x16_t) {
    // SAFETY: NEON per the module's contract.
    unsafe { (vreinterpretq_s8_u8(v.0), vreinterpretq_s8_u8(v.1)) }
}

/// `dot_q4k_scalar` (`FIFTH_BIT = false`) or `dot_q5k_scalar` (`true`: Q4_K's layout with the
/// 32 bytes `qh` between scales and nibbles, bit j of `qh[l]` adding 16 to value l of
/// sub-block j). Chunk c (32 nibble bytes) holds sub-blocks 2c (low nibbles) and 2c + 1
/// (high); two `sdot` per sub-block, and `d * sc[j]`, `dmin * m[j]` and the activation's
/// scales as two vectors of four sub-blocks.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_k4<const FIFTH_BIT: bool>(row: &[u8], act: &BlockActivation) -> f32 {
    let (block_bytes, qs) = if FIFTH_BIT { (Q5K_BYTES, 48) } else { (Q4K_BYTES, 16) };
    let (mask4, one, two) = (vdupq_n_u8(0x0f), vdupq_n_u8(1), vdupq_n_u8(2));
    let mut acc = vdupq_n_f32(0.0);
    for (b, block) in row.chunks_exact(block_bytes).enumerate() {
        let (d, dmin) = (half_at(block, 0), half_at(block, 2));
        let (sc, m) = scales_mins_k4_words(&block[4..16]);
        // SAFETY: the module's contract: the block's bytes (qh at 16..48 for Q5_K, the
        // nibbles from `qs`) are inside it, and its 256 values and 8 scales and scaled sums
        // (from 256 b and 8 b) are inside the activation.
        unsafe {
            let p = block.as_ptr();
            let x = act.q.as_ptr().add(256 * b);
            // Shifted right by 2 per chunk, so bits 0 and 1 are always sub-blocks 2c, 2c + 1.
            let mut qh = if FIFTH_BIT { (vld1q_u8(p.add(16)), vld1q_u8(p.add(32))) } else { (one, one) };
            let mut idots = [vdupq_n_s32(0); 8];
            for c in 0..4 {
                let (v0, v1) = (vld1q_u8(p.add(qs + 32 * c)), vld1q_u8(p.add(qs + 32 * c + 16)));
                let mut low = (vandq_u8(v0, mask4), vandq_u8(v1, mask4));
                let mut high = (vshrq_n_u8::<4>(v0), vshrq_n_u8::<4>(v1));
                if FIFTH_BIT {
                    let fifth = |v: uint8x16_t, h: uint8x16_t| {
                        (vorrq_u8(v, vshlq_n_u8::<4>(vandq_u8(h, one))), vshlq_n_u8::<3>(vandq_u8(h, two)))
                    };
                    let (l0, h0) = fifth(low.0, qh.0);
                    let (l1, h1) = fifth(low.1, qh.1);
                    low = (l0, l1);
                    high = (vorrq_u8(high.0, h0), vorrq_u8(high.1, h1));
                    qh = (vshrq_n_u8::<2>(qh.0), vshrq_n_u8::<2>(qh.1));
                }
                idots[2 * c] = idot32(signed(low), x.add(64 * c));
                idots[2 * c + 1] = idot32(signed(high), x.add(64 * c + 32));
            }
            let idots = (sums4(idots[0], idots[1], idots[2], idots[3]), sums4(idots[4], idots[5], idots[6], idots[7]));
            let (sc, m) = (u8x8_to_f32(sc), u8x8_to_f32(m));
            let (xd, sums) = (act.d.as_ptr().add(8 * b), act.scaled_sums32.as_ptr().add(8 * b));
            for (i, idot) in [(0, idots.0), (4, idots.1)] {
                let (sc, m) = if i == 0 { (sc.0, m.0) } else { (sc.1, m.1) };
                let scale = vmulq_f32(vmulq_n_f32(sc, d), vld1q_f32(xd.add(i)));
                acc = vfmaq_f32(acc, vcvtq_f32_s32(idot), scale);
                acc = vfmsq_f32(acc, vmulq_n_f32(m, dmin), vld1q_f32(sums.add(i)));
            }
        }
    }
    vaddvq_f32(acc)
}

/// `dot_q6k_scalar`: per 128-value half, value `l + 32k` takes nibble (k < 2: low, else high)
/// of `ql[l + 32 (k % 2)]` and bits 2k, 2k + 1 of `qh[l]` as its bits 4 and 5; minus 32 as a
/// signed byte, one `sdot` per 16-value sub-block, and `d * sc[s]` times the activation's
/// scales as four vectors of four sub-blocks.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_q6k(row: &[u8], act: &BlockActivation) -> f32 {
    let (mask4, thirty_two) = (vdupq_n_u8(0x0f), vdupq_n_s8(32));
    let mut acc = vdupq_n_f32(0.0);
    for (b, block) in row.chunks_exact(Q6K_BYTES).enumerate() {
        let d = half_at(block, 208);
        // SAFETY: the module's contract: ql (0..128), qh (128..192) and the scales (192..208)
        // are inside the block, and its 256 values and 8 scales (from 256 b and 8 b) inside
        // the activation.
        unsafe {
            let p = block.as_ptr();
            let x = act.q.as_ptr().add(256 * b);
            let mut idots = [vdupq_n_s32(0); 16];
            for h in 0..2 {
                let ql = [0, 16, 32, 48].map(|o| vld1q_u8(p.add(64 * h + o)));
                let qh = [0, 16].map(|o| vld1q_u8(p.add(128 + 32 * h + o)));
                for k in 0..4 {
                    for i in 0..2 {
                        // Bytes l = 16 i.. of the k-th 32 values: sub-block s = 8 h + 2 k + i.
                        let l = ql[2 * (k % 2) + i];
                        let low = if k < 2 { vandq_u8(l, mask4) } else { vshrq_n_u8::<4>(l) };
                        let top = match k {
                            0 => vshlq_n_u8::<4>(vandq_u8(qh[i], vdupq_n_u8(0x03))),
                            1 => vshlq_n_u8::<2>(vandq_u8(qh[i], vdupq_n_u8(0x0c))),
                            2 => vandq_u8(qh[i], vdupq_n_u8(0x30)),
                            _ => vshrq_n_u8::<2>(vandq_u8(qh[i], vdupq_n_u8(0xc0))),
                        };
                        let w = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low, top)), thirty_two);
                        let xv = vld1q_s8(x.add(128 * h + 32 * k + 16 * i));
                        idots[8 * h + 2 * k + i] = sdot(vdupq_n_s32(0), w, xv);
                    }
                }
            }
            // The 16 scales as fp32 times d, and the activation's scale of each sub-block
            // (one per two), four sub-blocks to a vector.
            let sc = vld1q_s8(p.add(192) as *const i8);
            let sc16 = [vmovl_s8(vget_low_s8(sc)), vmovl_high_s8(sc)];
            let xd = [vld1q_f32(act.d.as_ptr().add(8 * b)), vld1q_f32(act.d.as_ptr().add(8 * b + 4))];
            for v in 0..4 {
                let idot = sums4(idots[4 * v], idots[4 * v + 1], idots[4 * v + 2], idots[4 * v + 3]);
                let s = sc16[v / 2];
                let s = vcvtq_f32_s32(if v % 2 == 0 { vmovl_s16(vget_low_s16(s)) } else { vmovl_high_s16(s) });
                // Sub-blocks 4v..4v + 4 have activation scales 2v, 2v, 2v + 1, 2v + 1.
                let x = xd[v / 2];
                let x = if v % 2 == 0 { vzip1q_f32(x, x) } else { vzip2q_f32(x, x) };
                acc = vfmaq_f32(acc, vcvtq_f32_s32(idot), vmulq_f32(vmulq_n_f32(s, d), x));
            }
        }
    }
    vaddvq_f32(acc)
}
