"""Test fixtures: HuggingFace Llama checkpoints (float, and GPTQ as AutoGPTQ or GPTQModel
write them) made from :class:`~llama2rs.weights.Weights` without torch, for the importer's tests.

They live with the tests, not in the package: nothing at run time writes HF checkpoints.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from llama2rs.errors import ArgumentError
from llama2rs.formats import safetensors
from llama2rs.formats.hf import (
    GPTQ_FORMATS,
    HF_LINEAR_NAMES,
    HF_NORM_NAMES,
    config_to_hf_config,
    gptq_v1_offset,
    interleave_rows,
    permute_rows,
    rotate_half_rows,
)
from llama2rs.quantize.affine import AffineQuantized
from llama2rs.quantize.gptq import quantize_rtn
from llama2rs.weights import Weights, dense

__all__ = ["hf_tensors", "write_hf_checkpoint", "write_gptq_checkpoint"]

PathLike = Any

_TORCH_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def hf_tensors(weights: Weights, tied: Optional[bool] = None) -> Dict[str, np.ndarray]:
    """HF-named float32 tensors (rotate-half wq/wk) of ``weights``; ``lm_head`` unless ``tied``
    (default: ``weights.tied``; untied weights written tied lose their classifier, tied ones
    written untied get a copy of the embedding)."""
    config = weights.config
    tied = weights.tied if tied is None else tied
    q_rows = rotate_half_rows(config.n_heads, config.head_size)
    k_rows = rotate_half_rows(config.n_kv_heads, config.head_size)
    f32 = lambda a: np.ascontiguousarray(dense(a), dtype=np.float32)  # noqa: E731
    out: Dict[str, np.ndarray] = {"model.embed_tokens.weight": f32(weights.token_embedding)}
    for layer, entry in enumerate(weights.layers):
        base = f"model.layers.{layer}."
        for key, hf_name in HF_NORM_NAMES.items():
            out[base + hf_name + ".weight"] = f32(entry[key])
        for key, hf_name in HF_LINEAR_NAMES.items():
            matrix = f32(entry[key])
            if key == "wq":
                matrix = matrix[q_rows]
            elif key == "wk":
                matrix = matrix[k_rows]
            out[base + hf_name + ".weight"] = np.ascontiguousarray(matrix)
    out["model.norm.weight"] = f32(weights.rms_final)
    if not tied:
        out["lm_head.weight"] = f32(weights.wcls)
    return out


def _write_tensor_files(
    directory: Path, tensors: Mapping[str, np.ndarray], dtypes: Mapping[str, str], shards: int,
    single_name: str = "model.safetensors",
) -> None:
    names = list(tensors)
    if shards < 1:
        raise ArgumentError(f"shards must be >= 1, got {shards}")
    if shards == 1:
        safetensors.write(directory / single_name, tensors, {"format": "pt"}, dtypes)
        return
    chunks = [c for c in np.array_split(np.arange(len(names)), shards)]
    weight_map: Dict[str, str] = {}
    total = 0
    for index, chunk in enumerate(chunks):
        fname = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {names[i]: tensors[names[i]] for i in chunk}
        safetensors.write(directory / fname, part, {"format": "pt"}, dtypes)
        for name in part:
            weight_map[name] = fname
            total += np.asarray(part[name]).nbytes
    with open(directory / "model.safetensors.index.json", "w", encoding="utf-8") as handle:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, handle, indent=2)


def _copy_tokenizer(directory: Path, tokenizer_model: Optional[PathLike]) -> None:
    if tokenizer_model is not None:
        (directory / "tokenizer.model").write_bytes(Path(os.fspath(tokenizer_model)).read_bytes())


def write_hf_checkpoint(
    directory: PathLike,
    weights: Weights,
    dtype: str = "float32",
    shards: int = 1,
    tied: Optional[bool] = None,
    tokenizer_model: Optional[PathLike] = None,
    extra_config: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write a float HF Llama checkpoint (config.json + safetensors, an index when sharded);
    ``extra_config`` entries are merged into config.json; ``tied`` as in :func:`hf_tensors`."""
    config = weights.config
    tied = weights.tied if tied is None else tied
    if dtype not in _TORCH_DTYPES:
        raise ArgumentError(f"dtype must be one of {sorted(_TORCH_DTYPES)}, got {dtype!r}")
    directory = Path(os.fspath(directory))
    directory.mkdir(parents=True, exist_ok=True)
    tensors = hf_tensors(weights, tied)
    st = _TORCH_DTYPES[dtype]
    _write_tensor_files(directory, tensors, {name: st for name in tensors}, shards)
    cfg = config_to_hf_config(config, tied, dtype)
    cfg.update(extra_config or {})
    with open(directory / "config.json", "w", encoding="utf-8") as handle:
        json.dump(cfg, handle, indent=2)
    _copy_tokenizer(directory, tokenizer_model)
    return directory


