//! 4-bit rows times int8 activations on AVX-512 with VNNI (`vpdpbusd`), for decoding: see
//! `activation.rs` for the activation's layout. High nibbles come from one GFNI instruction
//! where the CPU has it.
//!
//! Hot loops live in `#[inline(always)]` helpers called from `#[target_feature]` functions,
//! never inside closures handed to generic code (a closure body compiled outside the target
//! features turns every intrinsic into a call).
//!
//! # Safety (every helper here)
//! The `#[inline(always)]` helpers run inside `rows_plain` / `rows_gfni`, compiled with
//! AVX-512 F, BW, VL and VNNI (and GFNI for `GFNI = true`), which the CPU has (`Kernels::new`
//! checks before it hands them out). They take rows and activations of one matrix: a row's
//! `values` are `cols.div_ceil(2)` bytes, the activation is padded to whole 128-column chunks
//! of the same `cols` (so every activation load of a chunk is inside it), and a row's
//! `scales` / `zeros` hold one value per group.

use std::arch::x86_64::*;

use super::activation::{Int8Activation, CHUNK, RESIDUAL, RESIDUAL_BITS};
use super::{debug_check_rows, AffineRow, AffineRows, RowsOut};
use crate::kernels::fp16::f16c::f16_to_f32_avx512_inline;
use crate::kernels::simd_x86::prefetch;
use crate::weights::Scales;

/// Decode asks for the weights this many bytes ahead of the load: rows end every few KB and the
/// hardware prefetcher restarts slowly across those boundaries. Measured on Zen 5 streaming a
/// 5632x2048 matrix: 2 KB ahead 65%, 6-8 KB 75%, 16 KB 70% of the read bandwidth.
pub(super) const PREFETCH_AHEAD: usize = 6144;

/// What the 4-bit SIMD kernels need to know about a matrix's groups, worked out once per
/// matrix rather than once per row.
#[derive(Debug, Clone, Copy)]
pub(super) struct Q4Plan {
    /// Group of each 8-column lane within a 128-column chunk (when groups are < 128 columns).
    pub(super) lane_group: [i32; 16],
    /// Groups per 128-column chunk (1 when a group spans whole chunks).
    pub(super) per_chunk_groups: usize,
    /// One scale per chunk: groups of >= 128 columns, or one group per row.
    pub(super) broadcast: bool,
    /// With `broadcast`: chunk c uses scale `c >> group_shift` (a power-of-two number of
    /// chunks per group, or 63 for one group per row); `None` for other group sizes.
    pub(super) group_shift: Option<u32>,
    pub(super) group_size: usize,
}

impl Q4Plan {
    pub(super) fn new(group_size: usize, cols: usize) -> Q4Plan {
        let mut lane_group = [0i32; 16];
        for (k, g) in lane_group.iter_mut().enumerate() {
            *g = ((8 * k) / group_size.min(CHUNK)) as i32;
        }
        Q4Plan {
            lane_group,
            per_chunk_groups: if group_size < CHUNK { CHUNK / group_size } else { 1 },
            broadcast: group_size >= CHUNK || group_size >= cols,
            group_shift: if group_size >= cols {
                Some(63)
            } else if group_size.is_multiple_of(CHUNK) && (group_size / CHUNK).is_power_of_two() {
                Some((group_size / CHUNK).trailing_zeros())
            } else {
                None
            },
            group_size,
        }
    }
}

/// `acc + s * sum over lanes of d * (idot + rdot / 256)` for a whole chunk `c` (all 64 bytes
/// inside the row): the decode hot loop, with nothing in it but the arithmetic.
#[inline(always)]
unsafe fn chunk_full_avx512<const GFNI: bool>(
    row: &AffineRow,
    act: &Int8Activation,
    c: usize,
    s: __m512,
    acc: __m512,
) -> __m512 {
    // SAFETY: the module's contract: AVX-512 VNNI is enabled here and the CPU has it, and every
    // pointer access stays inside the row, activation or scale buffer of one matrix that it came
    // from.
    unsafe {
        prefetch(row.values.as_ptr().wrapping_add(c * 64 + PREFETCH_AHEAD));
        let (lo, hi) = nibbles_avx512::<GFNI>(row, c);
        let units = _mm512_loadu_ps(act.lane_units.as_ptr().add(c * 16));
        chunk_dot_full_avx512(lo, hi, &load_act_avx512(act, c), units, s, acc)
    }
}

