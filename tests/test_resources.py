"""Requests the machine cannot hold, and a model carried into a forked child: errors, never an
abort or a hang (issue 13's probe). The abort-prone cases run in a subprocess, so a regression
fails the test instead of taking pytest down."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import llama2rs
from conftest import STORIES, need
from llama2rs.config import Config
from llama2rs.formats.llama2c import LEGACY_ORDER, _file_shapes, _freq_table_floats


def sparse_legacy_model(path, config: Config) -> None:
    """A llama2.c legacy file of `config` with all-zero weights: the header, then a hole up to
    the exact size the reader expects (nothing is written, whatever the shapes)."""
    shapes = _file_shapes(config)
    floats = sum(int(np.prod(shapes[name])) for name in LEGACY_ORDER) + 2 * _freq_table_floats(config)
    header = np.array([config.dim, config.hidden_dim, config.n_layers, config.n_heads, config.n_kv_heads,
                       config.vocab_size, config.seq_len], dtype="<i4")
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.truncate(header.nbytes + 4 * floats)


def memory_bytes() -> int:
    """RAM plus swap: the kernel's heuristic overcommit refuses one allocation larger than this."""
    fields = dict(line.split(":", 1) for line in open("/proc/meminfo"))
    return sum(int(fields[k].split()[0]) * 1024 for k in ("MemTotal", "SwapTotal"))


def refuses_obvious_overcommit() -> bool:
    try:
        return open("/proc/sys/vm/overcommit_memory").read().strip() in ("0", "2")
    except OSError:
        return False


