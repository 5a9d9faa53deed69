"""Fuzz target: HuggingFace's tokenizer.json and its tokenizer_config.json, read by
``Tokenizer(path)`` from a directory holding both. The first byte picks the file the rest
replaces (even: tokenizer.json, odd: tokenizer_config.json); the other one stays valid.

    python fuzz/python/tokenizer_json.py -max_total_time=600 CORPUS_DIR
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402
from _tokenizer_use import use  # noqa: E402

ROLES = ("tokenizer.json", "tokenizer_config.json")
WORKSPACE = _harness.Workspace(_harness.write_tokenizer_json)


def run(data: bytes) -> None:
    from llama2rs.tokenizer import Tokenizer

    if not data:
        return
    WORKSPACE.put(_harness.role(data, ROLES), data[1:])
    use(Tokenizer(WORKSPACE.path / "tokenizer.json"))
    _harness.read_whole(data, ROLES)


if __name__ == "__main__":
    _harness.main(run)