/// The weight side of one chunk (128 columns, 64 bytes) of a row: the unpacked low and high
/// nibbles (even and odd columns) and the weight scale of each 8-column lane.
#[inline(always)]
unsafe fn load_chunk_avx512(
    row: &AffineRow,
    plan: &Q4Plan,
    lane_group: __m512i,
    c: usize,
) -> (__m512i, __m512i, __m512) {
    // SAFETY: the module's contract: AVX-512 VNNI is enabled here and the CPU has it, and every
    // pointer access stays inside the row, activation or scale buffer of one matrix that it came
    // from.
    unsafe {
        let (lo, hi) = load_nibbles_avx512(row, c);
        let n_groups = row.scales.len();
        let s = if plan.broadcast {
            // Groups of whole chunks, but not a power of two of them (the fast loop takes those).
            _mm512_set1_ps(*row.scales.get_unchecked((c * CHUNK / plan.group_size).min(n_groups - 1)))
        } else {
            let base = c * plan.per_chunk_groups;
            let mask = ((1u32 << (n_groups - base).min(plan.per_chunk_groups)) - 1) as u16;
            _mm512_permutexvar_ps(lane_group, _mm512_maskz_loadu_ps(mask, row.scales.as_ptr().add(base)))
        };
        (lo, hi, s)
    }
}

/// One chunk of an activation: even and odd columns, their residuals, the lane scales.
pub(super) struct ActChunk {
    pub(super) xe: __m512i,
    pub(super) xo: __m512i,
    pub(super) re: __m512i,
    pub(super) ro: __m512i,
    pub(super) d: __m512,
}

#[inline(always)]
unsafe fn load_act_avx512(act: &Int8Activation, c: usize) -> ActChunk {
    // SAFETY: the module's contract: AVX-512 VNNI is enabled here and the CPU has it, and every
    // pointer access stays inside the row, activation or scale buffer of one matrix that it came
    // from.
    unsafe {
        let xp = act.interleaved.as_ptr().add(c * CHUNK);
        let rp = act.residual_interleaved.as_ptr().add(c * CHUNK);
        ActChunk {
            xe: _mm512_loadu_si512(xp as *const _),
            xo: _mm512_loadu_si512(xp.add(64) as *const _),
            re: _mm512_loadu_si512(rp as *const _),
            ro: _mm512_loadu_si512(rp.add(64) as *const _),
            d: _mm512_loadu_ps(act.lane_scales.as_ptr().add(c * 16)),
        }
    }
}

/// `acc + sum over lanes of s * d * (idot + rdot / 256)` for one chunk of one row.
#[inline(always)]
unsafe fn chunk_dot_avx512(lo: __m512i, hi: __m512i, s: __m512, a: &ActChunk, acc: __m512) -> __m512 {
    // SAFETY: the module's contract: AVX-512 VNNI is enabled here and the CPU has it, and every
    // pointer access stays inside the row, activation or scale buffer of one matrix that it came
    // from.
    unsafe {
        let idot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, a.xe), hi, a.xo);
        let rdot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, a.re), hi, a.ro);
        let dot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(rdot), _mm512_set1_ps(1.0 / RESIDUAL), _mm512_cvtepi32_ps(idot));
        _mm512_fmadd_ps(_mm512_mul_ps(dot, a.d), s, acc)
    }
}

