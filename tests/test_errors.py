"""Bad input gets a clear llama2rs exception naming the problem, never a crash."""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
import time

import numpy as np
import pytest

import llama2rs
from llama2rs import (
    ArgumentError,
    ContextLengthError,
    InvalidTokenError,
    Llama2rsError,
    ModelFileError,
    TokenizerError,
)
from conftest import LLAMA2_TOKENIZER, STORIES, STORIES_Q80, TOK512, need
from support.fixtures import poison_tensor

STORIES_BYTES = 1056540  # 28-byte header + fp32 weights of stories260K (shared classifier)


@pytest.fixture()
def stories_copy(tmp_path):
    need(STORIES)
    path = tmp_path / "model.bin"
    shutil.copyfile(STORIES, path)
    return path


def _patch(path, offset, fmt, *values):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def test_every_error_is_a_llama2rs_error():
    for cls in (ArgumentError, ContextLengthError, InvalidTokenError, ModelFileError, TokenizerError,
                llama2rs.ConfigError):
        assert issubclass(cls, Llama2rsError) and issubclass(cls, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"nope\.bin: cannot open"):
        llama2rs.Model(tmp_path / "nope.bin")


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(ModelFileError, match=r"not a regular file \(a directory\)"):
        llama2rs.Model(tmp_path)


def test_fifo_and_device_are_refused_without_blocking(tmp_path):
    # Opening a FIFO blocks until a writer comes (SIGINT could not stop it); /dev/zero never ends.
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match=r"not a regular file \(a FIFO\)"):
        llama2rs.Model(fifo)
    with pytest.raises(TokenizerError, match="not a regular file"):
        llama2rs.Tokenizer(fifo)
    with pytest.raises(ModelFileError, match=r"not a regular file \(a device\)"):
        llama2rs.Model("/dev/zero")
    with pytest.raises(TokenizerError, match="not a regular file"):
        llama2rs.Tokenizer("/dev/zero")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    with pytest.raises(ModelFileError, match="file is 0 bytes, shorter than the 28-byte llama2.c header"):
        llama2rs.Model(path)


def test_truncated_file_names_expected_and_found_sizes(stories_copy):
    with open(stories_copy, "r+b") as f:
        f.truncate(STORIES_BYTES - 1)
    with pytest.raises(ModelFileError, match=rf"truncated: expected {STORIES_BYTES} bytes .* found {STORIES_BYTES - 1}"):
        llama2rs.Model(stories_copy)


def test_trailing_bytes(stories_copy):
    with open(stories_copy, "ab") as f:
        f.write(b"\0" * 4)
    with pytest.raises(ModelFileError, match=rf"trailing bytes: expected {STORIES_BYTES} bytes"):
        llama2rs.Model(stories_copy)


@pytest.mark.parametrize(
    "field, value, message",
    [
        (0, 0, r"dim must be in \[1, 65536\], got 0"),
        (0, -64, r"dim must be in \[1, 65536\], got -64"),
        (3, 7, r"dim \(64\) must be a multiple of n_heads \(7\)"),
        (4, 3, r"n_heads \(8\) must be a multiple of n_kv_heads \(3\)"),
        (3, 64, r"head size dim/n_heads \(1\) must be even for RoPE"),
        (4, 16, r"n_heads \(8\) must be a multiple of n_kv_heads \(16\)"),
        (6, 1 << 30, r"seq_len must be in"),
        (2, 1000, r"truncated: expected"),
    ],
)
def test_corrupt_header(stories_copy, field, value, message):
    _patch(stories_copy, 4 * field, "<i", value)
    with pytest.raises(ModelFileError, match=message):
        llama2rs.Model(stories_copy)


def test_unknown_format_version(tmp_path):
    path = tmp_path / "v3.bin"
    header = struct.pack("<Ii7iB", 0x616B3432, 3, 64, 172, 5, 8, 4, 512, 512, 1)
    path.write_bytes(header.ljust(256, b"\0"))
    with pytest.raises(ModelFileError, match="unsupported llama2.c format version 3"):
        llama2rs.Model(path)


