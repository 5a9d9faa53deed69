"""The HuggingFace importer (llama2rs.hf) and the independent HF forward (llama2rs.hf_reference)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from llama2rs import reference
from llama2rs.formats import hf, safetensors
from llama2rs.config import Config
from llama2rs.errors import ConfigError, ModelFileError
from llama2rs.formats.llama2c import read_model, write_legacy
from llama2rs.quantize.affine import AffineQuantized
from support import hf_reference, hf_writers
from support.fixtures import random_weights, stacked

TOKENS = [1, 7, 3, 30, 2, 11, 5, 19, 0, 4]


def make_config(dim=48, hidden=92, layers=2, heads=6, kv=2, vocab=40, seq_len=32) -> Config:
    return Config(dim=dim, hidden_dim=hidden, n_layers=layers, n_heads=heads, n_kv_heads=kv,
                  vocab_size=vocab, seq_len=seq_len)


def raw_safetensors(entries, data: bytes, metadata=None, pad_to=8) -> bytes:
    """A safetensors file built by hand: entries {name: (dtype, shape, begin, end)}."""
    header = {name: {"dtype": d, "shape": list(s), "data_offsets": [b, e]} for name, (d, s, b, e) in entries.items()}
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % pad_to)
    return struct.pack("<Q", len(text)) + text + data


def all_tensors(directory: Path) -> dict:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(safetensors.read(path))
    return tensors


# ----------------------------------------------------------------------------- safetensors


def test_read_hand_written_safetensors(tmp_path):
    f32 = np.array([[1.0, -2.5, 3.25], [0.0, 1e-3, -7.0]], dtype="<f4")
    f16 = np.array([0.5, -1.5, 65504.0, 2.0 ** -24], dtype="<f2")
    # bfloat16 = upper 16 bits of float32: 1.0 = 0x3F80, -2.0 = 0xC000, 3.140625 = 0x4049
    bf16 = struct.pack("<3H", 0x3F80, 0xC000, 0x4049)
    i32 = np.array([-1, 2147483647, 5], dtype="<i4")
    i64 = np.array([[-(2 ** 40)], [3]], dtype="<i8")
    u8 = bytes([0, 255, 7])
    i8 = struct.pack("<2b", -128, 127)
    boolean = bytes([1, 0])
    blobs = [("a", "F32", f32.shape, f32.tobytes()), ("h", "F16", f16.shape, f16.tobytes()),
             ("b", "BF16", (3,), bf16), ("i", "I32", i32.shape, i32.tobytes()),
             ("l", "I64", i64.shape, i64.tobytes()), ("u", "U8", (3,), u8), ("s", "I8", (2,), i8),
             ("t", "BOOL", (2,), boolean), ("empty", "F32", (0, 4), b"")]
    entries, data = {}, b""
    for name, dtype, shape, blob in blobs:
        entries[name] = (dtype, shape, len(data), len(data) + len(blob))
        data += blob
    path = tmp_path / "x.safetensors"
    path.write_bytes(raw_safetensors(entries, data, metadata={"format": "pt"}))

    got = safetensors.read(path)
    assert list(got) == [name for name, *_ in blobs]
    np.testing.assert_array_equal(got["a"], f32)
    assert got["a"].dtype == np.float32 and not got["a"].flags.writeable  # a read-only map
    np.testing.assert_array_equal(got["h"], f16)
    assert got["h"].dtype == np.float16
    assert got["b"].dtype == np.float32
    np.testing.assert_array_equal(got["b"], [1.0, -2.0, 3.140625])
    np.testing.assert_array_equal(got["i"], i32)
    np.testing.assert_array_equal(got["l"], i64)
    np.testing.assert_array_equal(got["u"], [0, 255, 7])
    np.testing.assert_array_equal(got["s"], [-128, 127])
    np.testing.assert_array_equal(got["t"], [True, False])
    assert got["empty"].shape == (0, 4)
    raw_bits = safetensors.read(path, bf16_to_float32=False)["b"]
    np.testing.assert_array_equal(raw_bits, [0x3F80, 0xC000, 0x4049])


def test_write_safetensors_round_trip_and_bf16_rounding(tmp_path):
    values = np.array([1.0, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, -3.0e38, 1e-40, 0.1], dtype=np.float32)
    halves = np.array([1.0, 0.1, -65504.0, 3e-5], dtype=np.float32)
    tensors = {"x": values, "y": np.arange(6, dtype=np.int32).reshape(2, 3), "z": halves}
    path = tmp_path / "w.safetensors"
    safetensors.write(path, tensors, {"format": "pt"}, dtypes={"x": "BF16", "z": "F16"})
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_len % 8 == 0
    got = safetensors.read(path)
    # Round to nearest even at bit 16: 1 + 2^-8 is a tie -> 1.0; 1 + 3*2^-8 -> 1 + 2^-6.
    expected_bf16 = [1.0, 1.0, 1.0 + 2.0 ** -6]
    np.testing.assert_array_equal(got["x"][:3], expected_bf16)
    bits = got["x"].view(np.uint32)
    assert np.all(bits & 0xFFFF == 0)
    np.testing.assert_allclose(got["x"][3:], values[3:], rtol=2.0 ** -8, atol=2.0 ** -133)
    np.testing.assert_array_equal(got["y"], tensors["y"])
    assert got["z"].dtype == np.float16
    np.testing.assert_array_equal(got["z"], halves.astype(np.float16))


def _valid_file() -> tuple[dict, bytes]:
    data = np.arange(6, dtype="<f4").tobytes()
    return {"w": ("F32", (2, 3), 0, 24)}, data


@pytest.mark.parametrize("case", [
    "empty", "short_prefix", "header_too_long", "truncated_data", "bad_json", "not_object",
    "size_mismatch", "unknown_dtype", "overlap", "missing_field", "negative_dim",
])
def test_corrupt_safetensors_raise(tmp_path, case):
    entries, data = _valid_file()
    blob = raw_safetensors(entries, data)
    if case == "empty":
        blob = b""
    elif case == "short_prefix":
        blob = b"\x10\x00\x00"
    elif case == "header_too_long":
        blob = struct.pack("<Q", 10 ** 6) + blob[8:]
    elif case == "truncated_data":
        blob = blob[:-5]
    elif case == "bad_json":
        text = b'{"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]'
        blob = struct.pack("<Q", len(text)) + text + data
    elif case == "not_object":
        text = b"[1, 2, 3]"
        blob = struct.pack("<Q", len(text)) + text + data
    elif case == "size_mismatch":
        blob = raw_safetensors({"w": ("F32", (2, 4), 0, 24)}, data)
    elif case == "unknown_dtype":
        blob = raw_safetensors({"w": ("F8_E4M3", (2, 3), 0, 24)}, data)
    elif case == "overlap":
        blob = raw_safetensors({"w": ("F32", (2, 3), 0, 24), "v": ("F32", (2,), 16, 24)}, data)
    elif case == "missing_field":
        text = json.dumps({"w": {"dtype": "F32", "shape": [2, 3]}}).encode()
        blob = struct.pack("<Q", len(text)) + text + data
    elif case == "negative_dim":
        blob = raw_safetensors({"w": ("F32", (-2, -3), 0, 24)}, data)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(ModelFileError):
        safetensors.read(path)


def test_missing_safetensors_file(tmp_path):
    with pytest.raises(ModelFileError):
        safetensors.read(tmp_path / "nope.safetensors")


# ----------------------------------------------------------------------------- RoPE row order


@pytest.mark.parametrize("heads,hd", [(1, 2), (3, 8), (4, 10)])
def test_row_orders_match_llama2c_and_transformers(heads, hd):
    dim = 5
    rng = np.random.default_rng(0)
    canonical = rng.standard_normal((heads * hd, dim))
    # transformers' convert_llama_weights_to_hf.permute (meta/interleaved -> HF rotate-half)
    hf_layout = canonical.reshape(heads, hd // 2, 2, dim).transpose(0, 2, 1, 3).reshape(heads * hd, dim)
    np.testing.assert_array_equal(canonical[hf.rotate_half_rows(heads, hd)], hf_layout)
    # llama2.c export.py permute_reverse (HF -> interleaved)
    back = hf_layout.reshape(heads, 2, hd // 2, dim).transpose(0, 2, 1, 3).reshape(heads * hd, dim)
    np.testing.assert_array_equal(back, canonical)
    np.testing.assert_array_equal(hf_layout[hf.interleave_rows(heads, hd)], canonical)


# ----------------------------------------------------------------------------- float round trip


SHAPES = [
    dict(dim=48, hidden=92, heads=6, kv=6),  # MHA (kv_mul 1)
    dict(dim=48, hidden=92, heads=6, kv=3),  # GQA 2
    dict(dim=64, hidden=172, heads=8, kv=2),  # GQA 4
    dict(dim=60, hidden=100, heads=6, kv=2, vocab=37),  # dims not multiples of 8, head size 10
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(str(v) for v in s.values()))
@pytest.mark.parametrize("tied", [True, False])
def test_float_round_trip(tmp_path, shape, tied):
    config = make_config(**shape)
    weights = random_weights(config, seed=3, shared_classifier=tied)
    hf_writers.write_hf_checkpoint(tmp_path, weights, tied=tied, shards=1 if tied else 3)
    assert (tmp_path / "model.safetensors.index.json").is_file() == (not tied)
    model = hf.load_hf(tmp_path)
    assert model.config == config
    assert model.tied == tied and model.quantization is None and hf.find_tokenizer(tmp_path) is None
    got = stacked(model, dequantize=True)
    for name, value in stacked(weights).items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    for layer in model.layers:
        assert all(layer[k].dtype == np.float32 for k in layer)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_round_trip(tmp_path, dtype):
    config = make_config()
    weights = random_weights(config, seed=5, shared_classifier=False)
    hf_writers.write_hf_checkpoint(tmp_path, weights, dtype=dtype, tied=False)
    got = stacked(hf.load_hf(tmp_path), dequantize=True)
    for name, value in stacked(weights).items():
        if dtype == "float16":
            np.testing.assert_array_equal(got[name], value.astype(np.float16).astype(np.float32))
        else:
            assert np.all(got[name].view(np.uint32) & 0xFFFF == 0), name
            np.testing.assert_allclose(got[name], value, rtol=2.0 ** -8, atol=0)
            # nearest: no other bf16 value is closer than the one chosen
            step = np.abs(got[name]) * 2.0 ** -7
            assert np.all(np.abs(got[name] - value) <= step / 2 * (1 + 1e-6)), name


def test_sharded_index_and_extras(tmp_path):
    config = make_config(layers=3)
    weights = random_weights(config, seed=1)
    tok = tmp_path / "src.model"
    tok.write_bytes(b"sentencepiece-bytes")
    out = tmp_path / "ckpt"
    hf_writers.write_hf_checkpoint(out, weights, shards=4, tokenizer_model=tok,
                           extra_config={"eos_token_id": [2, 9], "rms_norm_eps": 1e-6,
                                         "rope_theta": 500000.0})
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 4
    model = hf.load_hf(out)
    assert hf.find_tokenizer(out) == out / "tokenizer.model"
    assert model.config.eos_id == 2 and model.config.norm_eps == 1e-6
    assert model.config.rope_theta == 500000.0
    np.testing.assert_array_equal(stacked(model, dequantize=True)["w2"], stacked(weights)["w2"])

    # a shard listed in the index but missing
    (out / "model-00003-of-00004.safetensors").unlink()
    with pytest.raises(ModelFileError):
        hf.load_hf(out)


def test_checkpoint_errors(tmp_path):
    config = make_config(layers=1)
    weights = random_weights(config, seed=2)
    hf_writers.write_hf_checkpoint(tmp_path, weights)
    tensors = dict(safetensors.read(tmp_path / "model.safetensors"))

    # missing tensor
    del tensors["model.layers.0.mlp.up_proj.weight"]
    safetensors.write(tmp_path / "model.safetensors", tensors)
    with pytest.raises(ModelFileError, match="up_proj"):
        hf.load_hf(tmp_path)
    # wrong shape
    tensors["model.layers.0.mlp.up_proj.weight"] = np.zeros((3, 3), np.float32)
    safetensors.write(tmp_path / "model.safetensors", tensors)
    with pytest.raises(ModelFileError, match="shape"):
        hf.load_hf(tmp_path)
    # untied without lm_head
    tensors["model.layers.0.mlp.up_proj.weight"] = weights.layers[0]["w3"]
    safetensors.write(tmp_path / "model.safetensors", tensors)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="lm_head"):
        hf.load_hf(tmp_path)
    # no config / not a directory / no weights
    with pytest.raises(ModelFileError):
        hf.load_hf(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError):
        hf.load_hf(empty)
    (empty / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError):
        hf.load_hf(empty)


LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


@pytest.mark.parametrize("change,needle", [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),  # incomplete
    ({"rope_scaling": {**LLAMA3_SCALING, "high_freq_factor": 1.0}}, "must exceed"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "'linear'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "'yarn'"),
    ({"head_dim": 16}, "head_dim"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "gelu"),
    # Mistral v0.1: a 4096-position window in a longer context
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": 4096,
      "max_position_embeddings": 32768}, "sliding-window"),
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}, "not a Llama or Mistral"),
    ({"architectures": ["GemmaForCausalLM"]}, "unsupported architecture"),
    ({"hidden_size": 50}, "(50 / 6)"),  # not a multiple of 6 heads
    ({"num_hidden_layers": None}, "num_hidden_layers"),
])
def test_config_refusals(change, needle):
    hf_cfg = hf.config_to_hf_config(make_config())
    hf_cfg.update(change)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        hf.hf_config_to_config(hf_cfg)


@pytest.mark.parametrize("change", [
    {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": None},  # v0.2+
    {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": 4096,
     "max_position_embeddings": 4096},  # a window as long as the context never applies
    {"rope_scaling": LLAMA3_SCALING},
    {"rope_parameters": {**LLAMA3_SCALING, "rope_theta": 500000.0}},  # transformers 5
])
def test_config_accepts(change):
    hf_cfg = hf.config_to_hf_config(make_config())
    hf_cfg.update(change)
    config = hf.hf_config_to_config(hf_cfg)
    factors = hf.hf_rope_freq_factors(hf_cfg, config)
    scaled = "rope_scaling" in change or "rope_parameters" in change
    assert (factors is not None) == scaled
    if "rope_parameters" in change:
        assert config.rope_theta == 500000.0


def test_llama3_rope_factors_follow_meta():
    """The divisors the exporter stores give Meta's apply_scaling frequencies (written
    independently in the reference), for Llama 3.1 8B's head size and theta."""
    factors = hf.llama3_rope_freq_factors(128, 500000.0, 8.0, 1.0, 4.0, 8192)
    freqs = 1.0 / (500000.0 ** (np.arange(0, 128, 2) / 128))
    expected = reference.llama3_scaled_frequencies(freqs, 8.0, 1.0, 4.0, 8192)
    np.testing.assert_allclose(freqs / factors, expected, rtol=1e-6)
    assert factors[0] == 1.0 and factors[-1] == 8.0 and np.any((factors > 1) & (factors < 8))  # all three regimes


