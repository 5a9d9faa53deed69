"""The safetensors container, read and written with NumPy: the one codec behind HuggingFace
checkpoints and llama2rs's own files.

A file is an 8-byte little-endian header length, a JSON header ``{name: {dtype, shape,
data_offsets}, "__metadata__": {str: str}}`` (space-padded), then the raw little-endian data.
NumPy has no bfloat16: BF16 tensors are read as float32 (or as their raw uint16 bits) and
written from floats rounded to nearest even (:func:`float_to_bf16_bits`).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from ..errors import ArgumentError, ModelFileError
from ..fileio import atomic_write

__all__ = [
    "DTYPES",
    "DTYPE_NAMES",
    "Lazy",
    "read_header",
    "read",
    "write",
    "float_to_bf16_bits",
    "bf16_bits_to_float",
]

PathLike = Union[str, "os.PathLike[str]"]

# safetensors dtype -> numpy dtype of the stored bytes (BF16 is read as raw uint16).
DTYPES: Dict[str, np.dtype] = {
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
DTYPE_NAMES: Dict[str, str] = {
    "float64": "F64", "float32": "F32", "float16": "F16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


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


# ---------------------------------------------------------------------------------------
# reading


def read_header(path: PathLike) -> Tuple[Dict[str, Any], int]:
    """The JSON header of a safetensors file (``__metadata__`` included) and the byte offset
    where its data starts. Raises :class:`ModelFileError` for a missing or corrupt file."""
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
    except RecursionError:
        raise ModelFileError(f"{path}: corrupt safetensors header: JSON nested too deeply") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: safetensors header is not a JSON object")
    return header, 8 + header_len


def read(path: PathLike, bf16_to_float32: bool = True) -> Dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file, in header order.

    Memory-mapped, read-only views for every dtype except BF16, which numpy lacks: it is
    converted to float32 (or returned as raw uint16 bits with ``bf16_to_float32=False``).
    F16 stays float16. Raises :class:`ModelFileError` for a missing, truncated or corrupt file.
    """
    path = os.fspath(path)
    header, data_start = read_header(path)
    data_size = os.path.getsize(path) - data_start
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
        if dtype_name not in DTYPES:
            raise ModelFileError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name!r}")
        dtype = DTYPES[dtype_name]
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


# ---------------------------------------------------------------------------------------
# writing


@dataclass(frozen=True)
class Lazy:
    """A tensor to write whose data is made only when it is written (so a large model is never
    materialized all at once): its safetensors dtype, shape, and ``make() -> array``."""

    dtype: str
    shape: Tuple[int, ...]
    make: Callable[[], np.ndarray]


def _stored(array: np.ndarray, st: str) -> np.ndarray:
    return float_to_bf16_bits(array) if st == "BF16" else array


def write(
    path: PathLike,
    tensors: Mapping[str, Union[np.ndarray, Lazy]],
    metadata: Optional[Mapping[str, str]] = None,
    dtypes: Optional[Mapping[str, str]] = None,
    align: int = 8,
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> None:
    """Write ``tensors`` (in the given order) as a safetensors file.

    The stored dtype of an array is its own (float64/32/16, int*, uint*, bool) unless
    ``dtypes[name]`` says otherwise: ``"BF16"`` rounds a float array to bfloat16 (nearest even),
    ``"F16"`` / ``"F32"`` cast. The header is space-padded so the data starts at a multiple of
    ``align`` bytes. ``progress(name, done, total)`` is called after each tensor. The file is
    written beside ``path`` and renamed over it at the end: a failure leaves nothing behind, and
    arrays still memory-mapped from an older file at ``path`` keep their (unlinked) inode.
    """
    dtypes = dict(dtypes or {})
    specs: List[Tuple[str, str, Tuple[int, ...], Callable[[], np.ndarray]]] = []
    for name, value in tensors.items():
        if isinstance(value, Lazy):
            st, shape, make = value.dtype, tuple(int(d) for d in value.shape), value.make
        else:
            array = np.asarray(value)
            st = dtypes.get(name) or DTYPE_NAMES.get(array.dtype.name, "")
            if not st:
                raise ArgumentError(f"cannot store dtype {array.dtype} of tensor {name!r}")
            shape, make = array.shape, partial(_stored, array, st)
        if st not in DTYPES:
            raise ArgumentError(f"unknown safetensors dtype {st!r} of tensor {name!r}")
        specs.append((name, st, shape, make))

    header: Dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, st, shape, _ in specs:
        nbytes = DTYPES[st].itemsize * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": st, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % align)

    def body(handle: BinaryIO) -> None:
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        for done, (name, st, shape, make) in enumerate(specs, 1):
            array = np.ascontiguousarray(make(), dtype=DTYPES[st])
            if array.shape != shape:
                raise ArgumentError(f"tensor {name}: shape {array.shape}, expected {shape}")
            handle.write(array.tobytes())  # little-endian hosts only
            if progress is not None:
                progress(name, done, len(specs))

    atomic_write(path, body)
