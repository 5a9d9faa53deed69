//! A batch's activations copied into a kernel's own layout ("records"), made once per thread
//! per batch rather than once per task: a matrix's rows are split into many tasks (four per
//! thread, more where matrices share an input) that all read the same activations.
//!
//! Every quantized activation carries a generation, a number no other quantization had
//! (`next_generation`), so a thread's records are known to be current when the activations'
//! address, count and generations are those they were made from.

use std::sync::atomic::{AtomicU64, Ordering};

/// A generation no quantization had before.
pub(crate) fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A thread's records and what they were made from (the x86 batch kernels make them).
#[cfg(target_arch = "x86_64")]
pub(crate) struct Staged<R> {
    /// The records' layout, the activations' address and count, then their generations.
    key: Vec<u64>,
    pub records: Vec<R>,
}

#[cfg(target_arch = "x86_64")]
impl<R> Default for Staged<R> {
    fn default() -> Self {
        Staged::new()
    }
}

#[cfg(target_arch = "x86_64")]
impl<R> Staged<R> {
    pub const fn new() -> Self {
        Staged { key: Vec::new(), records: Vec::new() }
    }

    /// Whether the records were made in layout `layout` (a kernel's own number for each
    /// layout it makes) from `acts` (by address, count and generations); if not, the key is
    /// set to theirs and the caller makes them again.
    pub fn current<A>(&mut self, layout: u64, acts: &[A], generation: impl Fn(&A) -> u64) -> bool {
        let head = [layout, acts.as_ptr() as usize as u64, acts.len() as u64];
        let same = self.key.len() == head.len() + acts.len()
            && self.key[..head.len()] == head
            && self.key[head.len()..].iter().zip(acts).all(|(&g, a)| g == generation(a));
        if !same {
            self.key.clear();
            self.key.extend(head);
            self.key.extend(acts.iter().map(generation));
        }
        same
    }
}
