"""Affine (zero-point) group quantization of weight matrices: the in-memory form shared by the
GPTQ/RTN quantizers, the GPTQ checkpoint importer and the model-file writer.

A matrix ``W`` of shape ``[rows, cols]`` (rows = output features, cols = input features) is
stored as integers ``q`` in ``[0, 2**bits)`` with, per row and per group of ``group_size``
consecutive *stored* columns, a float scale and an integer zero point:

    W_stored[r, c] = scales[r, c // group_size] * (q[r, c] - zeros[r, c // group_size])

With act-order (GPTQ ``desc_act``) the columns are stored permuted so that every group is
contiguous: stored column ``j`` holds input feature ``perm[j]``, i.e. ``W[:, perm] == W_stored``.
A kernel then permutes the input vector once (``x[perm]``) and runs the plain grouped product.
The last group may be shorter when ``cols`` is not a multiple of ``group_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["AffineQuantized", "n_groups"]


def n_groups(cols: int, group_size: int) -> int:
    return -(-cols // group_size)


@dataclass(frozen=True)
class AffineQuantized:
    q: np.ndarray  # uint8 [rows, cols], values in [0, 2**bits)
    scales: np.ndarray  # float32 [rows, n_groups]
    zeros: np.ndarray  # uint8 [rows, n_groups], values in [0, 2**bits)
    group_size: int  # stored columns per group (cols for per-channel quantization)
    bits: int  # 4 or 8
    perm: Optional[np.ndarray] = None  # int32 [cols] or None (identity)

    def __post_init__(self) -> None:
        rows, cols = self.q.shape
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits}")
        if not 1 <= self.group_size <= cols:
            raise ValueError(f"group_size must be in [1, {cols}], got {self.group_size}")
        groups = n_groups(cols, self.group_size)
        if self.q.dtype != np.uint8 or self.zeros.dtype != np.uint8:
            raise ValueError("q and zeros must be uint8")
        if self.scales.dtype != np.float32:
            raise ValueError("scales must be float32")
        if self.scales.shape != (rows, groups) or self.zeros.shape != (rows, groups):
            raise ValueError(
                f"scales/zeros must be [{rows}, {groups}], got {self.scales.shape} / {self.zeros.shape}"
            )
        top = (1 << self.bits) - 1
        if self.q.size and int(self.q.max()) > top or self.zeros.size and int(self.zeros.max()) > top:
            raise ValueError(f"q and zeros must be < {1 << self.bits}")
        if self.perm is not None:
            perm = np.asarray(self.perm)
            if perm.shape != (cols,) or not np.array_equal(np.sort(perm), np.arange(cols)):
                raise ValueError("perm must be a permutation of range(cols)")

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape  # type: ignore[return-value]

    def dequantize_stored(self) -> np.ndarray:
        """float32 [rows, cols] in stored (permuted) column order."""
        rows, cols = self.q.shape
        group_of = np.arange(cols) // self.group_size  # [cols]
        return (self.scales[:, group_of] * (self.q.astype(np.float32) - self.zeros[:, group_of])).astype(
            np.float32
        )

    def dequantize(self) -> np.ndarray:
        """float32 [rows, cols] in the original input-feature order."""
        stored = self.dequantize_stored()
        if self.perm is None:
            return stored
        w = np.empty_like(stored)
        w[:, self.perm] = stored
        return w
