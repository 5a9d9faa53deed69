//! The KV cache: every layer's keys and values, fp32 (run.c's) or fp16.

use half::f16;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::kernels::{CacheValue, Kernels};
use crate::weights::{MatrixData, Weights};

/// How the KV cache stores keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvCacheType {
    /// fp32, as run.c: results equal llama2.c's.
    F32,
    /// fp16 (each key and value rounded to nearest): half the memory, and half the bytes
    /// attention reads per token.
    F16,
}

impl KvCacheType {
    pub const ALL: [KvCacheType; 2] = [KvCacheType::F32, KvCacheType::F16];

    pub fn name(self) -> &'static str {
        match self {
            KvCacheType::F32 => "f32",
            KvCacheType::F16 => "f16",
        }
    }

    pub fn from_name(name: &str) -> Option<KvCacheType> {
        KvCacheType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The default for a model: fp16 where the weights are GPTQ or GGUF's integer block types
    /// (their rounding dwarfs the cache's; llama.cpp's cache is fp16 too) and the kernels
    /// convert fp16 in hardware (F16C); fp32 for fp32, F16/BF16 and llama2.c's Q8_0 weights
    /// (llama2.c parity), for the exact path, and for kernels whose attention would convert
    /// fp16 one value at a time.
    pub fn auto(weights: &Weights, kernels: &Kernels) -> KvCacheType {
        let quantized = weights.layers.iter().any(|l| match &l.wq.data {
            MatrixData::Affine(_) => true,
            MatrixData::Blocks(b) => kernels.block_rows(b.kind).is_some(),
            _ => false,
        });
        if quantized && kernels.int8_activations() && kernels.fp16_in_hardware() {
            KvCacheType::F16
        } else {
            KvCacheType::F32
        }
    }
}

/// Keys and values of every layer, each `[n_layers, n_kv_heads, seq_len, head_size]`: each kv
/// head's positions are one run, so attention reads them sequentially.
#[derive(Debug, Clone)]
pub struct KvRuns<T> {
    pub keys: Vec<T>,
    pub values: Vec<T>,
}

impl<T: CacheValue> KvRuns<T> {
    /// Zeroed keys and values for every position: untouched pages, so memory is taken only as
    /// positions are used, but the address space of the whole context is asked for now (and
    /// refused, as an error, where the system will not give it).
    pub(crate) fn new(c: &Config) -> Result<KvRuns<T>> {
        let len = c.n_layers * c.seq_len * c.kv_dim();
        let refused = || Error::OutOfMemory { what: "the KV cache", bytes: 2 * len * std::mem::size_of::<T>() };
        Ok(KvRuns { keys: T::zeros(len).ok_or_else(refused)?, values: T::zeros(len).ok_or_else(refused)? })
    }
}

#[derive(Debug, Clone)]
pub enum KvCache {
    F32(KvRuns<f32>),
    F16(KvRuns<f16>),
}

impl KvCache {
    pub fn new(c: &Config, kind: KvCacheType) -> Result<KvCache> {
        Ok(match kind {
            KvCacheType::F32 => KvCache::F32(KvRuns::new(c)?),
            KvCacheType::F16 => KvCache::F16(KvRuns::new(c)?),
        })
    }
}
