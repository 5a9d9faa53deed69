//! llama2rs's own model file: a safetensors container holding the config, the tokenizer and
//! the tensors, read in place from the memory map (zero-copy).
//!
//! `__metadata__` (all values are strings, as safetensors requires):
//! - `format` = `"llama2rs"`, `format_version` = `"3"` (a newer version is refused; files of
//!   versions 1 and 2 read as before). Writers state the lowest version whose features they use:
//!   2 added F16 affine scales; 3 added `rope_freqs`, `stop_ids` and byte-level BPE tokenizers;
//! - `config` = JSON: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len,
//!   norm_eps, rope_theta, rope_layout (`"interleaved"`: llama2.c's pairs; HF checkpoints are
//!   permuted to it on export), bos_id, eos_id;
//! - `affine_group_size` = columns per group of the affine-quantized matrices (`-1`: one group
//!   per row), when there are any;
//! - `stop_ids` (version 3) = JSON list of token ids that end generation besides `eos_id`
//!   (Llama 3's `<|eot_id|>`, ...), read by the Python API;
//! - `tokenizer_spec` (version 3) = JSON describing a byte-level BPE tokenizer (`type`
//!   `"byte_level_bpe"`, `pattern`, `special_tokens`, `cuts`, `bos_id`, `eos_id`, `stop_ids`);
//!   without it the `tokenizer` tensor is llama2.c's tokenizer.bin;
//! - anything else (`source`, `quantization`, `chat_template`, ...) is informational.
//!
//! Tensors (row-major; matrices are `[out_features, in_features]`):
//! - `tokenizer` U8: the tokenizer in llama2.c's tokenizer.bin encoding, or with a
//!   `tokenizer_spec` the ranks of a byte-level BPE as tiktoken text (`base64-token rank` lines);
//! - `rope_freqs` F32 `[head_size / 2]` (version 3, optional): the divisor of each RoPE
//!   frequency (Llama 3.1's scaling), as GGUF's `rope_freqs.weight`;
//! - `rms_final` F32 `[dim]`, `layers.{i}.rms_att` / `layers.{i}.rms_ffn` F32 `[dim]`;
//! - every matrix `M` in `token_embedding`, `classifier` (absent when tied to the embedding),
//!   `layers.{i}.{wq,wk,wv,wo,w1,w2,w3}`, in exactly one encoding:
//!   - fp32: `M.weight` F32 `[rows, cols]`;
//!   - Q8_0: `M.q8_0` I8 `[rows, cols]` + `M.q8_0_scales` F32 `[rows, cols / group]`;
//!   - affine 4/8-bit: `M.q4` (or `M.q8`) U8 `[rows, ceil(cols * bits / 8)]` (4-bit: two per
//!     byte, even stored column in the low nibble) + `M.scales` F32 or F16 (version 2) `[rows, n_groups]` +
//!     `M.zeros` U8 `[rows, n_groups]` + optional `M.perm` I32 `[cols]` (act-order: stored
//!     column j holds input feature perm[j]).

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::{f32_cow, i8_view, Contents, FileFormat};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::weights::{bad_rope_divisor, AffineData, LayerWeights, Matrix, MatrixData, Q8Data, Scales, Weights};

pub const FORMAT_NAME: &str = "llama2rs";
pub const FORMAT_VERSION: u64 = 3;

/// The largest fp32 tensor copied when it is not 4-byte aligned in the file (see `Reader::f32s`).
const MAX_UNALIGNED_F32_COPY: usize = 16 << 20;

/// True when `bytes` look like a safetensors file (u64 header length, then a JSON object).
pub fn is_safetensors(bytes: &[u8]) -> bool {
    if bytes.len() < 10 {
        return false;
    }
    // The header may claim more bytes than a truncated file has: that is still a safetensors
    // file (and an error that says so), not a llama2.c file with a strange config.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    (2..=MAX_HEADER_BYTES).contains(&n) && bytes[8] == b'{'
}

