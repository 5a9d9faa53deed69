"""Encoding speed of the Llama 3 tokenizer against tiktoken, in the same run.

A ~100k-character mixed-script text (English, code, Chinese, Japanese, Russian, Arabic,
emoji, digits), built deterministically; each encoder runs it `--repeats` times, interleaved,
and the best time counts. Two peers: tiktoken's own `Encoding.encode` with Meta's pattern
(the Rust core alone), and Meta's `Tokenizer.encode` as llama_models writes it (tiktoken plus
its Python cuts of long runs, which llama2rs also does, in Rust). Results are checked equal.

    pip install tiktoken
    python benchmarks/bench_tokenizer.py [--tokenizer ../shared/models/llama3-tokenizer/tokenizer.model]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import llama2rs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from test_bpe import MetaTokenizer  # noqa: E402  (the reference encoder, as the tests use it)

SAMPLES = [
    "The quick brown fox jumps over the lazy dog. It's 3.14159 o'clock, and we'll see what they've done. ",
    "def tokenize(text: str) -> list[int]:\n    return [ord(c) for c in text if not c.isspace()]\n\n",
    "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。",
    "東京は日本の首都であり、世界有数の大都市です。",
    "Быстрая коричневая лиса прыгает через ленивую собаку. ",
    "الذكاء الاصطناعي هو فرع من علوم الحاسوب. ",
    "Emoji 👍🏽🎉🚀 and flags 🇫🇷🇩🇪 with 1234567 numbers and   extra   spaces\t\ttabs\n",
]


def mixed_text(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    parts, total = [], 0
    while total < chars:
        sample = rng.choice(SAMPLES)
        parts.append(sample)
        total += len(sample)
    return "".join(parts)[:chars]


def best_time(f, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path,
                        default=REPO.parent / "shared" / "models" / "llama3-tokenizer" / "tokenizer.model")
    parser.add_argument("--chars", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    ours = llama2rs.Tokenizer(args.tokenizer)
    meta = MetaTokenizer(args.tokenizer)
    text = mixed_text(args.chars)
    assert ours.encode(text, bos=False) == meta.encode(text, bos=False, eos=False)
    n_tokens = len(ours.encode(text, bos=False))
    times = {"llama2rs": [], "tiktoken": [], "meta": []}
    for _ in range(3):  # interleaved rounds, so drift hits all alike
        times["llama2rs"].append(best_time(lambda: ours.encode(text, bos=False), args.repeats))
        times["tiktoken"].append(best_time(lambda: meta.model.encode(text, disallowed_special=()), args.repeats))
        times["meta"].append(best_time(lambda: meta.encode(text, bos=False, eos=False), args.repeats))
    best = {k: min(v) for k, v in times.items()}
    print(f"{len(text)} characters, {n_tokens} tokens; best of {3 * args.repeats} runs each")
    for name, seconds in best.items():
        print(f"{name:<10} {seconds * 1e3:8.2f} ms  {n_tokens / seconds / 1e6:6.2f} M tok/s  "
              f"{seconds / best['tiktoken']:5.2f}x tiktoken's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
