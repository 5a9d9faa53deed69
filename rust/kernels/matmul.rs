//! Matrix products over the thread pool: which kernel of the table runs, on which rows.
//!
//! `matmul` splits a matrix's output rows over the rayon pool the caller installed, in
//! contiguous ranges a few per thread (each thread streams its own part of the weights);
//! `matmul_shared_input` runs matrices that read one input (q, k and v; w1 and w3) in one
//! parallel region, so threads do not meet and idle between them.

use rayon::prelude::*;

use super::affine::activation::{self, Int16Activations, Int8Activation};
use super::affine::{with_scale_buffer, AffineRow, AffineRows, RowsOut};
use super::blocks::activation::BlockActivation;
use super::q8_0::QuantizedVec;
use super::Kernels;
use crate::disjoint::DisjointSlice;
use crate::weights::{AffineData, Matrix, MatrixData};

/// Per-call working memory of `matmul`, reused across calls so decoding allocates nothing.
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    q8: Vec<QuantizedVec>,        // [n_tokens] inputs quantized for Q8_0 weights
    int8: Vec<Int8Activation>,    // [n_tokens] inputs quantized for 4-bit weights
    int16: Int16Activations,      // [n_tokens] inputs quantized for the int16 GEMM
    blocks: Vec<BlockActivation>, // [n_tokens] inputs quantized for block weights
    permuted: Vec<f32>,           // [n_tokens, cols] inputs in stored column order (act-order, Q4_K pairs)
    #[cfg(target_arch = "x86_64")]
    block_sums: Vec<f32>, // [n_tokens, cols / 32] sub-block sums of the Q4_K GEMM's input
    group_sums: Vec<Vec<f32>>,    // [n_tokens][n_groups] input sums per group (affine weights)
}

/// Output rows per rayon task: enough work per task (~16K multiply-adds) that scheduling
/// does not dominate on small models.
fn rows_per_task(cols: usize, n_tokens: usize) -> usize {
    (16 * 1024 / (cols * n_tokens).max(1)).max(1)
}

/// From this many tokens on, 4-bit matrices run as the fp32 GEMM where the table has one and
/// no int16 GEMM: AVX2, and AVX-512 with `exact`.
pub const GEMM_MIN_TOKENS: usize = 4;

/// From this many tokens on, 4-bit matrices run as the int16 `vpdpwssd` GEMM on AVX-512 VNNI;
/// below, the int8 row kernel's tiles (`affine::avx512_batch`). GMAC/s on one thread, tiles /
/// GEMM, 2048 x 2048 group 128 (in L3): 4 tokens 48/38, 8 49/54, 12 47/66, 16 49/73; 32768 x
/// 4096 (from memory): 4 37/31, 8 55/46, 16 55/65. TinyLlama (our default export), 2 threads,
/// ms per step, same run: 4 streams 66/95, 8 streams 126-137/135-141, 16 about the same.
pub const I16_GEMM_MIN_TOKENS: usize = 8;

/// From this many tokens on, Q4_K and Q6_K matrices run as the int16 GEMM where the table has
/// one. Below, the row kernels are faster since they take tiles of 8 tokens through records
/// (`blocks::avx512`): one thread, in cache, GMAC/s rows/GEMM, Q4_K 16 tokens 116/67, 64
/// 110/83, 128 107/85, 512 97/81; Q6_K 16 105/45, 64 99/77, 128 98/84, 512 89/86. Prompts go
/// in batches of 64 (`PREFILL_BATCH`), so they take the rows now: TinyLlama Q4_K_M, 128-token
/// prefill, tok/s with the GEMM from 48 tokens / without, 2 threads 113-124 / 142-170, one
/// thread 65-72 / 83-94. (With four tokens per pass the GEMM won from 48 tokens on.)
pub const BLOCK_GEMM_MIN_TOKENS: usize = 512;

/// Rows the fp32 GEMM dequantizes per step.
#[cfg(target_arch = "x86_64")]
const GEMM_F32_ROWS: usize = super::affine::gemm_f32_x86::GEMM_ROWS;
#[cfg(not(target_arch = "x86_64"))]
const GEMM_F32_ROWS: usize = 4;

