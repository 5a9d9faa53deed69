"""Import HuggingFace Llama checkpoints (safetensors; float or GPTQ), numpy only.

Reading
    :func:`read_safetensors` parses the safetensors format itself (8-byte little-endian header
    length, a JSON header ``{name: {dtype, shape, data_offsets}, "__metadata__": {...}}``,
    then the raw little-endian data) and returns memory-mapped numpy views.
    :func:`load_hf` reads a checkpoint directory (``config.json`` plus ``model.safetensors``,
    or shards listed in ``model.safetensors.index.json``, or any ``*.safetensors`` there) into
    an :class:`ImportedModel` in this project's canonical layout.

Canonical layout (what :class:`ImportedModel` holds)
    llama2.c's names and ``[out_features, in_features]`` matrices, one dict per layer::

        rms_att [dim]  rms_ffn [dim]  (float32)
        wq [n_heads*hd, dim]  wk [n_kv*hd, dim]  wv [n_kv*hd, dim]  wo [dim, n_heads*hd]
        w1 (gate_proj) [hidden, dim]  w2 (down_proj) [dim, hidden]  w3 (up_proj) [hidden, dim]

    each matrix a float32 array or an :class:`~llama2rs.quant.AffineQuantized`.
    HF stores the q/k projections for the *rotate-half* RoPE (pairs ``(i, i + hd/2)`` of a
    head); llama2.c rotates *interleaved* pairs ``(2i, 2i+1)``. The importer reorders the
    rows of wq/wk per head like llama2.c's ``export.py`` ``permute_reverse`` (the inverse of
    transformers' ``convert_llama_weights_to_hf.permute``): canonical row ``h*hd + 2i + j``
    is HF row ``h*hd + j*hd/2 + i``. Attention scores are unchanged because q and k get the
    same row order; for quantized matrices the rows of q/scales/zeros move together.

GPTQ (``quant_method: gptq``; ``quantize_config.json`` or ``quantization_config`` in
``config.json``)
    Per linear layer ``qweight`` (int32 ``[in/pf, out]``, ``pf = 32/bits`` values per word,
    packed along the input dim, lowest bits first), ``qzeros`` (int32 ``[groups, out/pf]``,
    packed along the output dim), ``scales`` (fp16 ``[groups, out]``) and ``g_idx`` (int32
    ``[in]``, the group of every input feature; absent means ``arange(in) // group_size``).
    Weight ``W[o, i] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o])``.

    * ``checkpoint_format`` ``"gptq"`` (v1, AutoGPTQ and GPTQModel's default save format):
      the stored zero points are ``zero - 1``. They are restored like GPTQModel's
      ``convert_gptq_v1_to_v2_format_module`` does, by adding ``0x11111111`` (4-bit) /
      ``0x01010101`` (8-bit) to every *whole* int32 word, wrapping mod 2**32. That is
      "+1 per value" whenever no stored value is ``2**bits - 1``, and it exactly undoes
      GPTQModel's v2->v1 save (a word-wide subtraction whose borrow crosses values when a
      zero point is 0). AutoGPTQ's own kernels instead add 1 per value (so a stored 15 reads
      as 16, out of range); AutoGPTQ's packer cannot represent a zero point of 0 at all (it
      ORs ``uint32(-1)`` into the word).
    * ``"gptq_v2"`` (GPTQModel): zero points stored as is.
    * Padding: only the first ``in`` unpacked rows of ``qweight``, the first ``out`` columns
      and values of ``qweight``/``qzeros``/``scales``, the first ``ceil(in/group)`` groups and
      the first ``in`` entries of ``g_idx`` are used (sizes from ``config.json``); what lies
      beyond (padding up to whole words or kernel-friendly sizes) is ignored.
    * Act-order (``desc_act``): stored column ``j`` of the :class:`AffineQuantized` is input
      ``perm[j]`` with ``perm = argsort(g_idx, stable)``; this needs ``sorted(g_idx) ==
      arange(in) // group_size`` (every group exactly ``group_size`` inputs, the last one
      shorter), which GPTQ's act-order always produces; any other layout raises
      :class:`ModelFileError`. A trivial ``g_idx`` gives ``perm=None``.

Fixture writers (no torch)
    :func:`write_safetensors`, :func:`write_hf_checkpoint` and :func:`write_gptq_checkpoint`
    produce small checkpoints in HF's layout for the tests.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from .config import Config
from .errors import ArgumentError, ConfigError, ModelFileError
from .fileio import atomic_write
from .quant import AffineQuantized

__all__ = [
    "ImportedModel",
    "read_safetensors",
    "write_safetensors",
    "load_hf",
    "hf_config_to_config",
    "config_to_hf_config",
    "interleave_rows",
    "rotate_half_rows",
    "hf_tensors_from_llama2c",
    "write_hf_checkpoint",
    "write_gptq_checkpoint",
    "unpack_gptq",
    "float_to_bf16_bits",
    "bf16_bits_to_float",
]

PathLike = Union[str, "os.PathLike[str]"]

# safetensors dtype -> numpy dtype of the stored bytes (BF16 is read as raw uint16).
_ST_DTYPES: Dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NP_TO_ST: Dict[str, str] = {
    "float64": "F64", "float32": "F32", "float16": "F16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit

# HF parameter names (relative to "model.layers.{i}.") of the canonical matrices.
HF_LINEAR_NAMES: Dict[str, str] = {
    "wq": "self_attn.q_proj",
    "wk": "self_attn.k_proj",
    "wv": "self_attn.v_proj",
    "wo": "self_attn.o_proj",
    "w1": "mlp.gate_proj",
    "w2": "mlp.down_proj",
    "w3": "mlp.up_proj",
}
HF_NORM_NAMES: Dict[str, str] = {
    "rms_att": "input_layernorm",
    "rms_ffn": "post_attention_layernorm",
}
MATRIX_KEYS = tuple(HF_LINEAR_NAMES)
GPTQ_FORMATS = ("gptq", "gptq_v2")


# ---------------------------------------------------------------------------------------
# the imported model


@dataclass(frozen=True, eq=False)
class ImportedModel:
    """A checkpoint in canonical (llama2.c, interleaved-RoPE) layout; see the module doc."""

    config: Config
    layers: List[Dict[str, Any]]
    token_embedding: np.ndarray  # float32 [vocab, dim]
    rms_final: np.ndarray  # float32 [dim]
    wcls: Optional[Union[np.ndarray, AffineQuantized]]  # None: tied to token_embedding
    tokenizer_path: Optional[Path] = None
    source: str = ""
    quantization: Optional[Dict[str, Any]] = None

    @property
    def tied(self) -> bool:
        return self.wcls is None

    @property
    def quantized(self) -> bool:
        return self.quantization is not None

    def to_llama2c_weights(self) -> Dict[str, np.ndarray]:
        """float32 weights stacked per layer with llama2.c's names (see ``llama2rs.llama2c``);
        quantized matrices are dequantized. ``wcls`` is the embedding itself when tied."""

        def dense(m: Any) -> np.ndarray:
            return m.dequantize() if isinstance(m, AffineQuantized) else np.asarray(m, np.float32)

        weights: Dict[str, np.ndarray] = {
            "token_embedding": np.asarray(self.token_embedding, np.float32),
            "rms_final": np.asarray(self.rms_final, np.float32),
        }
        for name in ("rms_att", "rms_ffn"):
            weights[name] = np.stack([np.asarray(l[name], np.float32) for l in self.layers])
        for name in MATRIX_KEYS:
            weights[name] = np.stack([dense(l[name]) for l in self.layers])
        weights["wcls"] = weights["token_embedding"] if self.wcls is None else dense(self.wcls)
        return weights


# ---------------------------------------------------------------------------------------
# safetensors


def bf16_bits_to_float(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (bf16 is the upper half of a float32)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def float_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float -> uint16 bfloat16 bit patterns, rounding to nearest even (like torch); NaN stays NaN."""
    f = np.ascontiguousarray(x, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    rounded = (u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    out = rounded.astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        out[nan] = ((u[nan] >> np.uint64(16)) | np.uint64(0x0040)).astype(np.uint16)
    return out


def read_safetensors(path: PathLike, bf16_to_float32: bool = True) -> Dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file, in header order.

    Memory-mapped, read-only views for every dtype except BF16, which numpy lacks: it is
    converted to float32 (or returned as raw uint16 bits with ``bf16_to_float32=False``).
    F16 stays float16. Raises :class:`ModelFileError` for a missing, truncated or corrupt file.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ModelFileError(f"{path}: {size} bytes is too short for a safetensors file")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
                raise ModelFileError(
                    f"{path}: header length {header_len} does not fit the file ({size} bytes): "
                    "truncated or not a safetensors file"
                )
            header_bytes = handle.read(header_len)
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc}") from exc
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(f"{path}: corrupt safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: safetensors header is not a JSON object")

    data_start = 8 + header_len
    data_size = size - data_start
    entries: List[Tuple[str, np.dtype, str, Tuple[int, ...], int, int]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and not isinstance(info, dict):
                raise ModelFileError(f"{path}: __metadata__ must be an object")
            continue
        try:
            dtype_name = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(v) for v in info["data_offsets"])
            if any(isinstance(d, bool) for d in info["shape"]):
                raise TypeError("bool in shape")
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: bad header entry for tensor {name!r}: {exc!r}") from exc
        if dtype_name not in _ST_DTYPES:
            raise ModelFileError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name!r}")
        dtype = _ST_DTYPES[dtype_name]
        if any(d < 0 for d in shape):
            raise ModelFileError(f"{path}: tensor {name!r} has a negative dimension {shape}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if shape else dtype.itemsize
        if not 0 <= begin <= end or end - begin != nbytes:
            raise ModelFileError(
                f"{path}: tensor {name!r} {dtype_name}{list(shape)} needs {nbytes} bytes, "
                f"its data_offsets are [{begin}, {end}]"
            )
        if end > data_size:
            raise ModelFileError(
                f"{path}: tensor {name!r} ends at byte {end} of a {data_size}-byte data section "
                "(truncated file)"
            )
        entries.append((name, dtype, dtype_name, shape, begin, end))

    spans = sorted((begin, end, name) for name, _, _, _, begin, end in entries if end > begin)
    for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ModelFileError(f"{path}: tensors {n0!r} and {n1!r} overlap")

    raw: Optional[np.ndarray] = None
    if any(end > begin for _, _, _, _, begin, end in entries):
        try:
            raw = np.memmap(path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"cannot map {path}: {exc}") from exc
    tensors: Dict[str, np.ndarray] = {}
    for name, dtype, dtype_name, shape, begin, end in entries:
        count = (end - begin) // dtype.itemsize
        if count == 0:
            array = np.zeros(shape, dtype=dtype)
        else:
            assert raw is not None
            array = np.frombuffer(raw, dtype=dtype, count=count, offset=data_start + begin)
            array = array.reshape(shape)
        if dtype_name == "BF16" and bf16_to_float32:
            array = bf16_bits_to_float(array)
        tensors[name] = array
    return tensors


def write_safetensors(
    path: PathLike,
    tensors: Mapping[str, np.ndarray],
    metadata: Optional[Mapping[str, str]] = None,
    dtypes: Optional[Mapping[str, str]] = None,
) -> None:
    """Write ``tensors`` (in the given order) as a safetensors file.

    The stored dtype is the array's (float64/32/16, int*, uint*, bool) unless ``dtypes[name]``
    says otherwise: ``"BF16"`` rounds a float array to bfloat16 (nearest even), ``"F16"`` /
    ``"F32"`` cast. The header is space-padded to a multiple of 8 bytes, like the library.
    """
    dtypes = dict(dtypes or {})
    blobs: List[bytes] = []
    header: Dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, value in tensors.items():
        array = np.asarray(value)
        st = dtypes.get(name)
        if st is None:
            st = _NP_TO_ST.get(array.dtype.name)
            if st is None:
                raise ArgumentError(f"cannot store dtype {array.dtype} of tensor {name!r}")
        if st == "BF16":
            data = float_to_bf16_bits(array).astype("<u2").tobytes()
        elif st in _ST_DTYPES:
            data = np.ascontiguousarray(array, dtype=_ST_DTYPES[st]).tobytes()
        else:
            raise ArgumentError(f"unknown safetensors dtype {st!r}")
        header[name] = {"dtype": st, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    # Write a temporary file and rename it over ``path``: arrays still memory-mapped from an
    # older file at ``path`` keep their (unlinked) inode instead of faulting on a truncated one.
    path = os.fspath(path)
    def body(handle: BinaryIO) -> None:
        handle.write(struct.pack("<Q", len(header_bytes)))
        handle.write(header_bytes)
        for data in blobs:
            handle.write(data)

    atomic_write(path, body)


# ---------------------------------------------------------------------------------------
# config


def _read_json(path: Path) -> Any:
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc}") from exc
    except ValueError as exc:
        raise ModelFileError(f"{path}: invalid JSON: {exc}") from exc


def _int_field(cfg: Mapping[str, Any], key: str, default: Any = None) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise ConfigError(f"config.json lacks {key!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"config.json {key!r} must be an integer, got {value!r}")
    return value


def _token_id(cfg: Mapping[str, Any], key: str, default: int) -> int:
    value = cfg.get(key)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"config.json {key!r} must be a token id, got {value!r}")
    return value


def hf_config_to_config(cfg: Mapping[str, Any]) -> Config:
    """A :class:`Config` from a transformers ``LlamaConfig`` dict (``config.json``).

    Refuses (:class:`ConfigError`) what the Rust core does not implement: RoPE scaling, a
    ``head_dim`` other than ``hidden_size / heads``, biases, activations other than SiLU.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError("config.json must hold a JSON object")
    archs = cfg.get("architectures") or []
    model_type = cfg.get("model_type")
    if model_type != "llama" and "LlamaForCausalLM" not in archs:
        raise ConfigError(
            f"not a Llama checkpoint (model_type={model_type!r}, architectures={archs!r})"
        )
    if archs and "LlamaForCausalLM" not in archs:
        raise ConfigError(f"unsupported architecture {archs!r} (need LlamaForCausalLM)")
    dim = _int_field(cfg, "hidden_size")
    n_heads = _int_field(cfg, "num_attention_heads")
    n_kv = cfg.get("num_key_value_heads")
    n_kv_heads = n_heads if n_kv is None else _int_field(cfg, "num_key_value_heads")

    rope_theta = cfg.get("rope_theta", 10000.0)
    rope_parameters = cfg.get("rope_parameters")  # transformers >= 5 moves RoPE here
    if rope_parameters is not None:
        if not isinstance(rope_parameters, Mapping):
            raise ConfigError(f"rope_parameters must be an object, got {rope_parameters!r}")
        rope_type = rope_parameters.get("rope_type", rope_parameters.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(f"RoPE scaling is not supported (rope_parameters={dict(rope_parameters)})")
        rope_theta = rope_parameters.get("rope_theta", rope_theta)
    if cfg.get("rope_scaling") is not None:
        raise ConfigError(f"RoPE scaling is not supported (rope_scaling={cfg['rope_scaling']!r})")
    head_dim = cfg.get("head_dim")
    if head_dim is not None and (n_heads <= 0 or head_dim * n_heads != dim):
        raise ConfigError(
            f"head_dim {head_dim} != hidden_size / num_attention_heads ({dim} / {n_heads}) "
            "is not supported"
        )
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise ConfigError(f"{key}=true is not supported")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"hidden_act {act!r} is not supported (need silu)")
    if isinstance(rope_theta, bool) or not isinstance(rope_theta, (int, float)):
        raise ConfigError(f"rope_theta must be a number, got {rope_theta!r}")
    eps = cfg.get("rms_norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise ConfigError(f"rms_norm_eps must be a number, got {eps!r}")
    return Config(
        dim=dim,
        hidden_dim=_int_field(cfg, "intermediate_size"),
        n_layers=_int_field(cfg, "num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=_int_field(cfg, "vocab_size"),
        seq_len=_int_field(cfg, "max_position_embeddings", 2048),
        norm_eps=float(eps),
        rope_theta=float(rope_theta),
        bos_id=_token_id(cfg, "bos_token_id", 1),
        eos_id=_token_id(cfg, "eos_token_id", 2),
    )


def config_to_hf_config(config: Config, tied: bool = True, torch_dtype: str = "float32") -> Dict[str, Any]:
    """The ``config.json`` dict transformers would write for this shape."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_size,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "tie_word_embeddings": bool(tied),
        "bos_token_id": config.bos_id,
        "eos_token_id": config.eos_id,
        "torch_dtype": torch_dtype,
        "use_cache": True,
    }


