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

In memory, weights are a dict of numpy arrays stacked per layer, with llama2.c's names
and shapes (``L = n_layers``, ``hs = head_size``)::

    token_embedding [vocab, dim]          rms_att [L, dim]       rms_ffn [L, dim]
    wq [L, n_heads*hs, dim]               wk [L, kv_dim, dim]    wv [L, kv_dim, dim]
    wo [L, dim, n_heads*hs]               w1 [L, hidden, dim]    w2 [L, dim, hidden]
    w3 [L, hidden, dim]                   rms_final [dim]        wcls [vocab, dim]

Matrices are ``[out_features, in_features]`` (``y = W @ x``). With a shared classifier
``weights["wcls"] is weights["token_embedding"]``. In a Q8_0 model the norms stay float32
and every matrix is a :class:`Q8Tensor`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Mapping, Union

import numpy as np

from .config import MAX_DIM, Config
from .errors import ArgumentError, ModelFileError
from .fileio import atomic_write

__all__ = [
    "MAGIC",
    "HEADER_SIZE",
    "Q8Tensor",
    "LoadedModel",
    "quantize_q80",
    "read_model",
    "write_legacy",
    "write_v1",
    "write_v2",
    "random_weights",
    "weight_shapes",
    "NORM_NAMES",
    "MATRIX_NAMES",
]

MAGIC = 0x616B3432  # "ak42" read as a little-endian uint32
HEADER_SIZE = 256  # bytes, v1 and v2
LEGACY_HEADER_SIZE = 7 * 4  # bytes: seven int32

# Tensors that stay float32 in every format.
NORM_NAMES = ("rms_att", "rms_ffn", "rms_final")
# Matrices (quantized in v2), in v2 file order; wcls follows when not shared.
MATRIX_NAMES = ("token_embedding", "wq", "wk", "wv", "wo", "w1", "w2", "w3")
PER_LAYER_MATRICES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")

# File order of the float32 tensors.
LEGACY_ORDER = (
    "token_embedding", "rms_att", "wq", "wk", "wv", "wo",
    "rms_ffn", "w1", "w2", "w3", "rms_final",
)  # then freq_cis_real, freq_cis_imag, [wcls]
V1_ORDER = (
    "rms_att", "rms_ffn", "rms_final", "token_embedding",
    "wq", "wk", "wv", "wo", "w1", "w2", "w3",
)  # then [wcls]

F32 = np.dtype("<f4")
I8 = np.dtype("i1")


# ---------------------------------------------------------------------------------------
# Q8_0 tensors


