//! One sequence's KV cache, and the activations of a batch of tokens.

use super::kv_cache::{KvCache, KvCacheType};
use crate::config::Config;
use crate::error::Result;
use crate::kernels::Scratch;

/// The activations of one forward pass over a batch of tokens (of one sequence, or of several:
/// see `Model::forward_sequences`). Buffers grow to the largest batch seen and are then
/// reused: decoding one token at a time allocates nothing.
#[derive(Debug, Clone)]
pub struct Activations {
    pub(crate) config: Config,
    pub x: Vec<f32>,             // [batch, dim] residual stream
    pub xb: Vec<f32>,            // [batch, dim] normed input / attention output / ffn output
    pub xb2: Vec<f32>,           // [batch, dim] attention projection
    pub hb: Vec<f32>,            // [batch, hidden_dim]
    pub hb2: Vec<f32>,           // [batch, hidden_dim]
    pub q: Vec<f32>,             // [batch, dim]
    pub logits: Vec<f32>,        // [rows wanted, vocab_size]
    pub k_new: Vec<f32>,         // [batch, kv_dim] the batch's keys, before they go to the cache
    pub v_new: Vec<f32>,         // [batch, kv_dim] the batch's values
    pub(crate) scratch: Scratch, // matmul's working memory
}

impl Activations {
    pub fn new(config: &Config) -> Activations {
        let mut acts = Activations {
            config: *config,
            x: Vec::new(),
            xb: Vec::new(),
            xb2: Vec::new(),
            hb: Vec::new(),
            hb2: Vec::new(),
            q: Vec::new(),
            logits: Vec::new(),
            k_new: Vec::new(),
            v_new: Vec::new(),
            scratch: Scratch::default(),
        };
        acts.reserve(1, 1);
        acts
    }

    /// Make the buffers hold `n` tokens and `logit_rows` rows of logits.
    pub(crate) fn reserve(&mut self, n: usize, logit_rows: usize) {
        let c = self.config;
        let grow = |v: &mut Vec<f32>, len: usize| {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        };
        grow(&mut self.x, n * c.dim);
        grow(&mut self.xb, n * c.dim);
        grow(&mut self.xb2, n * c.dim);
        grow(&mut self.q, n * c.dim);
        grow(&mut self.k_new, n * c.kv_dim());
        grow(&mut self.v_new, n * c.kv_dim());
        grow(&mut self.hb, n * c.hidden_dim);
        grow(&mut self.hb2, n * c.hidden_dim);
        grow(&mut self.logits, logit_rows * c.vocab_size);
    }
}

/// Everything one sequence needs while it runs alone: activations, attention scores and the
/// KV cache. In a batch of sequences only `att` and `kv` are used, with the batch's own
/// `Activations`.
#[derive(Debug, Clone)]
pub struct State {
    pub(crate) config: Config,
    pub acts: Activations,
    pub att: Vec<f32>, // [n_heads, seq_len] attention scores
    pub kv: KvCache,   // [n_layers, n_kv_heads, seq_len, head_size] keys and values
}

impl State {
    pub fn new(config: &Config, kv_cache: KvCacheType) -> Result<State> {
        let c = config;
        Ok(State {
            config: *c,
            acts: Activations::new(c),
            att: vec![0.0; c.n_heads * c.seq_len],
            kv: KvCache::new(c, kv_cache)?,
        })
    }

    /// The logits of the last forward pass run on this state alone.
    pub fn logits(&self) -> &[f32] {
        &self.acts.logits
    }
}
