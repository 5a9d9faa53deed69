"""llama2rs and llama.cpp (through llama-cpp-python) on the SAME GGUF files, in the same run.

For TinyLlama-1.1B's shape (random weights) this writes, once, into benchmarks/out/:
  1. an F16 GGUF, with the `gguf` package (every matrix F16, the Llama-2 tokenizer);
  2. from it, with llama.cpp's own quantizer (`llama_model_quantize`): Q4_K_M (Q4_K for most
     matrices, Q6_K for output.weight and some attn_v/ffn_down) and Q4_0.
Then, interleaved at 1 and 2 threads, it times a 128-token prompt in one batch and 64 decode
steps with both engines on each file, and prints tok/s and the ratios. Between repeats it
measures the machine's read bandwidth, and prints what fraction of it each engine's decoding
reaches (tok/s times the bytes a token reads: every tensor but the embedding, of which one row),
which bounds the decode ratio any engine can reach against llama.cpp on this machine. It also lists which
tensor types each file really holds (llama.cpp's quantizer falls back to other types for rows
that its blocks do not fit).

    pip install llama-cpp-python gguf sentencepiece     # llama-cpp-python built natively
    python benchmarks/bench_gguf.py [--files q4_k_m q4_0] [--repeats 5]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see bench_vs_llamacpp.py

import llama2rs  # noqa: E402
from llama2rs.bench import measure, read_bandwidth  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_llamacpp import (  # noqa: E402
    DECODE, FTYPES, PROMPT, SHAPES, quantize_with_llamacpp, time_llamacpp, write_f16_gguf,
)

REPO = Path(__file__).resolve().parent.parent


def tensor_types(path: Path) -> dict[str, int]:
    import gguf

    counts = collections.Counter(t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors)
    return dict(sorted(counts.items()))


def decode_bytes_per_token(path: Path) -> int:
    """Bytes a decoded token reads: every tensor, except the token embedding's other rows."""
    import gguf

    total = 0
    for t in gguf.GGUFReader(str(path)).tensors:
        rows = int(t.shape[-1]) if t.name == "token_embd.weight" else 1  # gguf lists dims innermost first
        total += int(t.n_bytes) // rows
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="tinyllama")
    parser.add_argument("--files", nargs="+", choices=FTYPES, default=["q4_k_m", "q4_0"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = parser.parse_args()
    from llama_cpp import Llama

    args.out.mkdir(parents=True, exist_ok=True)
    f16 = args.out / f"{args.shape}-f16.gguf"
    if not f16.exists():
        t = time.perf_counter()
        write_f16_gguf(f16, SHAPES[args.shape], args.out / f"{args.shape}-hf")
        print(f"wrote {f16.name} in {time.perf_counter() - t:.0f} s", flush=True)
    rows = []
    for name in args.files:
        path = args.out / f"{args.shape}-{name}.gguf"
        if not path.exists():
            t = time.perf_counter()
            quantize_with_llamacpp(f16, path, FTYPES[name])
            print(f"llama.cpp quantized {path.name} in {time.perf_counter() - t:.0f} s", flush=True)
        print(f"{path.name}: {tensor_types(path)}", flush=True)
        for threads in args.threads:
            ours_model = llama2rs.Model(path, n_threads=threads)
            theirs_model = Llama(str(path), n_ctx=PROMPT + DECODE + 8, n_batch=PROMPT, n_ubatch=PROMPT,
                                 n_threads=threads, n_threads_batch=threads, verbose=False)
            ours, theirs, bandwidth = [], [], []
            for rep in range(args.repeats):  # interleaved, so drift hits both alike
                bandwidth.append(read_bandwidth(threads))
                s = measure(ours_model, PROMPT, DECODE, repeats=1, seed=rep)
                ours.append((s.prefill_tok_s, s.decode_tok_s))
                theirs.append(time_llamacpp(theirs_model, ours_model.config.vocab_size, rep))
            med = lambda pairs, i: statistics.median(p[i] for p in pairs)  # noqa: E731
            row = dict(file=name, threads=threads, kernels=ours_model.kernels, ours_prefill=med(ours, 0),
                       ours_decode=med(ours, 1), cpp_prefill=med(theirs, 0), cpp_decode=med(theirs, 1),
                       bandwidth=statistics.median(bandwidth), gb_per_token=decode_bytes_per_token(path) / 1e9)
            rows.append(row)
            print(json.dumps(row), flush=True)
            del theirs_model
    print()
    print(f"{'file':<8} {'thr':>3} | {'decode tok/s':>12} {'llama.cpp':>9} {'ratio':>6} | "
          f"{'prefill tok/s':>13} {'llama.cpp':>9} {'ratio':>6} | {'GB/s':>5} {'GB/tok':>6} {'ours':>5} {'theirs':>6}")
    for r in rows:
        limit = r["bandwidth"] / 1e9 / r["gb_per_token"]  # tok/s if decoding read at the measured bandwidth
        print(f"{r['file']:<8} {r['threads']:>3} | {r['ours_decode']:12.1f} {r['cpp_decode']:9.1f} "
              f"{r['ours_decode'] / r['cpp_decode']:5.2f}x | {r['ours_prefill']:13.1f} {r['cpp_prefill']:9.1f} "
              f"{r['ours_prefill'] / r['cpp_prefill']:5.2f}x | {r['bandwidth'] / 1e9:5.1f} {r['gb_per_token']:6.3f} "
              f"{r['ours_decode'] / limit:5.0%} {r['cpp_decode'] / limit:6.0%}")
    print(f"({args.shape}, the same GGUF file for both; {PROMPT}-token prompt in one batch, {DECODE} decode steps, "
          f"median of {args.repeats}; llama2rs with {rows[0]['kernels']} kernels; GB/s: the read bandwidth "
          f"measured between repeats; GB/tok: what decoding a token reads; ours/theirs: "
          f"decode tok/s as a fraction of GB/s over GB/tok)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