def test_q80_header_checks(tmp_path):
    need(STORIES_Q80)
    data = bytearray(STORIES_Q80.read_bytes())
    bad_group = bytearray(data)
    bad_group[37:41] = struct.pack("<i", 0)
    bad_flag = bytearray(data)
    bad_flag[36] = 7
    odd_group = bytearray(data)
    odd_group[37:41] = struct.pack("<i", 5)
    cases = [
        (bad_group, "group size must be positive, got 0"),
        (bad_flag, "shared_classifier flag must be 0 or 1, got 7"),
        (odd_group, r"dim \(64\) is not a multiple of the Q8_0 group size \(5\)"),
        (data[:-3], "truncated"),
        (data[:100], "shorter than the 256-byte"),
    ]
    for i, (blob, message) in enumerate(cases):
        path = tmp_path / f"q{i}.bin"
        path.write_bytes(bytes(blob))
        with pytest.raises(ModelFileError, match=message):
            llama2rs.Model(path)


def test_random_header_corruption_never_crashes(tmp_path):
    need(STORIES)
    data = STORIES.read_bytes()
    rng = random.Random(1234)
    path = tmp_path / "fuzz.bin"
    opened = 0
    for _ in range(200):
        blob = bytearray(data[:4096])
        for _ in range(rng.randint(1, 4)):
            blob[rng.randrange(28)] = rng.randrange(256)
        path.write_bytes(bytes(blob) + data[4096 : 4096 + rng.choice([0, 1000, len(data)])])
        try:
            llama2rs.Model(path, tokenizer_path=TOK512)
            opened += 1
        except (ModelFileError, TokenizerError):
            pass
    assert opened < 200


# -- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1.0), r"temperature must be in \[0.0, inf\], got -1.0"),
        (dict(temperature=float("nan")), "temperature must be in"),
        (dict(top_p=1.5), r"top_p must be in \[0.0, 1.0\], got 1.5"),
        (dict(top_k=-1), "top_k must be >= 0, got -1"),
        (dict(max_tokens=-1), "max_tokens must be >= 0, got -1"),
        (dict(max_tokens=2.5), "max_tokens must be an integer, got 2.5"),
        (dict(seed=0), "seed must be >= 1, got 0"),
        (dict(seed=1 << 64), "seed must be < 2\\*\\*64"),
    ],
)
def test_bad_generation_arguments(stories, kwargs, message):
    with pytest.raises(ArgumentError, match=message):
        stories.generate("Once", **kwargs)


def test_bad_prompt_type(stories):
    with pytest.raises(ArgumentError, match="prompt must be a str, got int"):
        stories.generate(42)


def test_bad_thread_count():
    need(STORIES)
    for bad in (0, -2):
        with pytest.raises(ArgumentError, match=f"n_threads must be >= 1, got {bad}"):
            llama2rs.Model(STORIES, n_threads=bad)


def test_a_huge_thread_count_is_refused_before_spawning():
    need(STORIES)
    cap = 4 * os.cpu_count()  # MAX_THREADS_PER_CPU of the CPUs this process may use
    if len(os.sched_getaffinity(0)) != os.cpu_count():
        pytest.skip("the process may not use every CPU: the cap counts the ones it may")
    start = time.perf_counter()
    for bad in (cap + 1, 100_000, 2**63 - 1):
        with pytest.raises(ArgumentError, match=rf"n_threads must be at most {cap} \(4 per CPU .*\), got {bad}"):
            llama2rs.Model(STORIES, n_threads=bad)
    with pytest.raises(ArgumentError, match=f"n_threads must be <= {2**63 - 1}, got {2**70}"):
        llama2rs.Model(STORIES, n_threads=2**70)
    assert time.perf_counter() - start < 5  # nothing was spawned (10,000 threads took 34 s)
    assert llama2rs.Model(STORIES, n_threads=cap).n_threads == cap


def test_sampling_arguments_too_large_for_the_core(stories):
    ids = [1, 403, 407]
    greedy = list(stories.generate_tokens(ids, max_tokens=12, temperature=0.0))
    # top_k past the vocabulary keeps every token, as top_k = vocab_size does (not an OverflowError).
    assert list(stories.generate_tokens(ids, max_tokens=12, temperature=0.8, top_k=2**70, seed=5)) == list(
        stories.generate_tokens(ids, max_tokens=12, temperature=0.8, top_k=stories.config.vocab_size, seed=5)
    )
    # A temperature so small that logits / temperature overflows in fp32 is greedy, whatever top_p.
    for top_p in (0.9, 0.0):
        assert list(stories.generate_tokens(ids, max_tokens=12, temperature=1e-40, top_p=top_p, seed=3)) == greedy


