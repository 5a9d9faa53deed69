"""llama2.c's three model file formats, read and written with numpy only.

The formats (all little-endian, no alignment padding between tensors):

``legacy`` (llama2.c ``export.py --version 0``, read by ``run.c``)
    7 x int32 header ``dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len``.
    A *negative* ``vocab_size`` means the classifier is stored separately at the end of
    the file. Then float32 tensors: token_embedding, rms_att, wq, wk, wv, wo, rms_ffn,
    w1, w2, w3, rms_final, two RoPE tables ``freq_cis_real`` / ``freq_cis_imag``
    (``seq_len * head_size / 2`` floats each; written but never used by run.c), [wcls].

``v1`` (``export.py --version 1``)
    256-byte header: uint32 magic ``0x616b3432`` ("ak42"), int32 version 1, 7 x int32
    config, uint8 shared_classifier, zero padding. Then float32 tensors: rms_att, rms_ffn,
    rms_final, token_embedding, wq, wk, wv, wo, w1, w2, w3, [wcls].

``v2`` (``export.py --version 2``, read by ``runq.c``; Q8_0 quantization)
    Same header with version 2 and an int32 ``group_size`` right after the shared flag
    (at byte 37, unaligned). Then float32 norms rms_att, rms_ffn, rms_final, then every
    quantized matrix *one layer at a time* as its int8 values immediately followed by its
    float32 group scales: token_embedding, wq[0], wq[1], ..., wk[...], wv[...], wo[...],
    w1[...], w2[...], w3[...], [wcls].

Reading returns, and writing takes, a :class:`~llama2rs.weights.Weights` (the views of a
read file are zero-copy, memory-mapped). In a Q8_0 model the norms stay float32 and every
matrix is a :class:`~llama2rs.quantize.q80.Q8Tensor`; a file's ``shared_classifier`` flag is
``Weights.tied``. ``metadata`` says ``{"format": "llama2.c", "format_version": "legacy" | "v1" |
"v2"}``; a v2 file's ``quantization`` is ``{"method": "q8_0", "group_size": ...}``.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO, Iterator, Union

import numpy as np

from ..config import LIMITS, Config
from ..errors import ArgumentError, ModelFileError
from ..fileio import atomic_write
from ..quantize.q80 import F32, I8, Q8Tensor, quantize_q80
from ..weights import MATRIX_NAMES, Weights, dense

__all__ = ["MAGIC", "HEADER_SIZE", "FORMATS", "read_model", "write", "write_legacy", "write_v1", "write_v2"]

MAGIC = 0x616B3432  # "ak42" read as a little-endian uint32
HEADER_SIZE = 256  # bytes, v1 and v2
LEGACY_HEADER_SIZE = 7 * 4  # bytes: seven int32
FORMATS = ("legacy", "v1", "v2")

# Tensors that stay float32 in every format.
NORM_NAMES = ("rms_att", "rms_ffn", "rms_final")
# Matrices (quantized in v2), in v2 file order; wcls follows when not shared.
V2_MATRICES = ("token_embedding",) + MATRIX_NAMES
PER_LAYER = ("rms_att", "rms_ffn") + MATRIX_NAMES

# File order of the float32 tensors.
LEGACY_ORDER = (
    "token_embedding", "rms_att", "wq", "wk", "wv", "wo",
    "rms_ffn", "w1", "w2", "w3", "rms_final",
)  # then freq_cis_real, freq_cis_imag, [wcls]
V1_ORDER = (
    "rms_att", "rms_ffn", "rms_final", "token_embedding",
    "wq", "wk", "wv", "wo", "w1", "w2", "w3",
)  # then [wcls]


# ---------------------------------------------------------------------------------------
# shapes


def _file_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """The float shape of every tensor as the files store it: per-layer ones stacked."""
    dim, hidden, layers = config.dim, config.hidden_dim, config.n_layers
    q_dim = config.n_heads * config.head_size  # == dim
    return {
        "token_embedding": (config.vocab_size, dim),
        "rms_att": (layers, dim),
        "wq": (layers, q_dim, dim),
        "wk": (layers, config.kv_dim, dim),
        "wv": (layers, config.kv_dim, dim),
        "wo": (layers, dim, q_dim),
        "rms_ffn": (layers, dim),
        "w1": (layers, hidden, dim),
        "w2": (layers, dim, hidden),
        "w3": (layers, hidden, dim),
        "rms_final": (dim,),
        "wcls": (config.vocab_size, dim),
    }


def _freq_table_floats(config: Config) -> int:
    """Floats in ONE of the legacy format's two unused RoPE tables."""
    return config.seq_len * config.head_size // 2


