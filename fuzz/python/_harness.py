"""What the Python fuzz targets share: running one under atheris, the rule for what counts as
a crash, the valid base files that a target overwrites one of, and a byte reader for the
targets that build structured inputs.

A target module (``fuzz/python/<target>.py``) defines ``run(data: bytes) -> None``: it feeds
``data`` to one reader of untrusted bytes and lets every exception escape. Only
:class:`llama2rs.Llama2rsError` (and its subclasses) is an accepted outcome; anything else -
``IndexError``, ``RecursionError``, ``UnicodeDecodeError``, a ``MemoryError``, a Rust panic - is
a crash. ``tests/test_fuzz_regressions.py`` replays ``fuzz/regressions/<target>/*`` through the
same ``run``; atheris is needed only to fuzz, not to replay.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"

# The modules that read untrusted bytes (instrumented for coverage when fuzzing).
READER_MODULES = (
    "llama2rs", "llama2rs._tokens", "llama2rs.tokenizer", "llama2rs.bpe", "llama2rs.config",
    "llama2rs.weights", "llama2rs.formats.hf", "llama2rs.formats.safetensors", "llama2rs.formats.l2rs",
    "llama2rs.formats.llama2c", "llama2rs.quantize.affine", "llama2rs.quantize.q80",
)

# Defaults for a fuzzing run unless the command line sets them: a slow input is a hang, and
# memory beyond this (libFuzzer's RSS limit) is "unbounded memory"; the seeds are whole files
# of several KB, which libFuzzer's slowly growing length limit would keep it from mutating.
DEFAULT_FLAGS = ("-timeout=10", "-rss_limit_mb=2048", "-len_control=0")


def main(run: Callable[[bytes], None]) -> None:
    """Fuzz ``run`` with atheris (libFuzzer); the command line is libFuzzer's."""
    import atheris  # only needed to fuzz

    atheris.instrument_func(_role_seen)
    with atheris.instrument_imports(include=["llama2rs"]):
        import importlib

        for name in READER_MODULES:
            importlib.import_module(name)
    from llama2rs.errors import Llama2rsError

    def one_input(data: bytes) -> None:
        try:
            run(data)
        except Llama2rsError as exc:
            if not str(exc):
                raise AssertionError(f"{type(exc).__name__} without a message") from exc

    argv = list(sys.argv)
    words = Path(__file__).parent / "dicts" / (Path(argv[0]).stem + ".dict")
    defaults = DEFAULT_FLAGS + ((f"-dict={words}",) if words.is_file() else ())
    for flag in defaults:
        if not any(a.startswith(flag.split("=")[0] + "=") for a in argv):
            argv.insert(1, flag)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def role(data: bytes, roles: Any) -> Any:
    """The role (e.g. the file of a checkpoint) that ``data``'s first byte picks."""
    return roles[data[0] % len(roles)]


def read_whole(data: bytes, roles: Any) -> None:
    """Called when the reader took the input without an error: a distinct branch per role
    (instrumented when fuzzing). libFuzzer keeps an input only for coverage no smaller input
    has; a valid file in one role runs the same reader code as a valid file in another (a valid
    tokenizer_config.json reads the valid base tokenizer.json), so without this the valid seeds
    of all roles but one are dropped, and the fuzzer no longer mutates whole valid files."""
    _role_seen(data[0] % len(roles))


def _role_seen(index: int) -> None:
    if index == 0:
        return
    if index == 1:
        return
    if index == 2:
        return
    if index == 3:
        return
    if index == 4:
        return


# ---------------------------------------------------------------------------------------
# a directory of valid files, one of which a target overwrites


