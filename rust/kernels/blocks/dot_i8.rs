//! Block rows times int8 activations (`BlockActivation`): the scalar references of the SIMD
//! row kernels. Per (sub-)block the integer dot product is exact; the float part applies the
//! weight scale and the activation's block scale, and subtracts the mins (Q4_K, Q4_1) or the
//! offsets (Q6_K's -32, Q4_0's -8) through the activation's integer sums.

use super::activation::BlockActivation;
use super::{half_at, scale_min_k4};

/// Bytes per Q4_K and Q6_K block (256 values).
pub const Q4K_BYTES: usize = 144;
pub const Q6K_BYTES: usize = 210;
/// Bytes per Q5_K block: Q4_K's layout with 32 bytes of fifth bits between scales and nibbles.
pub const Q5K_BYTES: usize = 176;
/// Bytes per Q8_0, Q4_0 and Q4_1 block (32 values, one activation block each).
pub const Q8_0_BYTES: usize = 34;
pub const Q4_0_BYTES: usize = 18;
pub const Q4_1_BYTES: usize = 20;

/// The 6-bit scales and mins of a Q4_K/Q5_K block's 8 sub-blocks.
#[inline]
pub fn scales_mins_k4(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        (sc[j], m[j]) = scale_min_k4(j, packed);
    }
    (sc, m)
}

/// `scales_mins_k4` as two words of eight bytes (sub-block j in byte j), computed with a few
/// 32-bit operations instead of a loop with a branch: the SIMD kernels' version.
#[inline(always)]
pub fn scales_mins_k4_words(packed: &[u8]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let (low6, low4, top2) = (0x3f3f_3f3fu32, 0x0f0f_0f0fu32, 0x0303_0303u32);
    let scales_hi = (w2 & low4) | (((w0 >> 6) & top2) << 4);
    let mins_hi = ((w2 >> 4) & low4) | (((w1 >> 6) & top2) << 4);
    ((w0 & low6) as u64 | (scales_hi as u64) << 32, (w1 & low6) as u64 | (mins_hi as u64) << 32)
}

/// A Q4_K row (`[blocks * 144]`) times `act`.
pub fn dot_q4k_scalar(row: &[u8], act: &BlockActivation) -> f32 {
    let mut sum = 0.0f32;
    for (b, block) in row.chunks_exact(Q4K_BYTES).enumerate() {
        let (d, dmin) = (half_at(block, 0), half_at(block, 2));
        let (sc, m) = scales_mins_k4(&block[4..16]);
        let qs = &block[16..144];
        for j in 0..8 {
            // Sub-block j: the low (even j) or high (odd j) nibbles of 32-byte chunk j / 2.
            let chunk = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            let x = &act.q[256 * b + 32 * j..256 * b + 32 * j + 32];
            let idot: i32 = chunk
                .iter()
                .zip(x)
                .map(|(&byte, &x)| (if j % 2 == 0 { byte & 0x0f } else { byte >> 4 }) as i32 * x as i32)
                .sum();
            let xd = act.d[8 * b + j];
            sum += d * sc[j] as f32 * xd * idot as f32 - dmin * m[j] as f32 * xd * act.sum32(8 * b + j) as f32;
        }
    }
    sum
}

/// A Q5_K row (`[blocks * 176]`) times `act`: Q4_K's sum, each value's fifth bit (bit j of
/// `qh[l]` for value l of sub-block j) adding 16.
pub fn dot_q5k_scalar(row: &[u8], act: &BlockActivation) -> f32 {
    let mut sum = 0.0f32;
    for (b, block) in row.chunks_exact(Q5K_BYTES).enumerate() {
        let (d, dmin) = (half_at(block, 0), half_at(block, 2));
        let (sc, m) = scales_mins_k4(&block[4..16]);
        let (qh, qs) = (&block[16..48], &block[48..176]);
        for j in 0..8 {
            let chunk = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            let x = &act.q[256 * b + 32 * j..256 * b + 32 * j + 32];
            let idot: i32 = (0..32)
                .map(|l| {
                    let low = if j % 2 == 0 { chunk[l] & 0x0f } else { chunk[l] >> 4 };
                    let high = (qh[l] >> j) & 1;
                    (low | high << 4) as i32 * x[l] as i32
                })
                .sum();
            let xd = act.d[8 * b + j];
            sum += d * sc[j] as f32 * xd * idot as f32 - dmin * m[j] as f32 * xd * act.sum32(8 * b + j) as f32;
        }
    }
    sum
}