#[inline(always)]
unsafe fn chunk_avx512(
    row: &AffineRow,
    act: &Int8Activation,
    plan: &Q4Plan,
    lane_group: __m512i,
    c: usize,
    acc: __m512,
) -> __m512 {
    // SAFETY: the module's contract: AVX-512 VNNI is enabled here and the CPU has it, and every
    // pointer access stays inside the row, activation or scale buffer of one matrix that it came
    // from.
    unsafe {
        let (lo, hi, s) = load_chunk_avx512(row, plan, lane_group, c);
        chunk_dot_avx512(lo, hi, s, &load_act_avx512(act, c), acc)
    }
}

/// `RowsI8` on AVX-512 VNNI with GFNI: rows `range` of a 4-bit matrix times each int8
/// activation of `acts`. One call per range of rows, so the per-row work (call, reduction,
/// zero-point term) overlaps the weight stream instead of interrupting it.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL, VNNI and GFNI; otherwise `RowsI8`'s contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,gfni")]
pub(crate) unsafe fn rows_gfni(
    rows: &AffineRows,
    range: std::ops::Range<usize>,
    acts: &[Int8Activation],
    scale_buffer: &mut Vec<f32>,
    out: RowsOut,
) {
    // SAFETY: compiled with the body's features (GFNI included); the rest is the caller's.
    unsafe { rows_body::<true>(rows, range, acts, scale_buffer, out) }
}

/// `rows_gfni` without GFNI (high nibbles by a shift and a mask), for AVX-512 CPUs without it.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI; otherwise `RowsI8`'s contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn rows_plain(
    rows: &AffineRows,
    range: std::ops::Range<usize>,
    acts: &[Int8Activation],
    scale_buffer: &mut Vec<f32>,
    out: RowsOut,
) {
    // SAFETY: compiled with the body's features; the rest is the caller's.
    unsafe { rows_body::<false>(rows, range, acts, scale_buffer, out) }
}

#[inline(always)]
unsafe fn rows_body<const GFNI: bool>(
    row: &AffineRows,
    rows: std::ops::Range<usize>,
    acts: &[Int8Activation],
    scale_buffer: &mut Vec<f32>,
    out: RowsOut,
) {
    debug_check_rows(row, &rows, acts, &out);
    if acts.len() > 1 {
        // SAFETY: the module's and `RowsI8`'s contracts, which are the batch kernel's.
        return unsafe { super::avx512_batch::rows(row, rows, acts, scale_buffer, out) };
    }
    // SAFETY: the module's contract: AVX-512 VNNI is enabled here and the CPU has it, and every
    // pointer access stays inside the row, activation or scale buffer of one matrix that it came
    // from.
    unsafe {
        let plan = &Q4Plan::new(row.data.group_size, row.cols);
        let lane_group = _mm512_loadu_si512(plan.lane_group.as_ptr() as *const _);
        let last = rows.end.saturating_sub(1);
        // No closure in here: a closure would be compiled without this function's target features
        // and turn every intrinsic into a call.
        let groups = row.n_groups();
        if scale_buffer.len() < 2 * groups {
            scale_buffer.resize(2 * groups, 0.0);
        }
        let (buffer_a, buffer_b) = scale_buffer[..2 * groups].split_at_mut(groups);
        let mut r = rows.start;
        // Decoding one token with groups of whole chunks: rows in pairs, so each activation load
        // (four vectors per 64 weight bytes; this core loads about one vector per cycle) serves two
        // rows. Measured from cache +35%; from DRAM it needs `dot2`'s prefetch of the pair's run.
        if acts.len() == 1 && plan.broadcast && plan.group_shift.is_some() {
            let act = &acts[0];
            while r + 2 <= rows.end {
                row.prefetch_group_data((r + 8).min(last));
                row.prefetch_group_data((r + 9).min(last));
                let a = row_with_f32_scales(row, r, buffer_a);
                let b = row_with_f32_scales(row, r + 1, buffer_b);
                let (va, vb) = dot2_q4_i8_avx512::<GFNI>(a, b, act, plan);
                out.write(0, r, va);
                out.write(0, r + 1, vb);
                r += 2;
            }
        }
        while r < rows.end {
            row.prefetch_group_data((r + 8).min(last));
            let w = row_with_f32_scales(row, r, buffer_a);
            for (t, act) in acts.iter().enumerate() {
                out.write(t, r, dot_q4_i8_avx512_inline::<GFNI>(w, act, act.group_sums(), plan, lane_group));
            }
            r += 1;
        }
    }
}

