"""Encoding time against text length, up to 10 MB (issue 13: linear in the length).

Each of our tokenizers (llama2.c's `tokenizer.bin`, Llama 2's sentencepiece `tokenizer.model`,
Llama 3's tiktoken file) encodes texts of `--sizes` megabytes (UTF-8 bytes) of several kinds:
the mixed-script text of `bench_tokenizer.py`, and the inputs that make naive BPE quadratic:
one 10-million-letter word, one run of spaces, CJK without spaces. For each it prints seconds,
MB/s and the time per MB relative to the smallest size (1.00 for linear time; n log n grows
slowly). The peers run the same texts in the same run: sentencepiece for Llama 2's model and
tiktoken (Meta's pattern, through the test's reference encoder) for Llama 3.

    pip install sentencepiece tiktoken
    python benchmarks/bench_tokenizer_scaling.py [--sizes 1 2 5 10] [--kinds mixed word spaces cjk]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

import llama2rs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))
from bench_tokenizer import mixed_text  # noqa: E402

MODELS = Path(os.environ.get("LLAMA2RS_MODELS", REPO.parent / "shared" / "models"))
CJK = "机器学习是人工智能的一个分支它使计算机能够从数据中学习"


def text_of(kind: str, megabytes: float) -> str:
    """About `megabytes` MB of UTF-8 of one kind."""
    n = int(megabytes * 1_000_000)
    if kind == "mixed":
        text = mixed_text(n)
        while len(text.encode()) > n:  # mixed text is partly multi-byte
            text = text[: int(len(text) * n / len(text.encode()))]
        return text
    if kind == "word":
        return "a" * n
    if kind == "spaces":
        return " " * n
    if kind == "cjk":
        return (CJK * (n // (3 * len(CJK)) + 1))[: n // 3]
    raise SystemExit(f"unknown kind {kind!r}")


def encoders() -> dict[str, Callable[[str], list]]:
    found: dict[str, Callable[[str], list]] = {}
    tok512 = MODELS / "stories260K" / "tok512.bin"
    llama2 = MODELS / "llama2-tokenizer" / "tokenizer.model"
    llama3 = MODELS / "llama3-tokenizer" / "tokenizer.model"
    if tok512.exists():
        found["llama2rs tok512.bin"] = llama2rs.Tokenizer(tok512).encode
    if llama2.exists():
        found["llama2rs Llama 2 .model"] = llama2rs.Tokenizer(llama2).encode
        try:
            import sentencepiece

            sp = sentencepiece.SentencePieceProcessor(model_file=str(llama2))
            found["sentencepiece Llama 2"] = sp.encode
        except ImportError:
            print("sentencepiece not installed: no peer for Llama 2", file=sys.stderr)
    if llama3.exists():
        ours = llama2rs.Tokenizer(llama3)
        found["llama2rs Llama 3"] = lambda text: ours.encode(text, bos=False)
        try:
            from test_bpe import MetaTokenizer

            meta = MetaTokenizer(llama3)
            found["tiktoken Llama 3 (Meta's cuts)"] = lambda text: meta.encode(text, bos=False, eos=False)
        except ImportError:
            print("tiktoken not installed: no peer for Llama 3", file=sys.stderr)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 2, 5, 10], help="megabytes")
    parser.add_argument("--kinds", nargs="+", default=["mixed", "word", "spaces", "cjk"])
    args = parser.parse_args()
    found = encoders()
    print("| text | encoder | " + " | ".join(f"{s:g} MB" for s in args.sizes) + " | per MB, largest / smallest |")
    print("|---|---|" + "---|" * len(args.sizes) + "---|")
    for kind in args.kinds:
        texts = [text_of(kind, s) for s in args.sizes]
        sizes_mb = [len(t.encode("utf-8", errors="replace")) / 1e6 for t in texts]
        for name, encode in found.items():
            seconds = []
            for text in texts:
                start = time.perf_counter()
                encode(text)
                seconds.append(time.perf_counter() - start)
            per_mb = [s / mb for s, mb in zip(seconds, sizes_mb)]
            cells = " | ".join(f"{s:.2f} s" for s in seconds)
            print(f"| {kind} | {name} | {cells} | {per_mb[-1] / per_mb[0]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
