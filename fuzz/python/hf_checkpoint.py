"""Fuzz target: the HuggingFace checkpoint importer (``llama2rs.formats.hf.load_hf``, what
``llama2rs export`` runs on a checkpoint directory), then every tensor it returns is read.

The first byte picks which file of an otherwise valid tiny float checkpoint the rest of the
input replaces (see ``ROLES``); the base checkpoint has no index file and no
generation_config.json, so those roles add one.

    python fuzz/python/hf_checkpoint.py -max_total_time=600 CORPUS_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

ROLES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
         "tokenizer_config.json")


def build(directory: Path) -> None:
    _harness.tests_support()
    from support.fixtures import random_weights
    from support.hf_writers import write_hf_checkpoint

    weights = random_weights(_harness.tiny_config(), seed=1, shared_classifier=False)
    write_hf_checkpoint(directory, weights, dtype="float16", extra_config={"eos_token_id": [2, 3]})
    (directory / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}", "eos_token": "</s>"}')


WORKSPACE = _harness.Workspace(build)


def run(data: bytes) -> None:
    from llama2rs.formats.hf import load_hf

    if not data:
        return
    WORKSPACE.put(_harness.role(data, ROLES), data[1:])
    _harness.materialise(load_hf(WORKSPACE.path))
    _harness.read_whole(data, ROLES)


if __name__ == "__main__":
    _harness.main(run)
