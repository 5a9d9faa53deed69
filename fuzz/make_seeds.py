"""Write small valid seed files for the fuzz targets into DIR/<target>/ (not committed).

    python fuzz/make_seeds.py fuzz/seeds

Needs the package importable (the built ``_core`` in ``python/llama2rs`` or installed) and, for
the GGUF seeds, the ``gguf`` package. Every seed is a tiny model (a few KB; the largest, a GGUF
of mixed block types whose rows must be 256 wide, is about 130 KB), so the fuzzer runs many
inputs a second; together they cover each format's variants:

* ``llama2c``: legacy (tied, and untied with a negative vocab_size), version 1 (tied, untied),
  version 2 Q8_0 (group sizes 8 and 16), random weights; plus, with ``--real``, stories260K's
  Q8_0 file from the fixtures (``$LLAMA2RS_MODELS`` or ``../shared/models``; 520 KB).
* ``l2rs``: our safetensors file in fp32, Q8_0, and affine 4/8-bit with F16 and F32 scales, an
  act-order permutation, stop ids and RoPE divisors (format 3).
* ``gguf``: F32, F16, BF16, Q8_0, Q4_0, Q4_1 files with a tokenizer vocabulary (tokens, scores,
  token types), one with ``general.alignment`` 64, and one with Q4_K, Q5_K and Q6_K matrices.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "python"), str(REPO / "tests")]

from llama2rs.config import Config  # noqa: E402
from llama2rs.formats import l2rs, llama2c  # noqa: E402
from llama2rs.quantize.affine import AffineQuantized  # noqa: E402
from llama2rs.quantize.q80 import quantize_q80  # noqa: E402
from llama2rs.weights import Weights  # noqa: E402
from support.fixtures import random_weights  # noqa: E402

SMALL = Config(dim=16, hidden_dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=32, seq_len=16)


def tokenizer_bin(vocab_size: int) -> bytes:
    """llama2.c's tokenizer.bin for ``vocab_size`` tokens: max length, then score, length, bytes."""
    tokens = [f"<{i}>".encode() if i < 3 else bytes([97 + i % 26]) * (1 + i % 3) for i in range(vocab_size)]
    out = struct.pack("<i", max(len(t) for t in tokens))
    for i, t in enumerate(tokens):
        out += struct.pack("<fi", -float(i), len(t)) + t
    return out


def llama2c_seeds(out: Path, real: bool) -> None:
    for i, tied in enumerate((True, False)):
        w = random_weights(SMALL, seed=i, shared_classifier=tied)
        name = "tied" if tied else "untied"
        llama2c.write(out / f"legacy-{name}.bin", w, "legacy")
        llama2c.write(out / f"v1-{name}.bin", w, "v1")
        llama2c.write(out / f"v2-q80-g{8 * (i + 1)}-{name}.bin", w, "v2", group_size=8 * (i + 1))
    if real:
        models = Path(os.environ.get("LLAMA2RS_MODELS", REPO.parent / "shared" / "models"))
        shutil.copy(models / "stories260K" / "stories260K_q80.bin", out / "stories260K_q80.bin")


