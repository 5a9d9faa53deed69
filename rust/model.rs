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
use crate::kernels::{matmul, matmul_shared_input, CacheValue, Isa, KernelChoice, Scratch, F16};
use crate::l2rs;
use crate::llama2c;
use crate::tensor::{Matrix, MatrixData, Weights};

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
    kernels: KernelChoice,
    kv_cache: KvCacheType,
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
        Self::open_with(path, n_threads, KernelChoice::new(Isa::detect()), None)
    }

    /// `open` with an explicit kernel choice (e.g. to force the scalar reference, or exact fp32
    /// activations for 4-bit weights) and KV cache type (`None`: `KvCacheType::auto`).
    pub fn open_with(
        path: impl AsRef<Path>,
        n_threads: Option<usize>,
        kernels: KernelChoice,
        kv_cache: Option<KvCacheType>,
    ) -> Result<Model> {
        if !kernels.isa.supported() {
            return Err(Error::Argument(format!("this CPU cannot run the {} kernels", kernels.isa.name())));
        }
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
        let kv_cache = kv_cache.unwrap_or_else(|| KvCacheType::auto(&weights, kernels));
        Ok(Model {
            weights,
            config,
            format,
            tokenizer,
            metadata,
            path: path.to_path_buf(),
            file_size: bytes.len(),
            pool,
            kernels,
            kv_cache,
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

    pub fn kernels(&self) -> KernelChoice {
        self.kernels
    }

    /// What the states this model makes (`new_state`) store in their KV cache.
    pub fn kv_cache(&self) -> KvCacheType {
        self.kv_cache
    }

    /// A fresh state for one sequence (positions from 0), with the model's KV cache type.
    pub fn new_state(&self) -> State {
        State::new(&self.config, self.kv_cache)
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
        let mut state = self.new_state();
        let mut out = Vec::with_capacity(tokens.len() * self.config.vocab_size);
        for (i, batch) in tokens.chunks(PREFILL_BATCH).enumerate() {
            out.extend_from_slice(self.forward_batch(&mut state, batch, i * PREFILL_BATCH, true)?);
        }
        Ok(out)
    }

    /// Run one token at position `pos` and return the logits (`[vocab_size]`).
    /// The cache in `state` must hold positions `0..pos` of the same sequence.
    pub fn forward<'s>(&self, state: &'s mut State, token: u32, pos: usize) -> Result<&'s [f32]> {
        self.forward_batch(state, &[token], pos, false)
    }

    /// Run `tokens` at positions `pos..pos + tokens.len()` as one batch: every weight matrix is
    /// read once for the whole batch. Returns the logits of every token (`[n, vocab_size]`)
    /// with `all_logits`, else of the last one (`[vocab_size]`).
    pub fn forward_batch<'s>(
        &self,
        state: &'s mut State,
        tokens: &[u32],
        pos: usize,
        all_logits: bool,
    ) -> Result<&'s [f32]> {
        self.check_tokens(tokens)?;
        if tokens.is_empty() {
            return Err(Error::Argument("forward_batch needs at least one token".into()));
        }
        if pos + tokens.len() > self.config.seq_len {
            return Err(Error::ContextLength {
                what: "position",
                needed: pos + tokens.len(),
                seq_len: self.config.seq_len,
            });
        }
        if state.config != self.config {
            return Err(Error::Argument("state was made for a model of another shape".into()));
        }
        state.reserve(tokens.len(), all_logits);
        self.pool.install(|| self.forward_in_pool(state, tokens, pos, all_logits));
        let n_logits = if all_logits { tokens.len() } else { 1 };
        Ok(&state.logits[..n_logits * self.config.vocab_size])
    }

    fn forward_in_pool(&self, s: &mut State, tokens: &[u32], pos0: usize, all_logits: bool) {
        let c = &self.config;
        let w = &self.weights;
        let k = self.kernels;
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
            w.token_embedding.row_into(token as usize, &mut x[t * dim..(t + 1) * dim]);
        }

        for (l, layer) in w.layers.iter().enumerate() {
            // Attention: x -> xb (normed) -> q, and k, v straight into the cache rows.
            rmsnorm_tokens(xb, x, &layer.rms_att, eps, dim);
            let k_new = &mut s.k_new[..n * kv_dim];
            let v_new = &mut s.v_new[..n * kv_dim];
            let mut qkv = [(&mut q[..], &layer.wq), (&mut k_new[..], &layer.wk), (&mut v_new[..], &layer.wv)];
            matmul_shared_input(&mut qkv, xb, n, &mut s.scratch, k);
            for t in 0..n {
                rope(&mut q[t * dim..(t + 1) * dim], &mut k_new[t * kv_dim..(t + 1) * kv_dim], pos0 + t, hs, c.rope_theta);
            }
            let batch = Batch { tokens: n, pos0, q: &*q, k_new: &*k_new, v_new: &*v_new };
            match &mut s.kv {
                KvCache::F32(cache) => attend(c, l, cache, &batch, &mut s.att, xb, k.isa),
                KvCache::F16(cache) => attend(c, l, cache, &batch, &mut s.att, xb, k.isa),
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
                    let silu = *h * (1.0 / (1.0 + (-*h).exp()));
                    *h = silu * h2;
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

/// One batch's queries and new keys and values in one layer, after RoPE.
struct Batch<'a> {
    tokens: usize,
    pos0: usize,        // position of the batch's first token
    q: &'a [f32],       // [tokens, dim]
    k_new: &'a [f32],   // [tokens, kv_dim]
    v_new: &'a [f32],   // [tokens, kv_dim]
}

/// Layer `l`'s attention for a batch: store its keys and values in the cache, then each head
/// attends, token by token, over positions 0..=pos of the layer's cache (the causal mask),
/// writing `out` (`[tokens, dim]`). Heads run in parallel and write disjoint slices of `out`.
fn attend<T: CacheValue>(c: &Config, l: usize, cache: &mut KvRuns<T>, b: &Batch, att: &mut [f32], out: &mut [f32], isa: Isa) {
    let (dim, hs, kv_dim, seq_len) = (c.dim, c.head_size(), c.kv_dim(), c.seq_len);
    // Each kv head's keys and values go to its own run of the cache, so attention reads them
    // sequentially (positions a whole kv_dim apart cross a page per read).
    let layer_cache = l * seq_len * kv_dim; // = l * n_kv_heads * seq_len * hs
    let head_run = |kh: usize| layer_cache + kh * seq_len * hs;
    for t in 0..b.tokens {
        for kh in 0..c.n_kv_heads {
            let at = head_run(kh) + (b.pos0 + t) * hs;
            let from = t * kv_dim + kh * hs;
            T::store(&b.k_new[from..from + hs], &mut cache.keys[at..at + hs]);
            T::store(&b.v_new[from..from + hs], &mut cache.values[at..at + hs]);
        }
    }
    let (keys, values) = (&cache.keys, &cache.values);
    // The scalar kernels keep run.c's summation order; the others vectorize the scores.
    let attention = T::attention_for(isa);
    let kv_mul = c.kv_mul();
    let out = SyncPtr(out.as_mut_ptr());
    att.par_chunks_mut(seq_len).enumerate().for_each(|(h, att)| {
        let out = out;
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
            // SAFETY: head h of token t owns out[t, h*hs..(h+1)*hs]; no other task writes it.
            let o = unsafe { std::slice::from_raw_parts_mut(out.0.add(t * dim + h * hs), hs) };
            o.fill(0.0);
            (attention.sum)(att, &values[..(pos + 1) * hs], o);
        }
    });
}

