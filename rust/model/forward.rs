//! The forward pass of a batch of tokens: run.c's (and runq.c's for Q8_0 weights) RMSNorm,
//! RoPE on interleaved pairs, attention over the KV cache, SwiGLU and the classifier.

use rayon::prelude::*;

use super::attention::{attend, Batch};
use super::kv_cache::KvCache;
use super::state::Activations;
use super::Model;
use crate::error::{Error, Result};
use crate::kernels::{embedding, matmul, matmul_shared_input};
use crate::math::{rmsnorm, rmsnorm_in_place, swiglu};

/// Element-wise passes over activations run in parallel pieces of this many values.
const ELEMENTWISE_PIECE: usize = 2048;

/// One sequence's share of a forward pass: its KV cache and attention scores, the position of
/// its first token, and how many of the batch's tokens are its own (consecutive rows, in the
/// order of the parts).
pub(crate) struct SequencePart<'s> {
    pub kv: &'s mut KvCache,
    pub att: &'s mut [f32], // [n_heads, seq_len]
    pub pos0: usize,
    pub tokens: usize,
}

impl Model {
    /// `tokens` of one or more sequences (`parts`, in order) inside the model's pool: every
    /// weight matrix is read once for all of them; attention runs per sequence over its own
    /// cache. Writes the logits of every token (`all_logits`) or of each part's last token, in
    /// order, to `acts.logits`; `acts` holds room for them. A NaN or infinity at any matrix
    /// product's input, or in the logits, is an error (`Error::NonFinite`).
    pub(super) fn forward_in_pool(
        &self,
        acts: &mut Activations,
        parts: &mut [SequencePart<'_>],
        tokens: &[u32],
        all_logits: bool,
    ) -> Result<()> {
        let c = &self.config;
        let w = &self.weights;
        let k = &self.kernels;
        let n = tokens.len();
        debug_assert_eq!(parts.iter().map(|p| p.tokens).sum::<usize>(), n, "parts must cover the batch");
        let (dim, hidden, hs, kv_dim) = (c.dim, c.hidden_dim, c.head_size(), c.kv_dim());
        let eps = c.norm_eps;
        let x = &mut acts.x[..n * dim];
        let xb = &mut acts.xb[..n * dim];
        let xb2 = &mut acts.xb2[..n * dim];
        let q = &mut acts.q[..n * dim];
        let hb = &mut acts.hb[..n * hidden];
        let hb2 = &mut acts.hb2[..n * hidden];

        for (t, &token) in tokens.iter().enumerate() {
            embedding::row_into(&w.token_embedding, token as usize, &mut x[t * dim..(t + 1) * dim], k);
        }

        for (l, layer) in w.layers.iter().enumerate() {
            // Attention: x -> xb (normed) -> q, and k, v straight into the cache rows.
            rmsnorm_tokens(xb, x, &layer.rms_att, eps, dim);
            check_finite(xb, "the input of wq, wk and wv", l)?;
            let k_new = &mut acts.k_new[..n * kv_dim];
            let v_new = &mut acts.v_new[..n * kv_dim];
            let mut qkv = [(&mut q[..], &layer.wq), (&mut k_new[..], &layer.wk), (&mut v_new[..], &layer.wv)];
            matmul_shared_input(&mut qkv, xb, n, &mut acts.scratch, k);
            let mut row = 0;
            for part in parts.iter_mut() {
                for t in row..row + part.tokens {
                    let (q, k_new) = (&mut q[t * dim..(t + 1) * dim], &mut k_new[t * kv_dim..(t + 1) * kv_dim]);
                    rope(q, k_new, part.pos0 + t - row, hs, c.rope_theta, w.rope_freq_factors.as_deref());
                }
                let rows = row..row + part.tokens;
                let batch = Batch {
                    tokens: part.tokens,
                    pos0: part.pos0,
                    q: &q[rows.start * dim..rows.end * dim],
                    k_new: &k_new[rows.start * kv_dim..rows.end * kv_dim],
                    v_new: &v_new[rows.start * kv_dim..rows.end * kv_dim],
                };
                let out = &mut xb[rows.start * dim..rows.end * dim];
                match &mut *part.kv {
                    KvCache::F32(cache) => attend(c, l, cache, &batch, part.att, out, k),
                    KvCache::F16(cache) => attend(c, l, cache, &batch, part.att, out, k),
                }
                row = rows.end;
            }
            check_finite(xb, "the input of wo (the attention's output)", l)?;
            matmul(xb2, &layer.wo, xb, n, &mut acts.scratch, k);
            for (xi, &d) in x.iter_mut().zip(xb2.iter()) {
                *xi += d;
            }

            // Feed-forward: w2(silu(w1 x) * w3 x).
            rmsnorm_tokens(xb, x, &layer.rms_ffn, eps, dim);
            check_finite(xb, "the input of w1 and w3", l)?;
            matmul_shared_input(
                &mut [(&mut hb[..], &layer.w1), (&mut hb2[..], &layer.w3)],
                xb,
                n,
                &mut acts.scratch,
                k,
            );
            // SwiGLU, element-wise, in parallel pieces even for one token: a serial pass of
            // `hidden` expf calls would leave the other threads idle (~2% of 7B decode, 2 threads).
            hb.par_chunks_mut(ELEMENTWISE_PIECE).zip(hb2.par_chunks(ELEMENTWISE_PIECE)).for_each(|(h, h2)| {
                for (h, &h2) in h.iter_mut().zip(h2) {
                    *h = swiglu(*h, h2);
                }
            });
            check_finite(hb, "the input of w2 (SwiGLU's output)", l)?;
            matmul(xb, &layer.w2, hb, n, &mut acts.scratch, k);
            for (xi, &d) in x.iter_mut().zip(xb.iter()) {
                *xi += d;
            }
        }

        // The rows whose logits are wanted, gathered into xb (free now) and normed in place,
        // as run.c norms x.
        let mut m = 0;
        let mut row = 0;
        for part in parts.iter() {
            let wanted = if all_logits { row..row + part.tokens } else { row + part.tokens - 1..row + part.tokens };
            for t in wanted {
                let out = &mut xb[m * dim..(m + 1) * dim];
                out.copy_from_slice(&x[t * dim..(t + 1) * dim]);
                rmsnorm_in_place(out, &w.rms_final, eps);
                m += 1;
            }
            row += part.tokens;
        }
        let last = c.n_layers.saturating_sub(1);
        check_finite(&xb[..m * dim], "the classifier's input", last)?;
        let logits = &mut acts.logits[..m * c.vocab_size];
        matmul(logits, w.classifier(), &xb[..m * dim], m, &mut acts.scratch, k);
        check_finite(logits, "the logits", last)
    }
}

/// `Error::NonFinite` unless every value is finite. Sixteen independent lanes of `v * 0` (0 for
/// a finite value, NaN for NaN or an infinity) let the compiler vectorize the scan: about a
/// value per cycle per lane, so even a 64-token prompt's inputs of a TinyLlama layer (0.75 M
/// values) take some 50 us against the layer's ~20 ms of products.
fn check_finite(values: &[f32], what: &'static str, layer: usize) -> Result<()> {
    const LANES: usize = 16;
    let mut lanes = [0.0f32; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v * 0.0;
        }
    }
    let tail = chunks.remainder().iter().fold(0.0f32, |acc, &v| acc + v * 0.0);
    if lanes.iter().sum::<f32>() + tail == 0.0 {
        Ok(())
    } else {
        Err(Error::NonFinite { what, layer })
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
