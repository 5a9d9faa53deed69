"""Replay the Python fuzz targets' regression corpus: every file in
``fuzz/regressions/<target>/`` (crashers the fuzzers found, minimised, and hand-made
adversarial inputs) goes through the target's own ``run`` (``fuzz/python/<target>.py``), and
only a :class:`llama2rs.Llama2rsError` with a message may come out. Atheris is not needed."""

from __future__ import annotations

import faulthandler
import importlib
import sys
import time
from pathlib import Path

import pytest

from llama2rs.errors import Llama2rsError

REPO = Path(__file__).resolve().parents[1]
HARNESSES = REPO / "fuzz" / "python"
REGRESSIONS = REPO / "fuzz" / "regressions"
# The Python targets; fuzz/regressions/ also holds the Rust targets' directories.
TARGETS = sorted(p.stem for p in HARNESSES.glob("*.py") if not p.name.startswith("_") and p.stem != "make_seeds")
# Generous: the slowest regression takes well under a second; a hang would take forever.
SECONDS_PER_INPUT = 5.0
HANG_SECONDS = 120


def _target(name: str):
    added = str(HARNESSES) not in sys.path
    if added:
        sys.path.insert(0, str(HARNESSES))
    try:
        return importlib.import_module(name)
    finally:
        if added:
            sys.path.remove(str(HARNESSES))


def _cases() -> list:
    return [pytest.param(target, path, id=f"{target}/{path.name}")
            for target in TARGETS for path in sorted((REGRESSIONS / target).glob("*")) if path.is_file()]


def test_every_python_target_has_regressions():
    assert TARGETS, "no fuzz targets found"
    for target in TARGETS:
        assert any((REGRESSIONS / target).glob("*")), f"fuzz/regressions/{target}/ is empty"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy overflow in a garbage tensor is not a crash
@pytest.mark.parametrize("target, path", _cases())
def test_regression_input_gives_only_llama2rs_errors(target: str, path: Path):
    run = _target(target).run
    start = time.perf_counter()
    # A hang inside the core (which runs without the GIL) cannot be interrupted: end the
    # process with the stack rather than hang the test run.
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        run(path.read_bytes())
    except Llama2rsError as exc:
        assert str(exc), f"{type(exc).__name__} without a message"
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert time.perf_counter() - start < SECONDS_PER_INPUT


def test_replay_reports_a_crash(monkeypatch):
    """The replay's rule is the fuzzers' rule: a reader bug (here: an IndexError planted in the
    tokenizer.bin reader) escapes ``run`` and fails the test."""
    from llama2rs import tokenizer

    def broken(data: bytes, where: str):
        raise IndexError("planted")

    monkeypatch.setattr(tokenizer, "_load_bin", broken)
    with pytest.raises(IndexError):
        _target("tokenizer_bin").run(b"\x10\x00\x00\x00")
