"""The safetensors container, read and written with NumPy: the one codec behind HuggingFace
checkpoints and llama2rs's own files.

A file is an 8-byte little-endian header length, a JSON header ``{name: {dtype, shape,
data_offsets}, "__metadata__": {str: str}}`` (space-padded), then the raw little-endian data.
NumPy has no bfloat16: BF16 tensors are read as float32 (or as their raw uint16 bits) and
written from floats rounded to nearest even (:func:`float_to_bf16_bits`).

Files larger than memory: :func:`read_lazy` returns :class:`StoredTensor` handles that read a
tensor (with a plain file read into a fresh array, so nothing stays mapped) only when it is
used, and :func:`write_units` writes tensors as they are made, one :class:`Unit` at a time.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import ArgumentError, ModelFileError
from ..fileio import atomic_write

__all__ = [
    "DTYPES",
    "DTYPE_NAMES",
    "Lazy",
    "Part",
    "Unit",
    "StoredTensor",
    "read_header",
    "read",
    "read_lazy",
    "write",
    "write_units",
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


_MAX_DIMENSION = 1 << 48

_Entry = Tuple[str, np.dtype, str, Tuple[int, ...], int, int]  # name, dtype, dtype name, shape, begin, end


def _entries(path: str) -> Tuple[List[_Entry], int]:
    """The validated tensor entries of a file (header order) and where its data starts."""
    header, data_start = read_header(path)
    data_size = os.path.getsize(path) - data_start
    entries: List[_Entry] = []
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and not isinstance(info, dict):
                raise ModelFileError(f"{path}: __metadata__ must be an object")
            continue
        try:
            dtype_name = info["dtype"]
            # Integers only (JSON's 1e999 is a float, inf, and 2.5 is no dimension).
            if not all(isinstance(d, int) and not isinstance(d, bool) for d in info["shape"]):
                raise TypeError(f"shape {info['shape']!r} is not a list of integers")
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in info["data_offsets"]):
                raise TypeError(f"data_offsets {info['data_offsets']!r} is not a list of integers")
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: bad header entry for tensor {name!r}: {exc!r}"[:500]) from None
        if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
            raise ModelFileError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name!r}"[:500])
        dtype = DTYPES[dtype_name]
        if any(d < 0 for d in shape):
            raise ModelFileError(f"{path}: tensor {name!r} has a negative dimension {shape}")
        if any(d > _MAX_DIMENSION for d in shape):  # possible with another dimension 0; numpy needs int64 sizes
            raise ModelFileError(f"{path}: tensor {name!r} has a dimension over 2**48: {shape}"[:500])
        nbytes = math.prod(shape) * dtype.itemsize  # exact: int64 would wrap for huge shapes
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
    return entries, data_start


def read(path: PathLike, bf16_to_float32: bool = True) -> Dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file, in header order.

    Memory-mapped, read-only views for every dtype except BF16, which numpy lacks: it is
    converted to float32 (or returned as raw uint16 bits with ``bf16_to_float32=False``).
    F16 stays float16. Raises :class:`ModelFileError` for a missing, truncated or corrupt file.
    (:func:`read_lazy` reads nothing until a tensor is used.)
    """
    path = os.fspath(path)
    entries, data_start = _entries(path)
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


def _bf16_to_float32_owned(bits: np.ndarray) -> np.ndarray:
    """:func:`bf16_bits_to_float` with one temporary less (``bits`` is not needed after)."""
    wide = bits.astype(np.uint32)
    wide <<= np.uint32(16)
    return wide.view(np.float32)


