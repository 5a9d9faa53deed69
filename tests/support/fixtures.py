"""Random models for the tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from llama2rs.config import Config
from llama2rs.quantize.q80 import Q8Tensor
from llama2rs.weights import LAYER_NORM_NAMES, MATRIX_NAMES, Weights, dense, matrix_shapes

__all__ = ["random_weights", "from_stacked", "stacked", "stacked_shapes", "STACKED_NAMES", "poison_tensor"]

# The draw order (and per-layer stacking) of random_weights, kept from when the weights were
# llama2.c's stacked arrays so the same seed gives the same model.
STACKED_NAMES = ("token_embedding", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3",
                 "rms_final", "wcls")


def stacked_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """The shapes of :func:`stacked`'s arrays (llama2.c's ``weight_shapes``)."""
    per_matrix = matrix_shapes(config)
    per_matrix["wcls"] = per_matrix["classifier"]
    per_layer = LAYER_NORM_NAMES + MATRIX_NAMES
    return {name: ((config.n_layers,) if name in per_layer else ()) + per_matrix[name] for name in STACKED_NAMES}


def random_weights(config: Config, seed: int, shared_classifier: bool = True, scale: float = 1.0) -> Weights:
    """float32 random weights with well-conditioned activations and logits.

    Norm weights are ``1 + 0.1 * N(0, 1)``; every matrix (embedding and classifier
    included) is ``N(0, scale / sqrt(in_features))``, so each matmul roughly preserves the
    RMS of its input and the logits are O(1).
    """
    rng = np.random.default_rng(seed)
    drawn: dict = {}
    for name, shape in stacked_shapes(config).items():
        if name == "wcls" and shared_classifier:
            continue
        if name.startswith("rms"):
            values = 1.0 + 0.1 * rng.standard_normal(shape)  # shape
        else:
            values = rng.standard_normal(shape) * (scale / np.sqrt(shape[-1]))  # shape
        drawn[name] = values.astype(np.float32)
    if shared_classifier:
        drawn["wcls"] = drawn["token_embedding"]
    return from_stacked(config, drawn)


def from_stacked(config: Config, tensors: Mapping) -> Weights:
    """Weights from llama2.c's stacked layout (``tensors["wq"][layer]``; ``wcls`` the embedding
    itself when tied), as tests that transcribe llama2.c build them."""
    layers = [{name: tensors[name][i] for name in LAYER_NORM_NAMES + MATRIX_NAMES} for i in range(config.n_layers)]
    tied = tensors.get("wcls", tensors["token_embedding"]) is tensors["token_embedding"]
    return Weights(config, tensors["token_embedding"], layers, tensors["rms_final"], None if tied else tensors["wcls"])


def stacked(weights: Weights, dequantize: bool = False) -> dict:
    """llama2.c's stacked layout of ``weights`` (copies; ``wcls`` is the embedding when tied);
    with ``dequantize`` every tensor float32, quantized ones dequantized."""
    convert = dense if dequantize else (lambda m: m)
    out: dict = {"token_embedding": convert(weights.token_embedding), "rms_final": convert(weights.rms_final)}
    for name in LAYER_NORM_NAMES + MATRIX_NAMES:
        per_layer = [convert(layer[name]) for layer in weights.layers]
        if isinstance(per_layer[0], Q8Tensor):
            out[name] = Q8Tensor(np.stack([m.q for m in per_layer]), np.stack([m.scale for m in per_layer]),
                                 per_layer[0].group_size)
        else:
            out[name] = np.stack(per_layer)
    out["wcls"] = out["token_embedding"] if weights.tied else convert(weights.classifier)
    return out


def poison_tensor(src: Path, dst: Path, name: str, value: float, dtype: type) -> Path:
    """Copy our file `src` to `dst` with the first value of tensor `name` set to `value`."""
    data = bytearray(src.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    offset = 8 + header_len + header[name]["data_offsets"][0]
    raw = np.array([value], dtype=dtype).tobytes()
    data[offset:offset + len(raw)] = raw
    dst.write_bytes(bytes(data))
    return dst

