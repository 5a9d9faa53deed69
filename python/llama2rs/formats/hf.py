"""Import HuggingFace Llama and Mistral checkpoints (safetensors; float or GPTQ), numpy only.

Reading
    :func:`load_hf` reads a checkpoint directory (``config.json`` plus ``model.safetensors``,
    or shards listed in ``model.safetensors.index.json``, or any ``*.safetensors`` there; read
    with :mod:`llama2rs.formats.safetensors`) into a :class:`~llama2rs.weights.Weights`.

Layout (``llama2rs.weights``)
    llama2.c's names and ``[out_features, in_features]`` matrices, one dict per layer;
    w1 is gate_proj, w2 down_proj, w3 up_proj. Each float matrix (fp32, fp16 or bf16) is a
    :class:`~llama2rs.formats.safetensors.StoredTensor`, read from its file (bf16 converted to
    float32) only where it is used, e.g. as export writes it: converting a 7B checkpoint holds
    one matrix at a time. Norms are read at once (float32 arrays); GPTQ matrices are unpacked
    into :class:`~llama2rs.quantize.affine.AffineQuantized`.
    HF stores the q/k projections for the *rotate-half* RoPE (pairs ``(i, i + hd/2)`` of a
    head); llama2.c rotates *interleaved* pairs ``(2i, 2i+1)``. The importer reorders the
    rows of wq/wk per head like llama2.c's ``export.py`` ``permute_reverse`` (the inverse of
    transformers' ``convert_llama_weights_to_hf.permute``): canonical row ``h*hd + 2i + j``
    is HF row ``h*hd + j*hd/2 + i``. Attention scores are unchanged because q and k get the
    same row order; for quantized matrices the rows of q/scales/zeros move together.

GPTQ (``quant_method: gptq``; ``quantize_config.json`` or ``quantization_config`` in
``config.json``)
    Per linear layer ``qweight`` (int32 ``[in/pf, out]``, ``pf = 32/bits`` values per word,
    packed along the input dim, lowest bits first), ``qzeros`` (int32 ``[groups, out/pf]``,
    packed along the output dim), ``scales`` (fp16 ``[groups, out]``) and ``g_idx`` (int32
    ``[in]``, the group of every input feature; absent means ``arange(in) // group_size``).
    Weight ``W[o, i] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o])``.

    * ``checkpoint_format`` ``"gptq"`` (v1, AutoGPTQ and GPTQModel's default save format):
      the stored zero points are ``zero - 1``. They are restored like GPTQModel's
      ``convert_gptq_v1_to_v2_format_module`` does, by adding ``0x11111111`` (4-bit) /
      ``0x01010101`` (8-bit) to every *whole* int32 word, wrapping mod 2**32. That is
      "+1 per value" whenever no stored value is ``2**bits - 1``, and it exactly undoes
      GPTQModel's v2->v1 save (a word-wide subtraction whose borrow crosses values when a
      zero point is 0). AutoGPTQ's own kernels instead add 1 per value (so a stored 15 reads
      as 16, out of range); AutoGPTQ's packer cannot represent a zero point of 0 at all (it
      ORs ``uint32(-1)`` into the word).
    * ``"gptq_v2"`` (GPTQModel): zero points stored as is.
    * Padding: only the first ``in`` unpacked rows of ``qweight``, the first ``out`` columns
      and values of ``qweight``/``qzeros``/``scales``, the first ``ceil(in/group)`` groups and
      the first ``in`` entries of ``g_idx`` are used (sizes from ``config.json``); what lies
      beyond (padding up to whole words or kernel-friendly sizes) is ignored.
    * Act-order (``desc_act``): stored column ``j`` of the :class:`AffineQuantized` is input
      ``perm[j]`` with ``perm = argsort(g_idx, stable)``; this needs ``sorted(g_idx) ==
      arange(in) // group_size`` (every group exactly ``group_size`` inputs, the last one
      shorter), which GPTQ's act-order always produces; any other layout raises
      :class:`ModelFileError`. A trivial ``g_idx`` gives ``perm=None``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from ..config import Config
from ..errors import ConfigError, ModelFileError
from ..quantize.affine import AffineQuantized
from ..weights import Weights
from . import safetensors

__all__ = [
    "load_hf",
    "find_tokenizer",
    "hf_rope_freq_factors",
    "hf_stop_ids",
    "llama3_rope_freq_factors",
    "hf_config_to_config",
    "config_to_hf_config",
    "interleave_rows",
    "rotate_half_rows",
    "permute_rows",
    "unpack_gptq",
    "gptq_v1_offset",
    "HF_LINEAR_NAMES",
    "HF_NORM_NAMES",
    "GPTQ_FORMATS",
]

PathLike = Union[str, "os.PathLike[str]"]

# HF parameter names (relative to "model.layers.{i}.") of the canonical matrices.
HF_LINEAR_NAMES: Dict[str, str] = {
    "wq": "self_attn.q_proj",
    "wk": "self_attn.k_proj",
    "wv": "self_attn.v_proj",
    "wo": "self_attn.o_proj",
    "w1": "mlp.gate_proj",
    "w2": "mlp.down_proj",
    "w3": "mlp.up_proj",
}
HF_NORM_NAMES: Dict[str, str] = {
    "rms_att": "input_layernorm",
    "rms_ffn": "post_attention_layernorm",
}
GPTQ_FORMATS = ("gptq", "gptq_v2")


# ---------------------------------------------------------------------------------------
# config


def _read_json(path: Path) -> Any:
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc}") from exc
    except ValueError as exc:
        raise ModelFileError(f"{path}: invalid JSON: {exc}") from exc
    except RecursionError:
        raise ModelFileError(f"{path}: invalid JSON: nested too deeply") from None


def _int_field(cfg: Mapping[str, Any], key: str, default: Any = None) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise ConfigError(f"config.json lacks {key!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"config.json {key!r} must be an integer, got {value!r}")
    return value


def _token_id(cfg: Mapping[str, Any], key: str, default: int) -> int:
    value = cfg.get(key)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"config.json {key!r} must be a token id, got {value!r}")
    return value


# model_type -> architecture: the decoders that are Llama's (Mistral's is Llama with an
# optional sliding window, which is refused where it would take effect).
ARCHITECTURES: Dict[str, str] = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _float(value: Any, key: str, what: str = "config.json") -> float:
    """A JSON number as a float; an integer too large for one (JSON's are unbounded) is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} {key!r} must be a number, got {value!r}"[:300])
    try:
        return float(value)
    except OverflowError:
        raise ConfigError(f"{what} {key!r} is too large: {str(value)[:50]}...") from None


def _number(cfg: Mapping[str, Any], key: str, what: str = "config.json") -> float:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigError(f"{what} {key!r} must be a positive number, got {value!r}"[:300])
    return _float(value, key, what)


def _rope_settings(cfg: Mapping[str, Any]) -> Tuple[Any, Optional[Dict[str, float]]]:
    """``rope_theta`` and the ``llama3`` scaling parameters (None without scaling), from
    ``rope_scaling`` (transformers < 5) or ``rope_parameters`` (>= 5)."""
    rope_theta = cfg.get("rope_theta", 10000.0)
    scaling = cfg.get("rope_scaling")
    parameters = cfg.get("rope_parameters")
    if parameters is not None:
        if not isinstance(parameters, Mapping):
            raise ConfigError(f"rope_parameters must be an object, got {parameters!r}")
        rope_theta = parameters.get("rope_theta", rope_theta)
        scaling = scaling if scaling is not None else parameters
    if scaling is None:
        return rope_theta, None
    if not isinstance(scaling, Mapping):
        raise ConfigError(f"rope_scaling must be an object, got {scaling!r}")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return rope_theta, None
    if rope_type != "llama3":
        raise ConfigError(f"RoPE scaling of type {rope_type!r} is not supported (llama2rs runs 'llama3' and none): "
                          f"{dict(scaling)}")
    settings = {key: _number(scaling, key, "rope_scaling") for key in LLAMA3_ROPE_KEYS}
    if settings["high_freq_factor"] <= settings["low_freq_factor"]:
        raise ConfigError(f"rope_scaling high_freq_factor must exceed low_freq_factor: {dict(scaling)}")
    return rope_theta, settings


def llama3_rope_freq_factors(head_size: int, rope_theta: float, factor: float, low_freq_factor: float,
                             high_freq_factor: float, original_max_position_embeddings: float) -> np.ndarray:
    """Llama 3.1's RoPE scaling as the divisor of each frequency (GGUF's ``rope_freqs.weight``,
    as llama.cpp's converter computes it): 1 for short wavelengths, ``factor`` for long ones,
    and a smooth blend between. [head_size / 2] float32."""
    freqs = 1.0 / (rope_theta ** (np.arange(0, head_size, 2, dtype=np.float64) / head_size))
    wavelen = 2 * np.pi / freqs
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = 1.0 / ((1 - smooth) / factor + smooth)
    divisors = np.where(wavelen < original_max_position_embeddings / high_freq_factor, 1.0,
                        np.where(wavelen > original_max_position_embeddings / low_freq_factor, factor, blended))
    return divisors.astype(np.float32)


def hf_config_to_config(cfg: Mapping[str, Any]) -> Config:
    """A :class:`Config` from a transformers ``LlamaConfig`` or ``MistralConfig`` dict
    (``config.json``). RoPE scaling of type ``llama3`` is read by :func:`hf_rope_freq_factors`.

    Refuses (:class:`ConfigError`) what the Rust core does not implement: other RoPE scaling,
    a ``head_dim`` other than ``hidden_size / heads``, biases, activations other than SiLU, a
    sliding window shorter than the context.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError("config.json must hold a JSON object")
    archs = cfg.get("architectures") or []
    model_type = cfg.get("model_type")
    known = list(ARCHITECTURES.values())
    if not isinstance(archs, list):
        raise ConfigError(f"config.json architectures must be a list, got {archs!r}"[:300])
    if not (isinstance(model_type, str) and model_type in ARCHITECTURES) and not any(a in known for a in archs):
        raise ConfigError(
            f"not a Llama or Mistral checkpoint (model_type={model_type!r}, architectures={archs!r})"
        )
    if archs and not any(a in known for a in archs):
        raise ConfigError(f"unsupported architecture {archs!r} (need one of {', '.join(known)})")
    dim = _int_field(cfg, "hidden_size")
    n_heads = _int_field(cfg, "num_attention_heads")
    n_kv = cfg.get("num_key_value_heads")
    n_kv_heads = n_heads if n_kv is None else _int_field(cfg, "num_key_value_heads")
    seq_len = _int_field(cfg, "max_position_embeddings", 2048)

    rope_theta, _ = _rope_settings(cfg)
    head_dim = cfg.get("head_dim")
    if head_dim is not None and (isinstance(head_dim, bool) or not isinstance(head_dim, int) or n_heads <= 0
                                 or head_dim * n_heads != dim):
        raise ConfigError(
            f"head_dim {str(head_dim)[:50]} != hidden_size / num_attention_heads ({dim} / {n_heads}) "
            "is not supported"
        )
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise ConfigError(f"{key}=true is not supported")
    window = cfg.get("sliding_window")
    if window is not None and cfg.get("use_sliding_window", True) and (
            isinstance(window, bool) or not isinstance(window, int) or window < seq_len):
        raise ConfigError(f"sliding-window attention (sliding_window={window!r}, shorter than the {seq_len}-position "
                          "context) is not supported")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"hidden_act {act!r} is not supported (need silu)")
    rope_theta = _float(rope_theta, "rope_theta")
    eps = _float(cfg.get("rms_norm_eps", 1e-6), "rms_norm_eps")
    return Config(
        dim=dim,
        hidden_dim=_int_field(cfg, "intermediate_size"),
        n_layers=_int_field(cfg, "num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=_int_field(cfg, "vocab_size"),
        seq_len=seq_len,
        norm_eps=eps,
        rope_theta=rope_theta,
        bos_id=_token_id(cfg, "bos_token_id", 1),
        eos_id=_token_id(cfg, "eos_token_id", 2),
    )


def hf_rope_freq_factors(cfg: Mapping[str, Any], config: Config) -> Optional[np.ndarray]:
    """The RoPE frequency divisors of a config with ``llama3`` scaling (see
    :func:`llama3_rope_freq_factors`), or None without scaling."""
    _, settings = _rope_settings(cfg)
    if settings is None:
        return None
    with np.errstate(all="ignore"):
        factors = llama3_rope_freq_factors(config.head_size, config.rope_theta, **settings)
    if not np.all(np.isfinite(factors) & (factors > 0)):
        raise ConfigError(f"rope_scaling {settings} gives RoPE divisors that are not positive finite numbers")
    return factors


def _token_ids(value: Any, where: str, vocab_size: int) -> List[int]:
    values = value if isinstance(value, list) else [] if value is None else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vocab_size:
            raise ConfigError(f"{where} eos_token_id must be token ids in [0, {vocab_size}), got {value!r}")
    return list(values)


def _chat_template(directory: Path) -> Optional[str]:
    """The jinja chat template of ``tokenizer_config.json``, kept for chat front ends."""
    path = directory / "tokenizer_config.json"
    settings = _read_json(path) if path.is_file() else None
    template = settings.get("chat_template") if isinstance(settings, Mapping) else None
    return template if isinstance(template, str) else None


def hf_stop_ids(directory: PathLike, cfg: Mapping[str, Any], config: Config) -> List[int]:
    """Every ``eos_token_id`` of ``config.json`` and ``generation_config.json`` (each may be a
    list: Llama 3 Instruct ends at <|end_of_text|>, <|eom_id|> and <|eot_id|>)."""
    stops = _token_ids(cfg.get("eos_token_id"), "config.json", config.vocab_size)
    generation = Path(os.fspath(directory)) / "generation_config.json"
    if generation.is_file():
        gen = _read_json(generation)
        if not isinstance(gen, Mapping):
            raise ConfigError(f"{generation} must hold a JSON object")
        stops += _token_ids(gen.get("eos_token_id"), "generation_config.json", config.vocab_size)
    return list(dict.fromkeys(stops))


def config_to_hf_config(config: Config, tied: bool = True, torch_dtype: str = "float32") -> Dict[str, Any]:
    """The ``config.json`` dict transformers would write for this shape."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_size,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "tie_word_embeddings": bool(tied),
        "bos_token_id": config.bos_id,
        "eos_token_id": config.eos_id,
        "torch_dtype": torch_dtype,
        "use_cache": True,
    }


