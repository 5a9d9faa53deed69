"""llama2rs's own model file, written and read with NumPy.

The layout is specified once, in the Rust core's reader (``rust/formats/l2rs.rs``, the reader the models run
from); this module writes exactly that: format version 1, 2 when affine scales are fp16, 3 with RoPE
divisors, extra stop ids or a byte-level BPE tokenizer. A file is a safetensors container:
standard tools can list and read it.

Order of the tensors (readers look tensors up by name, so any order reads; this is the one
:func:`write_model` writes, by :func:`~llama2rs.formats.safetensors.write_units`):

1. from the data start (a multiple of ``HEADER_ALIGN`` bytes), every tensor of a 4-byte type
   known before its matrix is made: norms, ``rope_freqs``, fp32 matrices, Q8_0 scales,
   act-order ``perm``, and the affine ``scales`` of already quantized matrices (GPTQ) when they
   are F32. All are multiples of 4 bytes, so each starts aligned for the memory map;
2. then matrix by matrix (model order): its affine ``scales`` (when not above), its values
   (``q4``/``q8``/``q8_0``), its ``zeros``; so F16 scales may start at odd offsets (the Rust
   reader reads them at any alignment), and so may the F32 scales of a matrix quantized on the
   way whose scales are not all exact fp16 values (rare: the Rust reader then copies them);
3. last the ``tokenizer``.

This lets export quantize (or read) each matrix once, when it is written, and drop it after:
memory holds one matrix, never the model (the header, which depends on the dtypes chosen, is
written last, into reserved space). GPTQ (``--method gptq``) still quantizes every layer before
writing. Earlier versions of this writer put all 4-byte tensors first, then all 2-byte ones,
then the 1-byte ones; such files read the same.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np

from ..config import Config
from ..errors import ArgumentError, ConfigError, ModelFileError, TokenizerError
from ..quantize.affine import AffineQuantized
from ..quantize.q80 import Q8Tensor
from ..quantize.rounded import Rounded
from ..weights import LAYER_NORM_NAMES, MATRIX_NAMES, Matrix, Weights
from . import safetensors

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "write_model", "read_model", "is_llama2rs_file", "read_tokenizer",
           "stop_ids", "tokenizer_parts"]

FORMAT_NAME = "llama2rs"
FORMAT_VERSION = 3  # 2: affine scales may be F16; 3: rope_freqs, stop_ids, byte-level BPE tokenizers
# Data starts at a multiple of this, so fp32 tensors are aligned in the memory map.
HEADER_ALIGN = 64


def _part(name: str, dtype: Any, shape: Iterable[int]) -> safetensors.Part:
    return safetensors.Part(name, (safetensors.DTYPE_NAMES[np.dtype(dtype).name],), tuple(int(d) for d in shape))


def _pack4(q: np.ndarray) -> np.ndarray:
    rows, cols = q.shape
    padded = q if cols % 2 == 0 else np.pad(q, ((0, 0), (0, 1)))
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)  # [rows, ceil(cols/2)]


def _quantized_arrays(name: str, m: Union[AffineQuantized, Q8Tensor]) -> dict[str, np.ndarray]:
    """The stored tensors of a quantized matrix (see :func:`_matrix_unit`)."""
    if isinstance(m, Q8Tensor):
        return {f"{name}.q8_0_scales": m.scale, f"{name}.q8_0": m.q}
    out = {f"{name}.scales": m.scales.astype(_scales_dtype(m.scales), copy=False),
           f"{name}.q{m.bits}": _pack4(m.q) if m.bits == 4 else m.q,
           f"{name}.zeros": m.zeros}
    if m.perm is not None:
        out[f"{name}.perm"] = m.perm
    return out


def _quantized_parts(name: str, m: Union[AffineQuantized, Q8Tensor, Rounded]) -> tuple[safetensors.Part, ...]:
    rows, cols = m.shape
    if isinstance(m, Q8Tensor) or isinstance(m, Rounded) and m.kind == "q8_0":
        return (_part(f"{name}.q8_0_scales", np.float32, (rows, cols // m.group_size)),
                _part(f"{name}.q8_0", np.int8, (rows, cols)))
    if isinstance(m, Rounded):  # the dtype is known once quantized: F16 when exact, else F32
        scales = safetensors.Part(f"{name}.scales", ("F16", "F32"), (rows, m.n_groups))
    else:
        scales = _part(f"{name}.scales", _scales_dtype(m.scales), m.scales.shape)
    parts: tuple[safetensors.Part, ...] = (
        scales, _part(f"{name}.q{m.bits}", np.uint8, (rows, (cols * m.bits + 7) // 8)),
        _part(f"{name}.zeros", np.uint8, scales.shape))
    if isinstance(m, AffineQuantized) and m.perm is not None:
        parts += (_part(f"{name}.perm", np.int32, (cols,)),)
    return parts


def _matrix_unit(name: str, m: Any) -> safetensors.Unit:
    """The tensors of matrix (or norm) ``name``, as one unit of the writer, made when it is
    written: a :class:`Rounded` matrix is quantized then, a lazily read one read then."""
    if isinstance(m, Rounded):
        return safetensors.Unit(_quantized_parts(name, m), lambda: _quantized_arrays(name, m.quantize()))
    if isinstance(m, (AffineQuantized, Q8Tensor)):
        return safetensors.Unit(_quantized_parts(name, m), lambda: _quantized_arrays(name, m))
    if name.endswith(LAYER_NORM_NAMES) or name == "rms_final":
        return safetensors.Unit((_part(name, np.float32, np.shape(m)),), lambda: {name: np.asarray(m)})
    return safetensors.Unit((_part(f"{name}.weight", np.float32, np.shape(m)),),
                            lambda: {f"{name}.weight": np.asarray(m, dtype=np.float32)})


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
    affine = [m for m in matrices
              if isinstance(m, AffineQuantized) or isinstance(m, Rounded) and m.kind == "affine"]
    if not affine:
        return None
    partial = {m.group_size for m in affine if m.group_size < m.shape[1]}
    if len(partial) > 1:
        raise ArgumentError(f"all quantized matrices must share one group size, got {sorted(partial)}")
    group = partial.pop() if partial else -1
    for m in affine:
        cols = m.shape[1]
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
    tokenizer_spec: Optional[Mapping[str, Any]] = None,
    stop_ids: Iterable[int] = (),
) -> None:
    """Write a llama2rs model file. It is written to a temporary file beside ``path`` and renamed
    at the end, so a failure never leaves a partial file. ``progress(name, done, total)`` is
    called after each tensor. ``tokenizer_bin`` is llama2.c's tokenizer.bin, or with
    ``tokenizer_spec`` a byte-level BPE's ranks (see ``ByteLevelTokenizer.to_file_parts``);
    ``stop_ids`` end generation besides ``eos_id``."""
    config = weights.config
    if len(weights.layers) != config.n_layers:
        raise ArgumentError(f"expected {config.n_layers} layers, got {len(weights.layers)}")
    tokenizer = np.frombuffer(tokenizer_bin, dtype=np.uint8)
    units: list[safetensors.Unit] = []
    factors = weights.rope_freq_factors
    if factors is not None:
        factors = np.asarray(factors, dtype=np.float32)
        if factors.shape != (config.head_size // 2,) or not np.all(np.isfinite(factors) & (factors > 0)):
            raise ArgumentError(f"rope_freq_factors must be {config.head_size // 2} positive numbers")
        rope_freqs = factors
        units.append(safetensors.Unit((_part("rope_freqs", np.float32, factors.shape),), lambda: {"rope_freqs": rope_freqs}))
    stops = [int(t) for t in dict.fromkeys(stop_ids) if t not in (config.bos_id, config.eos_id)]
    if any(not 0 <= t < config.vocab_size for t in stops):
        raise ArgumentError(f"stop ids {stops} must be token ids below {config.vocab_size}")
    all_matrices: list[Matrix] = []
    for name, tensor in weights.named_tensors():
        units.append(_matrix_unit(name, tensor))
        if not name.endswith(LAYER_NORM_NAMES) and name != "rms_final":
            all_matrices.append(tensor)
    # Last: its length is any, and every tensor after it would start unaligned.
    units.append(safetensors.Unit((_part("tokenizer", np.uint8, tokenizer.shape),), lambda: {"tokenizer": tokenizer}))

    # The lowest version whose features are used, so older readers keep reading the rest (the
    # dtype of quantized-on-the-way scales is known once written: see ``finish`` below).
    newest = 3 if (tokenizer_spec or stops or factors is not None) else None
    meta = {"format": FORMAT_NAME, "format_version": "", "config": _config_json(config)}
    if tokenizer_spec:
        meta["tokenizer_spec"] = json.dumps(dict(tokenizer_spec))
    if stops:
        meta["stop_ids"] = json.dumps(stops)
    group = _affine_group_size(all_matrices)
    if group is not None:
        meta["affine_group_size"] = str(group)
    for key, value in (metadata or {}).items():
        meta.setdefault(key, str(value))

    def finish(dtypes: Mapping[str, str]) -> dict[str, str]:
        half_scales = any(name.endswith(".scales") and st == "F16" for name, st in dtypes.items())
        return {**meta, "format_version": str(newest or (2 if half_scales else 1))}

    # Matrices are written one at a time, as they are made (quantized, or read from a lazily
    # read checkpoint): see safetensors.write_units for the order of the tensors in the file.
    safetensors.write_units(path, units, finish, align=HEADER_ALIGN, progress=progress)


def is_llama2rs_file(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a readable safetensors file that says it is a llama2rs model."""
    try:
        header, _ = safetensors.read_header(path)
    except ModelFileError:
        return False
    return isinstance(header.get("__metadata__"), dict) and header["__metadata__"].get("format") == FORMAT_NAME