def test_stop_ids_from_config_and_generation_config(tmp_path):
    config = make_config()
    hf_cfg = {**hf.config_to_hf_config(config), "eos_token_id": [2, 5]}
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 7]}))
    assert hf.hf_stop_ids(tmp_path, hf_cfg, config) == [2, 5, 7]
    assert hf.hf_config_to_config(hf_cfg).eos_id == 2
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [config.vocab_size]}))
    with pytest.raises(ConfigError, match="generation_config.json eos_token_id"):
        hf.hf_stop_ids(tmp_path, hf_cfg, config)


def test_config_defaults():
    hf_cfg = hf.config_to_hf_config(make_config(heads=6, kv=6))
    for key in ("num_key_value_heads", "head_dim", "rope_theta", "rope_scaling", "rms_norm_eps",
                "bos_token_id", "eos_token_id", "architectures"):
        del hf_cfg[key]
    config = hf.hf_config_to_config(hf_cfg)
    assert config.n_kv_heads == 6 and config.rope_theta == 10000.0 and config.norm_eps == 1e-6
    assert (config.bos_id, config.eos_id) == (1, 2)
    hf_cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 1234.0}
    assert hf.hf_config_to_config(hf_cfg).rope_theta == 1234.0


# ----------------------------------------------------------------------------- HF forward


