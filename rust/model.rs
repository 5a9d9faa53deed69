//! The Llama-2 forward pass over memory-mapped weights.
//!
//! Follows llama2.c's run.c (and runq.c for Q8_0 weights): RMSNorm, RoPE on interleaved
//! pairs, causal attention with a KV cache and grouped-query attention (query head `h` reads
//! kv head `h / kv_mul`; heads are never copied), SwiGLU, a shared or separate classifier.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::kernels::{fast::Fast, matvec, Scratch};
use crate::l2rs;
use crate::llama2c;
use crate::tensor::{Matrix, Weights};

/// Which kind of file a model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Llama2c(llama2c::Format),
    /// Our safetensors file, of this format version.
    Llama2rs { version: u64 },
}

impl FileFormat {
    pub fn name(&self) -> String {
        match self {
            FileFormat::Llama2c(f) => f.name().to_string(),
            FileFormat::Llama2rs { version } => format!("llama2rs-v{version}"),
        }
    }
}

/// A model opened from a file. Read-only: share it between threads freely; each
/// generation owns a [`State`].
pub struct Model {
    // Declared before `_map` so the views are dropped first (they hold no resources anyway).
    weights: Weights<'static>,
    config: Config,
    format: FileFormat,
    /// The tokenizer stored in the file (llama2.c tokenizer.bin encoding), if any.
    tokenizer: Option<&'static [u8]>,
    metadata: std::collections::HashMap<String, String>,
    path: PathBuf,
    file_size: usize,
    pool: rayon::ThreadPool,
    _map: Mmap,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("config", &self.config)
            .finish()
    }
}

