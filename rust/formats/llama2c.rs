//! llama2.c's three model file formats, read in place from a memory map.
//!
//! - legacy: 7 int32 header (`dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len`;
//!   a negative vocab_size means the classifier is stored separately at the end), then fp32
//!   tensors in run.c's order, including two unused RoPE tables.
//! - version 1: magic "ak42", version 1, the same 7 ints, a shared-classifier byte, padded to
//!   256 bytes; fp32 tensors in export.py's `version1_export` order.
//! - version 2 (Q8_0): as version 1 plus an int32 group size after the shared byte; fp32 norms,
//!   then every matrix as int8 values followed by fp32 group scales (runq.c).
//!
//! The byte layout of each format is described once, by `read_tensors`; the same walk runs
//! first without data to learn the exact file length the header implies.

use std::borrow::Cow;
use std::path::Path;

use super::{f32_cow, i8_view};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::weights::{LayerWeights, Matrix, MatrixData, Q8Data, Weights};

pub const MAGIC: u32 = 0x616b_3432; // "ak42" read as a little-endian uint32
pub const LEGACY_HEADER_BYTES: usize = 7 * 4;
pub const VERSIONED_HEADER_BYTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Legacy,
    V1,
    /// Q8_0 with this many weights per scale.
    V2Q8 {
        group_size: usize,
    },
}

impl Format {
    pub fn name(&self) -> &'static str {
        match self {
            Format::Legacy => "llama2c-legacy",
            Format::V1 => "llama2c-v1",
            Format::V2Q8 { .. } => "llama2c-v2-q8_0",
        }
    }
}

/// Header facts: the shape, the format and whether the classifier is the embedding table.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub config: Config,
    pub format: Format,
    pub shared_classifier: bool,
    /// Byte offset of the first tensor.
    pub data_offset: usize,
}

fn read_i32(bytes: &[u8], offset: usize) -> i64 {
    i32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as i64
}

/// Parse and validate the header of a llama2.c file.
pub fn read_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    let too_short = |need: usize, what: &str| {
        Error::model_file(path, format!("file is {} bytes, shorter than the {need}-byte {what} header", bytes.len()))
    };
    if bytes.len() < LEGACY_HEADER_BYTES {
        return Err(too_short(LEGACY_HEADER_BYTES, "llama2.c"));
    }
    let config_at = |offset: usize| -> Result<(Config, i64)> {
        let f: Vec<i64> = (0..7).map(|i| read_i32(bytes, offset + 4 * i)).collect();
        let vocab = f[5];
        Config::from_header(f[0], f[1], f[2], f[3], f[4], vocab.abs(), f[6])
            .map(|c| (c, vocab))
            .map_err(|e| Error::model_file(path, format!("corrupt header: {e}")))
    };
    let magic = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    if magic != MAGIC {
        let (config, raw_vocab) = config_at(0)?;
        return Ok(Header {
            config,
            format: Format::Legacy,
            shared_classifier: raw_vocab > 0,
            data_offset: LEGACY_HEADER_BYTES,
        });
    }
    if bytes.len() < VERSIONED_HEADER_BYTES {
        return Err(too_short(VERSIONED_HEADER_BYTES, "llama2.c version 1/2"));
    }
    let version = read_i32(bytes, 4);
    let (config, raw_vocab) = config_at(8)?;
    if raw_vocab < 0 {
        return Err(Error::model_file(path, "corrupt header: negative vocab_size in a versioned file"));
    }
    let shared_classifier = match bytes[36] {
        0 => false,
        1 => true,
        other => {
            return Err(Error::model_file(
                path,
                format!("corrupt header: shared_classifier flag must be 0 or 1, got {other}"),
            ))
        }
    };
    let format = match version {
        1 => Format::V1,
        2 => {
            let group_size = read_i32(bytes, 37);
            if group_size < 1 {
                return Err(Error::model_file(
                    path,
                    format!("corrupt header: Q8_0 group size must be positive, got {group_size}"),
                ));
            }
            let gs = group_size as usize;
            for (name, width) in [("dim", config.dim), ("hidden_dim", config.hidden_dim)] {
                if width % gs != 0 {
                    return Err(Error::model_file(
                        path,
                        format!("corrupt header: {name} ({width}) is not a multiple of the Q8_0 group size ({gs})"),
                    ));
                }
            }
            Format::V2Q8 { group_size: gs }
        }
        v => {
            return Err(Error::model_file(
                path,
                format!(
                    "unsupported llama2.c format version {v} (this build reads the legacy format and versions 1 and 2)"
                ),
            ))
        }
    };
    Ok(Header { config, format, shared_classifier, data_offset: VERSIONED_HEADER_BYTES })
}

