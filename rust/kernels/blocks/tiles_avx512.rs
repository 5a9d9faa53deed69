//! The AVX-512 tile driver of the int8 block kernels: a batch of tokens in tiles of up to
//! `K_TOKENS`, each tile's activations first copied into records (`[block][token]`, made once
//! per thread and batch), rows in groups of `GROUP` and pieces whose records stay in L1. The
//! K-quants (`avx512.rs`) and the 32-value types (`avx512_tiles32.rs`, eight blocks to a
//! record) run through it.
//!
//! # Safety (every helper here)
//! As in `avx512.rs`: the helpers run inside the `rows_*` kernels, compiled with AVX-512 F,
//! BW, VL, VNNI and F16C, which the CPU has; a tile's records hold every block of the row for
//! each of its tokens.

use super::activation::BlockActivation;
use super::avx512::{write, TileDot, PREFETCH_AHEAD};
use crate::kernels::affine::RowsOut;
use crate::kernels::simd_x86::piece_ahead;
use crate::kernels::staging::Staged;
use crate::weights::BlockData;

/// Tokens per pass of the K-quant kernels over a row: a block's weights and scales are
/// unpacked once for all of them. Batched decoding runs a handful of tokens through every
/// matrix, where unpacking was a large part of the work. In-cache benchmark (512 x 2048, one
/// thread), GMAC/s at 8 and 16 tokens: 4 tokens per pass reading each token's
/// `BlockActivation`, Q4_K 79 and 79, Q6_K 79 and 75; 8 per pass that way, 74-76 (three
/// pointer loads per token and block, and the `take(N)` loops merged into one with a branch
/// per token); 8 per pass from records, Q4_K 106 and 106, Q6_K 98 and 97. One token: 51-52
/// and 42-43 either way (the path is unchanged).
pub(super) const K_TOKENS: usize = 8;

/// Rows per group: a piece's records are read once from L2 for them all.
const GROUP: usize = 32;

/// One token's share of one 256-value block (or of eight 32-value blocks, `avx512_tiles32.rs`),
/// as the tile kernels read it: the values
/// in the kernel's lane order, their 16 lane scales, and 16 words the type adds (Q4_K and Q5_K:
/// the 8 scaled sums of the 32-value blocks, for the mins; Q6_K: `-32 * sums16` in lane order,
/// the start of the integer sum). A tile's records are `[block][token]`, so a block's tokens
/// are one run from one pointer and the kernel loads nothing per token but its data (with one
/// activation struct per token it loaded three pointers per token and block).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(super) struct Record {
    pub q: [i8; 256],
    pub scales: [f32; 16],
    pub extra: [u32; 16],
}

/// Records a tile's pass over a group of rows reads (`[block][token]`, a chunk of blocks of
/// all its tokens): 64 records are 24 KB, which stay in the 32 KB L1 while the group's rows
/// stream past. In-cache benchmark, 512 x 4096, GMAC/s for 2, 4 and 8 tokens, Q4_K: chunks of
/// 2048 columns 73, 93, 101; 4096: 82, 100, 65 (49 KB of records for 8 tokens); 1024: 64,
/// 85, 92 (the per-row work of each chunk); Q6_K alike.
const L1_RECORDS: usize = 64;

pub(super) const EMPTY_RECORD: Record = Record { q: [0; 256], scales: [0.0; 16], extra: [0; 16] };

thread_local! {
    /// The thread's records of the batch it ran last (every tile's, one after another).
    static TILE: std::cell::Cell<Staged<Record>> = const { std::cell::Cell::new(Staged::new()) };
}

/// A type of 256-value blocks for the tile driver (a K-quant, or eight blocks of a 32-value
/// type, `avx512_tiles32.rs`): how a token's block becomes a record, and `N` tokens' dot
/// products of a row's blocks against their records.
pub(super) trait KQuant: TileDot {
    /// Which records `stage` makes (types that make the same ones share a number).
    const LAYOUT: u64;
    /// Block `b` of `act` as this type's record (of a 32-value type, the last block may be
    /// short of 256 columns: the rest of the record is zeros).
    fn stage(act: &BlockActivation, b: usize, record: &mut Record);
    /// `N` tokens' dot products of the blocks in `row` (whole blocks, but for a 32-value
    /// type's last, which may be fewer than eight of its blocks) with the records at
    /// `tile` (`[block][N]`, one block per block of `row`), asking for the bytes `ahead` past
    /// each block (a hint: any distance is safe).
    ///
    /// # Safety
    /// The module's contract; `tile` points at `N * row.len().div_ceil(BYTES)` records.
    unsafe fn dot_tile<const N: usize>(row: &[u8], tile: *const Record, ahead: isize) -> [f32; N];
}

