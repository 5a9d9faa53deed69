//! GGUF, llama.cpp's model file (version 3, little endian), read in place from the map.
//!
//! Layout: magic `GGUF`, u32 version, u64 tensor count, u64 metadata count; the metadata
//! key/value pairs (a key is a u64-length string; a value a u32 type and its bytes, arrays as
//! an item type, a u64 count and the items); the tensor infos (name, u32 n_dims, u64 ne per
//! dim, innermost first, u32 ggml type, u64 offset); then the tensor data, from the first
//! multiple of `general.alignment` (default 32) after the infos, each tensor at its offset.
//!
//! Every count and length is checked against the bytes left before anything is read or kept,
//! so a small file that claims 2^60 tensors or a 2^40-byte string is an error, not an
//! allocation. Architecture `llama` (Llama 1/2, TinyLlama, CodeLlama, Mistral): config from
//! the `llama.*` keys, Meta's q/k layout (RoPE on adjacent pairs, as ours), llama.cpp's tensor
//! names. The tokenizer's arrays are handed on as they are (`Vocabulary`).

use std::collections::HashMap;
use std::fmt::Display;
use std::path::Path;

use super::{f32_cow, Contents, FileFormat};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::weights::{bad_rope_divisor, BlockData, BlockType, LayerWeights, Matrix, MatrixData, Weights};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const VERSION: u32 = 3;
const DEFAULT_ALIGNMENT: u64 = 32;
/// Arrays nest at most this deep (GGUF writers never nest; a deep file is corrupt).
const MAX_ARRAY_DEPTH: usize = 3;
/// At most this many dims per tensor (ggml's GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;

/// True when `bytes` start like a GGUF file.
pub fn is_gguf(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && &bytes[..4] == MAGIC
}

/// A GGUF file's tokenizer arrays (`tokenizer.ggml.*`), as stored.
#[derive(Debug, Clone)]
pub struct Vocabulary<'a> {
    /// `tokenizer.ggml.model`: `llama` (sentencepiece), `gpt2` (byte-level BPE), ...
    pub model: String,
    /// `tokenizer.ggml.pre`: a byte-level BPE's pre-tokenizer (`llama-bpe` for Llama 3).
    pub pre: Option<String>,
    pub tokens: Vec<&'a [u8]>,
    pub scores: Option<Vec<f32>>,
    pub token_type: Option<Vec<i32>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
}

/// A metadata value. Arrays stay in the map: their items are read when used.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Int(i128),
    Float(f64),
    Bool,
    Str(&'a [u8]),
    Array { item: u32, count: usize, bytes: &'a [u8] },
}

/// ggml's type ids, with the name of each (ours or not), so an unsupported one is named.
fn ggml_type(id: u32) -> (Option<BlockType>, &'static str) {
    match id {
        0 => (None, "F32"),
        1 => (Some(BlockType::F16), "F16"),
        2 => (Some(BlockType::Q4_0), "Q4_0"),
        3 => (Some(BlockType::Q4_1), "Q4_1"),
        6 => (None, "Q5_0"),
        7 => (None, "Q5_1"),
        8 => (Some(BlockType::Q8_0), "Q8_0"),
        9 => (None, "Q8_1"),
        10 => (None, "Q2_K"),
        11 => (None, "Q3_K"),
        12 => (Some(BlockType::Q4K), "Q4_K"),
        13 => (Some(BlockType::Q5K), "Q5_K"),
        14 => (Some(BlockType::Q6K), "Q6_K"),
        15 => (None, "Q8_K"),
        16..=23 => (None, "an IQ type"),
        24 => (None, "I8"),
        25 => (None, "I16"),
        26 => (None, "I32"),
        27 => (None, "I64"),
        28 => (None, "F64"),
        29 => (None, "IQ1_M"),
        30 => (Some(BlockType::Bf16), "BF16"),
        34 => (None, "TQ1_0"),
        35 => (None, "TQ2_0"),
        _ => (None, "unknown"),
    }
}

/// "the value of 'key'", formatted only when an error message needs it.
#[derive(Clone, Copy)]
struct ValueOf<'k>(&'k str);

