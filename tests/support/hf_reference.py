"""An independent NumPy forward pass of HuggingFace's Llama, straight from HF tensors.

Nothing here goes through :mod:`llama2rs.formats.hf`'s importer: the tensors keep their HF names and
the rotate-half q/k layout, and RoPE is applied the way transformers' ``modeling_llama`` does
(``LlamaRotaryEmbedding`` / ``rotate_half`` / ``apply_rotary_pos_emb``). It is the
expectation for checkpoints the importer reads or an exporter writes.

Arithmetic follows transformers' structure; precision choices:

* ``inv_freq = 1 / theta ** (arange(0, hd, 2) / hd)`` and the angles ``pos * inv_freq`` are
  formed in float32 as transformers does; their cos/sin and everything else are float64.
* RMSNorm ``weight * (x * rsqrt(mean(x^2) + eps))`` (LlamaRMSNorm; float64 here).
* causal softmax attention, GQA by repeating each kv head for ``n_heads / n_kv_heads`` query
  heads in a row (``repeat_kv``), SwiGLU MLP ``down(silu(gate(x)) * up(x))``.

GPTQ layers (``qweight``/``qzeros``/``scales``/``g_idx``) are dequantized by
:func:`dequantize_gptq`, written separately from the importer's unpacking: bits are expanded
with ``np.unpackbits`` and v1 zero points are restored by adding ``0x11111111`` /
``0x01010101`` to every 32-bit word modulo 2**32 (GPTQModel's ``convert_gptq_v1_to_v2``).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from llama2rs.reference import llama3_scaled_frequencies

__all__ = ["hf_forward", "dequantize_gptq", "hf_linear_weight"]


def _words_to_fields(words: np.ndarray, bits: int) -> np.ndarray:
    """int32 words [a, b] -> their 32/bits fields [a, b, 32/bits], lowest bits first."""
    w = np.ascontiguousarray(words).astype("<u4")  # little-endian bytes: bit 0 first
    bit_array = np.unpackbits(w.view(np.uint8).reshape(w.shape + (4,)), axis=-1, bitorder="little")
    bit_array = bit_array.reshape(w.shape + (32 // bits, bits)).astype(np.int64)  # [a, b, pf, bits]
    weights = 1 << np.arange(bits, dtype=np.int64)
    return (bit_array * weights).sum(axis=-1)  # [a, b, pf]


def dequantize_gptq(
    qweight: np.ndarray,
    qzeros: np.ndarray,
    scales: np.ndarray,
    g_idx: Optional[np.ndarray],
    in_features: int,
    out_features: int,
    bits: int,
    group_size: int,
    checkpoint_format: str = "gptq",
) -> np.ndarray:
    """float64 ``W [out, in]`` of one GPTQ layer:
    ``W[o, i] = scales[g[i], o] * (q[i, o] - zero[g[i], o])`` with ``g = g_idx`` (default
    ``arange(in) // group_size``), ignoring any padding beyond ``in``/``out``."""
    pf = 32 // bits
    gs = in_features if group_size == -1 else group_size
    fields_w = _words_to_fields(qweight, bits)  # [R, out_pad, pf]
    q = fields_w.transpose(0, 2, 1).reshape(-1, fields_w.shape[1])  # [R*pf, out_pad]
    q = q[:in_features, :out_features]  # [in, out]
    zw = np.ascontiguousarray(qzeros).astype("<u4").astype(np.uint64)
    if checkpoint_format == "gptq":
        offset = sum(1 << (bits * k) for k in range(pf))
        zw = (zw + np.uint64(offset)) % np.uint64(1 << 32)
    elif checkpoint_format != "gptq_v2":
        raise ValueError(f"unknown checkpoint_format {checkpoint_format!r}")
    fields_z = _words_to_fields(zw.astype(np.uint32), bits)  # [G, Z, pf]
    zeros = fields_z.reshape(fields_z.shape[0], -1)[:, :out_features]  # [G_pad, out]
    scale = np.asarray(scales, dtype=np.float64)[:, :out_features]  # [G_pad, out]
    if g_idx is None:
        groups = np.arange(in_features) // gs
    else:
        groups = np.asarray(g_idx, dtype=np.int64)[:in_features]
    w_in_out = scale[groups] * (q - zeros[groups])  # [in, out]
    return np.ascontiguousarray(w_in_out.T)


def _quant_config(hf_config: Mapping[str, Any], quantize_config: Optional[Mapping[str, Any]]):
    qc = dict(hf_config.get("quantization_config") or {})
    qc.update(quantize_config or {})
    return qc


def hf_linear_weight(
    tensors: Mapping[str, np.ndarray], prefix: str, in_features: int, out_features: int,
    quant: Optional[Mapping[str, Any]] = None,
) -> np.ndarray:
    """float64 ``[out, in]`` weight of the linear layer ``prefix`` (float or GPTQ)."""
    if prefix + ".weight" in tensors:
        return np.asarray(tensors[prefix + ".weight"], dtype=np.float64)
    if prefix + ".qweight" not in tensors:
        raise KeyError(f"no weight for {prefix}")
    quant = quant or {}
    fmt = quant.get("checkpoint_format") or quant.get("format") or "gptq"
    return dequantize_gptq(
        tensors[prefix + ".qweight"], tensors[prefix + ".qzeros"], tensors[prefix + ".scales"],
        tensors.get(prefix + ".g_idx"), in_features, out_features, int(quant["bits"]),
        int(quant.get("group_size", -1)), fmt,
    )


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    variance = np.mean(x * x, axis=-1, keepdims=True)
    return np.asarray(weight, dtype=np.float64) * (x / np.sqrt(variance + eps))


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def hf_forward(
    hf_tensors: Mapping[str, np.ndarray],
    hf_config: Mapping[str, Any],
    tokens: Sequence[int],
    quantize_config: Optional[Mapping[str, Any]] = None,
) -> np.ndarray:
    """Teacher-forced logits float32 ``[len(tokens), vocab]`` of a transformers Llama."""
    dim = int(hf_config["hidden_size"])
    n_layers = int(hf_config["num_hidden_layers"])
    n_heads = int(hf_config["num_attention_heads"])
    n_kv = int(hf_config.get("num_key_value_heads") or n_heads)
    hidden = int(hf_config["intermediate_size"])
    head_dim = int(hf_config.get("head_dim") or dim // n_heads)
    eps = float(hf_config.get("rms_norm_eps", 1e-6))
    theta = float(hf_config.get("rope_theta", 10000.0))
    vocab = int(hf_config["vocab_size"])
    quant = _quant_config(hf_config, quantize_config)
    ids = np.asarray(list(tokens), dtype=np.int64)
    n = ids.size

    def linear(x: np.ndarray, prefix: str, in_f: int, out_f: int) -> np.ndarray:
        return x @ hf_linear_weight(hf_tensors, prefix, in_f, out_f, quant).T

    # LlamaRotaryEmbedding, float32 like transformers; rope type "llama3" rescales inv_freq by
    # Meta's apply_scaling (transformers' _compute_llama3_parameters).
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = np.float32(1.0) / np.power(np.float32(theta), exponent)  # [hd/2] float32
    scaling = hf_config.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
        inv_freq = llama3_scaled_frequencies(
            inv_freq, scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"],
            scaling["original_max_position_embeddings"]).astype(np.float32)
    freqs = np.arange(n, dtype=np.float32)[:, None] * inv_freq[None, :]  # [T, hd/2] float32
    emb = np.concatenate([freqs, freqs], axis=-1).astype(np.float64)  # [T, hd]
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]  # [T, 1, hd]

    x = np.asarray(hf_tensors["model.embed_tokens.weight"], dtype=np.float64)[ids]  # [T, dim]
    causal = np.triu(np.ones((n, n), dtype=bool), k=1)  # key after query
    n_rep = n_heads // n_kv
    for layer in range(n_layers):
        p = f"model.layers.{layer}."
        h = _rms_norm(x, hf_tensors[p + "input_layernorm.weight"], eps)
        q = linear(h, p + "self_attn.q_proj", dim, n_heads * head_dim).reshape(n, n_heads, head_dim)
        k = linear(h, p + "self_attn.k_proj", dim, n_kv * head_dim).reshape(n, n_kv, head_dim)
        v = linear(h, p + "self_attn.v_proj", dim, n_kv * head_dim).reshape(n, n_kv, head_dim)
        q = q * cos + _rotate_half(q) * sin  # apply_rotary_pos_emb
        k = k * cos + _rotate_half(k) * sin
        k = np.repeat(k, n_rep, axis=1)  # repeat_kv: [T, H, hd]
        v = np.repeat(v, n_rep, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(head_dim)  # [H, T, T]
        scores = np.where(causal[None], -np.inf, scores)
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        attn = np.einsum("hts,shd->thd", probs, v).reshape(n, n_heads * head_dim)
        x = x + linear(attn, p + "self_attn.o_proj", n_heads * head_dim, dim)
        h = _rms_norm(x, hf_tensors[p + "post_attention_layernorm.weight"], eps)
        gate = linear(h, p + "mlp.gate_proj", dim, hidden)
        up = linear(h, p + "mlp.up_proj", dim, hidden)
        silu = gate / (1.0 + np.exp(-np.clip(gate, -700, 700)))
        x = x + linear(silu * up, p + "mlp.down_proj", hidden, dim)
    x = _rms_norm(x, hf_tensors["model.norm.weight"], eps)
    if hf_config.get("tie_word_embeddings", False):
        w_out = np.asarray(hf_tensors["model.embed_tokens.weight"], dtype=np.float64)
    else:
        w_out = hf_linear_weight(hf_tensors, "lm_head", dim, vocab, quant)
    return (x @ w_out.T).astype(np.float32)
