"""Convert checkpoints into llama2rs model files, optionally quantizing on the way.

Sources: a llama2.c file (+ its tokenizer), a HuggingFace Llama directory (fp32/fp16/bf16, or a
GPTQ checkpoint from AutoGPTQ or GPTQModel), or a llama2rs file (to quantize it). The output is
one self-contained file (config, tokenizer, tensors) that ``llama2rs.Model(path)`` opens alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence


from . import calibrate, l2rs, llama2c
from .config import Config
from .errors import ArgumentError, Llama2rsError, TokenizerError
from .l2rs import MATRIX_NAMES, ModelWeights
from .llama2c import Q8Tensor
from .quant import AffineQuantized
from .tokenizer import Tokenizer

__all__ = ["Source", "load_source", "export", "main", "build_parser"]


@dataclass
class Source:
    config: Config
    weights: ModelWeights
    tokenizer: Tokenizer
    description: str
    quantization: Optional[dict] = None  # what the source already was, e.g. a GPTQ config


def _is_quantized(m: object) -> bool:
    return isinstance(m, (AffineQuantized, Q8Tensor))


def _resolve_tokenizer(explicit: Optional[os.PathLike], found: Optional[Path], vocab_size: int, what: str) -> Tokenizer:
    path = explicit or found
    if path is None:
        raise TokenizerError(f"no tokenizer for {what}: pass --tokenizer (tokenizer.bin or tokenizer.model)")
    return Tokenizer(path, vocab_size=vocab_size)


def load_source(kind: str, path: os.PathLike, tokenizer: Optional[os.PathLike] = None) -> Source:
    """Read a checkpoint of ``kind`` ``"llama2c"``, ``"hf"`` or ``"llama2rs"`` (``"auto"``
    decides by content: a directory is HuggingFace, a llama2rs safetensors file is ours)."""
    path = Path(path)
    if kind == "auto":
        if path.is_dir():
            kind = "hf"
        else:
            try:
                header, _ = l2rs.read_safetensors_header(path)
                kind = "llama2rs" if (header.get("__metadata__") or {}).get("format") == l2rs.FORMAT_NAME else "llama2c"
            except Llama2rsError:
                kind = "llama2c"
    if kind == "llama2c":
        from .model import find_tokenizer

        loaded = llama2c.read_model(path)
        c, w = loaded.config, loaded.weights
        layers = [{name: w[name][i] for name in ("rms_att", "rms_ffn", *MATRIX_NAMES)} for i in range(c.n_layers)]
        weights = ModelWeights(w["token_embedding"], layers, w["rms_final"],
                               None if loaded.shared_classifier else w["wcls"])
        tok = _resolve_tokenizer(tokenizer, find_tokenizer(path), c.vocab_size, str(path))
        quant = {"method": "q8_0", "group_size": loaded.group_size} if loaded.format == "v2" else None
        return Source(c, weights, tok, f"llama2.c {loaded.format} file {path.name}", quant)
    if kind == "hf":
        from . import hf

        imported = hf.load_hf(path)
        weights = ModelWeights(imported.token_embedding, imported.layers, imported.rms_final, imported.wcls)
        tok = _resolve_tokenizer(tokenizer, imported.tokenizer_path, imported.config.vocab_size, str(path))
        kind_name = "GPTQ checkpoint" if imported.quantization else "checkpoint"
        return Source(imported.config, weights, tok, f"HuggingFace {kind_name} {path.name}", imported.quantization)
    if kind == "llama2rs":
        config, weights, tokenizer_bin = l2rs.read_model(path)
        tok = Tokenizer(tokenizer) if tokenizer else Tokenizer.from_bytes(tokenizer_bin, config.vocab_size, str(path))
        quant = json.loads(weights.metadata["quantization"]) if "quantization" in weights.metadata else None
        return Source(config, weights, tok, f"llama2rs file {path.name}", quant)
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
    quantize_embeddings: bool = False,
    percdamp: float = 0.01,
    progress: bool = True,
) -> Path:
    """Write ``source`` to ``output`` as a llama2rs file, quantized as asked (see ``--help``).
    Returns the path. Nothing is left behind when it fails."""
    output = Path(output)
    if quantize not in ("none", "q8", "q4"):
        raise ArgumentError(f"--quantize must be none, q8 or q4, got {quantize!r}")
    weights = source.weights
    quant_meta = source.quantization
    if quantize != "none":
        matrices = [layer[m] for layer in weights.layers for m in MATRIX_NAMES]
        if any(_is_quantized(m) for m in matrices):
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
            source.config, weights, quantize, method, group_size, act_order, sym, windows,
            quantize_embeddings, percdamp, ProgressBar(f"quantize ({method})", progress),
        )
        quant_meta = {"method": method if quantize == "q4" else "q8_0", "bits": 4 if quantize == "q4" else 8,
                      "group_size": group_size, "act_order": act_order, "sym": sym,
                      "embeddings_quantized": quantize_embeddings}
        if windows:
            quant_meta["calibration_windows"] = len(windows)
            quant_meta["calibration_length"] = len(windows[0])
    metadata = {"source": source.description}
    if quant_meta is not None:
        metadata["quantization"] = json.dumps(quant_meta)
    l2rs.write_model(output, source.config, weights, source.tokenizer.to_bin_bytes(), metadata,
                     ProgressBar("write", progress))
    return output


def build_parser(prog: str = "export.py") -> argparse.ArgumentParser:
    from .cli import _Parser

    parser = _Parser(prog=prog, description="Convert a checkpoint into a llama2rs model file.")
    add_export_arguments(parser)
    return parser


def add_export_arguments(parser: argparse.ArgumentParser, positional_input: bool = False) -> None:
    if positional_input:
        parser.add_argument("input", help="llama2.c file, HuggingFace directory or llama2rs file")
        parser.set_defaults(hf=None, llama2c=None, input_kind="auto")
    else:
        parser.set_defaults(input_kind="llama2rs")
        src = parser.add_mutually_exclusive_group(required=True)
        src.add_argument("--hf", metavar="DIR", help="HuggingFace Llama directory (config.json, *.safetensors)")
        src.add_argument("--llama2c", metavar="FILE", help="llama2.c model file (legacy, v1 or v2 Q8_0)")
        src.add_argument("--input", metavar="FILE", help="a llama2rs file (to quantize it)")
    parser.add_argument("--tokenizer", metavar="TOK", help="tokenizer.bin or tokenizer.model (default: found beside the source)")
    parser.add_argument("-o", "--output", required=True, help="output file (e.g. model.l2rs.safetensors)")
    parser.add_argument("--quantize", choices=["none", "q8", "q4"], default="q4" if positional_input else "none",
                        help="none: keep the weights as they are; q8: llama2.c's Q8_0; q4: 4-bit groups")
    parser.add_argument("--method", choices=["gptq", "rtn"], default=None,
                        help="q4 method (default: gptq when --calibration is given, else round-to-nearest)")
    parser.add_argument("--group-size", type=int, default=128, help="weights per scale; -1 = one per row (default 128)")
    parser.add_argument("--act-order", action="store_true", help="GPTQ: quantize columns by decreasing Hessian diagonal")
    parser.add_argument("--sym", action="store_true", help="symmetric groups (default: asymmetric, with zero points)")
    parser.add_argument("--calibration", metavar="TEXTFILE", help="calibration text for GPTQ (UTF-8)")
    parser.add_argument("--calibration-windows", type=int, default=128, help="at most this many windows (default 128)")
    parser.add_argument("--calibration-length", type=int, default=None, help="tokens per window (default: min(seq_len, 512))")
    parser.add_argument("--quantize-embeddings", action="store_true", help="also quantize the embedding and classifier")
    parser.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening, fraction of mean diag(H) (default 0.01)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run_export(args: argparse.Namespace) -> int:
    if args.hf:
        kind, path = "hf", args.hf
    elif args.llama2c:
        kind, path = "llama2c", args.llama2c
    else:  # --input (a llama2rs file), or quantize's positional input of any kind
        kind, path = args.input_kind, args.input
    calibration = None
    if args.calibration:
        try:
            calibration = Path(args.calibration).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ArgumentError(f"cannot read calibration text {args.calibration}: {e}") from None
    start = time.perf_counter()
    source = load_source(kind, path, args.tokenizer)
    out = export(source, args.output, args.quantize, args.method, args.group_size, args.act_order, args.sym,
                 calibration, args.calibration_windows, args.calibration_length, args.quantize_embeddings,
                 args.damp, progress=not args.quiet)
    size = out.stat().st_size
    print(f"wrote {out} ({size / 1e6:.1f} MB) from {source.description} in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .cli import run_guarded

    args = build_parser().parse_args(argv)
    return run_guarded(run_export, args)


if __name__ == "__main__":
    sys.exit(main())
