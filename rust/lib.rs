//! llama2rs: run Llama-2-style models on CPUs from memory-mapped llama2.c files.
//!
//! The core knows nothing of Python. Sections, in the order data flows:
//! [`config`] (shapes) -> [`llama2c`] and [`l2rs`] (file formats, zero-copy views in [`tensor`]) ->
//! [`kernels`] (matrix-vector products) -> [`model`] (the forward pass) ->
//! [`sampler`] (next token) -> [`generate`] (a sequence's session).
//! The PyO3 binding lives in `python` behind the `python` feature.

pub mod config;
pub mod error;
pub mod generate;
pub mod kernels;
pub mod l2rs;
pub mod llama2c;
pub mod membw;
pub mod model;
pub mod sampler;
pub mod tensor;

#[cfg(feature = "python")]
mod python;

pub use config::Config;
pub use error::{Error, Result};
pub use generate::Session;
pub use model::{Model, State};
pub use sampler::{Sampler, SamplerConfig};