/// The int16 activation block when a 4-bit matrix runs as the `vpdpwssd` GEMM: a table with
/// that GEMM, batches of at least `I16_GEMM_MIN_TOKENS`, integer activations allowed, groups
/// that whole activation blocks fit in.
pub fn int16_gemm_block(k: &Kernels, a: &AffineData, cols: usize, n_tokens: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    let has_gemm = k.gemm_i16.is_some();
    #[cfg(not(target_arch = "x86_64"))]
    let has_gemm = false;
    if !has_gemm || !k.int8_activations() || a.bits != 4 || n_tokens < I16_GEMM_MIN_TOKENS {
        return None;
    }
    Int16Activations::block_for(a.group_size, cols)
}

/// `out[t, r] = dot(w[r, :], x[t, :])` for `n_tokens` inputs at once (`out` is
/// `[n_tokens, rows]`, `x` is `[n_tokens, cols]`). Rows run in parallel on the current rayon
/// pool; each row is read from memory once and applied to every token while it is in cache.
pub fn matmul(out: &mut [f32], w: &Matrix, x: &[f32], n_tokens: usize, scratch: &mut Scratch, k: &Kernels) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(out.len(), rows * n_tokens, "matmul: output length");
    assert_eq!(x.len(), cols * n_tokens, "matmul: input length");
    // Contiguous ranges of rows, a few per thread: each thread streams its own part of the
    // matrix, and small matrices are not split into tasks smaller than the scheduling cost.
    let threads = rayon::current_num_threads();
    let min_len = rows_per_task(cols, n_tokens).max(rows / (4 * threads));
    let dst = DisjointSlice::new(out);
    let dst = &dst;
    let for_rows = |f: &(dyn Fn(usize, usize) -> f32 + Sync)| {
        (0..rows).into_par_iter().with_min_len(min_len).for_each(|r| {
            for t in 0..n_tokens {
                // SAFETY: (t, r) is inside `out` ([n_tokens, rows]) and row r is this task's.
                unsafe { dst.write(t * rows + r, f(r, t)) };
            }
        });
    };
    let token = |t: usize| &x[t * cols..(t + 1) * cols];
    match &w.data {
        MatrixData::F32(wd) => {
            let dot = k.dot_f32;
            for_rows(&|r, t| dot(&wd[r * cols..(r + 1) * cols], token(t)));
        }
        MatrixData::Q8(q) => {
            let gs = q.group_size;
            scratch.q8.resize_with(n_tokens, QuantizedVec::default);
            for t in 0..n_tokens {
                scratch.q8[t].quantize(token(t), gs);
            }
            let xq = &scratch.q8;
            let groups = cols / gs;
            let dot = k.dot_q8;
            for_rows(&|r, t| {
                let (w, ws) = (&q.values[r * cols..(r + 1) * cols], &q.scales[r * groups..(r + 1) * groups]);
                dot(w, ws, &xq[t].values, &xq[t].scales, gs)
            });
        }
        MatrixData::Blocks(b) => {
            #[cfg(target_arch = "x86_64")]
            if let (Some(gemm), true) = (k.block_gemm(b.kind), n_tokens >= BLOCK_GEMM_MIN_TOKENS) {
                block_gemm(gemm, dst, b, rows, cols, x, n_tokens, scratch);
                return;
            }
            if let (true, Some(kernel)) = (k.int8_activations(), k.block_rows(b.kind)) {
                // Block rows against int8 activations, each task a contiguous range of rows.
                scratch.blocks.resize_with(n_tokens, Default::default);
                // Tokens in parallel: a batch's quantization would otherwise be a serial
                // stretch before every matrix (5% of a TinyLlama Q4_K_M step of 8 streams).
                scratch.blocks[..n_tokens].par_iter_mut().enumerate().for_each(|(t, a)| a.quantize(token(t)));
                let acts = &scratch.blocks[..n_tokens];
                let per_task = min_len;
                (0..rows.div_ceil(per_task)).into_par_iter().for_each(|task| {
                    let range = task * per_task..((task + 1) * per_task).min(rows);
                    let out = RowsOut { data: dst, offset: 0, stride: rows };
                    // SAFETY: each row is written by exactly one task; the output is
                    // [n_tokens, rows], and every activation was quantized from `cols` columns.
                    unsafe { kernel(b, cols, range, acts, out) };
                });
                return;
            }
            // Each row dequantized once into the thread's buffer, then applied to every token.
            let row_bytes = b.kind.row_bytes(cols).expect("validated when the file was read");
            let (dequantize, dot) = (k.dequantize_blocks, k.dot_f32);
            (0..rows).into_par_iter().with_min_len(min_len).for_each_init(Vec::new, |row, r| {
                row.resize(cols, 0.0);
                dequantize(b.kind, &b.values[r * row_bytes..(r + 1) * row_bytes], row);
                for t in 0..n_tokens {
                    // SAFETY: (t, r) is inside `out` ([n_tokens, rows]) and row r is this task's.
                    unsafe { dst.write(t * rows + r, dot(row, token(t))) };
                }
            });
        }
        MatrixData::Affine(a) => {
            let x = match &a.perm {
                None => x,
                Some(perm) => {
                    scratch.permuted.clear();
                    for t in 0..n_tokens {
                        let xt = token(t);
                        scratch.permuted.extend(perm.iter().map(|&p| xt[p as usize]));
                    }
                    &scratch.permuted[..]
                }
            };
            let job = AffineJob { out: dst, data: a, rows };
            if affine_integer(&[job], x, cols, n_tokens, (&mut scratch.int16, &mut scratch.int8), k) {
                return;
            }
            let token = |t: usize| &x[t * cols..(t + 1) * cols];
            let affine_rows = AffineRows::new(a, cols, k.f16_to_f32);
            let affine_rows = &affine_rows;
            if let (Some(gemm), 4, true) = (k.gemm_f32, a.bits, n_tokens >= GEMM_MIN_TOKENS) {
                // Prefill on AVX2, or exact on AVX-512: dequantize a few rows at a time and run
                // them against every token in fp32.
                const R: usize = GEMM_F32_ROWS;
                let blocks = rows.div_ceil(R);
                (0..blocks).into_par_iter().with_min_len((min_len / R).max(1)).for_each_init(Vec::new, |buffer, b| {
                    let mut scale_buffers: [Vec<f32>; R] = Default::default();
                    let block: Vec<AffineRow> = (b * R..((b + 1) * R).min(rows))
                        .zip(scale_buffers.iter_mut())
                        .map(|(r, scales)| affine_rows.row(r, scales))
                        .collect();
                    let out = RowsOut { data: dst, offset: b * R, stride: rows };
                    // SAFETY: the block's rows of every token are inside `out` and this task's.
                    unsafe { gemm(&block, x, n_tokens, buffer, out) };
                });
                return;
            }
            scratch.group_sums.resize_with(n_tokens, Vec::new);
            for t in 0..n_tokens {
                let sums = &mut scratch.group_sums[t];
                sums.clear();
                sums.extend(token(t).chunks(a.group_size).map(|g| g.iter().sum::<f32>()));
            }
            let sums = &scratch.group_sums;
            let dot = k.dot_affine_f32;
            for_rows(&|r, t| with_scale_buffer(|buf| dot(affine_rows.row(r, buf), token(t), &sums[t])));
        }
    }
}

