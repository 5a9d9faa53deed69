"""Llama 3's tokenizer.model (tiktoken text) against Meta's reference encoder: tiktoken with the
pattern and special tokens of llama_models 0.3.0's llama3/tokenizer.py, and its cuts of long
texts (written out here as Meta wrote them, independently of the Rust code)."""

from __future__ import annotations

import random

import numpy as np
import pytest

import llama2rs
from conftest import MODELS, need
from llama2rs import TokenizerError
from llama2rs.bpe import ByteLevelTokenizer

tiktoken = pytest.importorskip("tiktoken")
from tiktoken.load import load_tiktoken_bpe  # noqa: E402

LLAMA3 = MODELS / "llama3-tokenizer" / "tokenizer.model"

# Meta's, copied from llama_models/llama3/tokenizer.py (the reference, not our code).
META_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # noqa: E501
META_NAMED = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
              "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
              "<|eot_id|>", "<|python_tag|>", "<|image|>"]


def split_whitespaces_or_nonwhitespaces(s: str, max_len: int):
    current_len, current_is_space, start = 0, s[0].isspace() if s else False, 0
    for i in range(len(s)):
        is_space = s[i].isspace()
        if current_is_space ^ is_space:
            current_len, current_is_space = 1, is_space
        else:
            current_len += 1
            if current_len > max_len:
                yield s[start:i]
                start, current_len = i, 1
    yield s[start:]


class MetaTokenizer:
    def __init__(self, path) -> None:
        ranks = load_tiktoken_bpe(str(path))
        specials = META_NAMED + [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(META_NAMED))]
        self.special_tokens = {t: len(ranks) + i for i, t in enumerate(specials)}
        self.model = tiktoken.Encoding(name="llama3", pat_str=META_PATTERN, mergeable_ranks=ranks,
                                       special_tokens=self.special_tokens)

    def encode(self, s: str, bos: bool, eos: bool, allowed_special=frozenset()) -> list[int]:
        t = []
        for i in range(0, len(s), 400_000):
            for sub in split_whitespaces_or_nonwhitespaces(s[i:i + 400_000], 25_000):
                t.extend(self.model.encode(sub, allowed_special=allowed_special, disallowed_special=()))
        return ([self.special_tokens["<|begin_of_text|>"]] if bos else []) + t + (
            [self.special_tokens["<|end_of_text|>"]] if eos else [])


@pytest.fixture(scope="module")
def pair():
    need(LLAMA3)
    return llama2rs.Tokenizer(LLAMA3), MetaTokenizer(LLAMA3)


TEXTS = [
    "", "Hello, world!", " leading and trailing spaces  ", "I'm sure you'll see they've WE'RE it's",
    "tabs\tand\nnewlines\r\n\n\n  indented\n    code()", "1234567890 3.14159 1e-10 ½ ² ٣٤٥",
    "Ünïcödé façade naïve — “quotes” ‘single’ …", "日本語のテキストと中文文本，还有한국어 텍스트",
    "emoji 👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵", "combining e\u0301 a\u0308 and zero\u200bwidth",
    "control \x00\x01\x1c\x1f\x7f chars", "Ελληνικά кириллица עברית العربية हिन्दी ไทย",
    "def f(x):\n\treturn x**2  # comment\n\n\nclass A: pass", "   \n\n   \t  ", "!!!???...,,,;;;",
    "<|begin_of_text|>fake special<|eot_id|> <|start_header_id|>user<|end_header_id|>",
    "a" * 30_000, " " * 30_000 + "x", "\x1c" * 26_000 + "y" * 10,
]


@pytest.mark.parametrize("index", range(len(TEXTS)))
def test_equals_metas_encoder(pair, index):
    ours, meta = pair
    text = TEXTS[index]
    assert ours.encode(text, bos=True) == meta.encode(text, bos=True, eos=False)
    assert ours.encode(text, bos=False, eos=True) == meta.encode(text, bos=False, eos=True)
    assert ours.decode(ours.encode(text)) == text


def test_random_mixed_text(pair):
    ours, meta = pair
    rng = random.Random(11)
    alphabet = list("abcdefghij ABC\n\t0123456789.,'!?-") + ["é", "ß", "日", "本", "👍", "\u0301", "\r", "  ", "'s", "'LL"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
        assert ours.encode(text, bos=False) == meta.encode(text, bos=False, eos=False), repr(text)
        assert ours.decode(ours.encode(text)) == text


def test_special_tokens_only_where_allowed(pair):
    ours, meta = pair
    text = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    as_text = ours.encode(text, bos=False)
    assert as_text == meta.encode(text, bos=False, eos=False)
    assert not set(as_text) & set(ours.special_tokens.values())
    allowed = ours.encode(text, bos=False, special=True)
    assert allowed == meta.encode(text, bos=False, eos=False, allowed_special="all")
    assert allowed[0] == 128006 and allowed[-1] == 128009
    assert ours.decode(allowed) == text


def test_facts_and_stop_ids(pair):
    ours, _ = pair
    assert isinstance(ours, ByteLevelTokenizer) and ours.format == "tiktoken"
    assert ours.vocab_size == len(ours) == 128256
    assert (ours.bos_id, ours.eos_id) == (128000, 128001)
    assert ours.stop_ids == (128001, 128008, 128009)  # <|end_of_text|>, <|eom_id|>, <|eot_id|>
    assert ours.piece_to_id("<|eot_id|>") == 128009 and ours.id_to_piece(128009) == "<|eot_id|>"
    assert ours.piece_to_id(" the") == ours.encode(" the", bos=False)[0]
    with pytest.raises(llama2rs.InvalidTokenError, match="128256"):
        ours.decode([128256])
    with pytest.raises(TokenizerError, match="has 128256 tokens but the model's vocab_size is 32000"):
        llama2rs.Tokenizer(LLAMA3, vocab_size=32000)


def test_streaming_never_splits_a_character(pair):
    ours, _ = pair
    text = "naïve 日本語 👨‍👩‍👧‍👦 done"
    ids = ours.encode(text, bos=False)
    stream = ours.stream()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)


