//! Matrix kernels: weights (fp32, Q8_0, affine 4/8-bit) times one or many activation vectors.
//!
//! Implementations, chosen per model at run time (`Isa`): `scalar.rs`, plain loops in llama2.c's
//! summation order, the reference; `fast.rs`, portable Rust the compiler vectorizes; `x86.rs`,
//! AVX2 and AVX-512 VNNI (int8 activations from `act.rs` for 4-bit decode; for prefill an int16
//! `vpdpwssd` GEMM on AVX-512 and an fp32 GEMM on AVX2); `neon.rs`, aarch64 `sdot` for 4-bit
//! and Q8_0 rows. Tests run every implementation this CPU
//! supports against the reference and a float64 expectation on random shapes. `matmul` splits
//! the output rows over the rayon pool the caller installed; `matmul_shared_input` runs
//! matrices that read one input in one parallel region.

pub mod act;
pub mod fast;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;
#[cfg(target_arch = "aarch64")]
pub mod neon;

use rayon::prelude::*;

use crate::tensor::{AffineData, Matrix, MatrixData};

/// The dot products a matrix-vector product is made of.
pub trait Kernels: Sync {
    /// `sum_i a[i] * b[i]`.
    fn dot_f32(a: &[f32], b: &[f32]) -> f32;

    /// runq.c's Q8_0 dot product of one weight row with a quantized activation:
    /// per group an exact integer dot product, then `sum += (idot as f32) * w_scale * x_scale`.
    fn dot_q8(w: &[i8], w_scales: &[f32], x: &[i8], x_scales: &[f32], group_size: usize) -> f32;

    /// One row of an affine-quantized matrix times fp32 `x` (already in stored column order):
    /// `sum_c scales[g] * (q[c] - zeros[g]) * x[c]`, `g = c / group_size`.
    /// `x_group_sums[g]` is `sum` of `x` over group `g` (for the zero-point term).
    fn dot_affine(row: AffineRow, x: &[f32], x_group_sums: &[f32]) -> f32;
}

/// One packed row of an affine-quantized matrix.
#[derive(Clone, Copy)]
pub struct AffineRow<'a> {
    pub bits: u32,
    pub values: &'a [u8], // [row_bytes]
    pub scales: &'a [f32], // [n_groups]
    pub zeros: &'a [u8],  // [n_groups]
    pub group_size: usize,
    pub cols: usize,
}

/// The rows of an affine matrix as `AffineRow`s. fp16 scales are converted to fp32 one row at
/// a time into a buffer the caller keeps (`with_scale_buffer`), so the kernels read fp32 only.
#[derive(Clone, Copy)]
pub struct AffineRows<'a> {
    pub data: &'a AffineData<'a>,
    pub cols: usize,
    groups: usize,
    row_bytes: usize,
}

impl<'a> AffineRows<'a> {
    pub fn new(data: &'a AffineData<'a>, cols: usize) -> Self {
        AffineRows { data, cols, groups: data.n_groups(cols), row_bytes: AffineData::row_bytes(data.bits, cols) }
    }

    #[inline(always)]
    pub fn row<'s>(&'s self, r: usize, buffer: &'s mut Vec<f32>) -> AffineRow<'s> {
        let g = self.groups;
        self.row_with_scales(r, self.data.scales.slice(r * g, g, buffer))
    }

    /// Row `r` with its scales already in fp32 (`[n_groups]`).
    #[inline(always)]
    pub fn row_with_scales<'s>(&'s self, r: usize, scales: &'s [f32]) -> AffineRow<'s> {
        let (a, g) = (self.data, self.groups);
        AffineRow {
            bits: a.bits,
            values: &a.values[r * self.row_bytes..(r + 1) * self.row_bytes],
            scales,
            zeros: &a.zeros[r * g..(r + 1) * g],
            group_size: a.group_size,
            cols: self.cols,
        }
    }

    pub fn n_groups(&self) -> usize {
        self.groups
    }

