//! x86-64 SIMD kernels: AVX-512 (with VNNI: `vpdpbusd` for decode, `vpdpwssd` for the prefill
//! GEMM; GFNI and fp16 conversions where present) and AVX2 (`vpmaddubsw`). Each function is
//! compiled for its instruction set and only called after run-time detection (`Isa`). The
//! scalar references they are tested against live in `scalar.rs` / `act.rs`.
//!
//! Hot loops live in `#[inline(always)]` helpers called from `#[target_feature]` functions,
//! never inside closures handed to generic code (a closure body compiled outside the target
//! features turns every intrinsic into a call).

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use super::act::{Int16Activations, Int8Activation, CHUNK, RESIDUAL, RESIDUAL_BITS};
use super::{zero_term, AffineRow, AffineRows, CacheValue, ATTENTION_PREFETCH_AHEAD, F16};
use crate::tensor::{AffineData, Scales};

// ---------------------------------------------------------------------------------------------
// fp32 dot products

// No AVX-512 fp32 dot product: with rows of a few hundred to a few thousand floats, the AVX2
// one (four 8-lane chains, cheap reduction) measured faster on Zen 5 (476 vs 428 tok/s on
// stories15M's shape), and large fp32 matrices are bound by memory either way.

#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_avx2_inline(a, b)
}

/// Attention scores of one query against `keys` (`[positions, head_size]`, one after another):
/// `out[p] = dot(q, keys[p]) / scale`, in one call rather than one per position.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn attention_scores_avx2(q: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
    for (o, key) in out.iter_mut().zip(keys.chunks_exact(q.len())) {
        prefetch_ahead(key.as_ptr(), q.len());
        *o = dot_f32_avx2_inline(q, key) / scale;
    }
}

/// `out += sum_p att[p] * values[p]` (`values` `[positions, head_size]`), each position's
/// product and sum rounded separately in position order, as `axpy_avx2` (and run.c) does.
#[target_feature(enable = "avx2")]
pub unsafe fn attention_sum_avx2(att: &[f32], values: &[f32], out: &mut [f32]) {
    let hs = out.len();
    for (&a, v) in att.iter().zip(values.chunks_exact(hs)) {
        prefetch_ahead(v.as_ptr(), hs);
        axpy_avx2_inline(out, a, v);
    }
}

/// `out[i] = f32_to_f16(values[i])`, eight at a time (round to nearest even, as the scalar one).
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn f32s_to_f16_f16c(values: &[f32], out: &mut [F16]) {
    let n = values.len().min(out.len());
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(values.as_ptr().add(i)));
        _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, h);
        i += 8;
    }
    while i < n {
        out[i] = F16::from_f32(values[i]);
        i += 1;
    }
}

/// `attention_scores_avx2` over an fp16 cache: each key converted eight values at a time.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn attention_scores_f16_avx2(q: &[f32], keys: &[F16], scale: f32, out: &mut [f32]) {
    let hs = q.len();
    for (o, key) in out.iter_mut().zip(keys.chunks_exact(hs)) {
        prefetch_ahead(key.as_ptr(), hs);
        let (pq, pk) = (q.as_ptr(), key.as_ptr() as *const u16);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= hs {
            for (j, acc_j) in acc.iter_mut().enumerate() {
                let k = _mm256_cvtph_ps(_mm_loadu_si128(pk.add(i + 8 * j) as *const _));
                *acc_j = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i + 8 * j)), k, *acc_j);
            }
            i += 32;
        }
        while i + 8 <= hs {
            let k = _mm256_cvtph_ps(_mm_loadu_si128(pk.add(i) as *const _));
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), k, acc[0]);
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut total = hsum_avx2(sum);
        while i < hs {
            total += q[i] * key[i].to_f32();
            i += 1;
        }
        *o = total / scale;
    }
}

/// `attention_sum_avx2` over an fp16 cache; the conversion is exact, so this too equals the
/// scalar loop bit for bit.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn attention_sum_f16_avx2(att: &[f32], values: &[F16], out: &mut [f32]) {
    let hs = out.len();
    let py = out.as_mut_ptr();
    for (&a, v) in att.iter().zip(values.chunks_exact(hs)) {
        prefetch_ahead(v.as_ptr(), hs);
        let av = _mm256_set1_ps(a);
        let pv = v.as_ptr() as *const u16;
        let mut i = 0;
        while i + 8 <= hs {
            let x = _mm256_cvtph_ps(_mm_loadu_si128(pv.add(i) as *const _));
            _mm256_storeu_ps(py.add(i), _mm256_add_ps(_mm256_loadu_ps(py.add(i)), _mm256_mul_ps(av, x)));
            i += 8;
        }
        while i < hs {
            out[i] += a * v[i].to_f32();
            i += 1;
        }
    }
}

/// Prefetch the `n` values `ATTENTION_PREFETCH_AHEAD` bytes after `row` (a position's row).
#[inline(always)]
unsafe fn prefetch_ahead<T>(row: *const T, n: usize) {
    let start = (row as *const u8).wrapping_add(ATTENTION_PREFETCH_AHEAD);
    let bytes = n * std::mem::size_of::<T>();
    let mut offset = 0;
    while offset < bytes {
        _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset) as *const i8);
        offset += 64;
    }
}

/// The sum of the eight lanes, in lane order.
#[inline(always)]
unsafe fn hsum_avx2(v: __m256) -> f32 {
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), v);
    lanes.iter().sum()
}

#[inline(always)]
unsafe fn dot_f32_avx2_inline(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc_k) in acc.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(pa.add(i + 8 * k));
            let y = _mm256_loadu_ps(pb.add(i + 8 * k));
            *acc_k = _mm256_fmadd_ps(x, y, *acc_k);
        }
        i += 32;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut total = hsum_avx2(sum);
    while i < n {
        total += a[i] * b[i];
        i += 1;
    }
    total
}

