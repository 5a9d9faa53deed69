"""Torch-free GPTQ and round-to-nearest (RTN) weight quantization, in numpy.

The algorithm follows GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers") and the conventions of its reference implementation
(IST-DASLab/gptq ``fasterquant`` / ``Quantizer``, as also used by AutoGPTQ/GPTQModel):

* Quantizer, per row and per group of columns (asymmetric by default)::

      xmin = min(w.min(), 0); xmax = max(w.max(), 0)
      sym:  xmax = max(|xmin|, xmax); xmin = -xmax if xmin < 0
      xmin == xmax == 0  ->  xmin, xmax = -1, +1
      scale = (xmax - xmin) / maxq
      zero  = round(-xmin / scale)          (sym: (maxq + 1) / 2)
      q     = clamp(round(w / scale) + zero, 0, maxq)

  ``round`` is half-to-even (numpy and torch agree). Note the reference's symmetric quirk kept
  here: a group with no negative value keeps ``xmin = 0`` and the zero point ``(maxq+1)/2``, so
  only the upper half of the grid is used and values above ``(maxq-1)/2 * scale`` clamp.

* GPTQ: ``H = 2/n X^T X``; dead inputs (``H[i,i] == 0``) get ``H[i,i] = 1`` and a zero weight;
  optional act-order (columns processed by descending ``diag(H)``); ``percdamp * mean(diag H)``
  added to the diagonal; the upper Cholesky factor of ``H^-1`` drives the column-by-column
  quantization with error feedback, in blocks of ``block_size`` columns with lazy updates of
  the later columns.

Results are :class:`~llama2rs.quantize.affine.AffineQuantized`; with act-order the groups are formed in
processing order, so the stored columns are permuted (stored column ``j`` = input ``perm[j]``).

Shapes: ``w`` is ``[rows, cols]`` = ``[out_features, in_features]`` (the layer computes
``y = W @ x``); calibration inputs are ``[n, cols]``.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from .affine import AffineQuantized, n_groups

__all__ = [
    "HessianAccumulator",
    "find_params",
    "quantize_to_int",
    "quantize_rtn",
    "gptq_quantize",
    "layer_output_error",
]

_MAX_DAMP_RETRIES = 6


def _maxq(bits: int) -> int:
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    return (1 << bits) - 1


def _as_weight(w: np.ndarray) -> np.ndarray:
    arr = np.asarray(w)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"weight must be a non-empty 2-D [rows, cols] array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"weight must be numeric, got dtype {arr.dtype}")
    out = arr.astype(np.float64)  # always a fresh copy
    if not np.all(np.isfinite(out)):
        raise ValueError("weight contains NaN or Inf")
    return out


def _group_size(group_size: int, cols: int) -> int:
    """Columns per group as stored (``-1`` or anything >= cols means one group per row)."""
    if group_size == -1:
        return cols
    if group_size < 1:
        raise ValueError(f"group_size must be -1 (per-channel) or >= 1, got {group_size}")
    return min(group_size, cols)


def find_params(w: np.ndarray, bits: int = 4, sym: bool = False,
                half_scales: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Fit the reference GPTQ quantizer to each row of ``w`` ([rows, k], one group per row).

    Returns ``(scale float32 [rows], zero uint8 [rows])``. The scale is rounded to float32 (the
    stored precision) *before* the zero point is derived from it, so that quantizing with the
    returned pair reproduces exactly what is stored. ``half_scales`` rounds it to fp16 instead
    where it is in fp16's normal range (the file then stores it in 2 bytes; GPTQ tools round to
    fp16 only when packing, after quantizing with the float32 scale).
    """
    maxq = _maxq(bits)
    x = np.asarray(w, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"find_params expects a [rows, k>0] array, got shape {x.shape}")
    xmin = np.minimum(x.min(axis=1), 0.0)
    xmax = np.maximum(x.max(axis=1), 0.0)
    if sym:
        xmax = np.maximum(np.abs(xmin), xmax)
        neg = xmin < 0
        xmin[neg] = -xmax[neg]
    both_zero = (xmin == 0) & (xmax == 0)
    xmin[both_zero] = -1.0
    xmax[both_zero] = 1.0
    scale32 = ((xmax - xmin) / maxq).astype(np.float32)
    # Guard against a range so small that the float32 scale underflows to 0.
    scale32 = np.maximum(scale32, np.finfo(np.float32).tiny)
    if half_scales:
        normal = (scale32 >= np.finfo(np.float16).tiny) & (scale32 <= np.finfo(np.float16).max)
        scale32 = np.where(normal, scale32.astype(np.float16).astype(np.float32), scale32)
    if sym:
        zero = np.full(x.shape[0], (maxq + 1) // 2, dtype=np.float64)
    else:
        zero = np.clip(np.round(-xmin / scale32.astype(np.float64)), 0, maxq)
    return scale32, zero.astype(np.uint8)


def quantize_to_int(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int = 4) -> np.ndarray:
    """``clamp(round(w / scale) + zero, 0, maxq)`` as uint8; ``scale``/``zero`` are per row
    ([rows]) and broadcast over the columns of ``w`` ([rows, k]) (or ``w`` is [rows])."""
    maxq = _maxq(bits)
    x = np.asarray(w, dtype=np.float64)
    s = np.asarray(scale, dtype=np.float64)
    z = np.asarray(zero, dtype=np.float64)
    if x.ndim == 2:
        s = s[:, None]
        z = z[:, None]
    return np.clip(np.round(x / s) + z, 0, maxq).astype(np.uint8)


class HessianAccumulator:
    """Running ``H = 2/n * sum_k x_k^T x_k`` over calibration inputs, in float64.

    Accumulates exactly like the reference ``GPTQ.add_batch`` for linear layers (a running mean,
    rescaled on every batch): ``H *= n_old / n_new; H += (2 / n_new) * x^T x``.
    """

    def __init__(self, cols: int) -> None:
        if cols < 1:
            raise ValueError(f"cols must be >= 1, got {cols}")
        self.cols = int(cols)
        self._h = np.zeros((self.cols, self.cols), dtype=np.float64)
        self._count = 0

    def add(self, x: np.ndarray) -> None:
        """Add calibration inputs ``x`` of shape ``[n, cols]`` (any leading dims are flattened)."""
        arr = np.asarray(x)
        if arr.ndim == 0 or arr.shape[-1] != self.cols:
            raise ValueError(f"inputs must have last dimension {self.cols}, got shape {arr.shape}")
        arr = arr.reshape(-1, self.cols).astype(np.float64)
        n = arr.shape[0]
        if n == 0:
            return
        if not np.all(np.isfinite(arr)):
            raise ValueError("calibration inputs contain NaN or Inf")
        self._h *= self._count / (self._count + n)
        self._count += n
        arr *= np.sqrt(2.0 / self._count)
        self._h += arr.T @ arr

    @property
    def hessian(self) -> np.ndarray:
        """float64 ``[cols, cols]`` (a copy)."""
        return self._h.copy()

    @property
    def count(self) -> int:
        """Number of input rows accumulated so far."""
        return self._count


def quantize_rtn(w: np.ndarray, bits: int = 4, group_size: int = 128, sym: bool = False) -> AffineQuantized:
    """Round-to-nearest baseline: the GPTQ quantizer fitted and applied per row and group."""
    wf = _as_weight(w)
    rows, cols = wf.shape
    gs = _group_size(group_size, cols)
    groups = n_groups(cols, gs)
    q = np.empty((rows, cols), dtype=np.uint8)
    scales = np.empty((rows, groups), dtype=np.float32)
    zeros = np.empty((rows, groups), dtype=np.uint8)
    for g in range(groups):
        sl = slice(g * gs, min((g + 1) * gs, cols))
        s, z = find_params(wf[:, sl], bits, sym, half_scales=bits == 4)
        scales[:, g] = s
        zeros[:, g] = z
        q[:, sl] = quantize_to_int(wf[:, sl], s, z, bits)
    return AffineQuantized(q=q, scales=scales, zeros=zeros, group_size=gs, bits=bits, perm=None)


def _inverse_hessian_factor(h: np.ndarray, percdamp: float) -> np.ndarray:
    """Upper Cholesky factor ``U`` of ``(H + damp*I)^-1`` (``U^T U = (H + damp I)^-1``).

    ``damp = percdamp * mean(diag H)``; if a factorization fails the damping is multiplied by 10
    (up to a few times) with a warning.
    """
    cols = h.shape[0]
    mean_diag = float(np.mean(np.diag(h)))
    damp = percdamp * mean_diag
    eye = np.eye(cols, dtype=np.float64)
    last_error: Optional[Exception] = None
    for attempt in range(_MAX_DAMP_RETRIES + 1):
        try:
            lower = np.linalg.cholesky(h + damp * eye)  # H = L L^T
            lower_inv = np.linalg.inv(lower)
            hinv = lower_inv.T @ lower_inv  # cholesky_inverse: H^-1 = L^-T L^-1
            hinv = 0.5 * (hinv + hinv.T)
            upper = np.linalg.cholesky(hinv).T  # H^-1 = U^T U
            if not np.all(np.isfinite(upper)):
                raise np.linalg.LinAlgError("non-finite inverse Cholesky factor")
        except np.linalg.LinAlgError as exc:
            last_error = exc
            new_damp = damp * 10.0 if damp > 0 else 1e-6 * max(mean_diag, 1e-12)
            if attempt < _MAX_DAMP_RETRIES:
                warnings.warn(
                    f"GPTQ: Hessian not positive definite with damping {damp:.3g} "
                    f"(percdamp={percdamp}); retrying with damping {new_damp:.3g}",
                    RuntimeWarning,
                    stacklevel=3,
                )
            damp = new_damp
            continue
        return upper
    raise np.linalg.LinAlgError(
        f"GPTQ: Cholesky of the damped Hessian failed even after {_MAX_DAMP_RETRIES} retries "
        f"with 10x more damping each: {last_error}"
    )


def gptq_quantize(
    w: np.ndarray,
    hessian: np.ndarray,
    bits: int = 4,
    group_size: int = 128,
    act_order: bool = False,
    sym: bool = False,
    percdamp: float = 0.01,
    block_size: int = 128,
) -> AffineQuantized:
    """Quantize ``w`` ([rows, cols]) with GPTQ given the layer-input Hessian ``[cols, cols]``
    (``2/n X^T X``, e.g. from :class:`HessianAccumulator`).

    ``group_size=-1`` is per-channel (one group per row). With ``act_order`` the columns are
    processed (and stored) in order of descending ``diag(H)``; the returned ``perm`` maps stored
    column ``j`` to input feature ``perm[j]``. Without it ``perm`` is ``None``.

    At the start of every group (in processing order) the quantizer is fitted to the group's
    columns of the *current* weights, i.e. including the error feedback of every column already
    quantized. The result does not depend on ``block_size`` (a speed knob) up to rounding.
    """
    maxq = _maxq(bits)
    wf = _as_weight(w)
    rows, cols = wf.shape
    gs = _group_size(group_size, cols)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if not np.isfinite(percdamp) or percdamp < 0:
        raise ValueError(f"percdamp must be a finite number >= 0, got {percdamp}")
    h = np.array(hessian, dtype=np.float64)  # copy
    if h.shape != (cols, cols):
        raise ValueError(f"hessian must be [{cols}, {cols}], got {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("hessian contains NaN or Inf")
    groups = n_groups(cols, gs)

    # Per-channel: the reference fits the quantizer once, on the original weights (before
    # dead columns are zeroed).
    per_channel = gs == cols
    if per_channel:
        scale_pc, zero_pc = find_params(wf, bits, sym, half_scales=bits == 4)

    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    wf[:, dead] = 0.0

    perm: Optional[np.ndarray] = None
    if act_order:
        # Stable sort: ties keep their original order (torch.argsort gives no such promise).
        perm = np.argsort(-np.diag(h), kind="stable")
        wf = wf[:, perm]
        h = h[perm][:, perm]

    hinv = _inverse_hessian_factor(h, percdamp)

    # Work on the transpose ([cols, rows]) so one column of W is a contiguous row.
    wt = np.ascontiguousarray(wf.T)
    q = np.empty((cols, rows), dtype=np.uint8)
    scales = np.empty((groups, rows), dtype=np.float32)
    zeros = np.empty((groups, rows), dtype=np.uint8)
    if per_channel:
        scales[0] = scale_pc
        zeros[0] = zero_pc

    scale64 = np.empty(rows, dtype=np.float64)
    zero64 = np.empty(rows, dtype=np.float64)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        count = i2 - i1
        w1 = wt[i1:i2].copy()  # [count, rows]
        err1 = np.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(count):
            col = i1 + i
            if col % gs == 0:
                g = col // gs
                if not per_channel:
                    g_end = min(col + gs, cols)
                    # Current (error-updated) values of the group's columns: the in-block ones
                    # live in w1, the later ones still lack this block's pending update.
                    current = w1[i : min(g_end, i2) - i1]
                    if g_end > i2:
                        later = wt[i2:g_end] - hinv[i1:i2, i2:g_end].T @ err1
                        current = np.concatenate([current, later], axis=0)
                    s, z = find_params(current.T, bits, sym, half_scales=bits == 4)
                    scales[g] = s
                    zeros[g] = z
                scale64[:] = scales[g]
                zero64[:] = zeros[g]
            wcol = w1[i]
            qcol = np.clip(np.round(wcol / scale64) + zero64, 0, maxq)
            q[col] = qcol
            deq = scale64 * (qcol - zero64)
            err = (wcol - deq) / hinv1[i, i]
            w1[i:] -= np.outer(hinv1[i, i:], err)
            err1[i] = err
        wt[i2:] -= hinv[i1:i2, i2:].T @ err1

    return AffineQuantized(
        q=np.ascontiguousarray(q.T),
        scales=np.ascontiguousarray(scales.T),
        zeros=np.ascontiguousarray(zeros.T),
        group_size=gs,
        bits=bits,
        perm=None if perm is None else perm.astype(np.int32),
    )


def layer_output_error(w: np.ndarray, wq_dequant: np.ndarray, x: np.ndarray) -> float:
    """``||x W^T - x Wq^T||_F^2 / n`` for inputs ``x`` of shape ``[n, cols]`` (in float64)."""
    wa = np.asarray(w, dtype=np.float64)
    wb = np.asarray(wq_dequant, dtype=np.float64)
    if wa.shape != wb.shape or wa.ndim != 2:
        raise ValueError(f"weights must be 2-D and of equal shape, got {wa.shape} / {wb.shape}")
    xa = np.asarray(x, dtype=np.float64).reshape(-1, wa.shape[1])
    n = xa.shape[0]
    if n == 0:
        raise ValueError("x has no rows")
    diff = xa @ (wa - wb).T
    return float(np.sum(diff * diff) / n)