def test_unknown_token_ids(stories):
    with pytest.raises(InvalidTokenError, match="token id 512 at index 1 is out of range for vocab_size 512"):
        stories.logits([1, 512])
    with pytest.raises(InvalidTokenError, match="token id -1 at index 0"):
        stories.logits([-1])
    with pytest.raises(InvalidTokenError, match="token id 9999"):
        stories.generate_tokens([1, 9999])
    with pytest.raises(InvalidTokenError, match="9999"):
        stories.detokenize([1, 9999])
    # Too large for any integer type of the core: still an invalid token, not an OverflowError.
    for method in (stories.logits, stories.generate_tokens):
        with pytest.raises(InvalidTokenError, match=f"token id {2**64} at index 1 is out of range"):
            method([1, 2**64])


@pytest.mark.parametrize("bad", [5.7, 5.0, "5", None, float("nan"), True, b"\x05"])
def test_token_ids_that_are_not_integers(stories, bad):
    # 5.7 used to become token 5, silently.
    for method in (stories.logits, stories.generate_tokens):
        with pytest.raises(InvalidTokenError, match=rf"token id at index 1 must be an integer, got {re.escape(repr(bad))}"):
            method([1, bad])
    assert stories.logits(np.array([1, 5], dtype=np.int64)).shape == (2, 512)  # NumPy integers are integers


def test_sequence_longer_than_context(stories):
    seq_len = stories.config.seq_len
    with pytest.raises(ContextLengthError, match=rf"needs {seq_len + 1} positions but the context length \(seq_len\) is {seq_len}"):
        stories.logits([1] * (seq_len + 1))
    long_prompt = "Once upon a time " * 200
    with pytest.raises(ContextLengthError, match=rf"the prompt is \d+ tokens but the context length \(seq_len\) is {seq_len}"):
        stories.generate(long_prompt)


def test_tokenizer_of_another_vocab_is_refused():
    need(STORIES, LLAMA2_TOKENIZER)
    with pytest.raises(TokenizerError, match="512"):
        llama2rs.Model(STORIES, tokenizer_path=LLAMA2_TOKENIZER)


def test_model_without_tokenizer_still_computes_logits(stories_copy):
    model = llama2rs.Model(stories_copy)  # tmp dir: no tokenizer beside it
    assert model.tokenizer is None
    assert model.logits([1, 403]).shape == (2, 512)
    with pytest.raises(TokenizerError, match="no tokenizer for .*model.bin.*tokenizer_path"):
        model.generate("Once")


def test_deeply_nested_groups_in_a_tokenizer_model(tmp_path):
    # 5000 nested protobuf groups after an empty piece: a RecursionError before.
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\x0a\x00" + b"\x1b" * 5000)
    with pytest.raises(TokenizerError, match=r"unterminated group \(field 3\)"):
        llama2rs.Tokenizer(path)


def test_json_bomb_as_an_hf_config(tmp_path):
    from llama2rs import export

    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelFileError, match=r"config\.json: invalid JSON: nested too deeply"):
        export.load_source("hf", tmp_path)


