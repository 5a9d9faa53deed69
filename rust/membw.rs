//! Memory read bandwidth of this machine, measured the way decoding reads weights: each thread
//! streams its own contiguous part of a buffer much larger than the caches.

use std::time::Instant;

use rayon::prelude::*;

/// Best-of-`repeats` read bandwidth in bytes per second over a buffer of `n_bytes`, read by a
/// pool of `n_threads`.
pub fn read_bandwidth(n_bytes: usize, n_threads: usize, repeats: usize) -> f64 {
    let words = (n_bytes / 8).max(1024);
    // Written once so the pages are real (a zeroed allocation would map one shared page).
    let buffer: Vec<u64> = (0..words as u64).collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(n_threads.max(1)).build().expect("thread pool");
    let per_thread = words.div_ceil(n_threads.max(1));
    let mut best = 0.0f64;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        let total: u64 = pool.install(|| {
            buffer
                .par_chunks(per_thread)
                .map(|part| {
                    // Eight independent sums, so the loads are not serialized on one add.
                    let mut acc = [0u64; 8];
                    for chunk in part.chunks_exact(8) {
                        for k in 0..8 {
                            acc[k] = acc[k].wrapping_add(chunk[k]);
                        }
                    }
                    acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
                })
                .reduce(|| 0, u64::wrapping_add)
        });
        let seconds = start.elapsed().as_secs_f64();
        std::hint::black_box(total);
        best = best.max((words * 8) as f64 / seconds);
    }
    best
}