/// Walks the tensor region. With `bytes = None` it only counts, to learn the expected size.
struct Cursor<'a> {
    bytes: Option<&'a [u8]>,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n_bytes: usize) -> &'a [u8] {
        let start = self.pos;
        self.pos += n_bytes;
        match self.bytes {
            // The caller checked the total length first, so this range is in bounds.
            Some(b) => &b[start..self.pos],
            None => &[],
        }
    }

    fn f32s(&mut self, n: usize) -> Cow<'a, [f32]> {
        let raw = self.take(4 * n);
        if self.bytes.is_none() {
            return Cow::Borrowed(&[]);
        }
        f32_cow(raw)
    }

    fn i8s(&mut self, n: usize) -> &'a [i8] {
        i8_view(self.take(n))
    }

    fn skip(&mut self, n_bytes: usize) {
        self.take(n_bytes);
    }

    fn matrix_f32(&mut self, rows: usize, cols: usize) -> Matrix<'a> {
        Matrix { rows, cols, data: MatrixData::F32(self.f32s(rows * cols)) }
    }

    fn matrix_q8(&mut self, rows: usize, cols: usize, group_size: usize) -> Matrix<'a> {
        let values = self.i8s(rows * cols);
        let scales = self.f32s(rows * cols / group_size);
        Matrix { rows, cols, data: MatrixData::Q8(Q8Data { values, scales, group_size }) }
    }

    fn matrix(&mut self, rows: usize, cols: usize, format: Format) -> Matrix<'a> {
        match format {
            Format::V2Q8 { group_size } => self.matrix_q8(rows, cols, group_size),
            _ => self.matrix_f32(rows, cols),
        }
    }

    fn per_layer<T>(&mut self, n_layers: usize, mut read: impl FnMut(&mut Self) -> T) -> Vec<T> {
        (0..n_layers).map(|_| read(self)).collect()
    }
}