@pytest.mark.parametrize("heads,kv", [(4, 4), (4, 2), (8, 2)])
@pytest.mark.parametrize("tied", [True, False])
def test_hf_forward_matches_llama2c_reference(tmp_path, heads, kv, tied):
    """HF's rotate-half model on HF tensors == llama2.c's interleaved model on the canonical
    weights: proves the q/k row permutation and the RoPE equivalence."""
    config = make_config(dim=64, hidden=172, heads=heads, kv=kv)  # eps 1e-5, theta 10000
    weights = random_weights(config, seed=11, shared_classifier=tied)
    hf_writers.write_hf_checkpoint(tmp_path / "hf", weights, tied=tied)
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    logits_hf = hf_reference.hf_forward(safetensors.read(tmp_path / "hf" / "model.safetensors"),
                                        hf_cfg, TOKENS)

    write_legacy(tmp_path / "m.bin", weights)
    logits_ref = reference.forward(read_model(tmp_path / "m.bin"), TOKENS)
    assert logits_hf.shape == (len(TOKENS), config.vocab_size)
    np.testing.assert_allclose(logits_hf, logits_ref, atol=1e-4, rtol=0)

    # the imported weights give the same model
    write_legacy(tmp_path / "i.bin", hf.load_hf(tmp_path / "hf"))
    np.testing.assert_allclose(reference.forward(read_model(tmp_path / "i.bin"), TOKENS), logits_ref,
                               atol=1e-6, rtol=0)

    # negative control: HF tensors without the rotate-half permutation are a different model
    unpermuted = dict(hf_writers.hf_tensors(weights, tied))
    for layer in range(config.n_layers):
        unpermuted[f"model.layers.{layer}.self_attn.q_proj.weight"] = weights.layers[layer]["wq"]
        unpermuted[f"model.layers.{layer}.self_attn.k_proj.weight"] = weights.layers[layer]["wk"]
    assert np.abs(hf_reference.hf_forward(unpermuted, hf_cfg, TOKENS) - logits_ref).max() > 1e-3


