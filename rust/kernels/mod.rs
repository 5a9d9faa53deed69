//! Kernels: weights (fp32, Q8_0, affine 4/8-bit) times activations, attention over the KV
//! cache, and fp16 conversion, for each instruction set.
//!
//! One folder per operation family, each with its scalar reference beside the fast versions
//! (`dot_f32/`, `q8_0/`, `affine/`, `blocks/` (GGUF's types), `attention/`, `fp16/`); shared SIMD helpers are written
//! once (`simd_x86.rs`, `simd_neon.rs`). `isa.rs` says which instruction sets the CPU has;
//! `table.rs` holds one table of function pointers per instruction set (`Kernels`), made once
//! per model, and everything runs through it; `matmul.rs` drives rows over the thread pool.
//! Tests (`tests.rs`) run every table this CPU supports against the references and a float64
//! expectation on random shapes.

pub mod affine;
pub mod attention;
pub mod blocks;
pub mod dot_f32;
pub mod embedding;
pub mod fp16;
pub mod isa;
pub mod matmul;
pub mod q8_0;
#[cfg(target_arch = "aarch64")]
mod simd_neon;
#[cfg(target_arch = "x86_64")]
mod simd_x86;
mod staging;
pub mod table;

#[cfg(test)]
mod tests;

pub use attention::CacheValue;
pub use isa::Isa;
pub use matmul::{matmul, matmul_shared_input, matvec, Scratch, GEMM_MIN_TOKENS};
pub use table::{Kernels, TableCache};
