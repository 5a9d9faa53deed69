//! 4-bit rows times a batch of int8 activations on AVX-512 VNNI (batched decoding, short
//! prompts): each 64-byte chunk of a row is unpacked once for up to `TOKENS` tokens, where
//! the one-token kernel (`avx512_decode`) unpacked it again for every token. The products are
//! that kernel's (`chunk_dot_full_avx512`: `idot * 256 + rdot`, scaled once per chunk), the
//! activations first copied into records, one run per chunk (`Record`), once per thread and
//! batch (`staging`).
//!
//! One thread, GMAC/s, per token / tiles: 512 x 2048 group 128 in cache, 2 tokens 38-40 / 44,
//! 4 to 16 tokens 38-40 / 49-53; 32768 x 2048 from memory, 2 tokens 27 / 27, 3 30-37 /
//! 36-44, 4 38 / 39-49. The limit is the two pipes `vpdpbusd` shares with the float
//! multiplies on Zen 4: per chunk and token 4 `vpdpbusd`, a multiply and an FMA (a loop of
//! just those reaches the bound, 78 GMAC/s at 3.65 GHz). Two rows per pass, each record
//! loaded once for both, measured the same (52 against 52), so one row at a time.
//!
//! # Safety (every helper here)
//! As in `avx512_decode.rs`: the helpers run inside `rows_gfni` / `rows_plain`, compiled with
//! AVX-512 F, BW, VL and VNNI, which the CPU has; a row's `values`
//! are `cols.div_ceil(2)` bytes, every activation is padded to whole 128-column chunks of the
//! same `cols`, and a row's `scales` / `zeros` hold one value per group.

use std::arch::x86_64::*;

use super::activation::{Int8Activation, CHUNK};
use super::avx512_decode::{
    chunk_dot_full_avx512, row_with_f32_scales, zero_term_avx512, ActChunk, Q4Plan, PREFETCH_AHEAD,
};
use super::{AffineRow, AffineRows, RowsOut};
use crate::kernels::simd_x86::{piece_ahead, prefetch};
use crate::kernels::staging::Staged;

/// Tokens per pass over a row (a batch of more runs in passes as even as they come: 9 tokens
/// are 5 + 4, not 8 + 1).
const TOKENS: usize = 8;

/// Rows per group: a pass reads a piece of each of the group's rows, then the next piece.
const GROUP: usize = 32;

/// One token's share of one 128-column chunk, as the tile kernel reads it: the even and odd
/// columns' values and residuals, and the lane units (lane scale / 256). A tile's records are
/// `[chunk][token]`, so a chunk's tokens are one run from one pointer.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Record {
    xe: [i8; 64],
    xo: [i8; 64],
    re: [i8; 64],
    ro: [i8; 64],
    units: [f32; 16],
}

const EMPTY_RECORD: Record = Record { xe: [0; 64], xo: [0; 64], re: [0; 64], ro: [0; 64], units: [0.0; 16] };

/// Records a pass over a group of rows reads (a piece of chunks of all the tile's tokens): 72
/// records are 23 KB, which stay in the 32 KB L1 while the group's rows stream past.
const L1_RECORDS: usize = 72;

thread_local! {
    /// The thread's records of the batch it ran last (every tile's, one after another).
    static TILE: std::cell::Cell<Staged<Record>> = const { std::cell::Cell::new(Staged::new()) };
}

