//! Q4_0, Q4_1 and Q8_0 batches on AVX-512 VNNI through the K-quants' tile driver
//! (`tiles_avx512.rs`): eight 32-value blocks are one 256-value block there, and a token's share
//! of them one record. The weights are unpacked in an order where each of a vector's 16 dword
//! lanes holds 16 values of one block in all four vectors (`Eight::LANES`), so a token's four
//! `vpdpbusd` of the eight blocks add up in one register, started from the type's integer
//! offset (Q4_0's `-8 * sum`, Q8_0's `-128 * sum` of the lane's 16 activation values), and are
//! converted and scaled once: one conversion, multiply and FMA per 256 values and token, as
//! Q6_K's tiles. The row driver this replaces took four tokens per pass from each token's
//! `BlockActivation` and converted, permuted the scales and added per pair of blocks (four
//! times per 256 values and token). In-cache benchmark (512 x 2048, one thread), GMAC/s, the
//! two interleaved in one binary, at 2, 4, 8, 16 and 128 tokens: Q4_0 43, 56, 56, 54, 45-53 ->
//! 50-65, 64-87, 85-100, 86-98, 70-96; Q4_1 41, 55, 54, 54, 45 -> 57, 82, 98, 97, 66-85; Q8_0
//! 49, 61, 60, 60, 47-50 -> 60, 78-83, 95, 87, 69-78 (the machine was shared: ranges are runs).
//! One token stays on `avx512_q4.rs`'s kernel (`dot_small`): Q4_0 32.3 GMAC/s, as before.
//!
//! # Safety (every helper here)
//! As in `avx512.rs`: the helpers run inside the `rows_*` kernels, compiled with AVX-512 F, BW,
//! VL and VNNI and F16C, which the CPU has; a row is whole 32-value blocks, a group of eight
//! (`Eight::BYTES`) read in place when whole and from a zero-padded copy when not (a row's
//! last, where its blocks are not a multiple of eight); a tile's records hold every group of
//! the row for each of its tokens.

use std::arch::x86_64::*;

use super::activation::BlockActivation;
use super::avx512::{dot_block, prefetch_ahead, transpose4, TileDot};
use super::avx512_q4::{dot_small, SmallBlock, Q40, Q41, Q80};
use super::dot_i8::{Q4_0_BYTES, Q4_1_BYTES, Q8_0_BYTES};
use super::tiles_avx512::{rows_k, KQuant, Record, EMPTY_RECORD};
use crate::kernels::affine::RowsOut;
use crate::weights::BlockData;

/// `BlockRowsI8` for Q4_0: one token row by row (`dot_small`), a batch in tiles.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI, and F16C; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub(crate) unsafe fn rows_q4_0(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { rows_k::<Q40x8>(w, cols, range, acts, out) }
}

/// `BlockRowsI8` for Q4_1 (as `rows_q4_0`).
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI, and F16C; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub(crate) unsafe fn rows_q4_1(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { rows_k::<Q41x8>(w, cols, range, acts, out) }
}

/// `BlockRowsI8` for Q8_0 (as `rows_q4_0`).
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI, and F16C; otherwise `BlockRowsI8`'s contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub(crate) unsafe fn rows_q8_0(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    // SAFETY: compiled with the helpers' features; the rest is the caller's contract.
    unsafe { rows_k::<Q80x8>(w, cols, range, acts, out) }
}

/// Eight blocks of a 32-value type as the tile driver's block.
trait Eight {
    type Small: SmallBlock;
    /// Bytes of eight blocks.
    const BYTES: usize;
    /// Which records `stage` makes (`KQuant::LAYOUT`).
    const LAYOUT: u64;
    /// The integer each weight enters `vpdpbusd` above its value (Q4_0's 8, Q8_0's 128: a
    /// lane's sum starts at minus it times the lane's activation sum), 0 for Q4_1.
    const OFFSET: i32;
    /// Q4_1: each block's `m` times its scaled sum, added per token (`Unpacked::mins`).
    const MINS: bool;
    /// Per dword lane `l` (0..16) of the unpacked vectors: which of the eight blocks, and which
    /// half of its 32 values, it holds (values `16 half + 4 t .. + 4` in vector t); and what
    /// the weights there are multiplied by (16 where high nibbles are left in place).
    const LANES: [(usize, usize, i32); 16];
    /// `LANES`' blocks and the inverses of their multipliers, for `lane_scales`.
    const PICK: [i32; 16] = lane_blocks(Self::LANES);
    const INVERSE: [f32; 16] = lane_inverses(Self::LANES);
    /// # Safety
    /// The module's contract; `p` points at eight whole blocks.
    unsafe fn unpack(p: *const u8) -> Unpacked;
}

