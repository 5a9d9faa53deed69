//! 4-bit rows times int8 activations on aarch64 with the dot-product extension (`sdot`,
//! ARMv8.2 and later: Apple M1 on, AWS Graviton 2 on, Ampere Altra). Chosen at run time and
//! tested against the scalar reference like the x86 kernels (under qemu-aarch64 on an x86
//! machine: see the README).

use std::arch::aarch64::*;

use super::activation::{Int8Activation, CHUNK, RESIDUAL_BITS};
use super::{zero_term, AffineRow};
use crate::kernels::simd_neon::sdot;

/// One 4-bit row times one int8 activation (with its residual), as `dot_i8_scalar`
/// computes it: 16 weight bytes (32 columns, one activation block) per step.
///
/// # Safety
/// The CPU has NEON with the dot-product extension; `row` is a 4-bit row of `act.cols`
/// columns (`row.values` holds `act.cols.div_ceil(2)` bytes).
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn dot_i8(row: AffineRow, act: &Int8Activation) -> f32 {
    debug_assert!(row.bits == 4 && row.cols == act.cols && row.values.len() == row.cols.div_ceil(2));
    debug_assert!(!row.scales.is_empty() && row.zeros.len() == row.scales.len());
    // SAFETY: step h reads weight bytes [16h, 16h + 16) only when they are inside the row (else
    // a zero-padded copy), and activation bytes below (h / 4 + 1) * CHUNK <= act.padded
    // (the activation is padded to whole chunks of the row's columns); dotprod per the contract.
    unsafe {
        let gs = row.group_size;
        let n_groups = row.scales.len();
        let steps = row.values.len().div_ceil(16);
        let low4 = vdupq_n_u8(0x0f);
        let (xp, rp) = (act.interleaved.as_ptr(), act.residual_interleaved.as_ptr());
        let units = act.lane_units.as_ptr();
        let mut acc = vdupq_n_f32(0.0);
        let mut tail = [0u8; 16];
        for h in 0..steps {
            let start = h * 16;
            let remaining = row.values.len() - start;
            let wv = if remaining >= 16 {
                vld1q_u8(row.values.as_ptr().add(start))
            } else {
                tail[..remaining].copy_from_slice(&row.values[start..]);
                vld1q_u8(tail.as_ptr())
            };
            // Nibbles are 0..15, so they are the same as signed bytes.
            let lo = vreinterpretq_s8_u8(vandq_u8(wv, low4));
            let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(wv));
            // Step h covers columns 32h.. of chunk c = h / 4: its even columns sit at
            // c*128 + (h%4)*16 of the interleaved activation, its odd ones 64 further.
            let offset = (h / 4) * CHUNK + (h % 4) * 16;
            let (xe, xo) = (vld1q_s8(xp.add(offset)), vld1q_s8(xp.add(offset + 64)));
            let (re, ro) = (vld1q_s8(rp.add(offset)), vld1q_s8(rp.add(offset + 64)));
            // Lane i: the 4 even and 4 odd columns 32h + 8i .. 32h + 8i + 7.
            let idot = sdot(sdot(vdupq_n_s32(0), lo, xe), hi, xo);
            let rdot = sdot(sdot(vdupq_n_s32(0), lo, re), hi, ro);
            // idot * 256 + rdot: the dot product in units of d / 256, exact in i32.
            let combined = vaddq_s32(vshlq_n_s32::<{ RESIDUAL_BITS as i32 }>(idot), rdot);
            let dot = vmulq_f32(vcvtq_f32_s32(combined), vld1q_f32(units.add(4 * h)));
            let first_col = 32 * h;
            let s = if gs >= 32 || gs >= row.cols {
                vdupq_n_f32(row.scales[(first_col / gs).min(n_groups - 1)])
            } else {
                // Groups of 8 or 16 columns: a scale per lane.
                let lanes = [0, 1, 2, 3].map(|i| row.scales[((first_col + 8 * i) / gs).min(n_groups - 1)]);
                vld1q_f32(lanes.as_ptr())
            };
            acc = vfmaq_f32(acc, dot, s);
        }
        vaddvq_f32(acc) - zero_term(&row, act.group_sums())
    }
}