/// `y += a * x` (over the shorter of the two). Each element is rounded as run.c rounds it (a
/// product, then a sum; no FMA), so this equals the scalar loop bit for bit.
#[inline(always)]
unsafe fn axpy_avx2_inline(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    let av = _mm256_set1_ps(a);
    let (py, px) = (y.as_mut_ptr(), x.as_ptr());
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(py.add(i), _mm256_add_ps(_mm256_loadu_ps(py.add(i)), _mm256_mul_ps(av, _mm256_loadu_ps(px.add(i)))));
        i += 8;
    }
    while i < n {
        *py.add(i) += a * *px.add(i);
        i += 1;
    }
}

/// `tensor::f16s_to_f32` with F16C: eight conversions per instruction.
#[target_feature(enable = "avx,f16c")]
pub unsafe fn f16s_to_f32_f16c(bytes: &[u8], out: &mut [f32]) {
    let n = out.len().min(bytes.len() / 2);
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm_loadu_si128(bytes.as_ptr().add(2 * i) as *const _);
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        i += 8;
    }
    while i < n {
        out[i] = crate::tensor::f16_to_f32(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]));
        i += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// 4-bit weights x int8 activations

/// Decode asks for the weights this many bytes ahead of the load: rows end every few KB and the
/// hardware prefetcher restarts slowly across those boundaries. Measured on Zen 5 streaming a
/// 5632x2048 matrix: 2 KB ahead 65%, 6-8 KB 75%, 16 KB 70% of the read bandwidth.
const PREFETCH_AHEAD: usize = 6144;


/// What the 4-bit SIMD kernels need to know about a matrix's groups, worked out once per
/// matrix rather than once per row.
#[derive(Debug, Clone, Copy)]
pub struct Q4Plan {
    /// Group of each 8-column lane within a 128-column chunk (when groups are < 128 columns).
    lane_group: [i32; 16],
    /// Groups per 128-column chunk (1 when a group spans whole chunks).
    per_chunk_groups: usize,
    /// One scale per chunk: groups of >= 128 columns, or one group per row.
    broadcast: bool,
    /// With `broadcast`: chunk c uses scale `c >> group_shift` (a power-of-two number of
    /// chunks per group, or 63 for one group per row); `None` for other group sizes.
    group_shift: Option<u32>,
    group_size: usize,
    /// Unpack high nibbles with one GFNI affine instruction instead of a shift and a mask
    /// (one op of ~11 per 64 weight bytes; measured 9% more read bandwidth when decoding).
    pub gfni: bool,
}

/// True when the CPU has GFNI (every AVX-512 x86 since Ice Lake and Zen 4; not Cascade Lake).
pub fn has_gfni() -> bool {
    is_x86_feature_detected!("gfni")
}

impl Q4Plan {
    pub fn new(group_size: usize, cols: usize) -> Q4Plan {
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
            } else if group_size % CHUNK == 0 && (group_size / CHUNK).is_power_of_two() {
                Some((group_size / CHUNK).trailing_zeros())
            } else {
                None
            },
            group_size,
            gfni: has_gfni(),
        }
    }
}

/// `acc + s * sum over lanes of d * (idot + rdot / 256)` for a whole chunk `c` (all 64 bytes
/// inside the row): the decode hot loop, with nothing in it but the arithmetic.
#[inline(always)]
unsafe fn chunk_full_avx512<const GFNI: bool>(row: &AffineRow, act: &Int8Activation, c: usize, s: __m512, acc: __m512) -> __m512 {
    _mm_prefetch::<_MM_HINT_T0>(row.values.as_ptr().wrapping_add(c * 64 + PREFETCH_AHEAD) as *const i8);
    let (lo, hi) = nibbles_avx512::<GFNI>(row, c);
    let units = _mm512_loadu_ps(act.lane_units.as_ptr().add(c * 16));
    chunk_dot_full_avx512(lo, hi, &load_act_avx512(act, c), units, s, acc)
}

/// The weight side of one chunk (128 columns, 64 bytes) of a row: the unpacked low and high
/// nibbles (even and odd columns) and the weight scale of each 8-column lane.
#[inline(always)]
unsafe fn load_chunk_avx512(row: &AffineRow, plan: &Q4Plan, lane_group: __m512i, c: usize) -> (__m512i, __m512i, __m512) {
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

/// One chunk of an activation: even and odd columns, their residuals, the lane scales.
struct ActChunk {
    xe: __m512i,
    xo: __m512i,
    re: __m512i,
    ro: __m512i,
    d: __m512,
}

#[inline(always)]
unsafe fn load_act_avx512(act: &Int8Activation, c: usize) -> ActChunk {
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

/// `acc + sum over lanes of s * d * (idot + rdot / 256)` for one chunk of one row.
#[inline(always)]
unsafe fn chunk_dot_avx512(lo: __m512i, hi: __m512i, s: __m512, a: &ActChunk, acc: __m512) -> __m512 {
    let idot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, a.xe), hi, a.xo);
    let rdot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, a.re), hi, a.ro);
    let dot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(rdot), _mm512_set1_ps(1.0 / RESIDUAL), _mm512_cvtepi32_ps(idot));
    _mm512_fmadd_ps(_mm512_mul_ps(dot, a.d), s, acc)
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
    let (lo, hi, s) = load_chunk_avx512(row, plan, lane_group, c);
    chunk_dot_avx512(lo, hi, s, &load_act_avx512(act, c), acc)
}

