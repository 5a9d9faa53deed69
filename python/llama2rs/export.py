"""Convert checkpoints into llama2rs model files, optionally quantizing on the way.

Sources: a llama2.c file (+ its tokenizer), a HuggingFace Llama or Mistral directory
(fp32/fp16/bf16, or a GPTQ checkpoint from AutoGPTQ or GPTQModel; Llama 3's tokenizer.json or
tiktoken file, its stop ids and RoPE scaling), or a llama2rs file (to quantize it). The output is
one self-contained file (config, tokenizer, tensors) that ``llama2rs.Model(path)`` opens alone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import Config
from .errors import ArgumentError, TokenizerError
from .formats import l2rs, llama2c
from .model import find_tokenizer
from .tokenizer import Tokenizer
from .weights import MATRIX_NAMES, Weights, is_quantized

__all__ = ["Source", "load_source", "export", "ProgressBar"]


@dataclass
class Source:
    weights: Weights
    tokenizer: Tokenizer
    description: str

    @property
    def config(self) -> Config:
        return self.weights.config

    @property
    def quantization(self) -> Optional[dict]:
        """What the source already was, e.g. a GPTQ config."""
        return self.weights.quantization

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The ids generation stops at: the checkpoint's (every ``eos_token_id`` of an HF
        config and generation config) and the tokenizer's (Llama 3's <|eot_id|>, ...)."""
        listed = l2rs.stop_ids(self.weights.metadata, self.config.vocab_size, self.description)
        own = tuple(getattr(self.tokenizer, "stop_ids", ()))
        return tuple(dict.fromkeys(listed + own))


def _resolve_tokenizer(explicit: Optional[os.PathLike], found: Optional[Path], vocab_size: int, what: str) -> Tokenizer:
    path = explicit or found
    if path is None:
        raise TokenizerError(f"no tokenizer for {what}: pass --tokenizer (tokenizer.bin, tokenizer.model or "
                             "tokenizer.json)")
    return Tokenizer(path, vocab_size=vocab_size)


def load_source(kind: str, path: os.PathLike, tokenizer: Optional[os.PathLike] = None) -> Source:
    """Read a checkpoint of ``kind`` ``"llama2c"``, ``"hf"`` or ``"llama2rs"`` (``"auto"``
    decides by content: a directory is HuggingFace, a llama2rs safetensors file is ours)."""
    path = Path(path)
    if kind == "auto":
        kind = "hf" if path.is_dir() else "llama2rs" if l2rs.is_llama2rs_file(path) else "llama2c"
    if kind == "llama2c":
        weights = llama2c.read_model(path)
        tok = _resolve_tokenizer(tokenizer, find_tokenizer(path), weights.config.vocab_size, str(path))
        return Source(weights, tok, f"llama2.c {weights.metadata['format_version']} file {path.name}")
    if kind == "hf":
        from .formats import hf

        weights = hf.load_hf(path)
        tok = _resolve_tokenizer(tokenizer, hf.find_tokenizer(path), weights.config.vocab_size, str(path))
        kind_name = "GPTQ checkpoint" if weights.quantization else "checkpoint"
        return Source(weights, tok, f"HuggingFace {kind_name} {path.name}")
    if kind == "llama2rs":
        weights, tokenizer_bin = l2rs.read_model(path)
        vocab = weights.config.vocab_size
        tok = Tokenizer(tokenizer) if tokenizer else l2rs.read_tokenizer(tokenizer_bin, weights.metadata, vocab, str(path))
        return Source(weights, tok, f"llama2rs file {path.name}")
    raise ArgumentError(f"unknown source kind {kind!r}")


class ProgressBar:
    """A one-line progress bar on stderr (redrawn in place on a terminal)."""

    def __init__(self, title: str, enabled: bool = True, width: int = 30) -> None:
        self.title, self.enabled, self.width = title, enabled, width
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()

    def __call__(self, name: str, done: int, total: int) -> None:
        if not self.enabled or (not self.tty and done != total):
            return
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"{self.title} [{bar}] {done}/{total} {name}"[:120]
        end = "\n" if done == total else ""
        sys.stderr.write(("\r" if self.tty else "") + line.ljust(100 if self.tty else 0) + end)
        sys.stderr.flush()


def export(
    source: Source,
    output: os.PathLike,
    quantize: str = "none",
    method: Optional[str] = None,
    group_size: int = 128,
    act_order: bool = False,
    sym: bool = False,
    calibration_text: Optional[str] = None,
    calibration_windows: int = 128,
    calibration_length: Optional[int] = None,
    embeddings: str = "q8",
    percdamp: float = 0.01,
    progress: bool = True,
) -> Path:
    """Write ``source`` to ``output`` as a llama2rs file, quantized as asked (see ``--help``).
    Returns the path. Nothing is left behind when it fails.

    Matrices are read (a HuggingFace checkpoint's only now), rounded to nearest (RTN, Q8_0)
    and written one at a time, so memory holds about one matrix; GPTQ quantizes every layer
    first (``calibrate.quantize_model``)."""
    output = Path(output)
    if quantize not in ("none", "q8", "q4"):
        raise ArgumentError(f"--quantize must be none, q8 or q4, got {quantize!r}")
    weights = source.weights
    quant_meta = source.quantization
    if quantize != "none":
        from .quantize import calibrate

        matrices = [layer[m] for layer in weights.layers for m in MATRIX_NAMES]
        if any(is_quantized(m) for m in matrices):
            raise ArgumentError(f"{source.description} is already quantized: export it with --quantize none")
        method = method or ("gptq" if calibration_text is not None and quantize == "q4" else "rtn")
        windows = None
        if method == "gptq":
            if calibration_text is None:
                raise ArgumentError("--method gptq needs --calibration TEXTFILE (or use --method rtn)")
            length = calibration_length or min(source.config.seq_len, 512)
            ids = source.tokenizer.encode(calibration_text, bos=False)
            windows = calibrate.calibration_windows(ids, length, calibration_windows, source.config.bos_id)
        weights = calibrate.quantize_model(
            weights, quantize, method, group_size, act_order, sym, windows,
            embeddings, percdamp, ProgressBar(f"quantize ({method})", progress),
        )
        quant_meta = {"method": method if quantize == "q4" else "q8_0", "bits": 4 if quantize == "q4" else 8,
                      "group_size": group_size, "act_order": act_order, "sym": sym,
                      "embeddings": embeddings}
        if windows:
            quant_meta["calibration_windows"] = len(windows)
            quant_meta["calibration_length"] = len(windows[0])
    metadata = {"source": source.description}
    if quant_meta is not None:
        metadata["quantization"] = json.dumps(quant_meta)
    if "chat_template" in source.weights.metadata:
        metadata["chat_template"] = source.weights.metadata["chat_template"]
    tokenizer_bytes, tokenizer_spec = l2rs.tokenizer_parts(source.tokenizer)
    l2rs.write_model(output, weights, tokenizer_bytes, metadata, ProgressBar("write", progress),
                     tokenizer_spec=tokenizer_spec, stop_ids=source.stop_ids)
    return output