class Workspace:
    """A temporary directory (made once per process, removed at exit) holding valid files;
    :meth:`put` replaces one of them with fuzzed bytes for one input, after restoring the
    file the previous input replaced."""

    def __init__(self, build: Callable[[Path], None]) -> None:
        self._build = build
        self._dir: Optional[Path] = None
        self._base: Dict[str, Optional[bytes]] = {}
        self._dirty: set = set()

    @property
    def path(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="llama2rs-fuzz-"))
            atexit.register(shutil.rmtree, self._dir, True)
            self._build(self._dir)
            self._base = {str(p.relative_to(self._dir)): p.read_bytes() for p in self._dir.rglob("*") if p.is_file()}
        return self._dir

    def base(self, name: str) -> Optional[bytes]:
        """The valid contents of file ``name`` (None: the base directory has no such file)."""
        self.path  # noqa: B018 - builds on first use
        return self._base.get(name)

    def reset(self) -> None:
        """Every file as the base directory has it."""
        root = self.path
        for name in sorted(self._dirty):
            target = root / name
            original = self._base.get(name)
            if original is None:
                target.unlink(missing_ok=True)
            else:
                target.write_bytes(original)
        self._dirty.clear()

    def put(self, name: str, data: Optional[bytes]) -> Path:
        """Restore the base files, then write ``data`` as file ``name`` (None: delete it)."""
        self.reset()
        target = self.path / name
        if data is None:
            target.unlink(missing_ok=True)
        else:
            target.write_bytes(data)
        self._dirty.add(name)
        return target


def tests_support() -> None:
    """Make the tests' support package (the checkpoint writers) importable."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))


# The merged tokens of a small tiktoken vocabulary (after the 256 single bytes): each is two
# earlier tokens joined, as in a BPE's ranks.
SMALL_MERGES = (b"he", b"ll", b"llo", b"hello", b" w", b"or", b"ld", b" wor", b" world", b"in", b"ing", b"th",
                b"the", b" the", b"\xc3\xa9", b"  ", b"\n\n")


def small_tiktoken() -> bytes:
    """A small tiktoken text vocabulary (Llama 3's tokenizer.model format): 273 ranks."""
    import base64

    tokens = [bytes((b,)) for b in range(256)] + list(SMALL_MERGES)
    return b"".join(base64.b64encode(t) + b" %d\n" % rank for rank, t in enumerate(tokens))


def write_tokenizer_json(directory: Path) -> None:
    """A byte-level BPE tokenizer.json and tokenizer_config.json (Llama 3's layout) of
    :func:`small_tiktoken`'s vocabulary."""
    tests_support()
    from support.tokenizer_json import write_llama3_tokenizer_files

    ranks = directory / "ranks.tiktoken"
    ranks.write_bytes(small_tiktoken())
    write_llama3_tokenizer_files(directory, ranks, generation_eos=(273,), chat_template=None)
    ranks.unlink()
    # Small files fuzz faster: a few special tokens, no added_tokens_decoder.
    doc = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    doc["added_tokens"] = doc["added_tokens"][:12]
    (directory / "tokenizer.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    del config["added_tokens_decoder"]
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    (directory / "special_tokens_map.json").unlink()
    (directory / "generation_config.json").unlink()


def tiny_config() -> Any:
    from llama2rs.config import Config

    return Config(dim=16, hidden_dim=24, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=32, seq_len=16)


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


# ---------------------------------------------------------------------------------------
# structured inputs


class Bytes:
    """Reads small values off the front of fuzzed bytes (atheris's FuzzedDataProvider, without
    atheris): every read succeeds, giving zeros once the data is used up."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def pick(self, options: Any) -> Any:
        return options[self.byte() % len(options)]

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(bytes(self.byte() for _ in range(nbytes)), "little")

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out


def materialise(weights: Any) -> None:
    """Read every tensor of what a reader returned, as an export would (lazily read matrices
    included). Weights of the wrong shapes are a reader bug, not a rejected file."""
    from llama2rs.errors import ArgumentError
    from llama2rs.weights import dense

    try:
        weights.check()
    except ArgumentError as exc:
        raise AssertionError(f"the reader returned inconsistent weights: {exc}") from exc
    for _, tensor in weights.named_tensors():
        dense(tensor)


def safetensors_bytes(tensors: Dict[str, Any], metadata: Optional[Dict[str, str]] = None) -> bytes:
    """A safetensors file of ``{name: (dtype name, shape, raw bytes)}`` (no checks: the bytes
    need not match the shape)."""
    header: Dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset, blobs = 0, []
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def safetensors_entries(data: bytes) -> Dict[str, Any]:
    """The inverse of :func:`safetensors_bytes` for a valid file."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header.pop("__metadata__", None)
    body = data[8 + size:]
    return {name: (info["dtype"], tuple(info["shape"]), body[info["data_offsets"][0]:info["data_offsets"][1]])
            for name, info in header.items()}