/// Rows `r0..r1` of a 4-bit matrix (`row(r)`) times each int8 activation in `acts`, the
/// results passed to `write(t, r, value)`. One call per range of rows, so the per-row work
/// (call, reduction, zero-point term) overlaps the weight stream instead of interrupting it.
pub unsafe fn rows_q4_i8_avx512(
    row: &AffineRows,
    rows: std::ops::Range<usize>,
    acts: &[Int8Activation],
    plan: &Q4Plan,
    scale_buffer: &mut Vec<f32>,
    write: impl FnMut(usize, usize, f32),
) {
    if plan.gfni {
        rows_q4_i8_avx512_gfni(row, rows, acts, plan, scale_buffer, write)
    } else {
        rows_q4_i8_avx512_plain(row, rows, acts, plan, scale_buffer, write)
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,gfni")]
unsafe fn rows_q4_i8_avx512_gfni(
    row: &AffineRows,
    rows: std::ops::Range<usize>,
    acts: &[Int8Activation],
    plan: &Q4Plan,
    scale_buffer: &mut Vec<f32>,
    write: impl FnMut(usize, usize, f32),
) {
    rows_q4_i8_avx512_body::<true>(row, rows, acts, plan, scale_buffer, write)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows_q4_i8_avx512_plain(
    row: &AffineRows,
    rows: std::ops::Range<usize>,
    acts: &[Int8Activation],
    plan: &Q4Plan,
    scale_buffer: &mut Vec<f32>,
    write: impl FnMut(usize, usize, f32),
) {
    rows_q4_i8_avx512_body::<false>(row, rows, acts, plan, scale_buffer, write)
}

#[inline(always)]
unsafe fn rows_q4_i8_avx512_body<const GFNI: bool>(
    row: &AffineRows,
    rows: std::ops::Range<usize>,
    acts: &[Int8Activation],
    plan: &Q4Plan,
    scale_buffer: &mut Vec<f32>,
    mut write: impl FnMut(usize, usize, f32),
) {
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
            write(0, r, va);
            write(0, r + 1, vb);
            r += 2;
        }
    }
    while r < rows.end {
        row.prefetch_group_data((r + 8).min(last));
        let w = row_with_f32_scales(row, r, buffer_a);
        for (t, act) in acts.iter().enumerate() {
            write(t, r, dot_q4_i8_avx512_inline::<GFNI>(w, act, act.group_sums(), plan, lane_group));
        }
        r += 1;
    }
}

/// Row `r` with fp32 scales: the file's own, or its fp16 ones converted into `buffer`
/// (`[n_groups]`, or longer), 16 per instruction.
#[inline(always)]
unsafe fn row_with_f32_scales<'s>(row: &'s AffineRows, r: usize, buffer: &'s mut [f32]) -> AffineRow<'s> {
    let groups = row.n_groups();
    match &row.data.scales {
        Scales::F32(s) => row.row_with_scales(r, &s[r * groups..(r + 1) * groups]),
        Scales::F16(bytes) => {
            let out = &mut buffer[..groups];
            f16s_to_f32_avx512(&bytes[2 * r * groups..2 * (r + 1) * groups], out);
            row.row_with_scales(r, out)
        }
    }
}

/// Rows `a` and `b` (adjacent in memory) times one int8 activation, for groups of 2^shift whole
/// chunks: `dot_q4_i8_avx512_inline` twice, with each activation chunk loaded once.
#[inline(always)]
unsafe fn dot2_q4_i8_avx512<const GFNI: bool>(a: AffineRow, b: AffineRow, act: &Int8Activation, plan: &Q4Plan) -> (f32, f32) {
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
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(128 * c) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(128 * c + 64) as *const i8);
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

/// How far ahead of a row pair `dot2_q4_i8_avx512` prefetches (at least one pair). Measured on
/// 11008x4096, 5632x2048 and 2048x5632: 8-32 KB alike, +8-14% read bandwidth over one row at a time.
const PAIR_PREFETCH_AHEAD: usize = 8192;

/// The low and high nibbles of whole chunk `c` of a row (no prefetch: the caller's job).
#[inline(always)]
unsafe fn nibbles_avx512<const GFNI: bool>(row: &AffineRow, c: usize) -> (__m512i, __m512i) {
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

/// `acc + s * units * (idot * 256 + rdot)` per lane for one chunk: the integer sums are exact
/// (|idot| <= 8 * 15 * 127 per lane) and stay below 2^24, so their conversion is too.
#[inline(always)]
unsafe fn chunk_dot_full_avx512(lo: __m512i, hi: __m512i, a: &ActChunk, units: __m512, s: __m512, acc: __m512) -> __m512 {
    let idot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, a.xe), hi, a.xo);
    let both = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_slli_epi32::<RESIDUAL_BITS>(idot), lo, a.re), hi, a.ro);
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(both), _mm512_mul_ps(units, s), acc)
}

/// fp16 bytes (`[2 * out.len()]`) to fp32, 16 at a time; the tail masked.
#[inline(always)]
unsafe fn f16s_to_f32_avx512(bytes: &[u8], out: &mut [f32]) {
    let n = out.len();
    let mut i = 0;
    while i < n {
        let k = (n - i).min(16);
        let mask = ((1u32 << k) - 1) as u16;
        let h = _mm256_maskz_loadu_epi16(mask, bytes.as_ptr().add(2 * i) as *const i16);
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), mask, _mm512_cvtph_ps(h));
        i += 16;
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

