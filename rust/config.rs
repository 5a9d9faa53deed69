//! Model shape, as read from a file header, and its validation.

use crate::error::{Error, Result};

/// Upper bounds far above any real Llama (70B: dim 8192, hidden 28672, 80 layers, 64 heads).
/// A header beyond them is corrupt. `python/llama2rs/config.py` states the same numbers.
pub const MAX_DIM: usize = 1 << 16;
pub const MAX_HIDDEN_DIM: usize = 1 << 18;
pub const MAX_LAYERS: usize = 1 << 10;
pub const MAX_HEADS: usize = 1 << 10;
pub const MAX_VOCAB: usize = 1 << 21;
pub const MAX_SEQ_LEN: usize = 1 << 20;

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
        let field = |name: &str, value: i64, max: usize| -> Result<usize> {
            if value < 1 || value as u64 > max as u64 {
                return Err(Error::Config(format!("{name} must be in [1, {max}], got {value}")));
            }
            Ok(value as usize)
        };
        let config = Config {
            dim: field("dim", dim, MAX_DIM)?,
            hidden_dim: field("hidden_dim", hidden_dim, MAX_HIDDEN_DIM)?,
            n_layers: field("n_layers", n_layers, MAX_LAYERS)?,
            n_heads: field("n_heads", n_heads, MAX_HEADS)?,
            n_kv_heads: field("n_kv_heads", n_kv_heads, MAX_HEADS)?,
            vocab_size: field("vocab_size", vocab_size, MAX_VOCAB)?,
            seq_len: field("seq_len", seq_len, MAX_SEQ_LEN)?,
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
        let bounds = [
            ("dim", self.dim, MAX_DIM),
            ("hidden_dim", self.hidden_dim, MAX_HIDDEN_DIM),
            ("n_layers", self.n_layers, MAX_LAYERS),
            ("n_heads", self.n_heads, MAX_HEADS),
            ("n_kv_heads", self.n_kv_heads, MAX_HEADS),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("seq_len", self.seq_len, MAX_SEQ_LEN),
        ];
        for (name, value, max) in bounds {
            if value < 1 || value > max {
                return Err(Error::Config(format!("{name} must be in [1, {max}], got {value}")));
            }
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
        if self.dim % self.n_heads != 0 {
            return Err(Error::Config(format!(
                "dim ({}) must be a multiple of n_heads ({})",
                self.dim, self.n_heads
            )));
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(Error::Config(format!(
                "n_heads ({}) must be a multiple of n_kv_heads ({})",
                self.n_heads, self.n_kv_heads
            )));
        }
        if self.head_size() % 2 != 0 {
            return Err(Error::Config(format!(
                "head size dim/n_heads ({}) must be even for RoPE",
                self.head_size()
            )));
        }
        Ok(())
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