# ----------------------------------------------------------------------------- GPTQ

GPTQ_CONFIG = dict(dim=64, hidden=172, layers=1, heads=4, kv=2, vocab=40)  # in/out 64, 172


def check_gptq_layers(directory: Path, config: Config, model, expected, bits, group_size, fmt):
    """load_hf's matrices == the exact dequantization of the written tensors, computed
    independently (hf_reference.dequantize_gptq), and == what the writer quantized."""
    tensors = all_tensors(directory)
    q_rows = hf.interleave_rows(config.n_heads, config.head_size)
    k_rows = hf.interleave_rows(config.n_kv_heads, config.head_size)
    for layer in range(config.n_layers):
        for key, hf_name in hf.HF_LINEAR_NAMES.items():
            got = model.layers[layer][key]
            assert isinstance(got, AffineQuantized) and got.bits == bits
            out_f, in_f = got.shape
            prefix = f"model.layers.{layer}.{hf_name}"
            exact = hf_reference.dequantize_gptq(
                tensors[prefix + ".qweight"], tensors[prefix + ".qzeros"], tensors[prefix + ".scales"],
                tensors.get(prefix + ".g_idx"), in_f, out_f, bits, group_size, fmt)
            if key == "wq":
                exact = exact[q_rows]
            elif key == "wk":
                exact = exact[k_rows]
            np.testing.assert_array_equal(got.dequantize(), exact.astype(np.float32), err_msg=f"{prefix}")
            want = expected["layers"][layer][key]
            if "gptq_model-" in " ".join(p.name for p in directory.iterdir()) and np.any(want.zeros == 0):
                # AutoGPTQ's packer cannot store a zero point of 0 (see the test below).
                continue
            np.testing.assert_array_equal(got.q, want.q)
            np.testing.assert_array_equal(got.zeros, want.zeros)
            np.testing.assert_array_equal(got.scales, want.scales)
            assert (got.perm is None) == (want.perm is None)
            if got.perm is not None:
                np.testing.assert_array_equal(got.perm, want.perm)


