"""What every command shares: argparse that fails in one line, argument types, the exit codes,
and :func:`run_guarded`, which turns llama2rs errors into a message and an exit code."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Callable, NoReturn

from ..errors import ArgumentError, Llama2rsError

# What ``add_subparsers`` returns: the command groups add their commands to it.
Commands = argparse._SubParsersAction

EXIT_BAD_ARGUMENTS = 2
EXIT_FAILED = 1


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument on one line (and exit code 2), without the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_ARGUMENTS, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


# Give argparse's "invalid <type> value" messages readable names.
positive_int.__name__ = "positive integer"
non_negative_int.__name__ = "non-negative integer"
non_negative_float.__name__ = "non-negative number"
unit_float.__name__ = "number in [0, 1]"


def add_kv_cache_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kv-cache", choices=["auto", "f32", "f16"], default="auto",
                        help="what the KV cache stores (default auto: f16 for GPTQ weights on avx2/avx512, else f32)")


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_guarded(command: "Callable[[argparse.Namespace], int]", args: argparse.Namespace) -> int:
    """Run a command, turning llama2rs errors into one line on stderr and an exit code. SIGTERM
    becomes SystemExit(143), so a command cleans up as on Ctrl-C (an export removes its
    temporary file) instead of dying where it stands."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread: signals are not ours to take
        previous = None
    try:
        return command(args)
    except Llama2rsError as error:
        code = EXIT_BAD_ARGUMENTS if isinstance(error, ArgumentError) else EXIT_FAILED
        print(f"llama2rs: error: {error}", file=sys.stderr)
        return code
    except BrokenPipeError:  # e.g. piped into `head`
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