def affine(m: np.ndarray, bits: int, group: int, rng: np.random.Generator, perm: bool = False) -> AffineQuantized:
    rows, cols = m.shape
    groups = -(-cols // group)
    top = (1 << bits) - 1
    q = rng.integers(0, top + 1, size=(rows, cols), dtype=np.uint8)
    zeros = rng.integers(0, top + 1, size=(rows, groups), dtype=np.uint8)
    scales = (rng.random((rows, groups)) * 0.01).astype(np.float32)
    return AffineQuantized(q, scales, zeros, group, bits, rng.permutation(cols).astype(np.int32) if perm else None)


def l2rs_seeds(out: Path) -> None:
    tok = tokenizer_bin(SMALL.vocab_size)
    rng = np.random.default_rng(7)
    l2rs.write_model(out / "fp32.safetensors", random_weights(SMALL, seed=1), tok)

    w = random_weights(SMALL, seed=2, shared_classifier=False)
    w.token_embedding = quantize_q80(w.token_embedding, 8)
    w.classifier = quantize_q80(w.classifier, 16)
    for layer in w.layers:
        for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
            layer[name] = quantize_q80(layer[name], 16)
    l2rs.write_model(out / "q80.safetensors", w, tok)

    # Affine: 4-bit layers (one act-order), an 8-bit w2, F32 scales (random) in one file and
    # F16 ones (exact halves) in the other; format 3 with RoPE divisors and stop ids.
    for half in (False, True):
        w = random_weights(SMALL, seed=3 + half, shared_classifier=half)
        for layer in w.layers:
            for name in ("wq", "wk", "wv", "wo", "w1", "w3"):
                layer[name] = affine(layer[name], 4, 8, rng, perm=name == "wq")
            layer["w2"] = affine(layer["w2"], 8, 8, rng)
            if half:
                for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
                    m = layer[name]
                    scales = m.scales.astype(np.float16).astype(np.float32)
                    layer[name] = AffineQuantized(m.q, scales, m.zeros, m.group_size, m.bits, m.perm)
        if half:
            w.rope_freq_factors = np.linspace(1.0, 8.0, SMALL.head_size // 2).astype(np.float32)
            l2rs.write_model(out / "affine-f16-v3.safetensors", w, tok, stop_ids=[5, 6])
        else:
            l2rs.write_model(out / "affine-f32.safetensors", w, tok)


def gguf_seeds(out: Path) -> None:
    from support.gguf_files import T, uniform, write_gguf

    config = Config(dim=32, hidden_dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=24, seq_len=16)
    tokens = ["<unk>", "<s>", "</s>"] + [chr(97 + i % 26) * (1 + i // 26) for i in range(config.vocab_size - 3)]
    vocab = dict(tokens=tokens, scores=[-float(i) for i in range(len(tokens))],
                 token_types=[2, 3, 3] + [1] * (len(tokens) - 3))
    for i, qtype in enumerate((T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1)):
        w = random_weights(config, seed=10 + i, shared_classifier=i % 2 == 0)
        write_gguf(out / f"{qtype.name.lower()}.gguf", w, uniform(qtype), seed=i, **vocab)
    w = random_weights(config, seed=20)
    write_gguf(out / "q8_0-align64.gguf", w, uniform(T.Q8_0), alignment=64, **vocab)

    # K-quants need rows of 256 values. 128 heads of 2 and one kv head keep wk/wv at 2 rows,
    # and a hidden_dim of 32 keeps the feed-forward small (w2's rows are 32 wide: Q8_0).
    k = Config(dim=256, hidden_dim=32, n_layers=1, n_heads=128, n_kv_heads=1, vocab_size=24, seq_len=8)
    types = {"blk.0.attn_q.weight": T.Q4_K, "blk.0.attn_k.weight": T.Q5_K, "blk.0.attn_v.weight": T.Q6_K,
             "blk.0.attn_output.weight": T.Q4_0, "blk.0.ffn_gate.weight": T.Q8_0,
             "blk.0.ffn_up.weight": T.Q4_K, "blk.0.ffn_down.weight": T.Q8_0,
             "token_embd.weight": T.Q6_K, "output.weight": T.Q5_K}
    write_gguf(out / "kquants.gguf", random_weights(k, seed=30, shared_classifier=False), types.__getitem__,
               seed=30, **vocab)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="writes DIR/llama2c, DIR/l2rs, DIR/gguf")
    parser.add_argument("--real", action="store_true", help="also copy stories260K's Q8_0 file (520 KB)")
    args = parser.parse_args()
    for target, write in (("llama2c", lambda d: llama2c_seeds(d, args.real)), ("l2rs", l2rs_seeds),
                          ("gguf", gguf_seeds)):
        folder = args.dir / target
        folder.mkdir(parents=True, exist_ok=True)
        write(folder)
        for f in sorted(folder.iterdir()):
            print(f"{f} {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
