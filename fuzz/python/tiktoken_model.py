"""Fuzz target: Llama 3's tokenizer.model, tiktoken text (``base64-token rank`` lines), read by
``ByteLevelTokenizer.from_bytes`` (the same reader ``Tokenizer(path)`` uses for such a file).

    python fuzz/python/tiktoken_model.py -max_total_time=600 CORPUS_DIR
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402
from _tokenizer_use import use  # noqa: E402


def run(data: bytes) -> None:
    from llama2rs.bpe import ByteLevelTokenizer

    use(ByteLevelTokenizer.from_bytes(data))


if __name__ == "__main__":
    _harness.main(run)