    /// Ask for row `r`'s scales and zero points ahead of use: they are streams of their own,
    /// of a few bytes per row, that the hardware prefetcher follows late.
    #[inline(always)]
    pub fn prefetch_group_data(&self, r: usize) {
        #[cfg(target_arch = "x86_64")]
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let (scales, width) = self.data.scales.byte_address(r * self.groups);
            _mm_prefetch::<_MM_HINT_T0>(scales as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(scales.wrapping_add(width * self.groups) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(self.data.zeros.as_ptr().wrapping_add(r * self.groups) as *const i8);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = r;
    }
}

thread_local! {
    /// Per-thread room for one row's scales converted from fp16.
    static SCALE_BUFFER: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` with this thread's scale buffer (`AffineRows::row` converts fp16 scales into it).
pub fn with_scale_buffer<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    SCALE_BUFFER.with_borrow_mut(f)
}

/// An activation vector quantized to int8 in groups, as runq.c's `quantize` does.
#[derive(Debug, Default, Clone)]
pub struct QuantizedVec {
    pub values: Vec<i8>,  // [n]
    pub scales: Vec<f32>, // [n / group_size]
    pub group_size: usize,
}

impl QuantizedVec {
    pub fn with_capacity(n: usize, group_size: usize) -> Self {
        QuantizedVec {
            values: Vec::with_capacity(n),
            scales: Vec::with_capacity(n / group_size.max(1)),
            group_size,
        }
    }

    /// Quantize `x` (length a multiple of the group size): scale = max|x| / 127 per group,
    /// value = round(x / scale) (half away from zero, like C's `round`).
    pub fn quantize(&mut self, x: &[f32], group_size: usize) {
        debug_assert!(group_size > 0 && x.len() % group_size == 0);
        self.group_size = group_size;
        self.values.clear();
        self.scales.clear();
        for group in x.chunks_exact(group_size) {
            let max_abs = group.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = max_abs / 127.0;
            self.scales.push(scale);
            if scale == 0.0 {
                // runq.c would divide by zero here; an all-zero group quantizes to zeros.
                self.values.extend(std::iter::repeat_n(0i8, group_size));
            } else {
                self.values.extend(group.iter().map(|v| (v / scale).round() as i8));
            }
        }
    }
}

/// `sum_g scales[g] * zeros[g] * group_sums[g]`: the zero-point part of a row's dot product.
#[inline(always)]
pub(crate) fn zero_term(row: &AffineRow, group_sums: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let n = row.scales.len();
    let mut g = 0;
    while g + 8 <= n {
        for k in 0..8 {
            acc[k] += row.scales[g + k] * row.zeros[g + k] as f32 * group_sums[g + k];
        }
        g += 8;
    }
    let mut total: f32 = acc.iter().sum();
    while g < n {
        total += row.scales[g] * row.zeros[g] as f32 * group_sums[g];
        g += 1;
    }
    total
}

/// The fp32 dot product of `isa` (attention scores use it as well as fp32 matrices).
pub fn dot_f32_for(isa: Isa) -> fn(&[f32], &[f32]) -> f32 {
    match isa {
        Isa::Scalar => scalar::Scalar::dot_f32,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => |a, b| unsafe { x86::dot_f32_avx2(a, b) },
        _ => fast::Fast::dot_f32,
    }
}

/// A head's attention for one query, both halves, for `isa`: `scores(q, keys, scale, att)`
/// fills `att[p] = dot(q, keys[p]) / scale`; `sum(att, values, out)` adds `att[p] * values[p]`
/// into `out` in position order. `keys` and `values` are `[positions, head_size]` of the KV
/// cache's element type `T`.
pub struct AttentionKernels<T> {
    pub scores: fn(&[f32], &[T], f32, &mut [f32]),
    pub sum: fn(&[f32], &[T], &mut [f32]),
}

/// What the KV cache stores: fp32 (run.c's cache), or fp16, which halves the cache's memory
/// and the bytes attention reads per token.
pub trait CacheValue: Copy + Default + Send + Sync + 'static {
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    fn attention_for(isa: Isa) -> AttentionKernels<Self>;
    /// `to[i] = from_f32(from[i])`.
    fn store(from: &[f32], to: &mut [Self]) {
        store_each(from, to);
    }
    /// `len` zeros, from fresh (untouched) pages: a long context costs memory only as far
    /// as it is used.
    fn zeros(len: usize) -> Vec<Self>;
}

impl CacheValue for f32 {
    fn from_f32(v: f32) -> f32 {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn store(from: &[f32], to: &mut [f32]) {
        to.copy_from_slice(from);
    }
    fn zeros(len: usize) -> Vec<f32> {
        vec![0.0; len] // a zeroed allocation
    }
    fn attention_for(isa: Isa) -> AttentionKernels<f32> {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 => AttentionKernels {
                scores: |q, keys, scale, att| unsafe { x86::attention_scores_avx2(q, keys, scale, att) },
                sum: |att, values, out| unsafe { x86::attention_sum_avx2(att, values, out) },
            },
            Isa::Scalar => AttentionKernels { scores: attention_scores_plain, sum: attention_sum_plain },
            _ => AttentionKernels {
                scores: |q, keys, scale, att| attention_scores_with(fast::Fast::dot_f32, q, keys, scale, att),
                sum: attention_sum_plain,
            },
        }
    }
}

/// `CacheValue::store`, one value at a time.
fn store_each<T: CacheValue>(from: &[f32], to: &mut [T]) {
    for (t, &f) in to.iter_mut().zip(from) {
        *t = T::from_f32(f);
    }
}

/// An IEEE fp16 value, as its bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct F16(pub u16);

impl CacheValue for F16 {
    fn from_f32(v: f32) -> F16 {
        F16(crate::tensor::f32_to_f16(v))
    }
    fn to_f32(self) -> f32 {
        crate::tensor::f16_to_f32(self.0)
    }
    fn store(from: &[f32], to: &mut [F16]) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("f16c") {
            // SAFETY: the feature is present.
            return unsafe { x86::f32s_to_f16_f16c(from, to) };
        }
        store_each(from, to);
    }
    fn zeros(len: usize) -> Vec<F16> {
        // `vec![F16(0); len]` would write every element; a zeroed u16 allocation is not
        // touched until used. F16 is a transparent u16, so the buffer is a valid Vec<F16>.
        let mut bits = std::mem::ManuallyDrop::new(vec![0u16; len]);
        // SAFETY: same size, alignment and validity (any bits); ownership moves over.
        unsafe { Vec::from_raw_parts(bits.as_mut_ptr() as *mut F16, bits.len(), bits.capacity()) }
    }
    fn attention_for(isa: Isa) -> AttentionKernels<F16> {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 => AttentionKernels {
                scores: |q, keys, scale, att| unsafe { x86::attention_scores_f16_avx2(q, keys, scale, att) },
                sum: |att, values, out| unsafe { x86::attention_sum_f16_avx2(att, values, out) },
            },
            _ => AttentionKernels { scores: attention_scores_plain, sum: attention_sum_plain },
        }
    }
}

/// Attention reads each head's keys, then its values, as runs of a few KB that start at a
/// different place for every head: too short for the hardware prefetcher to get going. Each
/// position asks for the one this many bytes further on. Measured on 7B decode (fp16 cache,
/// 128-192 positions, 40 KB runs per head): attention 7.5 -> 5.8 ms/token on one thread,
/// 4.7 -> 3.9 on two; 4 KB ahead beat 1, 2, 8 and 16 KB.
pub const ATTENTION_PREFETCH_AHEAD: usize = 4096;

/// The reference weighted sum: run.c's loop, each product and sum rounded in position order.
fn attention_sum_plain<T: CacheValue>(att: &[f32], values: &[T], out: &mut [f32]) {
    for (&a, v) in att.iter().zip(values.chunks_exact(out.len())) {
        for (o, &x) in out.iter_mut().zip(v) {
            *o += a * x.to_f32();
        }
    }
}

/// The reference scores: run.c's sequential dot product per position.
fn attention_scores_plain<T: CacheValue>(q: &[f32], keys: &[T], scale: f32, att: &mut [f32]) {
    for (a, key) in att.iter_mut().zip(keys.chunks_exact(q.len())) {
        let mut sum = 0.0f32;
        for (&x, &k) in q.iter().zip(key) {
            sum += x * k.to_f32();
        }
        *a = sum / scale;
    }
}

fn attention_scores_with(dot: fn(&[f32], &[f32]) -> f32, q: &[f32], keys: &[f32], scale: f32, att: &mut [f32]) {
    for (a, key) in att.iter_mut().zip(keys.chunks_exact(q.len())) {
        *a = dot(q, key) / scale;
    }
}

/// Which implementation runs the kernels. Chosen once per model from the CPU's features
/// (`Isa::detect`); every one of them is tested against `Scalar`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// The reference kernels (`scalar.rs`): plain loops.
    Scalar,
    /// Portable Rust (`fast.rs`), vectorized by the compiler for the baseline target.
    Portable,
    /// x86-64 AVX2 + FMA + F16C (`x86.rs`).
    Avx2,
    /// x86-64 AVX-512 with VNNI (`x86.rs`).
    Avx512,
    /// aarch64 NEON with the dot-product extension (`neon.rs`).
    Neon,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Can this CPU run it?
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar | Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            // F16C (fp16 scales and KV cache) came with or before AVX2 on every CPU that has it.
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                // It runs the AVX2 kernels where it has no wider ones (attention, fp32).
                Isa::Avx2.supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest implementation this CPU supports.
    pub fn detect() -> Isa {
        [Isa::Avx512, Isa::Avx2, Isa::Neon].into_iter().find(|i| i.supported()).unwrap_or(Isa::Portable)
    }

    /// Every implementation this CPU supports, slowest first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.supported()).collect()
    }

    /// Every implementation, slowest first (on its own architecture).
    pub const ALL: [Isa; 5] = [Isa::Scalar, Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Neon];
}

/// How a model's matrices are multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelChoice {
    pub isa: Isa,
    /// 4-bit weights: quantize the activation to int8 (blocks of 32) and use integer dot
    /// products (fast). `false` keeps it fp32 (the exact path).
    pub int8_activations: bool,
}

impl KernelChoice {
    pub fn new(isa: Isa) -> KernelChoice {
        KernelChoice { isa, int8_activations: true }
    }
}

/// Per-call working memory of `matmul`, reused across calls so decoding allocates nothing.
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    q8: Vec<QuantizedVec>,         // [n_tokens] inputs quantized for Q8_0 weights
    int8: Vec<act::Int8Activation>, // [n_tokens] inputs quantized for 4-bit weights
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    int16: act::Int16Activations,  // [n_tokens] inputs quantized for the 4-bit GEMM (x86)
    permuted: Vec<f32>,            // [n_tokens, cols] inputs in stored column order (act-order)
    group_sums: Vec<Vec<f32>>,     // [n_tokens][n_groups] input sums per group (affine weights)
}

/// Output rows per rayon task: enough work per task (~16K multiply-adds) that scheduling
/// does not dominate on small models.
fn rows_per_task(cols: usize, n_tokens: usize) -> usize {
    (16 * 1024 / (cols * n_tokens).max(1)).max(1)
}

/// From this many tokens on, 4-bit matrices run as a GEMM: int16 activations on AVX-512 VNNI
/// (fp32 with `exact`), fp32 on AVX2.
pub const GEMM_MIN_TOKENS: usize = 4;

/// The int16 activation block when a 4-bit matrix runs as the AVX-512 `vpdpwssd` GEMM:
/// batches of at least `GEMM_MIN_TOKENS`, integer activations allowed, groups that whole
/// activation blocks fit in.
pub fn int16_gemm_block(k: KernelChoice, a: &AffineData, cols: usize, n_tokens: usize) -> Option<usize> {
    if k.isa != Isa::Avx512 || !k.int8_activations || a.bits != 4 || n_tokens < GEMM_MIN_TOKENS {
        return None;
    }
    act::Int16Activations::block_for(a.group_size, cols)
}

/// A raw output pointer that row tasks write through at disjoint indices.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `out[t, r] = dot(w[r, :], x[t, :])` for `n_tokens` inputs at once (`out` is
/// `[n_tokens, rows]`, `x` is `[n_tokens, cols]`). Rows run in parallel on the current rayon
/// pool; each row is read from memory once and applied to every token while it is in cache.
pub fn matmul(out: &mut [f32], w: &Matrix, x: &[f32], n_tokens: usize, scratch: &mut Scratch, k: KernelChoice) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(out.len(), rows * n_tokens, "matmul: output length");
    assert_eq!(x.len(), cols * n_tokens, "matmul: input length");
    // Contiguous ranges of rows, a few per thread: each thread streams its own part of the
    // matrix, and small matrices are not split into tasks smaller than the scheduling cost.
    let threads = rayon::current_num_threads();
    let min_len = rows_per_task(cols, n_tokens).max(rows / (4 * threads));
    let dst = OutPtr(out.as_mut_ptr());
    // SAFETY (all writes below): each (t, r) is written by exactly one task, inside `out`.
    let for_rows = |f: &(dyn Fn(usize, usize) -> f32 + Sync)| {
        (0..rows).into_par_iter().with_min_len(min_len).for_each(|r| {
            let dst = dst;
            for t in 0..n_tokens {
                unsafe { *dst.0.add(t * rows + r) = f(r, t) };
            }
        });
    };
    let token = |t: usize| &x[t * cols..(t + 1) * cols];
    match &w.data {
        MatrixData::F32(wd) => {
            let dot = dot_f32_for(k.isa);
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
            // The integer sums are exact and the float part runs in group order in every one.
            let dot: fn(&[i8], &[f32], &[i8], &[f32], usize) -> f32 = match k.isa {
                Isa::Scalar => scalar::Scalar::dot_q8,
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 | Isa::Avx512 if gs % 32 == 0 => |w, ws, x, xs, gs| unsafe { x86::dot_q8_avx2(w, ws, x, xs, gs) },
                #[cfg(target_arch = "aarch64")]
                Isa::Neon if gs % 16 == 0 => |w, ws, x, xs, gs| unsafe { neon::dot_q8_neon(w, ws, x, xs, gs) },
                _ => fast::Fast::dot_q8,
            };
            for_rows(&|r, t| {
                let (w, ws) = (&q.values[r * cols..(r + 1) * cols], &q.scales[r * groups..(r + 1) * groups]);
                dot(w, ws, &xq[t].values, &xq[t].scales, gs)
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
            let token = |t: usize| &x[t * cols..(t + 1) * cols];
            let affine_rows = AffineRows::new(a, cols);
            let affine_rows = &affine_rows;
            // The int16 GEMM (batches) and the int8 row kernels (decode), shared with
            // `matmul_shared_input`.
            #[cfg(target_arch = "x86_64")]
            if affine_fast_x86(&[AffineJob { out: dst, data: a, rows }], x, cols, n_tokens, (&mut scratch.int16, &mut scratch.int8), k) {
                return;
            }
            #[cfg(target_arch = "x86_64")]
            if matches!(k.isa, Isa::Avx512 | Isa::Avx2) && a.bits == 4 && n_tokens >= GEMM_MIN_TOKENS {
                // Prefill on AVX2, or exact on AVX-512: dequantize a few rows at a time and run
                // them against every token in fp32. With the dequantization paid once per row for
                // the whole batch, fp32 FMAs beat int8 dot products with a residual, whose
                // activation side costs 9 instructions per 128 weights per token.
                const R: usize = x86::GEMM_ROWS;
                let blocks = rows.div_ceil(R);
                (0..blocks).into_par_iter().with_min_len((min_len / R).max(1)).for_each_init(Vec::new, |buffer, b| {
                    let dst = dst;
                    let mut scale_buffers: [Vec<f32>; R] = Default::default();
                    let block: Vec<AffineRow> = (b * R..((b + 1) * R).min(rows))
                        .zip(scale_buffers.iter_mut())
                        .map(|(r, scales)| affine_rows.row(r, scales))
                        .collect();
                    let write = |t: usize, i: usize, v: f32| unsafe { *dst.0.add(t * rows + b * R + i) = v };
                    match k.isa {
                        Isa::Avx512 => unsafe { x86::gemm_q4_f32_avx512(&block, x, n_tokens, buffer, write) },
                        _ => unsafe { x86::gemm_q4_f32_avx2(&block, x, n_tokens, buffer, write) },
                    }
                });
                return;
            }
            let int8 = k.int8_activations
                && a.bits == 4
                && k.isa != Isa::Portable
                && act::lanes_fit_groups(a.group_size, cols);
            if int8 {
                scratch.int8.resize_with(n_tokens, Default::default);
                for t in 0..n_tokens {
                    scratch.int8[t].quantize(token(t));
                    scratch.int8[t].update_group_sums(a.group_size);
                }
                let acts = &scratch.int8[..n_tokens];
                let dot: fn(AffineRow, &act::Int8Activation) -> f32 = match k.isa {
                    #[cfg(target_arch = "aarch64")]
                    Isa::Neon => |row, act| unsafe { neon::dot_q4_i8_neon(row, act) },
                    _ => scalar::dot_q4_i8,
                };
                for_rows(&|r, t| with_scale_buffer(|buf| dot(affine_rows.row(r, buf), &acts[t])));
            } else {
                scratch.group_sums.resize_with(n_tokens, Vec::new);
                for t in 0..n_tokens {
                    let sums = &mut scratch.group_sums[t];
                    sums.clear();
                    sums.extend(token(t).chunks(a.group_size).map(|g| g.iter().sum::<f32>()));
                }
                let sums = &scratch.group_sums;
                if k.isa == Isa::Scalar {
                    for_rows(&|r, t| with_scale_buffer(|buf| scalar::Scalar::dot_affine(affine_rows.row(r, buf), token(t), &sums[t])));
                } else {
                    for_rows(&|r, t| with_scale_buffer(|buf| fast::Fast::dot_affine(affine_rows.row(r, buf), token(t), &sums[t])));
                }
            }
        }
    }
}

/// Most matrices `matmul_shared_input` runs in one parallel region.
pub const MAX_SHARED: usize = 4;

/// `matmul` for several matrices that read the same input (q, k and v; w1 and w3): `jobs[i].0
/// = jobs[i].1 @ x`. When they are all 4-bit with the same groups and no act-order, they run
/// in one parallel region on one quantized input, so threads do not meet (and idle) between
/// the matrices; otherwise one `matmul` after another.
pub fn matmul_shared_input(jobs: &mut [(&mut [f32], &Matrix)], x: &[f32], n_tokens: usize, scratch: &mut Scratch, k: KernelChoice) {
    #[cfg(target_arch = "x86_64")]
    if !jobs.is_empty() && jobs.len() <= MAX_SHARED {
        let cols = jobs[0].1.cols;
        assert_eq!(x.len(), cols * n_tokens, "matmul: input length");
        let mut table: [Option<AffineJob>; MAX_SHARED] = [None; MAX_SHARED];
        for (slot, (out, w)) in table.iter_mut().zip(jobs.iter_mut()) {
            assert_eq!(out.len(), w.rows * n_tokens, "matmul: output length");
            if let MatrixData::Affine(a) = &w.data {
                if a.perm.is_none() && w.cols == cols {
                    *slot = Some(AffineJob { out: OutPtr(out.as_mut_ptr()), data: a, rows: w.rows });
                }
            }
        }
        if let [Some(first), ..] = table {
            if table[..jobs.len()].iter().all(Option::is_some) {
                let table = table.map(|j| j.unwrap_or(first)); // no allocation per call
                if affine_fast_x86(&table[..jobs.len()], x, cols, n_tokens, (&mut scratch.int16, &mut scratch.int8), k) {
                    return;
                }
            }
        }
    }
    for (out, w) in jobs.iter_mut() {
        matmul(out, w, x, n_tokens, scratch, k);
    }
}

/// One affine matrix for `affine_fast_x86`: where its `[n_tokens, rows]` output goes.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct AffineJob<'a> {
    out: OutPtr,
    data: &'a AffineData<'a>,
    rows: usize,
}

/// 4-bit matrices times one input `x` (`[n_tokens, cols]`, already in stored column order) on
/// the x86 integer kernels, all in one parallel region: the int16 GEMM for batches of at least
/// `GEMM_MIN_TOKENS`, the int8 row kernels for decoding. Returns false, having done nothing,
/// when those kernels do not apply (another ISA, `exact`, other bits, groups that differ or
/// that the kernels cannot take).
#[cfg(target_arch = "x86_64")]
fn affine_fast_x86(
    jobs: &[AffineJob],
    x: &[f32],
    cols: usize,
    n_tokens: usize,
    (int16, int8): (&mut act::Int16Activations, &mut Vec<act::Int8Activation>),
    k: KernelChoice,
) -> bool {
    let first = jobs[0].data;
    if jobs.iter().any(|j| j.data.bits != 4 || j.data.group_size != first.group_size) {
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
    if let Some(block) = int16_gemm_block(k, first, cols, n_tokens) {
        int16.quantize(x, n_tokens, cols, block);
        let xq = &*int16;
        let firsts = tasks_of(x86::I16_ROWS);
        // Every 32-row block a task of its own: a batch makes each block heavy enough, and fine
        // tasks balance the threads.
        (0..firsts[jobs.len()]).into_par_iter().for_each_init(x86::I16Buffers::default, |buffers, task| {
            let i = job_of(&firsts, task);
            let j = jobs[i];
            let r0 = (task - firsts[i]) * x86::I16_ROWS;
            // SAFETY: each block of rows of each job is written by exactly one task.
            unsafe { x86::gemm_q4_i16_avx512(j.data, j.rows, cols, r0, xq, buffers, j.out.0, j.rows) };
        });
        return true;
    }
    let rows_kernels = matches!(k.isa, Isa::Avx512 | Isa::Avx2) && k.int8_activations && n_tokens < GEMM_MIN_TOKENS;
    if !rows_kernels || !act::lanes_fit_groups(first.group_size, cols) {
        return false;
    }
    int8.resize_with(n_tokens, Default::default);
    for t in 0..n_tokens {
        int8[t].quantize(&x[t * cols..(t + 1) * cols]);
        int8[t].update_group_sums(first.group_size);
    }
    let acts = &int8[..n_tokens];
    let plan = x86::Q4Plan::new(first.group_size, cols);
    // One task size for all the matrices, from the rows they hold together.
    let per_task = rows_per_task(cols, n_tokens).max(total_rows / (4 * threads * jobs.len()));
    let firsts = tasks_of(per_task);
    (0..firsts[jobs.len()]).into_par_iter().for_each(|task| {
        let i = job_of(&firsts, task);
        let j = jobs[i];
        let affine_rows = AffineRows::new(j.data, cols);
        let r0 = (task - firsts[i]) * per_task;
        let range = r0..(r0 + per_task).min(j.rows);
        // SAFETY: each row of each job is written by exactly one task.
        let write = |t: usize, r: usize, v: f32| unsafe { *j.out.0.add(t * j.rows + r) = v };
        // Each task runs its range of rows through one kernel call (one token: rows in pairs).
        with_scale_buffer(|buffer| match k.isa {
            Isa::Avx512 => unsafe { x86::rows_q4_i8_avx512(&affine_rows, range, acts, &plan, buffer, write) },
            _ => unsafe { x86::rows_q4_i8_avx2(&affine_rows, range, acts, buffer, write) },
        });
    });
    true
}

/// `matmul` for one input vector.
pub fn matvec(out: &mut [f32], w: &Matrix, x: &[f32], scratch: &mut Scratch, k: KernelChoice) {
    matmul(out, w, x, 1, scratch, k);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{Q8Data, Scales};

    /// Small deterministic generator (xorshift) so tests need no extra crates.
    struct Rng(u64);
    impl Rng {
        fn next_f32(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn unit(&mut self) -> f32 {
            (self.next_f32() + 1.0) / 2.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next_f32()).collect()
        }
    }

    const SHAPES: &[(usize, usize)] = &[
        (1, 1), (3, 7), (5, 8), (17, 31), (9, 33), (64, 64), (172, 64), (64, 172), (13, 129), (7, 300),
        (33, 256), (5, 1000), (3, 1500),
    ];

    fn choices() -> Vec<KernelChoice> {
        Isa::available().into_iter().map(KernelChoice::new).collect()
    }

    fn run(w: &Matrix, x: &[f32], n_tokens: usize, k: KernelChoice) -> Vec<f32> {
        let mut out = vec![0.0; w.rows * n_tokens];
        matmul(&mut out, w, x, n_tokens, &mut Scratch::default(), k);
        out
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f64, what: &str) {
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            let scale = 1.0 + (y as f64).abs();
            assert!(((x - y) as f64).abs() <= tol * scale, "{what} [{i}]: {x} vs {y}");
        }
    }

    #[test]
    fn every_isa_runs_here_and_detect_picks_a_supported_one() {
        assert!(Isa::detect().supported());
        assert!(Isa::available().contains(&Isa::Scalar) && Isa::available().contains(&Isa::Portable));
        assert_eq!(Isa::from_name("avx2"), Some(Isa::Avx2));
        assert_eq!(Isa::from_name("neon"), Some(Isa::Neon));
        // Where the CPU has the dot-product extension (qemu-aarch64's default CPU does), the
        // NEON kernels are chosen, so the kernel tests run them.
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            assert_eq!(Isa::detect(), Isa::Neon);
        }
    }

    #[test]
    fn f32_kernels_match_scalar_and_float64() {
        let mut rng = Rng(0x1234_5678);
        for &(rows, cols) in SHAPES {
            let w = rng.vec(rows * cols);
            let x = rng.vec(2 * cols);
            let m = Matrix { rows, cols, data: MatrixData::F32(w.clone().into()) };
            let exact: Vec<f32> = (0..2)
                .flat_map(|t| {
                    let (w, x) = (&w, &x);
                    (0..rows).map(move |r| (0..cols).map(|c| w[r * cols + c] as f64 * x[t * cols + c] as f64).sum::<f64>() as f32)
                })
                .collect();
            for k in choices() {
                let tol = 1e-5 * (cols as f64).sqrt().max(1.0);
                assert_close(&run(&m, &x, 2, k), &exact, tol, &format!("f32 {rows}x{cols} {:?}", k.isa));
            }
        }
    }

    #[test]
    fn attention_kernels_match_scalar_and_float64() {
        attention_kernels_match::<f32>();
        attention_kernels_match::<F16>();
    }

    #[test]
    fn fp16_cache_store_equals_the_scalar_rounding() {
        let mut rng = Rng(0xf16);
        let mut values: Vec<f32> = rng.vec(1003).into_iter().map(|v| v * 70000.0).collect();
        values.extend([0.0, -0.0, 1e-8, 6e-8, 65519.0, 65520.0, f32::INFINITY, 1.0 + 2f32.powi(-11)]);
        let mut stored = vec![F16::default(); values.len()];
        F16::store(&values, &mut stored);
        for (v, s) in values.iter().zip(&stored) {
            assert_eq!(*s, F16::from_f32(*v), "{v}");
        }
        assert!(F16::zeros(5).iter().all(|z| z.0 == 0));
    }

    /// Each ISA's attention over a cache of `T` against the plain loops and a float64 score.
    fn attention_kernels_match<T: CacheValue + std::fmt::Debug>() {
        let mut rng = Rng(0xa11ce);
        for (hs, positions) in [(8usize, 1usize), (64, 5), (36, 9), (128, 17), (100, 3), (13, 4), (160, 6), (264, 3)] {
            let q = rng.vec(hs);
            let keys: Vec<T> = rng.vec(hs * positions).into_iter().map(T::from_f32).collect();
            let values: Vec<T> = rng.vec(hs * positions).into_iter().map(T::from_f32).collect();
            let att: Vec<f32> = (0..positions).map(|_| rng.unit()).collect();
            let out0 = rng.vec(hs);
            let scale = (hs as f32).sqrt();
            let mut expected_sum = out0.clone();
            attention_sum_plain(&att, &values, &mut expected_sum);
            for k in choices() {
                let kernels = T::attention_for(k.isa);
                let mut scores = vec![0.0f32; positions];
                (kernels.scores)(&q, &keys, scale, &mut scores);
                for (p, &got) in scores.iter().enumerate() {
                    let exact: f64 =
                        (0..hs).map(|i| q[i] as f64 * keys[p * hs + i].to_f32() as f64).sum::<f64>() / scale as f64;
                    assert!((got as f64 - exact).abs() < 1e-5 * (1.0 + exact.abs()), "hs {hs} p {p} {:?}", k.isa);
                }
                // Every version rounds each product and sum as run.c does: bit-identical.
                let mut out = out0.clone();
                (kernels.sum)(&att, &values, &mut out);
                assert_eq!(out, expected_sum, "hs {hs} {:?}", k.isa);
            }
        }
    }

    #[test]
    fn q8_kernels_equal_scalar_exactly() {
        let mut rng = Rng(0x9e37_79b9);
        for &(rows, cols) in SHAPES {
            for gs in [1usize, 2, 4, 8, 32, 64] {
                if cols % gs != 0 {
                    continue;
                }
                let w = rng.vec(rows * cols);
                let mut wq = QuantizedVec::default();
                wq.quantize(&w, gs);
                let x = rng.vec(cols);
                let mut xq = QuantizedVec::default();
                xq.quantize(&x, gs);
                let m = Matrix {
                    rows,
                    cols,
                    data: MatrixData::Q8(Q8Data { values: &wq.values, scales: wq.scales.clone().into(), group_size: gs }),
                };
                let reference = run(&m, &x, 1, KernelChoice::new(Isa::Scalar));
                for k in choices() {
                    assert_eq!(run(&m, &x, 1, k), reference, "{rows}x{cols} gs {gs} {:?}", k.isa);
                }
                // Independent expectation: dequantize both and multiply in float64.
                for r in 0..rows {
                    let exact: f64 = (0..cols)
                        .map(|c| {
                            let i = r * cols + c;
                            (wq.values[i] as f64 * wq.scales[i / gs] as f64) * (xq.values[c] as f64 * xq.scales[c / gs] as f64)
                        })
                        .sum();
                    assert!((reference[r] as f64 - exact).abs() < 1e-4, "{rows}x{cols} gs {gs} row {r}");
                }
            }
        }
    }

    /// Pack `q` (`[rows, cols]`, values < 2^bits) the way `AffineData` stores it.
    fn pack(q: &[u8], rows: usize, cols: usize, bits: u32) -> Vec<u8> {
        let row_bytes = AffineData::row_bytes(bits, cols);
        let mut out = vec![0u8; rows * row_bytes];
        for r in 0..rows {
            for c in 0..cols {
                let v = q[r * cols + c];
                if bits == 8 {
                    out[r * row_bytes + c] = v;
                } else {
                    out[r * row_bytes + c / 2] |= v << ((c % 2) * 4);
                }
            }
        }
        out
    }

    struct Affine {
        q: Vec<u8>,
        packed: Vec<u8>,
        zeros: Vec<u8>,
        scales: Vec<f32>,
        scales_f16: Vec<u8>, // the same scales as fp16 bytes
        perm: Option<Vec<u32>>,
    }

    fn random_affine(rng: &mut Rng, rows: usize, cols: usize, bits: u32, gs: usize, act_order: bool) -> Affine {
        let top = ((1u32 << bits) - 1) as f32;
        let groups = cols.div_ceil(gs);
        let q: Vec<u8> = (0..rows * cols).map(|_| (rng.unit() * top).round() as u8).collect();
        let zeros: Vec<u8> = (0..rows * groups).map(|_| (rng.unit() * top).round() as u8).collect();
        // fp16 values in [2^-10, 2^-4 * 2), so the same scales can be stored either way.
        let scales_f16: Vec<u8> = (0..rows * groups)
            .flat_map(|_| (0x1400u16 + (rng.unit() * (0x3000 - 0x1400) as f32) as u16).min(0x2fff).to_le_bytes())
            .collect();
        let scales: Vec<f32> = scales_f16.chunks_exact(2).map(|b| crate::tensor::f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect();
        let perm = act_order.then(|| {
            let mut p: Vec<u32> = (0..cols as u32).collect();
            for i in (1..cols).rev() {
                let j = ((rng.unit() * (i + 1) as f32) as usize).min(i);
                p.swap(i, j);
            }
            p
        });
        let packed = pack(&q, rows, cols, bits);
        Affine { q, packed, zeros, scales, scales_f16, perm }
    }

    impl Affine {
        /// The matrix with its scales stored as fp32 or as fp16 (the same values).
        fn data(&self, bits: u32, group_size: usize, f16: bool) -> AffineData<'_> {
            AffineData {
                bits,
                values: &self.packed,
                scales: if f16 { Scales::F16(&self.scales_f16) } else { Scales::F32(self.scales.clone().into()) },
                zeros: &self.zeros,
                group_size,
                perm: self.perm.clone().map(Into::into),
            }
        }
    }

    #[test]
    fn affine_kernels_match_float64_dequantization() {
        let mut rng = Rng(0xabcd_ef01);
        for &(rows, cols) in SHAPES {
            for bits in [4u32, 8] {
                for gs in [1usize, 3, 8, 32, 64, 128, 256, 384, 512, cols] {
                    if gs > cols {
                        continue;
                    }
                    for (act_order, n_tokens, f16) in [(false, 1, false), (true, 1, true), (true, 3, true), (false, 5, true), (true, 6, false), (false, 13, true)] {
                        let a = random_affine(&mut rng, rows, cols, bits, gs, act_order);
                        let x = rng.vec(n_tokens * cols);
                        let m = Matrix { rows, cols, data: MatrixData::Affine(a.data(bits, gs, f16)) };
                        let groups = cols.div_ceil(gs);
                        // x in stored column order, per token.
                        let stored: Vec<f32> = (0..n_tokens)
                            .flat_map(|t| {
                                let xt = &x[t * cols..(t + 1) * cols];
                                match &a.perm {
                                    Some(p) => p.iter().map(|&i| xt[i as usize]).collect::<Vec<f32>>(),
                                    None => xt.to_vec(),
                                }
                            })
                            .collect();
                        // w[r, c] in float64, then w @ x per token, with x as each kernel sees it:
                        // fp32, int8 + residual (decode) or int16 in blocks (the AVX-512 GEMM).
                        let weight = |r: usize, c: usize| {
                            let g = r * groups + c / gs;
                            a.scales[g] as f64 * (a.q[r * cols + c] as f64 - a.zeros[g] as f64)
                        };
                        let exact = |x_value: &dyn Fn(usize, usize) -> f64| -> Vec<f32> {
                            let mut out = Vec::new(); // matmul's layout: [token, row]
                            for t in 0..n_tokens {
                                for r in 0..rows {
                                    out.push((0..cols).map(|c| weight(r, c) * x_value(t, c)).sum::<f64>() as f32);
                                }
                            }
                            out
                        };
                        // sum |w x| per output: fp32 rounding grows with it, not with the result
                        // (8-bit rows of 1500 columns cancel to small sums).
                        let magnitude: Vec<f64> = (0..n_tokens)
                            .flat_map(|t| (0..rows).map(move |r| (t, r)))
                            .map(|(t, r)| (0..cols).map(|c| (weight(r, c) * stored[t * cols + c] as f64).abs()).sum())
                            .collect();
                        let assert_close = |got: &[f32], want: &[f32], tol: f64, what: &str| {
                            for (i, (&x, &y)) in got.iter().zip(want).enumerate() {
                                let bound = tol * (1.0 + (y as f64).abs()) + 1e-6 * magnitude[i];
                                assert!(((x - y) as f64).abs() <= bound, "{what} [{i}]: {x} vs {y}");
                            }
                        };
                        let exact_f32 = exact(&|t, c| stored[t * cols + c] as f64);
                        let int8: Vec<act::Int8Activation> = (0..n_tokens)
                            .map(|t| {
                                let mut q = act::Int8Activation::default();
                                q.quantize(&stored[t * cols..(t + 1) * cols]);
                                q
                            })
                            .collect();
                        let exact_int8 = exact(&|t, c| int8[t].value(c) as f64);
                        let data = match &m.data {
                            MatrixData::Affine(d) => d,
                            _ => unreachable!(),
                        };
                        for k in choices() {
                            let what = format!("{rows}x{cols} bits {bits} gs {gs} act_order {act_order} f16 {f16} {:?}", k.isa);
                            let fp = run(&m, &x, n_tokens, KernelChoice { isa: k.isa, int8_activations: false });
                            assert_close(&fp, &exact_f32, 1e-4, &format!("f32 activations {what}"));
                            let q = run(&m, &x, n_tokens, k);
                            if let Some(block) = int16_gemm_block(k, data, cols, n_tokens) {
                                let mut int16 = act::Int16Activations::default();
                                int16.quantize(&stored, n_tokens, cols, block);
                                let exact_int16 = exact(&|t, c| int16.value(t, c) as f64);
                                assert_close(&q, &exact_int16, 1e-5, &format!("int16 GEMM {what}"));
                                assert_close(&q, &exact_f32, 1e-3, &format!("int16 GEMM vs fp32 {what}"));
                                continue;
                            }
                            let gemm = matches!(k.isa, Isa::Avx512 | Isa::Avx2) && bits == 4 && n_tokens >= GEMM_MIN_TOKENS;
                            let int8_used = bits == 4 && k.isa != Isa::Portable && act::lanes_fit_groups(gs, cols) && !gemm;
                            let expected = if int8_used { &exact_int8 } else { &exact_f32 };
                            assert_close(&q, expected, 1e-4, &format!("int8 activations {what}"));
                        }
                    }
                }
            }
        }
    }

    /// The AVX-512 decode kernel with and without GFNI (one CPU may have either) against the
    /// scalar reference on the same int8 activation.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_decode_rows_with_and_without_gfni_match_scalar() {
        if !Isa::Avx512.supported() {
            return;
        }
        let mut rng = Rng(0x5eed);
        for &(rows, cols) in SHAPES {
            for gs in [8usize, 32, 64, 128, 256, 384, cols] {
                if gs > cols || !act::lanes_fit_groups(gs, cols) {
                    continue;
                }
                let a = random_affine(&mut rng, rows, cols, 4, gs, false);
                let data = a.data(4, gs, gs % 3 == 0);
                let affine_rows = AffineRows::new(&data, cols);
                let mut act = act::Int8Activation::default();
                act.quantize(&rng.vec(cols));
                act.update_group_sums(gs);
                let acts = [act];
                let mut buffer = Vec::new();
                let reference: Vec<f32> = (0..rows).map(|r| scalar::dot_q4_i8(affine_rows.row(r, &mut buffer), &acts[0])).collect();
                let mut plan = x86::Q4Plan::new(gs, cols);
                for gfni in [false, true] {
                    if gfni && !x86::has_gfni() {
                        continue;
                    }
                    plan.gfni = gfni;
                    let mut out = vec![0.0f32; rows];
                    unsafe { x86::rows_q4_i8_avx512(&affine_rows, 0..rows, &acts, &plan, &mut buffer, |_, r, v| out[r] = v) };
                    assert_close(&out, &reference, 1e-5, &format!("{rows}x{cols} gs {gs} gfni {gfni}"));
                }
            }
        }
    }

