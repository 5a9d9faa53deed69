//! Model shape, as read from a file header, and its validation.

use crate::error::{Error, Result};

/// Upper bounds far above any real Llama (70B: dim 8192, hidden 28672, 80 layers, 64 heads).
/// A header beyond them is corrupt. The one statement of them: Python reads `LIMITS` through
/// the binding (`llama2rs._core.CONFIG_LIMITS`).
pub const MAX_DIM: usize = 1 << 16;
pub const MAX_HIDDEN_DIM: usize = 1 << 18;
pub const MAX_LAYERS: usize = 1 << 10;
pub const MAX_HEADS: usize = 1 << 10;
pub const MAX_VOCAB: usize = 1 << 21;
pub const MAX_SEQ_LEN: usize = 1 << 20;

/// Each integer field of `Config` with its upper bound (every field is at least 1).
pub const LIMITS: [(&str, usize); 7] = [
    ("dim", MAX_DIM),
    ("hidden_dim", MAX_HIDDEN_DIM),
    ("n_layers", MAX_LAYERS),
    ("n_heads", MAX_HEADS),
    ("n_kv_heads", MAX_HEADS),
    ("vocab_size", MAX_VOCAB),
    ("seq_len", MAX_SEQ_LEN),
];

/// `value` as a count in `[1, max]`, or the error that names `name`.
fn bounded(name: &str, value: i64, max: usize) -> Result<usize> {
    if value < 1 || value as u64 > max as u64 {
        return Err(Error::Config(format!("{name} must be in [1, {max}], got {value}")));
    }
    Ok(value as usize)
}

/// llama2.c's fixed values for what its files do not store.
pub const LLAMA2C_NORM_EPS: f32 = 1e-5;
pub const LLAMA2C_ROPE_THETA: f32 = 10000.0;
pub const LLAMA2C_BOS: u32 = 1;
pub const LLAMA2C_EOS: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// RoPE base frequency.
    pub rope_theta: f32,
    pub bos_id: u32,
    pub eos_id: u32,
}

impl Config {
    /// Build from raw (possibly negative or absurd) header integers, validating every field.
    #[allow(clippy::too_many_arguments)]
    pub fn from_header(
        dim: i64,
        hidden_dim: i64,
        n_layers: i64,
        n_heads: i64,
        n_kv_heads: i64,
        vocab_size: i64,
        seq_len: i64,
    ) -> Result<Config> {
        let raw = [dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len];
        let mut v = [0usize; 7];
        for ((out, &value), (name, max)) in v.iter_mut().zip(&raw).zip(LIMITS) {
            *out = bounded(name, value, max)?;
        }
        let config = Config {
            dim: v[0],
            hidden_dim: v[1],
            n_layers: v[2],
            n_heads: v[3],
            n_kv_heads: v[4],
            vocab_size: v[5],
            seq_len: v[6],
            norm_eps: LLAMA2C_NORM_EPS,
            rope_theta: LLAMA2C_ROPE_THETA,
            bos_id: LLAMA2C_BOS,
            eos_id: LLAMA2C_EOS,
        };
        config.validate()?;
        Ok(config)
    }

    /// Check the relations between fields that the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let values = self.counts();
        for (&value, (name, max)) in values.iter().zip(LIMITS) {
            bounded(name, i64::try_from(value).unwrap_or(i64::MAX), max)?;
        }
        for (name, value) in [("norm_eps", self.norm_eps), ("rope_theta", self.rope_theta)] {
            if !(value.is_finite() && value > 0.0) {
                return Err(Error::Config(format!("{name} must be a positive finite number, got {value}")));
            }
        }
        for (name, value) in [("bos_id", self.bos_id), ("eos_id", self.eos_id)] {
            if value as usize >= self.vocab_size {
                return Err(Error::Config(format!(
                    "{name} must be a token id below vocab_size ({}), got {value}",
                    self.vocab_size
                )));
            }
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            return Err(Error::Config(format!("dim ({}) must be a multiple of n_heads ({})", self.dim, self.n_heads)));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(Error::Config(format!(
                "n_heads ({}) must be a multiple of n_kv_heads ({})",
                self.n_heads, self.n_kv_heads
            )));
        }
        if !self.head_size().is_multiple_of(2) {
            return Err(Error::Config(format!("head size dim/n_heads ({}) must be even for RoPE", self.head_size())));
        }
        Ok(())
    }

    /// The integer fields, in `LIMITS`' order.
    fn counts(&self) -> [usize; 7] {
        [self.dim, self.hidden_dim, self.n_layers, self.n_heads, self.n_kv_heads, self.vocab_size, self.seq_len]
    }

    pub fn head_size(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Width of one position's keys (or values): `n_kv_heads * head_size`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_size()
    }

    /// How many query heads share one kv head (GQA).
    pub fn kv_mul(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stories260k_shape_is_valid() {
        let c = Config::from_header(64, 172, 5, 8, 4, 512, 512).unwrap();
        assert_eq!((c.head_size(), c.kv_dim(), c.kv_mul()), (8, 32, 2));
    }

    #[test]
    fn rejects_inconsistent_shapes() {
        let msg = |r: Result<Config>| r.unwrap_err().to_string();
        assert!(msg(Config::from_header(0, 1, 1, 1, 1, 1, 1)).contains("dim must be in"));
        assert!(msg(Config::from_header(64, 172, 5, 7, 7, 512, 512)).contains("multiple of n_heads"));
        assert!(msg(Config::from_header(64, 172, 5, 8, 3, 512, 512)).contains("multiple of n_kv_heads"));
        assert!(msg(Config::from_header(24, 8, 1, 8, 8, 5, 5)).contains("must be even"));
        assert!(msg(Config::from_header(64, 172, 5, 8, 4, -512, 512)).contains("vocab_size"));
        assert!(msg(Config::from_header(64, 172, 5, 8, 4, 512, 1 << 40)).contains("seq_len"));
    }
}
