"""Opening a 4-bit Llama-2-7B-shaped llama2rs file: milliseconds, and no weight is read.

Writes (once) a random-weight 4-bit group-128 file of Llama-2-7B's shape (~3.9 GB), then in
one run measures, interleaved:
- llama2rs.Model(path): open = mmap + header parse + validation of every tensor;
- the peer: reading the file once from the page cache (what any loader that copies the
  weights must spend at least), measured with plain buffered reads;
and the process's resident memory right after opening (the weights stay unmapped-in).

    python benchmarks/open_7b.py [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import llama2rs
from llama2rs.config import Config
from llama2rs.formats import l2rs
from llama2rs.quantize.affine import AffineQuantized
from llama2rs.tokenizer import Tokenizer
from llama2rs.weights import Weights

REPO = Path(__file__).resolve().parent.parent
LLAMA2_7B = Config(dim=4096, hidden_dim=11008, n_layers=32, n_heads=32, n_kv_heads=32, vocab_size=32000, seq_len=4096)
GROUP = 128


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def _random_q4(rng: np.random.Generator, rows: int, cols: int) -> AffineQuantized:
    groups = cols // GROUP
    # One random row, broadcast: the file gets real packed bytes, memory stays small.
    q = np.broadcast_to(rng.integers(0, 16, size=(1, cols), dtype=np.uint8), (rows, cols))
    scales = np.broadcast_to(rng.uniform(0.001, 0.02, size=(1, groups)).astype(np.float32), (rows, groups))
    zeros = np.broadcast_to(rng.integers(0, 16, size=(1, groups), dtype=np.uint8), (rows, groups))
    return AffineQuantized(q, np.ascontiguousarray(scales), np.ascontiguousarray(zeros), GROUP, 4)


def write_7b(path: Path, tokenizer: Path) -> None:
    c = LLAMA2_7B
    rng = np.random.default_rng(0)
    norm = np.ones(c.dim, dtype=np.float32)
    shapes = {"wq": (c.dim, c.dim), "wk": (c.kv_dim, c.dim), "wv": (c.kv_dim, c.dim), "wo": (c.dim, c.dim),
              "w1": (c.hidden_dim, c.dim), "w2": (c.dim, c.hidden_dim), "w3": (c.hidden_dim, c.dim)}
    layers = [{"rms_att": norm, "rms_ffn": norm, **{k: _random_q4(rng, *s) for k, s in shapes.items()}}
              for _ in range(c.n_layers)]
    embedding = rng.standard_normal((c.vocab_size, c.dim), dtype=np.float32) * 0.02
    weights = Weights(c, embedding, layers, norm, classifier=embedding.copy())
    l2rs.write_model(path, weights, Tokenizer(tokenizer).to_bin_bytes(), {"source": "random, Llama-2-7B shape"})


def read_once(path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(64 << 20)
        while f.readinto(buf):
            pass
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "llama2-7b-shape-q4g128.l2rs.safetensors"
    tokenizer = REPO.parent / "shared" / "models" / "llama2-tokenizer" / "tokenizer.bin"
    if not path.exists():
        start = time.perf_counter()
        write_7b(path, tokenizer)
        print(f"wrote {path.name}: {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s")
    size = path.stat().st_size
    read_once(path)  # warm the page cache so the peer is measured at its fastest
    opens, reads, rss = [], [], []
    for _ in range(args.repeats):
        before = _rss_mb()
        start = time.perf_counter()
        model = llama2rs.Model(path, n_threads=1)
        opens.append(time.perf_counter() - start)
        rss.append(_rss_mb() - before)
        del model
        reads.append(read_once(path))
    o, r = statistics.median(opens), statistics.median(reads)
    print(f"file: {size / 1e9:.2f} GB, Llama-2-7B shape, 4-bit g128 (embedding and classifier fp32)")
    print(f"llama2rs.Model(path):        {o * 1e3:8.2f} ms   (median of {args.repeats})")
    print(f"read the file once (peer):   {r * 1e3:8.0f} ms   (page cache warm)")
    print(f"ratio open / read:           {o / r:8.5f}")
    print(f"resident memory added by open: {statistics.median(rss):.1f} MB of {size / 1e6:.0f} MB mapped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
