"""export.py / llama2rs export: llama2.c files into llama2rs files, quantization, and the
validation of llama2rs files on open."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import llama2rs
from llama2rs import export, reference
from llama2rs.config import Config
from llama2rs.formats import hf, l2rs, llama2c, safetensors
from llama2rs.quantize import calibrate, gptq
from llama2rs.errors import ArgumentError, ModelFileError
from llama2rs.quantize.affine import AffineQuantized
from llama2rs.quantize.q80 import Q8Tensor, q8_group_size, quantize_q80
from llama2rs.weights import Weights
from conftest import REPO_ROOT, STORIES, STORIES_Q80, TOK512, TOK512_MODEL, assert_q80_close, need
from support.fixtures import random_weights
from support.hf_writers import write_hf_checkpoint

IDS = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315]


def _export_llama2c(tmp_path, src=STORIES, name="out.l2rs.safetensors", **kwargs):
    need(src, TOK512)
    source = export.load_source("llama2c", src, TOK512)
    return export.export(source, tmp_path / name, progress=False, **kwargs)


def test_llama2c_export_runs_alone_and_identically(tmp_path):
    out = _export_llama2c(tmp_path)
    model = llama2rs.Model(out)  # nothing else: the tokenizer is inside
    original = llama2rs.Model(STORIES, tokenizer_path=TOK512)
    assert model.format == "llama2rs-v1" and model.tokenizer is not None
    assert model.config == original.config
    np.testing.assert_array_equal(model.logits(IDS), original.logits(IDS))
    assert model.complete("Once upon a time", max_tokens=60) == original.complete("Once upon a time", max_tokens=60)
    assert "stories260K.bin" in model.metadata["source"]


def test_q80_file_exports_without_requantizing(tmp_path):
    out = _export_llama2c(tmp_path, STORIES_Q80)
    np.testing.assert_array_equal(llama2rs.Model(out).logits(IDS), llama2rs.Model(STORIES_Q80).logits(IDS))
    assert json.loads(llama2rs.Model(out).metadata["quantization"])["method"] == "q8_0"


@pytest.mark.parametrize("quantize, method, group", [("q8", "rtn", 64), ("q4", "rtn", 32), ("q4", "rtn", -1),
                                                     ("q4", "rtn", 128)])
def test_quantized_export_matches_reference(tmp_path, quantize, method, group):
    # fp32 embeddings for q4, so the bound below measures the 4-bit kernels alone.
    extra = {"embeddings": "float"} if quantize == "q4" else {}
    out = _export_llama2c(tmp_path, quantize=quantize, method=method, group_size=group, **extra)
    weights, _ = l2rs.read_model(out)
    w1 = weights.layers[0]["w1"]
    if quantize == "q4":
        assert isinstance(w1, AffineQuantized) and w1.group_size == min(group if group > 0 else 64, 64)
    expected = reference.forward(weights, IDS)
    ours = llama2rs.Model(out, exact=True).logits(IDS)
    if quantize == "q4":  # fp32 activations against the exact dequantization
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)
        fast = llama2rs.Model(out).logits(IDS)  # int8 activations: close, not exact
        assert np.linalg.norm(fast - expected) < 1e-3 * np.linalg.norm(expected)
    else:  # Q8_0 quantizes activations too; hidden 172 gets groups of 4
        assert_q80_close(ours, expected, max_abs=0.3, max_mean=0.02)


@pytest.fixture(scope="module")
def texts():
    """Calibration and evaluation texts sampled from stories260K itself (different seeds)."""
    need(STORIES, TOK512)
    base = llama2rs.Model(STORIES, tokenizer_path=TOK512)
    sample = lambda seeds: "\n".join(base.complete("", max_tokens=300, temperature=1.0, seed=s) for s in seeds)
    return sample(range(1, 25)), sample(range(1000, 1012))


def test_gptq_beats_rtn_in_kl_divergence(tmp_path, texts):
    """Acceptance: stories260K at 4 bits, group 32: GPTQ (calibrated on one text) is closer to the
    fp32 model than round-to-nearest, measured on another text."""
    from llama2rs.evaluate import evaluate

    calibration, held_out = texts
    base = llama2rs.Model(STORIES, tokenizer_path=TOK512)
    kl = {}
    for label, kwargs in {"rtn": dict(method="rtn"),
                          "gptq": dict(method="gptq", calibration_text=calibration),
                          "gptq-act-order": dict(method="gptq", calibration_text=calibration, act_order=True)}.items():
        out = _export_llama2c(tmp_path, name=f"{label}.safetensors", quantize="q4", group_size=32, **kwargs)
        result = evaluate(llama2rs.Model(out), held_out, base=base, window=256)
        kl[label] = result.kl_divergence
        assert 0 < result.kl_divergence < 1 and result.perplexity > 1
    assert kl["gptq"] < 0.8 * kl["rtn"], kl
    assert kl["gptq-act-order"] < 0.8 * kl["rtn"], kl


def test_evaluate_against_numpy(tmp_path, texts):
    from llama2rs.evaluate import evaluate

    base = llama2rs.Model(STORIES, tokenizer_path=TOK512)
    text = texts[1][:2000]
    same = evaluate(base, text, base=base, window=128)
    assert same.kl_divergence == pytest.approx(0.0, abs=1e-9) and same.top1_agreement == 1.0
    # Perplexity by hand from the reference logits of the same windows.
    ids = base.tokenize(text, bos=False)
    windows = calibrate.calibration_windows(ids, 128, 1 << 30, 1)
    loaded = llama2c.read_model(STORIES)
    nll, n = 0.0, 0
    for w in windows:
        logits = reference.forward(loaded, w).astype(np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
        nll -= sum(logp[i, w[i + 1]] for i in range(len(w) - 1))
        n += len(w) - 1
    assert same.perplexity == pytest.approx(np.exp(nll / n), rel=1e-4)
    assert same.n_predictions == n


def test_refuses_to_requantize(tmp_path):
    q4 = _export_llama2c(tmp_path, quantize="q4", method="rtn", group_size=32)
    with pytest.raises(ArgumentError, match="already quantized"):
        export.export(export.load_source("auto", q4), tmp_path / "again.safetensors", quantize="q4", progress=False)


def test_gptq_without_calibration_is_an_argument_error(tmp_path):
    with pytest.raises(ArgumentError, match="needs --calibration"):
        _export_llama2c(tmp_path, quantize="q4", method="gptq")
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    need(STORIES, TOK512)
    source = export.load_source("llama2c", STORIES, TOK512)
    calls = []

    def explode(name, done, total):
        calls.append(name)
        if done == 10:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        l2rs.write_model(tmp_path / "x.safetensors", source.weights, source.tokenizer.to_bin_bytes(),
                         progress=explode)
    assert len(calls) == 10 and os.listdir(tmp_path) == []


# -- validation of llama2rs files -----------------------------------------------------------


def _rewrite_header(path, edit):
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 64)
    # Keep the data where it was relative to the header's end.
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n :])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda h: h["__metadata__"].update(format_version="4"), "format version 4 is newer than this llama2rs reads"),
        (lambda h: h["__metadata__"].update(format_version="0"), "format_version must be 1 to 3, got 0"),
        (lambda h: h["__metadata__"].update(format="other"), "not a llama2rs model"),
        (lambda h: h["__metadata__"].update(config="{"), "bad config in __metadata__"),
        (lambda h: h["__metadata__"].update(config=json.dumps({**json.loads(h["__metadata__"]["config"]), "n_heads": 7})),
         r"dim \(64\) must be a multiple of n_heads \(7\)"),
        (lambda h: h["__metadata__"].update(config=json.dumps({**json.loads(h["__metadata__"]["config"]), "rope_layout": "rotate_half"})),
         "rope_layout"),
        (lambda h: h.update({"extra": h.pop("rms_final")}), "missing tensor 'rms_final'"),
        (lambda h: h["layers.0.wq.weight"].update(dtype="I32"), r"'layers.0.wq.weight' has dtype I32, expected F32"),
        (lambda h: h["layers.1.w2.weight"].update(shape=[172, 64]), r"has shape \[172, 64\], expected \[64, 172\]"),
    ],
)
def test_bad_llama2rs_files(tmp_path, edit, message):
    out = _export_llama2c(tmp_path)
    _rewrite_header(out, edit)
    with pytest.raises(ModelFileError, match=message):
        llama2rs.Model(out)


def _format3_file(tmp_path, metadata=None, factors=None):
    """A format-3 file (RoPE divisors and stop ids) written by hand, with what is given instead."""
    need(TOK512)
    config = Config(dim=64, hidden_dim=96, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=512, seq_len=32)
    weights = random_weights(config, 3)
    weights.rope_freq_factors = np.linspace(1.0, 8.0, config.head_size // 2, dtype=np.float32)
    path = tmp_path / "v3.l2rs.safetensors"
    l2rs.write_model(path, weights, llama2rs.Tokenizer(TOK512).to_bin_bytes(), stop_ids=[7, 9])
    if metadata or factors is not None:
        def edit(header):
            header["__metadata__"].update(metadata or {})
        _rewrite_header(path, edit)
        if factors is not None:
            arrays = safetensors.read(path)
            header, _ = safetensors.read_header(path)
            arrays["rope_freqs"] = factors
            safetensors.write(path, arrays, header["__metadata__"], align=64)
    return path


def test_format_3_keeps_rope_divisors_and_stop_ids(tmp_path):
    path = _format3_file(tmp_path)
    model = llama2rs.Model(path)
    assert model.metadata["format_version"] == "3" and {7, 9} <= set(model.stop_ids)
    weights, _ = l2rs.read_model(path)
    np.testing.assert_array_equal(weights.rope_freq_factors, np.linspace(1.0, 8.0, 8, dtype=np.float32))
    tokens = [1, 5, 9, 30, 2, 17]
    np.testing.assert_allclose(model.logits(tokens), reference.forward(weights, tokens), rtol=0, atol=1e-4)


@pytest.mark.parametrize("metadata, factors, error, message", [
    ({"stop_ids": "[7, 512]"}, None, ModelFileError, r"stop_ids \[7, 512\] holds ids outside"),
    ({"stop_ids": "7"}, None, ModelFileError, "stop_ids must be a JSON list"),
    ({"tokenizer_spec": "{"}, None, llama2rs.TokenizerError, "tokenizer_spec is not valid JSON"),
    ({"tokenizer_spec": '{"type": "wordpiece"}'}, None, llama2rs.TokenizerError, "unknown tokenizer_spec type"),
    (None, np.full(8, -1.0, dtype=np.float32), ModelFileError, "'rope_freqs' holds -1: a RoPE divisor must be positive"),
    (None, np.ones(5, dtype=np.float32), ModelFileError, r"'rope_freqs' has shape \[5\], expected \[8\]"),
])
def test_bad_format_3_files(tmp_path, metadata, factors, error, message):
    path = _format3_file(tmp_path, metadata, factors)
    with pytest.raises(error, match=message):
        model = llama2rs.Model(path)
        model.stop_ids, model.tokenizer


def test_an_empty_tokenizer_tensor_is_damage(tmp_path):
    out = _export_llama2c(tmp_path)
    arrays = safetensors.read(out)
    header, _ = safetensors.read_header(out)
    arrays["tokenizer"] = np.zeros(0, dtype=np.uint8)
    safetensors.write(out, arrays, header["__metadata__"], align=64)
    with pytest.raises(ModelFileError, match="tensor 'tokenizer' is empty"):
        llama2rs.Model(out)


def test_truncated_llama2rs_file(tmp_path):
    out = _export_llama2c(tmp_path)
    data = out.read_bytes()
    out.write_bytes(data[:-5])
    with pytest.raises(ModelFileError, match=rf"truncated: expected {len(data)} bytes .*, found {len(data) - 5}"):
        llama2rs.Model(out)


def test_export_cli_and_top_level_script(tmp_path):
    need(STORIES, TOK512)
    out = tmp_path / "cli.l2rs.safetensors"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "export.py"), "--llama2c", str(STORIES), "--tokenizer",
                             str(TOK512), "-o", str(out), "--quantize", "q4", "--group-size", "64", "-q"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stderr and out.exists()
    info = subprocess.run([sys.executable, "-m", "llama2rs", "info", str(out)], capture_output=True, text=True)
    # 4-bit scales are stored as fp16 (format version 2); the float tensors stay fp32.
    assert '"method": "rtn"' in info.stdout and "llama2rs-v2" in info.stdout
    header, _ = safetensors.read_header(out)
    assert header["layers.0.wq.scales"]["dtype"] == "F16" and header["rms_final"]["dtype"] == "F32"
    bad = subprocess.run([sys.executable, "-m", "llama2rs", "export", "--llama2c", str(STORIES), "-o",
                          str(tmp_path / "x"), "--quantize", "q5"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'q5'" in bad.stderr


def test_perplexity_cli(tmp_path, texts):
    need(STORIES, TOK512)
    text = tmp_path / "t.txt"
    text.write_text(texts[1][:3000], encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "llama2rs", "perplexity", str(STORIES), "-z", str(TOK512),
                             "--text", str(text), "--base", str(STORIES), "--window", "128"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "mean KL(base || model): 0.000000" in result.stdout and "top-1 agreement: 100.00%" in result.stdout


def test_default_4bit_kernels_are_closer_to_exact_than_an_fp16_kernel(tmp_path):
    """The accuracy bar for the fast path: at least as close to the exact dequantize-then-fp32
    result as a GPTQ tool's fp16 kernel (weights dequantized to fp16, fp16 activations)."""
    out = _export_llama2c(tmp_path, quantize="q4", method="rtn", group_size=32)
    weights, _ = l2rs.read_model(out)
    exact = reference.forward(weights, IDS * 3)
    fp16 = weights.map_matrices(lambda name, m: m.dequantize().astype(np.float16).astype(np.float32),
                                embeddings=False)
    fp16_logits = reference.forward(fp16, IDS * 3)  # optimistic: fp32 activations
    ours = llama2rs.Model(out, kv_cache="f32").logits(IDS * 3)
    assert llama2rs.Model(out).kernels in llama2rs.available_kernels()
    assert np.linalg.norm(ours - exact) < np.linalg.norm(fp16_logits - exact)
    # The whole default path, fp16 KV cache included, against such a tool's whole model (which
    # keeps its cache in fp16 too).
    default = llama2rs.Model(out)
    fp16_model = reference.forward(fp16, IDS * 3, kv_cache="f16")
    assert np.linalg.norm(default.logits(IDS * 3) - exact) < np.linalg.norm(fp16_model - exact)


