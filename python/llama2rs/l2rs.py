"""llama2rs's own model file, written and read with NumPy.

The layout is specified once, in ``rust/l2rs.rs`` (the reader the models run from); this module
writes exactly that. A file is a safetensors container: standard tools can list and read it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Optional, Union

import numpy as np

from .config import Config
from .errors import ArgumentError, ModelFileError
from .fileio import atomic_write
from .llama2c import Q8Tensor
from .quant import AffineQuantized

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MATRIX_NAMES",
    "ModelWeights",
    "Matrix",
    "write_model",
    "read_model",
    "read_safetensors_header",
]

FORMAT_NAME = "llama2rs"
FORMAT_VERSION = 2  # 2: affine scales may be F16
MATRIX_NAMES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
# Data starts at a multiple of this, so fp32 tensors are aligned in the memory map.
HEADER_ALIGN = 64

Matrix = Union[np.ndarray, Q8Tensor, AffineQuantized]
_DTYPES: dict[np.dtype, str] = {np.dtype(np.float32): "F32", np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8",
           np.dtype(np.float16): "F16", np.dtype(np.int64): "I64"}
_NUMPY: dict[str, np.dtype] = {v: k for k, v in _DTYPES.items()}
_NUMPY["BF16"] = np.dtype(np.uint16)  # raw; callers widen it


@dataclass
class ModelWeights:
    """A whole model in memory: matrices are ``[out, in]`` float32 arrays, ``Q8Tensor`` or
    ``AffineQuantized``; q/k rows are in llama2.c's interleaved RoPE layout."""

    token_embedding: Matrix  # [vocab, dim]
    layers: list[dict]  # per layer: rms_att, rms_ffn [dim] + MATRIX_NAMES
    rms_final: np.ndarray  # [dim]
    classifier: Optional[Matrix] = None  # [vocab, dim]; None = tied to the embedding
    metadata: dict = field(default_factory=dict)


# A tensor to write: its name, dtype, shape, and a function that makes its data when it is
# written (so a large model is never materialized as float32 all at once).
_Pending = tuple[str, np.dtype, tuple[int, ...], Callable[[], np.ndarray]]


def _pending(name: str, dtype, shape, make: Callable[[], np.ndarray]) -> _Pending:
    return (name, np.dtype(dtype), tuple(int(d) for d in shape), make)


def _pack4(q: np.ndarray) -> np.ndarray:
    rows, cols = q.shape
    padded = q if cols % 2 == 0 else np.pad(q, ((0, 0), (0, 1)))
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)  # [rows, ceil(cols/2)]


def _matrix_tensors(name: str, m: Matrix) -> Iterator[_Pending]:
    if isinstance(m, AffineQuantized):
        rows, cols = m.q.shape
        if m.bits == 4:
            yield _pending(f"{name}.q4", np.uint8, (rows, (cols + 1) // 2), lambda: _pack4(m.q))
        else:
            yield _pending(f"{name}.q8", np.uint8, (rows, cols), lambda: m.q)
        yield _pending(f"{name}.scales", _scales_dtype(m.scales), m.scales.shape, lambda: m.scales)
        yield _pending(f"{name}.zeros", np.uint8, m.zeros.shape, lambda: m.zeros)
        if m.perm is not None:
            perm = m.perm
            yield _pending(f"{name}.perm", np.int32, perm.shape, lambda: perm)
    elif isinstance(m, Q8Tensor):
        yield _pending(f"{name}.q8_0", np.int8, m.q.shape, lambda: m.q)
        yield _pending(f"{name}.q8_0_scales", np.float32, m.scale.shape, lambda: m.scale)
    else:
        yield _pending(f"{name}.weight", np.float32, np.shape(m), lambda: m)


def _scales_dtype(scales: np.ndarray) -> np.dtype:
    """float16 when every scale is exactly an fp16 value (GPTQ checkpoints' scales are; our
    quantizer rounds them so): 2 bytes instead of 4 per group, fewer bytes read per token."""
    with np.errstate(over="ignore"):
        half = scales.astype(np.float16)
    exact = bool(np.all(np.isfinite(half))) and np.array_equal(half.astype(np.float32), scales)
    return np.dtype(np.float16 if exact else np.float32)


def _affine_group_size(matrices: Iterable[Matrix]) -> Optional[int]:
    """The one group size of all affine matrices as the file states it (``-1``: one group per
    row; a positive size applies as ``min(size, cols)``), or None if there are none."""
    affine = [m for m in matrices if isinstance(m, AffineQuantized)]
    if not affine:
        return None
    partial = {m.group_size for m in affine if m.group_size < m.q.shape[1]}
    if len(partial) > 1:
        raise ArgumentError(f"all quantized matrices must share one group size, got {sorted(partial)}")
    group = partial.pop() if partial else -1
    for m in affine:
        cols = m.q.shape[1]
        if m.group_size != (cols if group == -1 else min(group, cols)):
            raise ArgumentError(f"a matrix with {cols} columns has group size {m.group_size}, expected {group}")
    return group


def _config_json(config: Config) -> str:
    return json.dumps({**config.to_dict(), "rope_layout": "interleaved"})


def write_model(
    path: Union[str, os.PathLike],
    config: Config,
    weights: ModelWeights,
    tokenizer_bin: bytes,
    metadata: Optional[Mapping[str, str]] = None,
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> None:
    """Write a llama2rs model file. It is written to a temporary file beside ``path`` and renamed
    at the end, so a failure never leaves a partial file. ``progress(name, done, total)`` is
    called after each tensor."""
    tokenizer = np.frombuffer(tokenizer_bin, dtype=np.uint8)
    tensors: list[_Pending] = [_pending("tokenizer", np.uint8, tokenizer.shape, lambda: tokenizer)]
    all_matrices: list[Matrix] = [weights.token_embedding]
    tensors += list(_matrix_tensors("token_embedding", weights.token_embedding))
    if weights.classifier is not None:
        tensors += list(_matrix_tensors("classifier", weights.classifier))
        all_matrices.append(weights.classifier)
    tensors.append(_pending("rms_final", np.float32, np.shape(weights.rms_final), lambda: weights.rms_final))
    if len(weights.layers) != config.n_layers:
        raise ArgumentError(f"expected {config.n_layers} layers, got {len(weights.layers)}")
    for i, layer in enumerate(weights.layers):
        for norm in ("rms_att", "rms_ffn"):
            tensors.append(_pending(f"layers.{i}.{norm}", np.float32, np.shape(layer[norm]),
                                    partial(np.asarray, layer[norm])))
        for name in MATRIX_NAMES:
            tensors += list(_matrix_tensors(f"layers.{i}.{name}", layer[name]))
            all_matrices.append(layer[name])

    # Version 1 unless a feature of version 2 is used, so older readers keep reading the rest.
    half_scales = any(name.endswith(".scales") and dtype == np.float16 for name, dtype, _, _ in tensors)
    version = FORMAT_VERSION if half_scales else 1
    meta = {"format": FORMAT_NAME, "format_version": str(version), "config": _config_json(config)}
    group = _affine_group_size(all_matrices)
    if group is not None:
        meta["affine_group_size"] = str(group)
    for key, value in (metadata or {}).items():
        meta.setdefault(key, str(value))

    # Widest types first: every tensor starts aligned to its element (no holes allowed).
    tensors.sort(key=lambda t: -t[1].itemsize)
    header: dict = {"__metadata__": meta}
    offset = 0
    for name, dtype, shape, _ in tensors:
        if dtype not in _DTYPES:
            raise ArgumentError(f"tensor {name}: unsupported dtype {dtype}")
        nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % HEADER_ALIGN)

    def body(f: BinaryIO) -> None:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for done, (name, dtype, shape, make) in enumerate(tensors, 1):
            array = np.ascontiguousarray(make(), dtype=dtype)
            if array.shape != shape:
                raise ArgumentError(f"tensor {name}: shape {array.shape}, expected {shape}")
            f.write(array.tobytes())  # little-endian hosts only
            if progress is not None:
                progress(name, done, len(tensors))

    atomic_write(path, body)


def read_safetensors_header(path: Union[str, os.PathLike]) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the byte offset where its data starts."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{path}: file is {len(head)} bytes, too short for a safetensors header")
            n = int.from_bytes(head, "little")
            size = path.stat().st_size
            if n > size - 8:
                raise ModelFileError(f"{path}: safetensors header length {n} exceeds the file size {size}")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: not a readable safetensors file: {e}") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: safetensors header is not a JSON object")
    return header, 8 + n