impl Display for ValueOf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the value of '{}'", self.0)
    }
}

/// Reads the header from the front of the file, checking every length against what is left.
struct Cursor<'a, 'p> {
    bytes: &'a [u8],
    pos: usize,
    path: &'p Path,
}

impl<'a> Cursor<'a, '_> {
    fn fail(&self, message: impl Into<String>) -> Error {
        Error::model_file(self.path, message)
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: impl Display + Copy) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(self.fail(format!(
                "truncated GGUF header: {what} needs {n} bytes at offset {}, the file has {} left",
                self.pos,
                self.left()
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u32(&mut self, what: impl Display + Copy) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    fn u64(&mut self, what: impl Display + Copy) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    /// A count of items of at least `min_item` bytes each, which must fit in what is left.
    fn count(&mut self, min_item: usize, what: impl Display + Copy) -> Result<usize> {
        let n = self.u64(what)?;
        if n > (self.left() / min_item.max(1)) as u64 {
            return Err(self.fail(format!(
                "corrupt GGUF header: {what} is {n}, more than the {} bytes left could hold",
                self.left()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: impl Display + Copy) -> Result<&'a [u8]> {
        let n = self.count(1, what)?;
        self.take(n, what)
    }

    /// Bytes per item of a fixed-size type, or None for strings and arrays.
    fn fixed_size(kind: u32) -> Option<usize> {
        match kind {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        }
    }

    fn value(&mut self, kind: u32, depth: usize, key: &str) -> Result<Value<'a>> {
        // Described only if it is wrong: a tokenizer's array holds 10^5 values.
        let what = ValueOf(key);
        let raw = |bytes: &[u8]| -> u64 {
            let mut padded = [0u8; 8];
            padded[..bytes.len()].copy_from_slice(bytes);
            u64::from_le_bytes(padded)
        };
        Ok(match kind {
            0 => Value::Int(self.take(1, what)?[0] as i128),
            1 => Value::Int(self.take(1, what)?[0] as i8 as i128),
            2 => Value::Int(raw(self.take(2, what)?) as u16 as i128),
            3 => Value::Int(raw(self.take(2, what)?) as u16 as i16 as i128),
            4 => Value::Int(raw(self.take(4, what)?) as u32 as i128),
            5 => Value::Int(raw(self.take(4, what)?) as u32 as i32 as i128),
            6 => Value::Float(f32::from_bits(raw(self.take(4, what)?) as u32) as f64),
            7 => {
                self.take(1, what)?;
                Value::Bool
            }
            8 => Value::Str(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.fail(format!("corrupt GGUF header: '{key}' nests arrays too deep")));
                }
                let item = self.u32(what)?;
                let min_item = Self::fixed_size(item).unwrap_or(8);
                let count = self.count(min_item, &format!("the length of '{key}'"))?;
                let start = self.pos;
                match Self::fixed_size(item) {
                    Some(size) => {
                        self.take(count * size, what)?;
                    }
                    None => {
                        for _ in 0..count {
                            self.value(item, depth + 1, key)?;
                        }
                    }
                }
                Value::Array { item, count, bytes: &self.bytes[start..self.pos] }
            }
            10 => Value::Int(raw(self.take(8, what)?) as i128),
            11 => Value::Int(raw(self.take(8, what)?) as i64 as i128),
            12 => Value::Float(f64::from_bits(raw(self.take(8, what)?))),
            other => return Err(self.fail(format!("corrupt GGUF header: '{key}' has unknown value type {other}"))),
        })
    }
}

/// One tensor's info, with its bytes located in the file.
struct TensorInfo<'a> {
    ne: Vec<usize>,
    kind: Option<BlockType>, // None: F32
    data: &'a [u8],
}

/// What the metadata says, typed.
struct Metadata<'a, 'p> {
    values: HashMap<String, Value<'a>>,
    path: &'p Path,
}

impl<'a> Metadata<'a, '_> {
    fn fail(&self, message: impl Into<String>) -> Error {
        Error::model_file(self.path, message)
    }

    fn int(&self, key: &str) -> Result<Option<i64>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::Int(v)) => {
                i64::try_from(*v).map(Some).map_err(|_| self.fail(format!("GGUF key '{key}' is out of range: {v}")))
            }
            Some(other) => Err(self.fail(format!("GGUF key '{key}' must be an integer, found {}", kind_name(other)))),
        }
    }

    fn required_int(&self, key: &str) -> Result<i64> {
        self.int(key)?.ok_or_else(|| self.fail(format!("GGUF file lacks the key '{key}'")))
    }

    fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::Float(v)) => Ok(Some(*v)),
            Some(Value::Int(v)) => Ok(Some(*v as f64)),
            Some(other) => Err(self.fail(format!("GGUF key '{key}' must be a number, found {}", kind_name(other)))),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => std::str::from_utf8(s)
                .map(|s| Some(s.to_string()))
                .map_err(|_| self.fail(format!("GGUF key '{key}' is not valid UTF-8"))),
            Some(other) => Err(self.fail(format!("GGUF key '{key}' must be a string, found {}", kind_name(other)))),
        }
    }

    /// The items of the array at `key`, which must hold items of type `item`.
    fn array(&self, key: &str, item: u32) -> Result<Option<(usize, &'a [u8])>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::Array { item: found, count, bytes }) if *found == item => Ok(Some((*count, bytes))),
            Some(Value::Array { item: found, .. }) => {
                Err(self.fail(format!("GGUF key '{key}' must be an array of type {item}, found type {found}")))
            }
            Some(other) => Err(self.fail(format!("GGUF key '{key}' must be an array, found {}", kind_name(other)))),
        }
    }

    fn vocabulary(&self) -> Result<Option<Vocabulary<'a>>> {
        let Some((count, mut bytes)) = self.array("tokenizer.ggml.tokens", 8)? else { return Ok(None) };
        let mut tokens = Vec::with_capacity(count);
        for _ in 0..count {
            // Walked once already when the header was read: each is a u64 length and its bytes.
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            tokens.push(&bytes[8..8 + n]);
            bytes = &bytes[8 + n..];
        }
        let numbers = |key: &str, item: u32| -> Result<Option<Vec<[u8; 4]>>> {
            let Some((n, raw)) = self.array(key, item)? else { return Ok(None) };
            if n != count {
                return Err(self.fail(format!("GGUF key '{key}' has {n} entries for {count} tokens")));
            }
            Ok(Some(raw.chunks_exact(4).map(|c| c.try_into().unwrap()).collect()))
        };
        let scores = numbers("tokenizer.ggml.scores", 6)?.map(|v| v.into_iter().map(f32::from_le_bytes).collect());
        let token_type =
            numbers("tokenizer.ggml.token_type", 5)?.map(|v| v.into_iter().map(i32::from_le_bytes).collect());
        let id = |key: &str| -> Result<Option<u32>> {
            self.int(key)?
                .map(|v| u32::try_from(v).map_err(|_| self.fail(format!("GGUF key '{key}' is not a token id: {v}"))))
                .transpose()
        };
        Ok(Some(Vocabulary {
            model: self.string("tokenizer.ggml.model")?.unwrap_or_default(),
            pre: self.string("tokenizer.ggml.pre")?,
            tokens,
            scores,
            token_type,
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
        }))
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Int(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Bool => "a bool",
        Value::Str(_) => "a string",
        Value::Array { .. } => "an array",
    }
}

