"""The `llama2rs` command line, run as a user would (a subprocess)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import STORIES, STORIES_Q80, TOK512, need


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llama2rs", *args], capture_output=True, text=True, timeout=120
    )


def _run(runs, name):
    return next(r for r in runs if r["name"] == name)


@pytest.mark.parametrize("name", ["greedy", "topp_s42", "q80_greedy"])
def test_generate_prints_llama2c_output(name, llama2c_runs):
    run = _run(llama2c_runs, name)
    model = STORIES_Q80 if "q80" in name else STORIES
    need(model, TOK512)
    n = run["steps"] - len(run["prompt_ids"]) + 1
    args = ["generate", str(model), "-z", str(TOK512), "-p", run["prompt"], "-n", str(n),
            "--temp", str(run["temperature"]), "--top-p", str(run["top_p"]), "-t", "2"]
    if run["seed"] is not None:
        args += ["-s", str(run["seed"])]
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == run["stdout"]
    assert "achieved tok/s:" in result.stderr and f"{n} tokens after a 5-token prompt" in result.stderr


def test_console_script_is_installed():
    exe = shutil.which("llama2rs")
    if exe is None:
        pytest.skip("llama2rs console script not on PATH")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "generate" in result.stdout and "info" in result.stdout


def test_info_prints_config_and_format():
    need(STORIES_Q80)
    result = cli("info", str(STORIES_Q80))
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(None, 1) if " " in line else (line, "") for line in result.stdout.splitlines())
    out = result.stdout
    assert "llama2c-v2-q8_0" in out
    for key, value in [("dim", "64"), ("hidden_dim", "172"), ("n_layers", "5"), ("n_heads", "8"),
                       ("n_kv_heads", "4"), ("vocab_size", "512"), ("seq_len", "512")]:
        assert fields[key].strip() == value
    assert "group size         4" in out or fields["group"].strip().endswith("4")


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "MODEL", "--temp", "-1"], "argument --temp: must be >= 0, got -1"),
        (["generate", "MODEL", "--top-p", "2"], r"argument --top-p: must be in [0, 1], got 2"),
        (["generate", "MODEL", "-n", "x"], "argument -n/--max-tokens: invalid non-negative integer value: 'x'"),
        (["generate", "MODEL", "-t", "0"], "argument -t/--threads: must be >= 1, got 0"),
        (["generate", "MODEL", "-s", "0"], "argument -s/--seed: must be >= 1, got 0"),
        (["generate"], "the following arguments are required: model"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    result = cli(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


def test_bad_model_file_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x01\x02")
    result = cli("info", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"llama2rs: error: {bad}: file is 2 bytes, shorter than the 28-byte llama2.c header"
    ]
    assert "Traceback" not in result.stderr


def test_generate_kv_cache_option():
    """--kv-cache f16 generates the greedy text of a model with an fp16 cache (the Python API's
    own), which for this prompt differs from the default fp32 cache's; a bad choice is a
    one-line usage error."""
    need(STORIES, TOK512)
    import llama2rs

    def greedy(kv_cache):
        model = llama2rs.Model(STORIES, tokenizer_path=TOK512, kv_cache=kv_cache)
        return model.complete("One day", max_tokens=300, temperature=0.0, ignore_eos=True)

    expected = greedy("f16")
    assert expected != greedy("f32")  # so the option is seen to take effect
    result = cli("generate", str(STORIES), "-z", str(TOK512), "-p", "One day", "-n", "300", "--temp", "0",
                 "--kv-cache", "f16", "--no-echo", "--ignore-eos")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    bad = cli("generate", str(STORIES), "--kv-cache", "f8")
    assert bad.returncode == 2 and "invalid choice: 'f8'" in bad.stderr and len(bad.stderr.splitlines()) == 1
