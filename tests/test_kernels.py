"""Every kernel implementation this CPU runs gives the same model results (forced one by one),
batched prefill agrees with one-token decoding, and the speed tools work."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import llama2rs
from llama2rs import _core, export, reference
from llama2rs.config import Config
from llama2rs.formats import l2rs, llama2c, safetensors
from llama2rs.bench import measure, read_bandwidth, weight_bytes_per_token
from conftest import STORIES, STORIES_Q80, TOK512, need

IDS = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315] * 6  # 72 tokens: two prefill batches


@pytest.fixture(scope="module")
def q4_file(tmp_path_factory):
    need(STORIES, TOK512)
    out = tmp_path_factory.mktemp("q4") / "q4.l2rs.safetensors"
    # fp32 embedding and classifier: the bounds below measure the 4-bit kernels alone (the default
    # Q8_0 classifier's int8 activations are test_export's).
    return export.export(export.load_source("llama2c", STORIES, TOK512), out, quantize="q4", method="rtn",
                         group_size=32, embeddings="float", progress=False)


def _exact_q4_logits(path, ids, kv_cache="f32"):
    weights, _ = l2rs.read_model(path)
    return reference.forward(weights, ids, kv_cache)


def test_available_kernels_and_auto_choice():
    kernels = llama2rs.available_kernels()
    assert kernels[:2] == ["scalar", "portable"]
    need(STORIES)
    assert llama2rs.Model(STORIES).kernels == kernels[-1]  # auto picks the fastest
    with pytest.raises(llama2rs.ArgumentError, match="kernels must be one of auto, scalar, portable, avx2, avx512, neon"):
        llama2rs.Model(STORIES, kernels="sse9")
    # The names come from the core's one list; asking for a set this CPU lacks is refused there.
    assert _core.KERNEL_NAMES == ("scalar", "portable", "avx2", "avx512", "neon")
    missing = [k for k in _core.KERNEL_NAMES if k not in kernels]
    assert missing, "every CPU lacks the other architecture's kernels"
    for name in missing:
        with pytest.raises(llama2rs.ArgumentError, match=f"this CPU cannot run the {name} kernels"):
            llama2rs.Model(STORIES, kernels=name)


def test_config_limits_are_the_cores():
    # Hand-written bounds (rust/config.rs): Python validates with the same numbers.
    assert dict(_core.CONFIG_LIMITS) == {"dim": 1 << 16, "hidden_dim": 1 << 18, "n_layers": 1 << 10, "n_heads": 1 << 10,
                                         "n_kv_heads": 1 << 10, "vocab_size": 1 << 21, "seq_len": 1 << 20}
    fields = dict(dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512, seq_len=512)
    Config(**{**fields, "seq_len": 1 << 20})
    with pytest.raises(llama2rs.ConfigError, match=r"seq_len must be in \[1, 1048576\], got 1048577"):
        Config(**{**fields, "seq_len": (1 << 20) + 1})


@pytest.mark.parametrize("kernels", llama2rs.available_kernels())
def test_each_kernel_set_matches_the_reference(kernels, q4_file):
    fp32 = llama2rs.Model(STORIES, kernels=kernels)
    assert fp32.kernels == kernels
    expected = reference.forward(llama2c.read_model(STORIES), IDS)
    np.testing.assert_allclose(fp32.logits(IDS), expected, rtol=0, atol=1e-4)
    exact = _exact_q4_logits(q4_file, IDS)
    np.testing.assert_allclose(llama2rs.Model(q4_file, kernels=kernels, exact=True).logits(IDS), exact,
                               rtol=0, atol=1e-4)
    fast = llama2rs.Model(q4_file, kernels=kernels).logits(IDS)
    assert np.linalg.norm(fast - exact) < 1e-3 * np.linalg.norm(exact)


@pytest.mark.parametrize("path_kind", ["fp32", "q4"])
def test_batched_prefill_agrees_with_one_token_steps(path_kind, q4_file):
    """logits() runs the prompt in batches; a session fed one token at a time decodes each
    token alone. Both must give the same next-token distributions."""
    path = STORIES if path_kind == "fp32" else q4_file
    model = llama2rs.Model(path, tokenizer_path=TOK512)
    batched = model.logits(IDS)
    greedy_batched = batched.argmax(axis=1)
    session = model._core.session(0.0, 0.9, 0, 1)
    for i, token in enumerate(IDS):
        session.feed([token])
        assert session.sample() == greedy_batched[i] or np.sort(batched[i])[-2] > batched[i].max() - 1e-3
    # And generation (prompt as one batch, then single steps) equals a reference greedy chain.
    prompt = IDS[:20]
    generated = list(model.generate_tokens(prompt, 20, temperature=0.0, ignore_eos=True))
    chain = model.logits(prompt + generated[:-1]).argmax(axis=1)[len(prompt) - 1 :]
    assert generated == chain.tolist()


def test_bench_tools(q4_file):
    speed = measure(llama2rs.Model(q4_file, n_threads=1), prompt_tokens=16, decode_tokens=4, repeats=1)
    assert speed.prefill_tok_s > 0 and speed.decode_tok_s > 0
    assert read_bandwidth(1, n_bytes=1 << 24) > 1e8  # > 0.1 GB/s: it measured something
    per_token = weight_bytes_per_token(str(q4_file))
    header, _ = safetensors.read_header(q4_file)
    table = header["token_embedding.weight"]["data_offsets"]
    assert 0 < per_token < q4_file.stat().st_size - (table[1] - table[0]) + 64 * 4


def test_bench_cli(q4_file):
    result = subprocess.run([sys.executable, "-m", "llama2rs", "bench", str(q4_file), "-t", "1", "--prompt", "8",
                             "--decode", "4", "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["threads", "prefill", "tok/s"] and lines[1].split()[0] == "1"
    assert "GB of weights per token" in lines[-1]


HARDWARE_F16_CACHE = {"avx2": "f16", "avx512": "f16"}  # kv_cache="auto" for 4-bit weights


def _relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("kernels", llama2rs.available_kernels())
def test_f16_kv_cache_matches_the_reference_with_f16_rounding(kernels, q4_file):
    """An fp16 cache equals the reference that rounds each key and value to float16, and is
    measurably further from the fp32-cache reference (so the rounding really happens)."""
    ref32 = reference.forward(llama2c.read_model(STORIES), IDS)
    ref16 = reference.forward(llama2c.read_model(STORIES), IDS, kv_cache="f16")
    assert _relative(ref16, ref32) > 1e-4
    ours = llama2rs.Model(STORIES, kernels=kernels, kv_cache="f16").logits(IDS)
    assert _relative(ours, ref16) < 1e-4 < _relative(ours, ref32)
    exact16 = llama2rs.Model(q4_file, kernels=kernels, exact=True, kv_cache="f16").logits(IDS)
    assert _relative(exact16, _exact_q4_logits(q4_file, IDS, kv_cache="f16")) < 1e-4
    # The default for 4-bit weights is f16 where the kernels convert fp16 in hardware.
    fast = llama2rs.Model(q4_file, kernels=kernels)
    assert fast.kv_cache == HARDWARE_F16_CACHE.get(kernels, "f32")
    assert _relative(fast.logits(IDS), _exact_q4_logits(q4_file, IDS, kv_cache=fast.kv_cache)) < 1e-3


def test_kv_cache_choice(q4_file):
    need(STORIES_Q80)
    default = llama2rs.Model(q4_file)
    assert default.kv_cache == HARDWARE_F16_CACHE.get(default.kernels, "f32")
    for kernels in llama2rs.available_kernels():
        assert llama2rs.Model(q4_file, kernels=kernels).kv_cache == HARDWARE_F16_CACHE.get(kernels, "f32")
    assert llama2rs.Model(q4_file, exact=True).kv_cache == "f32"  # the exact path stays exact
    assert llama2rs.Model(STORIES).kv_cache == "f32"  # llama2.c parity
    assert llama2rs.Model(STORIES_Q80).kv_cache == "f32"
    assert llama2rs.Model(STORIES, kv_cache="f16").kv_cache == "f16"
    assert llama2rs.Model(q4_file, kv_cache="f32").kv_cache == "f32"
    with pytest.raises(llama2rs.ArgumentError, match="kv_cache must be one of auto, f32, f16"):
        llama2rs.Model(STORIES, kv_cache="bf16")
    with pytest.raises(llama2rs.ArgumentError, match="kv_cache must be one of"):
        reference.forward(llama2c.read_model(STORIES), [1, 2], kv_cache="f8")
    # A generated chain with an fp16 cache is its own greedy chain under teacher forcing.
    model = llama2rs.Model(STORIES, kv_cache="f16")
    prompt = IDS[:10]
    generated = list(model.generate_tokens(prompt, 30, temperature=0.0, ignore_eos=True))
    assert generated == model.logits(prompt + generated[:-1]).argmax(axis=1)[len(prompt) - 1 :].tolist()
