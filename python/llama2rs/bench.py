"""Speed of a model on this machine: prefill and decode tokens/s, and the memory bandwidth
they are bound by (``llama2rs bench``; ``benchmarks/bench_vs_llamacpp.py`` adds llama.cpp)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _core
from .formats.safetensors import read_header
from .model import Model

__all__ = ["Speed", "measure", "weight_bytes_per_token", "read_bandwidth"]


@dataclass(frozen=True)
class Speed:
    prefill_tok_s: float  # prompt tokens per second (the prompt runs as one batch)
    decode_tok_s: float  # new tokens per second, one at a time


def read_bandwidth(n_threads: int, n_bytes: int = 1 << 30) -> float:
    """Bytes per second that ``n_threads`` threads read from memory (best of 3)."""
    return _core.read_bandwidth(n_bytes, n_threads, 3)


def weight_bytes_per_token(path: str) -> int:
    """Bytes of a llama2rs file that decoding one token reads: every tensor except the token
    embedding, of which it reads one row (and the tokenizer, which it does not read)."""
    header, _ = read_header(path)
    header.pop("__metadata__", None)
    total = 0
    for name, info in header.items():
        a, b = info["data_offsets"]
        if name == "tokenizer":
            continue
        if name.startswith("token_embedding."):
            rows = info["shape"][0]
            total += (b - a) // max(rows, 1)
        else:
            total += b - a
    return total


def measure(model: Model, prompt_tokens: int = 128, decode_tokens: int = 64, repeats: int = 3,
            seed: int = 0) -> Speed:
    """Median prefill and decode rates over ``repeats`` runs of a random prompt (greedy)."""
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    prefill, decode = [], []
    for _ in range(repeats):
        prompt = [model.config.bos_id] + rng.integers(3, vocab, size=prompt_tokens - 1).tolist()
        session = model._core.session(0.0, 0.9, 0, 1)
        start = time.perf_counter()
        session.feed(prompt)
        token = session.sample()
        middle = time.perf_counter()
        for _ in range(decode_tokens):
            session.feed([token])
            token = session.sample()
        end = time.perf_counter()
        prefill.append(prompt_tokens / (middle - start))
        decode.append(decode_tokens / (end - middle))
    return Speed(statistics.median(prefill), statistics.median(decode))


def report(model_path: str, threads: Optional[list[int]] = None, prompt_tokens: int = 128,
           decode_tokens: int = 64, repeats: int = 3, kv_cache: str = "auto") -> str:
    """The table ``llama2rs bench`` prints."""
    lines = [f"{'threads':>7} {'prefill tok/s':>14} {'decode tok/s':>13} {'read GB/s':>10} {'decode / bandwidth limit':>25}"]
    per_token = weight_bytes_per_token(model_path) if str(model_path).endswith(".safetensors") else None
    kernels = kv = ""
    for n in threads or [1, 2]:
        model = Model(model_path, n_threads=n, kv_cache=kv_cache)
        kernels, kv = model.kernels, model.kv_cache
        speed = measure(model, prompt_tokens, decode_tokens, repeats)
        bandwidth = read_bandwidth(n)
        fraction = f"{speed.decode_tok_s * per_token / bandwidth:24.0%}" if per_token else f"{'-':>24}"
        lines.append(f"{n:>7} {speed.prefill_tok_s:14.1f} {speed.decode_tok_s:13.1f} {bandwidth / 1e9:10.1f} {fraction}")
    if per_token:
        lines.append(f"(decode reads {per_token / 1e9:.3f} GB of weights per token; kernels: {kernels}; "
                     f"KV cache: {kv})")
    return "\n".join(lines)
