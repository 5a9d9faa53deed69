"""A plain NumPy forward pass and sampler: the independent reference for the Rust core.

Clarity over speed: the whole sequence is processed at once with matrices and a causal
mask (no KV cache), and nothing is fused.

Precision (the choices to know when comparing against another implementation):

* The forward pass computes in **float64** and returns float32 logits. Two steps
  deliberately reproduce llama2.c's float32 arithmetic because they decide discrete or
  position-dependent values: the RoPE angle ``pos * freq`` is formed in float32 as run.c
  does (then cos/sin in float64), and in a Q8_0 model every activation vector is cast to
  float32 and quantized exactly like runq.c's ``quantize()``.
* ``kv_cache="f16"`` models an fp16 KV cache: each key (after RoPE) and value is rounded to
  float16, as the Rust core stores it, before attention reads it.
* The sampler works in **float32** wherever run.c uses ``float`` (temperature division,
  softmax, cumulative sums — summed sequentially like C, not pairwise), so its choices
  match run.c's bit for bit as far as numpy's ``exp`` agrees with libm's ``expf``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from .config import Config
from .errors import ArgumentError, ContextLengthError, InvalidTokenError
from .quantize.affine import AffineQuantized
from .quantize.q80 import Q8Tensor
from .weights import Weights

__all__ = [
    "RMS_EPS",
    "BOS",
    "forward",
    "embed",
    "transformer_layer",
    "self_attention",
    "silu",
    "softmax_rows",
    "rmsnorm",
    "rope_cos_sin",
    "llama3_scaled_frequencies",
    "apply_rope",
    "quantize_activations",
    "linear",
    "Sampler",
    "softmax_f32",
    "sample_argmax",
    "sample_mult",
    "sample_topp",
    "generate_ids",
]

RMS_EPS = 1e-5
ROPE_THETA = 10000.0
BOS = 1  # llama2.c's BOS token; sampling it ends generation
Q_MAX = 127.0

MASK64 = (1 << 64) - 1
XORSHIFT_MULTIPLIER = 0x2545F4914F6CDD1D


# ---------------------------------------------------------------------------------------
# building blocks


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float = RMS_EPS) -> np.ndarray:
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last axis; x [T, dim] -> [T, dim]."""
    mean_square = np.mean(x * x, axis=-1, keepdims=True)  # [T, 1]
    return weight.astype(np.float64) * (x / np.sqrt(mean_square + eps))  # [T, dim]