def _q8_bytes(shape: tuple[int, ...], group_size: int) -> int:
    """Bytes of a Q8_0 tensor on disk: int8 values plus float32 scales."""
    count = int(np.prod(shape))
    return count + 4 * (count // group_size)


# ---------------------------------------------------------------------------------------
# reading


def _config_from_ints(values: tuple[int, ...]) -> Config:
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = values
    return Config(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len)


def _check_length(path: str, found: int, expected: int, what: str) -> None:
    if found != expected:
        raise ModelFileError(
            f"{path}: a {what} file with this header must be {expected} bytes, found {found} bytes"
        )


def _f32_view(raw: np.ndarray, offset: int, shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """A float32 view of ``raw`` at byte ``offset``; returns it and the next offset."""
    count = int(np.prod(shape))
    view = np.ndarray(shape=shape, dtype=F32, buffer=raw, offset=offset)
    return view, offset + 4 * count


def _q8_view(
    raw: np.ndarray, offset: int, shape: tuple[int, ...], group_size: int, stacked: bool
) -> tuple[Q8Tensor, int]:
    """A zero-copy Q8Tensor view of ``raw`` at ``offset``.

    ``stacked``: ``shape`` is ``[L, rows, cols]`` and the file holds each layer's int8
    values then its scales, layer after layer; the views stride over the layer blocks.
    """
    matrix_shape = shape[1:] if stacked else shape  # [rows, cols]
    rows, cols = matrix_shape
    groups_per_row = cols // group_size
    values_bytes = rows * cols
    block_bytes = values_bytes + 4 * rows * groups_per_row  # one layer: q then scales
    n_blocks = shape[0] if stacked else 1
    q = np.ndarray(
        shape=(n_blocks, rows, cols), dtype=I8, buffer=raw, offset=offset,
        strides=(block_bytes, cols, 1),
    )  # [n_blocks, rows, cols]
    scale = np.ndarray(
        shape=(n_blocks, rows, groups_per_row), dtype=F32, buffer=raw, offset=offset + values_bytes,
        strides=(block_bytes, 4 * groups_per_row, 4),
    )  # [n_blocks, rows, cols // gs]
    if not stacked:
        q, scale = q[0], scale[0]  # [rows, cols], [rows, cols // gs]
    return Q8Tensor(q, scale, group_size), offset + n_blocks * block_bytes


def _weights(config: Config, stacked: dict, fmt: str, shared: bool, group_size: Union[int, None]) -> Weights:
    """The file's stacked tensors as :class:`Weights` (per-layer views, no copies)."""
    layers = [{name: stacked[name][i] for name in PER_LAYER} for i in range(config.n_layers)]
    quantization = None if group_size is None else {"method": "q8_0", "group_size": group_size}
    return Weights(config, stacked["token_embedding"], layers, stacked["rms_final"],
                   None if shared else stacked["wcls"], quantization,
                   {"format": "llama2.c", "format_version": fmt})


def _read_legacy(path: str, raw: np.ndarray, header: bytes) -> Weights:
    ints = struct.unpack("<7i", header[:LEGACY_HEADER_SIZE])
    signed_vocab = ints[5]
    shared = signed_vocab > 0
    config = _config_from_ints(ints[:5] + (abs(signed_vocab),) + ints[6:])
    shapes = _file_shapes(config)
    floats = sum(int(np.prod(shapes[name])) for name in LEGACY_ORDER)
    floats += 2 * _freq_table_floats(config)
    if not shared:
        floats += int(np.prod(shapes["wcls"]))
    _check_length(path, raw.size, LEGACY_HEADER_SIZE + 4 * floats, "legacy")

    tensors: dict = {}
    offset = LEGACY_HEADER_SIZE
    for name in LEGACY_ORDER:
        tensors[name], offset = _f32_view(raw, offset, shapes[name])
    offset += 2 * 4 * _freq_table_floats(config)  # skip freq_cis_real / freq_cis_imag
    if not shared:
        tensors["wcls"], offset = _f32_view(raw, offset, shapes["wcls"])
    return _weights(config, tensors, "legacy", shared, None)


def _read_v1(path: str, raw: np.ndarray, header: bytes) -> Weights:
    config = _config_from_ints(struct.unpack("<7i", header[8:36]))
    shared = header[36] != 0
    shapes = _file_shapes(config)
    names = V1_ORDER + (() if shared else ("wcls",))
    floats = sum(int(np.prod(shapes[name])) for name in names)
    _check_length(path, raw.size, HEADER_SIZE + 4 * floats, "v1")

    tensors: dict = {}
    offset = HEADER_SIZE
    for name in names:
        tensors[name], offset = _f32_view(raw, offset, shapes[name])
    return _weights(config, tensors, "v1", shared, None)


def _read_v2(path: str, raw: np.ndarray, header: bytes) -> Weights:
    config = _config_from_ints(struct.unpack("<7i", header[8:36]))
    shared = header[36] != 0
    (group_size,) = struct.unpack("<i", header[37:41])
    if group_size < 1:
        raise ModelFileError(f"{path}: bad Q8_0 group size {group_size}")
    for what, width in (("dim", config.dim), ("hidden_dim", config.hidden_dim)):
        # runq.c's matmul works on whole groups of each row; a partial group is dropped.
        if width % group_size != 0:
            raise ModelFileError(
                f"{path}: {what} ({width}) is not a multiple of the group size ({group_size})"
            )
    shapes = _file_shapes(config)
    matrices = V2_MATRICES + (() if shared else ("wcls",))
    expected = HEADER_SIZE + 4 * sum(int(np.prod(shapes[name])) for name in NORM_NAMES)
    expected += sum(_q8_bytes(shapes[name], group_size) for name in matrices)
    _check_length(path, raw.size, expected, "v2")

    tensors: dict = {}
    offset = HEADER_SIZE
    for name in NORM_NAMES:
        tensors[name], offset = _f32_view(raw, offset, shapes[name])
    for name in matrices:
        stacked = name in MATRIX_NAMES
        tensors[name], offset = _q8_view(raw, offset, shapes[name], group_size, stacked)
    return _weights(config, tensors, "v2", shared, group_size)


def read_model(path: Union[str, os.PathLike]) -> Weights:
    """Read a llama2.c model file of any of the three formats, memory-mapped (no copies).

    Raises :class:`ModelFileError` for a missing/short/long file or a bad magic/version,
    :class:`ConfigError` for an inconsistent header config.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            header = handle.read(HEADER_SIZE)
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc}") from exc
    if len(header) < LEGACY_HEADER_SIZE:
        raise ModelFileError(f"{path}: {size} bytes is too short for a model header")

    (magic,) = struct.unpack("<I", header[:4])
    if magic != MAGIC:
        # No magic: a legacy file starts with a positive int32 dim within Config's bounds
        # (MAGIC as a dim would be far beyond them, so the two cannot be confused).
        # Anything else is neither format.
        if not 1 <= magic <= LIMITS["dim"]:
            raise ModelFileError(
                f"{path}: bad magic number 0x{magic:08x}: neither a versioned llama2.c file "
                f"(0x{MAGIC:08x}) nor a legacy one (positive dim)"
            )
        reader = _read_legacy
    else:
        if len(header) < HEADER_SIZE:
            raise ModelFileError(
                f"{path}: {size} bytes is too short for the {HEADER_SIZE}-byte header"
            )
        (version,) = struct.unpack("<i", header[4:8])
        readers = {1: _read_v1, 2: _read_v2}
        if version not in readers:
            raise ModelFileError(f"{path}: unsupported llama2.c file version {version} (need 1 or 2)")
        reader = readers[version]

    raw = np.memmap(path, dtype=np.uint8, mode="r")  # [file_bytes]
    return reader(path, raw, header)


# ---------------------------------------------------------------------------------------
# writing


def _write_f32(handle: BinaryIO, array) -> None:
    handle.write(np.ascontiguousarray(array, dtype=F32).tobytes())


def _config_ints(config: Config, vocab_size: int) -> bytes:
    return struct.pack(
        "<7i", config.dim, config.hidden_dim, config.n_layers, config.n_heads,
        config.n_kv_heads, vocab_size, config.seq_len,
    )


def _versioned_header(config: Config, version: int, shared_classifier: bool,
                      group_size: Union[int, None]) -> bytes:
    header = struct.pack("<Ii", MAGIC, version) + _config_ints(config, config.vocab_size)
    header += struct.pack("<B", int(shared_classifier))
    if group_size is not None:
        header += struct.pack("<i", group_size)
    return header + b"\0" * (HEADER_SIZE - len(header))


def _rope_tables(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """The cos/sin tables export.py stores in legacy files (unused by run.c)."""
    head_size = config.head_size
    pair_freq = 1.0 / (10000.0 ** (np.arange(0, head_size, 2) / head_size))  # [hs/2]
    angles = np.outer(np.arange(config.seq_len), pair_freq)  # [seq_len, hs/2]
    return np.cos(angles).astype(F32), np.sin(angles).astype(F32)  # [seq_len, hs/2] each


def _in_file_order(weights: Weights, name: str) -> Iterator:
    """The tensors a file stores under llama2.c's ``name``: one per layer for per-layer ones."""
    if name in PER_LAYER:
        return (layer[name] for layer in weights.layers)
    return iter([{"token_embedding": weights.token_embedding, "rms_final": weights.rms_final,
                  "wcls": weights.wcls}[name]])


def write_legacy(path, weights: Weights) -> None:
    """Write a legacy (version 0) llama2.c file; a negative header vocab marks a separate wcls."""
    weights.check()
    config, shared = weights.config, weights.tied
    signed_vocab = config.vocab_size if shared else -config.vocab_size
    freq_cos, freq_sin = _rope_tables(config)

    def body(handle: BinaryIO) -> None:
        handle.write(_config_ints(config, signed_vocab))
        for name in LEGACY_ORDER:
            for tensor in _in_file_order(weights, name):
                _write_f32(handle, dense(tensor))
        _write_f32(handle, freq_cos)
        _write_f32(handle, freq_sin)
        if not shared:
            _write_f32(handle, dense(weights.wcls))

    atomic_write(path, body)


def write_v1(path, weights: Weights) -> None:
    """Write a version-1 (float32, 256-byte header) llama2.c file."""
    weights.check()
    names = V1_ORDER + (() if weights.tied else ("wcls",))

    def body(handle: BinaryIO) -> None:
        handle.write(_versioned_header(weights.config, 1, weights.tied, None))
        for name in names:
            for tensor in _in_file_order(weights, name):
                _write_f32(handle, dense(tensor))

    atomic_write(path, body)


def write_v2(path, weights: Weights, group_size: int) -> None:
    """Write a version-2 (Q8_0) file, quantizing float matrices with :func:`quantize_q80`.

    A matrix that is already a :class:`Q8Tensor` with this group size is written as is.
    ``dim`` and ``hidden_dim`` must be multiples of ``group_size`` (runq.c needs it).
    """
    weights.check()
    config = weights.config
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ArgumentError(f"group_size must be a positive integer, got {group_size!r}")
    group_size = int(group_size)
    for what, width in (("dim", config.dim), ("hidden_dim", config.hidden_dim)):
        if width % group_size != 0:
            raise ArgumentError(f"{what} ({width}) is not a multiple of group_size ({group_size})")
    matrices = V2_MATRICES + (() if weights.tied else ("wcls",))

    def quantized(weight) -> Q8Tensor:
        if isinstance(weight, Q8Tensor) and weight.group_size == group_size:
            return weight
        return quantize_q80(dense(weight), group_size)

    def body(handle: BinaryIO) -> None:
        handle.write(_versioned_header(config, 2, weights.tied, group_size))
        for name in NORM_NAMES:
            for tensor in _in_file_order(weights, name):
                _write_f32(handle, tensor)
        for name in matrices:
            for tensor in _in_file_order(weights, name):  # each layer: its int8 values, then its scales
                matrix = quantized(tensor)
                handle.write(np.ascontiguousarray(matrix.q, dtype=I8).tobytes())
                _write_f32(handle, matrix.scale)

    atomic_write(path, body)


def write(path, weights: Weights, fmt: str, group_size: int = 32) -> None:
    """Write ``weights`` as llama2.c format ``fmt`` (``"legacy"``, ``"v1"`` or ``"v2"``)."""
    if fmt == "legacy":
        write_legacy(path, weights)
    elif fmt == "v1":
        write_v1(path, weights)
    elif fmt == "v2":
        write_v2(path, weights, group_size)
    else:
        raise ArgumentError(f"llama2.c format must be one of {FORMATS}, got {fmt!r}")
