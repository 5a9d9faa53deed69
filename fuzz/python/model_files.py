"""Fuzz target: the Python readers of model files, which export and quantize use on an input
model: our own llama2rs file (``llama2rs.formats.l2rs.read_model``, then the tokenizer and stop
ids it stores) and llama2.c's model files (``llama2rs.formats.llama2c.read_model``: legacy, v1,
v2/Q8_0); every tensor they return is then read. The first byte picks the reader (even: l2rs,
odd: llama2.c), the rest is the file. (The Rust core's readers of the same files are fuzzed by
the Rust targets l2rs and llama2c.)

    python fuzz/python/model_files.py -max_total_time=600 CORPUS_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402
from _tokenizer_use import use  # noqa: E402


def _scratch(directory: Path) -> None:
    pass


WORKSPACE = _harness.Workspace(_scratch)


def run(data: bytes) -> None:
    from llama2rs.formats import l2rs, llama2c

    if not data:
        return
    path = WORKSPACE.put("model.bin", data[1:])
    if _harness.role(data, ("l2rs", "llama2c")) == "l2rs":
        weights, tokenizer = l2rs.read_model(path)
        config = weights.config
        use(l2rs.read_tokenizer(tokenizer, weights.metadata, config.vocab_size, str(path)))
        l2rs.stop_ids(weights.metadata, config.vocab_size, str(path))
    else:
        weights = llama2c.read_model(path)
    _harness.materialise(weights)
    _harness.read_whole(data, ("l2rs", "llama2c"))


def seed_files(directory: Path) -> Dict[str, bytes]:
    """Valid inputs, tiny models in each format (the role byte included)."""
    _harness.tests_support()
    from support.fixtures import random_weights
    from llama2rs.formats import l2rs, llama2c
    from llama2rs.quantize.gptq import quantize_rtn
    from llama2rs.tokenizer import Tokenizer

    config = _harness.tiny_config()
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(8)] + [chr(ord("a") + i) for i in range(21)]
    tokenizer = Tokenizer.from_pieces(pieces, [float(-i) for i in range(32)]).to_bin_bytes()
    float_weights = random_weights(config, seed=3, shared_classifier=False)
    quantized = random_weights(config, seed=4).map_matrices(
        lambda name, m: quantize_rtn(m, bits=4, group_size=8), embeddings=False)
    # a byte-level BPE (tiktoken ranks + tokenizer_spec), Llama 3 style, with 3 special tokens
    from dataclasses import replace

    from llama2rs.bpe import LLAMA3_PATTERN, ByteLevelTokenizer

    spec = {"type": "byte_level_bpe", "pattern": LLAMA3_PATTERN, "cuts": [400000, 25000], "bos_id": 273, "eos_id": 274,
            "stop_ids": [274, 275], "special_tokens": {"<|begin_of_text|>": 273, "<|end_of_text|>": 274, "<|eot_id|>": 275}}
    bpe = ByteLevelTokenizer.from_file_parts(_harness.small_tiktoken(), spec)
    bpe_ranks, bpe_spec = bpe.to_file_parts()
    bpe_config = replace(config, vocab_size=len(bpe), bos_id=273, eos_id=274)
    bpe_weights = random_weights(bpe_config, seed=5).map_matrices(
        lambda name, m: quantize_rtn(m, bits=4, group_size=16))
    out: Dict[str, bytes] = {}
    for name, write in (
        ("l2rs-bpe", lambda p: l2rs.write_model(p, bpe_weights, bpe_ranks, tokenizer_spec=bpe_spec, stop_ids=[275])),
        ("l2rs-f32", lambda p: l2rs.write_model(p, float_weights, tokenizer, stop_ids=[5])),
        ("l2rs-affine4", lambda p: l2rs.write_model(p, quantized, tokenizer)),
        ("llama2c-legacy", lambda p: llama2c.write(p, float_weights, "legacy")),
        ("llama2c-v1", lambda p: llama2c.write(p, float_weights, "v1")),
        ("llama2c-v2", lambda p: llama2c.write(p, float_weights, "v2", group_size=8)),
    ):
        path = directory / name
        write(path)
        out[name] = (b"\0" if name.startswith("l2rs") else b"\1") + path.read_bytes()
        path.unlink()
    return out


if __name__ == "__main__":
    _harness.main(run)