@pytest.mark.parametrize("tool,fmt", [("autogptq", "gptq"), ("gptqmodel", "gptq"), ("gptqmodel", "gptq_v2")])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("desc_act", [False, True])
@pytest.mark.parametrize("sym", [False, True])
def test_gptq_import(tmp_path, tool, fmt, bits, group_size, desc_act, sym):
    config = make_config(**GPTQ_CONFIG)
    weights = random_weights(config, seed=7)
    expected = hf_writers.write_gptq_checkpoint(tmp_path, weights, bits=bits, group_size=group_size,
                                        desc_act=desc_act, sym=sym, tool=tool, checkpoint_format=fmt,
                                        seed=group_size % 97)
    model = hf.load_hf(tmp_path)
    q = model.quantization
    assert q is not None and q["bits"] == bits and q["group_size"] == group_size
    assert q["desc_act"] == desc_act and q["sym"] == sym and q["checkpoint_format"] == fmt
    check_gptq_layers(tmp_path, config, model, expected, bits, group_size, fmt)
    w2 = model.layers[0]["w2"]  # in 172
    if desc_act and group_size != -1:
        assert w2.perm is not None
    else:
        assert w2.perm is None
    # quantization error is what RTN gives: small relative to the weights
    dense, original = stacked(model, dequantize=True), stacked(weights)
    rel = np.linalg.norm(dense["w2"] - original["w2"]) / np.linalg.norm(original["w2"])
    assert rel < (0.2 if bits == 4 else 0.02)