/// `RowsI8` for two or more tokens (`avx512_decode::rows_*` send them here).
///
/// # Safety
/// The module's contract and `RowsI8`'s; `acts.len() >= 1`.
#[inline(always)]
pub(super) unsafe fn rows(
    rows: &AffineRows,
    range: std::ops::Range<usize>,
    acts: &[Int8Activation],
    scale_buffer: &mut Vec<f32>,
    out: RowsOut,
) {
    let chunks = acts[0].padded / CHUNK;
    let groups = rows.n_groups();
    if scale_buffer.len() < groups {
        scale_buffer.resize(groups, 0.0);
    }
    let per_tile = acts.len().div_ceil(acts.len().div_ceil(TOKENS));
    // Tile i's records from `chunks * i * per_tile` on, made once per thread and batch.
    let mut staged = TILE.take();
    if !staged.current(0, acts, |a| a.generation) {
        staged.records.clear();
        staged.records.resize(chunks * acts.len(), EMPTY_RECORD);
        for (tile, acts) in staged.records.chunks_mut(chunks * per_tile).zip(acts.chunks(per_tile)) {
            for (c, records) in tile.chunks_exact_mut(acts.len()).enumerate() {
                for (record, act) in records.iter_mut().zip(acts) {
                    let (at, values) = (c * CHUNK, CHUNK / 2);
                    record.xe.copy_from_slice(&act.interleaved[at..at + values]);
                    record.xo.copy_from_slice(&act.interleaved[at + values..at + CHUNK]);
                    record.re.copy_from_slice(&act.residual_interleaved[at..at + values]);
                    record.ro.copy_from_slice(&act.residual_interleaved[at + values..at + CHUNK]);
                    record.units.copy_from_slice(&act.lane_units[16 * c..16 * (c + 1)]);
                }
            }
        }
    }
    for (i, (tile, acts)) in staged.records.chunks(chunks * per_tile).zip(acts.chunks(per_tile)).enumerate() {
        let n = acts.len();
        let pass = Pass { rows, range: range.clone(), tile, acts, out: &out, t0: i * per_tile };
        let buffer = &mut scale_buffer[..groups];
        // SAFETY: `tile` holds `n` records of every chunk; the rest is the caller's.
        unsafe {
            match n {
                1 => pass.run::<1>(buffer),
                2 => pass.run::<2>(buffer),
                3 => pass.run::<3>(buffer),
                4 => pass.run::<4>(buffer),
                5 => pass.run::<5>(buffer),
                6 => pass.run::<6>(buffer),
                7 => pass.run::<7>(buffer),
                _ => pass.run::<8>(buffer),
            }
        }
    }
    TILE.set(staged);
}

/// One tile's pass over rows `range`: its records (`[chunk][token]`), activations (for the
/// zero-point term) and where token `j`'s results go (token `t0 + j` of `out`).
struct Pass<'p, 's, 'a> {
    rows: &'p AffineRows<'p>,
    range: std::ops::Range<usize>,
    tile: &'p [Record],
    acts: &'p [Int8Activation],
    out: &'p RowsOut<'s, 'a>,
    t0: usize,
}

impl Pass<'_, '_, '_> {
    /// The pass for `N` tokens: pieces of chunks of a group of `GROUP` rows at a time, so the
    /// piece's records stay in L1 while the group's rows stream past.
    ///
    /// # Safety
    /// The module's contract and `RowsI8`'s output contract for the tile's tokens; `tile` has
    /// `N` records of each chunk; `buffer` has room for a row's scales.
    #[inline(always)]
    unsafe fn run<const N: usize>(&self, buffer: &mut [f32]) {
        debug_assert!(self.acts.len() == N && self.tile.len() == N * self.acts[0].padded / CHUNK);
        let rows = self.rows;
        let plan = &Q4Plan::new(rows.data.group_size, rows.cols);
        let chunks = self.tile.len() / N;
        let piece = (L1_RECORDS / N).max(1);
        let pieces = chunks.div_ceil(piece);
        let row_bytes = rows.cols.div_ceil(2);
        // Pieces are read in the loops' order, not the matrix's: ask for the one about
        // `PREFETCH_AHEAD` bytes ahead in that order (see `simd_x86::piece_ahead`).
        let ahead = PREFETCH_AHEAD.div_ceil(piece.min(chunks) * 64);
        // SAFETY: the module's contract: AVX-512 is enabled here and the CPU has it; each
        // piece's records are inside `tile`, and the rows inside the matrix.
        unsafe {
            let lane_group = _mm512_loadu_si512(plan.lane_group.as_ptr() as *const _);
            for group in self.range.clone().step_by(GROUP) {
                let group = group..(group + GROUP).min(self.range.end);
                let mut sums = [[0.0f32; N]; GROUP];
                for (p, first) in (0..chunks).step_by(piece).enumerate() {
                    let end = (first + piece).min(chunks);
                    let records = self.tile[first * N..end * N].as_ptr();
                    for (i, (r, sums)) in group.clone().zip(&mut sums).enumerate() {
                        let (visit, here) = (p * group.len() + i + ahead, r * row_bytes + 64 * first);
                        let distance =
                            piece_ahead(row_bytes, 64 * piece, pieces, &self.range, &group, GROUP, visit, here);
                        rows.prefetch_group_data((r + 8).min(self.range.end - 1));
                        let w = row_with_f32_scales(rows, r, buffer);
                        let part = dot_tile::<N>(&w, plan, lane_group, first..end, records, distance);
                        for (s, p) in sums.iter_mut().zip(part) {
                            *s += p;
                        }
                    }
                }
                for (r, sums) in group.zip(&sums) {
                    let w = row_with_f32_scales(rows, r, buffer);
                    for (j, (&s, act)) in sums.iter().zip(self.acts).enumerate() {
                        self.out.write(self.t0 + j, r, s - zero_term_avx512(&w, act.group_sums()));
                    }
                }
            }
        }
    }
}

