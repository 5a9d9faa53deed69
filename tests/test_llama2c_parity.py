"""llama2rs against llama2.c itself: the same tokens, text and logits on the stories260K fixtures.

Expected values come from llama2.c's `run` / `runq` (tests/data, with their provenance)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DATA

RUN_NAMES = ["greedy", "topp_s42", "mult_s7", "topp05_s123", "empty_prompt", "q80_greedy", "q80_topp_s42"]


def _run(runs: list[dict], name: str) -> dict:
    return next(r for r in runs if r["name"] == name)


def _model(run: dict, stories, stories_q80):
    return stories_q80 if run["model"].endswith("_q80.bin") else stories


@pytest.mark.parametrize("name", RUN_NAMES)
def test_same_tokens_and_text_as_llama2c(name, llama2c_runs, stories, stories_q80):
    run = _run(llama2c_runs, name)
    model = _model(run, stories, stories_q80)
    assert model.tokenize(run["prompt"]) == run["prompt_ids"]
    # llama2.c's -n counts positions run, prompt included; the last prompt position already
    # samples a new token, so `steps` positions yield steps - len(prompt) + 1 new tokens.
    max_tokens = run["steps"] - len(run["prompt_ids"]) + 1
    kwargs = dict(temperature=run["temperature"], top_p=run["top_p"], seed=run["seed"])
    ids = list(model.generate_tokens(run["prompt_ids"], max_tokens, **kwargs))
    assert ids == run["sampled_ids"]
    text = "".join(model.generate(run["prompt"], max_tokens, **kwargs))
    # run.c prints the prompt, then the new text, then a newline.
    assert run["prompt"] + text + "\n" == run["stdout"]


def test_acceptance_greedy_text(stories):
    text = "".join(stories.generate("Once upon a time", max_tokens=196, temperature=0.0))
    assert text.startswith(
        ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a "
        "big, red ball. She wanted to play with it, but it was too high."
    )


def test_acceptance_seeded_top_p_text(stories):
    text = "".join(stories.generate("Once upon a time", max_tokens=196, temperature=1.0, top_p=0.9, seed=42))
    assert text.startswith(
        ", there was a brave little boy named Tim. Tim loved to play with his toys and make blocks."
    )


@pytest.mark.parametrize("kind", ["fp32", "q80"])
def test_logits_match_llama2c(kind, stories, stories_q80):
    data = np.load(DATA / "llama2c_logits.npz")
    model = stories if kind == "fp32" else stories_q80
    ours = model.logits(data["ids"].tolist())
    assert ours.shape == data[kind].shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, data[kind], rtol=0, atol=1e-4)


def test_generation_is_reproducible_and_seed_dependent(stories):
    a = list(stories.generate_tokens([1, 403], 30, temperature=1.0, top_p=0.9, seed=5))
    b = list(stories.generate_tokens([1, 403], 30, temperature=1.0, top_p=0.9, seed=5))
    c = list(stories.generate_tokens([1, 403], 30, temperature=1.0, top_p=0.9, seed=6))
    assert a == b
    assert a != c


def test_top_k_one_equals_greedy(stories):
    greedy = list(stories.generate_tokens([1, 403], 40, temperature=0.0))
    top1 = list(stories.generate_tokens([1, 403], 40, temperature=1.3, top_k=1, top_p=0.0, seed=9))
    assert top1 == greedy


def test_generation_stops_at_the_context_length(stories):
    seq_len = stories.config.seq_len
    prompt = [1] + [403] * (seq_len - 11)
    ids = list(stories.generate_tokens(prompt, 1000, temperature=0.0, ignore_eos=True))
    # Positions 0..seq_len-1 are run; the token sampled at the last one is still emitted.
    assert len(ids) == seq_len - len(prompt) + 1