/// Eight blocks for `vpdpbusd`: the weights in `Eight::lane`'s order, each lane's weight
/// scale (`d`, over the lane's multiplier), and Q4_1's eight `m`.
struct Unpacked {
    w: [__m512i; 4],
    scale: __m512,
    mins: __m256,
}

struct Q40x8;
struct Q41x8;
struct Q80x8;

/// Q4_0's and Q4_1's lanes: a 128-bit lane L of four blocks' 16 nibble bytes each in two
/// vectors (blocks 0-3 and 4-7), dword t of each picked into vector t (`vshufps`), low and
/// high nibbles masked in place: dword u of lane L is block L + 4 (u / 2), low nibbles (values
/// 0..16) for even u, high ones (16..32, times 16) for odd.
const NIBBLE_LANES: [(usize, usize, i32); 16] = {
    let mut lanes = [(0, 0, 1); 16];
    let mut l = 0;
    while l < 16 {
        let (lane, u) = (l / 4, l % 4);
        lanes[l] = (lane + 4 * (u / 2), u % 2, if u % 2 == 1 { 16 } else { 1 });
        l += 1;
    }
    lanes
};

/// `Eight::PICK`.
const fn lane_blocks(lanes: [(usize, usize, i32); 16]) -> [i32; 16] {
    let mut pick = [0; 16];
    let mut l = 0;
    while l < 16 {
        pick[l] = lanes[l].0 as i32;
        l += 1;
    }
    pick
}

/// `Eight::INVERSE`.
const fn lane_inverses(lanes: [(usize, usize, i32); 16]) -> [f32; 16] {
    let mut inverse = [0.0; 16];
    let mut l = 0;
    while l < 16 {
        inverse[l] = 1.0 / lanes[l].2 as f32;
        l += 1;
    }
    inverse
}

/// The 16-bit words at byte `at` of eight `bytes`-byte blocks at `p`, as fp32 (F16C).
#[inline(always)]
unsafe fn halves(p: *const u8, bytes: usize, at: usize) -> __m256 {
    // SAFETY: the caller's eight blocks hold the words; F16C per the module's contract.
    unsafe {
        let h = |k: usize| (p.add(bytes * k + at) as *const i16).read_unaligned();
        _mm256_cvtph_ps(_mm_setr_epi16(h(0), h(1), h(2), h(3), h(4), h(5), h(6), h(7)))
    }
}

/// The lane scales of `d` (one per block, as fp32) in `E::lane`'s order.
#[inline(always)]
unsafe fn lane_scales<E: Eight>(d: __m256) -> __m512 {
    // SAFETY: AVX-512 F (the module's contract); the loads are of 16-element arrays.
    unsafe {
        let idx = _mm512_loadu_si512(E::PICK.as_ptr() as *const _);
        let inv = _mm512_loadu_ps(E::INVERSE.as_ptr());
        _mm512_mul_ps(_mm512_permutexvar_ps(idx, _mm512_castps256_ps512(d)), inv)
    }
}

