//! Memory read bandwidth of this machine, measured the way decoding reads weights: each thread
//! streams its own contiguous part of a buffer much larger than the caches.

use std::time::Instant;

use rayon::prelude::*;

/// How far ahead the read loop asks for lines, in bytes (0: the hardware prefetcher alone).
/// The best of these is the machine's figure: a plain loop undercounts, since the hardware
/// prefetcher restarts at every 4 KB page (on Zen 5, 34 GB/s plain against 38 GB/s 8 KB
/// ahead on one thread; 46 against 51 on two).
const PREFETCH_DISTANCES: [usize; 4] = [0, 4096, 8192, 16384];

/// Best-of-`repeats` read bandwidth in bytes per second over a buffer of `n_bytes`, read by a
/// pool of `n_threads`, each repeat trying every prefetch distance.
pub fn read_bandwidth(n_bytes: usize, n_threads: usize, repeats: usize) -> f64 {
    let words = (n_bytes / 8).max(1024);
    // Written once so the pages are real (a zeroed allocation would map one shared page).
    let buffer: Vec<u64> = (0..words as u64).collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(n_threads.max(1)).build().expect("thread pool");
    let per_thread = words.div_ceil(n_threads.max(1));
    let mut best = 0.0f64;
    for _ in 0..repeats.max(1) {
        for ahead in PREFETCH_DISTANCES {
            let start = Instant::now();
            let total: u64 = pool.install(|| {
                buffer.par_chunks(per_thread).map(|part| sum_words(part, ahead)).reduce(|| 0, u64::wrapping_add)
            });
            let seconds = start.elapsed().as_secs_f64();
            std::hint::black_box(total);
            best = best.max((words * 8) as f64 / seconds);
        }
    }
    best
}

/// The wrapping sum of `words`, asking for the line `ahead` bytes on at every line.
fn sum_words(words: &[u64], ahead: usize) -> u64 {
    // Eight independent sums, so the loads are not serialized on one add.
    let mut acc = [0u64; 8];
    let _ = ahead; // read only where prefetching is written (x86-64)
    for chunk in words.chunks_exact(8) {
        #[cfg(target_arch = "x86_64")]
        if ahead > 0 {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: a prefetch never faults, in bounds or not (SSE, part of x86-64).
            unsafe { _mm_prefetch::<_MM_HINT_T0>((chunk.as_ptr() as *const i8).wrapping_add(ahead)) };
        }
        for k in 0..8 {
            acc[k] = acc[k].wrapping_add(chunk[k]);
        }
    }
    acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
}