def test_corrupt_tiktoken_files(tmp_path):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"IQ== 0\nIg== 2\n")
    with pytest.raises(TokenizerError, match="line 2 has rank 2, expected 1"):
        llama2rs.Tokenizer(path)
    path.write_bytes(b"IQ== 0\n!!!! 1\n")
    with pytest.raises(TokenizerError, match="corrupt tiktoken file: line 2"):
        llama2rs.Tokenizer(path)
    path.write_bytes(b"IQ== 0\nIg== 1\n")  # only two bytes of the 256
    with pytest.raises(TokenizerError, match="no token for the single byte 0x00"):
        llama2rs.Tokenizer(path)


# -- the same vocabulary in a GGUF file (tokenizer.ggml.model = gpt2, pre = llama-bpe) ---------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-character table (openai/gpt-2 encoder.py), as GGUF gpt2 vocabularies use it."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@pytest.fixture(scope="module")
def llama3_gguf(tmp_path_factory, pair):
    """A Llama-3-vocabulary GGUF whose every layer adds nothing and whose classifier favours
    <|eot_id|>: greedy decoding's first token is <|eot_id|>, whatever the prompt."""
    import numpy as np
    from gguf import GGUFValueType

    from llama2rs.config import Config
    from support.fixtures import random_weights
    from support.gguf_files import T, uniform, write_gguf

    ours, meta = pair
    to_char = bytes_to_unicode()
    tokens, types = [], []
    for i, raw in enumerate(ours.pieces):
        special = i >= 128000
        tokens.append(raw.decode() if special else "".join(to_char[b] for b in raw))
        types.append(3 if special else 1)
    config = Config(dim=64, hidden_dim=128, n_layers=1, n_heads=1, n_kv_heads=1, vocab_size=ours.vocab_size,
                    seq_len=64, rope_theta=500000.0)
    weights = random_weights(config, 0)
    for layer in weights.layers:
        layer["wo"][:] = 0
        layer["w2"][:] = 0
    weights.token_embedding[:] = 1.0
    weights.rms_final[:] = 1.0
    classifier = np.zeros((config.vocab_size, config.dim), dtype=np.float32)
    classifier[128009] = 1.0
    weights.classifier = classifier
    path = tmp_path_factory.mktemp("llama3") / "llama3-vocab.gguf"
    return write_gguf(path, weights, uniform(T.F16), tokens=tokens, token_types=types, tokenizer_model="gpt2",
                      bos_eos=(128000, 128001), kv={"tokenizer.ggml.pre": ("llama-bpe", GGUFValueType.STRING)})


def test_gguf_gpt2_vocabulary_tokenizes_as_tiktoken(pair, llama3_gguf):
    _, meta = pair
    model = llama2rs.Model(llama3_gguf)
    assert model.tokenizer.format == "gguf" and model.tokenizer.vocab_size == 128256
    for text in TEXTS[:-3] + ["a" * 100]:  # llama.cpp does not cut long runs: neither does this
        assert model.tokenize(text) == [128000] + meta.model.encode(text, disallowed_special=()), repr(text)
        assert model.detokenize(model.tokenize(text)) == text


def test_generation_stops_at_eot(llama3_gguf):
    model = llama2rs.Model(llama3_gguf)
    assert set(model.stop_ids) >= {128000, 128001, 128008, 128009}
    prompt = model.tokenize("Hello")
    assert list(model.generate_tokens(prompt, max_tokens=5, ignore_eos=True)) == [128009] * 5  # what it samples
    assert list(model.generate_tokens(prompt, max_tokens=5)) == []  # ... and where it stops
    assert model.complete("Hello", max_tokens=5) == ""


def test_gguf_pre_tokenizer_we_do_not_run(tmp_path, llama3_gguf):
    import shutil

    from gguf import GGUFReader

    path = tmp_path / "qwen.gguf"
    shutil.copy(llama3_gguf, path)
    field = GGUFReader(str(path), "r+").fields["tokenizer.ggml.pre"]
    field.parts[field.data[0]][:] = np.frombuffer(b"qwen2-bpe", dtype=np.uint8)  # as long as "llama-bpe"
    model = llama2rs.Model(path)
    with pytest.raises(TokenizerError, match="its GGUF pre-tokenizer is 'qwen2-bpe'; llama2rs runs"):
        model.tokenize("Hello")
    assert list(model.generate_tokens([128000], max_tokens=2, ignore_eos=True)) == [128009, 128009]  # ids still run