# ---------------------------------------------------------------------------------------
# RoPE row order


def interleave_rows(n_heads: int, head_size: int) -> np.ndarray:
    """Row indices ``idx`` with ``canonical = hf[idx]`` (llama2.c's ``permute_reverse``).

    Canonical (interleaved) row ``h*hd + 2i + j`` is HF (rotate-half) row ``h*hd + j*hd/2 + i``.
    """
    half = head_size // 2
    h = np.arange(n_heads)[:, None, None]
    i = np.arange(half)[None, :, None]
    j = np.arange(2)[None, None, :]
    return (h * head_size + j * half + i).reshape(-1)  # [h, i, j] order = canonical order


def rotate_half_rows(n_heads: int, head_size: int) -> np.ndarray:
    """Row indices with ``hf = canonical[idx]`` (transformers' ``permute``): the inverse of
    :func:`interleave_rows`."""
    forward = interleave_rows(n_heads, head_size)
    inverse = np.empty_like(forward)
    inverse[forward] = np.arange(forward.size)
    return inverse


def _permute_rows(matrix: Union[np.ndarray, AffineQuantized], rows: np.ndarray):
    if isinstance(matrix, AffineQuantized):
        return AffineQuantized(
            q=np.ascontiguousarray(matrix.q[rows]),
            scales=np.ascontiguousarray(matrix.scales[rows]),
            zeros=np.ascontiguousarray(matrix.zeros[rows]),
            group_size=matrix.group_size,
            bits=matrix.bits,
            perm=matrix.perm,
        )
    return np.ascontiguousarray(np.asarray(matrix)[rows])