/// The safetensors crate's own bound on a header (100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// A safetensors file's size against what its header says: the 8-byte length, the header, and
/// the tensor data up to the largest `data_offsets` end. Names both sizes where they differ
/// (the crate's own message has neither). Called only once the crate has refused the file, so
/// a good file's header is parsed once.
fn check_size(bytes: &[u8]) -> std::result::Result<(), String> {
    let Some(length) = bytes.first_chunk::<8>() else {
        return Err(format!("truncated: {} bytes, shorter than a safetensors header's 8-byte length", bytes.len()));
    };
    let n = u64::from_le_bytes(*length);
    // In u128: a header's length and data offsets are any u64 (the file's figures are not
    // trusted yet), and their sum must not wrap.
    let found = bytes.len() as u128;
    if 8 + n as u128 > found {
        return Err(format!("truncated: its header is {n} bytes, but only {} follow its 8-byte length", found - 8));
    }
    // An unreadable header is left to the crate's parser, which says why.
    let Ok(serde_json::Value::Object(header)) = serde_json::from_slice(&bytes[8..8 + n as usize]) else {
        return Ok(());
    };
    let data_end = header
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .filter_map(|(_, info)| info.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let expected = 8 + n as u128 + data_end as u128;
    match expected.cmp(&found) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(format!(
            "truncated: expected {expected} bytes (8 + a {n}-byte header + {data_end} of tensor data), found {found}"
        )),
        std::cmp::Ordering::Less => Err(format!(
            "{} trailing bytes: expected {expected} bytes (8 + a {n}-byte header + {data_end} of tensor data), found {found}",
            found - expected
        )),
    }
}

struct Reader<'a, 'p> {
    path: &'p Path,
    bytes: &'a [u8], // the whole file, for offsets in messages
    tensors: SafeTensors<'a>,
    used: HashSet<String>,
}

impl<'a> Reader<'a, '_> {
    fn fail(&self, message: impl Into<String>) -> Error {
        Error::model_file(self.path, message)
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.tensor(name).is_ok()
    }

    /// The bytes of tensor `name`, checking its dtype and shape.
    fn raw(&mut self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&'a [u8]> {
        let view = self.tensors.tensor(name).map_err(|_| self.fail(format!("missing tensor '{name}'")))?;
        if view.dtype() != dtype {
            return Err(self.fail(format!("tensor '{name}' has dtype {:?}, expected {dtype:?}", view.dtype())));
        }
        if view.shape() != shape {
            return Err(self.fail(format!("tensor '{name}' has shape {:?}, expected {shape:?}", view.shape())));
        }
        self.used.insert(name.to_string());
        Ok(view.data())
    }

    /// An fp32 tensor, in place. One at an offset that is not a multiple of 4 (a hand-made
    /// file: our writer aligns them) must be copied; that is done for small ones (norms,
    /// scales) and refused above `MAX_UNALIGNED_F32_COPY`, where the copy would cost what the
    /// map saves (issue 13's probe: a 70B-shape file with unaligned embeddings took +4.2 GB).
    fn f32s(&mut self, name: &str, shape: &[usize]) -> Result<Cow<'a, [f32]>> {
        let raw = self.raw(name, Dtype::F32, shape)?;
        // Decided before `f32_cow`, which would make the copy this refuses.
        let unaligned = !(raw.as_ptr() as usize).is_multiple_of(std::mem::align_of::<f32>());
        if unaligned && raw.len() > MAX_UNALIGNED_F32_COPY {
            let offset = raw.as_ptr() as usize - self.bytes.as_ptr() as usize;
            return Err(self.fail(format!(
                "fp32 tensor '{name}' ({} MiB) starts at byte {offset}, not a multiple of 4, so it cannot be used \
                 in place; rewrite the file with `llama2rs export --input FILE -o OUT`, which aligns every tensor",
                raw.len() >> 20
            )));
        }
        Ok(f32_cow(raw))
    }

    fn matrix(&mut self, name: &str, rows: usize, cols: usize, affine_group: Option<i64>) -> Result<Matrix<'a>> {
        let shape2 = |c: usize| [rows, c];
        let data = if self.has(&format!("{name}.weight")) {
            MatrixData::F32(self.f32s(&format!("{name}.weight"), &[rows, cols])?)
        } else if self.has(&format!("{name}.q8_0")) {
            let scales_name = format!("{name}.q8_0_scales");
            let groups = self
                .tensors
                .tensor(&scales_name)
                .map(|v| v.shape().get(1).copied().unwrap_or(0))
                .map_err(|_| self.fail(format!("missing tensor '{scales_name}'")))?;
            if groups == 0 || !cols.is_multiple_of(groups) {
                return Err(self.fail(format!(
                    "tensor '{scales_name}' has {groups} groups per row, which do not divide {cols} columns"
                )));
            }
            let values = self.raw(&format!("{name}.q8_0"), Dtype::I8, &[rows, cols])?;
            let values = i8_view(values);
            let scales = self.f32s(&scales_name, &shape2(groups))?;
            MatrixData::Q8(Q8Data { values, scales, group_size: cols / groups })
        } else if let Some(bits) = [4u32, 8].into_iter().find(|b| self.has(&format!("{name}.q{b}"))) {
            let group_size = match affine_group {
                Some(g) if g > 0 => (g as usize).min(cols),
                Some(-1) => cols,
                Some(g) => return Err(self.fail(format!("affine_group_size must be positive or -1, got {g}"))),
                None => return Err(self.fail("quantized tensors need 'affine_group_size' in the metadata")),
            };
            let groups = cols.div_ceil(group_size);
            let values = self.raw(&format!("{name}.q{bits}"), Dtype::U8, &shape2(AffineData::row_bytes(bits, cols)))?;
            let scales_name = format!("{name}.scales");
            let scales = match self.tensors.tensor(&scales_name).map(|v| v.dtype()) {
                Ok(Dtype::F16) => Scales::F16(self.raw(&scales_name, Dtype::F16, &shape2(groups))?),
                _ => Scales::F32(self.f32s(&scales_name, &shape2(groups))?),
            };
            // Zero points are not range-checked: that would read every one of them at open
            // (50 MB at 7B), and any byte value is memory-safe in the kernels.
            let zeros = self.raw(&format!("{name}.zeros"), Dtype::U8, &shape2(groups))?;
            let perm_name = format!("{name}.perm");
            let perm = if self.has(&perm_name) {
                let raw = self.raw(&perm_name, Dtype::I32, &[cols])?;
                let perm: Vec<u32> =
                    raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32).collect();
                let mut seen = vec![false; cols];
                for &p in &perm {
                    if p as usize >= cols || std::mem::replace(&mut seen[p as usize], true) {
                        return Err(self.fail(format!("tensor '{perm_name}' is not a permutation of 0..{cols}")));
                    }
                }
                Some(Cow::Owned(perm))
            } else {
                None
            };
            MatrixData::Affine(AffineData { bits, values, scales, zeros, group_size, perm })
        } else {
            return Err(self.fail(format!("missing tensor '{name}.weight' (or a quantized form of it)")));
        };
        Ok(Matrix { rows, cols, data })
    }
}

