"""The Rust forward pass and sampler against the independent NumPy reference
(`llama2rs.reference`), on random models of many shapes written in all three llama2.c formats."""

from __future__ import annotations

import numpy as np
import pytest

import llama2rs
from llama2rs import reference
from llama2rs.formats import llama2c
from llama2rs.config import Config
from conftest import STORIES, STORIES_Q80, assert_q80_close, need
from support.fixtures import random_weights

# (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len): GQA ratios 1, 2, 3, 4, 8;
# head sizes 2 to 128; dims that are not multiples of 8.
SHAPES = {
    "mha-hs10-dim30": (30, 52, 2, 3, 3, 67, 24),
    "gqa2-hs8": (64, 172, 2, 8, 4, 101, 32),
    "gqa4-hs12-dim48": (48, 100, 2, 4, 1, 50, 16),
    "gqa8-hs8": (64, 90, 2, 8, 1, 77, 16),
    "gqa2-hs128": (256, 200, 1, 2, 1, 64, 12),
    "gqa3-hs6-dim36": (36, 44, 2, 6, 2, 33, 20),
    "mha-hs2-dim6": (6, 10, 1, 3, 3, 11, 8),
}


def _tokens(config: Config, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [1] + rng.integers(0, config.vocab_size, size=n - 1).tolist()


@pytest.mark.parametrize("fmt", ["legacy", "v1"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "separate"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_fp32_logits_match_reference(tmp_path, shape, shared, fmt):
    config = Config(*SHAPES[shape])
    weights = random_weights(config, seed=len(shape) + 100 * shared, shared_classifier=shared)
    path = tmp_path / f"{shape}.bin"
    llama2c.write(path, weights, fmt)
    tokens = _tokens(config, config.seq_len, seed=3)
    ours = llama2rs.Model(path).logits(tokens)
    expected = reference.forward(llama2c.read_model(path), tokens)
    assert ours.shape == (config.seq_len, config.vocab_size)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", ["mha-hs10-dim30", "gqa2-hs8", "gqa4-hs12-dim48", "gqa3-hs6-dim36"])
@pytest.mark.parametrize("group_size", [2, 4])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "separate"])
def test_q80_logits_match_reference(tmp_path, shape, group_size, shared):
    config = Config(*SHAPES[shape])
    if config.dim % group_size or config.hidden_dim % group_size:
        pytest.skip("group size must divide dim and hidden_dim")
    weights = random_weights(config, seed=11, shared_classifier=shared)
    path = tmp_path / "q80.bin"
    llama2c.write(path, weights, "v2", group_size)
    model = llama2rs.Model(path)
    assert model.format == "llama2c-v2-q8_0" and model.group_size == group_size
    tokens = _tokens(config, min(config.seq_len, 12), seed=5)
    assert_q80_close(model.logits(tokens), reference.forward(llama2c.read_model(path), tokens))


TOKENS_260K = [1, 403, 407, 261, 378] + list(range(3, 60))


def test_stories260k_logits_match_reference():
    need(STORIES)
    ours = llama2rs.Model(STORIES).logits(TOKENS_260K)
    expected = reference.forward(llama2c.read_model(STORIES), TOKENS_260K)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


def test_stories260k_q80_logits_match_reference():
    need(STORIES_Q80)
    ours = llama2rs.Model(STORIES_Q80).logits(TOKENS_260K)
    assert_q80_close(ours, reference.forward(llama2c.read_model(STORIES_Q80), TOKENS_260K))


@pytest.mark.parametrize(
    "temperature, top_p, top_k, seed",
    [(1.0, 0.9, 0, 42), (0.7, 1.0, 0, 3), (1.3, 0.5, 0, 77), (1.0, 0.0, 5, 8), (0.9, 0.95, 20, 123456789)],
)
def test_sampler_matches_reference_sampler(tmp_path, temperature, top_p, top_k, seed):
    """Feed the Rust model's own logits to the NumPy sampler: it must pick the same tokens."""
    config = Config(*SHAPES["gqa2-hs8"])
    path = tmp_path / "m.bin"
    llama2c.write(path, random_weights(config, seed=2, scale=3.0), "legacy")
    model = llama2rs.Model(path)
    prompt = [1, 5, 9]
    ids = list(model.generate_tokens(prompt, 25, temperature, top_p, top_k, seed, ignore_eos=True))
    assert len(ids) == 25
    logits = model.logits(prompt + ids[:-1])
    sampler = reference.Sampler(config.vocab_size, temperature, top_p, seed, top_k=top_k)
    expected = [sampler.sample(row) for row in logits[len(prompt) - 1 :]]
    assert ids == expected
