//! Fuzz target for llama2.c files (legacy, version 1 fp32, version 2 Q8_0): the seeds
//! (`fuzz/make_seeds.py`) are of that format, and every input goes through
//! `llama2rs::fuzz::check`, the function the regression replay test runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = llama2rs::fuzz::check(data);
});