@pytest.mark.parametrize("tool,fmt", [("autogptq", "gptq"), ("gptqmodel", "gptq")])
def test_gptq_odd_shapes_and_forward(tmp_path, tool, fmt):
    """dims not multiples of 8 (wq/wk/wo/wv 60x60, out 36, hidden 100), lm_head quantized,
    no g_idx on disk; the HF forward of the GPTQ tensors equals the imported model's."""
    config = make_config(dim=60, hidden=100, layers=2, heads=6, kv=2, vocab=37)
    weights = random_weights(config, seed=9, shared_classifier=False)
    expected = hf_writers.write_gptq_checkpoint(tmp_path, weights, bits=4, group_size=32, desc_act=False,
                                        sym=False, tool=tool, checkpoint_format=fmt, tied=False,
                                        quantize_lm_head=True, write_g_idx=False)
    tensors = all_tensors(tmp_path)
    assert not any(name.endswith("g_idx") for name in tensors)
    model = hf.load_hf(tmp_path)
    check_gptq_layers(tmp_path, config, model, expected, 4, 32, fmt)
    assert isinstance(model.wcls, AffineQuantized) and model.quantization["lm_head"]
    np.testing.assert_array_equal(model.wcls.q, expected["wcls"].q)

    hf_cfg = json.loads((tmp_path / "config.json").read_text())
    quant_cfg = json.loads((tmp_path / "quantize_config.json").read_text())
    logits_hf = hf_reference.hf_forward(tensors, hf_cfg, TOKENS[:8], quant_cfg)
    write_legacy(tmp_path / "m.bin", model)
    logits_ref = reference.forward(read_model(tmp_path / "m.bin"), TOKENS[:8])
    np.testing.assert_allclose(logits_hf, logits_ref, atol=1e-4, rtol=0)