/// A Q4_K or Q6_K matrix times a batch on the int16 GEMM: the input in the GEMM's pair order,
/// quantized once, and tasks of `ROWS` rows (a batch makes each heavy enough).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn block_gemm(
    gemm: super::blocks::BlockGemm,
    dst: &DisjointSlice<f32>,
    b: &crate::weights::BlockData,
    rows: usize,
    cols: usize,
    x: &[f32],
    n_tokens: usize,
    scratch: &mut Scratch,
) {
    use super::affine::gemm_i16_avx512::I16Buffers;
    use super::blocks::gemm_k_avx512::{levels, sub_block_sums, to_pair_order, BLOCK, ROWS};
    to_pair_order(b.kind, x, cols, &mut scratch.permuted);
    let levels = levels(b.kind).expect("a block type with a GEMM");
    scratch.int16.quantize_to(&scratch.permuted, n_tokens, cols, BLOCK, levels);
    if b.kind == crate::weights::BlockType::Q4K {
        sub_block_sums(&scratch.int16, &mut scratch.block_sums); // its mins
    }
    let (xq, sums) = (&scratch.int16, &scratch.block_sums[..]);
    (0..rows.div_ceil(ROWS)).into_par_iter().for_each_init(I16Buffers::default, |buffers, task| {
        let out = RowsOut { data: dst, offset: 0, stride: rows };
        // SAFETY: each block of ROWS rows is written by exactly one task; the output is
        // [n_tokens, rows]; x and sums were made as the GEMM needs (above).
        unsafe { gemm(b, rows, cols, task * ROWS, xq, sums, buffers, out) };
    });
}

