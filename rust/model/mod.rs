//! A model opened from a file: the memory map, its validated weights, the kernel table and
//! the thread pool. The Llama forward pass over it follows llama2.c's run.c (`forward.rs`),
//! with attention (`attention.rs`) over each sequence's KV cache (`kv_cache.rs`, in a
//! `State`, `state.rs`).

mod attention;
mod forward;
pub mod kv_cache;
pub mod state;
pub mod threads;

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use forward::SequencePart;
pub use kv_cache::{KvCache, KvCacheType, KvRuns};
pub use state::{Activations, State};
pub use threads::default_threads;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::formats::{self, FileFormat};
use crate::kernels::Kernels;
use crate::weights::{Matrix, Weights};

/// Prompts and `logits()` run in batches of this many tokens: large enough that each weight
/// is read once for many tokens, small enough that the batch's activations stay in cache.
pub const PREFILL_BATCH: usize = 64;

/// A model opened from a file. Read-only: share it between threads freely; each
/// generation owns a [`State`].
pub struct Model {
    // Declared before `_map` so the views are dropped first (they hold no resources anyway).
    weights: Weights<'static>,
    config: Config,
    format: FileFormat,
    /// The tokenizer stored in the file (llama2.c tokenizer.bin encoding), if any.
    tokenizer: Option<&'static [u8]>,
    /// A GGUF file's tokenizer arrays, if any.
    vocabulary: Option<formats::gguf::Vocabulary<'static>>,
    metadata: std::collections::HashMap<String, String>,
    path: PathBuf,
    file_size: usize,
    pool: rayon::ThreadPool,
    kernels: Kernels,
    kv_cache: KvCacheType,
    /// The process that opened the model and started its pool (see `forward_batch`).
    pid: u32,
    _map: Backing,
}