/// The weights of chunk `c` (64 bytes) as even and odd columns.
#[inline(always)]
unsafe fn load_nibbles_avx512(row: &AffineRow, c: usize) -> (__m512i, __m512i) {
    let low4 = _mm512_set1_epi8(0x0f);
    let start = c * 64;
    let wp = row.values.as_ptr().add(start);
    _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(PREFETCH_AHEAD) as *const i8);
    let remaining = row.values.len() - start;
    // A plain load streams best; the masked one only for a row's ragged end.
    let wv = if remaining >= 64 {
        _mm512_loadu_si512(wp as *const _)
    } else {
        _mm512_maskz_loadu_epi8((1u64 << remaining) - 1, wp as *const i8)
    };
    (_mm512_and_si512(wv, low4), _mm512_and_si512(_mm512_srli_epi16(wv, 4), low4))
}

/// `acc + sum over lanes of d * (idot + rdot / 256)` for chunk `c`, before the weight scale.
#[inline(always)]
unsafe fn chunk_scaled_avx512(row: &AffineRow, act: &Int8Activation, c: usize, acc: __m512) -> __m512 {
    let (lo, hi) = load_nibbles_avx512(row, c);
    let a = load_act_avx512(act, c);
    let idot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, a.xe), hi, a.xo);
    let rdot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, a.re), hi, a.ro);
    let dot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(rdot), _mm512_set1_ps(1.0 / RESIDUAL), _mm512_cvtepi32_ps(idot));
    _mm512_fmadd_ps(dot, a.d, acc)
}

/// `zero_term`, 16 groups per step.
#[inline(always)]
unsafe fn zero_term_avx512(row: &AffineRow, group_sums: &[f32]) -> f32 {
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

/// `rows_q4_i8_avx512` for AVX2.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn rows_q4_i8_avx2(
    row: &AffineRows,
    rows: std::ops::Range<usize>,
    acts: &[Int8Activation],
    scale_buffer: &mut Vec<f32>,
    mut write: impl FnMut(usize, usize, f32),
) {
    let last = rows.end.saturating_sub(1);
    for r in rows {
        row.prefetch_group_data((r + 8).min(last));
        let w = row.row(r, scale_buffer);
        for (t, act) in acts.iter().enumerate() {
            write(t, r, dot_q4_i8_avx2_inline(w, act, act.group_sums()));
        }
    }
}

#[inline(always)]
unsafe fn dot_q4_i8_avx2_inline(row: AffineRow, act: &Int8Activation, group_sums: &[f32]) -> f32 {
    let gs = row.group_size;
    let n_groups = row.scales.len();
    let halves = act.padded / 64;
    let low4 = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let wp = row.values.as_ptr();
    let xp = act.interleaved.as_ptr();
    let rp = act.residual_interleaved.as_ptr();
    let dp = act.lane_scales.as_ptr();
    let inv_residual = _mm256_set1_ps(1.0 / RESIDUAL);
    let mut acc = _mm256_setzero_ps();
    let mut tail = [0u8; 32];
    for h in 0..halves {
        let start = h * 32;
        let remaining = row.values.len().saturating_sub(start);
        let wv = if remaining >= 32 {
            _mm256_loadu_si256(wp.add(start) as *const _)
        } else {
            tail.fill(0);
            if remaining > 0 {
                tail[..remaining].copy_from_slice(&row.values[start..]);
            }
            _mm256_loadu_si256(tail.as_ptr() as *const _)
        };
        let lo = _mm256_and_si256(wv, low4);
        let hi = _mm256_and_si256(_mm256_srli_epi16(wv, 4), low4);
        // Half h of chunk c = h / 2: even columns at [c*128 + (h%2)*32], odd ones 64 further.
        let offset = (h / 2) * CHUNK + (h % 2) * 32;
        let xe = _mm256_loadu_si256(xp.add(offset) as *const _);
        let xo = _mm256_loadu_si256(xp.add(offset + 64) as *const _);
        let re = _mm256_loadu_si256(rp.add(offset) as *const _);
        let ro = _mm256_loadu_si256(rp.add(offset + 64) as *const _);
        // u4 * i8 pairs fit i16 (2 * 15 * 127), and so does the sum of both halves.
        let pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xe), _mm256_maddubs_epi16(hi, xo));
        let rpairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, re), _mm256_maddubs_epi16(hi, ro));
        let idot = _mm256_madd_epi16(pairs, ones);
        let rdot = _mm256_madd_epi16(rpairs, ones);
        let dot = _mm256_fmadd_ps(_mm256_cvtepi32_ps(rdot), inv_residual, _mm256_cvtepi32_ps(idot));
        let d = _mm256_loadu_ps(dp.add(h * 8));
        let first_col = h * 64;
        let s = if gs >= row.cols {
            _mm256_set1_ps(row.scales[0])
        } else if gs >= 64 {
            _mm256_set1_ps(row.scales[(first_col / gs).min(n_groups - 1)])
        } else {
            let mut lanes = [0.0f32; 8];
            for (k, lane) in lanes.iter_mut().enumerate() {
                *lane = row.scales[((first_col + 8 * k) / gs).min(n_groups - 1)];
            }
            _mm256_loadu_ps(lanes.as_ptr())
        };
        acc = _mm256_fmadd_ps(_mm256_mul_ps(dot, d), s, acc);
    }
    hsum_avx2(acc) - zero_term(&row, group_sums)
}

// ---------------------------------------------------------------------------------------------
// 4-bit weights x many fp32 activations (prefill): a small GEMM

/// Rows dequantized per step, and tokens per register tile (ROWS x TOKENS accumulators).
pub const GEMM_ROWS: usize = 4;
const GEMM_TOKENS: usize = 4;