/// Row `r` with fp32 scales: the file's own, or its fp16 ones converted into `buffer`
/// (`[n_groups]`, or longer), 16 per instruction.
#[inline(always)]
pub(super) unsafe fn row_with_f32_scales<'s>(row: &'s AffineRows, r: usize, buffer: &'s mut [f32]) -> AffineRow<'s> {
    // SAFETY: the module's contract: AVX-512 VNNI is enabled here and the CPU has it, and every
    // pointer access stays inside the row, activation or scale buffer of one matrix that it came
    // from.
    unsafe {
        let groups = row.n_groups();
        match &row.data.scales {
            Scales::F32(s) => row.row_with_scales(r, &s[r * groups..(r + 1) * groups]),
            Scales::F16(bytes) => {
                let out = &mut buffer[..groups];
                f16_to_f32_avx512_inline(&bytes[2 * r * groups..2 * (r + 1) * groups], out);
                row.row_with_scales(r, out)
            }
        }
    }
}

/// Rows `a` and `b` (adjacent in memory) times one int8 activation, for groups of 2^shift whole
/// chunks: `dot_q4_i8_avx512_inline` twice, with each activation chunk loaded once.
#[inline(always)]
unsafe fn dot2_q4_i8_avx512<const GFNI: bool>(
    a: AffineRow,
    b: AffineRow,
    act: &Int8Activation,
    plan: &Q4Plan,
) -> (f32, f32) {
    // SAFETY: the module's contract: AVX-512 VNNI is enabled here and the CPU has it, and every
    // pointer access stays inside the row, activation or scale buffer of one matrix that it came
    // from.
    unsafe {
        let shift = plan.group_shift.unwrap_unchecked();
        let chunks = act.padded / CHUNK;
        let full = a.values.len() / 64;
        let (sa, sb) = (a.scales.as_ptr(), b.scales.as_ptr());
        // Two rows read side by side are two streams, which the hardware prefetcher serves badly
        // (-10% against one row at a time). The pair's bytes are one run, though: ask for the run
        // ahead as one linear stream, two lines per step, so each next pair is in cache in time.
        let pair_bytes = 2 * a.values.len();
        let ahead = a.values.as_ptr().wrapping_add(PAIR_PREFETCH_AHEAD.max(pair_bytes));
        let (mut acc_a, mut acc_b) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for c in 0..full {
            prefetch(ahead.wrapping_add(128 * c));
            prefetch(ahead.wrapping_add(128 * c + 64));
            let x = load_act_avx512(act, c);
            let units = _mm512_loadu_ps(act.lane_units.as_ptr().add(c * 16));
            let (lo, hi) = nibbles_avx512::<GFNI>(&a, c);
            acc_a = chunk_dot_full_avx512(lo, hi, &x, units, _mm512_set1_ps(*sa.add(c >> shift)), acc_a);
            let (lo, hi) = nibbles_avx512::<GFNI>(&b, c);
            acc_b = chunk_dot_full_avx512(lo, hi, &x, units, _mm512_set1_ps(*sb.add(c >> shift)), acc_b);
        }
        for c in full..chunks {
            let last = a.scales.len() - 1;
            let s = _mm512_set1_ps(*sa.add((c >> shift).min(last)));
            acc_a = _mm512_fmadd_ps(chunk_scaled_avx512(&a, act, c, _mm512_setzero_ps()), s, acc_a);
            let s = _mm512_set1_ps(*sb.add((c >> shift).min(last)));
            acc_b = _mm512_fmadd_ps(chunk_scaled_avx512(&b, act, c, _mm512_setzero_ps()), s, acc_b);
        }
        let sums = act.group_sums();
        (
            _mm512_reduce_add_ps(acc_a) - zero_term_avx512(&a, sums),
            _mm512_reduce_add_ps(acc_b) - zero_term_avx512(&b, sums),
        )
    }
}