/// The bytes the weights borrow: a file's map, or a copy of bytes given in memory.
enum Backing {
    Map(Mmap),
    Heap(Box<[u8]>),
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
        Self::open_with(path, n_threads, Kernels::best(), None)
    }

    /// `open` with an explicit kernel choice (e.g. to force the scalar reference, or exact fp32
    /// activations for 4-bit weights) and KV cache type (`None`: `KvCacheType::auto`).
    pub fn open_with(
        path: impl AsRef<Path>,
        n_threads: Option<usize>,
        kernels: Kernels,
        kv_cache: Option<KvCacheType>,
    ) -> Result<Model> {
        let path = path.as_ref();
        // Before opening: opening a FIFO blocks until a writer comes (uninterruptibly, from
        // Python), and a directory or device cannot be mapped or has no fixed size.
        let kind =
            std::fs::metadata(path).map_err(|e| Error::model_file(path, format!("cannot open: {e}")))?.file_type();
        if !kind.is_file() {
            return Err(Error::model_file(
                path,
                format!("not a regular file ({}): a model file is mapped", file_kind(kind)),
            ));
        }
        let file = File::open(path).map_err(|e| Error::model_file(path, format!("cannot open: {e}")))?;
        // SAFETY: the map is read-only. If another process truncates the file while it is
        // mapped, reads fault (as they would in llama.cpp or llama2.c); we cannot prevent that.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::model_file(path, format!("cannot map: {e}")))?;
        Self::from_map(path, Backing::Map(map), n_threads, kernels, kv_cache)
    }

    /// A model from bytes in memory (`path` only names it in errors), copied into a buffer of
    /// exactly their length: for the fuzz targets, where a read one byte past the end is
    /// caught by the address sanitizer (past a map's end it would land in the same page).
    pub fn from_bytes(
        path: &Path,
        bytes: &[u8],
        n_threads: Option<usize>,
        kernels: Kernels,
        kv_cache: Option<KvCacheType>,
    ) -> Result<Model> {
        let copy: Box<[u8]> = bytes.into();
        Self::from_map(path, Backing::Heap(copy), n_threads, kernels, kv_cache)
    }

    fn from_map(
        path: &Path,
        map: Backing,
        n_threads: Option<usize>,
        kernels: Kernels,
        kv_cache: Option<KvCacheType>,
    ) -> Result<Model> {
        let (ptr, len) = match &map {
            Backing::Map(m) => (m.as_ptr(), m.len()),
            Backing::Heap(b) => (b.as_ptr(), b.len()),
        };
        // SAFETY: the weights borrow the map's (or buffer's) bytes. It lives in the same
        // struct, is never mutated, remapped or reallocated, and its address does not change
        // when the struct moves; the views are only handed out with the lifetime of `&self`.
        let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(ptr, len) };
        let formats::Contents { config, format, weights, tokenizer, vocabulary, metadata } =
            formats::read(path, bytes)?;
        let pool = threads::build_pool(n_threads)?;
        let kv_cache = kv_cache.unwrap_or_else(|| KvCacheType::auto(&weights, &kernels));
        Ok(Model {
            weights,
            config,
            format,
            tokenizer,
            vocabulary,
            metadata,
            path: path.to_path_buf(),
            file_size: bytes.len(),
            pool,
            kernels,
            kv_cache,
            pid: std::process::id(),
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

    /// A GGUF file's tokenizer arrays (`tokenizer.ggml.*`), as stored.
    pub fn vocabulary(&self) -> Option<&formats::gguf::Vocabulary<'_>> {
        self.vocabulary.as_ref()
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

    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// What the states this model makes (`new_state`) store in their KV cache.
    pub fn kv_cache(&self) -> KvCacheType {
        self.kv_cache
    }

    /// A fresh state for one sequence (positions from 0), with the model's KV cache type; an
    /// error where the cache's memory is refused.
    pub fn new_state(&self) -> Result<State> {
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
        let mut out = Vec::new();
        let bytes = tokens.len() * self.config.vocab_size * std::mem::size_of::<f32>();
        out.try_reserve_exact(tokens.len() * self.config.vocab_size)
            .map_err(|_| Error::OutOfMemory { what: "the logits", bytes })?;
        let mut state = self.new_state()?;
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
        self.check_pass(state, tokens, pos)?;
        let n_logits = if all_logits { tokens.len() } else { 1 };
        let State { acts, att, kv, .. } = state;
        acts.reserve(tokens.len(), n_logits);
        let mut parts = [SequencePart { kv, att, pos0: pos, tokens: tokens.len() }];
        self.pool.install(|| self.forward_in_pool(acts, &mut parts, tokens, all_logits))?;
        Ok(&acts.logits[..n_logits * self.config.vocab_size])
    }

    /// Advance several sequences in one pass over the weights: sequence `i` runs `chunks[i]`
    /// (one sampled token, or a piece of its prompt) at positions `positions[i]..` over the
    /// cache in `states[i]`. Attention runs per sequence; every matrix is read once for all
    /// the tokens. Returns the logits of each sequence's last token (`[len, vocab_size]`), which
    /// equal what `forward_batch` gives each sequence alone, within the kernels' rounding.
    pub fn forward_sequences<'a>(
        &self,
        acts: &'a mut Activations,
        states: &mut [&mut State],
        positions: &[usize],
        chunks: &[&[u32]],
    ) -> Result<&'a [f32]> {
        if states.len() != chunks.len() || positions.len() != chunks.len() || chunks.is_empty() {
            return Err(Error::Argument("forward_sequences needs one state, position and chunk per sequence".into()));
        }
        for ((state, &pos), chunk) in states.iter().zip(positions).zip(chunks) {
            self.check_pass(state, chunk, pos)?;
        }
        if acts.config != self.config {
            return Err(Error::Argument("activations were made for a model of another shape".into()));
        }
        let tokens: Vec<u32> = chunks.concat();
        acts.reserve(tokens.len(), chunks.len());
        let mut parts: Vec<SequencePart<'_>> = states
            .iter_mut()
            .zip(positions)
            .zip(chunks)
            .map(|((state, &pos0), chunk)| SequencePart {
                kv: &mut state.kv,
                att: &mut state.att,
                pos0,
                tokens: chunk.len(),
            })
            .collect();
        self.pool.install(|| self.forward_in_pool(acts, &mut parts, &tokens, false))?;
        Ok(&acts.logits[..chunks.len() * self.config.vocab_size])
    }

    /// What every forward pass checks before it runs: valid tokens, room in the context, a
    /// state of this model's shape, and the process that owns the pool.
    fn check_pass(&self, state: &State, tokens: &[u32], pos: usize) -> Result<()> {
        self.check_tokens(tokens)?;
        if tokens.is_empty() {
            return Err(Error::Argument("a forward pass needs at least one token".into()));
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
        if std::process::id() != self.pid {
            // A forked child has the pool's memory but none of its threads: install would wait
            // for them forever.
            return Err(Error::Argument(format!(
                "this model was opened in process {} and is used in process {} (after a fork): its thread \
                 pool did not come along; open the model again in this process, or start workers with \
                 'spawn' instead of 'fork'",
                self.pid,
                std::process::id()
            )));
        }
        Ok(())
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Model>();
    check::<Matrix<'static>>();
}

/// What a path that is not a regular file is, for the error that refuses it.
fn file_kind(kind: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}
