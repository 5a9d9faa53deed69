"""The hand-written `_core.pyi` matches the compiled extension (mypy's stubtest)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_stubtest_core():
    pytest.importorskip("mypy")
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "llama2rs._core"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_type_checks():
    """The package ships py.typed: its own annotations must hold (mypy over the installed package)."""
    pytest.importorskip("mypy")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "-p", "llama2rs", "--ignore-missing-imports", "--no-incremental"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