/// How far ahead of a row pair `dot2_q4_i8_avx512` prefetches (at least one pair). Measured on
/// 11008x4096, 5632x2048 and 2048x5632: 8-32 KB alike, +8-14% read bandwidth over one row at a time.
const PAIR_PREFETCH_AHEAD: usize = 8192;

/// The low and high nibbles of whole chunk `c` of a row (no prefetch: the caller's job).
#[inline(always)]
unsafe fn nibbles_avx512<const GFNI: bool>(row: &AffineRow, c: usize) -> (__m512i, __m512i) {
    // SAFETY: the module's contract: AVX-512 VNNI is enabled here and the CPU has it, and every
    // pointer access stays inside the row, activation or scale buffer of one matrix that it came
    // from.
    unsafe {
        let low4 = _mm512_set1_epi8(0x0f);
        let wv = _mm512_loadu_si512(row.values.as_ptr().add(c * 64) as *const _);
        let lo = _mm512_and_si512(wv, low4);
        let hi = if GFNI {
            // Output bit i (of 8) takes input bit i + 4 for i < 4: a right shift by 4 per byte.
            _mm512_gf2p8affine_epi64_epi8::<0>(wv, _mm512_set1_epi64(0x1020_4080_0000_0000u64 as i64))
        } else {
            _mm512_and_si512(_mm512_srli_epi16(wv, 4), low4)
        };
        (lo, hi)
    }
}

/// `acc + s * units * (idot * 256 + rdot)` per lane for one chunk: the integer sums are exact
/// (|idot| <= 8 * 15 * 127 per lane) and stay below 2^24, so their conversion is too.
#[inline(always)]
pub(super) unsafe fn chunk_dot_full_avx512(
    lo: __m512i,
    hi: __m512i,
    a: &ActChunk,
    units: __m512,
    s: __m512,
    acc: __m512,
) -> __m512 {
    // SAFETY: the module's contract: AVX-512 VNNI is enabled here and the CPU has it, and every
    // pointer access stays inside the row, activation or scale buffer of one matrix that it came
    // from.
    unsafe {
        let idot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, a.xe), hi, a.xo);
        let both =
            _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_slli_epi32::<RESIDUAL_BITS>(idot), lo, a.re), hi, a.ro);
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(both), _mm512_mul_ps(units, s), acc)
    }
}

