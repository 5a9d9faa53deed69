"""Quantize a whole model: GPTQ with calibration (layer inputs from running the model itself),
round-to-nearest, or llama2.c's Q8_0.

GPTQ runs "true sequential" as GPTQModel does: within each layer, q/k/v are quantized from the
inputs of the float model so far, then o from the attention output computed with the quantized
q/k/v, then w1/w3, then w2; the next layer sees the output of the quantized layer.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from . import gptq
from .config import Config
from .errors import ArgumentError
from .l2rs import MATRIX_NAMES, Matrix, ModelWeights
from .llama2c import Q8Tensor, quantize_q80
from .quant import AffineQuantized
from .reference import apply_rope, linear, rmsnorm, rope_cos_sin, silu, softmax_rows

__all__ = ["calibration_windows", "quantize_model", "q8_group_size"]

Progress = Callable[[str, int, int], None]


def calibration_windows(token_ids: Sequence[int], window: int, max_windows: int, bos_id: int) -> list[list[int]]:
    """Consecutive windows of ``window`` tokens (each BOS + window-1 tokens of the text)."""
    body = [t for t in token_ids if t != bos_id]
    step = window - 1
    windows = [[bos_id] + body[i : i + step] for i in range(0, len(body) - step + 1, step)]
    if not windows and body:
        windows = [[bos_id] + body[:step]]
    return windows[:max_windows]


def q8_group_size(cols: int, requested: int) -> int:
    """llama2.c's rule: halve the requested group size until it divides the row length."""
    group = max(1, requested)
    while cols % group:
        group //= 2
    return group


def _float(m: Matrix) -> np.ndarray:
    if isinstance(m, (AffineQuantized, Q8Tensor)):
        return m.dequantize()
    return np.asarray(m, dtype=np.float32)


def _quantize_rtn(w: np.ndarray, mode: str, bits: int, group_size: int, sym: bool) -> Matrix:
    if mode == "q8":
        return quantize_q80(w, q8_group_size(w.shape[1], group_size))
    return gptq.quantize_rtn(w, bits=bits, group_size=group_size, sym=sym)