/// Eight Q4_0 or Q4_1 blocks (`bytes` each, nibbles at `qs`) in `nibble_lane`'s order.
#[inline(always)]
unsafe fn unpack_nibbles(p: *const u8, bytes: usize, qs: usize) -> [__m512i; 4] {
    // SAFETY: each 16-byte load is one block's nibbles, inside the caller's eight blocks.
    unsafe {
        let lane = |k: usize| _mm_loadu_si128(p.add(bytes * k + qs) as *const _);
        let four = |k: usize| {
            let v = _mm512_inserti32x4::<1>(_mm512_castsi128_si512(lane(k)), lane(k + 1));
            _mm512_castsi512_ps(_mm512_inserti32x4::<3>(_mm512_inserti32x4::<2>(v, lane(k + 2)), lane(k + 3)))
        };
        let (a, b) = (four(0), four(4));
        let mask = _mm512_set4_epi32(0xf0f0_f0f0u32 as i32, 0x0f0f_0f0f, 0xf0f0_f0f0u32 as i32, 0x0f0f_0f0f);
        let nibble = |v: __m512| _mm512_and_si512(_mm512_castps_si512(v), mask);
        [
            nibble(_mm512_shuffle_ps::<0x00>(a, b)),
            nibble(_mm512_shuffle_ps::<0x55>(a, b)),
            nibble(_mm512_shuffle_ps::<0xaa>(a, b)),
            nibble(_mm512_shuffle_ps::<0xff>(a, b)),
        ]
    }
}

impl Eight for Q40x8 {
    type Small = Q40;
    const BYTES: usize = 8 * Q4_0_BYTES;
    const LAYOUT: u64 = 2;
    const OFFSET: i32 = 8;
    const MINS: bool = false;
    const LANES: [(usize, usize, i32); 16] = NIBBLE_LANES;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> Unpacked {
        // SAFETY: the caller's eight blocks; the module's features.
        unsafe {
            let scale = lane_scales::<Self>(halves(p, Q4_0_BYTES, 0));
            Unpacked { w: unpack_nibbles(p, Q4_0_BYTES, 2), scale, mins: _mm256_setzero_ps() }
        }
    }
}

impl Eight for Q41x8 {
    type Small = Q41;
    const BYTES: usize = 8 * Q4_1_BYTES;
    const LAYOUT: u64 = 3;
    const OFFSET: i32 = 0;
    const MINS: bool = true;
    const LANES: [(usize, usize, i32); 16] = NIBBLE_LANES;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> Unpacked {
        // SAFETY: the caller's eight blocks; the module's features.
        unsafe {
            let scale = lane_scales::<Self>(halves(p, Q4_1_BYTES, 0));
            Unpacked { w: unpack_nibbles(p, Q4_1_BYTES, 4), scale, mins: halves(p, Q4_1_BYTES, 2) }
        }
    }
}

impl Eight for Q80x8 {
    type Small = Q80;
    const BYTES: usize = 8 * Q8_0_BYTES;
    const LAYOUT: u64 = 4;
    const OFFSET: i32 = 128;
    const MINS: bool = false;
    /// Blocks 2v and 2v + 1 in vector v's halves, transposed per 128-bit lane
    /// (`transpose4`): dword u of lane L is block 2u + L / 2, half L % 2.
    const LANES: [(usize, usize, i32); 16] = {
        let mut lanes = [(0, 0, 1); 16];
        let mut l = 0;
        while l < 16 {
            let (lane, u) = (l / 4, l % 4);
            lanes[l] = (2 * u + lane / 2, lane % 2, 1);
            l += 1;
        }
        lanes
    };
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> Unpacked {
        // SAFETY: each 32-byte load is one block's weights, inside the caller's eight blocks.
        unsafe {
            let block = |k: usize| _mm256_loadu_si256(p.add(Q8_0_BYTES * k + 2) as *const _);
            // Signed weights as unsigned bytes, w + 128 (a sign-bit flip).
            let pair = |v: usize| {
                let pair = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(block(2 * v)), block(2 * v + 1));
                _mm512_xor_si512(pair, _mm512_set1_epi8(-128))
            };
            let w = [pair(0), pair(1), pair(2), pair(3)];
            let scale = lane_scales::<Self>(halves(p, Q8_0_BYTES, 0));
            Unpacked { w: transpose4(w), scale, mins: _mm256_setzero_ps() }
        }
    }
}