/// The unsigned 6-bit value at position `p` (0..256) of a Q6_K block (`q - 32` is the weight).
#[inline]
pub fn q6k_value(block: &[u8], p: usize) -> u8 {
    let (h, k, l) = (p / 128, (p % 128) / 32, p % 32);
    let low = block[64 * h + 32 * (k % 2) + l];
    let low = if k < 2 { low & 0x0f } else { low >> 4 };
    let high = (block[128 + 32 * h + l] >> (2 * k)) & 3;
    low | high << 4
}

/// A Q6_K row (`[blocks * 210]`) times `act`: sub-block s (16 values) has scale `d * sc[s]`.
pub fn dot_q6k_scalar(row: &[u8], act: &BlockActivation) -> f32 {
    let mut sum = 0.0f32;
    for (b, block) in row.chunks_exact(Q6K_BYTES).enumerate() {
        let d = half_at(block, 208);
        for s in 0..16 {
            let idot: i32 = (16 * s..16 * s + 16).map(|p| q6k_value(block, p) as i32 * act.q[256 * b + p] as i32).sum();
            let offset = 32 * act.sums16[16 * b + s];
            let scale = d * (block[192 + s] as i8) as f32 * act.d[8 * b + s / 2];
            sum += scale * (idot - offset) as f32;
        }
    }
    sum
}

/// A Q8_0 row (`[blocks * 34]`: fp16 d, 32 signed bytes) times `act`.
pub fn dot_q8_0_scalar(row: &[u8], act: &BlockActivation) -> f32 {
    let mut sum = 0.0f32;
    for (b, block) in row.chunks_exact(Q8_0_BYTES).enumerate() {
        let x = &act.q[32 * b..32 * b + 32];
        let idot: i32 = block[2..34].iter().zip(x).map(|(&w, &x)| (w as i8) as i32 * x as i32).sum();
        sum += half_at(block, 0) * act.d[b] * idot as f32;
    }
    sum
}

/// The integer dot product of a 4-bit block's 16 nibble bytes (low nibbles: values 0..16,
/// high: 16..32) with the activation's 32 values, the nibbles taken as unsigned 0..16.
#[inline]
fn nibble_dot(nibbles: &[u8], x: &[i8]) -> i32 {
    nibbles.iter().enumerate().map(|(j, &q)| (q & 0x0f) as i32 * x[j] as i32 + (q >> 4) as i32 * x[j + 16] as i32).sum()
}

/// A Q4_0 row (`[blocks * 18]`: fp16 d, 16 bytes of nibbles, value `d * (q - 8)`) times `act`.
pub fn dot_q4_0_scalar(row: &[u8], act: &BlockActivation) -> f32 {
    let mut sum = 0.0f32;
    for (b, block) in row.chunks_exact(Q4_0_BYTES).enumerate() {
        let idot = nibble_dot(&block[2..18], &act.q[32 * b..32 * b + 32]);
        sum += half_at(block, 0) * act.d[b] * (idot - 8 * act.sum32(b)) as f32;
    }
    sum
}

/// A Q4_1 row (`[blocks * 20]`: fp16 d and m, 16 bytes of nibbles, value `d * q + m`) times
/// `act`.
pub fn dot_q4_1_scalar(row: &[u8], act: &BlockActivation) -> f32 {
    let mut sum = 0.0f32;
    for (b, block) in row.chunks_exact(Q4_1_BYTES).enumerate() {
        let idot = nibble_dot(&block[4..20], &act.q[32 * b..32 * b + 32]);
        let (d, m) = (half_at(block, 0), half_at(block, 2));
        sum += d * act.d[b] * idot as f32 + m * act.scaled_sums32[b];
    }
    sum
}