impl Model {
    /// Memory-map `path` and validate it. Nothing is copied or read beyond the header: the
    /// operating system pages weights in when the forward pass first touches them.
    /// `n_threads = None` uses all available cores.
    pub fn open(path: impl AsRef<Path>, n_threads: Option<usize>) -> Result<Model> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::model_file(path, format!("cannot open: {e}")))?;
        // SAFETY: the map is read-only. If another process truncates the file while it is
        // mapped, reads fault (as they would in llama.cpp or llama2.c); we cannot prevent that.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::model_file(path, format!("cannot map: {e}")))?;
        // SAFETY: the weights borrow the mapped bytes. The map lives in the same struct, is
        // never mutated or remapped, and its address does not change when the struct moves;
        // the views are only handed out with the lifetime of `&self`.
        let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) };
        let (config, format, weights, tokenizer, metadata) = if l2rs::is_safetensors(bytes) {
            let c = l2rs::read_model(path, bytes)?;
            let version = c.metadata.get("format_version").and_then(|v| v.parse().ok()).unwrap_or(l2rs::FORMAT_VERSION);
            (c.config, FileFormat::Llama2rs { version }, c.weights, Some(c.tokenizer), c.metadata)
        } else {
            let (header, weights) = llama2c::read_model(path, bytes)?;
            (header.config, FileFormat::Llama2c(header.format), weights, None, Default::default())
        };
        let pool = build_pool(n_threads)?;
        Ok(Model {
            weights,
            config,
            format,
            tokenizer,
            metadata,
            path: path.to_path_buf(),
            file_size: bytes.len(),
            pool,
            _map: map,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// The tokenizer stored in the file (tokenizer.bin encoding), for our own format.
    pub fn tokenizer_bytes(&self) -> Option<&[u8]> {
        self.tokenizer
    }

    /// The file's free-form metadata (our format's `__metadata__`; empty for llama2.c files).
    pub fn metadata(&self) -> &std::collections::HashMap<String, String> {
        &self.metadata
    }

    pub fn weights(&self) -> &Weights<'_> {
        &self.weights
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_size(&self) -> usize {
        self.file_size
    }

    pub fn n_threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    pub fn shared_classifier(&self) -> bool {
        self.weights.classifier.is_none()
    }

    /// Check that every id is a valid token.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let vocab_size = self.config.vocab_size;
        match tokens.iter().position(|&t| t as usize >= vocab_size) {
            Some(index) => Err(Error::InvalidToken { token: tokens[index] as i64, index, vocab_size }),
            None => Ok(()),
        }
    }

    /// Teacher-forced logits: row `i` (of `[tokens.len(), vocab_size]`, row-major) is the
    /// next-token distribution after `tokens[..=i]`, starting from position 0.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        if tokens.len() > self.config.seq_len {
            return Err(Error::ContextLength {
                what: "the token sequence",
                needed: tokens.len(),
                seq_len: self.config.seq_len,
            });
        }
        let mut state = State::new(&self.config);
        let mut out = Vec::with_capacity(tokens.len() * self.config.vocab_size);
        for (pos, &token) in tokens.iter().enumerate() {
            out.extend_from_slice(self.forward(&mut state, token, pos)?);
        }
        Ok(out)
    }

    /// Run one token at position `pos` and return the logits (`[vocab_size]`).
    /// The cache in `state` must hold positions `0..pos` of the same sequence.
    pub fn forward<'s>(&self, state: &'s mut State, token: u32, pos: usize) -> Result<&'s [f32]> {
        self.check_tokens(&[token])?;
        if pos >= self.config.seq_len {
            return Err(Error::ContextLength { what: "position", needed: pos + 1, seq_len: self.config.seq_len });
        }
        if state.config != self.config {
            return Err(Error::Argument("state was made for a model of another shape".into()));
        }
        self.pool.install(|| self.forward_in_pool(state, token as usize, pos));
        Ok(&state.logits)
    }

    fn forward_in_pool(&self, s: &mut State, token: usize, pos: usize) {
        let c = &self.config;
        let w = &self.weights;
        let (dim, hs, kv_dim, kv_mul) = (c.dim, c.head_size(), c.kv_dim(), c.kv_mul());
        let seq_len = c.seq_len;

        let eps = c.norm_eps;
        w.token_embedding.row_into(token, &mut s.x);

        for (l, layer) in w.layers.iter().enumerate() {
            // Attention: x -> xb (normed) -> q, k, v.
            rmsnorm(&mut s.xb, &s.x, &layer.rms_att, eps);
            let cache_row = l * seq_len * kv_dim + pos * kv_dim;
            matvec::<Fast>(&mut s.q, &layer.wq, &s.xb, &mut s.scratch);
            matvec::<Fast>(&mut s.key_cache[cache_row..cache_row + kv_dim], &layer.wk, &s.xb, &mut s.scratch);
            matvec::<Fast>(&mut s.value_cache[cache_row..cache_row + kv_dim], &layer.wv, &s.xb, &mut s.scratch);
            rope(&mut s.q, &mut s.key_cache[cache_row..cache_row + kv_dim], pos, hs, c.rope_theta);

            // Each head attends over positions 0..=pos of its layer's cache.
            let layer_keys = &s.key_cache[l * seq_len * kv_dim..(l + 1) * seq_len * kv_dim];
            let layer_values = &s.value_cache[l * seq_len * kv_dim..(l + 1) * seq_len * kv_dim];
            let q = &s.q;
            s.xb.par_chunks_mut(hs)
                .zip(s.att.par_chunks_mut(seq_len))
                .enumerate()
                .for_each(|(h, (out, att))| {
                    let q = &q[h * hs..(h + 1) * hs];
                    let kv_offset = (h / kv_mul) * hs;
                    let scale = (hs as f32).sqrt();
                    let att = &mut att[..=pos];
                    for (t, a) in att.iter_mut().enumerate() {
                        let k = &layer_keys[t * kv_dim + kv_offset..t * kv_dim + kv_offset + hs];
                        let mut score = 0.0f32;
                        for i in 0..hs {
                            score += q[i] * k[i];
                        }
                        *a = score / scale;
                    }
                    softmax(att);
                    out.fill(0.0);
                    for (t, &a) in att.iter().enumerate() {
                        let v = &layer_values[t * kv_dim + kv_offset..t * kv_dim + kv_offset + hs];
                        for i in 0..hs {
                            out[i] += a * v[i];
                        }
                    }
                });
            matvec::<Fast>(&mut s.xb2, &layer.wo, &s.xb, &mut s.scratch);
            for i in 0..dim {
                s.x[i] += s.xb2[i];
            }

            // Feed-forward: w2(silu(w1 x) * w3 x).
            rmsnorm(&mut s.xb, &s.x, &layer.rms_ffn, eps);
            matvec::<Fast>(&mut s.hb, &layer.w1, &s.xb, &mut s.scratch);
            matvec::<Fast>(&mut s.hb2, &layer.w3, &s.xb, &mut s.scratch);
            for (h, &h2) in s.hb.iter_mut().zip(&s.hb2) {
                let silu = *h * (1.0 / (1.0 + (-*h).exp()));
                *h = silu * h2;
            }
            matvec::<Fast>(&mut s.xb, &layer.w2, &s.hb, &mut s.scratch);
            for i in 0..dim {
                s.x[i] += s.xb[i];
            }
        }

        rmsnorm_in_place(&mut s.x, &w.rms_final, eps);
        matvec::<Fast>(&mut s.logits, w.classifier(), &s.x, &mut s.scratch);
    }
}

