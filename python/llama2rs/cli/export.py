"""The commands that convert checkpoints: ``export`` (also the top-level ``export.py`` script)
and ``quantize``. The conversion itself is :mod:`llama2rs.export`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ArgumentError
from ..export import export, load_source
from ..quantize.calibrate import EMBEDDINGS
from .common import Commands, Parser, run_guarded

__all__ = ["add_export_commands", "add_export_arguments", "run_export", "build_parser", "main"]


def add_export_commands(commands: Commands) -> None:
    export_cmd = commands.add_parser("export", help="convert a llama2.c file or HuggingFace checkpoint (same as export.py)")
    add_export_arguments(export_cmd)
    quantize = commands.add_parser("quantize", help="quantize a model to 4 bits (GPTQ with --calibration, else RTN)")
    add_export_arguments(quantize, positional_input=True)


def build_parser(prog: str = "export.py") -> argparse.ArgumentParser:
    """The parser of the top-level ``export.py`` script."""
    parser = Parser(prog=prog, description="Convert a checkpoint into a llama2rs model file.")
    add_export_arguments(parser)
    return parser


def add_export_arguments(parser: argparse.ArgumentParser, positional_input: bool = False) -> None:
    if positional_input:
        parser.add_argument("input", help="llama2.c file, HuggingFace directory or llama2rs file")
        parser.set_defaults(hf=None, llama2c=None, input_kind="auto")
    else:
        parser.set_defaults(input_kind="llama2rs")
        src = parser.add_mutually_exclusive_group(required=True)
        src.add_argument("--hf", metavar="DIR", help="HuggingFace Llama or Mistral directory (config.json, *.safetensors)")
        src.add_argument("--llama2c", metavar="FILE", help="llama2.c model file (legacy, v1 or v2 Q8_0)")
        src.add_argument("--input", metavar="FILE", help="a llama2rs file (to quantize it)")
    parser.add_argument("--tokenizer", metavar="TOK", help="tokenizer.bin, tokenizer.model or tokenizer.json (default: found with the source)")
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
    parser.add_argument("--embeddings", choices=EMBEDDINGS, default=None,
                        help="the embedding and classifier when quantizing: q8 = Q8_0 in groups of 32 (default), "
                             "same = the layers' type, float = kept as they are")
    parser.add_argument("--quantize-embeddings", action="store_true",
                        help="the embedding and classifier in the layers' type (= --embeddings same)")
    parser.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening, fraction of mean diag(H) (default 0.01)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def embeddings_choice(args: argparse.Namespace) -> str:
    if args.quantize_embeddings and args.embeddings not in (None, "same"):
        raise ArgumentError(f"--quantize-embeddings contradicts --embeddings {args.embeddings}")
    return "same" if args.quantize_embeddings else (args.embeddings or EMBEDDINGS[0])


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
                 calibration, args.calibration_windows, args.calibration_length, embeddings_choice(args),
                 args.damp, progress=not args.quiet)
    size = out.stat().st_size
    print(f"wrote {out} ({size / 1e6:.1f} MB) from {source.description} in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``export.py``'s entry point (same options as ``llama2rs export``)."""
    args = build_parser().parse_args(argv)
    return run_guarded(run_export, args)


if __name__ == "__main__":
    sys.exit(main())
