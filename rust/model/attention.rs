//! Causal attention of a batch over the KV cache, with grouped-query attention: query head `h`
//! reads kv head `h / kv_mul`, and heads are never copied.

use rayon::prelude::*;

use super::kv_cache::KvRuns;
use crate::config::Config;
use crate::disjoint::DisjointSlice;
use crate::kernels::{Kernels, TableCache};
use crate::math::softmax;

/// One batch's queries and new keys and values in one layer, after RoPE.
pub(crate) struct Batch<'a> {
    pub tokens: usize,
    pub pos0: usize,      // position of the batch's first token
    pub q: &'a [f32],     // [tokens, dim]
    pub k_new: &'a [f32], // [tokens, kv_dim]
    pub v_new: &'a [f32], // [tokens, kv_dim]
}

/// Layer `l`'s attention for a batch: store its keys and values in the cache, then each head
/// attends, token by token, over positions 0..=pos of the layer's cache (the causal mask),
/// writing `out` (`[tokens, dim]`). Heads run in parallel and write disjoint slices of `out`.
pub(crate) fn attend<T: TableCache>(
    c: &Config,
    l: usize,
    cache: &mut KvRuns<T>,
    b: &Batch,
    att: &mut [f32],
    out: &mut [f32],
    k: &Kernels,
) {
    let (dim, hs, kv_dim, seq_len) = (c.dim, c.head_size(), c.kv_dim(), c.seq_len);
    assert!(out.len() >= b.tokens * dim && att.len() >= c.n_heads * seq_len, "attend: buffer lengths");
    // Each kv head's keys and values go to its own run of the cache, so attention reads them
    // sequentially (positions a whole kv_dim apart cross a page per read).
    let layer_cache = l * seq_len * kv_dim; // = l * n_kv_heads * seq_len * hs
    let head_run = |kh: usize| layer_cache + kh * seq_len * hs;
    for t in 0..b.tokens {
        for kh in 0..c.n_kv_heads {
            let at = head_run(kh) + (b.pos0 + t) * hs;
            let from = t * kv_dim + kh * hs;
            k.store(&b.k_new[from..from + hs], &mut cache.keys[at..at + hs]);
            k.store(&b.v_new[from..from + hs], &mut cache.values[at..at + hs]);
        }
    }
    let (keys, values) = (&cache.keys, &cache.values);
    // The scalar kernels keep run.c's summation order; the others vectorize the scores.
    let attention = k.attention::<T>();
    let kv_mul = c.kv_mul();
    let out = DisjointSlice::new(out);
    let out = &out;
    att[..c.n_heads * seq_len].par_chunks_mut(seq_len).enumerate().for_each(|(h, att)| {
        let run = head_run(h / kv_mul);
        let keys = &keys[run..run + seq_len * hs]; // [seq_len, hs]
        let values = &values[run..run + seq_len * hs];
        let scale = (hs as f32).sqrt();
        for t in 0..b.tokens {
            let pos = b.pos0 + t;
            let q = &b.q[t * dim + h * hs..t * dim + (h + 1) * hs];
            let att = &mut att[..=pos];
            (attention.scores)(q, &keys[..(pos + 1) * hs], scale, att);
            softmax(att);
            // SAFETY: head h of token t owns out[t, h*hs..(h+1)*hs], inside `out` (asserted
            // above); no other task writes it.
            let o = unsafe { out.slice_mut(t * dim + h * hs, hs) };
            o.fill(0.0);
            (attention.sum)(att, &values[..(pos + 1) * hs], o);
        }
    });
}
