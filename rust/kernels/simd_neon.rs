//! Inline helpers shared by the aarch64 kernels of every family, written once.

use std::arch::aarch64::*;

/// `acc + dot4(a, b)` per 32-bit lane (`sdot`): four int8 products summed into each lane.
/// Written as assembly because the `vdotq_s32` intrinsic is not stable Rust yet.
///
/// # Safety
/// The CPU has the dot-product extension (`Kernels::new` checks it before any NEON kernel runs).
#[inline(always)]
pub(crate) unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `sdot` only reads and writes the three vector registers named; the CPU has the
    // instruction per this function's contract.
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}
