//! Q8_0, Q4_0 and Q4_1 rows times one token's int8 activations on AVX-512 VNNI (`vpdpbusd`:
//! unsigned weight bytes times signed activation bytes; batches are `avx512_tiles32.rs`'s).
//! Eight blocks (256 values) make a step: their fp16 scales convert in one instruction, the
//! offsets of all eight are one FMA per token, and two blocks fill each 64-byte vector. Q8_0's
//! signed weights go in as `w + 128` (a sign-bit flip), and the 128 comes back out through the
//! activation's scaled block sums, as Q4_0's 8 and Q4_1's `m` do. Rows of a number of blocks
//! that is not a multiple of eight end with single blocks in 256-bit vectors.
//!
//! # Safety (every helper here)
//! As in `avx512.rs`: the helpers run inside the `rows_*` kernels (`avx512_tiles32.rs`), compiled with AVX-512 F, BW,
//! VL and VNNI and F16C, which the CPU has; a row is whole blocks and the activation has the
//! row's columns (32 values, one scale and one scaled sum per block).

use std::arch::x86_64::*;

use super::activation::BlockActivation;
use super::avx2::nibbles;
use super::avx512::PREFETCH_AHEAD;
use super::dot_i8::{Q4_0_BYTES, Q4_1_BYTES, Q8_0_BYTES};
use super::half_at;
use crate::kernels::simd_x86::{hsum_avx2, prefetch};

/// Blocks per step.
const STEP: usize = 8;

/// A 32-value block type: where its bytes are, how its weights become unsigned bytes, and
/// what each block adds besides `d * xd * idot` (`offset * xd * sum32`).
pub(super) trait SmallBlock {
    const BYTES: usize;
    /// # Safety
    /// The module's contract; `block` points at a whole block of the row.
    unsafe fn weights(block: *const u8) -> __m256i;
    /// The two blocks at `block` and `block + BYTES` in one vector.
    ///
    /// # Safety
    /// As `weights`, for both blocks.
    unsafe fn weights_pair(block: *const u8) -> __m512i;
    /// Per block, the factor of the activation's scaled sum, given the block's `d`.
    ///
    /// # Safety
    /// As `weights`.
    unsafe fn offset(block: &[u8], d: f32) -> f32;
    /// `offset` for eight blocks at `blocks` (a step), given their `d`.
    ///
    /// # Safety
    /// As `weights`, for the eight blocks.
    unsafe fn offsets(blocks: &[u8], d: __m256) -> __m256;
}

pub(super) struct Q80;
pub(super) struct Q40;
pub(super) struct Q41;

/// Two blocks' nibbles (16 bytes at `p` and at `p + stride`) as 64 unsigned bytes in value
/// order: [low(p), high(p), low(p + stride), high(p + stride)].
#[inline(always)]
unsafe fn nibbles_pair(p: *const u8, stride: usize) -> __m512i {
    // SAFETY: the module's contract; both 16-byte runs are inside the caller's blocks.
    unsafe {
        let both = _mm256_set_m128i(_mm_loadu_si128(p.add(stride) as *const _), _mm_loadu_si128(p as *const _));
        let lanes = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(both), _mm256_srli_epi16::<4>(both));
        // [low 0, low 1, high 0, high 1] to [low 0, high 0, low 1, high 1].
        _mm512_and_si512(_mm512_shuffle_i64x2::<0b11_01_10_00>(lanes, lanes), _mm512_set1_epi8(0x0f))
    }
}

impl SmallBlock for Q80 {
    const BYTES: usize = Q8_0_BYTES;
    #[inline(always)]
    unsafe fn weights(block: *const u8) -> __m256i {
        // SAFETY: bytes 2..34 are the block's weights.
        unsafe { _mm256_xor_si256(_mm256_loadu_si256(block.add(2) as *const _), _mm256_set1_epi8(-128)) }
    }
    #[inline(always)]
    unsafe fn weights_pair(block: *const u8) -> __m512i {
        // SAFETY: bytes 2..34 of each block are its weights.
        unsafe {
            let first = _mm256_loadu_si256(block.add(2) as *const _);
            let second = _mm256_loadu_si256(block.add(<Self as SmallBlock>::BYTES + 2) as *const _);
            let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(first), second);
            _mm512_xor_si512(both, _mm512_set1_epi8(-128))
        }
    }
    #[inline(always)]
    unsafe fn offset(_: &[u8], d: f32) -> f32 {
        -128.0 * d
    }
    #[inline(always)]
    unsafe fn offsets(_: &[u8], d: __m256) -> __m256 {
        // SAFETY: AVX per the module's contract.
        unsafe { _mm256_mul_ps(d, _mm256_set1_ps(-128.0)) }
    }
}

impl SmallBlock for Q40 {
    const BYTES: usize = Q4_0_BYTES;
    #[inline(always)]
    unsafe fn weights(block: *const u8) -> __m256i {
        // SAFETY: bytes 2..18 are the block's nibbles.
        unsafe { nibbles(block.add(2)) }
    }
    #[inline(always)]
    unsafe fn weights_pair(block: *const u8) -> __m512i {
        // SAFETY: bytes 2..18 of each block are its nibbles.
        unsafe { nibbles_pair(block.add(2), <Self as SmallBlock>::BYTES) }
    }
    #[inline(always)]
    unsafe fn offset(_: &[u8], d: f32) -> f32 {
        -8.0 * d
    }
    #[inline(always)]
    unsafe fn offsets(_: &[u8], d: __m256) -> __m256 {
        // SAFETY: AVX per the module's contract.
        unsafe { _mm256_mul_ps(d, _mm256_set1_ps(-8.0)) }
    }
}