def quantize_model(
    config: Config,
    weights: ModelWeights,
    mode: str,
    method: str = "gptq",
    group_size: int = 128,
    act_order: bool = False,
    sym: bool = False,
    calibration: Optional[list[list[int]]] = None,
    quantize_embeddings: bool = False,
    percdamp: float = 0.01,
    progress: Optional[Progress] = None,
) -> ModelWeights:
    """A quantized copy of float ``weights``. ``mode``: ``"q4"`` (affine 4-bit, ``method``
    ``"gptq"`` or ``"rtn"``), ``"q8"`` (llama2.c's Q8_0, round-to-nearest). The embedding and
    classifier stay float unless ``quantize_embeddings`` (then round-to-nearest)."""
    if mode not in ("q4", "q8"):
        raise ArgumentError(f"quantization mode must be 'q4' or 'q8', got {mode!r}")
    if method not in ("gptq", "rtn"):
        raise ArgumentError(f"method must be 'gptq' or 'rtn', got {method!r}")
    if mode == "q8" and method == "gptq":
        raise ArgumentError("q8 is llama2.c's Q8_0, made by rounding: use --method rtn (GPTQ is for q4)")
    if group_size == 0 or group_size < -1:
        raise ArgumentError(f"group size must be positive or -1 (per channel), got {group_size}")
    if mode == "q8" and group_size == -1:
        raise ArgumentError("Q8_0 needs a positive group size")
    bits = 4
    gptq_mode = mode == "q4" and method == "gptq"
    if gptq_mode and not calibration:
        raise ArgumentError("GPTQ needs calibration text (--calibration FILE) with at least one window of tokens")

    n_steps = config.n_layers * len(MATRIX_NAMES) + 1
    step = 0

    def tick(name: str) -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(name, step, n_steps)

    def plain(w: np.ndarray) -> Matrix:
        return _quantize_rtn(w, mode, bits, group_size, sym)

    embedding: Matrix = weights.token_embedding
    classifier = weights.classifier
    if quantize_embeddings:
        embedding = plain(_float(embedding))
        classifier = None if classifier is None else plain(_float(classifier))
    tick("embeddings")

    layers_out: list[dict] = []
    if not gptq_mode:
        for i, layer in enumerate(weights.layers):
            out = {"rms_att": layer["rms_att"], "rms_ffn": layer["rms_ffn"]}
            for name in MATRIX_NAMES:
                out[name] = plain(_float(layer[name]))
                tick(f"layers.{i}.{name}")
            layers_out.append(out)
        return ModelWeights(embedding, layers_out, weights.rms_final, classifier, dict(weights.metadata))

    def quantize_with(inputs: np.ndarray, w: np.ndarray) -> AffineQuantized:
        h = gptq.HessianAccumulator(w.shape[1])
        h.add(inputs.reshape(-1, w.shape[1]))
        return gptq.gptq_quantize(w, h.hessian, bits=bits, group_size=group_size, act_order=act_order,
                                  sym=sym, percdamp=percdamp)

    c = config
    assert calibration  # checked above
    seqs = np.asarray([w for w in calibration if len(w) == len(calibration[0])], dtype=np.int64)  # [S, T]
    n_seq, n_pos = seqs.shape
    cos, sin = rope_cos_sin(c.head_size, n_pos, c.rope_theta)  # [T, hs/2]
    x = np.stack([_float(weights.token_embedding)[s].astype(np.float64) for s in seqs])  # [S, T, dim]
    causal = np.triu(np.ones((n_pos, n_pos), dtype=bool), k=1)  # [T, T]

    for i, layer in enumerate(weights.layers):
        out = {"rms_att": layer["rms_att"], "rms_ffn": layer["rms_ffn"]}
        xn = rmsnorm(x, layer["rms_att"], c.norm_eps)  # [S, T, dim]
        for name in ("wq", "wk", "wv"):
            out[name] = quantize_with(xn, _float(layer[name]))
            tick(f"layers.{i}.{name}")
        mixed = np.empty_like(x)  # [S, T, dim] attention output before wo
        for s in range(n_seq):
            q = apply_rope(linear(xn[s], out["wq"]).reshape(n_pos, c.n_heads, c.head_size), cos, sin)
            k = apply_rope(linear(xn[s], out["wk"]).reshape(n_pos, c.n_kv_heads, c.head_size), cos, sin)
            v = linear(xn[s], out["wv"]).reshape(n_pos, c.n_kv_heads, c.head_size)
            k, v = np.repeat(k, c.kv_mul, axis=1), np.repeat(v, c.kv_mul, axis=1)  # [T, H, hs]
            scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(c.head_size)  # [H, T, T]
            probs = softmax_rows(np.where(causal[None], -np.inf, scores))
            mixed[s] = np.einsum("hts,shd->thd", probs, v).reshape(n_pos, c.dim)
        out["wo"] = quantize_with(mixed, _float(layer["wo"]))
        tick(f"layers.{i}.wo")
        x = x + linear(mixed.reshape(-1, c.dim), out["wo"]).reshape(x.shape)
        xn = rmsnorm(x, layer["rms_ffn"], c.norm_eps)
        for name in ("w1", "w3"):
            out[name] = quantize_with(xn, _float(layer[name]))
            tick(f"layers.{i}.{name}")
        flat = xn.reshape(-1, c.dim)
        hidden = silu(linear(flat, out["w1"])) * linear(flat, out["w3"])  # [S*T, hidden]
        out["w2"] = quantize_with(hidden, _float(layer["w2"]))
        tick(f"layers.{i}.w2")
        x = x + linear(hidden, out["w2"]).reshape(x.shape)
        layers_out.append(out)
    return ModelWeights(embedding, layers_out, weights.rms_final, classifier, dict(weights.metadata))
