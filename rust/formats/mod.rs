//! Model file formats. Each reader validates its whole header against the file's bytes (names,
//! types, shapes, byte ranges) and returns typed views into them (`Weights`), never reading a
//! weight. A file's format is recognised by its content, never by its name.
//!
//! - `llama2c.rs`: llama2.c's legacy, version 1 (fp32) and version 2 (Q8_0) files;
//! - `l2rs.rs`: llama2rs's own safetensors file (config, tokenizer, any of our encodings);
//! - `gguf.rs`: llama.cpp's GGUF (version 3), with llama.cpp's block types.

pub mod gguf;
pub mod l2rs;
pub mod llama2c;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use crate::config::Config;
use crate::error::Result;
use crate::weights::Weights;

/// Which kind of file a model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Llama2c(llama2c::Format),
    /// Our safetensors file, of this format version.
    Llama2rs {
        version: u64,
    },
    /// llama.cpp's GGUF, of this version.
    Gguf {
        version: u32,
    },
}

impl FileFormat {
    pub fn name(&self) -> String {
        match self {
            FileFormat::Llama2c(f) => f.name().to_string(),
            FileFormat::Llama2rs { version } => format!("llama2rs-v{version}"),
            FileFormat::Gguf { version } => format!("gguf-v{version}"),
        }
    }
}

/// What a reader found in a file.
pub struct Contents<'a> {
    pub config: Config,
    pub format: FileFormat,
    pub weights: Weights<'a>,
    /// The tokenizer the file carries (llama2.c's tokenizer.bin encoding), if any.
    pub tokenizer: Option<&'a [u8]>,
    /// A GGUF file's tokenizer arrays, if any.
    pub vocabulary: Option<gguf::Vocabulary<'a>>,
    /// Free-form metadata (our format's `__metadata__`; empty for llama2.c files).
    pub metadata: HashMap<String, String>,
}

/// Read a model file of any format we know, recognised by its first bytes. `path` is only for
/// error messages.
pub fn read<'a>(path: &Path, bytes: &'a [u8]) -> Result<Contents<'a>> {
    if gguf::is_gguf(bytes) {
        gguf::read_model(path, bytes)
    } else if l2rs::is_safetensors(bytes) {
        l2rs::read_model(path, bytes)
    } else {
        let (header, weights) = llama2c::read_model(path, bytes)?;
        Ok(Contents {
            config: header.config,
            format: FileFormat::Llama2c(header.format),
            weights,
            tokenizer: None,
            vocabulary: None,
            metadata: HashMap::new(),
        })
    }
}

/// Bytes as the int8 values they hold.
pub(crate) fn i8_view(bytes: &[u8]) -> &[i8] {
    // SAFETY: i8 and u8 have the same size, alignment and validity (any bits); the view
    // covers exactly the borrowed bytes.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const i8, bytes.len()) }
}

/// View any 4-byte-aligned run of little-endian f32 in place; copy the rare unaligned one.
pub(crate) fn f32_cow(raw: &[u8]) -> Cow<'_, [f32]> {
    // SAFETY: any 4 bytes are a valid f32, and align_to splits off what is not aligned.
    let (head, body, tail) = unsafe { raw.align_to::<f32>() };
    if head.is_empty() && tail.is_empty() {
        Cow::Borrowed(body)
    } else {
        Cow::Owned(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
    }
}

#[cfg(test)]
mod tests;
