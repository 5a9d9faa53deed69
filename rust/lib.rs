//! llama2rs: run Llama-family models fast on CPUs, from memory-mapped files.
//!
//! The core knows nothing of Python. Modules, in the order data flows:
//! [`config`] (shapes and their bounds) -> [`formats`] (llama2.c's files and ours, recognised
//! by content, validated into typed views: [`weights`]) -> [`kernels`] (the per-CPU kernel
//! table: matrix products, attention, fp16) -> [`model`] (the forward pass, KV cache, state)
//! -> [`sampler`] (next token) -> [`generate`] (a sequence's session); [`bpe`] is the
//! byte-level BPE tokenizer (Llama 3's). [`disjoint`] is the one
//! way parallel tasks share an output; [`membw`] measures read bandwidth for benchmarks;
//! [`fuzz`] is what the fuzz targets run on each input.
//! The PyO3 binding lives in `python/` behind the `python` feature.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod bpe;
pub mod config;
pub mod disjoint;
pub mod error;
pub mod formats;
pub mod fuzz;
pub mod generate;
pub mod kernels;
mod math;
pub mod membw;
pub mod model;
pub mod sampler;
pub mod score_bpe;
#[cfg(test)]
mod test_rng;
pub mod weights;

#[cfg(feature = "python")]
mod python;

pub use config::Config;
pub use error::{Error, Result};
pub use generate::Session;
pub use kernels::{Isa, Kernels};
pub use model::{Model, State};
pub use sampler::{Sampler, SamplerConfig};