fn build_pool(n_threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let n = match n_threads {
        Some(0) => return Err(Error::Argument("n_threads must be at least 1, got 0".into())),
        Some(n) => n,
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("llama2rs-{i}"))
        .build()
        .map_err(|e| Error::Argument(format!("cannot start {n} threads: {e}")))
}

/// `1 / sqrt(mean(x^2) + eps)`, in run.c's operation order.
fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    let mut ss = 0.0f32;
    for v in x {
        ss += v * v;
    }
    ss /= x.len() as f32;
    ss += eps;
    1.0 / ss.sqrt()
}

/// `out = weight * (x / rms(x))`.
fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let inv = inverse_rms(x, eps);
    for ((o, &w), &v) in out.iter_mut().zip(weight).zip(x) {
        *o = w * (inv * v);
    }
}

/// `x = weight * (x / rms(x))`, for the final norm (run.c normalizes in place there).
fn rmsnorm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let inv = inverse_rms(x, eps);
    for (v, &w) in x.iter_mut().zip(weight) {
        *v = w * (inv * *v);
    }
}

/// Numerically stable softmax in place.
pub(crate) fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Rotary position embedding on interleaved pairs `(2i, 2i+1)` within each head
/// (llama2.c's layout): rotates all of `q` and the `kv_dim` entries of `k`.
fn rope(q: &mut [f32], k: &mut [f32], pos: usize, head_size: usize, theta: f32) {
    for i in (0..q.len()).step_by(2) {
        let head_dim = (i % head_size) as f32;
        let freq = 1.0 / theta.powf(head_dim / head_size as f32);
        let angle = pos as f32 * freq;
        let (sin, cos) = (angle.sin(), angle.cos());
        let rotate = |v: &mut [f32]| {
            let (v0, v1) = (v[i], v[i + 1]);
            v[i] = v0 * cos - v1 * sin;
            v[i + 1] = v0 * sin + v1 * cos;
        };
        rotate(q);
        if i < k.len() {
            rotate(k);
        }
    }
}

/// Everything one sequence needs while it runs: activations and the KV cache.
/// Allocated once; a forward pass allocates nothing.
#[derive(Debug, Clone)]
pub struct State {
    config: Config,
    pub x: Vec<f32>,           // [dim] residual stream
    pub xb: Vec<f32>,          // [dim] normed input / attention output / ffn output
    pub xb2: Vec<f32>,         // [dim] attention projection
    pub hb: Vec<f32>,          // [hidden_dim]
    pub hb2: Vec<f32>,         // [hidden_dim]
    pub q: Vec<f32>,           // [dim]
    pub att: Vec<f32>,         // [n_heads, seq_len] attention scores
    pub logits: Vec<f32>,      // [vocab_size]
    pub key_cache: Vec<f32>,   // [n_layers, seq_len, kv_dim]
    pub value_cache: Vec<f32>, // [n_layers, seq_len, kv_dim]
    scratch: Scratch,          // matvec's working memory
}

impl State {
    pub fn new(config: &Config) -> State {
        let c = config;
        // Zeroed allocations of this size come from fresh pages: a long context costs memory
        // only as far as it is used.
        let cache = c.n_layers * c.seq_len * c.kv_dim();
        State {
            config: *c,
            x: vec![0.0; c.dim],
            xb: vec![0.0; c.dim],
            xb2: vec![0.0; c.dim],
            hb: vec![0.0; c.hidden_dim],
            hb2: vec![0.0; c.hidden_dim],
            q: vec![0.0; c.dim],
            att: vec![0.0; c.n_heads * c.seq_len],
            logits: vec![0.0; c.vocab_size],
            key_cache: vec![0.0; cache],
            value_cache: vec![0.0; cache],
            scratch: Scratch::default(),
        }
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Model>();
    check::<Matrix<'static>>();
}
