"""Peak memory of exporting a Llama-2-7B-shaped bf16 HuggingFace checkpoint to 4 bits.

Writes a random bf16 checkpoint of Llama-2-7B's shape (dim 4096, hidden 11008, 32 layers, 32
heads, vocab 32000, separate lm_head: 13.5 GB in shards, with ``model.safetensors.index.json``),
then runs ``python -m llama2rs export --hf DIR --quantize q4`` in a child process and reports
the child's peak resident memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss``) and wall time.
The issue's bar: at most 6 GB. Nothing of the export is imported here: the child is measured
alone.

The weights are tiles of one random block (N(0, 0.02) rounded to bf16, each tensor starting at
its own random place in it), so the checkpoint is written at disk speed; the norms are
``1 + N(0, 0.1)``. The checkpoint and the output are deleted at the end unless ``--keep``.

    python benchmarks/bench_export_memory.py [--out benchmarks/out] [--layers 32] [--quantize q4]
    python benchmarks/bench_export_memory.py --layers 2      # a quick run: 2 layers, ~1.4 GB
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO.parent / "shared" / "models" / "llama2-tokenizer" / "tokenizer.model"
DIM, HIDDEN, HEADS, VOCAB = 4096, 11008, 32, 32000
POOL = 1 << 24  # random bf16 values tiled into every weight (32 MB)


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, round to nearest even (no NaN here)."""
    u = x.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _tensors(layers: int) -> List[Tuple[str, Tuple[int, ...]]]:
    """HF names and shapes, in HF's order."""
    out: List[Tuple[str, Tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, DIM))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (DIM,)),
                (p + "self_attn.q_proj.weight", (DIM, DIM)), (p + "self_attn.k_proj.weight", (DIM, DIM)),
                (p + "self_attn.v_proj.weight", (DIM, DIM)), (p + "self_attn.o_proj.weight", (DIM, DIM)),
                (p + "post_attention_layernorm.weight", (DIM,)),
                (p + "mlp.gate_proj.weight", (HIDDEN, DIM)), (p + "mlp.up_proj.weight", (HIDDEN, DIM)),
                (p + "mlp.down_proj.weight", (DIM, HIDDEN))]
    out += [("model.norm.weight", (DIM,)), ("lm_head.weight", (VOCAB, DIM))]
    return out


def _write_shard(path: Path, names: List[Tuple[str, Tuple[int, ...]]], pool: np.ndarray,
                 rng: np.random.Generator) -> None:
    header: Dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in names:
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, shape in names:
            n = int(np.prod(shape))
            if len(shape) == 1:
                f.write(_bf16(1 + 0.1 * rng.standard_normal(n, dtype=np.float32)).tobytes())
                continue
            start = int(rng.integers(POOL))
            while n > 0:  # the pool from `start` on, then from 0, as often as needed
                chunk = pool[start : start + n]
                f.write(chunk.tobytes())
                n -= len(chunk)
                start = 0


def write_checkpoint(directory: Path, layers: int, shard_bytes: float, seed: int = 0) -> int:
    """A random bf16 checkpoint of 7B's shape with ``layers`` layers; returns its bytes."""
    rng = np.random.default_rng(seed)
    pool = _bf16(0.02 * rng.standard_normal(POOL, dtype=np.float32))
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": DIM,
        "intermediate_size": HIDDEN, "num_hidden_layers": layers, "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS, "vocab_size": VOCAB, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    shards: List[List[Tuple[str, Tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in _tensors(layers):
        nbytes = 2 * int(np.prod(shape))
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weight_map = {}
    for k, names in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        _write_shard(directory / fname, names, pool, rng)
        weight_map.update({name: fname for name, _ in names})
    total = sum(2 * int(np.prod(s)) for _, s in _tensors(layers))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out", help="where the files go")
    parser.add_argument("--layers", type=int, default=32, help="layers (32: Llama-2-7B; fewer for a quick run)")
    parser.add_argument("--quantize", choices=["none", "q8", "q4"], default="q4")
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER, help="a 32000-token tokenizer.model")
    parser.add_argument("--shard-gb", type=float, default=5.0, help="shard size (default 5 GB)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and the output")
    args = parser.parse_args()
    if not args.tokenizer.is_file():
        print(f"tokenizer {args.tokenizer} not found (pass --tokenizer)", file=sys.stderr)
        return 2
    directory = args.out / f"random-7b-bf16-{args.layers}l"
    output = args.out / f"random-7b-{args.layers}l-{args.quantize}.l2rs.safetensors"
    start = time.perf_counter()
    total = write_checkpoint(directory, args.layers, args.shard_gb * 1e9)
    print(f"checkpoint: {directory} ({total / 1e9:.2f} GB bf16, {args.layers} layers) written in "
          f"{time.perf_counter() - start:.0f} s")
    command = [sys.executable, "-m", "llama2rs", "export", "--hf", str(directory), "--tokenizer",
               str(args.tokenizer), "-o", str(output), "--quantize", args.quantize, "-q"]
    try:
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
        if result.returncode != 0:
            print(result.stdout + result.stderr, file=sys.stderr)
            return 1
        print(result.stderr.strip())
        largest = 4 * VOCAB * DIM
        print(f"export --quantize {args.quantize}: peak RSS {peak / 1e9:.2f} GB ({peak / 2**30:.2f} GiB), "
              f"wall {wall:.0f} s; output {output.stat().st_size / 1e9:.2f} GB; input {total / 1e9:.2f} GB "
              f"(its largest matrix in float32: {largest / 1e9:.2f} GB)")
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
            output.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