def run_isolated(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kv_cache", ["f32", "f16"])
def test_a_context_too_large_to_reserve_is_an_error(tmp_path, kv_cache):
    # 1024 layers x 2^20 positions x 64 values: a 256 GiB (f32) or 128 GiB (f16) KV cache, which
    # aborted the process ("memory allocation of ... bytes failed") when a sequence started.
    config = Config(dim=64, hidden_dim=64, n_layers=1024, n_heads=8, n_kv_heads=8, vocab_size=32, seq_len=1 << 20)
    path = tmp_path / "long-context.bin"
    sparse_legacy_model(path, config)
    kv_bytes = 2 * config.n_layers * config.seq_len * 64 * (4 if kv_cache == "f32" else 2)
    result = run_isolated(f"""
        import llama2rs
        m = llama2rs.Model({str(path)!r}, kv_cache={kv_cache!r}, n_threads=1)
        try:
            print(len(list(m.generate_tokens([1], max_tokens=2, ignore_eos=True))))
        except llama2rs.OutOfMemoryError as e:
            assert isinstance(e, MemoryError) and isinstance(e, llama2rs.Llama2rsError)
            print("refused:", e)
    """)
    assert result.returncode == 0, result.stderr
    if refuses_obvious_overcommit() and kv_bytes > memory_bytes():
        assert result.stdout.startswith(f"refused: cannot allocate the KV cache: {kv_bytes} bytes"), result.stdout
    else:  # a system that lends the address space: the cache's pages are taken as used
        assert result.stdout.strip() in ("2", f"refused: cannot allocate the KV cache: {kv_bytes} bytes"), result.stdout


def test_logits_too_large_to_hold_are_an_error(tmp_path):
    # 300000 rows of 32000 logits are 38.4 GB: the output was allocated up front, unchecked.
    config = Config(dim=64, hidden_dim=64, n_layers=1, n_heads=8, n_kv_heads=8, vocab_size=32000, seq_len=1 << 20)
    n_tokens = 300_000
    logits_bytes = n_tokens * config.vocab_size * 4
    if not (refuses_obvious_overcommit() and logits_bytes > memory_bytes()):
        pytest.skip("this system would lend the address space, and the test would then compute 38 GB")
    path = tmp_path / "wide-vocab.bin"
    sparse_legacy_model(path, config)
    result = run_isolated(f"""
        import llama2rs
        m = llama2rs.Model({str(path)!r}, n_threads=1)
        try:
            m.logits([1] * {n_tokens})
        except llama2rs.OutOfMemoryError as e:
            print("refused:", e)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"refused: cannot allocate the logits: {logits_bytes} bytes"), result.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_model_used_in_a_forked_child_is_an_error_not_a_hang():
    need(STORIES)
    model = llama2rs.Model(STORIES, n_threads=2)
    expected = list(model.generate_tokens([1, 403, 407], max_tokens=8))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's teardown
        try:
            try:
                model.generate_tokens([1, 403, 407], max_tokens=8)
                report = "inherited model ran"
            except llama2rs.ArgumentError as e:
                report = f"refused: {e}"
            reopened = llama2rs.Model(STORIES, n_threads=2)
            report += f"\nreopened: {list(reopened.generate_tokens([1, 403, 407], max_tokens=8))}"
        except BaseException as e:  # noqa: BLE001 - anything at all goes back to the parent
            report = f"child failed: {e!r}"
        os.write(write_end, report.encode())
        os._exit(0)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], 60)
    if not ready:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    report = os.read(read_end, 1 << 16).decode()
    os.waitpid(pid, 0)
    os.close(read_end)
    assert report.startswith("refused: this model was opened in process"), report
    assert "after a fork" in report and f"reopened: {expected}" in report, report
    assert list(model.generate_tokens([1, 403, 407], max_tokens=8)) == expected  # the parent's still works


def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path):
    # SIGTERM's default action killed an export where it stood, leaving a hidden .OUT.XXXX.tmp.
    out = tmp_path / "out.l2rs.safetensors"
    script = textwrap.dedent(f"""
        import sys, time
        from llama2rs.cli.common import run_guarded
        from llama2rs.fileio import atomic_write

        def slow_body(handle):
            handle.write(b"partial")
            handle.flush()
            print("writing", flush=True)
            time.sleep(60)

        sys.exit(run_guarded(lambda args: atomic_write({str(out)!r}, slow_body) or 0, None))
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        assert len(list(tmp_path.iterdir())) == 1  # the temporary file, mid-write
        child.terminate()
        assert child.wait(timeout=30) == 128 + 15
    finally:
        child.kill()
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_the_mode_of_an_ordinary_open(tmp_path):
    from llama2rs.fileio import atomic_write

    previous = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.bin", lambda handle: handle.write(b"x"))
    finally:
        os.umask(previous)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640  # mkstemp alone gave 0600


def _maps_of(path) -> int:
    """How many of this process's memory mappings are of ``path``."""
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip().endswith(str(path)))


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc")
def test_close_context_manager_and_gc_release_the_map_and_fds(tmp_path):
    need(STORIES)
    import gc
    import shutil

    from conftest import TOK512

    path = tmp_path / "model.bin"
    shutil.copy(STORIES, path)
    fds = len(os.listdir("/proc/self/fd"))
    with llama2rs.Model(path, tokenizer_path=TOK512) as model:
        assert _maps_of(path) == 1 and not model.closed
        text = model.complete("Once", max_tokens=5, temperature=0.0)
    assert model.closed and _maps_of(path) == 0 and "closed" in repr(model)
    with pytest.raises(llama2rs.ArgumentError, match="closed"):
        model.logits([1, 2])
    model.close()  # twice is fine
    # A generation still running keeps the map until it ends.
    model = llama2rs.Model(path, tokenizer_path=TOK512)
    tokens = model.generate_tokens([1, 403], max_tokens=20, temperature=0.0)
    model.close()
    assert _maps_of(path) == 1 and len(list(tokens)) == 20
    del tokens
    gc.collect()
    assert _maps_of(path) == 0
    for i in range(200):  # open/close, and open then drop
        if i % 2:
            llama2rs.Model(path).close()
        else:
            llama2rs.Model(path)
    gc.collect()
    assert _maps_of(path) == 0 and len(os.listdir("/proc/self/fd")) <= fds
    assert llama2rs.Model(path, tokenizer_path=TOK512).complete("Once", max_tokens=5, temperature=0.0) == text


def test_ctrl_c_during_generation_interrupts_within_a_token_and_the_model_goes_on():
    """SIGINT while generating (and while a long prompt is fed) raises KeyboardInterrupt within
    about one token; the same model then generates what it generated before."""
    need(STORIES)
    script = textwrap.dedent(f"""
        import time, llama2rs
        m = llama2rs.Model({str(STORIES)!r}, n_threads=1)
        expected = list(m.generate_tokens([1, 403, 407], max_tokens=30, temperature=0.0))
        for phase in ("decode", "prompt"):
            print("ready", phase, flush=True)
            try:
                while True:
                    if phase == "decode":
                        for _ in m.generate_tokens([1, 403], max_tokens=500, ignore_eos=True):
                            pass
                    else:
                        m.generate_tokens([1] + [403] * 510, max_tokens=1)
            except KeyboardInterrupt:
                print("interrupted", time.monotonic(), flush=True)
            again = list(m.generate_tokens([1, 403, 407], max_tokens=30, temperature=0.0))
            print("same" if again == expected else "different", flush=True)
    """)
    import signal
    import time

    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for phase in ("decode", "prompt"):
            assert child.stdout.readline().split() == ["ready", phase]
            time.sleep(0.3)
            sent = time.monotonic()
            child.send_signal(signal.SIGINT)
            word, when = child.stdout.readline().split()
            assert word == "interrupted" and float(when) - sent < 0.5, float(when) - sent
            assert child.stdout.readline().strip() == "same"
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()


def test_ctrl_c_in_the_cli_exits_130_and_keeps_what_it_printed():
    need(STORIES)
    import signal

    from conftest import TOK512

    child = subprocess.Popen([sys.executable, "-m", "llama2rs", "generate", str(STORIES), "-z", str(TOK512), "-p",
                              "Once upon a time", "-n", "100000", "--ignore-eos", "-s", "1", "-t", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = child.stdout.read(200)  # it is generating
        child.send_signal(signal.SIGINT)
        rest, _ = child.communicate(timeout=30)
        assert child.returncode == 130
        assert (first + rest).startswith(b"Once upon a time") and len(first + rest) >= 200
    finally:
        child.kill()


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc")
def test_rss_stays_flat_over_a_thousand_generations():
    need(STORIES)
    script = textwrap.dedent(f"""
        import os, llama2rs
        page = os.sysconf("SC_PAGE_SIZE")
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * page
        m = llama2rs.Model({str(STORIES)!r}, n_threads=2)
        samples = []
        for i in range(1000):
            list(m.generate_tokens([1, 403, 407], max_tokens=20, temperature=0.8, seed=i + 1))
            m.logits([1, 403, 407])
            if i in (99, 999):
                samples.append(rss())
        print(samples[0], samples[1])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    after_100, after_1000 = map(int, out.stdout.split())
    assert after_1000 - after_100 < 8 << 20, (after_100, after_1000)  # 900 more generations: < 8 MB
