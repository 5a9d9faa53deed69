//! Fuzz target for llama2rs's own safetensors files: the seeds
//! (`fuzz/make_seeds.py`) are of that format, and every input goes through
//! `llama2rs::fuzz::check`, the function the regression replay test runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = llama2rs::fuzz::check(data);
});