/// One row of 4-bit weights times an int8 activation (see `act.rs` for the layout):
/// `sum_c s_g (q_c - z_g) x_c` = `sum_lanes s * d * idot` - `sum_g s_g z_g sum(x in g)`.
#[inline(always)]
unsafe fn dot_q4_i8_avx512_inline<const GFNI: bool>(
    row: AffineRow,
    act: &Int8Activation,
    group_sums: &[f32],
    plan: &Q4Plan,
    lane_group: __m512i,
) -> f32 {
    // SAFETY: the module's contract: AVX-512 VNNI is enabled here and the CPU has it, and every
    // pointer access stays inside the row, activation or scale buffer of one matrix that it came
    // from.
    unsafe {
        let chunks = act.padded / CHUNK;
        let total = if plan.broadcast && plan.group_shift.is_some() {
            // One weight scale per group of 2^shift whole chunks (or per row). A tight loop over
            // whole chunks, two at a time into two accumulators; the ragged last chunk after it.
            let shift = plan.group_shift.unwrap_unchecked();
            let full = row.values.len() / 64;
            let sp = row.scales.as_ptr();
            let (mut even, mut odd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut c = 0;
            while c + 2 <= full {
                even = chunk_full_avx512::<GFNI>(&row, act, c, _mm512_set1_ps(*sp.add(c >> shift)), even);
                odd = chunk_full_avx512::<GFNI>(&row, act, c + 1, _mm512_set1_ps(*sp.add((c + 1) >> shift)), odd);
                c += 2;
            }
            while c < chunks {
                let s = _mm512_set1_ps(*sp.add((c >> shift).min(row.scales.len() - 1)));
                even = _mm512_fmadd_ps(chunk_scaled_avx512(&row, act, c, _mm512_setzero_ps()), s, even);
                c += 1;
            }
            _mm512_add_ps(even, odd)
        } else {
            let (mut even, mut odd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut c = 0;
            while c + 2 <= chunks {
                even = chunk_avx512(&row, act, plan, lane_group, c, even);
                odd = chunk_avx512(&row, act, plan, lane_group, c + 1, odd);
                c += 2;
            }
            if c < chunks {
                even = chunk_avx512(&row, act, plan, lane_group, c, even);
            }
            _mm512_add_ps(even, odd)
        };
        _mm512_reduce_add_ps(total) - zero_term_avx512(&row, group_sums)
    }
}

/// The weights of chunk `c` (64 bytes) as even and odd columns.
#[inline(always)]
unsafe fn load_nibbles_avx512(row: &AffineRow, c: usize) -> (__m512i, __m512i) {
    // SAFETY: the module's contract: AVX-512 VNNI is enabled here and the CPU has it, and every
    // pointer access stays inside the row, activation or scale buffer of one matrix that it came
    // from.
    unsafe {
        let low4 = _mm512_set1_epi8(0x0f);
        let start = c * 64;
        let wp = row.values.as_ptr().add(start);
        prefetch(wp.wrapping_add(PREFETCH_AHEAD));
        let remaining = row.values.len() - start;
        // A plain load streams best; the masked one only for a row's ragged end.
        let wv = if remaining >= 64 {
            _mm512_loadu_si512(wp as *const _)
        } else {
            _mm512_maskz_loadu_epi8((1u64 << remaining) - 1, wp as *const i8)
        };
        (_mm512_and_si512(wv, low4), _mm512_and_si512(_mm512_srli_epi16(wv, 4), low4))
    }
}

/// `acc + sum over lanes of d * (idot + rdot / 256)` for chunk `c`, before the weight scale.
#[inline(always)]
unsafe fn chunk_scaled_avx512(row: &AffineRow, act: &Int8Activation, c: usize, acc: __m512) -> __m512 {
    // SAFETY: the module's contract: AVX-512 VNNI is enabled here and the CPU has it, and every
    // pointer access stays inside the row, activation or scale buffer of one matrix that it came
    // from.
    unsafe {
        let (lo, hi) = load_nibbles_avx512(row, c);
        let a = load_act_avx512(act, c);
        let idot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, a.xe), hi, a.xo);
        let rdot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, a.re), hi, a.ro);
        let dot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(rdot), _mm512_set1_ps(1.0 / RESIDUAL), _mm512_cvtepi32_ps(idot));
        _mm512_fmadd_ps(dot, a.d, acc)
    }
}

/// `zero_term`, 16 groups per step.
#[inline(always)]
pub(super) unsafe fn zero_term_avx512(row: &AffineRow, group_sums: &[f32]) -> f32 {
    // SAFETY: the module's contract: AVX-512 VNNI is enabled here and the CPU has it, and every
    // pointer access stays inside the row, activation or scale buffer of one matrix that it came
    // from.
    unsafe {
        let n = row.scales.len();
        let mut acc = _mm512_setzero_ps();
        let mut g = 0;
        while g < n {
            let mask: u16 = if n - g >= 16 { 0xffff } else { ((1u32 << (n - g)) - 1) as u16 };
            let s = _mm512_maskz_loadu_ps(mask, row.scales.as_ptr().add(g));
            let x = _mm512_maskz_loadu_ps(mask, group_sums.as_ptr().add(g));
            let z8 = _mm_maskz_loadu_epi8(mask, row.zeros.as_ptr().add(g) as *const i8);
            let z = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(z8));
            acc = _mm512_fmadd_ps(_mm512_mul_ps(s, z), x, acc);
            g += 16;
        }
        _mm512_reduce_add_ps(acc)
    }
}