# ---------------------------------------------------------------------------------------
# RoPE row order


def interleave_rows(n_heads: int, head_size: int) -> np.ndarray:
    """Row indices ``idx`` with ``canonical = hf[idx]`` (llama2.c's ``permute_reverse``).

    Canonical (interleaved) row ``h*hd + 2i + j`` is HF (rotate-half) row ``h*hd + j*hd/2 + i``.
    """
    half = head_size // 2
    h = np.arange(n_heads)[:, None, None]
    i = np.arange(half)[None, :, None]
    j = np.arange(2)[None, None, :]
    return (h * head_size + j * half + i).reshape(-1)  # [h, i, j] order = canonical order


def rotate_half_rows(n_heads: int, head_size: int) -> np.ndarray:
    """Row indices with ``hf = canonical[idx]`` (transformers' ``permute``): the inverse of
    :func:`interleave_rows`."""
    forward = interleave_rows(n_heads, head_size)
    inverse = np.empty_like(forward)
    inverse[forward] = np.arange(forward.size)
    return inverse


def permute_rows(matrix: Union[np.ndarray, AffineQuantized, safetensors.StoredTensor], rows: np.ndarray):
    if isinstance(matrix, safetensors.StoredTensor):
        return matrix.take_rows(rows)  # still unread
    if isinstance(matrix, AffineQuantized):
        return AffineQuantized(
            q=np.ascontiguousarray(matrix.q[rows]),
            scales=np.ascontiguousarray(matrix.scales[rows]),
            zeros=np.ascontiguousarray(matrix.zeros[rows]),
            group_size=matrix.group_size,
            bits=matrix.bits,
            perm=matrix.perm,
        )
    return np.ascontiguousarray(np.asarray(matrix)[rows])


