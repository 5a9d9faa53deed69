//! One sequence's activations and KV cache.

use super::kv_cache::{KvCache, KvCacheType};
use crate::config::Config;
use crate::error::Result;
use crate::kernels::Scratch;

/// Everything one sequence needs while it runs: activations and the KV cache.
/// Batch buffers grow to the largest batch seen and are then reused: decoding one token at a
/// time allocates nothing.
#[derive(Debug, Clone)]
pub struct State {
    pub(crate) config: Config,
    pub x: Vec<f32>,             // [batch, dim] residual stream
    pub xb: Vec<f32>,            // [batch, dim] normed input / attention output / ffn output
    pub xb2: Vec<f32>,           // [batch, dim] attention projection
    pub hb: Vec<f32>,            // [batch, hidden_dim]
    pub hb2: Vec<f32>,           // [batch, hidden_dim]
    pub q: Vec<f32>,             // [batch, dim]
    pub att: Vec<f32>,           // [n_heads, seq_len] attention scores
    pub logits: Vec<f32>,        // [batch or 1, vocab_size]
    pub k_new: Vec<f32>,         // [batch, kv_dim] the batch's keys, before they go to the cache
    pub v_new: Vec<f32>,         // [batch, kv_dim] the batch's values
    pub kv: KvCache,             // [n_layers, n_kv_heads, seq_len, head_size] keys and values
    pub(crate) scratch: Scratch, // matmul's working memory
}

impl State {
    pub fn new(config: &Config, kv_cache: KvCacheType) -> Result<State> {
        let c = config;
        let mut state = State {
            config: *c,
            x: Vec::new(),
            xb: Vec::new(),
            xb2: Vec::new(),
            hb: Vec::new(),
            hb2: Vec::new(),
            q: Vec::new(),
            att: vec![0.0; c.n_heads * c.seq_len],
            logits: Vec::new(),
            k_new: Vec::new(),
            v_new: Vec::new(),
            kv: KvCache::new(c, kv_cache)?,
            scratch: Scratch::default(),
        };
        state.reserve(1, true);
        Ok(state)
    }

    /// Make the batch buffers hold `n` tokens (and `n` rows of logits if `all_logits`).
    pub(crate) fn reserve(&mut self, n: usize, all_logits: bool) {
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
        grow(&mut self.logits, if all_logits { n } else { 1 } * c.vocab_size);
    }
}