/// Dequantize one row (stored column order) into `out` (`[cols]`, fp32): `s * (q - z)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn dequantize_q4_row_avx512(row: &AffineRow, out: &mut [f32]) {
    let cols = row.cols;
    let gs = row.group_size;
    let mut c = 0;
    while c < cols {
        // 16 columns: 8 packed bytes.
        let n = (cols - c).min(16);
        let bytes = n.div_ceil(2);
        _mm_prefetch::<_MM_HINT_T0>(row.values.as_ptr().wrapping_add(c / 2 + 1024) as *const i8);
        let packed = _mm_maskz_loadu_epi8(((1u32 << bytes) - 1) as u16, row.values.as_ptr().add(c / 2) as *const i8);
        let wide = _mm512_cvtepu8_epi32(packed); // 16 lanes, bytes 0..15 (only 8 used)
        // Lane j holds byte j/2's low (even j) or high (odd j) nibble.
        let idx = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        let shifts = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
        let q = _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi32(idx, wide), shifts), _mm512_set1_epi32(15));
        let qf = _mm512_cvtepi32_ps(q);
        let (s, z) = if gs % 16 == 0 || gs >= cols {
            let g = if gs >= cols { 0 } else { c / gs };
            (_mm512_set1_ps(row.scales[g]), _mm512_set1_ps(row.zeros[g] as f32))
        } else {
            let mut sv = [0.0f32; 16];
            let mut zv = [0.0f32; 16];
            for j in 0..n {
                sv[j] = row.scales[(c + j) / gs];
                zv[j] = row.zeros[(c + j) / gs] as f32;
            }
            (_mm512_loadu_ps(sv.as_ptr()), _mm512_loadu_ps(zv.as_ptr()))
        };
        let w = _mm512_mul_ps(s, _mm512_sub_ps(qf, z));
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(c), ((1u32 << n) - 1) as u16, w);
        c += 16;
    }
}

/// `out[t * out_stride + r] = dot(W[r], x[t])` for the `rows.len() <= GEMM_ROWS` rows given
/// and all `n_tokens` tokens of `x` (`[n_tokens, cols]`, fp32, stored column order). The rows
/// are dequantized once into `buffer` and reused by every token: the exact result, at GEMM speed.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn gemm_q4_f32_avx512(
    rows: &[AffineRow],
    x: &[f32],
    n_tokens: usize,
    buffer: &mut Vec<f32>,
    mut write: impl FnMut(usize, usize, f32),
) {
    let cols = rows[0].cols;
    let stride = cols.div_ceil(16) * 16;
    buffer.clear();
    buffer.resize(GEMM_ROWS * stride, 0.0);
    for (i, row) in rows.iter().enumerate() {
        dequantize_q4_row_avx512(row, &mut buffer[i * stride..i * stride + cols]);
    }
    let wp = buffer.as_ptr();
    // K is walked in blocks of KB steps (KB * 16 columns) so the rows' block (4 x 4 KB) and a
    // token tile's block (4 x 4 KB) stay in L1 while every token tile passes over them;
    // partial sums wait in `partial` between blocks.
    const KB: usize = 64;
    let steps = stride / 16;
    let tail = cols % 16;
    let last_mask: u16 = if tail == 0 { 0xffff } else { ((1u32 << tail) - 1) as u16 };
    let tiles = n_tokens.div_ceil(GEMM_TOKENS);
    let mut partial = vec![_mm512_setzero_ps(); tiles * GEMM_ROWS * GEMM_TOKENS];
    let mut k0 = 0;
    while k0 < steps {
        let k1 = (k0 + KB).min(steps);
        for tile in 0..tiles {
            let t0 = tile * GEMM_TOKENS;
            let nt = (n_tokens - t0).min(GEMM_TOKENS);
            let saved = &mut partial[tile * GEMM_ROWS * GEMM_TOKENS..(tile + 1) * GEMM_ROWS * GEMM_TOKENS];
            let mut acc: [[__m512; GEMM_TOKENS]; GEMM_ROWS] = std::array::from_fn(|i| std::array::from_fn(|j| saved[i * GEMM_TOKENS + j]));
            let xp: [*const f32; GEMM_TOKENS] = std::array::from_fn(|j| x.as_ptr().add((t0 + j.min(nt - 1)) * cols));
            for k in k0..k1 {
                // Plain loads in the hot loop; only the ragged last step (past `cols`) masks x.
                let xv: [__m512; GEMM_TOKENS] = if k + 1 < steps || tail == 0 {
                    std::array::from_fn(|j| _mm512_loadu_ps(xp[j].add(16 * k)))
                } else {
                    std::array::from_fn(|j| _mm512_maskz_loadu_ps(last_mask, xp[j].add(16 * k)))
                };
                for i in 0..GEMM_ROWS {
                    let wv = _mm512_loadu_ps(wp.add(i * stride + 16 * k));
                    for j in 0..GEMM_TOKENS {
                        acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
                    }
                }
            }
            for i in 0..GEMM_ROWS {
                for j in 0..GEMM_TOKENS {
                    saved[i * GEMM_TOKENS + j] = acc[i][j];
                }
            }
        }
        k0 = k1;
    }
    for tile in 0..tiles {
        let t0 = tile * GEMM_TOKENS;
        let nt = (n_tokens - t0).min(GEMM_TOKENS);
        for i in 0..rows.len() {
            for j in 0..nt {
                write(t0 + j, i, _mm512_reduce_add_ps(partial[(tile * GEMM_ROWS + i) * GEMM_TOKENS + j]));
            }
        }
    }
}

/// Dequantize one row of 4-bit weights (stored column order) into `out` (`[cols]`):
/// plain Rust, vectorized by the compiler for the enclosing target features.
#[inline(always)]
fn dequantize_q4_row(row: &AffineRow, out: &mut [f32]) {
    let gs = row.group_size;
    for (g, (&scale, &zero)) in row.scales.iter().zip(row.zeros).enumerate() {
        let start = g * gs;
        let end = (start + gs).min(row.cols);
        let zero = zero as f32;
        for c in start..end {
            let q = (row.values[c / 2] >> ((c % 2) * 4)) & 0x0f;
            out[c] = scale * (q as f32 - zero);
        }
    }
}

