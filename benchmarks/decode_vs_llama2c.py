"""Decode speed and open time of llama2rs against llama2.c's `run` / `runq`, in one run.

Writes a random-weight model of a llama2.c "stories" shape (fp32 legacy and Q8_0 v2), then
greedily decodes the same number of tokens with both programs, interleaved, and prints
tok/s and the ratio. llama2.c is not vendored: build it yourself and pass its folder
(`gcc -O3 -o run run.c -lm; gcc -O3 -o runq runq.c -lm`; single-threaded, so compare at -t 1).

    python benchmarks/decode_vs_llama2c.py --llama2c-dir ~/src/llama2.c --shape stories15M
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

# No BLAS is used here; numpy's OpenBLAS pool would otherwise spin on the second core for a while.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # for support.fixtures

import llama2rs  # noqa: E402
from llama2rs.config import Config  # noqa: E402
from llama2rs.formats import llama2c  # noqa: E402
from support.fixtures import random_weights  # noqa: E402

SHAPES = {
    # (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len)
    "stories15M": (288, 768, 6, 6, 6, 32000, 256),
    "stories42M": (512, 1376, 8, 8, 8, 32000, 1024),
    "stories110M": (768, 2048, 12, 12, 12, 32000, 1024),
}
REPO = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("LLAMA2RS_MODELS") or REPO.parent / "shared" / "models")


def ours(path: Path, tokenizer: Path, steps: int, threads: int) -> float:
    model = llama2rs.Model(path, tokenizer_path=tokenizer, n_threads=threads)
    prompt = [1]
    start = time.perf_counter()
    n = sum(1 for _ in model.generate_tokens(prompt, steps - 1, temperature=0.0, ignore_eos=True))
    return n / (time.perf_counter() - start)


def theirs(binary: Path, path: Path, tokenizer: Path, steps: int) -> float:
    out = subprocess.run(
        [str(binary), str(path), "-z", str(tokenizer), "-t", "0", "-n", str(steps), "-i", ""],
        capture_output=True, text=True, check=True,
    )
    match = re.search(r"achieved tok/s: ([0-9.]+)", out.stderr + out.stdout)
    if not match:
        raise RuntimeError(f"no tok/s in llama2.c output: {out.stderr[-300:]}")
    return float(match.group(1))


def open_ms(path: Path, repeats: int = 20) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        llama2rs.Model(path, n_threads=1)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama2c-dir", type=Path, help="folder with llama2.c's built run and runq")
    parser.add_argument("--shape", choices=SHAPES, default="stories15M")
    parser.add_argument("--steps", type=int, default=200, help="positions decoded (llama2.c's -n)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = parser.parse_args()

    tokenizer = MODELS / "llama2-tokenizer" / "tokenizer.bin"
    config = Config(*SHAPES[args.shape])
    args.out.mkdir(parents=True, exist_ok=True)
    fp32 = args.out / f"{args.shape}.bin"
    q80 = args.out / f"{args.shape}_q80.bin"
    if not fp32.exists() or not q80.exists():
        weights = random_weights(config, seed=0)
        llama2c.write_legacy(fp32, weights)
        llama2c.write_v2(q80, weights, group_size=64 if config.dim % 64 == 0 else 32)

    print(f"shape {args.shape} {SHAPES[args.shape]}, {args.steps} positions, median of {args.repeats}")
    print(f"{'format':<8} {'program':<22} {'tok/s':>9} {'ratio':>7}")
    for label, path, binary in (("fp32", fp32, "run"), ("q8_0", q80, "runq")):
        rows: dict[str, list[float]] = {}
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            for threads in (1, 2):
                rows.setdefault(f"llama2rs -t {threads}", []).append(ours(path, tokenizer, args.steps, threads))
            if args.llama2c_dir:
                rows.setdefault(f"llama2.c {binary}", []).append(
                    theirs(args.llama2c_dir / binary, path, tokenizer, args.steps)
                )
        peer = statistics.median(rows[f"llama2.c {binary}"]) if args.llama2c_dir else None
        for name, values in rows.items():
            rate = statistics.median(values)
            ratio = f"{rate / peer:6.2f}x" if peer else "      -"
            print(f"{label:<8} {name:<22} {rate:9.1f} {ratio}")
    print(f"open (mmap + validate), median: fp32 {open_ms(fp32):.2f} ms, q8_0 {open_ms(q80):.2f} ms "
          f"(files {fp32.stat().st_size / 1e6:.0f} MB / {q80.stat().st_size / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
