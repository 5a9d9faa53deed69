"""The Rust readers' fuzz regressions through the Python API, and the panic guard of the binding.

Every file in ``fuzz/regressions/<target>/`` (crashers the fuzz targets found, minimised, and
hand-made adversarial headers; see fuzz/README.md) opens with ``llama2rs.Model`` either fine or
with a ``Llama2rsError`` subclass: never another exception, a ``PanicException`` or a crash.
A panic in the Rust core reaches Python as ``llama2rs.InternalError``, and the process goes on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import llama2rs
from llama2rs import _core
from conftest import STORIES, need

REGRESSIONS = Path(__file__).resolve().parents[1] / "fuzz" / "regressions"
RUST_TARGETS = ("llama2c", "l2rs", "gguf")  # the Python readers' are replayed by test_fuzz_regressions.py
FILES = sorted(p for target in RUST_TARGETS for p in (REGRESSIONS / target).glob("*") if p.is_file())


def test_the_regressions_are_there():
    targets = {p.parent.name for p in FILES}
    assert targets == set(RUST_TARGETS), targets
    assert len(FILES) >= 20


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.name}" for p in FILES])
def test_regression_opens_or_raises_a_llama2rs_error(path):
    try:
        model = llama2rs.Model(path)
    except llama2rs.Llama2rsError as e:
        # A clear error names the file (the core's ModelFileError does) or the problem.
        assert str(e), type(e)
        assert not isinstance(e, llama2rs.InternalError), e
        return
    # Opened: the model must run one token, or refuse with one of ours.
    try:
        logits = model.logits([model.config.bos_id])
        assert logits.shape == (1, model.config.vocab_size)
    except llama2rs.Llama2rsError as e:
        assert not isinstance(e, llama2rs.InternalError), e


@pytest.mark.parametrize("in_pool", [False, True], ids=["caller", "rayon-worker"])
def test_a_panic_is_an_internal_error_and_the_process_goes_on(in_pool):
    with pytest.raises(llama2rs.InternalError, match=r"a bug.*boom 42") as raised:
        _core._panic_for_test("boom 42", in_pool)
    assert isinstance(raised.value, llama2rs.Llama2rsError) and isinstance(raised.value, RuntimeError)
    # Caught like any error: not pyo3's PanicException, which is a BaseException.
    try:
        _core._panic_for_test("again", in_pool)
    except Exception as e:  # noqa: BLE001 - the point: `except Exception` catches it
        assert type(e) is llama2rs.InternalError
    # The process, and the core, keep working.
    need(STORIES)
    model = llama2rs.Model(STORIES, tokenizer_path=None)
    assert np.isfinite(model.logits([1, 2, 3])).all()


def test_internal_error_is_exported():
    assert llama2rs.InternalError is llama2rs.errors.InternalError
    assert "InternalError" in llama2rs.__all__ and "InternalError" in llama2rs.errors.__all__
