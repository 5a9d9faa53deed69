"""Llama 3's vocabulary on the reference side: Meta's encoder, and the vocabulary, merges and
token types that the converters (llama.cpp's convert_hf_to_gguf, transformers' TikTokenConverter)
derive from the tiktoken ``tokenizer.model``.

Never imported by the runtime, and written from the converters' and Meta's descriptions, not
from llama2rs: these are what the tests compare llama2rs with.

* :class:`MetaTokenizer`: llama_models' ``llama3/tokenizer.py`` encoder (tiktoken with Meta's
  split pattern and 256 special tokens, and its cuts of very long texts).
* :func:`llama3_vocab`: the ranks of a tiktoken file and what a converter makes of them: each
  token in GPT-2's byte-to-character mapping, the 256 special tokens after the ranks, and the
  merges (TikTokenConverter's ``extract_vocab_merges_from_model``: every split of a token into
  two tokens, ordered by the token's rank, then by the two halves' ranks). Cached per process.
* :func:`gguf_tokenizer_arrays`: ``tokenizer.ggml.tokens / token_type / merges`` as
  convert_hf_to_gguf writes them for Llama 3 (model ``gpt2``, pre ``llama-bpe``).
* :data:`TEXTS`: varied texts the tokenizer tests share.
"""

from __future__ import annotations

import base64
import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = ["META_PATTERN", "META_NAMED", "BOS_ID", "EOS_ID", "EOT_ID", "TEXTS", "UNCUT_TEXTS", "Llama3Vocab",
           "MetaTokenizer", "bytes_to_unicode", "gguf_tokenizer_arrays", "llama3_vocab", "meta_special_tokens",
           "random_texts", "split_whitespaces_or_nonwhitespaces", "tiktoken_merges", "to_gpt2_chars"]

# Meta's, copied from llama_models/llama3/tokenizer.py (the reference, not our code).
META_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # noqa: E501
META_NAMED = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
              "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
              "<|eot_id|>", "<|python_tag|>", "<|image|>"]
BOS_ID, EOS_ID, EOT_ID = 128000, 128001, 128009  # <|begin_of_text|>, <|end_of_text|>, <|eot_id|>

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
#: Texts for the encoders that do not cut long runs as Meta's does (llama.cpp's, HuggingFace's):
#: they must equal the bare tiktoken encoding (``MetaTokenizer.model``) on every one, long runs too.
UNCUT_TEXTS = TEXTS + ["a" * 1000, " " * 2000 + "x", "\n" * 300 + "  y", "1" * 301, "x" + "\u0301" * 500]
RANDOM_ALPHABET = list("abcdefghij ABC\n\t0123456789.,'!?-") + ["é", "ß", "日", "本", "👍", "\u0301", "\r", "  ", "'s", "'LL"]


def random_texts(seed: int, n: int, max_len: int = 80) -> list[str]:
    """``n`` random strings of up to ``max_len`` pieces of :data:`RANDOM_ALPHABET` (contractions,
    digits, CR/LF, combining marks, CJK, emoji): the pre-tokenizer's corners."""
    rng = random.Random(seed)
    return ["".join(rng.choice(RANDOM_ALPHABET) for _ in range(rng.randrange(0, max_len))) for _ in range(n)]


def meta_special_tokens(n_ranks: int = 128000) -> dict[str, int]:
    """Meta's 256 special tokens and their ids, right after the ranks."""
    specials = META_NAMED + [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(META_NAMED))]
    return {t: n_ranks + i for i, t in enumerate(specials)}


