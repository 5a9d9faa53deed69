"""The shape of the source tree: no import cycle inside the package, no hand-written file over
800 lines, and a runtime import (``import llama2rs``) that loads neither the NumPy reference,
the file writers the tests use, nor the tests' support code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "python" / "llama2rs"
MAX_LINES = 800


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` inside ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph() -> dict[str, set[str]]:
    """Intra-package imports, module-level and inside functions alike: module -> imported modules."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    compiled = {_module_name(p) for p in PACKAGE.rglob("*.pyi")}  # the Rust extension: imports nothing
    graph: dict[str, set[str]] = {name: set() for name in modules | dict.fromkeys(compiled).keys()}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            found: list[str] = []
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                # ``from . import x`` imports the submodule x when there is one.
                found = [f"{base}.{a.name}" if f"{base}.{a.name}" in graph else base for a in node.names]
            for target in found:
                while target and target not in graph:  # a name inside a module: the module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_graph_sees_function_level_imports():
    graph = import_graph()
    assert "llama2rs.errors" in graph["llama2rs.config"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _too_long(*tops: str) -> list[str]:
    found = []
    for top in tops:
        for path in sorted((REPO / top).rglob("*")):
            if path.suffix not in (".py", ".rs", ".pyi") or (REPO / "tests" / "data") in path.parents:
                continue
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > MAX_LINES:
                found.append(f"{path.relative_to(REPO)}: {lines} lines")
    return found


def test_no_python_file_over_800_lines():
    too_long = _too_long("python", "tests", "benchmarks")
    assert not too_long, f"over {MAX_LINES} lines: {too_long}"


def test_no_rust_file_over_800_lines():
    too_long = _too_long("rust")
    assert not too_long, f"over {MAX_LINES} lines: {too_long}"


def test_runtime_import_loads_no_reference_writers_or_test_support():
    code = "import sys, llama2rs; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=REPO).stdout.split()
    forbidden = [m for m in loaded if m in ("llama2rs.reference", "llama2rs.hf_reference")
                 or m.startswith(("llama2rs.formats", "llama2rs.quantize", "llama2rs.hf", "llama2rs.llama2c",
                                  "llama2rs.l2rs", "support"))]
    assert not forbidden, f"import llama2rs loads {forbidden}"
