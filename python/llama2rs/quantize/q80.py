"""llama2.c's Q8_0: int8 values with one float32 scale per group of consecutive values of a
row (``w ~= q * scale``), as ``export.py --version 2`` writes and ``runq.c`` reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ArgumentError

__all__ = ["Q8Tensor", "quantize_q80", "q8_group_size"]

F32 = np.dtype("<f4")
I8 = np.dtype("i1")


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


def q8_group_size(cols: int, requested: int) -> int:
    """llama2.c's rule: halve the requested group size until it divides the row length."""
    group = max(1, requested)
    while cols % group:
        group //= 2
    return group