/// Group `g` (blocks `8 g..8 g + 8`) of `act` as `E`'s record: the values in `E::lane`'s
/// order, each lane's activation scale, and the integer offsets of the lanes (Q4_1: the eight
/// scaled sums, as fp32 bits). Blocks past the row are zeros.
fn stage<E: Eight>(act: &BlockActivation, g: usize, record: &mut Record) {
    let blocks = act.cols / 32;
    *record = EMPTY_RECORD;
    for (l, &(k, half, times)) in E::LANES.iter().enumerate() {
        let b = 8 * g + k;
        if b >= blocks {
            continue;
        }
        for t in 0..4 {
            let at = 32 * b + 16 * half + 4 * t;
            record.q[64 * t + 4 * l..64 * t + 4 * l + 4].copy_from_slice(&act.q[at..at + 4]);
        }
        record.scales[l] = act.d[b];
        record.extra[l] = (-E::OFFSET * times * act.sums16[2 * b + half]) as u32;
    }
    if E::MINS {
        for (k, e) in record.extra.iter_mut().enumerate() {
            *e = act.scaled_sums32.get(8 * g + k).filter(|_| k < 8).map_or(0, |s| s.to_bits());
        }
    }
}

/// `N` tokens' dot products of a row's groups of eight blocks (`row`, the last group maybe
/// short) with their records at `tile` (`[group][N]`).
///
/// # Safety
/// The module's contract; `tile` has `N` records of each group of `row`.
#[inline(always)]
unsafe fn dot_eight_tile<E: Eight, const N: usize>(row: &[u8], tile: *const Record, ahead: isize) -> [f32; N] {
    let mut pad = [0u8; 8 * Q8_0_BYTES];
    debug_assert!(E::BYTES <= pad.len() && row.len().is_multiple_of(E::BYTES / 8));
    // SAFETY: the module's contract: each group's bytes are inside the row (or the padded
    // copy), and its N records at tile + N g (the caller's).
    unsafe {
        let mut acc = [_mm512_setzero_ps(); N];
        let mut mins = [_mm256_setzero_ps(); N];
        for (g, group) in row.chunks(E::BYTES).enumerate() {
            prefetch_ahead(group, ahead);
            let p = if group.len() == E::BYTES {
                group.as_ptr()
            } else {
                pad[..group.len()].copy_from_slice(group);
                pad.as_ptr()
            };
            let u = E::unpack(p);
            let records = tile.add(N * g);
            for j in 0..N {
                let r = records.add(j);
                let extra = std::ptr::addr_of!((*r).extra);
                let init = if E::MINS { _mm512_setzero_si512() } else { _mm512_load_si512(extra as *const _) };
                let i = dot_block(init, &u.w, std::ptr::addr_of!((*r).q) as *const i8);
                let scaled = _mm512_mul_ps(u.scale, _mm512_load_ps(std::ptr::addr_of!((*r).scales) as *const f32));
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), scaled, acc[j]);
                if E::MINS {
                    mins[j] = _mm256_fmadd_ps(u.mins, _mm256_load_ps(extra as *const f32), mins[j]);
                }
            }
        }
        let mut dots = [0.0; N];
        for (j, dot) in dots.iter_mut().enumerate() {
            *dot = _mm512_reduce_add_ps(_mm512_add_ps(acc[j], _mm512_zextps256_ps512(mins[j])));
        }
        dots
    }
}

macro_rules! tiled {
    ($eight:ty) => {
        impl TileDot for $eight {
            const VALUES: usize = 256;
            const BYTES: usize = <$eight as Eight>::BYTES;
            #[inline(always)]
            unsafe fn dot<const N: usize>(row: &[u8], first: usize, acts: &[BlockActivation]) -> [f32; N] {
                // SAFETY: the caller's (the module's) contract; `first` counts 256-value blocks.
                unsafe { dot_small::<<$eight as Eight>::Small, N>(row, 8 * first, acts) }
            }
        }

        impl KQuant for $eight {
            const LAYOUT: u64 = <$eight as Eight>::LAYOUT;
            fn stage(act: &BlockActivation, b: usize, record: &mut Record) {
                stage::<$eight>(act, b, record)
            }
            #[inline(always)]
            unsafe fn dot_tile<const N: usize>(row: &[u8], tile: *const Record, ahead: isize) -> [f32; N] {
                // SAFETY: the caller's (the module's) contract.
                unsafe { dot_eight_tile::<$eight, N>(row, tile, ahead) }
            }
        }
    };
}

tiled!(Q40x8);
tiled!(Q41x8);
tiled!(Q80x8);