def test_gptq_desc_act_forward(tmp_path):
    config = make_config(**GPTQ_CONFIG)
    weights = random_weights(config, seed=4)
    hf_writers.write_gptq_checkpoint(tmp_path, weights, bits=4, group_size=32, desc_act=True,
                             sym=True, tool="gptqmodel", checkpoint_format="gptq_v2", shards=2)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = hf.load_hf(tmp_path)
    hf_cfg = json.loads((tmp_path / "config.json").read_text())
    logits_hf = hf_reference.hf_forward(all_tensors(tmp_path), hf_cfg, TOKENS)  # quantization_config inside
    write_legacy(tmp_path / "m.bin", model)
    np.testing.assert_allclose(logits_hf, reference.forward(read_model(tmp_path / "m.bin"), TOKENS),
                               atol=1e-4, rtol=0)


def test_gptqmodel_v1_zero_point_zero_round_trips(tmp_path):
    """A zero point of 0 (asymmetric group with no negative weight) saved by GPTQModel as v1
    (word-wide ``- 0x11111111``, borrowing into the next field) comes back exactly."""
    config = make_config(**GPTQ_CONFIG)
    weights = random_weights(config, seed=8)
    for layer in weights.layers:
        layer["w1"] = np.abs(layer["w1"])  # gate_proj: every group >= 0 -> zero point 0
    expected = hf_writers.write_gptq_checkpoint(tmp_path, weights, bits=4, group_size=32, sym=False,
                                        tool="gptqmodel", checkpoint_format="gptq")
    assert np.all(expected["layers"][0]["w1"].zeros == 0)
    model = hf.load_hf(tmp_path)
    np.testing.assert_array_equal(model.layers[0]["w1"].zeros, 0)
    check_gptq_layers(tmp_path, config, model, expected, 4, 32, "gptq")


def test_autogptq_zero_point_zero_is_lossy(tmp_path):
    """AutoGPTQ ORs ``uint32(zero - 1)`` into the qzeros word, so a zero point of 0 sets every
    higher field of its word to 15. Reading adds 1 per field with carry (GPTQModel's v1->v2):
    the 0 itself comes back, the higher fields of that word read 1 (AutoGPTQ's kernels would
    read 16 for all of them). Only those fields differ from what was quantized."""
    config = make_config(**GPTQ_CONFIG)
    weights = random_weights(config, seed=8)
    w1 = weights.layers[0]["w1"]
    w1[:, 40:48] = np.abs(w1[:, 40:48])  # outputs 40..47 of w1
    w1[40:48, :] = np.abs(w1[40:48, :])  # >= 0: zero point 0
    expected = hf_writers.write_gptq_checkpoint(tmp_path, weights, bits=4, group_size=-1, sym=False,
                                        tool="autogptq")
    want = expected["layers"][0]["w1"].zeros[:, 0]
    assert np.all(want[40:48] == 0) and np.all(want[:40] > 0) and np.all(want[48:] > 0)
    got = hf.load_hf(tmp_path).layers[0]["w1"].zeros[:, 0]
    np.testing.assert_array_equal(got[:41], want[:41])  # words before, and the zero itself
    np.testing.assert_array_equal(got[41:48], 1)  # corrupted fields of the same word
    np.testing.assert_array_equal(got[48:], want[48:])  # later words are intact


def test_gptq_with_project_gptq_quantizer(tmp_path):
    gptq = pytest.importorskip("llama2rs.quantize.gptq")
    config = make_config(**GPTQ_CONFIG)
    weights = random_weights(config, seed=12)
    rng = np.random.default_rng(0)

    def quantizer(w, bits, group_size, sym):  # real GPTQ on a random Hessian
        x = rng.standard_normal((64, w.shape[1]))
        acc = gptq.HessianAccumulator(w.shape[1])
        acc.add(x)
        return gptq.gptq_quantize(w, acc.hessian, bits=bits, group_size=group_size, sym=sym)

    expected = hf_writers.write_gptq_checkpoint(tmp_path, weights, bits=4, group_size=64, desc_act=True,
                                        sym=False, tool="autogptq", quantizer=quantizer)
    check_gptq_layers(tmp_path, config, hf.load_hf(tmp_path), expected, 4, 64, "gptq")