/// The tensor region's layout, per format. Returns the weights and the bytes consumed.
fn read_tensors<'a>(header: &Header, bytes: Option<&'a [u8]>) -> (Weights<'a>, usize) {
    let c = header.config;
    let (dim, hidden, layers, hs) = (c.dim, c.hidden_dim, c.n_layers, c.head_size());
    let (q_dim, kv_dim) = (c.n_heads * hs, c.kv_dim());
    let mut cur = Cursor { bytes, pos: 0 };
    let cur = &mut cur;
    let fmt = header.format;

    let weights = match fmt {
        Format::Legacy => {
            let token_embedding = cur.matrix_f32(c.vocab_size, dim);
            let rms_att = cur.per_layer(layers, |r| r.f32s(dim));
            let wq = cur.per_layer(layers, |r| r.matrix_f32(q_dim, dim));
            let wk = cur.per_layer(layers, |r| r.matrix_f32(kv_dim, dim));
            let wv = cur.per_layer(layers, |r| r.matrix_f32(kv_dim, dim));
            let wo = cur.per_layer(layers, |r| r.matrix_f32(dim, q_dim));
            let rms_ffn = cur.per_layer(layers, |r| r.f32s(dim));
            let w1 = cur.per_layer(layers, |r| r.matrix_f32(hidden, dim));
            let w2 = cur.per_layer(layers, |r| r.matrix_f32(dim, hidden));
            let w3 = cur.per_layer(layers, |r| r.matrix_f32(hidden, dim));
            let rms_final = cur.f32s(dim);
            cur.skip(2 * 4 * c.seq_len * hs / 2); // freq_cis_real and freq_cis_imag, unused
            let classifier = (!header.shared_classifier).then(|| cur.matrix_f32(c.vocab_size, dim));
            assemble(token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, classifier)
        }
        Format::V1 | Format::V2Q8 { .. } => {
            let rms_att = cur.per_layer(layers, |r| r.f32s(dim));
            let rms_ffn = cur.per_layer(layers, |r| r.f32s(dim));
            let rms_final = cur.f32s(dim);
            let token_embedding = cur.matrix(c.vocab_size, dim, fmt);
            let wq = cur.per_layer(layers, |r| r.matrix(q_dim, dim, fmt));
            let wk = cur.per_layer(layers, |r| r.matrix(kv_dim, dim, fmt));
            let wv = cur.per_layer(layers, |r| r.matrix(kv_dim, dim, fmt));
            let wo = cur.per_layer(layers, |r| r.matrix(dim, q_dim, fmt));
            let w1 = cur.per_layer(layers, |r| r.matrix(hidden, dim, fmt));
            let w2 = cur.per_layer(layers, |r| r.matrix(dim, hidden, fmt));
            let w3 = cur.per_layer(layers, |r| r.matrix(hidden, dim, fmt));
            let classifier = (!header.shared_classifier).then(|| cur.matrix(c.vocab_size, dim, fmt));
            assemble(token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, classifier)
        }
    };
    (weights, cur.pos)
}

#[allow(clippy::too_many_arguments)]
fn assemble<'a>(
    token_embedding: Matrix<'a>,
    rms_att: Vec<Cow<'a, [f32]>>,
    wq: Vec<Matrix<'a>>,
    wk: Vec<Matrix<'a>>,
    wv: Vec<Matrix<'a>>,
    wo: Vec<Matrix<'a>>,
    rms_ffn: Vec<Cow<'a, [f32]>>,
    w1: Vec<Matrix<'a>>,
    w2: Vec<Matrix<'a>>,
    w3: Vec<Matrix<'a>>,
    rms_final: Cow<'a, [f32]>,
    classifier: Option<Matrix<'a>>,
) -> Weights<'a> {
    let mut layers = Vec::with_capacity(wq.len());
    let mut parts = rms_att.into_iter().zip(wq).zip(wk).zip(wv).zip(wo).zip(rms_ffn).zip(w1).zip(w2).zip(w3);
    for ((((((((rms_att, wq), wk), wv), wo), rms_ffn), w1), w2), w3) in parts.by_ref() {
        layers.push(LayerWeights { rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3 });
    }
    Weights { token_embedding, layers, rms_final, classifier, rope_freq_factors: None }
}

/// Number of bytes a file with this header must have, exactly.
pub fn expected_file_size(header: &Header) -> usize {
    header.data_offset + read_tensors(header, None).1
}

/// Parse a whole llama2.c file, validating its header and exact length.
pub fn read_model<'a>(path: &Path, bytes: &'a [u8]) -> Result<(Header, Weights<'a>)> {
    let header = read_header(path, bytes)?;
    let expected = expected_file_size(&header);
    if bytes.len() != expected {
        let what = if bytes.len() < expected { "truncated" } else { "has trailing bytes" };
        return Err(Error::model_file(
            path,
            format!(
                "file is {what}: expected {expected} bytes for a {} file of this config ({:?}), found {}",
                header.format.name(),
                header.config,
                bytes.len()
            ),
        ));
    }
    let (weights, _) = read_tensors(&header, Some(&bytes[header.data_offset..]));
    Ok((header, weights))
}
