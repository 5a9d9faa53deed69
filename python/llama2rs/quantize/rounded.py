"""Round-to-nearest quantization put off until a matrix is written.

:class:`Rounded` stands for a float matrix that is to become Q8_0 (:func:`~.q80.quantize_q80`) or
affine groups (:func:`~.gptq.quantize_rtn`, as ``--method rtn`` makes them). Nothing is computed
when it is made; :meth:`Rounded.quantize` reads the float matrix (a lazily read checkpoint
tensor is read then), quantizes it and returns the usual :class:`~.q80.Q8Tensor` or
:class:`~.affine.AffineQuantized`. The model writer (:func:`llama2rs.formats.l2rs.write_model`)
calls it as it writes each matrix and drops the result after, so exporting a model holds one
matrix at a time, never the whole quantized model.

Both quantizers work row by row, so :meth:`Rounded.quantize` runs them on blocks of rows
(``ROW_BLOCK_BYTES`` of float64 at a time) to bound their temporaries; the result is the same,
bit for bit, as one call on the whole matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from ..weights import dense
from . import gptq
from .affine import AffineQuantized, n_groups
from .q80 import Q8Tensor, quantize_q80

__all__ = ["Rounded", "ROW_BLOCK_BYTES"]

# float64 bytes of rows given to a quantizer at once (quantize_rtn widens to float64).
ROW_BLOCK_BYTES = 32 << 20


@dataclass(frozen=True, eq=False)
class Rounded:
    """A float matrix ``[rows, cols]`` to be rounded to nearest when it is used (see the module).

    ``kind`` is ``"q8_0"`` (``group_size`` values per float32 scale, dividing ``cols``) or
    ``"affine"`` (``bits`` 4 or 8, ``group_size`` columns per group as stored, i.e. at most
    ``cols``; ``sym`` as :func:`~.gptq.quantize_rtn`). ``source`` is any matrix
    :func:`~llama2rs.weights.dense` reads: an array, a memory map, a lazily read
    :class:`~llama2rs.formats.safetensors.StoredTensor`, a quantized matrix."""

    source: Any
    kind: str
    group_size: int
    bits: int = 8
    sym: bool = False

    def __post_init__(self) -> None:
        rows, cols = self.shape
        if self.kind not in ("q8_0", "affine"):
            raise ValueError(f"kind must be 'q8_0' or 'affine', got {self.kind!r}")
        if self.kind == "q8_0" and (self.group_size < 1 or cols % self.group_size or self.bits != 8):
            raise ValueError(f"Q8_0 groups of {self.group_size} do not divide {cols} columns")
        if self.kind == "affine" and (self.bits not in (4, 8) or not 1 <= self.group_size <= cols):
            raise ValueError(f"affine {self.bits}-bit groups of {self.group_size} do not fit {cols} columns")

    @classmethod
    def q80(cls, source: Any, group_size: int) -> "Rounded":
        return cls(source, "q8_0", group_size)

    @classmethod
    def affine(cls, source: Any, bits: int, group_size: int, sym: bool = False) -> "Rounded":
        """``group_size`` as :func:`~.gptq.quantize_rtn` takes it (``-1``: one group per row)."""
        cols = source.shape[1]
        stored = cols if group_size == -1 else min(group_size, cols)
        return cls(source, "affine", stored, bits, sym)

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.source.shape
        return int(rows), int(cols)

    @property
    def n_groups(self) -> int:
        return n_groups(self.shape[1], self.group_size)

    def quantize(self) -> Union[Q8Tensor, AffineQuantized]:
        """The quantized matrix, computed now (and not kept)."""
        w = dense(self.source)  # [rows, cols] float32 (a quantized source dequantized)
        rows, cols = self.shape
        if w.shape != (rows, cols):
            raise ValueError(f"the source read as {w.shape}, expected {(rows, cols)}")
        step = max(1, ROW_BLOCK_BYTES // (8 * cols))
        blocks = [slice(r, min(r + step, rows)) for r in range(0, rows, step)]
        if self.kind == "q8_0":
            q8 = np.empty((rows, cols), dtype=np.int8)
            scale = np.empty((rows, cols // self.group_size), dtype=np.float32)
            for sl in blocks:
                part = quantize_q80(w[sl], self.group_size)
                q8[sl], scale[sl] = part.q, part.scale
            return Q8Tensor(q8, scale, self.group_size)
        q = np.empty((rows, cols), dtype=np.uint8)
        scales = np.empty((rows, self.n_groups), dtype=np.float32)
        zeros = np.empty((rows, self.n_groups), dtype=np.uint8)
        for sl in blocks:
            aq = gptq.quantize_rtn(w[sl], bits=self.bits, group_size=self.group_size, sym=self.sym)
            q[sl], scales[sl], zeros[sl] = aq.q, aq.scales, aq.zeros
        return AffineQuantized(q, scales, zeros, self.group_size, self.bits)

    def dequantize(self) -> np.ndarray:
        return self.quantize().dequantize()

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
        """The dequantized matrix (so :func:`llama2rs.weights.dense` reads it like the others)."""
        w = self.dequantize()
        return w if dtype is None else w.astype(dtype, copy=False)
