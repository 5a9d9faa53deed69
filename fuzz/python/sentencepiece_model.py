"""Fuzz target: sentencepiece's tokenizer.model, a protobuf parsed by our own code
(``Tokenizer.from_bytes``, which tells it from a tokenizer.bin by content).

    python fuzz/python/sentencepiece_model.py -max_total_time=600 CORPUS_DIR
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