fn config_from_json(text: &str) -> std::result::Result<Config, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("config is not valid JSON: {e}"))?;
    let int = |key: &str| -> std::result::Result<i64, String> {
        v.get(key).and_then(Value::as_i64).ok_or_else(|| format!("config.{key} is missing or not an integer"))
    };
    let float = |key: &str| -> std::result::Result<f32, String> {
        v.get(key)
            .and_then(Value::as_f64)
            .map(|f| f as f32)
            .ok_or_else(|| format!("config.{key} is missing or not a number"))
    };
    match v.get("rope_layout").and_then(Value::as_str) {
        Some("interleaved") => {}
        other => return Err(format!("config.rope_layout must be \"interleaved\", got {other:?}")),
    }
    let mut config = Config::from_header(
        int("dim")?,
        int("hidden_dim")?,
        int("n_layers")?,
        int("n_heads")?,
        int("n_kv_heads")?,
        int("vocab_size")?,
        int("seq_len")?,
    )
    .map_err(|e| e.to_string())?;
    config.norm_eps = float("norm_eps")?;
    config.rope_theta = float("rope_theta")?;
    let id = |key: &str| -> std::result::Result<u32, String> {
        u32::try_from(int(key)?).map_err(|_| format!("config.{key} must be a non-negative token id"))
    };
    config.bos_id = id("bos_id")?;
    config.eos_id = id("eos_id")?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Parse and validate a llama2rs safetensors file.
