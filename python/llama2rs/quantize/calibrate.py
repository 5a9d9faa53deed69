"""Quantize a whole model: GPTQ with calibration (layer inputs from running the model itself),
round-to-nearest, or llama2.c's Q8_0.

GPTQ runs "true sequential" as GPTQModel does: within each layer, q/k/v are quantized from the
inputs of the float model so far, then o from the attention output computed with the quantized
q/k/v, then w1/w3, then w2; the next layer sees the output of the quantized layer.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import ArgumentError
from ..reference import embed, rope_cos_sin, transformer_layer
from ..weights import MATRIX_NAMES, Matrix, Weights, dense
from . import gptq
from .affine import AffineQuantized
from .q80 import q8_group_size
from .rounded import Rounded

__all__ = ["calibration_windows", "quantize_model"]

Progress = Callable[[str, int, int], None]

# What the token embedding and the classifier become: "q8" (Q8_0, the default: the classifier
# is the largest matrix a token reads, and fp32 made it 30% of TinyLlama's bytes per token),
# "same" (the layers' type, e.g. 4-bit), or "float" (kept as they are). The first is the default.
EMBEDDINGS = ("q8", "same", "float")
# Q8_0's group for them: llama.cpp's and llama2.c's block of 32 (1.125 bytes per weight).
EMBEDDING_GROUP = 32


def calibration_windows(token_ids: Sequence[int], window: int, max_windows: int, bos_id: int) -> list[list[int]]:
    """Consecutive windows of ``window`` tokens (each BOS + window-1 tokens of the text)."""
    body = [t for t in token_ids if t != bos_id]
    step = window - 1
    windows = [[bos_id] + body[i : i + step] for i in range(0, len(body) - step + 1, step)]
    if not windows and body:
        windows = [[bos_id] + body[:step]]
    return windows[:max_windows]


def _rounded(w: Matrix, mode: str, bits: int, group_size: int, sym: bool) -> Rounded:
    """``w`` to be rounded to nearest when it is written: Q8_0 (``mode`` ``"q8"``) or affine."""
    if mode == "q8":
        return Rounded.q80(w, q8_group_size(w.shape[1], group_size))
    return Rounded.affine(w, bits, group_size, sym)


def quantize_model(
    weights: Weights,
    mode: str,
    method: str = "gptq",
    group_size: int = 128,
    act_order: bool = False,
    sym: bool = False,
    calibration: Optional[list[list[int]]] = None,
    embeddings: str = "q8",
    percdamp: float = 0.01,
    progress: Optional[Progress] = None,
) -> Weights:
    """A quantized copy of float ``weights``. ``mode``: ``"q4"`` (affine 4-bit, ``method``
    ``"gptq"`` or ``"rtn"``), ``"q8"`` (llama2.c's Q8_0, round-to-nearest). The embedding and
    classifier (``embeddings``, see ``EMBEDDINGS``) are rounded to nearest: Q8_0 in groups of
    ``EMBEDDING_GROUP`` by default, the layers' type with ``"same"``, or kept with ``"float"``.

    What is rounded to nearest (every matrix but GPTQ's layers) is returned as a
    :class:`~.rounded.Rounded`, quantized only when it is written (or otherwise used), so an
    export holds one matrix at a time; GPTQ's layers are quantized here, in order."""
    if embeddings not in EMBEDDINGS:
        raise ArgumentError(f"embeddings must be one of {', '.join(EMBEDDINGS)}, got {embeddings!r}")
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

    config = weights.config
    n_steps = config.n_layers * len(MATRIX_NAMES) + 1
    step = 0

    def tick(name: str) -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(name, step, n_steps)

    embedding: Any = weights.token_embedding
    classifier: Any = weights.classifier
    if embeddings != "float":
        def compact(w: Matrix) -> Rounded:
            if embeddings == "same":
                return _rounded(w, mode, bits, group_size, sym)
            return Rounded.q80(w, q8_group_size(w.shape[1], EMBEDDING_GROUP))

        embedding = compact(embedding)
        classifier = None if classifier is None else compact(classifier)

    if not gptq_mode:  # every matrix is rounded as it is written: nothing to do (or show) now
        def rounded(name: str, m: Matrix) -> Any:
            return _rounded(m, mode, bits, group_size, sym)

        return weights.map_matrices(rounded, embeddings=False).replace(
            token_embedding=embedding, classifier=classifier, metadata=dict(weights.metadata))
    tick("embeddings")

    assert calibration  # checked above
    seqs = np.asarray([w for w in calibration if len(w) == len(calibration[0])], dtype=np.int64)  # [S, T]
    cos, sin = rope_cos_sin(config.head_size, seqs.shape[1], config.rope_theta)  # [T, hs/2]
    x = np.stack([embed(weights.token_embedding, s) for s in seqs])  # [S, T, dim]

    layers_out: list[dict] = []
    for i, layer in enumerate(weights.layers):
        out = {"rms_att": layer["rms_att"], "rms_ffn": layer["rms_ffn"]}

        def quantize_from(name: str, inputs: np.ndarray) -> AffineQuantized:
            """GPTQ of ``layer[name]`` from its inputs in the partly quantized model so far."""
            w = dense(layer[name])
            h = gptq.HessianAccumulator(w.shape[1])
            h.add(inputs.reshape(-1, w.shape[1]))
            out[name] = gptq.gptq_quantize(w, h.hessian, bits=bits, group_size=group_size, act_order=act_order,
                                           sym=sym, percdamp=percdamp)
            tick(f"layers.{i}.{name}")
            return out[name]

        x = transformer_layer(config, layer, x, cos, sin, pick=quantize_from)
        layers_out.append({name: out[name] for name in ("rms_att", "rms_ffn", *MATRIX_NAMES)})
    return weights.replace(token_embedding=embedding, layers=layers_out, classifier=classifier,
                           metadata=dict(weights.metadata))