# ---------------------------------------------------------------------------------------
# GPTQ


def _quant_settings(directory: Path, cfg: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The GPTQ settings of a checkpoint, or None for a float one."""
    found: Dict[str, Any] = {}
    in_config = cfg.get("quantization_config")
    if in_config is not None:
        if not isinstance(in_config, Mapping):
            raise ConfigError("config.json quantization_config must be an object")
        found.update(in_config)
    qfile = directory / "quantize_config.json"
    if qfile.is_file():
        from_file = _read_json(qfile)
        if not isinstance(from_file, Mapping):
            raise ConfigError(f"{qfile} must hold a JSON object")
        found.update(from_file)
        found.setdefault("quant_method", "gptq")  # AutoGPTQ's file has no quant_method
    if not found:
        return None
    method = str(found.get("quant_method", "gptq")).lower()
    if method != "gptq":
        raise ConfigError(f"quantization method {method!r} is not supported (only GPTQ)")
    bits = found.get("bits")
    if bits not in (4, 8) or isinstance(bits, bool):
        raise ConfigError(f"GPTQ bits must be 4 or 8, got {bits!r}")
    group_size = found.get("group_size", -1)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or not (group_size == -1 or group_size > 0):
        raise ConfigError(f"GPTQ group_size must be -1 or positive, got {group_size!r}")
    fmt = found.get("checkpoint_format") or found.get("format") or "gptq"
    fmt = str(fmt).lower()
    if fmt not in GPTQ_FORMATS:
        raise ConfigError(f"GPTQ checkpoint_format {fmt!r} is not supported (need gptq or gptq_v2)")
    pack_dtype = str(found.get("pack_dtype", "int32")).replace("torch.", "")
    if pack_dtype != "int32":
        raise ConfigError(f"GPTQ pack_dtype {pack_dtype!r} is not supported (need int32)")
    dynamic = found.get("dynamic")
    if dynamic:
        positive = [k for k in dynamic if not str(k).startswith("-:")]
        if positive:
            raise ConfigError(f"GPTQ per-module overrides (dynamic {positive}) are not supported")
    meta = found.get("meta") if isinstance(found.get("meta"), Mapping) else {}
    return {
        "method": "gptq",
        "bits": int(bits),
        "group_size": int(group_size),
        "desc_act": bool(found.get("desc_act", False)),
        "sym": bool(found.get("sym", True)),
        "checkpoint_format": fmt,
        "quantizer": meta.get("quantizer") if meta else None,
    }


def _v1_offset(bits: int, word_bits: int = 32) -> int:
    """The word-wide constant v1 subtracted: 1 in every ``bits``-wide field."""
    return sum(1 << (bits * k) for k in range(word_bits // bits))


def _unsigned_words(packed: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(packed)
    if array.dtype.kind not in "iu" or array.dtype.itemsize != 4 or array.ndim != 2:
        raise ModelFileError(f"{what} must be a 2-D int32 tensor, got {array.dtype} {array.shape}")
    return array.view(np.uint32) if array.dtype.kind == "i" else array


def _unpack_words(words: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """uint8 values of 32-bit words, lowest bits first, expanded along ``axis`` (0 or 1)."""
    pf = 32 // bits
    shifts = (np.arange(pf, dtype=np.uint32) * np.uint32(bits))
    mask = np.uint32((1 << bits) - 1)
    if axis == 0:
        values = (words[:, None, :] >> shifts[None, :, None]) & mask  # [R, pf, C]
        return values.reshape(words.shape[0] * pf, words.shape[1]).astype(np.uint8)
    values = (words[:, :, None] >> shifts[None, None, :]) & mask  # [G, Z, pf]
    return values.reshape(words.shape[0], words.shape[1] * pf).astype(np.uint8)


def unpack_gptq(
    qweight: np.ndarray,
    qzeros: np.ndarray,
    scales: np.ndarray,
    g_idx: Optional[np.ndarray],
    in_features: int,
    out_features: int,
    bits: int,
    group_size: int,
    checkpoint_format: str = "gptq",
    name: str = "GPTQ layer",
) -> AffineQuantized:
    """One GPTQ linear layer (HF row order) as an :class:`AffineQuantized` ``[out, in]``.

    See the module doc for the conventions (v1 zero restore, padding, act-order).
    """
    if bits not in (4, 8):
        raise ConfigError(f"{name}: GPTQ bits must be 4 or 8, got {bits}")
    if checkpoint_format not in GPTQ_FORMATS:
        raise ConfigError(f"{name}: unsupported checkpoint_format {checkpoint_format!r}")
    pf = 32 // bits
    gs = in_features if group_size == -1 else int(group_size)
    groups = -(-in_features // gs)
    qw = _unsigned_words(qweight, f"{name}.qweight")
    qz = _unsigned_words(qzeros, f"{name}.qzeros")
    sc = np.asarray(scales)
    if qw.shape[0] * pf < in_features or qw.shape[1] < out_features:
        raise ModelFileError(
            f"{name}.qweight {list(qw.shape)} is too small for {in_features} inputs x "
            f"{out_features} outputs at {bits} bits"
        )
    if qz.shape[0] < groups or qz.shape[1] * pf < out_features:
        raise ModelFileError(
            f"{name}.qzeros {list(qz.shape)} is too small for {groups} groups x {out_features} outputs"
        )
    if sc.ndim != 2 or sc.shape[0] < groups or sc.shape[1] < out_features:
        raise ModelFileError(f"{name}.scales {list(sc.shape)} is too small for {groups} groups x {out_features} outputs")
    if sc.dtype.kind != "f":
        raise ModelFileError(f"{name}.scales must be floating point, got {sc.dtype}")

    q = _unpack_words(qw, bits, axis=0)[:in_features, :out_features]  # [in, out]
    if checkpoint_format == "gptq":
        # v1 -> v2 exactly like GPTQModel: add 1 to every field of the whole word, wrapping.
        qz = qz + np.uint32(_v1_offset(bits))
    zeros = _unpack_words(qz, bits, axis=1)[:groups, :out_features]  # [groups, out]
    scales32 = np.asarray(sc[:groups, :out_features], dtype=np.float32)  # [groups, out]

    trivial = np.arange(in_features, dtype=np.int64) // gs
    perm: Optional[np.ndarray] = None
    if g_idx is not None:
        gi = np.asarray(g_idx)
        if gi.ndim != 1 or gi.shape[0] < in_features or gi.dtype.kind not in "iu":
            raise ModelFileError(f"{name}.g_idx must be an integer vector of >= {in_features} entries")
        gi = gi[:in_features].astype(np.int64)
        if not np.array_equal(gi, trivial):
            order = np.argsort(gi, kind="stable")
            if not np.array_equal(gi[order], trivial):
                raise ModelFileError(
                    f"{name}: unsupported g_idx layout (groups must hold exactly group_size="
                    f"{gs} inputs each)"
                )
            perm = order.astype(np.int32)
    q_out_in = q.T  # [out, in], input features in original order
    if perm is not None:
        q_out_in = q_out_in[:, perm]  # stored column j = input perm[j]
    return AffineQuantized(
        q=np.ascontiguousarray(q_out_in),
        scales=np.ascontiguousarray(scales32.T),
        zeros=np.ascontiguousarray(zeros.T),
        group_size=min(gs, in_features),
        bits=bits,
        perm=perm,
    )


# ---------------------------------------------------------------------------------------
# loading


def _safetensors_files(directory: Path) -> Tuple[List[Path], Optional[Dict[str, str]]]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        data = _read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, Mapping) else None
        if not isinstance(weight_map, Mapping) or not weight_map:
            raise ModelFileError(f"{index}: no weight_map")
        files = []
        for fname in dict.fromkeys(weight_map.values()):
            if not isinstance(fname, str) or os.path.basename(fname) != fname:
                raise ModelFileError(f"{index}: bad shard file name {fname!r}")
            files.append(directory / fname)
        return files, {str(k): str(v) for k, v in weight_map.items()}
    single = directory / "model.safetensors"
    if single.is_file():
        return [single], None
    found = sorted(directory.glob("*.safetensors"))
    if found:
        return found, None
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
        raise ModelFileError(f"{directory}: only safetensors checkpoints are supported (found .bin/.pt)")
    raise ModelFileError(f"{directory}: no model.safetensors, index or *.safetensors file")


def _read_tensors(directory: Path) -> Dict[str, np.ndarray]:
    files, weight_map = _safetensors_files(directory)
    tensors: Dict[str, np.ndarray] = {}
    for path in files:
        if not path.is_file():
            raise ModelFileError(f"missing shard {path}")
        for name, array in read_safetensors(path).items():
            if weight_map is not None and weight_map.get(name, path.name) != path.name:
                continue  # the index places this tensor in another shard
            if name in tensors:
                raise ModelFileError(f"tensor {name!r} appears in more than one file")
            tensors[name] = array
    if weight_map is not None:
        missing = [n for n in weight_map if n not in tensors]
        if missing:
            raise ModelFileError(f"tensors listed in the index but absent from their shard: {missing[:5]}")
    return tensors


def _float_tensor(tensors: Mapping[str, np.ndarray], name: str, shape: Tuple[int, ...]) -> np.ndarray:
    if name not in tensors:
        raise ModelFileError(f"checkpoint lacks tensor {name!r}")
    array = tensors[name]
    if tuple(array.shape) != shape:
        raise ModelFileError(f"tensor {name!r} has shape {list(array.shape)}, expected {list(shape)}")
    if array.dtype.kind != "f":
        raise ModelFileError(f"tensor {name!r} must be floating point, got {array.dtype}")
    if array.dtype == np.float16:
        # Left memory-mapped: converted to float32 one matrix at a time where it is used, so a
        # 7B fp16 checkpoint never needs 27 GB of float32 at once.
        return array
    return np.ascontiguousarray(array, dtype=np.float32)


def _linear(
    tensors: Mapping[str, np.ndarray], prefix: str, out_features: int, in_features: int,
    quant: Optional[Mapping[str, Any]],
) -> Union[np.ndarray, AffineQuantized]:
    bias = tensors.get(prefix + ".bias")
    if bias is not None and np.any(np.asarray(bias, dtype=np.float32) != 0):
        raise ModelFileError(f"{prefix}.bias: biases are not supported")
    if prefix + ".qweight" in tensors:
        if quant is None:
            raise ModelFileError(f"{prefix}.qweight found but the checkpoint has no GPTQ config")
        for part in ("qzeros", "scales"):
            if f"{prefix}.{part}" not in tensors:
                raise ModelFileError(f"checkpoint lacks tensor {prefix}.{part!s}")
        return unpack_gptq(
            tensors[prefix + ".qweight"], tensors[prefix + ".qzeros"], tensors[prefix + ".scales"],
            tensors.get(prefix + ".g_idx"), in_features, out_features, quant["bits"],
            quant["group_size"], quant["checkpoint_format"], name=prefix,
        )
    return _float_tensor(tensors, prefix + ".weight", (out_features, in_features))


def load_hf(directory: PathLike) -> ImportedModel:
    """Read a HuggingFace Llama checkpoint directory (float or GPTQ) into canonical layout.

    Raises :class:`ConfigError` for an unsupported/inconsistent config and
    :class:`ModelFileError` for missing, mis-shaped or corrupt tensors.
    """
    directory = Path(os.fspath(directory))
    if not directory.is_dir():
        raise ModelFileError(f"{directory} is not a directory")
    cfg = _read_json(directory / "config.json")
    config = hf_config_to_config(cfg)
    quant = _quant_settings(directory, cfg)
    tensors = _read_tensors(directory)

    dim, hidden, hd = config.dim, config.hidden_dim, config.head_size
    q_rows = interleave_rows(config.n_heads, hd)
    k_rows = interleave_rows(config.n_kv_heads, hd)
    shapes = {
        "wq": (config.n_heads * hd, dim), "wk": (config.kv_dim, dim), "wv": (config.kv_dim, dim),
        "wo": (dim, config.n_heads * hd), "w1": (hidden, dim), "w2": (dim, hidden), "w3": (hidden, dim),
    }
    layers: List[Dict[str, Any]] = []
    for layer in range(config.n_layers):
        base = f"model.layers.{layer}."
        entry: Dict[str, Any] = {}
        for key, hf_name in HF_NORM_NAMES.items():
            entry[key] = _float_tensor(tensors, base + hf_name + ".weight", (dim,))
        for key, hf_name in HF_LINEAR_NAMES.items():
            out_f, in_f = shapes[key]
            entry[key] = _linear(tensors, base + hf_name, out_f, in_f, quant)
        entry["wq"] = _permute_rows(entry["wq"], q_rows)
        entry["wk"] = _permute_rows(entry["wk"], k_rows)
        layers.append(entry)

    embedding = _float_tensor(tensors, "model.embed_tokens.weight", (config.vocab_size, dim))
    rms_final = _float_tensor(tensors, "model.norm.weight", (dim,))
    tied = bool(cfg.get("tie_word_embeddings", False))
    wcls: Optional[Union[np.ndarray, AffineQuantized]] = None
    if not tied:
        if "lm_head.weight" not in tensors and "lm_head.qweight" not in tensors:
            raise ModelFileError("checkpoint lacks lm_head.weight and tie_word_embeddings is false")
        wcls = _linear(tensors, "lm_head", config.vocab_size, dim, quant)
    if quant is not None:
        quant = dict(quant)
        quant["lm_head"] = isinstance(wcls, AffineQuantized)
    tokenizer = directory / "tokenizer.model"
    return ImportedModel(
        config=config,
        layers=layers,
        token_embedding=embedding,
        rms_final=rms_final,
        wcls=wcls,
        tokenizer_path=tokenizer if tokenizer.is_file() else None,
        source=str(directory),
        quantization=quant,
    )


# ---------------------------------------------------------------------------------------
# fixture writers


_TORCH_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def hf_tensors_from_llama2c(config: Config, weights: Mapping[str, np.ndarray], tied: bool = True) -> Dict[str, np.ndarray]:
    """HF-named float32 tensors (rotate-half wq/wk) from llama2.c-layout stacked weights
    (``llama2rs.llama2c.random_weights`` / ``read_model(...).weights``)."""
    q_rows = rotate_half_rows(config.n_heads, config.head_size)
    k_rows = rotate_half_rows(config.n_kv_heads, config.head_size)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    out: Dict[str, np.ndarray] = {"model.embed_tokens.weight": f32(weights["token_embedding"])}
    for layer in range(config.n_layers):
        base = f"model.layers.{layer}."
        for key, hf_name in HF_NORM_NAMES.items():
            out[base + hf_name + ".weight"] = f32(weights[key][layer])
        for key, hf_name in HF_LINEAR_NAMES.items():
            matrix = f32(weights[key][layer])
            if key == "wq":
                matrix = matrix[q_rows]
            elif key == "wk":
                matrix = matrix[k_rows]
            out[base + hf_name + ".weight"] = np.ascontiguousarray(matrix)
    out["model.norm.weight"] = f32(weights["rms_final"])
    if not tied:
        out["lm_head.weight"] = f32(weights["wcls"])
    return out


def _write_tensor_files(
    directory: Path, tensors: Mapping[str, np.ndarray], dtypes: Mapping[str, str], shards: int,
    single_name: str = "model.safetensors",
) -> None:
    names = list(tensors)
    if shards < 1:
        raise ArgumentError(f"shards must be >= 1, got {shards}")
    if shards == 1:
        write_safetensors(directory / single_name, tensors, {"format": "pt"}, dtypes)
        return
    chunks = [c for c in np.array_split(np.arange(len(names)), shards)]
    weight_map: Dict[str, str] = {}
    total = 0
    for index, chunk in enumerate(chunks):
        fname = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {names[i]: tensors[names[i]] for i in chunk}
        write_safetensors(directory / fname, part, {"format": "pt"}, dtypes)
        for name in part:
            weight_map[name] = fname
            total += np.asarray(part[name]).nbytes
    with open(directory / "model.safetensors.index.json", "w", encoding="utf-8") as handle:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, handle, indent=2)


def _copy_tokenizer(directory: Path, tokenizer_model: Optional[PathLike]) -> None:
    if tokenizer_model is not None:
        (directory / "tokenizer.model").write_bytes(Path(os.fspath(tokenizer_model)).read_bytes())


def write_hf_checkpoint(
    directory: PathLike,
    config: Config,
    weights: Mapping[str, np.ndarray],
    dtype: str = "float32",
    shards: int = 1,
    tied: bool = True,
    tokenizer_model: Optional[PathLike] = None,
    extra_config: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write a float HF Llama checkpoint (config.json + safetensors, an index when sharded)
    from llama2.c-layout weights; ``extra_config`` entries are merged into config.json."""
    if dtype not in _TORCH_DTYPES:
        raise ArgumentError(f"dtype must be one of {sorted(_TORCH_DTYPES)}, got {dtype!r}")
    directory = Path(os.fspath(directory))
    directory.mkdir(parents=True, exist_ok=True)
    tensors = hf_tensors_from_llama2c(config, weights, tied)
    st = _TORCH_DTYPES[dtype]
    _write_tensor_files(directory, tensors, {name: st for name in tensors}, shards)
    cfg = config_to_hf_config(config, tied, dtype)
    cfg.update(extra_config or {})
    with open(directory / "config.json", "w", encoding="utf-8") as handle:
        json.dump(cfg, handle, indent=2)
    _copy_tokenizer(directory, tokenizer_model)
    return directory


Quantizer = Callable[[np.ndarray, int, int, bool], AffineQuantized]


def _default_quantizer(w: np.ndarray, bits: int, group_size: int, sym: bool) -> AffineQuantized:
    from .gptq import quantize_rtn

    return quantize_rtn(w, bits=bits, group_size=group_size, sym=sym)


def _pack_rows(values: np.ndarray, bits: int, rows_out: int) -> np.ndarray:
    """[n, C] values (< 2**bits, n <= rows_out*pf) -> uint32 [rows_out, C], packed along rows."""
    pf = 32 // bits
    padded = np.zeros((rows_out * pf, values.shape[1]), dtype=np.uint32)
    padded[: values.shape[0]] = values
    shifts = (np.arange(pf, dtype=np.uint32) * np.uint32(bits))[None, :, None]
    return (padded.reshape(rows_out, pf, -1) << shifts).sum(axis=1, dtype=np.uint64).astype(np.uint32)


def _pack_cols(values: np.ndarray, bits: int, cols_out: int) -> np.ndarray:
    """[G, n] values -> uint32 [G, cols_out], packed along columns (OR of shifted fields)."""
    pf = 32 // bits
    padded = np.zeros((values.shape[0], cols_out * pf), dtype=np.uint64)
    padded[:, : values.shape[1]] = values
    shifts = (np.arange(pf, dtype=np.uint64) * np.uint64(bits))[None, None, :]
    fields = padded.reshape(values.shape[0], cols_out, pf) << shifts
    out = np.zeros((values.shape[0], cols_out), dtype=np.uint64)
    for k in range(pf):
        out |= fields[:, :, k]
    return (out & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _gptq_layer_tensors(
    w_hf: np.ndarray, bits: int, group_size: int, desc_act: bool, sym: bool, tool: str,
    checkpoint_format: str, quantizer: Quantizer, rng: np.random.Generator, write_g_idx: bool,
) -> Tuple[Dict[str, np.ndarray], AffineQuantized]:
    """Quantize one HF-layout matrix [out, in] and pack it like ``tool``.

    Returns the tensors (without the module prefix) and the AffineQuantized (HF row order)
    that :func:`unpack_gptq` must recover from them.
    """
    out_f, in_f = w_hf.shape
    gs = in_f if group_size == -1 else group_size
    groups = -(-in_f // gs)
    order = rng.permutation(in_f) if desc_act else np.arange(in_f)  # "activation order"
    stored = quantizer(np.asarray(w_hf, dtype=np.float32)[:, order], bits, group_size, sym)
    if stored.perm is not None or stored.group_size != min(gs, in_f):
        raise ArgumentError("the quantizer must return contiguous groups of group_size, perm=None")
    g_idx = np.empty(in_f, dtype=np.int32)
    g_idx[order] = np.arange(in_f) // gs  # GPTQ: g_idx[perm[j]] = j // group_size
    q_orig = np.empty_like(stored.q)
    q_orig[:, order] = stored.q  # [out, in], original input order
    scales16 = stored.scales.T.astype(np.float16)  # [groups, out], as the tools store them
    zeros = stored.zeros.T.astype(np.int64)  # [groups, out]

    # What a loader must reconstruct (HF rows; groups contiguous after a stable sort of g_idx).
    canon = np.argsort(g_idx, kind="stable").astype(np.int32)
    trivial = np.array_equal(g_idx, np.arange(in_f) // gs)
    expected = AffineQuantized(
        q=np.ascontiguousarray(q_orig if trivial else q_orig[:, canon]),
        scales=np.ascontiguousarray(scales16.T.astype(np.float32)),
        zeros=np.ascontiguousarray(stored.zeros),
        group_size=min(gs, in_f),
        bits=bits,
        perm=None if trivial else canon,
    )

    pf = 32 // bits
    maxq = (1 << bits) - 1
    if tool == "autogptq":
        # AutoGPTQ (qlinear_cuda_old.pack): qweight [in/32*bits, out], qzeros [groups, out/32*bits]
        # with zeros - 1 OR-ed in unmasked (a zero of 0 spills ones into the higher fields).
        # AutoGPTQ floors in/32 and out/32; we round up to whole words with zero fields instead.
        qweight = _pack_rows(q_orig.T.astype(np.uint32), bits, -(-in_f // pf))
        z_minus_one = (zeros - 1) & 0xFFFFFFFF  # uint32(-1) for a zero point of 0
        pad_cols = -(-out_f // pf)
        padded = np.zeros((groups, pad_cols * pf), dtype=np.uint64)
        padded[:, :out_f] = z_minus_one
        qz = np.zeros((groups, pad_cols), dtype=np.uint64)
        for k in range(pf):
            qz |= (padded[:, k::pf][:, :pad_cols] << np.uint64(bits * k)) & np.uint64(0xFFFFFFFF)
        qzeros = qz.astype(np.uint32)
        scales_out = scales16
        g_out = g_idx
    elif tool == "gptqmodel":
        # GPTQModel packs zeros as-is (v2) and converts to v1 at save time by a word-wide
        # subtraction (convert_gptq_v2_to_v1_format_module). Its own saves use the unpadded
        # shapes (pack_block needs in % 32 == 0); its older auto-padding kernels grew out to a
        # multiple of 32 and in to a multiple of the group size by resize_() in post_init,
        # i.e. uninitialised memory, which a re-saved model carries. Emulated here: padding up
        # to those sizes (and whole 32-input blocks), random garbage in every padding field.
        out_pad = out_f + (-out_f % 32)
        step = 32 if group_size == -1 else math.lcm(32, gs)
        in_pad = in_f + (-in_f % step)
        groups_pad = -(-in_pad // gs)
        q_full = rng.integers(0, maxq + 1, size=(in_pad, out_pad), dtype=np.int64)
        q_full[:in_f, :out_f] = q_orig.T
        z_full = rng.integers(0, maxq + 1, size=(groups_pad, out_pad), dtype=np.int64)
        z_full[:groups, :out_f] = zeros
        qweight = _pack_rows(q_full.astype(np.uint32), bits, in_pad // pf)
        qzeros = _pack_cols(z_full.astype(np.uint64), bits, out_pad // pf)
        if checkpoint_format == "gptq":  # convert_gptq_v2_to_v1_format: word-wide subtraction
            qzeros = qzeros - np.uint32(_v1_offset(bits))
        scales_out = rng.uniform(-4, 4, size=(groups_pad, out_pad)).astype(np.float16)
        scales_out[:groups, :out_f] = scales16
        g_out = rng.integers(0, groups_pad, size=in_pad).astype(np.int32)
        g_out[:in_f] = g_idx
    else:
        raise ArgumentError(f"tool must be 'autogptq' or 'gptqmodel', got {tool!r}")
    tensors: Dict[str, np.ndarray] = {
        "qweight": qweight.view(np.int32),
        "qzeros": np.ascontiguousarray(qzeros).view(np.int32),
        "scales": scales_out,
    }
    if write_g_idx:
        tensors["g_idx"] = g_out
    return tensors, expected


def write_gptq_checkpoint(
    directory: PathLike,
    config: Config,
    float_weights: Mapping[str, np.ndarray],
    bits: int = 4,
    group_size: int = 128,
    desc_act: bool = False,
    sym: bool = True,
    tool: str = "autogptq",
    checkpoint_format: Optional[str] = None,
    quantizer: Optional[Quantizer] = None,
    seed: int = 0,
    tied: bool = True,
    quantize_lm_head: bool = False,
    write_g_idx: bool = True,
    shards: int = 1,
    tokenizer_model: Optional[PathLike] = None,
) -> Dict[str, Any]:
    """Quantize llama2.c-layout float weights and write a GPTQ checkpoint as ``tool`` would.

    ``tool="autogptq"``: v1 zeros (``zero - 1``), ``checkpoint_format: gptq``, only a
    ``quantize_config.json`` (no ``quantization_config`` in config.json), one file named
    ``gptq_model-{bits}bit-{group}g.safetensors``. ``tool="gptqmodel"``: padded tensors with
    garbage in the padding, ``checkpoint_format`` ``"gptq"`` (default, GPTQModel's v2->v1
    word-wide conversion) or ``"gptq_v2"``, both config files, ``model.safetensors`` (or
    shards). ``quantizer(w, bits, group_size, sym) -> AffineQuantized`` (contiguous groups,
    default :func:`llama2rs.gptq.quantize_rtn`) is applied to the columns in act-order (a random
    permutation when ``desc_act``). Non-quantized tensors are stored as float16.

    Returns ``{"layers": [{name: AffineQuantized}], "wcls": AffineQuantized | None}`` in
    canonical (interleaved) layout: exactly what :func:`load_hf` must produce.
    """
    if bits not in (4, 8):
        raise ArgumentError(f"bits must be 4 or 8, got {bits}")
    if tool == "autogptq":
        fmt = checkpoint_format or "gptq"
        if fmt != "gptq":
            raise ArgumentError("AutoGPTQ writes checkpoint_format 'gptq' only")
    elif tool == "gptqmodel":
        fmt = checkpoint_format or "gptq"
        if fmt not in GPTQ_FORMATS:
            raise ArgumentError(f"checkpoint_format must be one of {GPTQ_FORMATS}, got {fmt!r}")
    else:
        raise ArgumentError(f"tool must be 'autogptq' or 'gptqmodel', got {tool!r}")
    if quantize_lm_head and tied:
        raise ArgumentError("quantize_lm_head needs tied=False")
    quantizer = quantizer or _default_quantizer
    rng = np.random.default_rng(seed)
    directory = Path(os.fspath(directory))
    directory.mkdir(parents=True, exist_ok=True)

    hf_float = hf_tensors_from_llama2c(config, float_weights, tied)
    q_rows = interleave_rows(config.n_heads, config.head_size)
    k_rows = interleave_rows(config.n_kv_heads, config.head_size)
    tensors: Dict[str, np.ndarray] = {}
    expected_layers: List[Dict[str, AffineQuantized]] = []
    expected_wcls: Optional[AffineQuantized] = None
    quantized_names = {
        f"model.layers.{layer}.{hf_name}": (layer, key)
        for layer in range(config.n_layers) for key, hf_name in HF_LINEAR_NAMES.items()
    }
    if quantize_lm_head:
        quantized_names["lm_head"] = (-1, "wcls")
    for layer in range(config.n_layers):
        expected_layers.append({})
    for name, array in hf_float.items():
        prefix = name[: -len(".weight")]
        if prefix not in quantized_names:
            tensors[name] = array.astype(np.float16)
            continue
        layer, key = quantized_names[prefix]
        parts, expected = _gptq_layer_tensors(
            array, bits, group_size, desc_act, sym, tool, fmt, quantizer, rng, write_g_idx
        )
        for part, value in parts.items():
            tensors[f"{prefix}.{part}"] = value
        if key == "wq":
            expected = _permute_rows(expected, q_rows)
        elif key == "wk":
            expected = _permute_rows(expected, k_rows)
        if layer < 0:
            expected_wcls = expected
        else:
            expected_layers[layer][key] = expected

    quant_cfg: Dict[str, Any] = {
        "bits": bits,
        "group_size": group_size,
        "damp_percent": 0.01,
        "desc_act": desc_act,
        "static_groups": False,
        "sym": sym,
        "true_sequential": True,
        "quant_method": "gptq",
        "checkpoint_format": fmt,
    }
    hf_cfg = config_to_hf_config(config, tied, "float16")
    if tool == "autogptq":
        quant_cfg.update({"model_name_or_path": None, "model_file_base_name": "model"})
        fname = f"gptq_model-{bits}bit-{group_size}g.safetensors"
        _write_tensor_files(directory, tensors, {}, 1, single_name=fname)
    else:
        quant_cfg.update({
            "lm_head": quantize_lm_head,
            "pack_dtype": "int32",
            "meta": {"quantizer": ["gptqmodel:2.0.0"], "uri": "https://github.com/modelcloud/gptqmodel"},
        })
        hf_cfg["quantization_config"] = dict(quant_cfg)
        _write_tensor_files(directory, tensors, {}, shards)
    with open(directory / "quantize_config.json", "w", encoding="utf-8") as handle:
        json.dump(quant_cfg, handle, indent=2)
    with open(directory / "config.json", "w", encoding="utf-8") as handle:
        json.dump(hf_cfg, handle, indent=2)
    _copy_tokenizer(directory, tokenizer_model)
    return {"layers": expected_layers, "wcls": expected_wcls}