/// The AVX2 version of `gemm_q4_f32_avx512`: 4 rows x 3 tokens of 8-lane accumulators
/// (12 of the 16 registers), the same K-blocking.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemm_q4_f32_avx2(
    rows: &[AffineRow],
    x: &[f32],
    n_tokens: usize,
    buffer: &mut Vec<f32>,
    mut write: impl FnMut(usize, usize, f32),
) {
    const R: usize = GEMM_ROWS;
    const T: usize = 3;
    const KB: usize = 128; // steps of 8 columns per K block
    let cols = rows[0].cols;
    let stride = cols.div_ceil(8) * 8;
    buffer.clear();
    buffer.resize(R * stride + 8, 0.0);
    for (i, row) in rows.iter().enumerate() {
        dequantize_q4_row(row, &mut buffer[i * stride..i * stride + cols]);
    }
    let wp = buffer.as_ptr();
    let full = cols / 8;
    let tiles = n_tokens.div_ceil(T);
    let mut partial = vec![_mm256_setzero_ps(); tiles * R * T];
    let mut xtail = [[0.0f32; 8]; T];
    let mut k0 = 0;
    let steps = stride / 8;
    while k0 < steps {
        let k1 = (k0 + KB).min(steps);
        for tile in 0..tiles {
            let t0 = tile * T;
            let nt = (n_tokens - t0).min(T);
            let saved = &mut partial[tile * R * T..(tile + 1) * R * T];
            let mut acc: [[__m256; T]; R] = std::array::from_fn(|i| std::array::from_fn(|j| saved[i * T + j]));
            let xp: [*const f32; T] = std::array::from_fn(|j| x.as_ptr().add((t0 + j.min(nt - 1)) * cols));
            for k in k0..k1 {
                let xv: [__m256; T] = if k < full {
                    std::array::from_fn(|j| _mm256_loadu_ps(xp[j].add(8 * k)))
                } else {
                    // The ragged last step: copy the tail of each token, zero-padded.
                    for j in 0..T {
                        xtail[j] = [0.0; 8];
                        for c in 8 * k..cols {
                            xtail[j][c - 8 * k] = *xp[j].add(c);
                        }
                    }
                    std::array::from_fn(|j| _mm256_loadu_ps(xtail[j].as_ptr()))
                };
                for i in 0..R {
                    let wv = _mm256_loadu_ps(wp.add(i * stride + 8 * k));
                    for j in 0..T {
                        acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);
                    }
                }
            }
            for i in 0..R {
                for j in 0..T {
                    saved[i * T + j] = acc[i][j];
                }
            }
        }
        k0 = k1;
    }
    for tile in 0..tiles {
        let t0 = tile * T;
        let nt = (n_tokens - t0).min(T);
        for i in 0..rows.len() {
            for j in 0..nt {
                write(t0 + j, i, hsum_avx2(partial[(tile * R + i) * T + j]));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4-bit weights x many int16 activations (prefill): a `vpdpwssd` GEMM
//
// A 4-bit row stores columns 2k and 2k+1 in byte k, which is exactly the pair of 16-bit values
// one 32-bit lane of `vpdpwssd` multiplies. So a panel of 16 rows unpacks, per byte column k,
// into one zmm whose lane j holds row j's pair (q - z as int16); a token's pair of int16
// activations is broadcast against it. Per activation block (inside one weight group) the
// integer sums are scaled once: `sum += s_w[row] * s_x[token] * idot`. The unpacking runs once
// per block for all the batch's tokens; 32 multiply-adds per instruction against the fp32
// GEMM's 16.

/// Rows per panel (one zmm lane each), panels per register tile, tokens per register tile.
const I16_PANEL: usize = 16;
const I16_PANELS: usize = 2;
const I16_TOKENS: usize = 6;
const _: () = assert!(I16_TOKENS <= 8, "gemm_q4_i16_avx512 dispatches tiles of up to 8 tokens");
/// Rows one call of `gemm_q4_i16_avx512` computes.
pub const I16_ROWS: usize = I16_PANEL * I16_PANELS;

/// Working memory of `gemm_q4_i16_avx512`, kept per thread across calls.
#[derive(Default)]
pub struct I16Buffers {
    weights: Vec<__m512i>, // [I16_PANELS, block / 2] unpacked column pairs, lane = row
    partial: Vec<__m512>,  // [tiles, I16_PANELS, I16_TOKENS] fp32 sums, lane = row
}

/// `out[t * out_stride + r] = dot(W[r], x[t])` for rows `r0..r0 + I16_ROWS` (those that exist)
/// of a 4-bit matrix and every token of `x` (quantized in blocks inside weight groups, see
/// `Int16Activations::block_for`).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemm_q4_i16_avx512(
    w: &AffineData,
    rows: usize,
    cols: usize,
    r0: usize,
    x: &Int16Activations,
    buffers: &mut I16Buffers,
    out: *mut f32,
    out_stride: usize,
) {
    debug_assert!(w.bits == 4 && x.cols == cols && x.block % 32 == 0);
    let (block, n_tokens) = (x.block, x.n_tokens);
    let kps = block / 2; // column pairs (bytes) per block
    let n_blocks = x.padded / block;
    let row_bytes = AffineData::row_bytes(4, cols);
    let n_groups = w.n_groups(cols);
    let tiles = n_tokens.div_ceil(I16_TOKENS);
    buffers.weights.clear();
    buffers.weights.resize(I16_PANELS * kps, _mm512_setzero_si512());
    buffers.partial.clear();
    buffers.partial.resize(tiles * I16_PANELS * I16_TOKENS, _mm512_setzero_ps());
    let n_rows = rows.saturating_sub(r0).min(I16_ROWS);
    let valid: [usize; I16_PANELS] = std::array::from_fn(|p| n_rows.saturating_sub(p * I16_PANEL).min(I16_PANEL));
    let x_pairs = x.values.as_ptr() as *const i32; // [n_blocks, n_tokens, kps]
    let x_stride = kps; // pairs per token within a block
    for b in 0..n_blocks {
        let g = if w.group_size >= cols { 0 } else { (b * block / w.group_size).min(n_groups - 1) };
        // The rows' next block, requested while this one is multiplied: 32 rows a KB or more
        // apart are more streams than the hardware prefetcher follows.
        if b + 1 < n_blocks {
            let next = (b + 1) * kps;
            for j in 0..n_rows {
                let line = w.values.as_ptr().wrapping_add((r0 + j) * row_bytes + next);
                _mm_prefetch::<_MM_HINT_T0>(line as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(kps - 1) as *const i8);
            }
        }
        let mut ws = [_mm512_setzero_ps(); I16_PANELS];
        for (p, ws_p) in ws.iter_mut().enumerate() {
            *ws_p = unpack_panel_avx512(w, r0 + p * I16_PANEL, valid[p], g, n_groups, row_bytes, b * kps, kps, buffers, p);
        }
        let wp = buffers.weights.as_ptr();
        for tile in 0..tiles {
            let t0 = tile * I16_TOKENS;
            let nt = (n_tokens - t0).min(I16_TOKENS);
            let xp = x_pairs.add((b * n_tokens + t0) * kps);
            let mut xs = [0.0f32; I16_TOKENS];
            for (j, s) in xs.iter_mut().enumerate().take(nt) {
                *s = x.scales[(t0 + j) * n_blocks + b];
            }
            let partial = buffers.partial.as_mut_ptr().add(tile * I16_PANELS * I16_TOKENS);
            match nt {
                8 => i16_tile::<8>(wp, kps, xp, x_stride, &xs, &ws, partial),
                7 => i16_tile::<7>(wp, kps, xp, x_stride, &xs, &ws, partial),
                6 => i16_tile::<6>(wp, kps, xp, x_stride, &xs, &ws, partial),
                5 => i16_tile::<5>(wp, kps, xp, x_stride, &xs, &ws, partial),
                4 => i16_tile::<4>(wp, kps, xp, x_stride, &xs, &ws, partial),
                3 => i16_tile::<3>(wp, kps, xp, x_stride, &xs, &ws, partial),
                2 => i16_tile::<2>(wp, kps, xp, x_stride, &xs, &ws, partial),
                _ => i16_tile::<1>(wp, kps, xp, x_stride, &xs, &ws, partial),
            }
        }
    }
    for tile in 0..tiles {
        let t0 = tile * I16_TOKENS;
        for j in 0..(n_tokens - t0).min(I16_TOKENS) {
            for (p, &n) in valid.iter().enumerate() {
                if n > 0 {
                    let v = buffers.partial[(tile * I16_PANELS + p) * I16_TOKENS + j];
                    let dst = out.add((t0 + j) * out_stride + r0 + p * I16_PANEL);
                    _mm512_mask_storeu_ps(dst, ((1u32 << n) - 1) as u16, v);
                }
            }
        }
    }
}

/// Unpack bytes `byte0..byte0 + kps` of rows `row0..row0 + valid` into panel `p` of
/// `buffers.weights` (lane j = row j: low nibble - z in the low int16, high nibble - z in the
/// high one) and return the rows' weight scales for group `g`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn unpack_panel_avx512(
    w: &AffineData,
    row0: usize,
    valid: usize,
    g: usize,
    n_groups: usize,
    row_bytes: usize,
    byte0: usize,
    kps: usize,
    buffers: &mut I16Buffers,
    p: usize,
) -> __m512 {
    let dst = buffers.weights.as_mut_ptr().add(p * kps);
    if valid == 0 {
        for k in 0..kps {
            *dst.add(k) = _mm512_setzero_si512();
        }
        return _mm512_setzero_ps();
    }
    let mut scales = [0.0f32; I16_PANEL];
    let mut zeros = [0i32; I16_PANEL];
    for j in 0..valid {
        let i = (row0 + j) * n_groups + g;
        scales[j] = w.scales.get(i);
        zeros[j] = w.zeros[i] as i32 * 0x0001_0001;
    }
    let zz = _mm512_loadu_si512(zeros.as_ptr() as *const _);
    let low = _mm512_set1_epi32(0x0000_000f);
    let high = _mm512_set1_epi32(0x000f_0000);
    // 64 bytes of each row at a time (masked at the row's end, so nothing past it is read and
    // the activation's zero padding meets zero bytes), transposed so lane j is row j.
    for slab in 0..kps.div_ceil(64) {
        let start = byte0 + 64 * slab;
        let n_bytes = (kps - 64 * slab).min(64);
        let in_row = row_bytes.saturating_sub(start).min(n_bytes);
        let mask = if in_row >= 64 { u64::MAX } else { (1u64 << in_row) - 1 };
        let rows: [__m512i; I16_PANEL] = std::array::from_fn(|j| {
            if j < valid && in_row > 0 {
                _mm512_maskz_loadu_epi8(mask, w.values.as_ptr().add((row0 + j) * row_bytes + start) as *const i8)
            } else {
                _mm512_setzero_si512()
            }
        });
        let columns = transpose_16x16_epi32(rows);
        for (d, &v) in columns.iter().enumerate().take(n_bytes / 4) {
            // Lane j: bytes 4d..4d+3 of row j's slab, i.e. four column pairs.
            for i in 0..4 {
                let t = match i {
                    0 => v,
                    1 => _mm512_srli_epi32::<8>(v),
                    2 => _mm512_srli_epi32::<16>(v),
                    _ => _mm512_srli_epi32::<24>(v),
                };
                let pair = _mm512_or_si512(_mm512_and_si512(t, low), _mm512_and_si512(_mm512_slli_epi32::<12>(t), high));
                *dst.add(64 * slab + 4 * d + i) = _mm512_sub_epi16(pair, zz);
            }
        }
    }
    _mm512_loadu_ps(scales.as_ptr())
}

/// Transpose 16 rows of 16 dwords: `out[d]` lane j = `rows[j]` dword d. Two unpack stages
/// gather four rows' dwords per 128-bit lane, two 128-bit lane shuffles finish the job.
#[inline(always)]
unsafe fn transpose_16x16_epi32(r: [__m512i; 16]) -> [__m512i; 16] {
    // t[2i] lane L: rows 2i, 2i+1 at dwords 4L, 4L+1; t[2i+1]: at dwords 4L+2, 4L+3.
    let t: [__m512i; 16] = std::array::from_fn(|k| {
        let (a, b) = (r[k & !1], r[k | 1]);
        if k % 2 == 0 { _mm512_unpacklo_epi32(a, b) } else { _mm512_unpackhi_epi32(a, b) }
    });
    // u[4i + e] lane L: rows 4i..4i+3 at dword 4L + e.
    let u: [__m512i; 16] = std::array::from_fn(|k| {
        let (i, e) = (k / 4, k % 4);
        let (a, b) = (t[4 * i + e / 2], t[4 * i + 2 + e / 2]);
        if e % 2 == 0 { _mm512_unpacklo_epi64(a, b) } else { _mm512_unpackhi_epi64(a, b) }
    });
    let mut out = [_mm512_setzero_si512(); 16];
    for e in 0..4 {
        let (a, b, c, d) = (u[e], u[4 + e], u[8 + e], u[12 + e]);
        let s0 = _mm512_shuffle_i32x4::<0x44>(a, b); // a0 a1 b0 b1
        let s1 = _mm512_shuffle_i32x4::<0xee>(a, b); // a2 a3 b2 b3
        let s2 = _mm512_shuffle_i32x4::<0x44>(c, d);
        let s3 = _mm512_shuffle_i32x4::<0xee>(c, d);
        out[e] = _mm512_shuffle_i32x4::<0x88>(s0, s2); // lane 0 of a, b, c, d
        out[4 + e] = _mm512_shuffle_i32x4::<0xdd>(s0, s2);
        out[8 + e] = _mm512_shuffle_i32x4::<0x88>(s1, s3);
        out[12 + e] = _mm512_shuffle_i32x4::<0xdd>(s1, s3);
    }
    out
}

/// The register tile: `I16_PANELS` panels x `T` tokens of int32 sums over one block, then
/// `partial[p][t] += s_w[p] * s_x[t] * sum`.
#[inline(always)]
unsafe fn i16_tile<const T: usize>(
    w: *const __m512i,
    kps: usize,
    x: *const i32,
    x_stride: usize,
    x_scales: &[f32; I16_TOKENS],
    w_scales: &[__m512; I16_PANELS],
    partial: *mut __m512,
) {
    let mut acc = [[_mm512_setzero_si512(); T]; I16_PANELS];
    for k in 0..kps {
        let wv: [__m512i; I16_PANELS] = std::array::from_fn(|p| *w.add(p * kps + k));
        for t in 0..T {
            let xv = _mm512_set1_epi32(std::ptr::read_unaligned(x.add(t * x_stride + k)));
            for p in 0..I16_PANELS {
                acc[p][t] = _mm512_dpwssd_epi32(acc[p][t], wv[p], xv);
            }
        }
    }
    for t in 0..T {
        let xs = _mm512_set1_ps(x_scales[t]);
        for p in 0..I16_PANELS {
            let dst = partial.add(p * I16_TOKENS + t);
            *dst = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[p][t]), _mm512_mul_ps(w_scales[p], xs), *dst);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q8_0 (llama2.c runq): int8 weights x int8 activations

/// runq.c's Q8_0 row dot product for group sizes that are multiples of 32. The integer sum of
/// each group is exact (|w| <= 128 times |x| <= 127 fits `vpmaddubsw`'s i16 pairs), and the
/// float part runs in group order as in the scalar reference, so the result is bit-identical.
#[target_feature(enable = "avx2")]
pub unsafe fn dot_q8_avx2(w: &[i8], w_scales: &[f32], x: &[i8], x_scales: &[f32], group_size: usize) -> f32 {
    let ones = _mm256_set1_epi16(1);
    let mut sum = 0.0f32;
    for g in 0..w.len() / group_size {
        let mut acc = _mm256_setzero_si256();
        let mut k = g * group_size;
        while k < (g + 1) * group_size {
            let wv = _mm256_loadu_si256(w.as_ptr().add(k) as *const _);
            let xv = _mm256_loadu_si256(x.as_ptr().add(k) as *const _);
            // |w| as unsigned times x with w's sign: the same products, in maddubs' operand types.
            let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(xv, wv));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
            k += 32;
        }
        let mut lanes = [0i32; 8];
        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut _, acc);
        let idot: i32 = lanes.iter().sum();
        sum += idot as f32 * w_scales[g] * x_scales[g];
    }
    sum
}
