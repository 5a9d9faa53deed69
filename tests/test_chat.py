"""Chat templates against Meta's reference code, stop sequences and streamed text, and the
batching engine against each sequence run alone."""

from __future__ import annotations

import random

import pytest

import llama2rs
from conftest import MODELS, STORIES, STORIES_Q80, TOK512, need
from llama2rs.chat import ChatTemplate, check_messages
from llama2rs.completion import StopMatcher, TextAssembler
from llama2rs.engine import Engine, QueueFullError, SamplingParams, TokenEvent
from llama2rs.errors import ArgumentError

LLAMA2_MODEL = MODELS / "llama2-tokenizer" / "tokenizer.model"
LLAMA3_TIKTOKEN = MODELS / "llama3-tokenizer" / "tokenizer.model"

DIALOGS = [
    [{"role": "user", "content": "what is the recipe of mayonnaise?"}],
    [{"role": "user", "content": "I am going to Paris, what should I see?"},
     {"role": "assistant", "content": "Paris, the capital of France, is known for its stunning architecture."},
     {"role": "user", "content": "What is so great about #1?"}],
    [{"role": "system", "content": "Always answer with Haiku"},
     {"role": "user", "content": "I am going to Paris, what should I see?"}],
    [{"role": "system", "content": "  Always answer with emojis 😀  "},
     {"role": "user", "content": " How to go from Beijing to NY? "},
     {"role": "assistant", "content": "✈️🌍"},
     {"role": "user", "content": "and back?\n"}],
]


def meta_llama2_chat(sp, dialog):
    """Meta's llama/generation.py chat_completion, on sentencepiece (the reference)."""
    B_INST, E_INST = "[INST]", "[/INST]"
    B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
    if dialog[0]["role"] == "system":
        dialog = [{"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}] \
            + dialog[2:]
    tokens = []
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        tokens += [sp.bos_id()] + sp.encode(f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} ") \
            + [sp.eos_id()]
    tokens += [sp.bos_id()] + sp.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}")
    return tokens


@pytest.mark.parametrize("dialog", DIALOGS)
def test_llama2_template_equals_meta_token_for_token(dialog):
    spm = pytest.importorskip("sentencepiece")
    need(LLAMA2_MODEL)
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))
    ours = ChatTemplate("llama2").apply(llama2rs.Tokenizer(LLAMA2_MODEL), dialog)
    assert ours == meta_llama2_chat(sp, dialog)


@pytest.mark.parametrize("dialog", DIALOGS)
def test_llama3_template_equals_meta_chat_format(dialog):
    """Meta's llama3 ChatFormat.encode_dialog_prompt, with tiktoken under Meta's pattern."""
    need(LLAMA3_TIKTOKEN)
    from support.llama3_vocab import MetaTokenizer

    meta = MetaTokenizer(LLAMA3_TIKTOKEN)
    special = meta.special_tokens

    def header(role):
        return [special["<|start_header_id|>"]] + meta.encode(role, bos=False, eos=False) + \
            [special["<|end_header_id|>"]] + meta.encode("\n\n", bos=False, eos=False)

    expected = [special["<|begin_of_text|>"]]
    for m in dialog:
        expected += header(m["role"]) + meta.encode(m["content"].strip(), bos=False, eos=False) + [special["<|eot_id|>"]]
    expected += header("assistant")
    assert ChatTemplate("llama3").apply(llama2rs.Tokenizer(LLAMA3_TIKTOKEN), dialog) == expected


def test_jinja_template_in_the_sandbox():
    pytest.importorskip("jinja2")
    need(LLAMA3_TIKTOKEN)
    tok = llama2rs.Tokenizer(LLAMA3_TIKTOKEN)
    source = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
              "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
              "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
    for dialog in DIALOGS:  # Llama 3's own template gives what the built-in gives
        assert ChatTemplate(source).apply(tok, dialog) == ChatTemplate("llama3").apply(tok, dialog)
    with pytest.raises(ArgumentError, match="refused"):
        ChatTemplate("{{ raise_exception('no system role') }}").apply(tok, DIALOGS[0])
    with pytest.raises(ArgumentError):  # the sandbox: no attribute walking to os or subclasses
        ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}").apply(tok, DIALOGS[0])


@pytest.mark.parametrize("messages", [[], "hi", [{"role": "bot", "content": "x"}], [{"role": "user"}]])
def test_bad_messages(messages):
    with pytest.raises(ArgumentError):
        check_messages(messages)