@dataclass(frozen=True, eq=False)
class Q8Tensor:
    """A Q8_0 matrix (or a stack of them): ``w ~= q * scale`` per group of ``group_size``
    consecutive values along the last axis.

    ``q``: int8 ``[..., rows, cols]``; ``scale``: float32 ``[..., rows, cols // group_size]``.
    """

    q: np.ndarray
    scale: np.ndarray
    group_size: int

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ArgumentError(f"group_size must be >= 1, got {self.group_size}")
        if self.q.dtype != I8 or self.scale.dtype != F32:
            raise ArgumentError(
                f"Q8Tensor needs int8 q and float32 scale, got {self.q.dtype} and {self.scale.dtype}"
            )
        cols = self.q.shape[-1]
        expected_scale_shape = self.q.shape[:-1] + (cols // self.group_size,)
        if cols % self.group_size != 0 or self.scale.shape != expected_scale_shape:
            raise ArgumentError(
                f"Q8Tensor q {self.q.shape} / scale {self.scale.shape} do not fit "
                f"group size {self.group_size}"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q.shape

    def __getitem__(self, index) -> "Q8Tensor":
        """Index the leading (layer) axes, e.g. ``wq[layer]``; the last axis stays whole."""
        q = self.q[index]  # [..., rows, cols]
        scale = self.scale[index]  # [..., rows, cols // gs]
        if q.ndim < 2 or q.shape[-1] != self.q.shape[-1]:
            raise ArgumentError("Q8Tensor indexing must keep the last two axes whole")
        return Q8Tensor(q, scale, self.group_size)

    def dequantize(self) -> np.ndarray:
        """float32 ``[..., rows, cols]``: ``q * scale`` computed in float32 as runq.c does."""
        scale_per_value = np.repeat(self.scale, self.group_size, axis=-1)  # [..., rows, cols]
        return self.q.astype(np.float32) * scale_per_value  # [..., rows, cols]


def quantize_q80(w: np.ndarray, group_size: int) -> Q8Tensor:
    """Quantize ``w`` ``[..., rows, cols]`` to Q8_0 with export.py's arithmetic.

    Per group of ``group_size`` consecutive values of the row-major data (groups never
    cross a row since ``cols % group_size == 0`` is required): ``scale = max|w| / 127``
    in float32 and ``q = round(w / scale)`` with round-half-to-even (``torch.round``,
    like ``np.rint``). A group of zeros gets scale 0 and q 0 (export.py would divide by 0).
    """
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ArgumentError(f"group_size must be a positive integer, got {group_size!r}")
    group_size = int(group_size)
    w32 = np.asarray(w, dtype=np.float32)  # [..., rows, cols]
    if w32.ndim < 1 or w32.shape[-1] % group_size != 0:
        raise ArgumentError(
            f"last dimension of shape {w32.shape} is not a multiple of group_size {group_size}"
        )
    groups = w32.reshape(w32.shape[:-1] + (-1, group_size))  # [..., rows, n_groups, gs]
    group_max = np.abs(groups).max(axis=-1)  # [..., rows, n_groups]
    scale = (group_max / np.float32(127.0)).astype(np.float32)  # [..., rows, n_groups]
    safe_scale = np.where(scale > 0, scale, np.float32(1.0))  # [..., rows, n_groups]
    quotient = groups / safe_scale[..., None]  # [..., rows, n_groups, gs] float32
    rounded = np.rint(quotient)  # [..., rows, n_groups, gs], half to even
    rounded = np.where(scale[..., None] > 0, rounded, 0)  # [..., rows, n_groups, gs]
    q = rounded.astype(np.int8).reshape(w32.shape)  # [..., rows, cols]
    return Q8Tensor(q, scale, group_size)


# ---------------------------------------------------------------------------------------
# shapes


def weight_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """The float shape of every tensor name (``wcls`` included)."""
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


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model read from (or ready to be written to) a llama2.c file."""

    config: Config
    weights: dict
    format: str  # "legacy" | "v1" | "v2"
    shared_classifier: bool
    group_size: Union[int, None] = None  # Q8_0 group size for "v2", else None

    @property
    def quantized(self) -> bool:
        return self.format == "v2"


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


def _read_legacy(path: str, raw: np.ndarray, header: bytes) -> LoadedModel:
    ints = struct.unpack("<7i", header[:LEGACY_HEADER_SIZE])
    signed_vocab = ints[5]
    shared = signed_vocab > 0
    config = _config_from_ints(ints[:5] + (abs(signed_vocab),) + ints[6:])
    shapes = weight_shapes(config)
    floats = sum(int(np.prod(shapes[name])) for name in LEGACY_ORDER)
    floats += 2 * _freq_table_floats(config)
    if not shared:
        floats += int(np.prod(shapes["wcls"]))
    _check_length(path, raw.size, LEGACY_HEADER_SIZE + 4 * floats, "legacy")

    weights: dict = {}
    offset = LEGACY_HEADER_SIZE
    for name in LEGACY_ORDER:
        weights[name], offset = _f32_view(raw, offset, shapes[name])
    offset += 2 * 4 * _freq_table_floats(config)  # skip freq_cis_real / freq_cis_imag
    if shared:
        weights["wcls"] = weights["token_embedding"]
    else:
        weights["wcls"], offset = _f32_view(raw, offset, shapes["wcls"])
    return LoadedModel(config, weights, "legacy", shared, None)


def _read_v1(path: str, raw: np.ndarray, header: bytes) -> LoadedModel:
    config = _config_from_ints(struct.unpack("<7i", header[8:36]))
    shared = header[36] != 0
    shapes = weight_shapes(config)
    names = V1_ORDER + (() if shared else ("wcls",))
    floats = sum(int(np.prod(shapes[name])) for name in names)
    _check_length(path, raw.size, HEADER_SIZE + 4 * floats, "v1")

    weights: dict = {}
    offset = HEADER_SIZE
    for name in names:
        weights[name], offset = _f32_view(raw, offset, shapes[name])
    if shared:
        weights["wcls"] = weights["token_embedding"]
    return LoadedModel(config, weights, "v1", shared, None)


def _read_v2(path: str, raw: np.ndarray, header: bytes) -> LoadedModel:
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
    shapes = weight_shapes(config)
    matrices = MATRIX_NAMES + (() if shared else ("wcls",))
    expected = HEADER_SIZE + 4 * sum(int(np.prod(shapes[name])) for name in NORM_NAMES)
    expected += sum(_q8_bytes(shapes[name], group_size) for name in matrices)
    _check_length(path, raw.size, expected, "v2")

    weights: dict = {}
    offset = HEADER_SIZE
    for name in NORM_NAMES:
        weights[name], offset = _f32_view(raw, offset, shapes[name])
    for name in matrices:
        stacked = name in PER_LAYER_MATRICES
        weights[name], offset = _q8_view(raw, offset, shapes[name], group_size, stacked)
    if shared:
        weights["wcls"] = weights["token_embedding"]
    return LoadedModel(config, weights, "v2", shared, group_size)


def read_model(path: Union[str, os.PathLike]) -> LoadedModel:
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
        if not 1 <= magic <= MAX_DIM:
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


def _check_weights(config: Config, weights: Mapping, shared_classifier: bool) -> None:
    """Raise ArgumentError unless every needed tensor exists with the right shape."""
    shapes = weight_shapes(config)
    needed = NORM_NAMES + MATRIX_NAMES + (() if shared_classifier else ("wcls",))
    for name in needed:
        if name not in weights:
            raise ArgumentError(f"weights lack {name!r}")
        shape = tuple(np.shape(weights[name]) if not isinstance(weights[name], Q8Tensor)
                      else weights[name].shape)
        if shape != shapes[name]:
            raise ArgumentError(f"weights[{name!r}] has shape {shape}, expected {shapes[name]}")


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


def _as_float(weight) -> np.ndarray:
    return weight.dequantize() if isinstance(weight, Q8Tensor) else weight


def write_legacy(path, config: Config, weights: Mapping, shared_classifier: bool = True) -> None:
    """Write a legacy (version 0) llama2.c file; a negative header vocab marks a separate wcls."""
    _check_weights(config, weights, shared_classifier)
    signed_vocab = config.vocab_size if shared_classifier else -config.vocab_size
    freq_cos, freq_sin = _rope_tables(config)

    def body(handle: BinaryIO) -> None:
        handle.write(_config_ints(config, signed_vocab))
        for name in LEGACY_ORDER:
            _write_f32(handle, _as_float(weights[name]))
        _write_f32(handle, freq_cos)
        _write_f32(handle, freq_sin)
        if not shared_classifier:
            _write_f32(handle, _as_float(weights["wcls"]))

    atomic_write(path, body)


def write_v1(path, config: Config, weights: Mapping, shared_classifier: bool = True) -> None:
    """Write a version-1 (float32, 256-byte header) llama2.c file."""
    _check_weights(config, weights, shared_classifier)
    names = V1_ORDER + (() if shared_classifier else ("wcls",))

    def body(handle: BinaryIO) -> None:
        handle.write(_versioned_header(config, 1, shared_classifier, None))
        for name in names:
            _write_f32(handle, _as_float(weights[name]))

    atomic_write(path, body)


def write_v2(path, config: Config, weights: Mapping, group_size: int,
             shared_classifier: bool = True) -> None:
    """Write a version-2 (Q8_0) file, quantizing float matrices with :func:`quantize_q80`.

    A matrix that is already a :class:`Q8Tensor` with this group size is written as is.
    ``dim`` and ``hidden_dim`` must be multiples of ``group_size`` (runq.c needs it).
    """
    _check_weights(config, weights, shared_classifier)
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ArgumentError(f"group_size must be a positive integer, got {group_size!r}")
    group_size = int(group_size)
    for what, width in (("dim", config.dim), ("hidden_dim", config.hidden_dim)):
        if width % group_size != 0:
            raise ArgumentError(f"{what} ({width}) is not a multiple of group_size ({group_size})")
    matrices = MATRIX_NAMES + (() if shared_classifier else ("wcls",))

    def quantized(name: str) -> Q8Tensor:
        weight = weights[name]
        if isinstance(weight, Q8Tensor) and weight.group_size == group_size:
            return weight
        return quantize_q80(_as_float(weight), group_size)

    def body(handle: BinaryIO) -> None:
        handle.write(_versioned_header(config, 2, shared_classifier, group_size))
        for name in NORM_NAMES:
            _write_f32(handle, weights[name])
        for name in matrices:
            tensor = quantized(name)
            layers = [tensor[layer] for layer in range(config.n_layers)] \
                if name in PER_LAYER_MATRICES else [tensor]
            for matrix in layers:  # each layer: its int8 values, then its scales
                handle.write(np.ascontiguousarray(matrix.q, dtype=I8).tobytes())
                _write_f32(handle, matrix.scale)

    atomic_write(path, body)


# ---------------------------------------------------------------------------------------
# random models for tests


def random_weights(config: Config, seed: int, shared_classifier: bool = True,
                   scale: float = 1.0) -> dict:
    """float32 random weights with well-conditioned activations and logits.

    Norm weights are ``1 + 0.1 * N(0, 1)``; every matrix (embedding and classifier
    included) is ``N(0, scale / sqrt(in_features))``, so each matmul roughly preserves the
    RMS of its input and the logits are O(1).
    """
    rng = np.random.default_rng(seed)
    shapes = weight_shapes(config)
    weights: dict = {}
    for name, shape in shapes.items():
        if name == "wcls" and shared_classifier:
            continue
        if name in NORM_NAMES:
            values = 1.0 + 0.1 * rng.standard_normal(shape)  # shape
        else:
            in_features = shape[-1]
            values = rng.standard_normal(shape) * (scale / np.sqrt(in_features))  # shape
        weights[name] = values.astype(np.float32)
    if shared_classifier:
        weights["wcls"] = weights["token_embedding"]
    return weights
