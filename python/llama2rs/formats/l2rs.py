"""llama2rs's own model file, written and read with NumPy.

The layout is specified once, in the Rust core's reader (``rust/formats/l2rs.rs``, the reader the models run
from); this module writes exactly that, format version 1, or 2 when affine scales are fp16. A file is a safetensors container: standard tools can list and read it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Union

import numpy as np

from ..config import Config
from ..errors import ArgumentError, ModelFileError
from ..quantize.affine import AffineQuantized
from ..quantize.q80 import Q8Tensor
from ..weights import LAYER_NORM_NAMES, MATRIX_NAMES, Matrix, Weights
from . import safetensors
from .safetensors import Lazy

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "write_model", "read_model", "is_llama2rs_file"]

FORMAT_NAME = "llama2rs"
FORMAT_VERSION = 2  # 2: affine scales may be F16
# Data starts at a multiple of this, so fp32 tensors are aligned in the memory map.
HEADER_ALIGN = 64


def _lazy(dtype, shape, make) -> Lazy:
    return Lazy(safetensors.DTYPE_NAMES[np.dtype(dtype).name], tuple(int(d) for d in shape), make)


def _pack4(q: np.ndarray) -> np.ndarray:
    rows, cols = q.shape
    padded = q if cols % 2 == 0 else np.pad(q, ((0, 0), (0, 1)))
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)  # [rows, ceil(cols/2)]


def _matrix_tensors(name: str, m: Matrix) -> Iterator[tuple[str, Lazy]]:
    if isinstance(m, AffineQuantized):
        rows, cols = m.q.shape
        if m.bits == 4:
            yield f"{name}.q4", _lazy(np.uint8, (rows, (cols + 1) // 2), lambda: _pack4(m.q))
        else:
            yield f"{name}.q8", _lazy(np.uint8, (rows, cols), lambda: m.q)
        yield f"{name}.scales", _lazy(_scales_dtype(m.scales), m.scales.shape, lambda: m.scales)
        yield f"{name}.zeros", _lazy(np.uint8, m.zeros.shape, lambda: m.zeros)
        if m.perm is not None:
            perm = m.perm
            yield f"{name}.perm", _lazy(np.int32, perm.shape, lambda: perm)
    elif isinstance(m, Q8Tensor):
        yield f"{name}.q8_0", _lazy(np.int8, m.q.shape, lambda: m.q)
        yield f"{name}.q8_0_scales", _lazy(np.float32, m.scale.shape, lambda: m.scale)
    elif name.endswith(LAYER_NORM_NAMES) or name == "rms_final":
        yield name, _lazy(np.float32, np.shape(m), lambda: np.asarray(m))
    else:
        yield f"{name}.weight", _lazy(np.float32, np.shape(m), lambda: m)


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
    weights: Weights,
    tokenizer_bin: bytes,
    metadata: Optional[Mapping[str, str]] = None,
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> None:
    """Write a llama2rs model file. It is written to a temporary file beside ``path`` and renamed
    at the end, so a failure never leaves a partial file. ``progress(name, done, total)`` is
    called after each tensor."""
    config = weights.config
    if len(weights.layers) != config.n_layers:
        raise ArgumentError(f"expected {config.n_layers} layers, got {len(weights.layers)}")
    tokenizer = np.frombuffer(tokenizer_bin, dtype=np.uint8)
    tensors: list[tuple[str, Lazy]] = [("tokenizer", _lazy(np.uint8, tokenizer.shape, lambda: tokenizer))]
    all_matrices: list[Matrix] = []
    for name, tensor in weights.named_tensors():
        tensors += list(_matrix_tensors(name, tensor))
        if not name.endswith(LAYER_NORM_NAMES) and name != "rms_final":
            all_matrices.append(tensor)

    # Version 1 unless a feature of version 2 is used, so older readers keep reading the rest.
    half_scales = any(name.endswith(".scales") and t.dtype == "F16" for name, t in tensors)
    version = FORMAT_VERSION if half_scales else 1
    meta = {"format": FORMAT_NAME, "format_version": str(version), "config": _config_json(config)}
    group = _affine_group_size(all_matrices)
    if group is not None:
        meta["affine_group_size"] = str(group)
    for key, value in (metadata or {}).items():
        meta.setdefault(key, str(value))

    # Widest types first: every tensor starts aligned to its element (no holes allowed).
    tensors.sort(key=lambda t: -safetensors.DTYPES[t[1].dtype].itemsize)
    safetensors.write(path, dict(tensors), meta, align=HEADER_ALIGN, progress=progress)


def is_llama2rs_file(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a readable safetensors file that says it is a llama2rs model."""
    try:
        header, _ = safetensors.read_header(path)
    except ModelFileError:
        return False
    return isinstance(header.get("__metadata__"), dict) and header["__metadata__"].get("format") == FORMAT_NAME


def read_model(path: Union[str, os.PathLike]) -> tuple[Weights, bytes]:
    """Read a llama2rs file back with NumPy (memory-mapped): its weights and tokenizer bytes."""
    header, _ = safetensors.read_header(path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: not a llama2rs model file")
    if int(meta.get("format_version", "0")) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: format version {meta['format_version']} is newer than {FORMAT_VERSION}")
    cfg = json.loads(meta["config"])
    cfg.pop("rope_layout", None)
    config = Config(**cfg)
    arrays = safetensors.read(path, bf16_to_float32=False)
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
    quantization = json.loads(meta["quantization"]) if "quantization" in meta else None
    weights = Weights(config, embedding, layers, arrays["rms_final"], matrix("classifier"), quantization, dict(meta))
    return weights, arrays["tokenizer"].tobytes()


def _cols_of(name: str, config: Config) -> int:
    return config.hidden_dim if name.endswith(".w2") else config.dim
