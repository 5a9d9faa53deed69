//! The one way parallel tasks write into a shared output: `DisjointSlice`.
//!
//! Matrix rows, attention heads and activation blocks are computed by rayon tasks that each
//! own a set of output indices which is not a contiguous piece of the buffer (a row of every
//! token, a head of every token, a block of every token), so `par_chunks_mut` cannot hand them
//! out. Each task writes through this type instead; the caller of every write states why no
//! other task touches the same indices.

use std::marker::PhantomData;

/// A mutable slice borrowed for the length of a parallel region, written by many tasks at
/// disjoint indices.
pub struct DisjointSlice<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: the type hands out no references by itself; every access goes through an unsafe
// method whose caller guarantees that no two threads touch the same index concurrently, which
// is exactly what sending `&mut [T]`'s parts to other threads requires (T: Send).
unsafe impl<T: Send> Send for DisjointSlice<'_, T> {}
// SAFETY: as above: shared use across threads is sound under the methods' contracts.
unsafe impl<T: Send> Sync for DisjointSlice<'_, T> {}

impl<'a, T> DisjointSlice<'a, T> {
    pub fn new(slice: &'a mut [T]) -> Self {
        DisjointSlice { ptr: slice.as_mut_ptr(), len: slice.len(), _borrow: PhantomData }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `slice[index] = value`.
    ///
    /// # Safety
    /// `index < len`, and no other task reads or writes `index` during the parallel region.
    #[inline(always)]
    pub unsafe fn write(&self, index: usize, value: T) {
        debug_assert!(index < self.len, "DisjointSlice::write: index {index} of {}", self.len);
        // SAFETY: in bounds, and this task's alone (the caller's contract).
        unsafe { self.ptr.add(index).write(value) }
    }

    /// `&mut slice[start..start + n]`.
    ///
    /// # Safety
    /// `start + n <= len`, and no other task touches those indices while the borrow lives.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)] // the point of the type; exclusivity is the caller's contract
    pub unsafe fn slice_mut(&self, start: usize, n: usize) -> &mut [T] {
        debug_assert!(start + n <= self.len, "DisjointSlice::slice_mut: {start}+{n} of {}", self.len);
        // SAFETY: in bounds, and this task's alone while borrowed (the caller's contract).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), n) }
    }

    /// A raw pointer to `slice[start]`, for a SIMD store of at most `n` values there.
    ///
    /// # Safety
    /// `start + n <= len`, and no other task touches those `n` indices meanwhile.
    #[inline(always)]
    pub unsafe fn ptr_at(&self, start: usize, n: usize) -> *mut T {
        debug_assert!(start + n <= self.len, "DisjointSlice::ptr_at: {start}+{n} of {}", self.len);
        // SAFETY: start <= len, so the offset stays inside (or one past) the allocation.
        unsafe { self.ptr.add(start) }
    }
}
