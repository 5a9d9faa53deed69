//! Q4_K and Q6_K matrices interleaved 16 rows at a time: the layout of the AVX-512 decode
//! kernels (`avx512_x16.rs`), made from the file's blocks the first time a matrix is
//! multiplied (`BlockData::interleaved`).
//!
//! Why: in the file's layout a row kernel reduces each row's sums across a vector's lanes and
//! unpacks each block's 6-bit scales per row and token; AVX-512 Q4_K decoded at ~50 G
//! multiply-adds/s that way, a third of what `vpdpbusd` can do. Here one 64-byte load holds 4
//! bytes of each of 16 rows, so one `vpdpbusd` with the activation's 4 bytes broadcast
//! advances 16 rows at once, each in its own lane, and the scales are bytes ready to widen.
//! The interleaved copy has the file's size to within 3% (the unpacked 6-bit scales).
//!
//! A group of 16 rows is `blocks` (= cols / 256) runs of `BYTES`, one per 256 columns, and
//! group g's runs follow group g - 1's: a thread's range of groups is one linear stream.

use rayon::prelude::*;

use super::dot_i8::{q6k_value, scales_mins_k4, Q4K_BYTES, Q6K_BYTES};
use crate::weights::BlockType;

/// Rows per group: one per 32-bit lane of a 512-bit vector.
pub const ROWS: usize = 16;

/// A Q4_K group's run for 256 columns (`w = d * sc * q - dmin * m`, as in the file).
pub mod q4k {
    /// `[16]` fp16 `d`, one per row.
    pub const D: usize = 0;
    /// `[16]` fp16 `dmin`.
    pub const DMIN: usize = 32;
    /// `[8 sub-blocks][16 rows]` 6-bit scales as bytes.
    pub const SCALES: usize = 64;
    /// `[8 sub-blocks][16 rows]` 6-bit mins as bytes.
    pub const MINS: usize = 192;
    /// `[32 steps][16 rows][4]`: step s holds bytes `4 s .. 4 s + 4` of each row's 128 nibble
    /// bytes, so (as in the file) its low nibbles are values `64 (s / 8) + 4 (s % 8) + k` of
    /// sub-block `2 (s / 8)`, its high nibbles those values + 32, of sub-block `2 (s / 8) + 1`.
    pub const QS: usize = 320;
    pub const BYTES: usize = 2368;
}

/// A Q6_K group's run for 256 columns (`w = d * sc * (q - 32)`).
pub mod q6k {
    /// `[16]` fp16 `d`.
    pub const D: usize = 0;
    /// `[16 sub-blocks][16 rows]` int8 scales.
    pub const SCALES: usize = 32;
    /// `[32 steps][16 rows][4]`: byte k of step s holds the low 4 bits of value `4 s + k`
    /// (low nibble) and of value `128 + 4 s + k` (high nibble).
    pub const QL: usize = 288;
    /// `[16 steps][16 rows][4]`: byte k of step t holds the top 2 bits of values `8 t + k`
    /// (bits 0-1), `128 + 8 t + k` (2-3), `8 t + 4 + k` (4-5) and `128 + 8 t + 4 + k` (6-7):
    /// the values of QL's steps 2t and 2t + 1.
    pub const QH: usize = 2336;
    pub const BYTES: usize = 3360;
}

/// Bytes per group and 256 columns, for the types that have this layout.
pub fn group_bytes(kind: BlockType) -> Option<usize> {
    match kind {
        BlockType::Q4K => Some(q4k::BYTES),
        BlockType::Q6K => Some(q6k::BYTES),
        _ => None,
    }
}

/// The first `rows / 16 * 16` rows of a Q4_K or Q6_K matrix (`values` is `[rows, row_bytes]`
/// in the file's layout) interleaved; the rows past the last whole group stay in the file's
/// layout. Groups are made in parallel on the current rayon pool.
pub fn interleave(kind: BlockType, values: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let bytes = group_bytes(kind).expect("a type with an interleaved layout");
    let row_bytes = kind.row_bytes(cols).expect("whole blocks");
    assert!(values.len() >= rows * row_bytes, "interleave: {rows} rows need {} bytes", rows * row_bytes);
    let (groups, blocks) = (rows / ROWS, cols / 256);
    let mut packed = vec![0u8; groups * blocks * bytes];
    if packed.is_empty() {
        return packed;
    }
    packed.par_chunks_mut(blocks * bytes).enumerate().for_each(|(g, group)| {
        for (b, run) in group.chunks_exact_mut(bytes).enumerate() {
            for r in 0..ROWS {
                let at = (ROWS * g + r) * row_bytes;
                match kind {
                    BlockType::Q4K => pack_q4k(&values[at + b * Q4K_BYTES..][..Q4K_BYTES], r, run),
                    _ => pack_q6k(&values[at + b * Q6K_BYTES..][..Q6K_BYTES], r, run),
                }
            }
        }
    });
    packed
}