/// Most matrices `matmul_shared_input` runs in one parallel region.
pub const MAX_SHARED: usize = 4;

/// `matmul` for several matrices that read the same input (q, k and v; w1 and w3): `jobs[i].0
/// = jobs[i].1 @ x`. When they are all 4-bit with the same groups and no act-order, they run
/// in one parallel region on one quantized input; otherwise one `matmul` after another.
pub fn matmul_shared_input(
    jobs: &mut [(&mut [f32], &Matrix)],
    x: &[f32],
    n_tokens: usize,
    scratch: &mut Scratch,
    k: &Kernels,
) {
    if !jobs.is_empty() && jobs.len() <= MAX_SHARED {
        let cols = jobs[0].1.cols;
        assert_eq!(x.len(), cols * n_tokens, "matmul: input length");
        let shared = jobs.iter().all(|(out, w)| {
            assert_eq!(out.len(), w.rows * n_tokens, "matmul: output length");
            matches!(&w.data, MatrixData::Affine(a) if a.perm.is_none()) && w.cols == cols
        });
        if shared {
            // Fixed-size tables, so decoding allocates nothing per call.
            let n_jobs = jobs.len();
            let mut matrices: [Option<&Matrix>; MAX_SHARED] = [None; MAX_SHARED];
            for (slot, (_, w)) in matrices.iter_mut().zip(jobs.iter()) {
                *slot = Some(*w);
            }
            let mut outs: [Option<DisjointSlice<f32>>; MAX_SHARED] = Default::default();
            for (slot, (out, _)) in outs.iter_mut().zip(jobs.iter_mut()) {
                *slot = Some(DisjointSlice::new(out));
            }
            let mut table: [Option<AffineJob>; MAX_SHARED] = [None; MAX_SHARED];
            for ((slot, out), w) in table.iter_mut().zip(&outs).zip(matrices) {
                if let (Some(out), Some(Matrix { rows, data: MatrixData::Affine(a), .. })) = (out, w) {
                    *slot = Some(AffineJob { out, data: a, rows: *rows });
                }
            }
            if let Some(first) = table[0] {
                let table = table.map(|j| j.unwrap_or(first));
                if affine_integer(&table[..n_jobs], x, cols, n_tokens, (&mut scratch.int16, &mut scratch.int8), k) {
                    return;
                }
            }
        }
    }
    for (out, w) in jobs.iter_mut() {
        matmul(out, w, x, n_tokens, scratch, k);
    }
}

/// One affine matrix for `affine_integer`: where its `[n_tokens, rows]` output goes.
#[derive(Clone, Copy)]
struct AffineJob<'s, 'a> {
    out: &'s DisjointSlice<'a, f32>,
    data: &'s AffineData<'s>,
    rows: usize,
}

