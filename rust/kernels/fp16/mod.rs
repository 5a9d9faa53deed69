//! fp16 conversion in bulk: 4-bit scales stored as fp16, and the fp16 KV cache.
//!
//! One value's conversion is the `half` crate's (round to nearest even, as numpy's
//! `astype(float16)` and F16C's `vcvtps2ph` round), built without `std` so it is the software
//! one on every CPU. The bulk versions here use it one value at a time; `f16c` converts eight
//! per instruction. The table (`Kernels`) picks one.

#[cfg(target_arch = "x86_64")]
pub(crate) mod f16c;

use half::f16;

/// Little-endian fp16 bytes (`[2 * out.len()]`) to fp32: every version has this signature.
pub type F16ToF32 = fn(&[u8], &mut [f32]);
/// fp32 to fp16, rounded to nearest even: every version has this signature.
pub type F32ToF16 = fn(&[f32], &mut [f16]);

/// `out[i]` = the fp16 value at `bytes[2i..2i + 2]` (little-endian), exactly, over the shorter
/// of the two: the reference.
pub fn f16_to_f32_scalar(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    }
}

/// `out[i] = f16::from_f32(values[i])` over the shorter of the two: the reference.
pub fn f32_to_f16_scalar(values: &[f32], out: &mut [f16]) {
    for (o, &v) in out.iter_mut().zip(values) {
        *o = f16::from_f32(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{Isa, Kernels};

    fn to_f32(bits: u16) -> f32 {
        f16::from_bits(bits).to_f32()
    }

    fn to_f16(value: f32) -> u16 {
        let mut out = [f16::ZERO];
        f32_to_f16_scalar(&[value], &mut out);
        out[0].to_bits()
    }

    #[test]
    fn f16_to_f32_hand_computed() {
        assert_eq!(to_f32(0x3c00), 1.0);
        assert_eq!(to_f32(0xc000), -2.0);
        assert_eq!(to_f32(0x3555), 0.333_251_95); // 1365/4096
        assert_eq!(to_f32(0x7bff), 65504.0);
        assert_eq!(to_f32(0x0400), 2f32.powi(-14)); // smallest normal
        assert_eq!(to_f32(0x0001), 2f32.powi(-24)); // smallest subnormal
        assert_eq!(to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(to_f32(0x7c00), f32::INFINITY);
        assert!(to_f32(0x7e00).is_nan());
    }

    #[test]
    fn f32_to_f16_hand_computed() {
        assert_eq!(to_f16(1.0), 0x3c00);
        assert_eq!(to_f16(-2.0), 0xc000);
        assert_eq!(to_f16(65504.0), 0x7bff);
        assert_eq!(to_f16(65520.0), 0x7c00); // halfway to 2^16: ties to even, which overflows
        assert_eq!(to_f16(65519.0), 0x7bff);
        assert_eq!(to_f16(1e6), 0x7c00);
        assert_eq!(to_f16(f32::NEG_INFINITY), 0xfc00);
        assert_eq!(to_f16(f32::NAN) & 0x7e00, 0x7e00);
        assert_eq!(to_f16(-0.0), 0x8000);
        // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to the even 1.
        assert_eq!(to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02); // ties up to even
        assert_eq!(to_f16(1.0 + 2f32.powi(-11) + 2f32.powi(-20)), 0x3c01); // above half
        assert_eq!(to_f16(2f32.powi(-24)), 0x0001); // smallest subnormal
        assert_eq!(to_f16(2f32.powi(-25)), 0x0000); // half of it: ties to even zero
        assert_eq!(to_f16(1.5 * 2f32.powi(-25)), 0x0001);
        assert_eq!(to_f16(1023.0 * 2f32.powi(-24)), 0x03ff);
        assert_eq!(to_f16(1023.5 * 2f32.powi(-24)), 0x0400); // rounds up into the normals
        assert_eq!(to_f16(2f32.powi(-14)), 0x0400);
        assert_eq!(to_f16(1e-30), 0x0000);
        assert_eq!(to_f16(0.1), 0x2e66); // numpy: float16(0.1).view(uint16)
    }

    #[test]
    fn f32_to_f16_round_trips_and_rounds_to_nearest() {
        for h in 0..=u16::MAX {
            let v = to_f32(h);
            if v.is_nan() {
                continue;
            }
            assert_eq!(to_f16(v), h, "{h:#06x}");
            // Just above and below every finite value still round to it (the gaps are much wider).
            if v.is_finite() && v != 0.0 {
                assert_eq!(to_f16(f32::from_bits(v.to_bits() + 1)), h, "{h:#06x} up");
                assert_eq!(to_f16(f32::from_bits(v.to_bits() - 1)), h, "{h:#06x} down");
            }
        }
    }

    /// Every table's bulk conversions against the scalar ones: all 65536 fp16 patterns one way
    /// (an odd count, so the tail after the 8-wide steps runs too), every 4099th fp32 pattern
    /// the other (normals, subnormals, overflow, ties).
    #[test]
    fn every_table_converts_like_the_scalar_reference() {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
        let n = 65535;
        let values: Vec<f32> =
            (0..=u32::MAX / 4099).map(|i| f32::from_bits(i * 4099)).filter(|v| !v.is_nan()).collect();
        for isa in Isa::available() {
            let k = Kernels::new(isa, true).unwrap();
            let mut out = vec![0.0f32; n];
            (k.f16_to_f32)(&bytes[..2 * n], &mut out);
            for (h, v) in (0..n as u32).zip(&out) {
                let expected = to_f32(h as u16);
                assert!(v.to_bits() == expected.to_bits() || (v.is_nan() && expected.is_nan()), "{h:#06x} {isa:?}");
            }
            let mut halves = vec![f16::ZERO; values.len()];
            (k.f32_to_f16)(&values, &mut halves);
            for (v, h) in values.iter().zip(&halves) {
                assert_eq!(h.to_bits(), to_f16(*v), "{:#010x} {isa:?}", v.to_bits());
            }
        }
    }
}
