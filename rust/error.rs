//! The core's error type. Every failure on bad input is one of these, never a panic.
//! The Python layer maps each variant to the exception class of the same meaning
//! (see `python/llama2rs/errors.py`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model file is missing, unreadable, truncated, corrupt or of an unknown format.
    #[error("{path}: {message}")]
    ModelFile { path: PathBuf, message: String },

    /// The configuration (from a header or from a caller) is inconsistent.
    #[error("invalid config: {0}")]
    Config(String),

    /// A token id is outside the vocabulary.
    #[error("token id {token} at index {index} is out of range for vocab_size {vocab_size}")]
    InvalidToken { token: i64, index: usize, vocab_size: usize },

    /// A sequence does not fit into the context window.
    #[error("{what} needs {needed} positions but the context length (seq_len) is {seq_len}")]
    ContextLength { what: &'static str, needed: usize, seq_len: usize },

    /// An argument is outside its allowed range.
    #[error("{0}")]
    Argument(String),

    /// A buffer the caller's request needs cannot be allocated (the KV cache of a huge
    /// `seq_len`, the logits of a huge sequence): an error, where Rust would abort.
    #[error("cannot allocate {what}: {bytes} bytes ({:.1} GiB) were refused", *bytes as f64 / (1u64 << 30) as f64)]
    OutOfMemory { what: &'static str, bytes: usize },

    /// A NaN or an infinity appeared in the forward pass: corrupt weights or scales. Checked
    /// at every matrix product's input, since the integer kernels round a NaN activation to 0
    /// and would otherwise hide it, each instruction set differently.
    #[error("{what} holds NaN or infinite values (layer {layer}): the model's weights or scales are corrupt")]
    NonFinite { what: &'static str, layer: usize },
}

impl Error {
    pub(crate) fn model_file(path: &std::path::Path, message: impl Into<String>) -> Self {
        Error::ModelFile { path: path.to_path_buf(), message: message.into() }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
