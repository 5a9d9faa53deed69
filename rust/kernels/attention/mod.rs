//! A head's attention for one query, over a KV cache of fp32 (run.c's) or fp16 values:
//! `scores(q, keys, scale, att)` fills `att[p] = dot(q, keys[p]) / scale`; `sum(att, values,
//! out)` adds `att[p] * values[p]` into `out` in position order. `keys` and `values` are
//! `[positions, head_size]`.
//!
//! `scores_scalar` / `sum_scalar` are the reference (run.c's loops); `scores_portable` uses the
//! portable dot product; `avx2` has both halves for both element types. Every version of `sum`
//! rounds each product and sum as run.c does, so all of them are bit-identical.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;

use half::f16;

/// Both halves of a head's attention over a cache of `T`.
pub struct AttentionKernels<T> {
    pub scores: fn(&[f32], &[T], f32, &mut [f32]),
    pub sum: fn(&[f32], &[T], &mut [f32]),
}

impl<T> Clone for AttentionKernels<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for AttentionKernels<T> {}

/// What the KV cache stores: fp32 (run.c's cache), or fp16, which halves the cache's memory
/// and the bytes attention reads per token.
pub trait CacheValue: Copy + Default + Send + Sync + std::fmt::Debug + 'static {
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    /// `len` zeros, from fresh (untouched) pages: a long context costs memory only as far
    /// as it is used. None where the allocation is refused.
    fn zeros(len: usize) -> Option<Vec<Self>>;
}

/// `len` zeroed values of `T` from the allocator's zeroed pages (untouched until used), or None
/// where the allocator refuses them: `vec![0; len]` would abort the process instead.
///
/// # Safety
/// Every bit of a `T` zeroed is a valid `T` (f32 0.0, u16 0).
unsafe fn zeroed_vec<T>(len: usize) -> Option<Vec<T>> {
    let layout = std::alloc::Layout::array::<T>(len).ok()?;
    if layout.size() == 0 {
        return Some(Vec::new());
    }
    // SAFETY: the layout's size is not zero (checked above).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
    // SAFETY: a non-null pointer from the global allocator with `T`'s array layout for `len`
    // values, all zero bytes, which the caller says are valid `T`s; the Vec owns it from here
    // and frees it with the same layout.
    (!ptr.is_null()).then(|| unsafe { Vec::from_raw_parts(ptr, len, len) })
}

impl CacheValue for f32 {
    fn from_f32(v: f32) -> f32 {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn zeros(len: usize) -> Option<Vec<f32>> {
        // SAFETY: all-zero bytes are the f32 0.0.
        unsafe { zeroed_vec(len) }
    }
}

impl CacheValue for f16 {
    fn from_f32(v: f32) -> f16 {
        f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn zeros(len: usize) -> Option<Vec<f16>> {
        // SAFETY: f16 is a `repr(transparent)` u16, and all-zero bits are its 0.0.
        unsafe { zeroed_vec(len) }
    }
}

/// Attention reads each head's keys, then its values, as runs of a few KB that start at a
/// different place for every head: too short for the hardware prefetcher to get going. Each
/// position asks for the one this many bytes further on. Measured on 7B decode (fp16 cache,
/// 128-192 positions, 40 KB runs per head): attention 7.5 -> 5.8 ms/token on one thread,
/// 4.7 -> 3.9 on two; 4 KB ahead beat 1, 2, 8 and 16 KB.
pub const PREFETCH_AHEAD: usize = 4096;

/// The reference weighted sum: run.c's loop, each product and sum rounded in position order.
pub fn sum_scalar<T: CacheValue>(att: &[f32], values: &[T], out: &mut [f32]) {
    for (&a, v) in att.iter().zip(values.chunks_exact(out.len())) {
        for (o, &x) in out.iter_mut().zip(v) {
            *o += a * x.to_f32();
        }
    }
}

/// The reference scores: run.c's sequential dot product per position.
pub fn scores_scalar<T: CacheValue>(q: &[f32], keys: &[T], scale: f32, att: &mut [f32]) {
    for (a, key) in att.iter_mut().zip(keys.chunks_exact(q.len())) {
        let mut sum = 0.0f32;
        for (&x, &k) in q.iter().zip(key) {
            sum += x * k.to_f32();
        }
        *a = sum / scale;
    }
}

/// The scores with the portable fp32 dot product.
pub fn scores_portable(q: &[f32], keys: &[f32], scale: f32, att: &mut [f32]) {
    for (a, key) in att.iter_mut().zip(keys.chunks_exact(q.len())) {
        *a = super::dot_f32::dot_portable(q, key) / scale;
    }
}
