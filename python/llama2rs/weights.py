"""A whole model's weights in memory: the one layout every reader in :mod:`llama2rs.formats`
returns, every writer takes, the quantizers transform and :mod:`llama2rs.reference` runs.

Matrices are ``[out_features, in_features]`` (``y = W @ x``), each a float array (float32, or
float16 left memory-mapped from a file), a :class:`~llama2rs.quantize.q80.Q8Tensor` or an
:class:`~llama2rs.quantize.affine.AffineQuantized`; or, so that export holds one matrix at a
time, something ``np.asarray`` reads as a float matrix when it is used: a HuggingFace tensor not
yet read (:class:`~llama2rs.formats.safetensors.StoredTensor`) or a matrix to be rounded when
written (:class:`~llama2rs.quantize.rounded.Rounded`). The q/k rows are in llama2.c's
*interleaved* RoPE layout (pairs ``2i, 2i+1`` of a head rotate together); importers of
rotate-half checkpoints reorder them. Per layer (``hs = head_size``)::

    rms_att [dim]            wq [n_heads*hs, dim]   wk [kv_dim, dim]   wv [kv_dim, dim]
    rms_ffn [dim]            wo [dim, n_heads*hs]   w1 [hidden, dim]   w2 [dim, hidden]   w3 [hidden, dim]

plus ``token_embedding [vocab, dim]``, ``rms_final [dim]`` and ``classifier [vocab, dim]``
(``None`` when it is tied to the embedding). Norms are always float.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np

from .config import Config
from .errors import ArgumentError
from .quantize.affine import AffineQuantized
from .quantize.q80 import Q8Tensor

__all__ = ["Weights", "Matrix", "MATRIX_NAMES", "LAYER_NORM_NAMES", "matrix_shapes", "dense", "is_quantized"]

Matrix = Union[np.ndarray, Q8Tensor, AffineQuantized]
# Per-layer matrices, in the order llama2.c's files store them.
MATRIX_NAMES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
LAYER_NORM_NAMES = ("rms_att", "rms_ffn")


def matrix_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """The float shape of every tensor of one layer, and of the whole-model ones."""
    dim, hidden, q_dim = config.dim, config.hidden_dim, config.n_heads * config.head_size
    return {
        "token_embedding": (config.vocab_size, dim),
        "classifier": (config.vocab_size, dim),
        "rms_final": (dim,),
        "rms_att": (dim,),
        "rms_ffn": (dim,),
        "wq": (q_dim, dim),
        "wk": (config.kv_dim, dim),
        "wv": (config.kv_dim, dim),
        "wo": (dim, q_dim),
        "w1": (hidden, dim),
        "w2": (dim, hidden),
        "w3": (hidden, dim),
    }


def is_quantized(m: object) -> bool:
    return isinstance(m, (AffineQuantized, Q8Tensor))


def dense(m: Matrix) -> np.ndarray:
    """A matrix as float32 (quantized ones dequantized)."""
    if is_quantized(m):
        return m.dequantize()  # type: ignore[union-attr]
    return np.asarray(m, dtype=np.float32)


@dataclass(eq=False)
class Weights:
    config: Config
    token_embedding: Matrix  # [vocab, dim]
    layers: list[dict[str, Any]]  # per layer: LAYER_NORM_NAMES + MATRIX_NAMES
    rms_final: np.ndarray  # [dim]
    classifier: Optional[Matrix] = None  # [vocab, dim]; None = tied to the embedding
    # How the weights are quantized, as their source says (e.g. a GPTQ config), or None.
    quantization: Optional[dict] = None
    # What the file said about itself (format, version, source, ...), as strings.
    metadata: dict = field(default_factory=dict)
    # [head_size // 2] divisors of the RoPE frequencies (Llama 3.1's scaling; GGUF's
    # rope_freqs.weight), or None for none.
    rope_freq_factors: Optional[np.ndarray] = None

    @property
    def tied(self) -> bool:
        return self.classifier is None

    @property
    def wcls(self) -> Matrix:
        """The classifier, which is the embedding itself when tied."""
        return self.token_embedding if self.classifier is None else self.classifier

    def named_tensors(self) -> Iterator[tuple[str, Matrix]]:
        """Every tensor with its name in llama2rs files: ``token_embedding``, ``classifier``
        (unless tied), ``rms_final``, ``layers.{i}.{name}``."""
        yield "token_embedding", self.token_embedding
        if self.classifier is not None:
            yield "classifier", self.classifier
        yield "rms_final", self.rms_final
        for i, layer in enumerate(self.layers):
            for name in LAYER_NORM_NAMES + MATRIX_NAMES:
                yield f"layers.{i}.{name}", layer[name]

    def replace(self, **changes: Any) -> "Weights":
        return dataclasses.replace(self, **changes)

    def map_matrices(self, fn: Callable[[str, Matrix], Matrix], embeddings: bool = True) -> "Weights":
        """A copy with every matrix ``m`` named ``name`` replaced by ``fn(name, m)`` (the
        embedding and classifier too unless ``embeddings=False``); norms are shared."""
        layers = []
        for i, layer in enumerate(self.layers):
            out = {name: layer[name] for name in LAYER_NORM_NAMES}
            for name in MATRIX_NAMES:
                out[name] = fn(f"layers.{i}.{name}", layer[name])
            layers.append(out)
        embedding, classifier = self.token_embedding, self.classifier
        if embeddings:
            embedding = fn("token_embedding", embedding)
            classifier = None if classifier is None else fn("classifier", classifier)
        return self.replace(token_embedding=embedding, layers=layers, classifier=classifier)

    def check(self) -> None:
        """Raise :class:`ArgumentError` unless every tensor exists with its config's shape."""
        shapes = matrix_shapes(self.config)
        if len(self.layers) != self.config.n_layers:
            raise ArgumentError(f"expected {self.config.n_layers} layers, got {len(self.layers)}")
        for i, layer in enumerate(self.layers):
            for name in LAYER_NORM_NAMES + MATRIX_NAMES:
                if name not in layer:
                    raise ArgumentError(f"weights lack 'layers.{i}.{name}'")
        for name, tensor in self.named_tensors():
            if tensor is None:
                raise ArgumentError(f"weights lack {name!r}")
            shape = tuple(tensor.shape if is_quantized(tensor) else np.shape(tensor))
            expected = shapes[name.rpartition(".")[2]]
            if shape != expected:
                raise ArgumentError(f"weights[{name!r}] has shape {shape}, expected {expected}")