/// Parse and validate a GGUF file.
pub fn read_model<'a>(path: &Path, bytes: &'a [u8]) -> Result<Contents<'a>> {
    let mut cur = Cursor { bytes, pos: 0, path };
    if !is_gguf(bytes) {
        return Err(cur.fail("not a GGUF file (no GGUF magic)"));
    }
    cur.take(4, "the magic")?;
    let version = cur.u32("the version")?;
    if version != VERSION {
        return Err(cur.fail(format!("unsupported GGUF version {version} (this build reads version {VERSION})")));
    }
    // A tensor info is at least 8 + 4 + 8 + 4 + 8 bytes; a key/value at least 8 + 4 + 1.
    let n_tensors = cur.count(32, "the tensor count")?;
    let n_values = cur.count(13, "the metadata count")?;
    let mut values = HashMap::new();
    for i in 0..n_values {
        let key = cur.string(&format!("metadata key {i}"))?;
        let key = std::str::from_utf8(key).map_err(|_| cur.fail(format!("GGUF metadata key {i} is not UTF-8")))?;
        let kind = cur.u32(&format!("the type of '{key}'"))?;
        let value = cur.value(kind, 0, key)?;
        values.insert(key.to_string(), value);
    }
    let meta = Metadata { values, path };
    let alignment = match meta.int("general.alignment")? {
        None => DEFAULT_ALIGNMENT,
        Some(a) if a > 0 && (a as u64).is_power_of_two() => a as u64,
        Some(a) => return Err(meta.fail(format!("general.alignment must be a power of two, got {a}"))),
    };
    let mut infos = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = cur.string(&format!("the name of tensor {i}"))?;
        let name = std::str::from_utf8(name).map_err(|_| cur.fail(format!("GGUF tensor name {i} is not UTF-8")))?;
        let n_dims = cur.u32(&format!("the dims of '{name}'"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(cur.fail(format!("tensor '{name}' has {n_dims} dims (1 to {MAX_DIMS} allowed)")));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(cur.u64(&format!("the shape of '{name}'"))?);
        }
        let type_id = cur.u32(&format!("the type of '{name}'"))?;
        let offset = cur.u64(&format!("the offset of '{name}'"))?;
        infos.push((name.to_string(), ne, type_id, offset));
    }
    let data_start = (cur.pos as u64).div_ceil(alignment) * alignment;
    let mut tensors: HashMap<String, TensorInfo<'a>> = HashMap::with_capacity(n_tensors);
    for (name, ne, type_id, offset) in infos {
        let (kind, type_name) = ggml_type(type_id);
        if kind.is_none() && type_id != 0 {
            return Err(meta.fail(format!(
                "tensor '{name}' has type {type_name} (ggml type {type_id}), which llama2rs does not run \
                 (it runs F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)"
            )));
        }
        let elements = ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).filter(|&n| n > 0 && n < 1 << 48);
        let Some(elements) = elements else {
            return Err(meta.fail(format!("tensor '{name}' has an impossible shape {ne:?}")));
        };
        let n_bytes = match kind {
            None => Some(elements * 4),
            Some(k) => BlockType::row_bytes(k, ne[0] as usize).map(|row| row as u64 * (elements / ne[0])),
        };
        let Some(n_bytes) = n_bytes else {
            return Err(meta.fail(format!(
                "tensor '{name}' of type {type_name} has rows of {} values, not a multiple of its {}-value blocks",
                ne[0],
                kind.map_or(1, BlockType::elements)
            )));
        };
        if !offset.is_multiple_of(alignment) {
            return Err(meta.fail(format!("tensor '{name}' starts at offset {offset}, not a multiple of {alignment}")));
        }
        let start = data_start.checked_add(offset);
        let end = start.and_then(|s| s.checked_add(n_bytes));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(meta.fail(format!("tensor '{name}' lies past the end of the file")));
        };
        if end > bytes.len() as u64 {
            return Err(meta.fail(format!(
                "tensor '{name}' needs bytes {start}..{end}, past the end of the {}-byte file",
                bytes.len()
            )));
        }
        let info = TensorInfo {
            ne: ne.iter().map(|&d| d as usize).collect(),
            kind,
            data: &bytes[start as usize..end as usize],
        };
        if tensors.insert(name.clone(), info).is_some() {
            return Err(meta.fail(format!("tensor '{name}' appears twice")));
        }
    }
    let (config, vocabulary) = config_of(&meta, &tensors)?;
    let weights = weights_of(&meta, &config, &mut tensors)?;
    // The strings a front end shows or uses: the model's name and its chat template.
    let mut metadata = HashMap::new();
    for (key, ours) in [("general.name", "name"), ("tokenizer.chat_template", "chat_template")] {
        if let Some(value) = meta.string(key)? {
            metadata.insert(ours.to_string(), value.to_string());
        }
    }
    Ok(Contents { config, format: FileFormat::Gguf { version }, weights, tokenizer: None, vocabulary, metadata })
}