Quantizer = Callable[[np.ndarray, int, int, bool], AffineQuantized]


def _default_quantizer(w: np.ndarray, bits: int, group_size: int, sym: bool) -> AffineQuantized:
    return quantize_rtn(w, bits=bits, group_size=group_size, sym=sym)


def _pack_rows(values: np.ndarray, bits: int, rows_out: int) -> np.ndarray:
    """[n, C] values (< 2**bits, n <= rows_out*pf) -> uint32 [rows_out, C], packed along rows."""
    pf = 32 // bits
    padded = np.zeros((rows_out * pf, values.shape[1]), dtype=np.uint32)
    padded[: values.shape[0]] = values
    shifts = (np.arange(pf, dtype=np.uint32) * np.uint32(bits))[None, :, None]
    return (padded.reshape(rows_out, pf, -1) << shifts).sum(axis=1, dtype=np.uint64).astype(np.uint32)


def _pack_cols(values: np.ndarray, bits: int, cols_out: int) -> np.ndarray:
    """[G, n] values -> uint32 [G, cols_out], packed along columns (OR of shifted fields)."""
    pf = 32 // bits
    padded = np.zeros((values.shape[0], cols_out * pf), dtype=np.uint64)
    padded[:, : values.shape[1]] = values
    shifts = (np.arange(pf, dtype=np.uint64) * np.uint64(bits))[None, None, :]
    fields = padded.reshape(values.shape[0], cols_out, pf) << shifts
    out = np.zeros((values.shape[0], cols_out), dtype=np.uint64)
    for k in range(pf):
        out |= fields[:, :, k]
    return (out & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _gptq_layer_tensors(
    w_hf: np.ndarray, bits: int, group_size: int, desc_act: bool, sym: bool, tool: str,
    checkpoint_format: str, quantizer: Quantizer, rng: np.random.Generator, write_g_idx: bool,
) -> Tuple[Dict[str, np.ndarray], AffineQuantized]:
    """Quantize one HF-layout matrix [out, in] and pack it like ``tool``.

    Returns the tensors (without the module prefix) and the AffineQuantized (HF row order)
    that :func:`unpack_gptq` must recover from them.
    """
    out_f, in_f = w_hf.shape
    gs = in_f if group_size == -1 else group_size
    groups = -(-in_f // gs)
    order = rng.permutation(in_f) if desc_act else np.arange(in_f)  # "activation order"
    stored = quantizer(np.asarray(w_hf, dtype=np.float32)[:, order], bits, group_size, sym)
    if stored.perm is not None or stored.group_size != min(gs, in_f):
        raise ArgumentError("the quantizer must return contiguous groups of group_size, perm=None")
    g_idx = np.empty(in_f, dtype=np.int32)
    g_idx[order] = np.arange(in_f) // gs  # GPTQ: g_idx[perm[j]] = j // group_size
    q_orig = np.empty_like(stored.q)
    q_orig[:, order] = stored.q  # [out, in], original input order
    scales16 = stored.scales.T.astype(np.float16)  # [groups, out], as the tools store them
    zeros = stored.zeros.T.astype(np.int64)  # [groups, out]

    # What a loader must reconstruct (HF rows; groups contiguous after a stable sort of g_idx).
    canon = np.argsort(g_idx, kind="stable").astype(np.int32)
    trivial = np.array_equal(g_idx, np.arange(in_f) // gs)
    expected = AffineQuantized(
        q=np.ascontiguousarray(q_orig if trivial else q_orig[:, canon]),
        scales=np.ascontiguousarray(scales16.T.astype(np.float32)),
        zeros=np.ascontiguousarray(stored.zeros),
        group_size=min(gs, in_f),
        bits=bits,
        perm=None if trivial else canon,
    )

    pf = 32 // bits
    maxq = (1 << bits) - 1
    if tool == "autogptq":
        # AutoGPTQ (qlinear_cuda_old.pack): qweight [in/32*bits, out], qzeros [groups, out/32*bits]
        # with zeros - 1 OR-ed in unmasked (a zero of 0 spills ones into the higher fields).
        # AutoGPTQ floors in/32 and out/32; we round up to whole words with zero fields instead.
        qweight = _pack_rows(q_orig.T.astype(np.uint32), bits, -(-in_f // pf))
        z_minus_one = (zeros - 1) & 0xFFFFFFFF  # uint32(-1) for a zero point of 0
        pad_cols = -(-out_f // pf)
        padded = np.zeros((groups, pad_cols * pf), dtype=np.uint64)
        padded[:, :out_f] = z_minus_one
        qz = np.zeros((groups, pad_cols), dtype=np.uint64)
        for k in range(pf):
            qz |= (padded[:, k::pf][:, :pad_cols] << np.uint64(bits * k)) & np.uint64(0xFFFFFFFF)
        qzeros = qz.astype(np.uint32)
        scales_out = scales16
        g_out = g_idx
    elif tool == "gptqmodel":
        # GPTQModel packs zeros as-is (v2) and converts to v1 at save time by a word-wide
        # subtraction (convert_gptq_v2_to_v1_format_module). Its own saves use the unpadded
        # shapes (pack_block needs in % 32 == 0); its older auto-padding kernels grew out to a
        # multiple of 32 and in to a multiple of the group size by resize_() in post_init,
        # i.e. uninitialised memory, which a re-saved model carries. Emulated here: padding up
        # to those sizes (and whole 32-input blocks), random garbage in every padding field.
        out_pad = out_f + (-out_f % 32)
        step = 32 if group_size == -1 else math.lcm(32, gs)
        in_pad = in_f + (-in_f % step)
        groups_pad = -(-in_pad // gs)
        q_full = rng.integers(0, maxq + 1, size=(in_pad, out_pad), dtype=np.int64)
        q_full[:in_f, :out_f] = q_orig.T
        z_full = rng.integers(0, maxq + 1, size=(groups_pad, out_pad), dtype=np.int64)
        z_full[:groups, :out_f] = zeros
        qweight = _pack_rows(q_full.astype(np.uint32), bits, in_pad // pf)
        qzeros = _pack_cols(z_full.astype(np.uint64), bits, out_pad // pf)
        if checkpoint_format == "gptq":  # convert_gptq_v2_to_v1_format: word-wide subtraction
            qzeros = qzeros - np.uint32(gptq_v1_offset(bits))
        scales_out = rng.uniform(-4, 4, size=(groups_pad, out_pad)).astype(np.float16)
        scales_out[:groups, :out_f] = scales16
        g_out = rng.integers(0, groups_pad, size=in_pad).astype(np.int32)
        g_out[:in_f] = g_idx
    else:
        raise ArgumentError(f"tool must be 'autogptq' or 'gptqmodel', got {tool!r}")
    tensors: Dict[str, np.ndarray] = {
        "qweight": qweight.view(np.int32),
        "qzeros": np.ascontiguousarray(qzeros).view(np.int32),
        "scales": scales_out,
    }
    if write_g_idx:
        tensors["g_idx"] = g_out
    return tensors, expected


def write_gptq_checkpoint(
    directory: PathLike,
    float_weights: Weights,
    bits: int = 4,
    group_size: int = 128,
    desc_act: bool = False,
    sym: bool = True,
    tool: str = "autogptq",
    checkpoint_format: Optional[str] = None,
    quantizer: Optional[Quantizer] = None,
    seed: int = 0,
    tied: Optional[bool] = None,
    quantize_lm_head: bool = False,
    write_g_idx: bool = True,
    shards: int = 1,
    tokenizer_model: Optional[PathLike] = None,
) -> Dict[str, Any]:
    """Quantize float weights and write a GPTQ checkpoint as ``tool`` would.

    ``tool="autogptq"``: v1 zeros (``zero - 1``), ``checkpoint_format: gptq``, only a
    ``quantize_config.json`` (no ``quantization_config`` in config.json), one file named
    ``gptq_model-{bits}bit-{group}g.safetensors``. ``tool="gptqmodel"``: padded tensors with
    garbage in the padding, ``checkpoint_format`` ``"gptq"`` (default, GPTQModel's v2->v1
    word-wide conversion) or ``"gptq_v2"``, both config files, ``model.safetensors`` (or
    shards). ``quantizer(w, bits, group_size, sym) -> AffineQuantized`` (contiguous groups,
    default :func:`llama2rs.gptq.quantize_rtn`) is applied to the columns in act-order (a random
    permutation when ``desc_act``). Non-quantized tensors are stored as float16.

    Returns ``{"layers": [{name: AffineQuantized}], "wcls": AffineQuantized | None}`` in
    canonical (interleaved) layout: exactly what :func:`load_hf` must produce.
    """
    if bits not in (4, 8):
        raise ArgumentError(f"bits must be 4 or 8, got {bits}")
    if tool == "autogptq":
        fmt = checkpoint_format or "gptq"
        if fmt != "gptq":
            raise ArgumentError("AutoGPTQ writes checkpoint_format 'gptq' only")
    elif tool == "gptqmodel":
        fmt = checkpoint_format or "gptq"
        if fmt not in GPTQ_FORMATS:
            raise ArgumentError(f"checkpoint_format must be one of {GPTQ_FORMATS}, got {fmt!r}")
    else:
        raise ArgumentError(f"tool must be 'autogptq' or 'gptqmodel', got {tool!r}")
    config = float_weights.config
    tied = float_weights.tied if tied is None else tied
    if quantize_lm_head and tied:
        raise ArgumentError("quantize_lm_head needs tied=False")
    quantizer = quantizer or _default_quantizer
    rng = np.random.default_rng(seed)
    directory = Path(os.fspath(directory))
    directory.mkdir(parents=True, exist_ok=True)

    hf_float = hf_tensors(float_weights, tied)
    q_rows = interleave_rows(config.n_heads, config.head_size)
    k_rows = interleave_rows(config.n_kv_heads, config.head_size)
    tensors: Dict[str, np.ndarray] = {}
    expected_layers: List[Dict[str, AffineQuantized]] = []
    expected_wcls: Optional[AffineQuantized] = None
    quantized_names = {
        f"model.layers.{layer}.{hf_name}": (layer, key)
        for layer in range(config.n_layers) for key, hf_name in HF_LINEAR_NAMES.items()
    }
    if quantize_lm_head:
        quantized_names["lm_head"] = (-1, "wcls")
    for layer in range(config.n_layers):
        expected_layers.append({})
    for name, array in hf_float.items():
        prefix = name[: -len(".weight")]
        if prefix not in quantized_names:
            tensors[name] = array.astype(np.float16)
            continue
        layer, key = quantized_names[prefix]
        parts, expected = _gptq_layer_tensors(
            array, bits, group_size, desc_act, sym, tool, fmt, quantizer, rng, write_g_idx
        )
        for part, value in parts.items():
            tensors[f"{prefix}.{part}"] = value
        if key == "wq":
            expected = permute_rows(expected, q_rows)
        elif key == "wk":
            expected = permute_rows(expected, k_rows)
        if layer < 0:
            expected_wcls = expected
        else:
            expected_layers[layer][key] = expected

    quant_cfg: Dict[str, Any] = {
        "bits": bits,
        "group_size": group_size,
        "damp_percent": 0.01,
        "desc_act": desc_act,
        "static_groups": False,
        "sym": sym,
        "true_sequential": True,
        "quant_method": "gptq",
        "checkpoint_format": fmt,
    }
    hf_cfg = config_to_hf_config(config, tied, "float16")
    if tool == "autogptq":
        quant_cfg.update({"model_name_or_path": None, "model_file_base_name": "model"})
        fname = f"gptq_model-{bits}bit-{group_size}g.safetensors"
        _write_tensor_files(directory, tensors, {}, 1, single_name=fname)
    else:
        quant_cfg.update({
            "lm_head": quantize_lm_head,
            "pack_dtype": "int32",
            "meta": {"quantizer": ["gptqmodel:2.0.0"], "uri": "https://github.com/modelcloud/gptqmodel"},
        })
        hf_cfg["quantization_config"] = dict(quant_cfg)
        _write_tensor_files(directory, tensors, {}, shards)
    with open(directory / "quantize_config.json", "w", encoding="utf-8") as handle:
        json.dump(quant_cfg, handle, indent=2)
    with open(directory / "config.json", "w", encoding="utf-8") as handle:
        json.dump(hf_cfg, handle, indent=2)
    _copy_tokenizer(directory, tokenizer_model)
    return {"layers": expected_layers, "wcls": expected_wcls}