def test_gptq_bad_g_idx_and_configs(tmp_path):
    config = make_config(**GPTQ_CONFIG)
    weights = random_weights(config, seed=6)
    hf_writers.write_gptq_checkpoint(tmp_path, weights, bits=4, group_size=32, tool="gptqmodel",
                             checkpoint_format="gptq_v2")
    path = tmp_path / "model.safetensors"
    tensors = dict(safetensors.read(path))
    good = {k: np.array(v) for k, v in tensors.items()}
    name = "model.layers.0.mlp.down_proj.g_idx"
    bad = good[name].copy()
    bad[:172][bad[:172] == 1] = 0  # group 0 gets 64 inputs, group 1 none
    safetensors.write(path, {**good, name: bad})
    with pytest.raises(ModelFileError, match="g_idx"):
        hf.load_hf(tmp_path)
    safetensors.write(path, {**good, name: bad[:100]})  # too short
    with pytest.raises(ModelFileError):
        hf.load_hf(tmp_path)
    truncated = good["model.layers.0.mlp.down_proj.qweight"][:10]
    safetensors.write(path, {**good, "model.layers.0.mlp.down_proj.qweight": truncated})
    with pytest.raises(ModelFileError, match="qweight"):
        hf.load_hf(tmp_path)
    safetensors.write(path, good)
    hf.load_hf(tmp_path)  # restored

    qfile = tmp_path / "quantize_config.json"
    original = json.loads(qfile.read_text())
    for change in ({"bits": 3}, {"bits": 2}, {"group_size": 0}, {"checkpoint_format": "marlin"},
                   {"quant_method": "awq"}, {"pack_dtype": "int16"},
                   {"dynamic": {r"+:.*down.*": {"bits": 8}}}):
        qfile.write_text(json.dumps({**original, **change}))
        with pytest.raises(ConfigError):
            hf.load_hf(tmp_path)


def test_unpack_gptq_hand_packed():
    """Two inputs x three outputs at 4 bits, packed by hand; v1 and v2 zero points."""
    # q[i, o] for i in 0..1, o in 0..2 (inputs pack along the words' low bits first)
    q = np.array([[1, 2, 3], [15, 0, 7]])
    qweight = np.array([[q[0, o] | (q[1, o] << 4) for o in range(3)]], dtype=np.uint32).view(np.int32)
    zeros = np.array([8, 0, 15])  # real zero points of the single group
    v2 = np.array([[zeros[0] | (zeros[1] << 4) | (zeros[2] << 8)]], dtype=np.uint32)
    v1 = (v2 - np.uint32(0x11111111)).view(np.int32)  # GPTQModel's word-wide v1 conversion
    scales = np.array([[0.5, 2.0, -1.0]], dtype=np.float16)
    want = (scales.astype(np.float32).T * (q.T - zeros[:, None]))  # [out, in]
    for packed_zeros, fmt in ((v2.view(np.int32), "gptq_v2"), (v1, "gptq")):
        aq = hf.unpack_gptq(qweight, packed_zeros, scales, None, 2, 3, 4, -1, fmt)
        np.testing.assert_array_equal(aq.zeros[:, 0], zeros)
        np.testing.assert_array_equal(aq.dequantize(), want)


def test_unknown_tensors_are_refused_not_dropped(tmp_path):
    weights = random_weights(make_config(), seed=2)
    directory = hf_writers.write_hf_checkpoint(tmp_path / "hf", weights)
    original = dict(safetensors.read(directory / "model.safetensors"))
    extra = {"model.layers.0.self_attn.q_norm.weight": np.ones(8, dtype=np.float32),
             "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, dtype=np.float32)}
    safetensors.write(directory / "model.safetensors", {**original, **extra})
    with pytest.raises(ModelFileError, match="tensors a Llama does not use: model.layers.0.self_attn.q_norm.weight$"):
        hf.load_hf(directory)
    del extra["model.layers.0.self_attn.q_norm.weight"]
    safetensors.write(directory / "model.safetensors", {**original, **extra})
    hf.load_hf(directory)  # transformers' own leftover is fine