def rope_cos_sin(head_size: int, n_positions: int, theta: float = ROPE_THETA,
                 freq_factors: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the RoPE angles, each [T, head_size // 2], as float64.

    Pair ``j`` of a head (dims ``2j, 2j+1``) turns by ``pos * freq_j`` with
    ``freq_j = 1 / 10000^(2j / head_size)``, divided by ``freq_factors[j]`` if given. Like
    run.c, the frequency and the angle are computed in float32 (this matters at large
    positions); cos/sin are then exact-ish.
    """
    head_dim_index = np.arange(0, head_size, 2, dtype=np.float32)  # [hs/2]: 0, 2, 4, ...
    exponent = head_dim_index / np.float32(head_size)  # [hs/2] float32
    freq = np.float32(1.0) / np.power(np.float32(theta), exponent)  # [hs/2] float32
    if freq_factors is not None:
        freq = freq / np.asarray(freq_factors, dtype=np.float32)  # [hs/2] float32
    positions = np.arange(n_positions, dtype=np.float32)  # [T]
    angle = positions[:, None] * freq[None, :]  # [T, hs/2] float32, like C's pos * freq
    angle64 = angle.astype(np.float64)  # [T, hs/2]
    return np.cos(angle64), np.sin(angle64)  # [T, hs/2] each


def llama3_scaled_frequencies(freqs: np.ndarray, factor: float, low_freq_factor: float, high_freq_factor: float,
                              original_max_position_embeddings: int) -> np.ndarray:
    """Meta's ``apply_scaling`` (llama_models, Llama 3.1; HF's ``_compute_llama3_parameters``):
    long wavelengths are slowed by ``factor``, short ones kept, those between blended.

    freqs [n] -> scaled freqs [n], float64.
    """
    old_context_len = float(original_max_position_embeddings)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    scaled = []
    for freq in np.asarray(freqs, dtype=np.float64):
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            scaled.append(freq)
        elif wavelen > low_freq_wavelen:
            scaled.append(freq / factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            scaled.append((1 - smooth) * freq / factor + smooth * freq)
    return np.array(scaled, dtype=np.float64)


def apply_rope(vectors: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate the INTERLEAVED pairs (2j, 2j+1) of every head.

    vectors [T, heads, hs]; cos, sin [T, hs/2] -> [T, heads, hs].
    """
    even = vectors[..., 0::2]  # [T, heads, hs/2]
    odd = vectors[..., 1::2]  # [T, heads, hs/2]
    cos = cos[:, None, :]  # [T, 1, hs/2]
    sin = sin[:, None, :]  # [T, 1, hs/2]
    rotated = np.empty_like(vectors)  # [T, heads, hs]
    rotated[..., 0::2] = even * cos - odd * sin
    rotated[..., 1::2] = even * sin + odd * cos
    return rotated


def quantize_activations(x: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """runq.c's ``quantize()`` applied to every row of x [T, n].

    In float32: ``scale = max|x| / 127`` per group, ``q = round(x / scale)`` with C's
    ``round`` (half away from zero). A group of zeros gets scale 0 and q 0.
    Returns q int8 [T, n // gs, gs] and scale float32 [T, n // gs].
    """
    rows, width = x.shape
    groups = x.astype(np.float32).reshape(rows, width // group_size, group_size)  # [T, G, gs]
    group_max = np.abs(groups).max(axis=-1)  # [T, G] float32
    scale = group_max / np.float32(Q_MAX)  # [T, G] float32
    safe_scale = np.where(scale > 0, scale, np.float32(1.0))  # [T, G]
    quotient = (groups / safe_scale[..., None]).astype(np.float64)  # [T, G, gs], exact widening
    # C round(): half away from zero. Adding 0.5 to a widened float32 is exact in float64.
    rounded = np.trunc(quotient + np.copysign(0.5, quotient))  # [T, G, gs]
    rounded = np.where(scale[..., None] > 0, rounded, 0.0)  # [T, G, gs]
    return rounded.astype(np.int8), scale.astype(np.float32)


def _q8_linear(x: np.ndarray, weight: Q8Tensor) -> np.ndarray:
    """runq.c's quantized matmul: x [T, n] (float), weight [d, n] (Q8_0) -> [T, d] float64.

    Per group: an exact integer dot product of the int8 activation and weight values,
    times ``weight_scale * activation_scale``; the groups are then summed.
    """
    group_size = weight.group_size
    x_q, x_scale = quantize_activations(x, group_size)  # [T, G, gs] int8, [T, G] float32
    out_features = weight.q.shape[0]
    w_q = weight.q.reshape(out_features, -1, group_size)  # [d, G, gs] int8
    # float64 holds these integer sums exactly (|sum| <= gs * 127^2), and uses BLAS.
    x_groups = x_q.astype(np.float64).transpose(1, 0, 2)  # [G, T, gs]
    w_groups = w_q.astype(np.float64).transpose(1, 2, 0)  # [G, gs, d]
    integer_dots = np.matmul(x_groups, w_groups)  # [G, T, d], exact integers
    w_scale = weight.scale.astype(np.float64).T[:, None, :]  # [G, 1, d]
    a_scale = x_scale.astype(np.float64).T[:, :, None]  # [G, T, 1]
    return (integer_dots * w_scale * a_scale).sum(axis=0)  # [T, d]


@dataclass(frozen=True)
class Q8KInput:
    """A float weight whose input is rounded the way llama.cpp's K-quant dot products round
    it: ggml's ``quantize_row_q8_K_ref``, per 256 values ``iscale = -127 / max`` (``max`` the
    value of largest magnitude), ``q = min(127, nearest(iscale * x))``, ``d = 1 / iscale``, in
    float32. Tests use it to model llama.cpp's activation rounding on the same weights."""

    weight: np.ndarray  # [d, n], n a multiple of 256


@dataclass(frozen=True)
class Q8_0Input:
    """A float weight whose input is rounded the way llama.cpp's Q8_0, Q4_0 and Q4_1 dot
    products round it: ggml's ``quantize_row_q8_0_ref``, per 32 values ``d = max|x| / 127`` and
    ``q = round(x / d)`` (llama2.c's Q8_0 activations, ``quantize_activations``)."""

    weight: np.ndarray  # [d, n], n a multiple of 32


def q8_0_round(x: np.ndarray) -> np.ndarray:
    """Every row of x [T, n] as ``quantize_row_q8_0_ref`` then ``dequantize`` leave it."""
    q, scale = quantize_activations(x, 32)  # [T, G, 32] int8, [T, G] float32
    return (q.astype(np.float32) * scale[..., None]).reshape(x.shape)


def q8k_round(x: np.ndarray) -> np.ndarray:
    """Every row of x [T, n] as ``quantize_row_q8_K_ref`` then ``dequantize`` leave it."""
    rows, width = x.shape
    blocks = x.astype(np.float32).reshape(rows, width // 256, 256)  # [T, B, 256]
    signed_max = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[..., None], axis=-1)  # [T, B, 1]
    nonzero = signed_max != 0
    iscale = np.where(nonzero, np.float32(-127.0) / np.where(nonzero, signed_max, 1), 0).astype(np.float32)
    q = np.minimum(np.rint((blocks * iscale).astype(np.float32)), 127)  # nearest, ties to even
    d = np.where(nonzero, np.float32(1.0) / np.where(nonzero, iscale, 1), 0).astype(np.float32)
    return (q * d).astype(np.float32).reshape(rows, width)


def linear(x: np.ndarray, weight) -> np.ndarray:
    """``x @ W.T`` for a float, Q8_0 or affine-quantized weight (the latter dequantized
    exactly, in float64), or a ``Q8KInput``; x [T, n], weight [d, n] -> [T, d] float64
    (Q8_0: x 2-D)."""
    if isinstance(weight, Q8Tensor):
        return _q8_linear(x, weight)
    if isinstance(weight, Q8KInput):
        return q8k_round(x).astype(np.float64) @ np.asarray(weight.weight, dtype=np.float64).T
    if isinstance(weight, Q8_0Input):
        return q8_0_round(x).astype(np.float64) @ np.asarray(weight.weight, dtype=np.float64).T
    if isinstance(weight, AffineQuantized):
        weight = weight.dequantize()
    return x @ np.asarray(weight, dtype=np.float64).T  # [T, d]


def embed(table, token_ids: np.ndarray) -> np.ndarray:
    """Rows of the token embedding; a Q8_0 table is dequantized (float32, like runq.c)."""
    if isinstance(table, AffineQuantized):
        return table.dequantize()[token_ids].astype(np.float64)  # [T, dim]
    if isinstance(table, Q8Tensor):
        rows = Q8Tensor(table.q[token_ids], table.scale[token_ids], table.group_size)
        return rows.dequantize().astype(np.float64)  # [T, dim]
    return np.asarray(table, dtype=np.float64)[token_ids]  # [T, dim]


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), with the sigmoid written via tanh so large |x| cannot overflow."""
    return x * (0.5 * (1.0 + np.tanh(0.5 * x)))


def softmax_rows(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (float64), subtracting the row max first."""
    shifted = scores - scores.max(axis=-1, keepdims=True)
    exps = np.exp(shifted)
    return exps / exps.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------
# the transformer


KV_CACHE_DTYPES = {"f32": None, "f16": np.float16}  # what the cache rounds keys and values to


# What the layer multiplies by: ``pick(name, inputs)`` gets a matrix's name and its inputs
# (``[..., T, in]``) before it is applied and returns the matrix to use (quantizers hook here).
Pick = Callable[[str, np.ndarray], Any]


def self_attention(config: Config, x_normed: np.ndarray, wq, wk, wv, cos: np.ndarray, sin: np.ndarray,
                   kv_cache: str = "f32") -> np.ndarray:
    """Causal grouped-query self-attention of one sequence, before the output projection;
    x_normed [T, dim] -> [T, n_heads * head_size]."""
    n_positions = x_normed.shape[0]
    head_size, n_heads, n_kv_heads = config.head_size, config.n_heads, config.n_kv_heads
    queries = linear(x_normed, wq).reshape(n_positions, n_heads, head_size)  # [T, H, hs]
    keys = linear(x_normed, wk).reshape(n_positions, n_kv_heads, head_size)  # [T, KV, hs]
    values = linear(x_normed, wv).reshape(n_positions, n_kv_heads, head_size)  # [T, KV, hs]
    queries = apply_rope(queries, cos, sin)  # [T, H, hs]
    keys = apply_rope(keys, cos, sin)  # [T, KV, hs]
    stored = KV_CACHE_DTYPES[kv_cache]
    if stored is not None:  # the cache rounds what it stores (the core rounds float32 values)
        keys = keys.astype(np.float32).astype(stored).astype(np.float64)
        values = values.astype(np.float32).astype(stored).astype(np.float64)

    # GQA: query head h reads kv head h // kv_mul (np.repeat keeps each kv head's copies together).
    keys_per_head = np.repeat(keys, config.kv_mul, axis=1)  # [T, H, hs]
    values_per_head = np.repeat(values, config.kv_mul, axis=1)  # [T, H, hs]

    scores = np.einsum("thd,shd->hts", queries, keys_per_head) / np.sqrt(head_size)  # [H, T, T]
    future = np.triu(np.ones((n_positions, n_positions), dtype=bool), k=1)  # [T, T]: key after query
    scores = np.where(future[None, :, :], -np.inf, scores)  # [H, T, T]
    attention = softmax_rows(scores)  # [H, T, T]
    mixed = np.einsum("hts,shd->thd", attention, values_per_head)  # [T, H, hs]
    return mixed.reshape(n_positions, n_heads * head_size)  # [T, dim]


def transformer_layer(config: Config, layer: Mapping[str, Any], x: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                      kv_cache: str = "f32", pick: Optional[Pick] = None) -> np.ndarray:
    """One block: ``x + attention(rmsnorm(x))``, then ``+ w2(silu(w1 h) * w3 h)`` of its rmsnorm.

    x [T, dim], or [S, T, dim] for S sequences at once (attention stays within each) ->
    the same shape. ``pick`` (default: ``layer[name]``) chooses each matrix from its inputs, in
    the order wq, wk, wv (inputs: the normed x), wo (the attention output), w1, w3 (the normed
    x), w2 (the gated hidden state).
    """
    choose: Pick = pick or (lambda name, inputs: layer[name])
    eps = config.norm_eps
    xn = rmsnorm(x, layer["rms_att"], eps)  # [..., T, dim]
    wq, wk, wv = (choose(name, xn) for name in ("wq", "wk", "wv"))
    if x.ndim == 2:
        mixed = self_attention(config, xn, wq, wk, wv, cos, sin, kv_cache)  # [T, dim]
    else:
        mixed = np.stack([self_attention(config, seq, wq, wk, wv, cos, sin, kv_cache) for seq in xn])
    wo = choose("wo", mixed)
    x = x + linear(mixed.reshape(-1, mixed.shape[-1]), wo).reshape(x.shape)
    flat = rmsnorm(x, layer["rms_ffn"], eps).reshape(-1, x.shape[-1])  # [S*T, dim]
    w1, w3 = choose("w1", flat), choose("w3", flat)
    hidden = silu(linear(flat, w1)) * linear(flat, w3)  # [S*T, hidden]
    w2 = choose("w2", hidden)
    return x + linear(hidden, w2).reshape(x.shape)


def _check_tokens(config: Config, tokens: Sequence[int]) -> np.ndarray:
    token_ids = np.asarray(list(tokens), dtype=np.int64)  # [T]
    if token_ids.ndim != 1 or token_ids.size == 0:
        raise ArgumentError("forward needs a non-empty 1-D sequence of token ids")
    if token_ids.size > config.seq_len:
        raise ContextLengthError(
            f"{token_ids.size} tokens exceed the model's context of {config.seq_len}"
        )
    bad = (token_ids < 0) | (token_ids >= config.vocab_size)
    if bad.any():
        raise InvalidTokenError(
            f"token id {int(token_ids[bad][0])} is outside [0, {config.vocab_size})"
        )
    return token_ids


def forward(weights: Weights, tokens: Sequence[int], kv_cache: str = "f32") -> np.ndarray:
    """Teacher-forced logits, float32 [len(tokens), vocab]: row t is what run.c's
    ``forward(token=tokens[t], pos=t)`` returns after feeding ``tokens[:t]`` before it.

    Float, Q8_0 and affine-quantized weights are all handled (each matrix by its own type).
    ``kv_cache``: ``"f32"`` (run.c's cache) or ``"f16"`` (keys and values rounded to float16).
    """
    if kv_cache not in KV_CACHE_DTYPES:
        raise ArgumentError(f"kv_cache must be one of {', '.join(KV_CACHE_DTYPES)}; got {kv_cache!r}")
    config = weights.config
    token_ids = _check_tokens(config, tokens)  # [T]
    cos, sin = rope_cos_sin(config.head_size, token_ids.size, config.rope_theta,
                            weights.rope_freq_factors)  # [T, hs/2] each

    x = embed(weights.token_embedding, token_ids)  # [T, dim] residual stream
    for layer in weights.layers:
        x = transformer_layer(config, layer, x, cos, sin, kv_cache)
    x_final = rmsnorm(x, weights.rms_final, config.norm_eps)  # [T, dim]
    return linear(x_final, weights.wcls).astype(np.float32)  # [T, vocab]


# ---------------------------------------------------------------------------------------
# sampling (run.c's Sampler, float32 arithmetic)


def softmax_f32(logits: np.ndarray) -> np.ndarray:
    """run.c's softmax in float32: subtract the max, exp, divide by the SEQUENTIAL sum.

    logits float32 [vocab] -> probabilities float32 [vocab].
    """
    exps = np.exp(logits - logits.max())  # [vocab] float32
    total = np.cumsum(exps, dtype=np.float32)[-1]  # left-to-right float32 sum, like the C loop
    return exps / total  # [vocab] float32


def sample_argmax(values: np.ndarray) -> int:
    """Index of the first maximum (run.c's strict ``>`` scan)."""
    return int(np.argmax(values))


def sample_mult(probabilities: np.ndarray, coin: np.float32) -> int:
    """First index whose float32 running cdf exceeds ``coin``; the last index if none does."""
    cdf = np.cumsum(probabilities, dtype=np.float32)  # [vocab]
    hits = np.flatnonzero(coin < cdf)
    return int(hits[0]) if hits.size else probabilities.size - 1


def sample_topp(probabilities: np.ndarray, topp: np.float32, coin: np.float32) -> int:
    """run.c's nucleus sampling.

    Candidates are probabilities ``>= (1 - topp) / (n - 1)``, sorted by descending
    probability (a STABLE sort: equal probabilities keep index order; C's qsort leaves
    their order unspecified). Keep the shortest prefix whose float32 cumulative sum exceeds
    ``topp`` (all candidates if none does), then walk its cdf with
    ``r = coin * cumulative_prob``; fall back to the prefix's last entry.
    """
    n = probabilities.size
    if n == 1:
        return 0
    cutoff = (np.float32(1.0) - topp) / np.float32(n - 1)  # float32
    candidates = np.flatnonzero(probabilities >= cutoff)  # [n0]
    if candidates.size == 0:
        # Only when topp < 1/n on a near-uniform distribution; C reads out of bounds here.
        return sample_argmax(probabilities)
    order = np.argsort(-probabilities[candidates], kind="stable")  # [n0]
    sorted_ids = candidates[order]  # [n0], most likely first
    cumulative = np.cumsum(probabilities[sorted_ids], dtype=np.float32)  # [n0]
    exceeding = np.flatnonzero(cumulative > topp)
    last = int(exceeding[0]) if exceeding.size else sorted_ids.size - 1
    r = np.float32(coin) * cumulative[last]  # float32
    hits = np.flatnonzero(r < cumulative[: last + 1])
    return int(sorted_ids[hits[0]]) if hits.size else int(sorted_ids[last])


class Sampler:
    """run.c's sampler, state and all.

    * ``temperature == 0``: greedy argmax (no random number is drawn).
    * otherwise: ``logits / temperature`` (float32), then — our extension, not in
      llama2.c — if ``top_k > 0`` only the ``top_k`` largest logits are kept (others set
      to -inf; ties at the boundary go to the lower index), then float32 softmax, one coin
      ``random_f32()``, and ``sample_mult`` if ``topp <= 0 or topp >= 1`` else ``sample_topp``.

    The RNG is xorshift64* on a 64-bit state (``seed`` masked to 64 bits). As in C, a
    seed of 0 stays 0 forever (run.c's CLI replaces 0 with the time; we do not).
    """

    def __init__(self, vocab_size: int, temperature: float, topp: float, seed: int,
                 top_k: int = 0) -> None:
        if vocab_size < 1:
            raise ArgumentError(f"vocab_size must be >= 1, got {vocab_size}")
        if not np.isfinite(temperature) or temperature < 0:
            raise ArgumentError(f"temperature must be finite and >= 0, got {temperature}")
        if not np.isfinite(topp):
            raise ArgumentError(f"topp must be finite, got {topp}")
        if top_k < 0:
            raise ArgumentError(f"top_k must be >= 0, got {top_k}")
        self.vocab_size = int(vocab_size)
        self.temperature = np.float32(temperature)  # C float
        self.topp = np.float32(topp)  # C float
        self.top_k = int(top_k)
        self.state = int(seed) & MASK64  # C unsigned long long

    def random_u32(self) -> int:
        """xorshift64*: advance the state, return the high 32 bits of ``state * M``."""
        state = self.state
        state ^= state >> 12
        state ^= (state << 25) & MASK64
        state ^= state >> 27
        self.state = state
        return ((state * XORSHIFT_MULTIPLIER) & MASK64) >> 32

    def random_f32(self) -> np.float32:
        """A float32 in [0, 1): the top 24 bits of ``random_u32()`` / 2^24."""
        return np.float32(self.random_u32() >> 8) / np.float32(16777216.0)

    def _keep_top_k(self, scaled_logits: np.ndarray) -> np.ndarray:
        """Set all but the ``top_k`` largest logits to -inf; [vocab] -> [vocab]."""
        if self.top_k == 0 or self.top_k >= scaled_logits.size:
            return scaled_logits
        best = np.argsort(-scaled_logits, kind="stable")[: self.top_k]  # [top_k]
        kept = np.full_like(scaled_logits, -np.inf)  # [vocab]
        kept[best] = scaled_logits[best]
        return kept

    def sample(self, logits: np.ndarray) -> int:
        """Choose the next token from logits [vocab] (the array is not modified)."""
        logits32 = np.asarray(logits, dtype=np.float32).reshape(-1)  # [vocab]
        if logits32.size != self.vocab_size:
            raise ArgumentError(f"expected {self.vocab_size} logits, got {logits32.size}")
        if self.temperature == 0:
            return sample_argmax(logits32)
        scaled = self._keep_top_k(logits32 / self.temperature)  # [vocab] float32
        probabilities = softmax_f32(scaled)  # [vocab] float32
        coin = self.random_f32()
        if self.topp <= 0 or self.topp >= 1:
            return sample_mult(probabilities, coin)
        return sample_topp(probabilities, self.topp, coin)


# ---------------------------------------------------------------------------------------
# generation


def generate_ids(model: Weights, prompt_ids: Sequence[int], steps: int,
                 sampler: Sampler, stop_at_bos: bool = True) -> list[int]:
    """run.c's ``generate`` loop on token ids; returns the whole sequence (prompt included).

    Position ``pos`` feeds token ``seq[pos]``; while the prompt lasts the next token is
    forced, afterwards it is sampled. The loop stops after ``steps`` positions (so the
    result has at most ``steps + 1`` tokens), or — with ``stop_at_bos`` — when the next
    token is BOS (1), sampled or forced as in run.c (that BOS is not appended). As in
    run.c, ``steps == 0`` or ``steps > seq_len`` means ``seq_len``.
    The sampler is only consulted past the prompt.
    """
    prompt = [int(token) for token in prompt_ids]
    if not prompt:
        raise ArgumentError("generate_ids needs at least one prompt token (usually BOS = 1)")
    if steps < 0:
        raise ArgumentError(f"steps must be >= 0, got {steps}")
    seq_len = model.config.seq_len
    if steps == 0 or steps > seq_len:
        steps = seq_len

    sequence = prompt[:1]
    for pos in range(steps):
        if pos + 1 < len(prompt):
            next_token = prompt[pos + 1]  # teacher-forced
        else:
            logits = forward(model, sequence)[pos]  # [vocab]: recomputed from scratch, simply
            next_token = sampler.sample(logits)
        if stop_at_bos and next_token == BOS:  # run.c stops on BOS, forced or sampled
            break
        sequence.append(next_token)
    return sequence
