"""The ``llama2rs`` command line: ``generate`` streams text, ``info`` describes a model file,
``export`` / ``quantize`` convert checkpoints, ``perplexity`` and ``bench`` measure, ``chat`` and
``serve`` talk.

One module per group of commands (:mod:`.run`, :mod:`.export`, :mod:`.serve`) plus what they share
(:mod:`.common`). The CLI imports the library; nothing in the library imports the CLI.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import export, run, serve
from .common import Parser, run_guarded

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="llama2rs", description="Run Llama-2-style models on the CPU.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run.add_model_commands(commands)  # generate, info
    export.add_export_commands(commands)  # export, quantize
    run.add_measure_commands(commands)  # perplexity, bench
    serve.add_chat_commands(commands)  # chat, serve
    return parser


COMMANDS = {**run.COMMANDS, **serve.COMMANDS, "export": export.run_export, "quantize": export.run_export}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(COMMANDS[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