def test_our_file_cut_anywhere_says_so_with_its_sizes(tmp_path):
    # Cut inside its JSON header it was taken for a llama2.c file ("hidden_dim must be in ...");
    # cut in its data, the message had no byte counts.
    need(STORIES, TOK512)
    from llama2rs import export

    path = tmp_path / "stories.l2rs.safetensors"
    export.export(export.load_source("llama2c", STORIES, TOK512), path, progress=False)
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    cut = tmp_path / "cut.l2rs.safetensors"
    for size in (10, 8 + header // 2, 8 + header - 1):
        cut.write_bytes(data[:size])
        with pytest.raises(ModelFileError, match=rf"truncated: its header is {header} bytes, but only {size - 8} follow"):
            llama2rs.Model(cut)
    for size in (8 + header, len(data) - 100, len(data) - 1):
        cut.write_bytes(data[:size])
        with pytest.raises(ModelFileError, match=rf"truncated: expected {len(data)} bytes \(8 \+ a {header}-byte header"
                                                  rf" \+ \d+ of tensor data\), found {size}"):
            llama2rs.Model(cut)
    cut.write_bytes(data + b"xx")
    with pytest.raises(ModelFileError, match=rf"2 trailing bytes: expected {len(data)} bytes"):
        llama2rs.Model(cut)


@pytest.mark.parametrize("quantize,tensor,dtype", [
    ("q4", "layers.0.wq.scales", np.float16),  # eaten by int8 activations unless checked
    ("q4", "layers.2.w1.scales", np.float16),
    ("q4", "layers.4.w2.scales", np.float16),
    ("q8", "layers.1.wv.q8_0_scales", np.float32),
    ("none", "layers.3.wo.weight", np.float32),
    ("none", "rms_final", np.float32),
])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_infinite_weights_are_an_error_on_every_kernel_set(tmp_path, quantize, tensor, dtype, value):
    """Issue 13's probe: a NaN 4-bit scale gave NaN on some kernel sets and finite logits on
    others (integer kernels round a NaN activation to 0). Every kernel set, exact or not, now
    refuses the pass the same way, naming the problem; the intact file computes."""
    from llama2rs import export

    need(STORIES, TOK512)
    source = export.load_source("llama2c", STORIES, TOK512)
    intact = export.export(source, tmp_path / "intact.l2rs.safetensors", progress=False, quantize=quantize,
                           group_size=32, method="rtn") if quantize == "q4" else \
        export.export(source, tmp_path / "intact.l2rs.safetensors", progress=False, quantize=quantize)
    poisoned = poison_tensor(intact, tmp_path / "poisoned.l2rs.safetensors", tensor, value, dtype)
    for kernels in llama2rs.available_kernels():
        for exact in (False, True):
            assert np.isfinite(llama2rs.Model(intact, kernels=kernels, exact=exact).logits([1, 403, 407])).all()
            model = llama2rs.Model(poisoned, kernels=kernels, exact=exact)
            with pytest.raises(ModelFileError, match="NaN or infinite values"):
                model.logits([1, 403, 407])
            with pytest.raises(ModelFileError, match="weights or scales are corrupt"):
                list(model.generate_tokens([1, 403], 5))


def _shift_data_by_one_byte(src, dst):
    """Our file with one more space in its header: every tensor then starts at an odd offset."""
    data = src.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    dst.write_bytes(struct.pack("<Q", header_len + 1) + data[8:8 + header_len] + b" " + data[8 + header_len:])
    return dst


def test_unaligned_fp32_tensors_are_copied_when_small_and_refused_when_large(tmp_path):
    """Issue 13's probe: a 70B-shape file with unaligned embeddings opened with +4.2 GB of
    copies, silently. Small unaligned fp32 tensors (norms, scales, small models) are copied;
    large ones are refused, naming the tensor and how to rewrite the file."""
    from llama2rs.config import Config
    from llama2rs.formats import l2rs
    from support.fixtures import random_weights

    need(STORIES, TOK512)
    tokenizer = llama2rs.Tokenizer(TOK512).to_bin_bytes()
    small = tmp_path / "small.l2rs.safetensors"
    l2rs.write_model(small, random_weights(Config(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2,
                                                  vocab_size=512, seq_len=32), 1), tokenizer)
    shifted = _shift_data_by_one_byte(small, tmp_path / "small-shifted.l2rs.safetensors")
    np.testing.assert_array_equal(llama2rs.Model(shifted).logits([1, 5, 9]), llama2rs.Model(small).logits([1, 5, 9]))

    # w1, w2, w3: 70000 x 64 fp32 = 17.1 MiB each, past the 16 MiB that are copied.
    large = tmp_path / "large.l2rs.safetensors"
    l2rs.write_model(large, random_weights(Config(dim=64, hidden_dim=70000, n_layers=1, n_heads=4, n_kv_heads=2,
                                                  vocab_size=512, seq_len=32), 1), tokenizer)
    assert llama2rs.Model(large).logits([1]).shape == (1, 512)  # aligned, it opens
    with pytest.raises(ModelFileError, match=r"fp32 tensor 'layers\.0\.w[123]\.weight' \(17 MiB\) starts at byte \d+, "
                                             r"not a multiple of 4.*llama2rs export --input"):
        llama2rs.Model(_shift_data_by_one_byte(large, tmp_path / "large-shifted.l2rs.safetensors"))