/// Row `r`'s Q4_K block into its group's run.
fn pack_q4k(block: &[u8], r: usize, run: &mut [u8]) {
    run[q4k::D + 2 * r..][..2].copy_from_slice(&block[0..2]);
    run[q4k::DMIN + 2 * r..][..2].copy_from_slice(&block[2..4]);
    let (sc, m) = scales_mins_k4(&block[4..16]);
    for j in 0..8 {
        run[q4k::SCALES + 16 * j + r] = sc[j];
        run[q4k::MINS + 16 * j + r] = m[j];
    }
    for s in 0..32 {
        run[q4k::QS + 64 * s + 4 * r..][..4].copy_from_slice(&block[16 + 4 * s..][..4]);
    }
}

/// Row `r`'s Q6_K block into its group's run.
fn pack_q6k(block: &[u8], r: usize, run: &mut [u8]) {
    run[q6k::D + 2 * r..][..2].copy_from_slice(&block[208..210]);
    for s in 0..16 {
        run[q6k::SCALES + 16 * s + r] = block[192 + s];
    }
    let value = |p: usize| q6k_value(block, p);
    for s in 0..32 {
        for k in 0..4 {
            run[q6k::QL + 64 * s + 4 * r + k] = (value(4 * s + k) & 15) | (value(128 + 4 * s + k) & 15) << 4;
        }
    }
    for t in 0..16 {
        for k in 0..4 {
            let top = |p: usize| value(p) >> 4;
            run[q6k::QH + 64 * t + 4 * r + k] =
                top(8 * t + k) | top(128 + 8 * t + k) << 2 | top(8 * t + 4 + k) << 4 | top(128 + 8 * t + 4 + k) << 6;
        }
    }
}

/// Row `r` of group `g`'s block `b` of an interleaved Q4_K matrix, for the test that
/// `interleave` keeps everything: `(d and dmin bytes, scales, mins, nibble bytes)`, the scales
/// and mins unpacked.
#[cfg(test)]
pub fn q4k_row_of(packed: &[u8], blocks: usize, g: usize, b: usize, r: usize) -> ([u8; 4], [u8; 8], [u8; 8], Vec<u8>) {
    let run = &packed[(g * blocks + b) * q4k::BYTES..][..q4k::BYTES];
    let d = [run[2 * r], run[2 * r + 1], run[q4k::DMIN + 2 * r], run[q4k::DMIN + 2 * r + 1]];
    let sc = std::array::from_fn(|j| run[q4k::SCALES + 16 * j + r]);
    let m = std::array::from_fn(|j| run[q4k::MINS + 16 * j + r]);
    let qs = (0..32).flat_map(|s| run[q4k::QS + 64 * s + 4 * r..][..4].to_vec()).collect();
    (d, sc, m, qs)
}

/// The 6-bit values (0..64) of row `r` of group `g`'s block `b` of an interleaved Q6_K matrix.
#[cfg(test)]
pub fn q6k_values_of(packed: &[u8], blocks: usize, g: usize, b: usize, r: usize) -> Vec<u8> {
    let run = &packed[(g * blocks + b) * q6k::BYTES..][..q6k::BYTES];
    let mut values = vec![0u8; 256];
    for s in 0..32 {
        for k in 0..4 {
            let byte = run[q6k::QL + 64 * s + 4 * r + k];
            let top = run[q6k::QH + 64 * (s / 2) + 4 * r + k] >> (4 * (s % 2));
            values[4 * s + k] = (byte & 15) | (top & 3) << 4;
            values[128 + 4 * s + k] = (byte >> 4) | ((top >> 2) & 3) << 4;
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value, scale and min of every row comes back from the interleaved copy (two
    /// whole groups and 5 rows left in the file's layout, 3 runs per group).
    #[test]
    fn interleave_keeps_every_rows_values() {
        let (rows, cols) = (37usize, 768usize);
        let mut state = 0x1e7u64;
        let mut byte = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u8
        };
        for kind in [BlockType::Q4K, BlockType::Q6K] {
            let values: Vec<u8> = (0..rows * kind.row_bytes(cols).unwrap()).map(|_| byte()).collect();
            let packed = interleave(kind, &values, rows, cols);
            let (blocks, row_bytes) = (cols / 256, kind.row_bytes(cols).unwrap());
            assert_eq!(packed.len(), rows / ROWS * blocks * group_bytes(kind).unwrap());
            for g in 0..rows / ROWS {
                for b in 0..blocks {
                    for r in 0..ROWS {
                        let block = &values[(ROWS * g + r) * row_bytes + b * kind.bytes()..][..kind.bytes()];
                        if kind == BlockType::Q4K {
                            let (d, sc, m, qs) = q4k_row_of(&packed, blocks, g, b, r);
                            assert_eq!(d[..], block[0..4]);
                            assert_eq!((sc, m), scales_mins_k4(&block[4..16]));
                            assert_eq!(qs[..], block[16..144]);
                        } else {
                            let want: Vec<u8> = (0..256).map(|p| q6k_value(block, p)).collect();
                            assert_eq!(q6k_values_of(&packed, blocks, g, b, r), want, "g {g} b {b} r {r}");
                            let run = &packed[(g * blocks + b) * q6k::BYTES..];
                            assert_eq!(run[2 * r..2 * r + 2], block[208..210]);
                            assert!((0..16).all(|s| run[q6k::SCALES + 16 * s + r] == block[192 + s]));
                        }
                    }
                }
            }
        }
    }
}