impl SmallBlock for Q41 {
    const BYTES: usize = Q4_1_BYTES;
    #[inline(always)]
    unsafe fn weights(block: *const u8) -> __m256i {
        // SAFETY: bytes 4..20 are the block's nibbles.
        unsafe { nibbles(block.add(4)) }
    }
    #[inline(always)]
    unsafe fn weights_pair(block: *const u8) -> __m512i {
        // SAFETY: bytes 4..20 of each block are its nibbles.
        unsafe { nibbles_pair(block.add(4), <Self as SmallBlock>::BYTES) }
    }
    #[inline(always)]
    unsafe fn offset(block: &[u8], _: f32) -> f32 {
        half_at(block, 2)
    }
    #[inline(always)]
    unsafe fn offsets(blocks: &[u8], _: __m256) -> __m256 {
        // SAFETY: F16C per the module's contract; the eight `m` are read with bounds checks.
        unsafe { fp16_of_step(blocks, Q4_1_BYTES, 2) }
    }
}

/// The fp16 values at byte `at` of each of a step's eight `bytes`-byte blocks, as fp32 (F16C).
#[inline(always)]
unsafe fn fp16_of_step(blocks: &[u8], bytes: usize, at: usize) -> __m256 {
    let h = |j: usize| u16::from_le_bytes([blocks[bytes * j + at], blocks[bytes * j + at + 1]]);
    let bits: [u16; STEP] = [h(0), h(1), h(2), h(3), h(4), h(5), h(6), h(7)];
    // SAFETY: F16C per the module's contract; `bits` is 16 bytes.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr() as *const _)) }
}

/// The scalar references (`dot_q8_0_scalar` and the others) for `N` activations at once: per
/// step of eight blocks, four 64-byte vectors of weights unpacked once for all `N`.
#[inline(always)]
pub(super) unsafe fn dot_small<K: SmallBlock, const N: usize>(
    row: &[u8],
    first: usize,
    acts: &[BlockActivation],
) -> [f32; N] {
    debug_assert_eq!(acts.len(), N);
    debug_assert!(acts.iter().all(|a| (a.cols / 32 - first) * K::BYTES >= row.len()));
    let blocks = row.len() / K::BYTES;
    let steps = blocks / STEP;
    // SAFETY: the module's contract: every block loaded is one of the row's, and its 32
    // values, scale and scaled sum are inside each activation's arrays.
    unsafe {
        // Lanes 0-7 of pair p's vector are block 2p, lanes 8-15 block 2p + 1.
        // (No `std::array::from_fn` here: where the caller is large, as the tile driver's
        // kernels are, it is not inlined, nor then the intrinsics in its closure; in-cache
        // benchmark, one Q4_0 token 1.4 GMAC/s.)
        let pair = |a: i32, b: i32| _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
        let pick = [pair(0, 1), pair(2, 3), pair(4, 5), pair(6, 7)];
        let mut acc = [_mm512_setzero_ps(); N];
        let mut offsets = [_mm256_setzero_ps(); N];
        for s in 0..steps {
            let b0 = STEP * s;
            let base = row.as_ptr().add(b0 * K::BYTES);
            for line in (0..STEP * K::BYTES).step_by(64) {
                prefetch(base.wrapping_add(PREFETCH_AHEAD + line));
            }
            let step = &row[b0 * K::BYTES..(b0 + STEP) * K::BYTES];
            let d = fp16_of_step(step, <K as SmallBlock>::BYTES, 0);
            let off = K::offsets(step, d);
            let pair = |p: usize| K::weights_pair(base.add(2 * p * K::BYTES));
            let w = [pair(0), pair(1), pair(2), pair(3)];
            for (j, act) in acts.iter().enumerate().take(N) {
                offsets[j] =
                    _mm256_fmadd_ps(off, _mm256_loadu_ps(act.scaled_sums32.as_ptr().add(first + b0)), offsets[j]);
                let scaled = _mm512_castps256_ps512(_mm256_mul_ps(d, _mm256_loadu_ps(act.d.as_ptr().add(first + b0))));
                let x = act.q.as_ptr().add(32 * (first + b0));
                for p in 0..4 {
                    let i = _mm512_dpbusd_epi32(
                        _mm512_setzero_si512(),
                        w[p],
                        _mm512_loadu_si512(x.add(64 * p) as *const _),
                    );
                    acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_permutexvar_ps(pick[p], scaled), acc[j]);
                }
            }
        }
        let mut tail_acc = [_mm256_setzero_ps(); N];
        let mut tail_offsets = [0.0f32; N];
        for b in STEP * steps..blocks {
            let block = &row[b * K::BYTES..(b + 1) * K::BYTES];
            let d = half_at(block, 0);
            let (w, off) = (K::weights(block.as_ptr()), K::offset(block, d));
            for (j, act) in acts.iter().enumerate().take(N) {
                let x = _mm256_loadu_si256(act.q.as_ptr().add(32 * (first + b)) as *const _);
                let i = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x);
                tail_acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(d * act.d[first + b]), tail_acc[j]);
                tail_offsets[j] += off * act.scaled_sums32[first + b];
            }
        }
        let mut dots = [0.0; N];
        for (j, dot) in dots.iter_mut().enumerate() {
            *dot = _mm512_reduce_add_ps(acc[j]) + hsum_avx2(_mm256_add_ps(tail_acc[j], offsets[j])) + tail_offsets[j];
        }
        dots
    }
}