/// Rows `range` of a K-quant matrix times `acts`: one token row by row in one piece; more in
/// tiles of up to `K_TOKENS` (as even as they come: 9 tokens are 5 + 4, not 8 + 1), each
/// staged as records (`rows_tile`).
///
/// # Safety
/// The module's contract and `BlockRowsI8`'s.
#[inline(always)]
pub(super) unsafe fn rows_k<K: KQuant>(
    w: &BlockData,
    cols: usize,
    range: std::ops::Range<usize>,
    acts: &[BlockActivation],
    out: RowsOut,
) {
    super::debug_check_rows(w, cols, &range, acts, &out);
    // A 32-value type's rows may end in part of a 256-value block (its own blocks are whole).
    let blocks = cols.div_ceil(K::VALUES);
    let row_bytes = w.kind.row_bytes(cols).expect("validated when the file was read");
    if acts.len() == 1 {
        // One token's activations fit in L1 whole: each row in one piece, no sums to keep
        // (in one piece 5% faster than through the sums below, in-cache benchmark).
        for r in range {
            let row = &w.values[r * row_bytes..(r + 1) * row_bytes];
            // SAFETY: the row and activation have the same columns (the module's contract),
            // and the output is the caller's (`BlockRowsI8`'s contract).
            unsafe { write(&out, 0, r, &K::dot::<1>(row, 0, acts)) };
        }
        return;
    }
    let per_tile = acts.len().div_ceil(acts.len().div_ceil(K_TOKENS));
    // Tile i's records from `blocks * i * per_tile` on, made once per thread and batch.
    let mut staged = TILE.take();
    if !staged.current(K::LAYOUT, acts, |a| a.generation) {
        staged.records.clear();
        staged.records.resize(blocks * acts.len(), EMPTY_RECORD);
        for (tile, acts) in staged.records.chunks_mut(blocks * per_tile).zip(acts.chunks(per_tile)) {
            for (b, records) in tile.chunks_exact_mut(acts.len()).enumerate() {
                for (record, act) in records.iter_mut().zip(acts) {
                    K::stage(act, b, record);
                }
            }
        }
    }
    for (i, (tile, acts)) in staged.records.chunks(blocks * per_tile).zip(acts.chunks(per_tile)).enumerate() {
        let (n, t0) = (acts.len(), i * per_tile);
        // SAFETY: `tile` holds `n` records of every block of the row; the rest is the caller's.
        unsafe {
            match n {
                1 => rows_tile::<K, 1>(w, row_bytes, range.clone(), tile, &out, t0),
                2 => rows_tile::<K, 2>(w, row_bytes, range.clone(), tile, &out, t0),
                3 => rows_tile::<K, 3>(w, row_bytes, range.clone(), tile, &out, t0),
                4 => rows_tile::<K, 4>(w, row_bytes, range.clone(), tile, &out, t0),
                5 => rows_tile::<K, 5>(w, row_bytes, range.clone(), tile, &out, t0),
                6 => rows_tile::<K, 6>(w, row_bytes, range.clone(), tile, &out, t0),
                7 => rows_tile::<K, 7>(w, row_bytes, range.clone(), tile, &out, t0),
                _ => rows_tile::<K, 8>(w, row_bytes, range.clone(), tile, &out, t0),
            }
        }
    }
    TILE.set(staged);
}

/// Rows `range` times the `N` tokens of `tile` (`[block][N]` records of whole rows), written
/// as tokens `t0..t0 + N`: `L1_RECORDS / N` blocks (a piece) of a group of `GROUP` rows at a
/// time, so the piece's records stay in L1 while the group's rows stream past.
///
/// # Safety
/// The module's contract and `BlockRowsI8`'s output contract for those tokens; `tile` has
/// `N` records of each of the row's blocks.
#[inline(always)]
unsafe fn rows_tile<K: KQuant, const N: usize>(
    w: &BlockData,
    row_bytes: usize,
    range: std::ops::Range<usize>,
    tile: &[Record],
    out: &RowsOut,
    t0: usize,
) {
    let blocks = row_bytes.div_ceil(K::BYTES);
    debug_assert!(tile.len() == blocks * N);
    let chunk = (L1_RECORDS / N).max(1);
    let chunks = blocks.div_ceil(chunk);
    // Pieces (a chunk of a row) are read in the order of the loops below, which is not the
    // matrix's when rows are longer than a chunk: ask for the piece this far ahead in that
    // order, `PREFETCH_AHEAD` bytes or so (`piece_ahead`). (Each block asking for the bytes
    // 6 KB past it, as one token's pass does, missed the next pieces: 16384 x 4096 Q4_K from
    // memory, 8 tokens, 74 GMAC/s against 105 in cache.)
    let ahead = PREFETCH_AHEAD.div_ceil(chunk.min(blocks) * K::BYTES);
    for group in range.clone().step_by(GROUP) {
        let group = group..(group + GROUP).min(range.end);
        let mut sums = [[0.0f32; N]; GROUP];
        for (c, first) in (0..blocks).step_by(chunk).enumerate() {
            let end = (first + chunk).min(blocks);
            let records = tile[first * N..end * N].as_ptr();
            for (i, (r, sums)) in group.clone().zip(&mut sums).enumerate() {
                let (visit, here) = (c * group.len() + i + ahead, r * row_bytes + first * K::BYTES);
                let distance = piece_ahead(row_bytes, K::BYTES * chunk, chunks, &range, &group, GROUP, visit, here);
                let row = &w.values[here..r * row_bytes + (end * K::BYTES).min(row_bytes)];
                // SAFETY: blocks first..end of the row, and their N records each.
                let part = unsafe { K::dot_tile::<N>(row, records, distance) };
                for (s, p) in sums.iter_mut().zip(part) {
                    *s += p;
                }
            }
        }
        for (r, sums) in group.zip(&sums) {
            // SAFETY: the caller's output contract.
            unsafe { write(out, t0, r, sums) };
        }
    }
}
