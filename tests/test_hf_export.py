"""HuggingFace checkpoints (float and GPTQ) through export.py, against an independent NumPy
implementation of transformers' Llama that reads the HF tensors directly (rotate-half RoPE)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import llama2rs
from llama2rs import export
from llama2rs.config import Config
from llama2rs.formats import safetensors
from conftest import MODELS, TOK512_MODEL, need
from support.fixtures import random_weights
from support.hf_reference import hf_forward
from support.hf_writers import write_gptq_checkpoint, write_hf_checkpoint

# (dim, hidden_dim, n_layers, n_heads, n_kv_heads): vocab 512 to use tok512.model
SHAPES = {
    "gqa2": (64, 172, 2, 8, 4),
    "gqa4-hs12": (48, 100, 2, 4, 1),
    "mha-hs24": (96, 200, 2, 4, 4),
    "odd-out-60": (60, 172, 2, 6, 2),
}


def _config(shape: str, **extra) -> Config:
    return Config(*SHAPES[shape], vocab_size=512, seq_len=64, **extra)


def _tokens(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return [1] + rng.integers(3, 512, size=n - 1).tolist()


def _export(tmp_path, directory, exact=False, **kwargs):
    source = export.load_source("hf", directory)
    out = export.export(source, tmp_path / "out.l2rs.safetensors", progress=False, **kwargs)
    return llama2rs.Model(out, exact=exact)


def _hf(directory):
    cfg = json.loads((directory / "config.json").read_text())
    quant_file = directory / "quantize_config.json"
    quant = json.loads(quant_file.read_text()) if quant_file.exists() else None
    tensors = {}
    for f in sorted(directory.glob("*.safetensors")):
        tensors.update(safetensors.read(f))
    return tensors, cfg, quant


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype, shards, tied", [("float32", 1, True), ("float32", 3, False),
                                                 ("bfloat16", 2, True), ("float16", 1, False)])
def test_float_checkpoint_logits_match_transformers_math(tmp_path, shape, dtype, shards, tied):
    need(TOK512_MODEL)
    config = _config(shape, norm_eps=1e-6, rope_theta=500000.0)
    weights = random_weights(config, seed=len(shape), shared_classifier=tied)
    directory = write_hf_checkpoint(tmp_path / "hf", weights, dtype=dtype, shards=shards, tied=tied,
                                       tokenizer_model=TOK512_MODEL)
    model = _export(tmp_path, directory)
    assert model.config.norm_eps == pytest.approx(1e-6) and model.config.rope_theta == 500000.0
    assert model.shared_classifier == tied
    tokens = _tokens(config.seq_len)
    expected = hf_forward(*_hf(directory)[:2], tokens)
    np.testing.assert_allclose(model.logits(tokens), expected, rtol=0, atol=1e-4)


def test_float_checkpoint_greedy_text_matches_and_tokenizer_is_embedded(tmp_path):
    need(TOK512_MODEL)
    config = _config("gqa2")
    weights = random_weights(config, seed=3, scale=3.0)
    directory = write_hf_checkpoint(tmp_path / "hf", weights, tokenizer_model=TOK512_MODEL)
    model = _export(tmp_path, directory)
    prompt = model.tokenize("Once upon a time")
    generated = list(model.generate_tokens(prompt, 30, temperature=0.0, ignore_eos=True))
    # Greedy by the reference: each token is the argmax of the reference's logits before it.
    logits = hf_forward(*_hf(directory)[:2], prompt + generated[:-1])
    assert generated == logits[len(prompt) - 1 :].argmax(axis=1).tolist()
    assert model.detokenize(prompt) == "Once upon a time"


GPTQ_CASES = [
    # tool, format, bits, group, desc_act, sym, shape
    ("autogptq", "gptq", 4, 32, False, True, "gqa2"),
    ("autogptq", "gptq", 4, 64, True, False, "gqa2"),
    ("autogptq", "gptq", 8, 32, False, False, "odd-out-60"),
    ("gptqmodel", "gptq", 4, 32, True, True, "odd-out-60"),
    ("gptqmodel", "gptq_v2", 4, -1, False, False, "gqa4-hs12"),
    ("gptqmodel", "gptq_v2", 4, 128, True, False, "mha-hs24"),
    ("gptqmodel", "gptq", 8, 64, True, True, "gqa2"),
    ("gptqmodel", "gptq_v2", 4, 32, False, False, "odd-out-60"),
]


@pytest.mark.parametrize("tool, fmt, bits, group, desc_act, sym, shape", GPTQ_CASES)
def test_gptq_checkpoint_matches_exact_dequantized_reference(tmp_path, tool, fmt, bits, group, desc_act, sym, shape):
    need(TOK512_MODEL)
    config = _config(shape)
    weights = random_weights(config, seed=7)
    directory = tmp_path / "gptq"
    write_gptq_checkpoint(directory, weights, bits=bits, group_size=group, desc_act=desc_act, sym=sym,
                             tool=tool, checkpoint_format=fmt, tokenizer_model=TOK512_MODEL)
    model = _export(tmp_path, directory, exact=True)
    quant = json.loads(model.metadata["quantization"])
    assert quant["bits"] == bits and quant["desc_act"] == desc_act
    tokens = _tokens(24, seed=1)
    tensors, cfg, quant_cfg = _hf(directory)
    expected = hf_forward(tensors, cfg, tokens, quant_cfg)  # dequantize exactly, then fp32 math
    np.testing.assert_allclose(model.logits(tokens), expected, rtol=0, atol=1e-4)
    fast = llama2rs.Model(model.path).logits(tokens)  # default kernels: int8 activations for 4-bit
    assert np.linalg.norm(fast - expected) < 1e-3 * np.linalg.norm(expected)


def test_gptq_checkpoint_cannot_be_requantized(tmp_path):
    need(TOK512_MODEL)
    config = _config("gqa2")
    directory = tmp_path / "gptq"
    write_gptq_checkpoint(directory, random_weights(config, seed=1), tokenizer_model=TOK512_MODEL)
    with pytest.raises(llama2rs.ArgumentError, match="already quantized"):
        export.export(export.load_source("hf", directory), tmp_path / "x", quantize="q8", progress=False)


def test_hf_float_checkpoint_quantized_with_gptq(tmp_path):
    """--hf DIR --quantize q4 --method gptq: the file carries 4-bit weights and stays close."""
    need(TOK512_MODEL)
    config = _config("gqa2")
    weights = random_weights(config, seed=5)
    directory = write_hf_checkpoint(tmp_path / "hf", weights, tokenizer_model=TOK512_MODEL)
    calibration = " ".join(["the cat sat on the mat and looked at the dog"] * 40)
    model = _export(tmp_path, directory, quantize="q4", method="gptq", group_size=32,
                    calibration_text=calibration, calibration_windows=8, calibration_length=64)
    assert json.loads(model.metadata["quantization"])["method"] == "gptq"
    tokens = _tokens(30, seed=2)
    exact = hf_forward(*_hf(directory)[:2], tokens)
    diff = np.abs(model.logits(tokens) - exact)
    assert 1e-4 < diff.mean() < 0.5 * np.abs(exact).mean()


# ----------------------------------------------------------------------------- Llama 3

LLAMA3_TIKTOKEN = MODELS / "llama3-tokenizer" / "tokenizer.model"
LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}


def _llama3_config() -> Config:
    """Llama-3-shaped apart from size: its vocabulary, GQA, head size 64, theta 500000."""
    return Config(dim=128, hidden_dim=203, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=128256, seq_len=4096,
                  norm_eps=1e-5, rope_theta=500000.0, bos_id=128000, eos_id=128001)


def _write_llama3(directory, weights, tokenizer: str = "tokenizer.json"):
    """A Llama 3.1 HF checkpoint: bf16 tensors, llama3 RoPE scaling, eos_token_id lists, and the
    tokenizer as tokenizer.json (+ tokenizer_config, generation_config) or as Meta's tiktoken
    file under original/."""
    from support.tokenizer_json import write_llama3_tokenizer_files

    write_hf_checkpoint(directory, weights, dtype="bfloat16", shards=2, tied=weights.tied,
                        extra_config={"rope_scaling": LLAMA31_ROPE, "eos_token_id": [128001, 128008]})
    if tokenizer == "tokenizer.json":
        write_llama3_tokenizer_files(directory, LLAMA3_TIKTOKEN)
    else:
        (directory / "original").mkdir()
        (directory / "original" / "tokenizer.model").write_bytes(LLAMA3_TIKTOKEN.read_bytes())
    return directory


@pytest.mark.parametrize("tied", [True, False])
def test_llama3_checkpoint_logits_match_transformers_math(tmp_path, tied):
    """Exported, a Llama 3.1-shaped checkpoint (llama3 RoPE scaling in config.json) gives the
    logits of the NumPy transformers reference, whose frequencies follow Meta's apply_scaling;
    the file (format 3) keeps the divisors, the tokenizer and every stop id."""
    need(LLAMA3_TIKTOKEN)
    weights = random_weights(_llama3_config(), seed=3, shared_classifier=tied)
    directory = _write_llama3(tmp_path / "hf", weights)
    model = _export(tmp_path, directory)
    assert model.metadata["format_version"] == "3"
    tokens = model.tokenize("The capital of France is Paris. Le cœur a ses raisons 😀 1234567")
    tokens += _tokens(300, seed=1)[1:]  # past a few of the scaled wavelengths
    expected = hf_forward(*_hf(directory)[:2], tokens)
    ours = model.logits(tokens)
    scale = np.abs(expected).max(axis=-1, keepdims=True)
    np.testing.assert_array_less(np.abs(ours - expected) / scale, 1e-3)
    # Without the scaling the reference differs: the test sees the divisors.
    unscaled = {**_hf(directory)[1], "rope_scaling": None}
    assert np.abs(hf_forward(_hf(directory)[0], unscaled, tokens)[-1] - ours[-1]).max() > 1e-2


@pytest.mark.parametrize("tokenizer", ["tokenizer.json", "original/tokenizer.model"])
def test_llama3_checkpoint_tokenizer_and_stop_ids(tmp_path, tokenizer):
    """The exported file's tokenizer encodes as Meta's (tiktoken with its pattern), from either
    of the files Llama 3 repositories carry; generation stops at <|eot_id|>, which the tokenizer
    names, and at 128008, which only config.json lists."""
    from support.llama3_vocab import TEXTS, MetaTokenizer

    need(LLAMA3_TIKTOKEN)
    config = _llama3_config()
    weights = random_weights(config, seed=4, shared_classifier=False)
    for layer in weights.layers:  # every layer adds nothing: the last state is the embedding
        layer["wo"][:] = 0
        layer["w2"][:] = 0
    weights.token_embedding[:] = 1.0
    weights.rms_final[:] = 1.0
    weights.classifier[:] = 0
    weights.classifier[128009] = 1.0  # ... and <|eot_id|> is every greedy token
    directory = _write_llama3(tmp_path / "hf", weights, tokenizer)
    source = export.load_source("hf", directory)
    assert source.tokenizer.format == ("tokenizer.json" if tokenizer == "tokenizer.json" else "tiktoken")
    model = llama2rs.Model(export.export(source, tmp_path / "out.l2rs.safetensors", progress=False))
    assert model.metadata["format_version"] == "3"
    assert {128000, 128001, 128008, 128009} <= set(model.stop_ids)

    meta = MetaTokenizer(LLAMA3_TIKTOKEN)  # tiktoken under Meta's pattern (and cuts: the tiktoken file's)
    for text in TEXTS:
        expected = meta.encode(text, bos=False, eos=False) if tokenizer != "tokenizer.json" else \
            meta.model.encode(text, disallowed_special=())  # HuggingFace does not cut long runs
        assert model.tokenize(text, bos=False) == expected, repr(text[:50])
    assert model.tokenizer.encode("Hi<|eot_id|>", bos=False, special=True) == \
        meta.model.encode("Hi<|eot_id|>", allowed_special="all")

    prompt = model.tokenize("Hello")
    assert list(model.generate_tokens(prompt, max_tokens=3, ignore_eos=True)) == [128009] * 3
    assert list(model.generate_tokens(prompt, max_tokens=3)) == []
    weights.classifier[128009], weights.classifier[128008] = 0.0, 1.0
    directory = _write_llama3(tmp_path / "hf2", weights, tokenizer)
    model = llama2rs.Model(export.export(export.load_source("hf", directory), tmp_path / "eom.l2rs.safetensors",
                                         progress=False))
    assert list(model.generate_tokens(prompt, max_tokens=3)) == []  # 128008 comes from config.json


def test_older_files_still_open(tmp_path):
    """A Llama 2 export stays format 1 or 2 (no feature of 3), which older readers read."""
    need(TOK512_MODEL)
    weights = random_weights(_config("gqa2"), seed=5)
    directory = write_hf_checkpoint(tmp_path / "hf", weights, tokenizer_model=TOK512_MODEL)
    assert _export(tmp_path, directory).metadata["format_version"] == "1"


def test_mistral_checkpoint_without_sliding_window(tmp_path):
    """Mistral v0.2+ is Llama's architecture (GQA, theta 1e6, no window): it exports and runs."""
    need(TOK512_MODEL)
    config = _config("gqa2", rope_theta=1000000.0)
    weights = random_weights(config, seed=6, shared_classifier=False)
    directory = write_hf_checkpoint(tmp_path / "hf", weights, dtype="bfloat16", tied=False, tokenizer_model=TOK512_MODEL,
                                    extra_config={"model_type": "mistral", "architectures": ["MistralForCausalLM"],
                                                  "sliding_window": None})
    model = _export(tmp_path, directory)
    tokens = _tokens(40)
    np.testing.assert_allclose(model.logits(tokens), hf_forward(*_hf(directory)[:2], tokens), rtol=0, atol=1e-4)