def test_llama2_template_needs_alternating_turns():
    need(LLAMA2_MODEL)
    tok = llama2rs.Tokenizer(LLAMA2_MODEL)
    with pytest.raises(ArgumentError, match="alternating"):
        ChatTemplate("llama2").apply(tok, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


# ----------------------------------------------------------------------------- stop sequences


def _stop_reference(text: str, stops: list[str]) -> str:
    cuts = [text.find(s) for s in stops if s in text]
    return text[:min(cuts)] if cuts else text


def test_stop_matcher_on_random_splits():
    """Pieces in, pieces out: the output joins to the text cut at the first stop sequence, and
    at every moment what was emitted is a prefix of that (nothing is taken back)."""
    rng = random.Random(5)
    alphabet = "ab c\n"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 4))) for _ in range(rng.randrange(1, 3))]
        expected = _stop_reference(text, stops)
        matcher, out, i = StopMatcher(stops), "", 0
        while i < len(text) and not matcher.stopped:
            n = rng.randrange(1, 4)
            out += matcher.push(text[i:i + n])
            assert expected.startswith(out), (text, stops, out)
            i += n
        out += matcher.flush()
        assert out == expected, (text, stops)


def test_streamed_pieces_never_split_a_character(stories):
    """Byte tokens of a multi-byte character come out as one piece, never as halves."""
    tok = stories.tokenizer
    ids = tok.encode("héllo wörld 日本", bos=False)
    assembler = TextAssembler(tok, 1, [])
    pieces = [assembler.feed(TokenEvent(t)) for t in ids] + [assembler.feed(TokenEvent(None, finish_reason="length"))]
    texts = [p.text for p in pieces if p is not None]
    assert "".join(texts) == tok.decode(ids, prev_id=1) and all("\ufffd" not in t for t in texts)


# ----------------------------------------------------------------------------- the engine


@pytest.mark.parametrize("path", [STORIES, STORIES_Q80])
def test_batched_sequences_equal_each_alone(path):
    """Eight sequences with their own prompts, seeds and lengths, decoded together (joining
    and leaving at different steps), give each the tokens it gets alone."""
    need(path, TOK512)
    model = llama2rs.Model(path, tokenizer_path=TOK512)
    prompts = [model.tokenize(p) for p in ("Once upon a time", "The cat", "Lily and Tom went", "A",
                                           "One day, a big dog", "She", "The sun was hot and", "Bob said")]
    engine = Engine(model._core, parallel=5, queue=8, prefill_chunk=7)
    try:
        requests = []
        for i, prompt in enumerate(prompts):
            params = SamplingParams(temperature=0.0 if i % 3 == 0 else 0.9, top_p=0.9, top_k=0, seed=i + 1)
            requests.append((prompt, params, 30 + 5 * i, engine.submit(prompt, params, 30 + 5 * i, model.stop_ids)))
        for prompt, params, n, request in requests:
            got = [e.token for e in request if e.token is not None]
            alone = list(model.generate_tokens(prompt, n, params.temperature, params.top_p, 0, params.seed))
            assert got == alone
    finally:
        engine.close()


def test_engine_queue_limit_and_cancel(stories):
    engine = Engine(stories._core, parallel=1, queue=1)
    try:
        prompt = stories.tokenize("Once")
        slow = SamplingParams(seed=1)
        first = engine.submit(prompt, slow, 400, (), sink=lambda e: __import__("time").sleep(0.005))
        second = engine.submit(prompt, slow, 5, ())
        with pytest.raises(QueueFullError):
            engine.submit(prompt, slow, 5, ())
        first.cancel()
        events = list(second)
        assert events[-1].finish_reason == "length" and len([e for e in events if e.token is not None]) == 5
    finally:
        engine.close()


def test_engine_refuses_bad_requests(stories):
    engine = Engine(stories._core, parallel=2, queue=2)
    try:
        with pytest.raises(llama2rs.ContextLengthError):
            engine.submit([1] * 512, SamplingParams(), 5)
        with pytest.raises(llama2rs.InvalidTokenError):
            engine.submit([1, 10_000], SamplingParams(), 5)
        with pytest.raises(ArgumentError):
            engine.submit([1], SamplingParams(top_p=2.0), 5)
    finally:
        engine.close()
    with pytest.raises(ArgumentError):
        Engine(stories._core, parallel=0)