# ---------------------------------------------------------------------------------------
# GPTQ


def _quant_settings(directory: Path, cfg: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The GPTQ settings of a checkpoint, or None for a float one."""
    found: Dict[str, Any] = {}
    in_config = cfg.get("quantization_config")
    if in_config is not None:
        if not isinstance(in_config, Mapping):
            raise ConfigError("config.json quantization_config must be an object")
        found.update(in_config)
    qfile = directory / "quantize_config.json"
    if qfile.is_file():
        from_file = _read_json(qfile)
        if not isinstance(from_file, Mapping):
            raise ConfigError(f"{qfile} must hold a JSON object")
        found.update(from_file)
        found.setdefault("quant_method", "gptq")  # AutoGPTQ's file has no quant_method
    if not found:
        return None
    method = str(found.get("quant_method", "gptq")).lower()
    if method != "gptq":
        raise ConfigError(f"quantization method {method!r} is not supported (only GPTQ)")
    bits = found.get("bits")
    if bits not in (4, 8) or isinstance(bits, bool):
        raise ConfigError(f"GPTQ bits must be 4 or 8, got {bits!r}")
    group_size = found.get("group_size", -1)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or not (group_size == -1 or group_size > 0):
        raise ConfigError(f"GPTQ group_size must be -1 or positive, got {group_size!r}")
    fmt = found.get("checkpoint_format") or found.get("format") or "gptq"
    fmt = str(fmt).lower()
    if fmt not in GPTQ_FORMATS:
        raise ConfigError(f"GPTQ checkpoint_format {fmt!r} is not supported (need gptq or gptq_v2)")
    pack_dtype = str(found.get("pack_dtype", "int32")).replace("torch.", "")
    if pack_dtype != "int32":
        raise ConfigError(f"GPTQ pack_dtype {pack_dtype!r} is not supported (need int32)")
    dynamic = found.get("dynamic")
    if dynamic and not isinstance(dynamic, (dict, list)):
        raise ConfigError(f"GPTQ dynamic must be an object, got {dynamic!r}"[:300])
    if dynamic:
        positive = [k for k in dynamic if not str(k).startswith("-:")]
        if positive:
            raise ConfigError(f"GPTQ per-module overrides (dynamic {positive}) are not supported")
    meta = found.get("meta") if isinstance(found.get("meta"), Mapping) else {}
    return {
        "method": "gptq",
        "bits": int(bits),
        "group_size": int(group_size),
        "desc_act": bool(found.get("desc_act", False)),
        "sym": bool(found.get("sym", True)),
        "checkpoint_format": fmt,
        "quantizer": meta.get("quantizer") if meta else None,
    }


def gptq_v1_offset(bits: int, word_bits: int = 32) -> int:
    """The word-wide constant v1 subtracted: 1 in every ``bits``-wide field."""
    return sum(1 << (bits * k) for k in range(word_bits // bits))


def _unsigned_words(packed: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(packed)
    if array.dtype.kind not in "iu" or array.dtype.itemsize != 4 or array.ndim != 2:
        raise ModelFileError(f"{what} must be a 2-D int32 tensor, got {array.dtype} {array.shape}")
    return array.view(np.uint32) if array.dtype.kind == "i" else array


def _unpack_words(words: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """uint8 values of 32-bit words, lowest bits first, expanded along ``axis`` (0 or 1)."""
    pf = 32 // bits
    shifts = (np.arange(pf, dtype=np.uint32) * np.uint32(bits))
    mask = np.uint32((1 << bits) - 1)
    if axis == 0:
        values = (words[:, None, :] >> shifts[None, :, None]) & mask  # [R, pf, C]
        return values.reshape(words.shape[0] * pf, words.shape[1]).astype(np.uint8)
    values = (words[:, :, None] >> shifts[None, None, :]) & mask  # [G, Z, pf]
    return values.reshape(words.shape[0], words.shape[1] * pf).astype(np.uint8)


def unpack_gptq(
    qweight: np.ndarray,
    qzeros: np.ndarray,
    scales: np.ndarray,
    g_idx: Optional[np.ndarray],
    in_features: int,
    out_features: int,
    bits: int,
    group_size: int,
    checkpoint_format: str = "gptq",
    name: str = "GPTQ layer",
) -> AffineQuantized:
    """One GPTQ linear layer (HF row order) as an :class:`AffineQuantized` ``[out, in]``.

    See the module doc for the conventions (v1 zero restore, padding, act-order).
    """
    if bits not in (4, 8):
        raise ConfigError(f"{name}: GPTQ bits must be 4 or 8, got {bits}")
    if checkpoint_format not in GPTQ_FORMATS:
        raise ConfigError(f"{name}: unsupported checkpoint_format {checkpoint_format!r}")
    if group_size != -1 and group_size < 1:
        raise ConfigError(f"{name}: GPTQ group_size must be -1 or positive, got {group_size}")
    pf = 32 // bits
    # A group wider than the layer is one group (and an absurd size must not overflow int64).
    gs = in_features if group_size == -1 else min(int(group_size), in_features)
    groups = -(-in_features // gs)
    qw = _unsigned_words(qweight, f"{name}.qweight")
    qz = _unsigned_words(qzeros, f"{name}.qzeros")
    sc = np.asarray(scales)
    if qw.shape[0] * pf < in_features or qw.shape[1] < out_features:
        raise ModelFileError(
            f"{name}.qweight {list(qw.shape)} is too small for {in_features} inputs x "
            f"{out_features} outputs at {bits} bits"
        )
    if qz.shape[0] < groups or qz.shape[1] * pf < out_features:
        raise ModelFileError(
            f"{name}.qzeros {list(qz.shape)} is too small for {groups} groups x {out_features} outputs"
        )
    if sc.ndim != 2 or sc.shape[0] < groups or sc.shape[1] < out_features:
        raise ModelFileError(f"{name}.scales {list(sc.shape)} is too small for {groups} groups x {out_features} outputs")
    if sc.dtype.kind != "f":
        raise ModelFileError(f"{name}.scales must be floating point, got {sc.dtype}")

    q = _unpack_words(qw, bits, axis=0)[:in_features, :out_features]  # [in, out]
    if checkpoint_format == "gptq":
        # v1 -> v2 exactly like GPTQModel: add 1 to every field of the whole word, wrapping.
        qz = qz + np.uint32(gptq_v1_offset(bits))
    zeros = _unpack_words(qz, bits, axis=1)[:groups, :out_features]  # [groups, out]
    scales32 = np.asarray(sc[:groups, :out_features], dtype=np.float32)  # [groups, out]

    trivial = np.arange(in_features, dtype=np.int64) // gs
    perm: Optional[np.ndarray] = None
    if g_idx is not None:
        gi = np.asarray(g_idx)
        if gi.ndim != 1 or gi.shape[0] < in_features or gi.dtype.kind not in "iu":
            raise ModelFileError(f"{name}.g_idx must be an integer vector of >= {in_features} entries")
        gi = gi[:in_features].astype(np.int64)
        if not np.array_equal(gi, trivial):
            order = np.argsort(gi, kind="stable")
            if not np.array_equal(gi[order], trivial):
                raise ModelFileError(
                    f"{name}: unsupported g_idx layout (groups must hold exactly group_size="
                    f"{gs} inputs each)"
                )
            perm = order.astype(np.int32)
    q_out_in = q.T  # [out, in], input features in original order
    if perm is not None:
        q_out_in = q_out_in[:, perm]  # stored column j = input perm[j]
    return AffineQuantized(
        q=np.ascontiguousarray(q_out_in),
        scales=np.ascontiguousarray(scales32.T),
        zeros=np.ascontiguousarray(zeros.T),
        group_size=min(gs, in_features),
        bits=bits,
        perm=perm,
    )


# ---------------------------------------------------------------------------------------
# loading


def _safetensors_files(directory: Path) -> Tuple[List[Path], Optional[Dict[str, str]]]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        data = _read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, Mapping) else None
        if not isinstance(weight_map, Mapping) or not weight_map:
            raise ModelFileError(f"{index}: no weight_map")
        files = []
        for fname in weight_map.values():
            if not isinstance(fname, str) or os.path.basename(fname) != fname or "\0" in fname:
                raise ModelFileError(f"{index}: bad shard file name {fname!r}"[:300])
        for fname in dict.fromkeys(weight_map.values()):
            files.append(directory / fname)
        return files, {str(k): str(v) for k, v in weight_map.items()}
    single = directory / "model.safetensors"
    if single.is_file():
        return [single], None
    found = sorted(directory.glob("*.safetensors"))
    if found:
        return found, None
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
        raise ModelFileError(f"{directory}: only safetensors checkpoints are supported (found .bin/.pt)")
    raise ModelFileError(f"{directory}: no model.safetensors, index or *.safetensors file")


class _UsedTensors(dict):
    """The checkpoint's tensors, remembering which were read (``[]`` or ``get``)."""

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        super().__init__(tensors)
        self.used: set[str] = set()

    def __getitem__(self, name: str) -> Any:
        self.used.add(name)
        return super().__getitem__(name)

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        self.used.add(name)
        return super().get(name, default)


def _read_tensors(directory: Path) -> Dict[str, safetensors.StoredTensor]:
    """Every tensor of the checkpoint, unread (see :func:`safetensors.read_lazy`)."""
    files, weight_map = _safetensors_files(directory)
    tensors: Dict[str, safetensors.StoredTensor] = {}
    for path in files:
        if not path.is_file():
            raise ModelFileError(f"missing shard {path}")
        for name, array in safetensors.read_lazy(path).items():
            if weight_map is not None and weight_map.get(name, path.name) != path.name:
                continue  # the index places this tensor in another shard
            if name in tensors:
                raise ModelFileError(f"tensor {name!r} appears in more than one file")
            tensors[name] = array
    if weight_map is not None:
        missing = [n for n in weight_map if n not in tensors]
        if missing:
            raise ModelFileError(f"tensors listed in the index but absent from their shard: {missing[:5]}")
    return tensors


def _float_tensor(tensors: Mapping[str, safetensors.StoredTensor], name: str, shape: Tuple[int, ...]) -> Any:
    """A float tensor, checked: a vector (norm) read now as float32, a matrix left unread (its
    :class:`~llama2rs.formats.safetensors.StoredTensor`), so that a 7B checkpoint is converted
    one matrix at a time where it is used and never needs 27 GB of float32 at once."""
    if name not in tensors:
        raise ModelFileError(f"checkpoint lacks tensor {name!r}")
    array = tensors[name]
    if tuple(array.shape) != shape:
        raise ModelFileError(f"tensor {name!r} has shape {list(array.shape)}, expected {list(shape)}")
    if array.dtype.kind != "f":
        raise ModelFileError(f"tensor {name!r} must be floating point, got {array.dtype}")
    if len(shape) == 2:
        return array
    return np.ascontiguousarray(np.asarray(array), dtype=np.float32)


def _linear(
    tensors: Mapping[str, safetensors.StoredTensor], prefix: str, out_features: int, in_features: int,
    quant: Optional[Mapping[str, Any]],
) -> Union[safetensors.StoredTensor, AffineQuantized]:
    bias = tensors.get(prefix + ".bias")
    if bias is not None and np.any(np.asarray(bias, dtype=np.float32) != 0):
        raise ModelFileError(f"{prefix}.bias: biases are not supported")
    if prefix + ".qweight" in tensors:
        if quant is None:
            raise ModelFileError(f"{prefix}.qweight found but the checkpoint has no GPTQ config")
        for part in ("qzeros", "scales"):
            if f"{prefix}.{part}" not in tensors:
                raise ModelFileError(f"checkpoint lacks tensor {prefix}.{part!s}")
        g_idx = tensors.get(prefix + ".g_idx")
        return unpack_gptq(
            np.asarray(tensors[prefix + ".qweight"]), np.asarray(tensors[prefix + ".qzeros"]),
            np.asarray(tensors[prefix + ".scales"]), None if g_idx is None else np.asarray(g_idx),
            in_features, out_features, quant["bits"],
            quant["group_size"], quant["checkpoint_format"], name=prefix,
        )
    return _float_tensor(tensors, prefix + ".weight", (out_features, in_features))


# Where checkpoints keep their tokenizer, in order of preference: sentencepiece or tiktoken
# (Llama 2, Mistral; recognised by content), HuggingFace's byte-level BPE (Llama 3), and the
# tiktoken file Meta's Llama 3 repositories keep under original/.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "original/tokenizer.model")


def find_tokenizer(directory: PathLike) -> Optional[Path]:
    """The checkpoint's tokenizer file (see ``TOKENIZER_FILES``), if it has one."""
    for name in TOKENIZER_FILES:
        tokenizer = Path(os.fspath(directory)) / name
        if tokenizer.is_file():
            return tokenizer
    return None


def load_hf(directory: PathLike) -> Weights:
    """Read a HuggingFace Llama checkpoint directory (float or GPTQ) into canonical layout.

    Raises :class:`ConfigError` for an unsupported/inconsistent config and
    :class:`ModelFileError` for missing, mis-shaped or corrupt tensors.
    """
    directory = Path(os.fspath(directory))
    if not directory.is_dir():
        raise ModelFileError(f"{directory} is not a directory")
    cfg = _read_json(directory / "config.json")
    config = hf_config_to_config(cfg)
    quant = _quant_settings(directory, cfg)
    tensors = _UsedTensors(_read_tensors(directory))

    dim, hidden, hd = config.dim, config.hidden_dim, config.head_size
    q_rows = interleave_rows(config.n_heads, hd)
    k_rows = interleave_rows(config.n_kv_heads, hd)
    shapes = {
        "wq": (config.n_heads * hd, dim), "wk": (config.kv_dim, dim), "wv": (config.kv_dim, dim),
        "wo": (dim, config.n_heads * hd), "w1": (hidden, dim), "w2": (dim, hidden), "w3": (hidden, dim),
    }
    layers: List[Dict[str, Any]] = []
    for layer in range(config.n_layers):
        base = f"model.layers.{layer}."
        entry: Dict[str, Any] = {}
        for key, hf_name in HF_NORM_NAMES.items():
            entry[key] = _float_tensor(tensors, base + hf_name + ".weight", (dim,))
        for key, hf_name in HF_LINEAR_NAMES.items():
            out_f, in_f = shapes[key]
            entry[key] = _linear(tensors, base + hf_name, out_f, in_f, quant)
        entry["wq"] = permute_rows(entry["wq"], q_rows)
        entry["wk"] = permute_rows(entry["wk"], k_rows)
        layers.append(entry)

    embedding = _float_tensor(tensors, "model.embed_tokens.weight", (config.vocab_size, dim))
    rms_final = _float_tensor(tensors, "model.norm.weight", (dim,))
    tied = bool(cfg.get("tie_word_embeddings", False))
    wcls: Any = None
    if not tied:
        if "lm_head.weight" not in tensors and "lm_head.qweight" not in tensors:
            raise ModelFileError("checkpoint lacks lm_head.weight and tie_word_embeddings is false")
        wcls = _linear(tensors, "lm_head", config.vocab_size, dim, quant)
    if quant is not None:
        quant = dict(quant)
        quant["lm_head"] = isinstance(wcls, AffineQuantized)
    # A tensor nothing read is one we would drop silently: a part of another architecture, or
    # a broken checkpoint. (transformers itself ignores these two.)
    ignorable = ("rotary_emb.inv_freq",) + (("lm_head.weight",) if tied else ())
    unused = sorted(n for n in tensors if n not in tensors.used and not n.endswith(ignorable))
    if unused:
        raise ModelFileError(f"checkpoint has tensors a Llama does not use: {', '.join(unused[:5])}"
                             + (f" and {len(unused) - 5} more" if len(unused) > 5 else ""))
    metadata = {"format": "huggingface", "stop_ids": json.dumps(hf_stop_ids(directory, cfg, config))}
    template = _chat_template(directory)
    if template is not None:
        metadata["chat_template"] = template
    return Weights(config, embedding, layers, rms_final, wcls, quant, metadata, hf_rope_freq_factors(cfg, config))
