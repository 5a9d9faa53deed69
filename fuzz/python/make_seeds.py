"""Write small valid inputs for every Python fuzz target into ``OUT/<target>/`` (a starting
corpus; not committed: run it before fuzzing).

    python fuzz/python/make_seeds.py OUT

The tokenizer fixtures come from ``$LLAMA2RS_MODELS`` (default: ``../shared/models`` beside
the checkout); large ones are trimmed to their first few hundred tokens.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

MODELS = Path(os.environ.get("LLAMA2RS_MODELS") or _harness.REPO.parent / "shared" / "models")
KEEP_TOKENS = 300


def _read(relative: str) -> bytes:
    path = MODELS / relative
    if not path.is_file():
        print(f"make_seeds: {path} is missing, skipped (set LLAMA2RS_MODELS)", file=sys.stderr)
        return b""
    return path.read_bytes()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def trim_sentencepiece(data: bytes, keep: int = KEEP_TOKENS) -> bytes:
    """A sentencepiece ModelProto with only its first ``keep`` pieces (other fields kept)."""
    from llama2rs.tokenizer import _ProtoReader

    reader = _ProtoReader(data, 0, len(data), "seed")
    out, pieces = bytearray(), 0
    while not reader.at_end():
        start = reader.pos
        field, wire = reader.tag()
        reader.skip(field, wire)
        if field == 1 and wire == 2:
            pieces += 1
            if pieces > keep:
                continue
        out += data[start:reader.pos]
    return bytes(out)


def trim_tokenizer_bin(data: bytes, keep: int = KEEP_TOKENS) -> bytes:
    from llama2rs.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_bytes(data)
    return Tokenizer.from_pieces([p.decode("utf-8", "replace") for p in tokenizer.pieces[:keep]],
                                 tokenizer.scores[:keep], bos_id=None, eos_id=None).to_bin_bytes()


def seeds(scratch: Path) -> Dict[str, Dict[str, bytes]]:
    import gptq
    import hf_checkpoint
    import model_files
    import tokenizer_json

    out: Dict[str, Dict[str, bytes]] = {}
    tok512_bin, llama2_bin = _read("stories260K/tok512.bin"), _read("llama2-tokenizer/tokenizer.bin")
    out["tokenizer_bin"] = {"tok512.bin": tok512_bin,
                            "llama2-trimmed.bin": trim_tokenizer_bin(llama2_bin) if llama2_bin else b""}
    llama2_model = _read("llama2-tokenizer/tokenizer.model")
    out["sentencepiece_model"] = {"tok512.model": _read("stories260K/tok512.model"),
                                  "llama2-trimmed.model": trim_sentencepiece(llama2_model) if llama2_model else b""}
    llama3 = _read("llama3-tokenizer/tokenizer.model")
    out["tiktoken_model"] = {"small.tiktoken": _harness.small_tiktoken(),
                             "llama3-head.tiktoken": b"".join(llama3.splitlines(keepends=True)[:KEEP_TOKENS])}
    json_files = tokenizer_json.WORKSPACE
    out["tokenizer_json"] = {f"{i}-{role}": bytes((i,)) + (json_files.base(role) or b"")
                             for i, role in enumerate(tokenizer_json.ROLES)}
    hf = hf_checkpoint.WORKSPACE
    weights_names = list(_harness.safetensors_entries(hf.base("model.safetensors") or b""))
    made = {"generation_config.json": _harness.json_bytes({"bos_token_id": 1, "eos_token_id": [2, 3]}),
            "model.safetensors.index.json": _harness.json_bytes(
                {"metadata": {"total_size": 1}, "weight_map": {n: "model.safetensors" for n in weights_names}})}
    out["hf_checkpoint"] = {f"{i}-{role}": bytes((i,)) + (hf.base(role) or made[role])
                            for i, role in enumerate(hf_checkpoint.ROLES)}
    q = gptq.WORKSPACE
    out["gptq"] = {"0-quantize_config.json": b"\0" + (q.base("quantize_config.json") or b""),
                   "1-config.json": b"\1" + (q.base("config.json") or b""),
                   "2-g_idx": b"\2\0\3\0\0\1\0\0\0",
                   "2-qzeros": b"\2\0\1\1\0\2\2\x55\x55\x55\x55",
                   "2-scales-f32": b"\2\3\2\2\2\2\2\0\0\x80\x3f"}
    out["model_files"] = model_files.seed_files(scratch)
    return {target: {name: data for name, data in files.items() if data} for target, files in out.items()}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python fuzz/python/make_seeds.py OUT")
    root = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as scratch:
        for target, files in seeds(Path(scratch)).items():
            (root / target).mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                (root / target / name).write_bytes(data)
            print(f"{root / target}: {len(files)} seeds, {sum(map(len, files.values()))} bytes")


if __name__ == "__main__":
    main()
