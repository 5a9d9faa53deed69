"""Every tokenizer we read, on any text (hypothesis): decoding restores the text, streamed pieces
join to the decoded text without splitting a character, and encoding equals the reference
encoder (sentencepiece for Llama 2's, tiktoken under Meta's pattern for Llama 3's)."""

from __future__ import annotations

import json

import pytest

import llama2rs
from conftest import MODELS, TOK512, need
from llama2rs.errors import TokenizerError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

LLAMA2_MODEL = MODELS / "llama2-tokenizer" / "tokenizer.model"
LLAMA3_TIKTOKEN = MODELS / "llama3-tokenizer" / "tokenizer.model"

# Any Unicode scalar value (no surrogates: a str of them cannot be UTF-8), weighted towards what
# breaks tokenizers: spaces and newlines, combining marks, emoji, control characters and NUL.
ANY_TEXT = st.lists(
    st.one_of(
        st.characters(blacklist_categories=("Cs",)),
        st.sampled_from([" ", "  ", "\n", "\t", "\r\n", "\x00", "\u0301", "\u200d", "👩‍💻", "🙂", "é", "日本",
                         "'s", "<|eot_id|>", "<s>", "\ufffd"]),
    ),
    max_size=40,
).map("".join)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _tokenizers() -> dict[str, object]:
    found = {}
    if TOK512.is_file():
        found["tok512.bin"] = llama2rs.Tokenizer(TOK512)
    if LLAMA2_MODEL.is_file():
        found["llama2 tokenizer.model"] = llama2rs.Tokenizer(LLAMA2_MODEL)
    if LLAMA3_TIKTOKEN.is_file():
        found["llama3 tiktoken"] = llama2rs.Tokenizer(LLAMA3_TIKTOKEN)
    return found


TOKENIZERS = _tokenizers()


@pytest.fixture(scope="module", params=sorted(TOKENIZERS) or ["none"])
def tokenizer(request):
    if request.param == "none":
        pytest.skip("no tokenizer fixtures (set LLAMA2RS_MODELS)")
    return TOKENIZERS[request.param]


@SETTINGS
@given(text=ANY_TEXT)
def test_decode_restores_any_text(tokenizer, text):
    ids = tokenizer.encode(text, bos=True)
    assert tokenizer.decode(ids) == text


@SETTINGS
@given(text=ANY_TEXT)
def test_streamed_pieces_join_to_the_text_and_never_split_a_character(tokenizer, text):
    ids = tokenizer.encode(text, bos=True)
    stream = tokenizer.stream(prev_id=ids[0])
    pieces = [stream.push(t) for t in ids[1:]] + [stream.flush()]
    assert "".join(pieces) == tokenizer.decode(ids)
    if "\ufffd" not in text:
        assert not any("\ufffd" in p for p in pieces)


@SETTINGS
@given(text=st.text(max_size=20).map(lambda s: s + "\ud800" + s))
def test_lone_surrogates_are_replaced_as_python_does_or_refused(tokenizer, text):
    try:
        ids = tokenizer.encode(text, bos=True)
    except TokenizerError:
        return
    assert tokenizer.decode(ids) == text.encode("utf-8", errors="replace").decode("utf-8")


@SETTINGS
@given(text=ANY_TEXT)
def test_llama2_equals_sentencepiece(text):
    spm = pytest.importorskip("sentencepiece")
    need(LLAMA2_MODEL)
    sp = _sentencepiece(spm)
    ours = TOKENIZERS["llama2 tokenizer.model"]
    # sentencepiece maps NUL-free text; llama2.c treats "\x00" as a byte like any other.
    if "\x00" in text:
        return
    assert ours.encode(text, bos=False) == sp.encode(text), repr(text)


_SP = {}


def _sentencepiece(spm):
    if "sp" not in _SP:
        _SP["sp"] = spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))
    return _SP["sp"]


@SETTINGS
@given(text=ANY_TEXT)
def test_llama3_equals_tiktoken_with_metas_pattern(text):
    need(LLAMA3_TIKTOKEN)
    from support.llama3_vocab import MetaTokenizer

    if "meta" not in _SP:
        _SP["meta"] = MetaTokenizer(LLAMA3_TIKTOKEN)
    ours = TOKENIZERS["llama3 tiktoken"]
    assert ours.encode(text, bos=False) == _SP["meta"].encode(text, bos=False, eos=False), repr(text)
    allowed = _SP["meta"].model.encode(text, allowed_special="all")
    assert ours.encode(text, bos=False, special=True) == allowed, repr(text)


@SETTINGS
@given(text=ANY_TEXT)
def test_tokenizer_json_equals_the_tokenizers_package(text):
    """A GPT-2-style byte-level tokenizer.json against HuggingFace's own implementation."""
    tokenizers = pytest.importorskip("tokenizers")
    from test_tokenizer import TINY_MERGES, _tiny_tokenizer_json

    if "json" not in _SP:
        doc = _tiny_tokenizer_json(TINY_MERGES)
        _SP["json"] = (llama2rs.bpe.ByteLevelTokenizer.from_tokenizer_json(doc),
                       tokenizers.Tokenizer.from_str(json.dumps(doc)))
    ours, peer = _SP["json"]
    if "<|end|>" in text:  # HuggingFace always matches added tokens; ours only when asked
        return
    assert ours.encode(text, bos=False) == peer.encode(text, add_special_tokens=False).ids, repr(text)
    assert ours.decode(ours.encode(text, bos=False)) == text