    #[test]
    fn shared_input_matmul_equals_one_matmul_per_matrix() {
        let mut rng = Rng(0xfeed);
        let cols = 256;
        for gs in [32usize, 128, cols] {
            let parts: Vec<Affine> = [40usize, 7, 33].iter().map(|&rows| random_affine(&mut rng, rows, cols, 4, gs, false)).collect();
            let mats: Vec<Matrix> = parts
                .iter()
                .zip([40usize, 7, 33])
                .enumerate()
                .map(|(i, (a, rows))| Matrix { rows, cols, data: MatrixData::Affine(a.data(4, gs, i == 1)) })
                .collect();
            for n_tokens in [1usize, 2, 13] {
                let x = rng.vec(n_tokens * cols);
                for k in choices() {
                    let separate: Vec<Vec<f32>> = mats.iter().map(|m| run(m, &x, n_tokens, k)).collect();
                    let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![f32::NAN; m.rows * n_tokens]).collect();
                    let (a, rest) = outs.split_at_mut(1);
                    let (b, c) = rest.split_at_mut(1);
                    let mut jobs = [(&mut a[0][..], &mats[0]), (&mut b[0][..], &mats[1]), (&mut c[0][..], &mats[2])];
                    matmul_shared_input(&mut jobs, &x, n_tokens, &mut Scratch::default(), k);
                    assert_eq!(outs, separate, "gs {gs} tokens {n_tokens} {:?}", k.isa);
                }
            }
        }
    }

    #[test]
    fn int8_activations_stay_close_to_exact() {
        // The int8 path trades a little accuracy for speed: measure how little on a wide layer.
        let mut rng = Rng(77);
        let (rows, cols, gs) = (64, 1024, 128);
        let a = random_affine(&mut rng, rows, cols, 4, gs, false);
        let m = Matrix { rows, cols, data: MatrixData::Affine(a.data(4, gs, false)) };
        let x = rng.vec(cols);
        let exact = run(&m, &x, 1, KernelChoice { isa: Isa::Scalar, int8_activations: false });
        let int8 = run(&m, &x, 1, KernelChoice::new(Isa::Scalar));
        let norm: f64 = exact.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let err: f64 = exact.iter().zip(&int8).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
        assert!(err / norm < 2e-4, "relative error {}", err / norm);
    }

    #[test]
    fn quantize_matches_hand_computed_values() {
        let mut q = QuantizedVec::default();
        q.quantize(&[1.0, -0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0], 4);
        assert_eq!(q.scales, vec![1.0 / 127.0, 0.0]);
        // 0.5 * 127 = 63.5 rounds away from zero; 0.25 * 127 = 31.75 -> 32.
        assert_eq!(q.values, vec![127, -64, 32, 0, 0, 0, 0, 0]);
    }
}
