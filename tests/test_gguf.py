"""GGUF files (issue 10): llama2rs against gguf-py (llama.cpp's Python package) and sentencepiece.

Every expectation is independent of our Rust reader: the files are written by gguf-py's
GGUFWriter, the expected logits are our NumPy reference (float64) over gguf-py's own
dequantization of the same file, the tokenizer is checked against sentencepiece and llama2.c's
exported tokenizer.bin, and gguf-py's dequantizers are themselves checked here against
ggml-quants.c's ``dequantize_row_*`` transcribed as plain loops.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import llama2rs  # noqa: E402
from llama2rs.config import Config  # noqa: E402
from llama2rs.reference import forward  # noqa: E402
from llama2rs.tokenizer import Tokenizer  # noqa: E402

from conftest import LLAMA2_TOKENIZER, MODELS, TOK512_MODEL, need  # noqa: E402
from support.fixtures import random_weights  # noqa: E402
from support.gguf_files import (  # noqa: E402
    K_SCALE_FIELDS, T, header, q4_k_m, read_gguf, reference_logits, spm_vocab, uniform, write_gguf,
)

LLAMA2_MODEL = MODELS / "llama2-tokenizer" / "tokenizer.model"

# K-quant rows need in_features % 256 == 0 (dim 256, hidden 512); GQA: 8 query heads, 4 kv heads.
BASE = Config(dim=256, hidden_dim=512, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=320, seq_len=64)
TOKENS = [1, 17, 250, 3, 99, 319, 0, 42, 42, 7, 128, 2, 300, 5]

# name -> (types, tied classifier, config). Tied and untied alternate; one file is multi-head
# attention with head_count_kv and rope.freq_base left out (defaults), one has other eps/theta.
CASES = {
    "F32": (uniform(T.F32), True, BASE),
    "F16": (uniform(T.F16), False, BASE),
    "BF16": (uniform(T.BF16), True, Config(**{**BASE.to_dict(), "n_kv_heads": 8})),
    "Q8_0": (uniform(T.Q8_0), False, Config(**{**BASE.to_dict(), "norm_eps": 1e-6, "rope_theta": 500000.0})),
    "Q4_0": (uniform(T.Q4_0), True, BASE),
    "Q4_1": (uniform(T.Q4_1), False, BASE),
    "Q4_K": (uniform(T.Q4_K), True, BASE),
    "Q5_K": (uniform(T.Q5_K), False, BASE),
    "Q6_K": (uniform(T.Q6_K), True, BASE),
    "Q4_K_M": (q4_k_m, False, BASE),
}

# Tolerance, relative to the largest |logit|. Both sides multiply the same dequantized fp32
# weights; ours computes in fp32 (eps 6e-8), the reference in float64. Over dot products of
# 256..512 terms, two layers, RMS norms and softmaxes that rounding grows to at most 2.1e-6 of
# the logits' scale (measured over every case and kernel set here); 2e-5 leaves a 10x margin,
# while one wrong block layout or one quant step per block of one row moves the logits by far
# more (test_tolerance_is_meaningful).
RTOL_OF_MAX = 2e-5


def _assert_close(ours: np.ndarray, expected: np.ndarray, rtol_of_max: float = RTOL_OF_MAX) -> None:
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(ours, expected, rtol=0, atol=rtol_of_max * scale)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gguf")
    out = {}
    for i, (name, (types, tied, config)) in enumerate(CASES.items()):
        weights = random_weights(config, seed=100 + i, shared_classifier=tied)
        out[name] = write_gguf(folder / f"{name}.gguf", weights, types, seed=i,
                               write_defaults=config.n_kv_heads != config.n_heads)
    return out


# ---------------------------------------------------------------------------------------
# the independent side: gguf-py's dequantization is ggml's


def _f16(b: bytes, off: int) -> float:
    return float(np.frombuffer(b[off:off + 2], np.float16)[0])


def _scale_min_k4(j: int, q: bytes) -> tuple[int, int]:
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def _ggml_dequantize_block(b: bytes, qtype: T) -> list[float]:
    """One block, as ggml-quants.c's dequantize_row_* computes it (float32 products)."""
    f = np.float32
    y: list[float] = []
    if qtype == T.Q8_0:
        d = f(_f16(b, 0))
        return [float(d * f(v)) for v in np.frombuffer(b[2:34], np.int8)]
    if qtype in (T.Q4_0, T.Q4_1):
        d = f(_f16(b, 0))
        qs = b[2:18] if qtype == T.Q4_0 else b[4:20]
        lo, hi = [q & 0xF for q in qs], [q >> 4 for q in qs]
        if qtype == T.Q4_0:
            return [float(d * f(q - 8)) for q in lo + hi]
        m = f(_f16(b, 2))
        return [float(d * f(q) + m) for q in lo + hi]
    if qtype in (T.Q4_K, T.Q5_K):
        d, dmin, scales = f(_f16(b, 0)), f(_f16(b, 2)), b[4:16]
        qh, ql = (b[16:48], b[48:176]) if qtype == T.Q5_K else (bytes(32), b[16:144])
        for j in range(4):  # 64 values per step: two sub-blocks, low then high nibbles
            q = ql[32 * j:32 * j + 32]
            for half in range(2):
                sc, m = _scale_min_k4(2 * j + half, scales)
                d1, m1 = d * f(sc), dmin * f(m)
                for ll in range(32):
                    nib = (q[ll] >> 4) if half else (q[ll] & 0xF)
                    high = 16 if qh[ll] & (1 << (2 * j + half)) else 0
                    y.append(float(d1 * f(nib + high) - m1))
        return y
    if qtype == T.Q6_K:
        ql, qh, sc, d = b[0:128], b[128:192], np.frombuffer(b[192:208], np.int8), f(_f16(b, 208))
        out = [0.0] * 256
        for n in range(2):
            for ll in range(32):
                lq, hq, s = ql[64 * n:], qh[32 * n:], sc[8 * n:]
                i = ll // 16
                q1 = ((lq[ll] & 0xF) | (((hq[ll] >> 0) & 3) << 4)) - 32
                q2 = ((lq[ll + 32] & 0xF) | (((hq[ll] >> 2) & 3) << 4)) - 32
                q3 = ((lq[ll] >> 4) | (((hq[ll] >> 4) & 3) << 4)) - 32
                q4 = ((lq[ll + 32] >> 4) | (((hq[ll] >> 6) & 3) << 4)) - 32
                for k, (q, si) in enumerate(((q1, 0), (q2, 2), (q3, 4), (q4, 6))):
                    out[128 * n + ll + 32 * k] = float(d * f(s[i + si]) * f(q))
        return out
    raise AssertionError(qtype)


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0, T.Q4_1, T.Q4_K, T.Q5_K, T.Q6_K])
def test_gguf_py_dequantizes_as_ggml(qtype: T) -> None:
    """The reference's ground truth: gguf-py's dequantizers equal ggml's C loops, on random
    blocks (random fp16 scales, normal and subnormal) with every quant value."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(int(qtype))
    blocks = rng.integers(0, 256, size=(4, type_size), dtype=np.uint8)
    offsets = [o for o, _ in K_SCALE_FIELDS[qtype]] if qtype in K_SCALE_FIELDS else [0, 2][: 1 + (qtype == T.Q4_1)]
    for off in offsets:
        scale = rng.uniform(-1, 1, 4) * np.array([1e-6, 1e-4, 1e-2, 1.0])  # subnormal to large
        blocks[:, off:off + 2] = scale.astype(np.float16).reshape(-1, 1).view(np.uint8)
    ours = gguf.quants.dequantize(blocks, qtype)
    expected = [_ggml_dequantize_block(bytes(row), qtype) for row in blocks]
    np.testing.assert_array_equal(ours, np.array(expected, np.float32))


def test_writer_round_trip(files: dict[str, Path]) -> None:
    """The support writer: float types come back exactly as written (F16/BF16 rounded as gguf-py
    rounds), each tensor has the type asked for, and K-quant scale fields are finite."""
    for name in ("F32", "F16", "Q4_K_M"):
        types, tied, config = CASES[name]
        written = random_weights(config, seed=100 + list(CASES).index(name), shared_classifier=tied)
        weights, tensor_types = read_gguf(files[name])
        assert weights.config == Config(**{**config.to_dict(), "norm_eps": float(np.float32(config.norm_eps))})
        assert weights.tied == tied
        for tname, ttype in tensor_types.items():
            assert ttype == (T.F32 if tname.endswith("norm.weight") else types(tname)), tname
        if name != "Q4_K_M":
            dtype = np.float32 if name == "F32" else np.float16
            np.testing.assert_array_equal(weights.layers[1]["wk"], written.layers[1]["wk"].astype(dtype))
    reader = gguf.GGUFReader(str(files["Q6_K"]))
    for t in reader.tensors:
        if t.tensor_type == T.Q6_K:
            d = np.ascontiguousarray(t.data.reshape(-1, 210)[:, 208:210]).view(np.float16)
            assert np.isfinite(d).all() and (d > 0).all()