fn config_of<'a>(
    meta: &Metadata<'a, '_>,
    tensors: &HashMap<String, TensorInfo>,
) -> Result<(Config, Option<Vocabulary<'a>>)> {
    let arch = meta.string("general.architecture")?.unwrap_or_default();
    if arch != "llama" {
        return Err(meta.fail(format!(
            "GGUF architecture '{arch}' is not one llama2rs runs (it runs 'llama': Llama 1/2, TinyLlama, CodeLlama, Mistral)"
        )));
    }
    // Mixtral-style files are architecture 'llama' with experts: say so, rather than report
    // the dense feed-forward tensors they lack.
    if let Some(experts) = meta.int("llama.expert_count")?.filter(|&n| n > 0) {
        return Err(meta.fail(format!(
            "GGUF file is a mixture-of-experts model (llama.expert_count = {experts}), which llama2rs does not run"
        )));
    }
    if let Some(kind) = meta.string("llama.rope.scaling.type")? {
        if kind != "none" {
            return Err(meta.fail(format!("RoPE scaling '{kind}' is not supported")));
        }
    }
    let vocabulary = meta.vocabulary()?;
    let dim = meta.required_int("llama.embedding_length")?;
    let n_heads = meta.required_int("llama.attention.head_count")?;
    let n_kv_heads = meta.int("llama.attention.head_count_kv")?.unwrap_or(n_heads);
    let vocab_size = match (&vocabulary, meta.int("llama.vocab_size")?) {
        (Some(v), _) => v.tokens.len() as i64,
        (None, Some(n)) => n,
        (None, None) => tensors.get("token_embd.weight").and_then(|t| t.ne.get(1)).map_or(0, |&n| n as i64),
    };
    let mut config = Config::from_header(
        dim,
        meta.required_int("llama.feed_forward_length")?,
        meta.required_int("llama.block_count")?,
        n_heads,
        n_kv_heads,
        vocab_size,
        meta.required_int("llama.context_length")?,
    )
    .map_err(|e| meta.fail(format!("corrupt GGUF config: {e}")))?;
    if let Some(rot) = meta.int("llama.rope.dimension_count")? {
        if rot != config.head_size() as i64 {
            return Err(meta.fail(format!(
                "llama.rope.dimension_count is {rot}, but heads are {} wide: partial RoPE is not supported",
                config.head_size()
            )));
        }
    }
    // Required, as llama.cpp requires it: models differ (1e-5, 1e-6), and a guess would give
    // quietly different logits.
    let Some(eps) = meta.float("llama.attention.layer_norm_rms_epsilon")? else {
        return Err(meta.fail("GGUF file lacks 'llama.attention.layer_norm_rms_epsilon' (the RMSNorm epsilon)"));
    };
    config.norm_eps = eps as f32;
    if let Some(theta) = meta.float("llama.rope.freq_base")? {
        config.rope_theta = theta as f32;
    }
    if let Some(v) = &vocabulary {
        config.bos_id = v.bos_id.unwrap_or(config.bos_id);
        config.eos_id = v.eos_id.unwrap_or(config.eos_id);
    }
    config.validate().map_err(|e| meta.fail(format!("corrupt GGUF config: {e}")))?;
    Ok((config, vocabulary))
}

