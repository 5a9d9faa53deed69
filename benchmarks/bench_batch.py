"""Batched decoding: generated tok/s of B streams stepped together (`_core.BatchDecoder`) against
one stream, and how close the matrix products come to the CPU's arithmetic peak.

For each model and each B (default 1, 2, 4, 8, 16), B sequences are started from short
prompts, fed, then stepped together; a step generates B tokens with one pass over the weights.
It prints ms per step, generated tok/s, the ratio to B=1 (issue 12's acceptance: >= 3x at B=8
with 2 threads on a TinyLlama-shape 4-bit model), the multiply-adds per second of the matrix
products (every weight of a layer once per token, the classifier once per sequence; attention
over the short contexts is left out) and that rate's fraction of the peak of the threads'
integer dot-product instructions. Also a 128-token prompt in one batch (prefill tok/s), so a
kernel change that helps batches can be checked not to cost prompts.

The peak is an assumption, stated in the output: `--macs-per-cycle` (default 64: one 512-bit
`vpdpbusd` per cycle, 64 int8 multiply-adds, as measured on the Zen 4 development machine,
which runs AVX-512 as two 256-bit halves; the int16 `vpdpwssd` does half) times `--ghz`
(default 3.65, the rate a loop of independent `vpdpbusd` ran at there) times the threads.

Several builds compare in one run, interleaved (the machine is shared and its speed drifts):
`--builds DIR [DIR ...]`, each a directory holding a `llama2rs` package with its `_core`
extension. Each measurement runs in its own process; medians over `--repeats`.

    python benchmarks/bench_batch.py benchmarks/out/tinyllama-q4_k_m.gguf [MODEL ...]
        [--batch 1 2 4 8 16] [--threads 2] [--repeats 3] [--builds python /tmp/base]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's pool would spin on a core

PROMPT = [1, 450, 338]  # BOS and two tokens; sequence i starts with token 450 + i
PREFILL_TOKENS = 128


def macs_per_token(config: dict) -> tuple[int, int]:
    """Multiply-adds of one token's matrix products: (layers, classifier)."""
    dim, hidden, layers = config["dim"], config["hidden_dim"], config["n_layers"]
    kv_dim = dim * config["n_kv_heads"] // config["n_heads"]
    per_layer = 2 * dim * dim + 2 * dim * kv_dim + 3 * dim * hidden
    return layers * per_layer, dim * config["vocab_size"]


def child(model_path: str, threads: int, batches: list[int], steps: int) -> dict:
    """Runs in the build's own process: ms per step for each B, and prefill tok/s."""
    from llama2rs import _core

    m = _core.Model(model_path, n_threads=threads)
    result = {"kernels": m.kernels, "config": dict(m.config), "step_ms": {}}
    for b in batches:
        d = _core.BatchDecoder(m, 64)
        for i in range(b):
            d.add([PROMPT[0], PROMPT[1] + i, PROMPT[2]], 0.0, 0.9, 0, 1)
        while d.prefilling:
            d.step()
        for _ in range(2):  # warm up
            d.step()
        start = time.perf_counter()
        for _ in range(steps):
            d.step()
        result["step_ms"][b] = (time.perf_counter() - start) / steps * 1e3
    vocab = m.config["vocab_size"]
    prompt = [1] + [(7919 * i) % (vocab - 3) + 3 for i in range(PREFILL_TOKENS - 1)]
    best = float("inf")
    for _ in range(2):
        session = m.session(0.0, 0.9, 0, 1)
        start = time.perf_counter()
        session.feed(prompt)
        best = min(best, time.perf_counter() - start)
    result["prefill_tok_s"] = PREFILL_TOKENS / best
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--builds", nargs="+", default=[None], help="directories holding a llama2rs package")
    parser.add_argument("--macs-per-cycle", type=float, default=64.0)
    parser.add_argument("--ghz", type=float, default=3.65)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.models[0], args.threads, args.batch, args.steps)))
        return 0
    if 1 not in args.batch:
        args.batch = [1] + args.batch
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeats):
        for model in args.models:
            for build in args.builds:
                env = dict(os.environ)
                if build is not None:
                    env["PYTHONPATH"] = os.pathsep.join([build, env.get("PYTHONPATH", "")])
                cmd = [sys.executable, __file__, model, "--child", "--threads", str(args.threads),
                       "--steps", str(args.steps), "--batch", *map(str, args.batch)]
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
                runs.setdefault((model, str(build)), []).append(json.loads(out.strip().splitlines()[-1]))
    peak = args.macs_per_cycle * args.ghz * args.threads
    print(f"{args.threads} threads; peak assumed {args.macs_per_cycle:g} int8 multiply-adds per cycle "
          f"x {args.ghz:g} GHz x {args.threads} = {peak:.0f} GMAC/s; medians of {args.repeats} runs")
    print(f"{'model':<42} {'build':<14} {'B':>3} {'ms/step':>8} {'tok/s':>7} {'vs B=1':>7} {'GMAC/s':>7} "
          f"{'of peak':>7}")
    for (model, build), results in runs.items():
        layers, classifier = macs_per_token(results[0]["config"])
        step = {b: statistics.median(r["step_ms"][str(b)] for r in results) for b in args.batch}
        base = 1 / step[1]
        for b in args.batch:
            gmacs = b * (layers + classifier) / step[b] / 1e6
            print(f"{Path(model).name[:42]:<42} {Path(build).name[:14]:<14} {b:>3} {step[b]:>8.1f} "
                  f"{b / step[b] * 1e3:>7.1f} {b / step[b] / base:>6.2f}x {gmacs:>7.1f} {gmacs / peak:>7.1%}")
        prefill = statistics.median(r["prefill_tok_s"] for r in results)
        print(f"{Path(model).name[:42]:<42} {Path(build).name[:14]:<14} prefill {PREFILL_TOKENS} tokens: "
              f"{prefill:.1f} tok/s ({results[0]['kernels']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
