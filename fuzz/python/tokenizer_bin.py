"""Fuzz target: llama2.c's tokenizer.bin (``Tokenizer.from_bytes``; the reader of the
tokenizer a llama2rs file stores, too).

    python fuzz/python/tokenizer_bin.py -max_total_time=600 CORPUS_DIR
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402
from _tokenizer_use import use  # noqa: E402


def run(data: bytes) -> None:
    from llama2rs.tokenizer import Tokenizer

    use(Tokenizer.from_bytes(data))


if __name__ == "__main__":
    _harness.main(run)
