"""Fuzz target: the GPTQ importer (``load_hf`` on an AutoGPTQ-style checkpoint: act-order,
4-bit, group size 8), then every tensor it returns is read (dequantized).

The first byte picks what the rest of the input changes in an otherwise valid tiny checkpoint:
the raw bytes of quantize_config.json or config.json, or (structured, so the fuzzer reaches the
unpacking) one tensor of a quantized linear: which linear, which of qweight / qzeros / scales /
g_idx, then either deleted or replaced by a tensor of a chosen dtype and shape whose contents
are the remaining bytes (repeated to fill it).

    python fuzz/python/gptq.py -max_total_time=600 CORPUS_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

WEIGHTS_FILE = "gptq_model-4bit-8g.safetensors"
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")
PARTS = ("qweight", "qzeros", "scales", "g_idx")
DTYPES = {"I32": 4, "F16": 2, "F32": 4, "I64": 8, "U8": 1, "I8": 1, "BF16": 2, "BOOL": 1, "F64": 8, "U32": 4,
          "I16": 2, "U16": 2}


def build(directory: Path) -> None:
    _harness.tests_support()
    from support.fixtures import random_weights
    from support.hf_writers import write_gptq_checkpoint

    weights = random_weights(_harness.tiny_config(), seed=2)
    write_gptq_checkpoint(directory, weights, bits=4, group_size=8, desc_act=True, sym=False, tool="autogptq")


WORKSPACE = _harness.Workspace(build)


def tensor_change(data: bytes) -> bytes:
    """The weights file with one GPTQ tensor deleted or replaced, as ``data`` describes."""
    read = _harness.Bytes(data)
    tensors = dict(_harness.safetensors_entries(WORKSPACE.base(WEIGHTS_FILE) or b""))
    name = f"model.layers.0.{read.pick(LINEARS)}.{read.pick(PARTS)}"
    how = read.byte()
    if how % 8 == 7:
        del tensors[name]
    else:
        dtype = read.pick(list(DTYPES))
        old_shape = tensors[name][1]
        if how % 8 < 4 and len(old_shape) == 2:  # near the right shape
            shape = tuple(max(0, d + (read.byte() % 5) - 2) for d in old_shape)
        else:
            shape = tuple(read.byte() % 48 for _ in range(read.byte() % 4))
        count = 1
        for d in shape:
            count *= d
        nbytes = count * DTYPES[dtype]
        fill = read.rest() or b"\0"
        tensors[name] = (dtype, shape, (fill * (nbytes // len(fill) + 1))[:nbytes])
    return _harness.safetensors_bytes(tensors)


def run(data: bytes) -> None:
    from llama2rs.formats.hf import load_hf

    if not data:
        return
    role = _harness.role(data, range(4))
    if role == 0:
        WORKSPACE.put("quantize_config.json", data[1:])
    elif role == 1:
        WORKSPACE.put("config.json", data[1:])
    else:
        WORKSPACE.put(WEIGHTS_FILE, tensor_change(data[1:]))
    _harness.materialise(load_hf(WORKSPACE.path))
    _harness.read_whole(data, range(4))


if __name__ == "__main__":
    _harness.main(run)