/// 4-bit matrices times one input `x` (`[n_tokens, cols]`, already in stored column order) on
/// the table's integer kernels, all in one parallel region: the int16 GEMM for batches of at
/// least `I16_GEMM_MIN_TOKENS`, else the int8 row kernels (unless the table has an fp32 GEMM
/// for the batch and no int16 one). Returns false, having done nothing, when those kernels do not apply (`exact`,
/// other bits, groups that differ or that the kernels cannot take).
fn affine_integer(
    jobs: &[AffineJob],
    x: &[f32],
    cols: usize,
    n_tokens: usize,
    (int16, int8): (&mut Int16Activations, &mut Vec<Int8Activation>),
    k: &Kernels,
) -> bool {
    let first = jobs[0].data;
    if !k.int8_activations() || jobs.iter().any(|j| j.data.bits != 4 || j.data.group_size != first.group_size) {
        return false;
    }
    let threads = rayon::current_num_threads();
    let total_rows: usize = jobs.iter().map(|j| j.rows).sum();
    // Tasks of whole row ranges, a few per thread (see `matmul`), numbered across the jobs.
    let tasks_of = |per_task: usize| {
        let mut firsts = [0usize; MAX_SHARED + 1];
        for (i, j) in jobs.iter().enumerate() {
            firsts[i + 1] = firsts[i] + j.rows.div_ceil(per_task);
        }
        firsts
    };
    let job_of = |firsts: &[usize], task: usize| firsts[1..=jobs.len()].iter().position(|&f| task < f).unwrap();
    #[cfg(target_arch = "x86_64")]
    if let (Some(gemm), Some(block)) = (k.gemm_i16, int16_gemm_block(k, first, cols, n_tokens)) {
        use super::affine::gemm_i16_avx512::{I16Buffers, I16_ROWS};
        int16.quantize(x, n_tokens, cols, block);
        let xq = &*int16;
        let firsts = tasks_of(I16_ROWS);
        // Every 32-row block a task of its own: a batch makes each block heavy enough, and fine
        // tasks balance the threads.
        (0..firsts[jobs.len()]).into_par_iter().for_each_init(I16Buffers::default, |buffers, task| {
            let i = job_of(&firsts, task);
            let j = jobs[i];
            let r0 = (task - firsts[i]) * I16_ROWS;
            let out = RowsOut { data: j.out, offset: 0, stride: j.rows };
            // SAFETY: each block of rows of each job is written by exactly one task, and the
            // job's output is [n_tokens, rows]; x was quantized in a block that fits the groups.
            unsafe { gemm(j.data, j.rows, cols, r0, xq, buffers, out) };
        });
        return true;
    }
    let _ = &int16;
    let Some(rows_kernel) = k.rows_i8 else { return false };
    #[cfg(target_arch = "x86_64")]
    let f32_gemm_first = k.gemm_f32.is_some() && k.gemm_i16.is_none() && n_tokens >= GEMM_MIN_TOKENS;
    #[cfg(not(target_arch = "x86_64"))]
    let f32_gemm_first = k.gemm_f32.is_some() && n_tokens >= GEMM_MIN_TOKENS;
    if f32_gemm_first || !activation::lanes_fit_groups(first.group_size, cols) {
        return false;
    }
    int8.resize_with(n_tokens, Default::default);
    for t in 0..n_tokens {
        int8[t].quantize(&x[t * cols..(t + 1) * cols]);
        int8[t].update_group_sums(first.group_size);
    }
    let acts = &int8[..n_tokens];
    // One task size for all the matrices, from the rows they hold together.
    let per_task = rows_per_task(cols, n_tokens).max(total_rows / (4 * threads * jobs.len()));
    let firsts = tasks_of(per_task);
    (0..firsts[jobs.len()]).into_par_iter().for_each(|task| {
        let i = job_of(&firsts, task);
        let j = jobs[i];
        let affine_rows = AffineRows::new(j.data, cols, k.f16_to_f32);
        let r0 = (task - firsts[i]) * per_task;
        let range = r0..(r0 + per_task).min(j.rows);
        let out = RowsOut { data: j.out, offset: 0, stride: j.rows };
        // Each task runs its range of rows through one kernel call (one token: rows in pairs).
        // SAFETY: each row of each job is written by exactly one task; the job's output is
        // [n_tokens, rows], and every activation was quantized from `cols` columns.
        with_scale_buffer(|buffer| unsafe { rows_kernel(&affine_rows, range, acts, buffer, out) });
    });
    true
}

/// `matmul` for one input vector.
pub fn matvec(out: &mut [f32], w: &Matrix, x: &[f32], scratch: &mut Scratch, k: &Kernels) {
    matmul(out, w, x, 1, scratch, k);
}