fn weights_of<'a>(meta: &Metadata, c: &Config, tensors: &mut HashMap<String, TensorInfo<'a>>) -> Result<Weights<'a>> {
    let mut take =
        |name: &str| tensors.remove(name).ok_or_else(|| meta.fail(format!("GGUF file lacks the tensor '{name}'")));
    let (dim, hidden, kv_dim) = (c.dim, c.hidden_dim, c.kv_dim());
    let q_dim = c.n_heads * c.head_size();
    let matrix = |name: &str, t: TensorInfo<'a>, rows: usize, cols: usize| -> Result<Matrix<'a>> {
        if t.ne != [cols, rows] {
            return Err(meta.fail(format!("tensor '{name}' has ne {:?}, expected [{cols}, {rows}]", t.ne)));
        }
        let data = match t.kind {
            None => MatrixData::F32(f32_cow(t.data)),
            Some(kind) => MatrixData::Blocks(BlockData { kind, values: t.data }),
        };
        Ok(Matrix { rows, cols, data })
    };
    // An F32 vector of `len` values: the norms, and Llama 3.1's RoPE divisors.
    let vector = |name: &str, t: TensorInfo<'a>, len: usize| -> Result<std::borrow::Cow<'a, [f32]>> {
        if t.ne != [len] || t.kind.is_some() {
            let found = t.kind.map_or("F32", |k| k.name());
            return Err(meta.fail(format!("tensor '{name}' must be F32 of ne [{len}], found {found} of ne {:?}", t.ne)));
        }
        Ok(f32_cow(t.data))
    };
    let norm = |name: &str, t: TensorInfo<'a>| vector(name, t, dim);
    let token_embedding = matrix("token_embd.weight", take("token_embd.weight")?, c.vocab_size, dim)?;
    let rms_final = norm("output_norm.weight", take("output_norm.weight")?)?;
    let classifier = match take("output.weight") {
        Ok(t) => Some(matrix("output.weight", t, c.vocab_size, dim)?),
        Err(_) => None,
    };
    // Llama 3.1+: the per-frequency divisors of its RoPE scaling, one per pair of a head.
    let rope_freq_factors = match take("rope_freqs.weight") {
        Ok(t) => Some(vector("rope_freqs.weight", t, c.head_size() / 2)?),
        Err(_) => None,
    };
    if let Some(bad) = rope_freq_factors.as_deref().and_then(bad_rope_divisor) {
        return Err(meta.fail(format!("tensor 'rope_freqs.weight' holds {bad}: a RoPE divisor must be positive")));
    }
    let mut layers = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let mut m = |suffix: &str, rows: usize, cols: usize| {
            let name = format!("blk.{l}.{suffix}.weight");
            matrix(&name, take(&name)?, rows, cols)
        };
        let (wq, wk, wv, wo) = (
            m("attn_q", q_dim, dim)?,
            m("attn_k", kv_dim, dim)?,
            m("attn_v", kv_dim, dim)?,
            m("attn_output", dim, q_dim)?,
        );
        let (w1, w2, w3) = (m("ffn_gate", hidden, dim)?, m("ffn_down", dim, hidden)?, m("ffn_up", hidden, dim)?);
        let rms_att = norm(&format!("blk.{l}.attn_norm.weight"), take(&format!("blk.{l}.attn_norm.weight"))?)?;
        let rms_ffn = norm(&format!("blk.{l}.ffn_norm.weight"), take(&format!("blk.{l}.ffn_norm.weight"))?)?;
        layers.push(LayerWeights { rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3 });
    }
    if !tensors.is_empty() {
        let mut unknown: Vec<&String> = tensors.keys().collect();
        unknown.sort();
        let list: Vec<&str> = unknown.iter().map(|s| s.as_str()).collect();
        return Err(meta.fail(format!("GGUF file has tensors llama2rs does not run: {}", list.join(", "))));
    }
    Ok(Weights { token_embedding, layers, rms_final, classifier, rope_freq_factors })
}