def read_model(path: Union[str, os.PathLike]) -> tuple[Config, ModelWeights, bytes]:
    """Read a llama2rs file back with NumPy (memory-mapped): config, weights, tokenizer bytes."""
    header, start = read_safetensors_header(path)
    meta = header.pop("__metadata__", {}) or {}
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: not a llama2rs model file")
    if int(meta.get("format_version", "0")) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: format version {meta['format_version']} is newer than {FORMAT_VERSION}")
    cfg = json.loads(meta["config"])
    cfg.pop("rope_layout", None)
    config = Config(**cfg)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    arrays = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        dtype = _NUMPY[info["dtype"]]
        arrays[name] = raw[start + a : start + b].view(dtype).reshape(info["shape"])
    group = int(meta["affine_group_size"]) if "affine_group_size" in meta else None

    def matrix(name: str) -> Optional[Matrix]:
        if f"{name}.weight" in arrays:
            return arrays[f"{name}.weight"]
        if f"{name}.q8_0" in arrays:
            q, s = arrays[f"{name}.q8_0"], arrays[f"{name}.q8_0_scales"]
            return Q8Tensor(q, s, q.shape[1] // s.shape[1])
        for bits in (4, 8):
            if f"{name}.q{bits}" in arrays:
                packed = arrays[f"{name}.q{bits}"]
                scales, zeros = arrays[f"{name}.scales"], arrays[f"{name}.zeros"]
                rows = scales.shape[0]
                cols = _cols_of(name, config)
                if bits == 4:
                    q = np.empty((rows, packed.shape[1] * 2), dtype=np.uint8)
                    q[:, 0::2], q[:, 1::2] = packed & 15, packed >> 4
                    q = q[:, :cols]
                else:
                    q = np.asarray(packed)
                gs = cols if group is None or group == -1 else min(group, cols)
                perm = arrays.get(f"{name}.perm")
                return AffineQuantized(np.ascontiguousarray(q), np.asarray(scales, dtype=np.float32), np.asarray(zeros), gs, bits,
                                       None if perm is None else np.asarray(perm))
        return None

    layers = []
    for i in range(config.n_layers):
        layer: dict[str, Any] = {"rms_att": arrays[f"layers.{i}.rms_att"], "rms_ffn": arrays[f"layers.{i}.rms_ffn"]}
        for m in MATRIX_NAMES:
            layer[m] = matrix(f"layers.{i}.{m}")
        layers.append(layer)
    embedding = matrix("token_embedding")
    if embedding is None:
        raise ModelFileError(f"{path}: the token embedding is missing")
    weights = ModelWeights(embedding, layers, arrays["rms_final"], matrix("classifier"), meta)
    return config, weights, arrays["tokenizer"].tobytes()


def _cols_of(name: str, config: Config) -> int:
    return config.hidden_dim if name.endswith(".w2") else config.dim