/// Chunks `chunks` of a row times the `N` tokens of their records (`records`: `[chunk][N]`
/// from `chunks.start`), before the zero-point term, asking for the bytes `ahead` past each
/// chunk (a hint: any distance is safe).
///
/// # Safety
/// The module's contract; `records` points at `N * chunks.len()` records.
#[inline(always)]
unsafe fn dot_tile<const N: usize>(
    row: &AffineRow,
    plan: &Q4Plan,
    lane_group: __m512i,
    chunks: std::ops::Range<usize>,
    records: *const Record,
    ahead: isize,
) -> [f32; N] {
    // SAFETY: the module's contract; chunk c's records are at records + N (c - chunks.start).
    unsafe {
        let mut acc = [_mm512_setzero_ps(); N];
        let first = chunks.start;
        for c in chunks {
            prefetch(row.values.as_ptr().wrapping_add(64 * c).wrapping_offset(ahead));
            let (lo, hi, s) = chunk_weights(row, plan, lane_group, c);
            let at = records.add(N * (c - first));
            for (j, acc) in acc.iter_mut().enumerate() {
                let r = at.add(j);
                let x = ActChunk {
                    xe: _mm512_load_si512(std::ptr::addr_of!((*r).xe) as *const _),
                    xo: _mm512_load_si512(std::ptr::addr_of!((*r).xo) as *const _),
                    re: _mm512_load_si512(std::ptr::addr_of!((*r).re) as *const _),
                    ro: _mm512_load_si512(std::ptr::addr_of!((*r).ro) as *const _),
                    d: _mm512_setzero_ps(), // unused: the units carry the scale
                };
                let units = _mm512_load_ps(std::ptr::addr_of!((*r).units) as *const f32);
                *acc = chunk_dot_full_avx512(lo, hi, &x, units, s, *acc);
            }
        }
        std::array::from_fn(|j| _mm512_reduce_add_ps(acc[j]))
    }
}

/// Chunk `c` of a row: its low and high nibbles (even and odd columns; a row's ragged end
/// loaded masked, so nothing past the row is read) and the weight scale of each 8-column lane.
///
/// # Safety
/// The module's contract; `c` is a chunk of the row's (padded) columns.
#[inline(always)]
unsafe fn chunk_weights(row: &AffineRow, plan: &Q4Plan, lane_group: __m512i, c: usize) -> (__m512i, __m512i, __m512) {
    // SAFETY: the module's contract: loads inside the row's bytes and scales.
    unsafe {
        let remaining = row.values.len() - 64 * c;
        let wp = row.values.as_ptr().add(64 * c) as *const i8;
        // A plain load streams best; the masked one only for a row's ragged end.
        let wv = if remaining >= 64 {
            _mm512_loadu_si512(wp as *const _)
        } else {
            _mm512_maskz_loadu_epi8((1u64 << remaining) - 1, wp)
        };
        // High nibbles by a shift and a mask, not GFNI as one token's kernel does: on Zen 4
        // `vgf2p8affineqb` takes the same two pipes as `vpdpbusd` (a loop of 12 `vpdpbusd`
        // ran 12 cycles, with 6 `vgf2p8affineqb` 18, with 6 shifts or ands still 12), and
        // here the dot products, not the unpacking, are the limit.
        let low4 = _mm512_set1_epi8(0x0f);
        let (lo, hi) = (_mm512_and_si512(wv, low4), _mm512_and_si512(_mm512_srli_epi16::<4>(wv), low4));
        let n_groups = row.scales.len();
        let s = if plan.broadcast {
            let g = match plan.group_shift {
                Some(shift) => c >> shift,
                None => c * CHUNK / plan.group_size,
            };
            _mm512_set1_ps(*row.scales.get_unchecked(g.min(n_groups - 1)))
        } else {
            let base = c * plan.per_chunk_groups;
            let mask = ((1u32 << (n_groups - base).min(plan.per_chunk_groups)) - 1) as u16;
            _mm512_permutexvar_ps(lane_group, _mm512_maskz_loadu_ps(mask, row.scales.as_ptr().add(base)))
        };
        (lo, hi, s)
    }
}