pub fn read_model<'a>(path: &Path, bytes: &'a [u8]) -> Result<Contents<'a>> {
    let fail = |m: String| Error::model_file(path, m);
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|e| fail(check_size(bytes).err().unwrap_or_else(|| format!("not a valid safetensors file: {e}"))))?;
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| fail(format!("not a valid safetensors file: {e}")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    match metadata.get("format").map(String::as_str) {
        Some(FORMAT_NAME) => {}
        other => {
            return Err(fail(format!(
                "not a llama2rs model: __metadata__.format is {other:?}, expected \"{FORMAT_NAME}\" (convert it with export.py)"
            )))
        }
    }
    let version: u64 = metadata
        .get("format_version")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| fail("__metadata__.format_version is missing or not an integer".into()))?;
    if version == 0 {
        return Err(fail(format!("__metadata__.format_version must be 1 to {FORMAT_VERSION}, got 0")));
    }
    if version > FORMAT_VERSION {
        return Err(fail(format!(
            "file format version {version} is newer than this llama2rs reads (up to {FORMAT_VERSION}): upgrade llama2rs"
        )));
    }
    let config = config_from_json(metadata.get("config").map(String::as_str).unwrap_or("null"))
        .map_err(|e| fail(format!("bad config in __metadata__: {e}")))?;
    let affine_group = match metadata.get("affine_group_size") {
        None => None,
        Some(text) => {
            Some(text.parse::<i64>().map_err(|_| fail(format!("affine_group_size is not an integer: {text:?}")))?)
        }
    };

    let mut r = Reader { path, bytes, tensors, used: HashSet::new() };
    let c = config;
    let (dim, hidden, q_dim, kv_dim) = (c.dim, c.hidden_dim, c.n_heads * c.head_size(), c.kv_dim());
    let tokenizer_len = r.tensors.tensor("tokenizer").map(|v| v.shape().first().copied().unwrap_or(0)).unwrap_or(0);
    let tokenizer = r.raw("tokenizer", Dtype::U8, &[tokenizer_len])?;
    if tokenizer.is_empty() {
        // Every writer stores one: an empty one is damage, not "no tokenizer".
        return Err(fail("tensor 'tokenizer' is empty".into()));
    }
    let token_embedding = r.matrix("token_embedding", c.vocab_size, dim, affine_group)?;
    let rms_final = r.f32s("rms_final", &[dim])?;
    let classifier =
        if r.has("classifier.weight") || r.has("classifier.q8_0") || r.has("classifier.q4") || r.has("classifier.q8") {
            Some(r.matrix("classifier", c.vocab_size, dim, affine_group)?)
        } else {
            None
        };
    let mut layers = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let p = format!("layers.{l}");
        layers.push(LayerWeights {
            rms_att: r.f32s(&format!("{p}.rms_att"), &[dim])?,
            wq: r.matrix(&format!("{p}.wq"), q_dim, dim, affine_group)?,
            wk: r.matrix(&format!("{p}.wk"), kv_dim, dim, affine_group)?,
            wv: r.matrix(&format!("{p}.wv"), kv_dim, dim, affine_group)?,
            wo: r.matrix(&format!("{p}.wo"), dim, q_dim, affine_group)?,
            rms_ffn: r.f32s(&format!("{p}.rms_ffn"), &[dim])?,
            w1: r.matrix(&format!("{p}.w1"), hidden, dim, affine_group)?,
            w2: r.matrix(&format!("{p}.w2"), dim, hidden, affine_group)?,
            w3: r.matrix(&format!("{p}.w3"), hidden, dim, affine_group)?,
        });
    }
    // Format 3: Llama 3.1's RoPE scaling, as the divisor of each frequency (GGUF's rope_freqs).
    let rope_freq_factors = if r.has("rope_freqs") { Some(r.f32s("rope_freqs", &[c.head_size() / 2])?) } else { None };
    if let Some(bad) = rope_freq_factors.as_deref().and_then(bad_rope_divisor) {
        return Err(fail(format!("tensor 'rope_freqs' holds {bad}: a RoPE divisor must be positive")));
    }
    let mut unknown: Vec<String> =
        r.tensors.names().into_iter().filter(|n| !r.used.contains(*n)).map(String::from).collect();
    if !unknown.is_empty() {
        unknown.sort();
        return Err(fail(format!("unexpected tensors for this config: {}", unknown.join(", "))));
    }
    let weights = Weights { token_embedding, layers, rms_final, classifier, rope_freq_factors };
    let format = FileFormat::Llama2rs { version };
    Ok(Contents { config, format, weights, tokenizer: Some(tokenizer), vocabulary: None, metadata })
}
