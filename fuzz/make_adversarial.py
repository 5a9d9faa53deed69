"""Write the hand-made adversarial files of fuzz/regressions/<target>/ (committed; run again only
to change them): headers whose counts and lengths claim far more than the file holds, which
every reader must refuse before allocating anything, and shapes whose byte sizes overflow.

    python fuzz/make_adversarial.py   # rewrites fuzz/regressions/*/adv-*
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

OUT = Path(__file__).resolve().parent / "regressions"


def gguf_header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def gstr(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def kv_str(key: bytes, value: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", 8) + gstr(value)


def tensor_info(name: bytes, ne: list[int], ggml_type: int, offset: int) -> bytes:
    return gstr(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", ggml_type, offset)


def gguf_files() -> dict[str, bytes]:
    arch = kv_str(b"general.architecture", b"llama")
    return {
        # The examples: a tiny file claiming 2^60 tensors, or 2^60 key/values.
        "adv-2e60-tensors": gguf_header(1 << 60, 0),
        "adv-2e60-metadata": gguf_header(0, 1 << 60),
        # A key, then a string value, of 2^40 bytes.
        "adv-2e40-byte-key": gguf_header(0, 1) + struct.pack("<Q", 1 << 40) + b"ab",
        "adv-2e40-byte-string": gguf_header(0, 1) + gstr(b"k") + struct.pack("<IQ", 8, 1 << 40) + b"xyz",
        # Arrays of 2^62 u32s, strings and arrays: the count times the item size overflows.
        "adv-array-2e62-u32": gguf_header(0, 1) + gstr(b"a") + struct.pack("<IIQ", 9, 4, 1 << 62) + b"\0" * 16,
        "adv-array-2e62-strings": gguf_header(0, 1) + gstr(b"a") + struct.pack("<IIQ", 9, 8, 1 << 62) + b"\0" * 16,
        "adv-array-of-arrays-deep": gguf_header(0, 1) + gstr(b"a") + struct.pack("<I", 9)
        + struct.pack("<IQ", 9, 1) * 8 + struct.pack("<IQ", 4, 1) + b"\0" * 4,
        # Tensor infos: data past the end, an offset that wraps u64, a shape whose size overflows,
        # too many dims, a zero dim.
        "adv-tensor-past-end": gguf_header(1, 1) + arch + tensor_info(b"token_embd.weight", [32, 24], 0, 1 << 20),
        "adv-tensor-offset-wraps": gguf_header(1, 1) + arch
        + tensor_info(b"token_embd.weight", [32, 24], 0, (1 << 64) - 32),
        "adv-tensor-shape-overflow": gguf_header(1, 1) + arch
        + tensor_info(b"token_embd.weight", [1 << 32, 1 << 32, 1 << 32], 0, 0),
        "adv-tensor-2e32-dims": gguf_header(1, 0) + gstr(b"t") + struct.pack("<I", 0xFFFFFFFF) + b"\0" * 32,
        "adv-tensor-zero-dim": gguf_header(1, 0) + tensor_info(b"t", [0, 4], 0, 0) + b"\0" * 32,
        "adv-alignment-zero": gguf_header(0, 1) + gstr(b"general.alignment") + struct.pack("<II", 4, 0),
    }


def llama2c_files() -> dict[str, bytes]:
    legacy = lambda *ints: struct.pack("<7i", *ints)  # noqa: E731
    versioned = lambda version, ints, shared=1, group=None: (  # noqa: E731
        struct.pack("<Ii", 0x616B3432, version) + struct.pack("<7i", *ints) + bytes([shared])
        + (struct.pack("<i", group) if group is not None else b"")).ljust(256, b"\0")
    top = (1 << 16, 1 << 18, 1 << 10, 1 << 10, 1 << 10, 1 << 21, 1 << 20)
    return {
        # Every dimension at its bound: an expected size of terabytes, for a 28-byte file.
        "adv-legacy-huge-dims": legacy(*top),
        "adv-legacy-int-min": legacy(-(1 << 31), -(1 << 31), -(1 << 31), -(1 << 31), -(1 << 31), -(1 << 31), -(1 << 31)),
        "adv-legacy-vocab-int-min": legacy(64, 172, 5, 8, 4, -(1 << 31), 512),
        "adv-v1-huge-dims": versioned(1, top),
        "adv-v2-group-zero": versioned(2, (64, 172, 5, 8, 4, 512, 512), group=0),
        "adv-v2-group-int-max": versioned(2, (64, 192, 5, 8, 4, 512, 512), group=(1 << 31) - 1),
        "adv-v1-truncated-header": struct.pack("<Ii", 0x616B3432, 1) + b"\0" * 20,
    }


def l2rs_files() -> dict[str, bytes]:
    def st(header: dict, data: bytes = b"") -> bytes:
        text = json.dumps(header).encode()
        return struct.pack("<Q", len(text)) + text + data

    config = {"dim": 8, "hidden_dim": 8, "n_layers": 1, "n_heads": 2, "n_kv_heads": 2, "vocab_size": 4,
              "seq_len": 8, "norm_eps": 1e-5, "rope_theta": 10000.0, "rope_layout": "interleaved",
              "bos_id": 1, "eos_id": 2}
    meta = {"format": "llama2rs", "format_version": "3", "config": json.dumps(config)}
    return {
        # A header length of 100 MB (the largest accepted) in a 10-byte file.
        "adv-header-100mb": struct.pack("<Q", 100_000_000) + b"{}",
        # Tensor data ranges past the end, and shapes whose element count overflows.
        "adv-data-past-end": st({"__metadata__": meta, "tokenizer": {"dtype": "U8", "shape": [1 << 40],
                                                                     "data_offsets": [0, 1 << 40]}}, b"x" * 8),
        "adv-shape-overflow": st({"__metadata__": meta, "tokenizer": {"dtype": "U8", "shape": [1 << 40, 1 << 40],
                                                                      "data_offsets": [0, 4]}}, b"x" * 4),
        "adv-config-huge-dims": st({"__metadata__": {**meta, "config": json.dumps(
            {**config, "dim": 1 << 16, "hidden_dim": 1 << 18, "n_layers": 1 << 10, "n_heads": 1 << 10,
             "n_kv_heads": 1 << 10, "vocab_size": 1 << 21, "seq_len": 1 << 20})},
            "tokenizer": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, b"abcd"),
        "adv-affine-group-zero": st({"__metadata__": {**meta, "affine_group_size": "0"},
                                     "tokenizer": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                                     "token_embedding.q4": {"dtype": "U8", "shape": [4, 4], "data_offsets": [4, 20]}},
                                    b"abcd" + b"\0" * 16),
    }


def main() -> None:
    for target, files in (("gguf", gguf_files()), ("llama2c", llama2c_files()), ("l2rs", l2rs_files())):
        folder = OUT / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
            print(f"{folder / name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