@pytest.mark.parametrize("embeddings", ["q8", "same", "float"])
def test_embedding_and_classifier_choice(tmp_path, embeddings):
    """--quantize q4 stores the embedding as Q8_0 (group 32) by default; 'same' as 4-bit like the
    layers; 'float' keeps fp32. The Q8_0 values are max|w|/127 scales and round-half-even, computed
    here in NumPy from the fp32 original; the model runs them as the reference does."""
    kwargs = {} if embeddings == "q8" else {"embeddings": embeddings}
    out = _export_llama2c(tmp_path, quantize="q4", method="rtn", group_size=32, **kwargs)
    weights, _ = l2rs.read_model(out)
    original = np.asarray(llama2c.read_model(STORIES).token_embedding)  # [vocab, dim] fp32
    emb = weights.token_embedding
    if embeddings == "q8":
        groups = original.reshape(original.shape[0], -1, 32)  # [vocab, dim / 32, 32]
        scale = np.abs(groups).max(axis=-1) / np.float32(127)
        q = np.rint(groups / np.where(scale == 0, 1, scale)[..., None]).astype(np.int8)
        assert emb.group_size == 32
        np.testing.assert_array_equal(emb.q, q.reshape(original.shape))
        np.testing.assert_allclose(emb.scale, scale, rtol=1e-7)
    elif embeddings == "same":
        assert isinstance(emb, AffineQuantized) and emb.group_size == 32
    else:
        np.testing.assert_array_equal(np.asarray(emb), original)
    assert json.loads(llama2rs.Model(out).metadata["quantization"])["embeddings"] == embeddings
    expected = reference.forward(weights, IDS)
    np.testing.assert_allclose(llama2rs.Model(out, exact=True).logits(IDS), expected, rtol=0, atol=1e-4)
    # The default kernels round the classifier's input to int8 per 32 values for Q8_0 (as runq does).
    fast = llama2rs.Model(out).logits(IDS)
    assert np.linalg.norm(fast - expected) < (3e-3 if embeddings == "q8" else 1e-3) * np.linalg.norm(expected)