def split_whitespaces_or_nonwhitespaces(s: str, max_len: int) -> Iterator[str]:
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
    """llama_models' Llama 3 encoder. ``model`` is the bare tiktoken Encoding (no cuts), which is
    what llama.cpp's and HuggingFace's encoders are compared with."""

    def __init__(self, path) -> None:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(str(path))
        self.special_tokens = meta_special_tokens(len(ranks))
        self.model = tiktoken.Encoding(name="llama3", pat_str=META_PATTERN, mergeable_ranks=ranks,
                                       special_tokens=self.special_tokens)

    def encode(self, s: str, bos: bool, eos: bool, allowed_special=frozenset()) -> list[int]:
        t = []
        for i in range(0, len(s), 400_000):
            for sub in split_whitespaces_or_nonwhitespaces(s[i:i + 400_000], 25_000):
                t.extend(self.model.encode(sub, allowed_special=allowed_special, disallowed_special=()))
        return ([self.special_tokens["<|begin_of_text|>"]] if bos else []) + t + (
            [self.special_tokens["<|end_of_text|>"]] if eos else [])


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-character table (openai/gpt-2 encoder.py), as GGUF gpt2 vocabularies and
    HuggingFace's ByteLevel use it."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@functools.lru_cache(maxsize=None)
def _gpt2_translation() -> dict[int, str]:
    return {b: c for b, c in bytes_to_unicode().items()}  # latin-1 character b is byte b


def to_gpt2_chars(token: bytes) -> str:
    """A token's bytes in GPT-2's byte-to-character mapping (``b" the"`` -> ``"Ġthe"``)."""
    return token.decode("latin-1").translate(_gpt2_translation())


def tiktoken_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merges transformers' TikTokenConverter derives from tiktoken ranks, as byte pairs:
    for each token (by rank) every split into a left and a right part that are both tokens,
    those of one token ordered by (rank of left, rank of right); all of them by the token's rank."""
    merges: list[tuple[int, bytes, bytes]] = []
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        local = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        local.sort(key=lambda pair: (ranks[pair[0]], ranks[pair[1]]))
        merges.extend((rank, left, right) for left, right in local)
    merges.sort(key=lambda m: m[0])  # stable: a token's own order stays
    return [(left, right) for _, left, right in merges]


@dataclass(frozen=True)
class Llama3Vocab:
    ranks: tuple[tuple[bytes, int], ...]   # (token bytes, rank) by rank
    tokens: tuple[str, ...]                # each rank's token in GPT-2's byte-to-character mapping
    specials: tuple[tuple[str, int], ...]  # Meta's 256 special tokens and their ids
    merges: tuple[tuple[str, str], ...]    # TikTokenConverter's merges, in GPT-2's mapping


@functools.lru_cache(maxsize=None)
def _vocab(path: str) -> Llama3Vocab:
    ranks: dict[bytes, int] = {}
    for line in Path(path).read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    assert sorted(ranks.values()) == list(range(len(ranks)))
    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    chars = {token: to_gpt2_chars(token) for token, _ in by_rank}  # both halves of a merge are tokens
    return Llama3Vocab(
        ranks=tuple(by_rank),
        tokens=tuple(chars.values()),
        specials=tuple(meta_special_tokens(len(ranks)).items()),
        merges=tuple((chars[a], chars[b]) for a, b in tiktoken_merges(dict(by_rank))),
    )


def llama3_vocab(path) -> Llama3Vocab:
    """The vocabulary of a Llama 3 tiktoken file, computed once per process (about 0.6 s)."""
    return _vocab(str(Path(path).resolve()))


def gguf_tokenizer_arrays(path) -> tuple[list[str], list[int], list[str]]:
    """``tokenizer.ggml.tokens``, ``token_type`` and ``merges`` as llama.cpp's convert_hf_to_gguf
    writes them for Llama 3: the ranks' tokens in GPT-2's mapping (type 1, normal), then the 256
    special tokens as their text (type 3, control: HF's added tokens with special=true), and the
    tokenizer.json merges joined by a space."""
    vocab = llama3_vocab(path)
    tokens = list(vocab.tokens) + [text for text, _ in vocab.specials]
    types = [1] * len(vocab.tokens) + [3] * len(vocab.specials)
    return tokens, types, [f"{a} {b}" for a, b in vocab.merges]