def tokenizer_parts(tokenizer: Any) -> tuple[bytes, Optional[dict[str, Any]]]:
    """What a llama2rs file stores of ``tokenizer``: its bytes, and for a byte-level BPE the
    ``tokenizer_spec`` that goes with them."""
    if hasattr(tokenizer, "to_file_parts"):
        data, spec = tokenizer.to_file_parts()
        return data, spec
    return tokenizer.to_bin_bytes(), None


def _meta_text(metadata: Mapping[str, Any], key: str, name: str) -> Optional[str]:
    """``__metadata__[key]`` (None if absent); safetensors metadata values are strings."""
    value = metadata.get(key)
    if value is not None and not isinstance(value, str):
        raise ModelFileError(f"{name}: __metadata__.{key} must be a string, got {type(value).__name__}")
    return value


def _meta_json(metadata: Mapping[str, Any], key: str, name: str, error: type = ModelFileError) -> Any:
    """``__metadata__[key]`` parsed as JSON (None if absent)."""
    text = _meta_text(metadata, key, name)
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise error(f"{name}: __metadata__.{key} is not valid JSON: {exc}") from None


def read_tokenizer(data: bytes, metadata: Mapping[str, str], vocab_size: int, name: str) -> Any:
    """The tokenizer a llama2rs file stores (``tokenizer`` bytes + ``tokenizer_spec``)."""
    spec = _meta_json(metadata, "tokenizer_spec", name, TokenizerError)
    if spec is None:
        from ..tokenizer import Tokenizer

        return Tokenizer.from_bytes(data, vocab_size, name)
    from ..bpe import ByteLevelTokenizer

    if not isinstance(spec, dict) or spec.get("type") != "byte_level_bpe":
        kind = spec.get("type") if isinstance(spec, dict) else spec
        raise TokenizerError(f"{name}: unknown tokenizer_spec type {str(kind)[:100]!r}")
    return ByteLevelTokenizer.from_file_parts(data, spec, vocab_size, name)