/// Prompts and `logits()` run in batches of this many tokens: large enough that each weight
/// is read once for many tokens, small enough that the batch's activations stay in cache.
pub const PREFILL_BATCH: usize = 64;

/// Element-wise passes over activations run in parallel pieces of this many values.
const ELEMENTWISE_PIECE: usize = 2048;

/// A raw pointer the attention heads write through at disjoint offsets.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

fn build_pool(n_threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let n = match n_threads {
        Some(0) => return Err(Error::Argument("n_threads must be at least 1, got 0".into())),
        Some(n) => n,
        None => default_threads(),
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("llama2rs-{i}"))
        .build()
        .map_err(|e| Error::Argument(format!("cannot start {n} threads: {e}")))
}

/// Physical cores this process may use: decoding is bound by memory bandwidth, and a second
/// hyperthread on a core only competes for it. Falls back to the logical count.
pub fn default_threads() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    physical_cores().map_or(logical, |p| p.clamp(1, logical))
}

/// Distinct (package, core) pairs in Linux's CPU topology, or None where it is not readable.
fn physical_cores() -> Option<usize> {
    let mut cores = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/sys/devices/system/cpu").ok()? {
        let path = entry.ok()?.path();
        let name = path.file_name()?.to_str()?;
        if !name.starts_with("cpu") || !name[3..].chars().all(|c| c.is_ascii_digit()) || name.len() == 3 {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(path.join("topology").join(f)).ok();
        if let (Some(package), Some(core)) = (read("physical_package_id"), read("core_id")) {
            cores.insert((package.trim().to_string(), core.trim().to_string()));
        }
    }
    (!cores.is_empty()).then_some(cores.len())
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
/// `rmsnorm` of each of the batch's tokens (`[n, dim]`), in parallel.
fn rmsnorm_tokens(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32, dim: usize) {
    out.par_chunks_mut(dim).zip(x.par_chunks(dim)).for_each(|(o, x)| rmsnorm(o, x, weight, eps));
}

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
/// (llama2.c's layout): rotates all of `q` and the `kv_dim` entries of `k`. The angle depends
/// only on the pair's place in its head, so each sine and cosine is computed once per position
/// and applied to every head (the same values run.c computes per head).
fn rope(q: &mut [f32], k: &mut [f32], pos: usize, head_size: usize, theta: f32) {
    for i in (0..head_size).step_by(2) {
        let freq = 1.0 / theta.powf(i as f32 / head_size as f32);
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
    pub fn name(self) -> &'static str {
        match self {
            KvCacheType::F32 => "f32",
            KvCacheType::F16 => "f16",
        }
    }

    pub fn from_name(name: &str) -> Option<KvCacheType> {
        [KvCacheType::F32, KvCacheType::F16].into_iter().find(|t| t.name() == name)
    }

    /// The default for a model: fp16 where the weights are GPTQ (their rounding dwarfs the
    /// cache's, as in llama.cpp) and the kernels convert fp16 in hardware (F16C); fp32 for
    /// fp32 and Q8_0 weights (llama2.c parity), for the exact path, and for kernels whose
    /// attention would convert fp16 one value at a time.
    pub fn auto(weights: &Weights, kernels: KernelChoice) -> KvCacheType {
        let affine = weights.layers.iter().any(|l| matches!(l.wq.data, MatrixData::Affine(_)));
        let hardware_f16 = matches!(kernels.isa, Isa::Avx2 | Isa::Avx512);
        if affine && kernels.int8_activations && hardware_f16 {
            KvCacheType::F16
        } else {
            KvCacheType::F32
        }
    }
}

/// Keys and values of every layer, each `[n_layers, n_kv_heads, seq_len, head_size]`.
#[derive(Debug, Clone)]
pub struct KvRuns<T> {
    pub keys: Vec<T>,
    pub values: Vec<T>,
}

impl<T: CacheValue> KvRuns<T> {
    fn new(c: &Config) -> KvRuns<T> {
        let len = c.n_layers * c.seq_len * c.kv_dim();
        KvRuns { keys: T::zeros(len), values: T::zeros(len) }
    }
}

#[derive(Debug, Clone)]
pub enum KvCache {
    F32(KvRuns<f32>),
    F16(KvRuns<F16>),
}

/// Everything one sequence needs while it runs: activations and the KV cache.
/// Batch buffers grow to the largest batch seen and are then reused: decoding one token at a
/// time allocates nothing.
#[derive(Debug, Clone)]
pub struct State {
    config: Config,
    pub x: Vec<f32>,      // [batch, dim] residual stream
    pub xb: Vec<f32>,     // [batch, dim] normed input / attention output / ffn output
    pub xb2: Vec<f32>,    // [batch, dim] attention projection
    pub hb: Vec<f32>,     // [batch, hidden_dim]
    pub hb2: Vec<f32>,    // [batch, hidden_dim]
    pub q: Vec<f32>,      // [batch, dim]
    pub att: Vec<f32>,    // [n_heads, seq_len] attention scores
    pub logits: Vec<f32>, // [batch or 1, vocab_size]
    pub k_new: Vec<f32>,  // [batch, kv_dim] the batch's keys, before they go to the cache
    pub v_new: Vec<f32>,  // [batch, kv_dim] the batch's values
    pub kv: KvCache,      // [n_layers, n_kv_heads, seq_len, head_size] keys and values
    scratch: Scratch,     // matmul's working memory
}

impl State {
    pub fn new(config: &Config, kv_cache: KvCacheType) -> State {
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
            kv: match kv_cache {
                KvCacheType::F32 => KvCache::F32(KvRuns::new(c)),
                KvCacheType::F16 => KvCache::F16(KvRuns::new(c)),
            },
            scratch: Scratch::default(),
        };
        state.reserve(1, true);
        state
    }

    /// Make the batch buffers hold `n` tokens (and `n` rows of logits if `all_logits`).
    fn reserve(&mut self, n: usize, all_logits: bool) {
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

#[cfg(test)]
mod tests {
    #[test]
    fn default_threads_is_within_the_logical_count() {
        let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let n = super::default_threads();
        assert!(n >= 1 && n <= logical, "{n} of {logical}");
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Model>();
    check::<Matrix<'static>>();
}