def test_embeddings_flags_on_the_command_line(tmp_path):
    need(STORIES, TOK512)
    base = [sys.executable, "-m", "llama2rs", "export", "--llama2c", str(STORIES), "--tokenizer", str(TOK512),
            "--quantize", "q4", "--group-size", "32", "-q"]
    for flags, dtype in (([], "I8"), (["--quantize-embeddings"], "U8"), (["--embeddings", "float"], "F32")):
        out = tmp_path / f"e{len(flags)}{dtype}.l2rs.safetensors"
        result = subprocess.run(base + ["-o", str(out)] + flags, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        header, _ = safetensors.read_header(out)
        name = next(k for k in header if k in ("token_embedding.q8_0", "token_embedding.q4", "token_embedding.weight"))
        assert header[name]["dtype"] == dtype, (flags, name)
    bad = subprocess.run(base + ["-o", str(tmp_path / "x"), "--quantize-embeddings", "--embeddings", "float"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--quantize-embeddings contradicts --embeddings float" in bad.stderr


# -- streamed export: one matrix at a time ------------------------------------------------------


def _bf16_checkpoint(tmp_path, config, seed=0, tiny_w3_layer=None):
    """A bf16 checkpoint in 2 shards with a separate lm_head (``tiny_w3_layer``: that layer's
    w3 scaled by 1e-6, so its 4-bit scales are below fp16's normal range and stay F32)."""
    need(TOK512_MODEL)
    weights = random_weights(config, seed=seed, shared_classifier=False)
    if tiny_w3_layer is not None:
        weights.layers[tiny_w3_layer]["w3"] = weights.layers[tiny_w3_layer]["w3"] * np.float32(1e-6)
    return write_hf_checkpoint(tmp_path / "hf", weights, dtype="bfloat16", shards=2, tied=False,
                               tokenizer_model=TOK512_MODEL)


def _expected(directory, config, quantize, group, embeddings="q8") -> Weights:
    """What an export of the checkpoint must hold, computed independently of the streaming
    path: every tensor read at once (bf16 -> float32 by ``safetensors.read``), q/k rows put in
    llama2.c's order, and the quantizers called on whole matrices."""
    t = {}
    for f in sorted(directory.glob("*.safetensors")):
        t.update(safetensors.read(f))
    rows = {"wq": hf.interleave_rows(config.n_heads, config.head_size),
            "wk": hf.interleave_rows(config.n_kv_heads, config.head_size)}

    def quantized(w, embedding=False):
        if quantize == "none" or embedding and embeddings == "float":
            return w
        if embedding and embeddings == "q8":
            return quantize_q80(w, q8_group_size(w.shape[1], 32))
        if quantize == "q8":
            return quantize_q80(w, q8_group_size(w.shape[1], group))
        return gptq.quantize_rtn(w, bits=4, group_size=group)

    layers = []
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        layer = {"rms_att": t[p + "input_layernorm.weight"], "rms_ffn": t[p + "post_attention_layernorm.weight"]}
        for name, hf_name in hf.HF_LINEAR_NAMES.items():
            w = t[p + hf_name + ".weight"]
            layer[name] = quantized(w[rows[name]] if name in rows else w)
        layers.append(layer)
    return Weights(config, quantized(t["model.embed_tokens.weight"], True), layers, t["model.norm.weight"],
                   quantized(t["lm_head.weight"], True))


def _assert_same_tensors(got: Weights, expected: Weights) -> None:
    pairs = list(zip(got.named_tensors(), expected.named_tensors(), strict=True))
    for (name, a), (name_b, b) in pairs:
        assert name == name_b and type(a) is type(b) or isinstance(a, np.ndarray) and isinstance(b, np.ndarray), name
        if isinstance(b, Q8Tensor):
            assert a.group_size == b.group_size, name
            np.testing.assert_array_equal(a.q, b.q, err_msg=name)
            np.testing.assert_array_equal(a.scale, b.scale, err_msg=name)
        elif isinstance(b, AffineQuantized):
            assert (a.group_size, a.bits, a.perm) == (b.group_size, b.bits, None), name
            for part in ("q", "scales", "zeros"):
                np.testing.assert_array_equal(getattr(a, part), getattr(b, part), err_msg=f"{name}.{part}")
        else:
            np.testing.assert_array_equal(np.asarray(a, dtype=np.float32), b, err_msg=name)


def _layout(path):
    """The tensors of a file as (begin, name, dtype) in file order."""
    header, _ = safetensors.read_header(path)
    return sorted((v["data_offsets"][0], k, v["dtype"]) for k, v in header.items() if k != "__metadata__")


def _check_order(path) -> None:
    """The order rule (see formats/l2rs.py): 4-byte tensors first (all aligned), except affine
    scales made on the way, then matrix by matrix, the tokenizer last."""
    layout = _layout(path)
    front = [(b, n) for b, n, d in layout if d in ("F32", "I32") and not n.endswith(".scales")]
    assert [n for _, n in front] == [n for _, n, _ in layout[: len(front)]]
    assert all(b % 4 == 0 for b, _ in front)
    assert layout[-1][1] == "tokenizer"


@pytest.mark.parametrize("quantize, group, embeddings", [("none", 128, "q8"), ("q8", 32, "q8"), ("q4", 32, "q8"),
                                                         ("q4", -1, "same"), ("q4", 64, "float")])
def test_streamed_bf16_export_holds_exactly_the_rounded_weights(tmp_path, quantize, group, embeddings):
    """A bf16 checkpoint exported matrix by matrix holds exactly what quantizing the whole
    bf16-rounded float32 matrices gives, and runs as the reference does on those."""
    config = Config(64, 172, 2, 8, 4, vocab_size=512, seq_len=64)
    directory = _bf16_checkpoint(tmp_path, config)
    out = export.export(export.load_source("hf", directory), tmp_path / "out.l2rs.safetensors", quantize=quantize,
                        group_size=group, embeddings=embeddings, progress=False)
    expected = _expected(directory, config, quantize, group, embeddings)
    got, _ = l2rs.read_model(out)
    _assert_same_tensors(got, expected)
    _check_order(out)
    tokens = IDS
    ours = llama2rs.Model(out, exact=True).logits(tokens)
    want = reference.forward(expected, tokens)
    if quantize == "q8":
        assert_q80_close(ours, want, max_abs=0.3, max_mean=0.02)  # Q8_0 rounds activations too
    else:
        np.testing.assert_allclose(ours, want, rtol=0, atol=1e-4)


def test_streamed_export_odd_shapes_and_unaligned_scales(tmp_path):
    """Odd row counts (hidden 45) and odd row bytes (dim 42: 21 bytes of 4-bit values, 2 groups)
    put F16 scales at odd offsets, and a matrix whose scales are below fp16's range stores F32
    scales, unaligned here: both readers (the Rust core and l2rs.read_model) read them right."""
    config = Config(dim=42, hidden_dim=45, n_layers=2, n_heads=3, n_kv_heads=1, vocab_size=512, seq_len=64)
    directory = _bf16_checkpoint(tmp_path, config, seed=3, tiny_w3_layer=1)
    out = export.export(export.load_source("hf", directory), tmp_path / "out.l2rs.safetensors", quantize="q4",
                        group_size=32, progress=False)
    layout = {n: (b, d) for b, n, d in _layout(out)}
    assert any(d == "F16" and b % 2 for n, (b, d) in layout.items() if n.endswith(".scales"))
    begin, dtype = layout["layers.1.w3.scales"]
    assert dtype == "F32" and begin % 4 != 0
    _check_order(out)
    expected = _expected(directory, config, "q4", 32)
    got, _ = l2rs.read_model(out)
    _assert_same_tensors(got, expected)
    want = reference.forward(expected, IDS)
    np.testing.assert_allclose(llama2rs.Model(out, exact=True).logits(IDS), want, rtol=0, atol=1e-4)
    fast = llama2rs.Model(out).logits(IDS)  # the 4-bit kernels read the scales too
    assert np.linalg.norm(fast - want) < 3e-3 * np.linalg.norm(want)


@pytest.mark.parametrize("quantize", ["none", "q8", "q4"])
def test_streamed_export_holds_one_matrix_at_a_time(tmp_path, quantize):
    """Exporting a bf16 checkpoint allocates about one matrix's worth, not the model's: the
    peak of everything allocated (tracemalloc sees NumPy's arrays) during the export stays
    within a few times the largest matrix in float32, a small part of the whole model."""
    config = Config(dim=128, hidden_dim=344, n_layers=32, n_heads=4, n_kv_heads=4, vocab_size=512, seq_len=64)
    directory = _bf16_checkpoint(tmp_path, config)
    source = export.load_source("hf", directory)
    sizes = [4 * int(np.prod(np.shape(m))) for _, m in source.weights.named_tensors()]
    tracemalloc.start()
    try:
        export.export(source, tmp_path / "out.l2rs.safetensors", quantize=quantize, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Measured: 0.8 MB (none), 1.6 MB (q8), 2.0 MB (q4) against a 0.26 MB largest matrix and a
    # 26 MB model; holding every matrix before writing, as export did, took 33 MB.
    assert peak < 12 * max(sizes), (peak, max(sizes))
    assert peak < sum(sizes) / 8, (peak, sum(sizes))