class StoredTensor:
    """A tensor of a safetensors file, read only when it is used, each time with a plain file
    read into a fresh array (so a checkpoint larger than memory can be converted one tensor at
    a time, and no page of the file stays mapped into the process).

    ``np.asarray(t)`` (or :meth:`read`) gives its values: BF16 as float32 (``dtype`` says what
    it reads as), other dtypes as stored. :meth:`take_rows` selects rows without reading."""

    __slots__ = ("path", "offset", "stored", "shape", "rows", "_stored_shape")

    def __init__(self, path: str, offset: int, stored: str, shape: Tuple[int, ...],
                 rows: Optional[np.ndarray] = None) -> None:
        self.path = path
        self.offset = offset  # of its first byte in the file
        self.stored = stored  # safetensors dtype name
        self.shape = tuple(shape) if rows is None else (len(rows),) + tuple(shape[1:])
        self.rows = rows  # the stored rows it consists of, or None for all of them in order
        self._stored_shape = tuple(shape)  # as the file holds it

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32) if self.stored == "BF16" else DTYPES[self.stored]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"StoredTensor({self.stored}{list(self.shape)} at byte {self.offset} of {self.path!r})"

    def take_rows(self, rows: np.ndarray) -> "StoredTensor":
        """The rows ``rows`` of this tensor (``t.take_rows(i)`` reads as ``np.asarray(t)[i]``)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.rows is not None:
            rows = self.rows[rows]
        return StoredTensor(self.path, self.offset, self.stored, self._stored_shape, rows)

    def read(self) -> np.ndarray:
        stored = DTYPES[self.stored]
        count = int(np.prod(self._stored_shape, dtype=np.int64))
        nbytes = count * stored.itemsize
        raw = np.empty(nbytes, dtype=np.uint8)
        try:
            with open(self.path, "rb", buffering=0) as handle:
                handle.seek(self.offset)
                view, done = raw.data, 0
                while done < nbytes:
                    got = handle.readinto(view[done:])
                    if not got:
                        raise ModelFileError(f"{self.path}: truncated: {self!r} ends past the end of the file")
                    done += got
        except OSError as exc:
            raise ModelFileError(f"cannot read {self.path}: {exc}") from exc
        array = raw.view(stored).reshape(self._stored_shape)
        if self.rows is not None:
            array = array[self.rows]
        return _bf16_to_float32_owned(array) if self.stored == "BF16" else array

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
        array = self.read()
        return array if dtype is None else array.astype(dtype, copy=False)


def read_lazy(path: PathLike) -> Dict[str, StoredTensor]:
    """The tensors of a ``.safetensors`` file (header order) as :class:`StoredTensor` handles:
    the header is validated as :func:`read` does, and no data is read."""
    path = os.fspath(path)
    entries, data_start = _entries(path)
    return {name: StoredTensor(path, data_start + begin, dtype_name, shape)
            for name, _, dtype_name, shape, begin, _ in entries}


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


@dataclass(frozen=True)
class Part:
    """One tensor that a :class:`Unit` makes: its name, shape, and safetensors dtype, or the
    dtypes it may turn out to have (several: the made array's own dtype decides, e.g. F16 or
    F32 scales)."""

    name: str
    dtypes: Tuple[str, ...]
    shape: Tuple[int, ...]

    @property
    def fixed_wide(self) -> bool:
        """Whether its dtype is known now and 4 or more bytes wide (see :func:`write_units`)."""
        return len(self.dtypes) == 1 and DTYPES[self.dtypes[0]].itemsize >= 4


@dataclass(frozen=True)
class Unit:
    """Tensors made together by one call, e.g. a matrix quantized into its values and scales:
    ``make()`` returns ``{part name: array}`` for every one of ``parts``."""

    parts: Tuple[Part, ...]
    make: Callable[[], Mapping[str, np.ndarray]]


def _nbytes(dtype: str, shape: Tuple[int, ...]) -> int:
    return DTYPES[dtype].itemsize * int(np.prod(shape, dtype=np.int64))


def _header_text(layout: Sequence[Tuple[str, str, Tuple[int, ...], int, int]],
                 metadata: Optional[Mapping[str, str]]) -> bytes:
    header: Dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, st, shape, begin, end in layout:
        header[name] = {"dtype": st, "shape": list(shape), "data_offsets": [begin, end]}
    return json.dumps(header, separators=(",", ":")).encode("utf-8")


def write_units(
    path: PathLike,
    units: Sequence[Unit],
    metadata: Union[None, Mapping[str, str], Callable[[Mapping[str, str]], Mapping[str, str]]] = None,
    align: int = 8,
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> None:
    """Write the tensors of ``units`` as a safetensors file, making one unit at a time and
    writing its arrays at once, so memory holds one unit's arrays, never the whole file's.

    Layout of the data (which starts at a multiple of ``align`` bytes):

    1. every tensor whose dtype is fixed in advance and 4 or more bytes wide (F32, I32, ...),
       in unit order: each starts aligned to its element (all sizes are multiples of 4);
    2. then every other tensor, unit by unit, each unit's in the order of its parts.

    Tensors of the first kind made by a unit are written at their places in that region, the
    others at the end of what is written so far. A dtype that is known only once the tensor is
    made (several ``Part.dtypes``) means offsets are known only then, so the header, which
    precedes the data, is written last, into space reserved for the longest it can be (every
    undecided tensor at its widest dtype) and padded with spaces. ``metadata`` may be a
    function of the dtypes chosen (``{name: dtype}``), called at the end; what it returns may
    be at most 64 characters longer than for the widest dtypes. ``progress(name, done, total)``
    is called after each tensor. The file is written beside ``path`` and renamed over it at the
    end, as :func:`write` does.
    """
    parts = [part for unit in units for part in unit.parts]
    names = [part.name for part in parts]
    if len(set(names)) != len(names):
        raise ArgumentError(f"tensor names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
    for part in parts:
        if not part.dtypes or any(st not in DTYPES for st in part.dtypes):
            raise ArgumentError(f"unknown safetensors dtypes {part.dtypes!r} of tensor {part.name!r}")
    front = [part for part in parts if part.fixed_wide]
    back = [part for part in parts if not part.fixed_wide]
    offsets: Dict[str, int] = {}
    position = 0
    for part in front:
        offsets[part.name] = position
        position += _nbytes(part.dtypes[0], part.shape)
    front_end = position

    def layout(choose: Callable[[Part], str]) -> List[Tuple[str, str, Tuple[int, ...], int, int]]:
        """Every tensor in file order with the dtypes ``choose`` picks for the undecided."""
        rows, at = [], 0
        for part in front + back:
            st = choose(part)
            size = _nbytes(st, part.shape)
            rows.append((part.name, st, part.shape, at, at + size))
            at += size
        return rows

    def meta(dtypes: Mapping[str, str]) -> Optional[Mapping[str, str]]:
        return metadata(dtypes) if callable(metadata) else metadata

    # The longest the header can be: the widest size for every offset, the longest name for
    # every dtype (same or fewer digits and characters in the real one).
    widest = layout(lambda p: max(p.dtypes, key=lambda st: (DTYPES[st].itemsize, len(st))))
    longest = {p.name: max(p.dtypes, key=len) for p in parts}
    bound = _header_text([(n, longest[n], s, b, e) for n, _, s, b, e in widest],
                         meta({n: st for n, st, _, _, _ in widest}))
    reserved = len(bound) + 64
    reserved += -(8 + reserved) % align
    data_start = 8 + reserved

    chosen: Dict[str, str] = {}

    def body(handle: BinaryIO) -> None:
        handle.write(b" " * data_start)  # the header's place, written at the end
        cursor = front_end
        done = 0
        for unit in units:
            arrays = dict(unit.make())
            if set(arrays) != {part.name for part in unit.parts}:
                raise ArgumentError(f"a unit made {sorted(arrays)}, expected {[p.name for p in unit.parts]}")
            for part in unit.parts:
                array = np.asarray(arrays.pop(part.name))
                if len(part.dtypes) == 1:
                    st = part.dtypes[0]
                    if st == "BF16" and array.dtype.kind == "f":
                        array = float_to_bf16_bits(array)
                    array = np.ascontiguousarray(array, dtype=DTYPES[st])
                else:
                    st = DTYPE_NAMES.get(array.dtype.name, "")
                    if st not in part.dtypes:
                        raise ArgumentError(f"tensor {part.name}: dtype {array.dtype}, expected one of {part.dtypes}")
                    array = np.ascontiguousarray(array)
                if array.shape != part.shape:
                    raise ArgumentError(f"tensor {part.name}: shape {array.shape}, expected {part.shape}")
                chosen[part.name] = st
                if part.fixed_wide:
                    handle.seek(data_start + offsets[part.name])
                else:
                    handle.seek(data_start + cursor)
                    offsets[part.name] = cursor
                    cursor += array.nbytes
                handle.write(array.data)  # little-endian hosts only
                del array
                done += 1
                if progress is not None:
                    progress(part.name, done, len(parts))
            del arrays
        handle.truncate(data_start + cursor)
        final = layout(lambda p: chosen[p.name])
        assert all(offsets[n] == b for n, _, _, b, _ in final), "layout and writes disagree"
        text = _header_text(final, meta(chosen))
        if len(text) > reserved:
            raise ArgumentError(f"the header grew past its reserved {reserved} bytes (metadata depends on dtypes)")
        handle.seek(0)
        handle.write(struct.pack("<Q", reserved) + text + b" " * (reserved - len(text)))

    atomic_write(path, body)