def stop_ids(metadata: Mapping[str, str], vocab_size: int, name: str) -> tuple[int, ...]:
    """A file's ``stop_ids`` (besides EOS), checked."""
    ids = _meta_json(metadata, "stop_ids", name)
    ids = [] if ids is None else ids
    if not isinstance(ids, list) or any(isinstance(t, bool) or not isinstance(t, int) for t in ids):
        raise ModelFileError(f"{name}: __metadata__.stop_ids must be a JSON list of token ids")
    if any(not 0 <= t < vocab_size for t in ids):
        raise ModelFileError(f"{name}: __metadata__.stop_ids {ids[:20]} holds ids outside [0, {vocab_size})")
    return tuple(ids)


def read_model(path: Union[str, os.PathLike]) -> tuple[Weights, bytes]:
    """Read a llama2rs file back with NumPy (memory-mapped): its weights and tokenizer bytes
    (:func:`read_tokenizer` makes the tokenizer of them).

    Raises :class:`ModelFileError` for a file that is not a well-formed llama2rs file (missing,
    mis-typed or mis-shaped tensors, bad metadata) and :class:`ConfigError` for a bad config."""
    header, _ = safetensors.read_header(path)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: not a llama2rs model file")
    version_text = _meta_text(meta, "format_version", str(path)) or "0"
    try:
        version = int(version_text)
    except ValueError:
        raise ModelFileError(f"{path}: format_version {version_text[:50]!r} is not an integer") from None
    if version > FORMAT_VERSION:
        raise ModelFileError(f"{path}: format version {version} is newer than {FORMAT_VERSION}")
    cfg = _meta_json(meta, "config", str(path))
    if not isinstance(cfg, dict):
        raise ModelFileError(f"{path}: __metadata__.config must be a JSON object")
    cfg.pop("rope_layout", None)
    try:
        config = Config(**cfg)
    except TypeError as exc:  # an unknown or missing field
        raise ConfigError(f"{path}: bad config: {exc}") from None
    arrays = safetensors.read(path, bf16_to_float32=False)
    group_text = _meta_text(meta, "affine_group_size", str(path))
    try:
        group = None if group_text is None else int(group_text)
    except ValueError:
        raise ModelFileError(f"{path}: affine_group_size {str(group_text)[:50]!r} is not an integer") from None

    def tensor(name: str, kinds: str, ndim: int) -> np.ndarray:
        if name not in arrays:
            raise ModelFileError(f"{path}: lacks tensor {name!r}")
        array = arrays[name]
        if array.dtype.kind not in kinds or array.ndim != ndim:
            raise ModelFileError(f"{path}: tensor {name!r} is {array.dtype} {list(array.shape)}, expected a "
                                 f"{ndim}-D tensor of kind {kinds!r}")
        return array

    def matrix(name: str) -> Optional[Matrix]:
        if f"{name}.weight" in arrays:
            return tensor(f"{name}.weight", "f", 2)
        if f"{name}.q8_0" in arrays:
            q, s = tensor(f"{name}.q8_0", "i", 2), tensor(f"{name}.q8_0_scales", "f", 2)
            if not s.shape[1] or q.shape[1] % s.shape[1]:
                raise ModelFileError(f"{path}: {name}.q8_0 {list(q.shape)} and its scales {list(s.shape)} do not fit")
            try:
                return Q8Tensor(q, s, q.shape[1] // s.shape[1])
            except ArgumentError as exc:
                raise ModelFileError(f"{path}: {name}: {exc}") from None
        for bits in (4, 8):
            if f"{name}.q{bits}" in arrays:
                packed = tensor(f"{name}.q{bits}", "u", 2)
                scales, zeros = tensor(f"{name}.scales", "f", 2), tensor(f"{name}.zeros", "u", 2)
                rows = scales.shape[0]
                cols = _cols_of(name, config)
                if packed.shape[0] != rows or packed.shape[1] * (8 // bits) < cols:
                    raise ModelFileError(f"{path}: {name}.q{bits} {list(packed.shape)} does not hold {rows} rows of "
                                         f"{cols} {bits}-bit values")
                if bits == 4:
                    q = np.empty((rows, packed.shape[1] * 2), dtype=np.uint8)
                    q[:, 0::2], q[:, 1::2] = packed & 15, packed >> 4
                    q = q[:, :cols]
                else:
                    q = np.asarray(packed)[:, :cols]
                gs = cols if group is None or group == -1 else min(group, cols)
                perm = tensor(f"{name}.perm", "iu", 1) if f"{name}.perm" in arrays else None
                try:
                    return AffineQuantized(np.ascontiguousarray(q, dtype=np.uint8), np.asarray(scales, dtype=np.float32),
                                           np.asarray(zeros), gs, bits, None if perm is None else np.asarray(perm))
                except ValueError as exc:  # AffineQuantized checks that its parts fit
                    raise ModelFileError(f"{path}: {name}: {exc}") from None
        return None

    layers = []
    for i in range(config.n_layers):
        layer: dict[str, Any] = {"rms_att": tensor(f"layers.{i}.rms_att", "f", 1),
                                 "rms_ffn": tensor(f"layers.{i}.rms_ffn", "f", 1)}
        for m in MATRIX_NAMES:
            layer[m] = matrix(f"layers.{i}.{m}")
        layers.append(layer)
    embedding = matrix("token_embedding")
    if embedding is None:
        raise ModelFileError(f"{path}: the token embedding is missing")
    quantization = _meta_json(meta, "quantization", str(path))
    factors = tensor("rope_freqs", "f", 1) if "rope_freqs" in arrays else None
    if factors is not None and factors.shape != (config.head_size // 2,):
        raise ModelFileError(f"{path}: rope_freqs has shape {list(factors.shape)}, expected [{config.head_size // 2}]")
    weights = Weights(config, embedding, layers, tensor("rms_final", "f", 1), matrix("classifier"), quantization,
                      dict(meta), None if factors is None else np.asarray(factors, dtype=np.float32))
    try:
        weights.check()
    except ArgumentError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    return weights, tensor("tokenizer", "u", 1).tobytes()


def _cols_of(name: str, config: Config) -> int:
    return config.hidden_dim if name.endswith(".w2") else config.dim
