//! The forward pass of a batch of tokens: run.c's (and runq.c's for Q8_0 weights) RMSNorm,
//! RoPE on interleaved pairs, attention over the KV cache, SwiGLU and the classifier.

use rayon::prelude::*;

use super::attention::{attend, Batch};
use super::kv_cache::KvCache;
use super::state::State;
use super::Model;
use crate::kernels::{embedding, matmul, matmul_shared_input};
use crate::math::{rmsnorm, rmsnorm_in_place, swiglu};

/// Element-wise passes over activations run in parallel pieces of this many values.
const ELEMENTWISE_PIECE: usize = 2048;

impl Model {
    /// `tokens` at positions `pos0..`, inside the model's pool; `s` holds room for them.
    pub(super) fn forward_in_pool(&self, s: &mut State, tokens: &[u32], pos0: usize, all_logits: bool) {
        let c = &self.config;
        let w = &self.weights;
        let k = &self.kernels;
        let n = tokens.len();
        let (dim, hidden, hs, kv_dim) = (c.dim, c.hidden_dim, c.head_size(), c.kv_dim());
        let eps = c.norm_eps;
        let x = &mut s.x[..n * dim];
        let xb = &mut s.xb[..n * dim];
        let xb2 = &mut s.xb2[..n * dim];
        let q = &mut s.q[..n * dim];
        let hb = &mut s.hb[..n * hidden];
        let hb2 = &mut s.hb2[..n * hidden];

        for (t, &token) in tokens.iter().enumerate() {
            embedding::row_into(&w.token_embedding, token as usize, &mut x[t * dim..(t + 1) * dim], k);
        }

        for (l, layer) in w.layers.iter().enumerate() {
            // Attention: x -> xb (normed) -> q, and k, v straight into the cache rows.
            rmsnorm_tokens(xb, x, &layer.rms_att, eps, dim);
            let k_new = &mut s.k_new[..n * kv_dim];
            let v_new = &mut s.v_new[..n * kv_dim];
            let mut qkv = [(&mut q[..], &layer.wq), (&mut k_new[..], &layer.wk), (&mut v_new[..], &layer.wv)];
            matmul_shared_input(&mut qkv, xb, n, &mut s.scratch, k);
            for t in 0..n {
                let (q, k_new) = (&mut q[t * dim..(t + 1) * dim], &mut k_new[t * kv_dim..(t + 1) * kv_dim]);
                rope(q, k_new, pos0 + t, hs, c.rope_theta, w.rope_freq_factors.as_deref());
            }
            let batch = Batch { tokens: n, pos0, q: &*q, k_new: &*k_new, v_new: &*v_new };
            match &mut s.kv {
                KvCache::F32(cache) => attend(c, l, cache, &batch, &mut s.att, xb, k),
                KvCache::F16(cache) => attend(c, l, cache, &batch, &mut s.att, xb, k),
            }
            matmul(xb2, &layer.wo, xb, n, &mut s.scratch, k);
            for (xi, &d) in x.iter_mut().zip(xb2.iter()) {
                *xi += d;
            }

            // Feed-forward: w2(silu(w1 x) * w3 x).
            rmsnorm_tokens(xb, x, &layer.rms_ffn, eps, dim);
            matmul_shared_input(&mut [(&mut hb[..], &layer.w1), (&mut hb2[..], &layer.w3)], xb, n, &mut s.scratch, k);
            // SwiGLU, element-wise, in parallel pieces even for one token: a serial pass of
            // `hidden` expf calls would leave the other threads idle (~2% of 7B decode, 2 threads).
            hb.par_chunks_mut(ELEMENTWISE_PIECE).zip(hb2.par_chunks(ELEMENTWISE_PIECE)).for_each(|(h, h2)| {
                for (h, &h2) in h.iter_mut().zip(h2) {
                    *h = swiglu(*h, h2);
                }
            });
            matmul(xb, &layer.w2, hb, n, &mut s.scratch, k);
            for (xi, &d) in x.iter_mut().zip(xb.iter()) {
                *xi += d;
            }
        }

        // In place, as run.c does; only the rows whose logits are wanted.
        let first = if all_logits { 0 } else { n - 1 };
        for t in first..n {
            rmsnorm_in_place(&mut x[t * dim..(t + 1) * dim], &w.rms_final, eps);
        }
        let m = n - first;
        matmul(&mut s.logits[..m * c.vocab_size], w.classifier(), &x[first * dim..], m, &mut s.scratch, k);
    }
}

/// `rmsnorm` of each of the batch's tokens (`[n, dim]`), in parallel.
fn rmsnorm_tokens(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32, dim: usize) {
    out.par_chunks_mut(dim).zip(x.par_chunks(dim)).for_each(|(o, x)| rmsnorm(o, x, weight, eps));
}

/// Rotary position embedding on interleaved pairs `(2i, 2i+1)` within each head
/// (llama2.c's layout): rotates all of `q` and the `kv_dim` entries of `k`. The angle depends
/// only on the pair's place in its head, so each sine and cosine is computed once per position
/// and applied to every head (the same values run.c computes per head). `factors`
/// (`[head_size / 2]`) divide the frequencies, as llama.cpp applies GGUF's `rope_freqs`.
fn rope(q: &mut [f32], k: &mut [f32], pos: usize, head_size: usize, theta: f32, factors: Option<&[f32]>) {
    for i in (0..head_size).step_by(2) {
        let mut freq = 1.0 / theta.powf(i as f32 / head_size as f32);
        if let Some(f) = factors {
            freq /= f[i / 2];
        }
        let angle = pos as f32 * freq;
        let (sin, cos) = (angle.sin(), angle.cos());
        let rotate = |v: &mut [f32]| {
            for head in v.chunks_exact_mut(head_size) {
                let (v0, v1) = (head[i], head[i + 1]);
                head[i] = v0 * cos - v1 * sin;
                head[i + 1] = v0 * sin + v1 * cos;
            }
        };
        rotate(q);
        rotate(k);
    }
}
