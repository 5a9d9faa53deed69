//! aarch64 kernels with the dot-product extension (`sdot`, ARMv8.2 and later: Apple M1 on,
//! AWS Graviton 2 on, Ampere Altra): 4-bit weights times int8 activations, and Q8_0. Chosen at
//! run time (`Isa::Neon`) and tested against the scalar references like the x86 ones (run
//! under qemu-aarch64 on an x86 machine: see the README).
//!
//! Hot loops live in `#[inline(always)]` helpers called from `#[target_feature]` functions,
//! never inside closures (a closure would be compiled without the features).

#![allow(clippy::missing_safety_doc)]

use std::arch::aarch64::*;

use super::act::{Int8Activation, CHUNK, RESIDUAL_BITS};
use super::{zero_term, AffineRow};

/// `acc + dot4(a, b)` per 32-bit lane (`sdot`): four int8 products summed into each lane.
/// Written as assembly because the `vdotq_s32` intrinsic is not stable Rust yet.
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    std::arch::asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// One 4-bit row times one int8 activation (with its residual), as `scalar::dot_q4_i8`
/// computes it: 16 weight bytes (32 columns, one activation block) per step.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_q4_i8_neon(row: AffineRow, act: &Int8Activation) -> f32 {
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

/// runq.c's Q8_0 row dot product for groups of a multiple of 16: the integer sum of each
/// group with `sdot`, then the float part in group order (bit-identical to the reference).
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_q8_neon(w: &[i8], w_scales: &[f32], x: &[i8], x_scales: &[f32], group_size: usize) -> f32 {
    let mut sum = 0.0f32;
    for g in 0..w.len() / group_size {
        let mut acc = vdupq_n_s32(0);
        let mut k = g * group_size;
        while k < (g + 1) * group_size {
            acc = sdot(acc, vld1q_s8(w.as_ptr().add(k)), vld1q_s8(x.as_ptr().add(k)));
            k += 16;
        }
        sum += vaddvq_s32(acc) as f32 * w_scales[g] * x_scales[g];
    }
    sum
}
