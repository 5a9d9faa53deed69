"""Byte-level BPE tokenizers: Llama 3's ``tokenizer.model``, which is tiktoken text (one
``base64-token rank`` per line), not sentencepiece; HuggingFace's byte-level BPE
``tokenizer.json``; and GGUF's ``gpt2`` vocabularies.

:class:`ByteLevelTokenizer` is what :class:`llama2rs.Tokenizer` returns for a tiktoken file or
a ``tokenizer.json`` (recognised by content). It encodes exactly as Meta's reference encoder
does (tiktoken with Meta's split pattern, its 256 special tokens after the ranks, and its cuts
of very long texts); the merge loop runs in the Rust core with the GIL released.

Merging is tiktoken's: the adjacent pair whose joined bytes have the lowest rank (= token id)
merges first. A ``tokenizer.json`` or GGUF vocabulary converted from tiktoken (Llama 3's) lists
its merges in that order, which the readers check; HuggingFace's pair-by-pair merge gives the
same tokens then.
"""

from __future__ import annotations

import base64
import binascii
import json
import operator
import os
import re
from typing import Any, Iterable, Mapping, Optional, Sequence

from . import _core
from ._tokens import StreamDecoder, read_file
from .config import LIMITS
from .errors import InvalidTokenError, TokenizerError

__all__ = [
    "ByteLevelTokenizer", "GPT2_PATTERN", "LLAMA3_PATTERN", "LLAMA3_STOP_TOKENS", "PRE_TOKENIZERS",
    "llama3_special_tokens", "looks_like_tokenizer_json",
]

#: Meta's pre-tokenizer for Llama 3 (``pat_str`` of llama_models' ``llama3/tokenizer.py``).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: GPT-2's pre-tokenizer (HuggingFace's ``ByteLevel`` with ``use_regex``).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
#: Meta's encoder cuts a text into chunks of this many characters, then before any run of
#: whitespace or non-whitespace longer than ``LLAMA3_MAX_RUN`` (``TIKTOKEN_MAX_ENCODE_CHARS``,
#: ``MAX_NO_WHITESPACES_CHARS``); the cuts change the tokens there, so we cut alike.
LLAMA3_CHUNK_CHARS = 400_000
LLAMA3_MAX_RUN = 25_000
_LLAMA3_NAMED_SPECIALS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>", "<|image|>",
)
_LLAMA3_SPECIALS = 256
#: Generation ends at any of these (Llama 3 ends a turn with <|eot_id|>, a tool call with
#: <|eom_id|>, a document with <|end_of_text|>).
LLAMA3_STOP_TOKENS = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")

# GGUF token types (llama.cpp's llama_token_type): 1 normal, 3 control, 4 user-defined.
_NORMAL = 1
_SPECIAL_TYPES = (3, 4)
#: GGUF ``tokenizer.ggml.pre`` values and the pre-tokenizer pattern each names.
PRE_TOKENIZERS = {"llama-bpe": LLAMA3_PATTERN, "llama3": LLAMA3_PATTERN}


def _gpt2_byte_of() -> dict[str, int]:
    """GPT-2's ``bytes_to_unicode``, inverted: the character each byte is written as -> the byte.
    Printable Latin-1 bytes are themselves; the other 68 are shifted to U+0100 onwards."""
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, shifted = {}, 0
    for b in range(256):
        if b in kept:
            chars[chr(b)] = b
        else:
            chars[chr(256 + shifted)] = b
            shifted += 1
    return chars


_GPT2_BYTE_OF = _gpt2_byte_of()


def _gpt2_bytes(token: str) -> bytes:
    """A token written in GPT-2's byte-to-character mapping, as its bytes (KeyError if not)."""
    return bytes(_GPT2_BYTE_OF[c] for c in token)


def looks_like_tokenizer_json(data: bytes) -> bool:
    """Whether ``data`` starts as a JSON object does (a HuggingFace ``tokenizer.json``). A
    tokenizer.bin starts with a little-endian int32, a tokenizer.model with a protobuf tag."""
    return re.match(rb"\s*\{\s*\"", data[:64]) is not None


def _json_pattern(pre: Any, where: str) -> str:
    """The split pattern of a tokenizer.json ``pre_tokenizer``: ``Split`` by a regex then
    ``ByteLevel`` without its own regex (Llama 3), or ``ByteLevel`` with it (GPT-2)."""
    def byte_level(step: Any, use_regex: bool) -> bool:
        return (isinstance(step, dict) and step.get("type") == "ByteLevel" and not step.get("add_prefix_space", False)
                and bool(step.get("use_regex", True)) == use_regex)

    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    if isinstance(steps, list) and len(steps) == 1 and byte_level(steps[0], True):
        return GPT2_PATTERN
    if isinstance(steps, list) and len(steps) == 2 and byte_level(steps[1], False) and isinstance(steps[0], dict):
        split = steps[0]
        pattern = split.get("pattern")
        regex = pattern.get("Regex") if isinstance(pattern, dict) else None
        if (split.get("type") == "Split" and isinstance(regex, str) and split.get("behavior") == "Isolated"
                and not split.get("invert", False)):
            return regex
    raise TokenizerError(f"{where}: tokenizer.json pre_tokenizer {json.dumps(pre)[:200]} is not one llama2rs runs "
                         "(a regex Split then ByteLevel, or ByteLevel alone, without a prefix space)")


def _check_merge_order(merges: Any, ids: dict[bytes, int], where: str) -> None:
    """Refuse merges that tiktoken's rule would not reproduce: each merge must make a token,
    and the tokens they make must come in id order (as a tiktoken-converted vocabulary's do)."""
    if not isinstance(merges, list):
        raise TokenizerError(f"{where}: tokenizer.json model.merges must be a list")
    last = -1
    for i, merge in enumerate(merges):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        try:
            if not isinstance(pair, list) or len(pair) != 2:
                raise KeyError(merge)
            made = ids[_gpt2_bytes(pair[0]) + _gpt2_bytes(pair[1])]
        except (KeyError, TypeError):
            raise TokenizerError(f"{where}: tokenizer.json merge {i} ({merge!r}) does not make a token of the vocabulary") from None
        if made < last:  # a token may have several merges (one per way to split it)
            raise TokenizerError(f"{where}: tokenizer.json merges are not in token-id order (merge {i} makes token {made} "
                                 f"after {last}); llama2rs merges by rank, as tiktoken does")
        last = made


def _utf8(text: str, where: str, what: str) -> bytes:
    """``text`` as UTF-8; JSON can hold lone surrogates, which have none."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise TokenizerError(f"{where}: {what} {text!r} is not valid Unicode (a lone surrogate)") from None


def llama3_special_tokens(n_ranks: int) -> dict[str, int]:
    """Meta's special tokens and their ids, right after the ``n_ranks`` ranks."""
    reserved = [f"<|reserved_special_token_{2 + i}|>" for i in range(_LLAMA3_SPECIALS - len(_LLAMA3_NAMED_SPECIALS))]
    return {text: n_ranks + i for i, text in enumerate(_LLAMA3_NAMED_SPECIALS + tuple(reserved))}


def _read_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise TokenizerError(f"{where}: invalid JSON: {exc}") from None


def _load_tiktoken(data: bytes, where: str) -> list[bytes]:
    """The tokens of a tiktoken file, indexed by rank (every rank 0..n-1 once)."""
    tokens: list[bytes | None] = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line:
            continue
        fields = line.split(b" ")
        try:
            if len(fields) != 2:
                raise ValueError("not 'base64-token rank'")
            token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
        except (ValueError, binascii.Error) as exc:
            raise TokenizerError(f"{where}: corrupt tiktoken file: line {number}: {exc}") from None
        if rank != len(tokens):
            raise TokenizerError(f"{where}: corrupt tiktoken file: line {number} has rank {rank}, expected {len(tokens)}")
        tokens.append(token)
    if not tokens:
        raise TokenizerError(f"{where}: tiktoken file holds no tokens")
    return tokens  # type: ignore[return-value]


class ByteLevelTokenizer:
    """A byte-level BPE tokenizer: Llama 3's tiktoken ``tokenizer.model``, a HuggingFace
    ``tokenizer.json``, or a GGUF ``gpt2`` vocabulary.

    ``encode(text, bos=True, eos=False, special=False)``: with ``special=False`` (the default)
    special tokens written in the text, such as ``"<|eot_id|>"``, are encoded as ordinary text;
    with ``special=True`` they are their ids (for text that a chat template builds). ``decode``
    restores the text: BOS is skipped, other special tokens come out as their text.
    """

    _bos: int  # -1: none
    _eos: int

    def __init__(self, path: str | os.PathLike[str], vocab_size: int | None = None) -> None:
        self._path = os.fspath(path)
        data = read_file(self._path)
        if looks_like_tokenizer_json(data):
            config_path = os.path.join(os.path.dirname(self._path), "tokenizer_config.json")
            config = _read_json(read_file(config_path), config_path) if os.path.isfile(config_path) else None
            self._load_json(_read_json(data, self._path), repr(self._path), vocab_size, config)
        else:
            self._load(data, repr(self._path), vocab_size)

    @classmethod
    def from_tokenizer_json(cls, document: Mapping[str, Any], vocab_size: int | None = None,
                            tokenizer_config: Optional[Mapping[str, Any]] = None,
                            name: str = "tokenizer.json") -> "ByteLevelTokenizer":
        """A HuggingFace byte-level BPE ``tokenizer.json`` (parsed), with its
        ``tokenizer_config.json`` if there is one (which names BOS and EOS)."""
        self = object.__new__(cls)
        self._path = name
        self._load_json(document, repr(name), vocab_size, tokenizer_config)
        return self

    def _load_json(self, doc: Any, where: str, vocab_size: int | None,
                   tokenizer_config: Optional[Mapping[str, Any]]) -> None:
        model = doc.get("model") if isinstance(doc, dict) else None
        if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
            raise TokenizerError(f"{where}: not a BPE tokenizer.json (model.type must be 'BPE' with a vocab)")
        decoder = doc.get("decoder")
        if model.get("byte_fallback") or not isinstance(decoder, dict) or decoder.get("type") != "ByteLevel":
            raise TokenizerError(f"{where}: not a byte-level BPE tokenizer.json (llama2rs reads byte-level ones; "
                                 "a sentencepiece-style one comes with a tokenizer.model: use that)")
        normalizer = doc.get("normalizer")
        if normalizer is not None:
            kind = normalizer.get("type") if isinstance(normalizer, dict) else normalizer
            raise TokenizerError(f"{where}: tokenizer.json normalizer {str(kind)[:100]!r} is not supported")
        pattern = _json_pattern(doc.get("pre_tokenizer"), where)
        vocab: dict[str, Any] = model["vocab"]
        ranks: list[Optional[bytes]] = [None] * len(vocab)
        ids: dict[bytes, int] = {}
        for token, id in vocab.items():
            if isinstance(id, bool) or not isinstance(id, int) or not 0 <= id < len(vocab) or ranks[id] is not None:
                raise TokenizerError(f"{where}: tokenizer.json vocab ids must be 0..{len(vocab) - 1}, each once "
                                     f"(token {token!r} has {id!r})")
            try:
                ranks[id] = _gpt2_bytes(token)
            except KeyError:
                raise TokenizerError(f"{where}: tokenizer.json token {token!r} is not in GPT-2's byte-to-character "
                                     "mapping") from None
            ids[ranks[id]] = id  # type: ignore[index]
        _check_merge_order(model.get("merges", []), ids, where)
        specials: dict[str, int] = {}
        added_tokens = doc.get("added_tokens") or []
        if not isinstance(added_tokens, list):
            raise TokenizerError(f"{where}: tokenizer.json added_tokens must be a list")
        for added in added_tokens:
            content, id = (added.get("content"), added.get("id")) if isinstance(added, dict) else (None, None)
            if not isinstance(content, str) or isinstance(id, bool) or not isinstance(id, int) or id < 0:
                raise TokenizerError(f"{where}: bad tokenizer.json added token {added!r}"[:300])
            if id < len(vocab):
                if ranks[id] != _utf8(content, where, "added token"):
                    raise TokenizerError(f"{where}: added token {content!r} reuses id {id} of another token")
                continue  # an ordinary token also listed as added: nothing to add
            specials[content] = id
        self._init(ranks, specials, pattern, None, where, vocab_size)  # type: ignore[arg-type]
        self._format = "tokenizer.json"
        config = tokenizer_config if tokenizer_config is not None else {}
        if not isinstance(config, Mapping):
            raise TokenizerError(f"{where}: tokenizer_config.json must hold a JSON object")

        def named(key: str, default: int) -> int:
            token = config.get(key)
            text = token.get("content") if isinstance(token, dict) else token
            if text is None:
                return default
            if not isinstance(text, str):
                raise TokenizerError(f"{where}: tokenizer_config {key} must be a token's text, got {text!r}"[:300])
            if text in specials:
                return specials[text]
            id = ids.get(_utf8(text, where, f"tokenizer_config {key}"))
            if id is None:
                raise TokenizerError(f"{where}: tokenizer_config {key} {text!r} is not a token")
            return id

        self._bos, self._eos = named("bos_token", self._bos), named("eos_token", self._eos)
        stops = [self._eos] + [specials[t] for t in LLAMA3_STOP_TOKENS if t in specials]
        self._stop_ids = tuple(t for t in dict.fromkeys(stops) if t >= 0)

    @classmethod
    def from_gguf(cls, tokens: Sequence[bytes], token_types: Optional[Sequence[int]], pre: Optional[str],
                  bos_id: Optional[int], eos_id: Optional[int], vocab_size: int, name: str) -> "ByteLevelTokenizer":
        """A GGUF ``gpt2`` vocabulary: tokens in GPT-2's byte-to-character mapping, control and
        user-defined tokens (types 3, 4) as special tokens after the ordinary ones, whose ids
        are their merge ranks (as in every tiktoken-converted vocabulary). Encodes as llama.cpp
        does: ``tokenizer.ggml.pre`` names the pre-tokenizer (``llama-bpe`` for Llama 3), and
        there are no cuts of long runs."""
        if pre not in PRE_TOKENIZERS:
            raise TokenizerError(f"{name}: GGUF pre-tokenizer {pre!r} is not one llama2rs runs "
                                 f"(it runs {', '.join(sorted(PRE_TOKENIZERS))})")
        types = list(token_types) if token_types is not None else [_NORMAL] * len(tokens)
        ranks: list[bytes] = []
        specials: dict[str, int] = {}
        for i, (token, kind) in enumerate(zip(tokens, types)):
            try:
                text = bytes(token).decode("utf-8") if kind in _SPECIAL_TYPES else None
            except UnicodeDecodeError:
                raise TokenizerError(f"{name}: GGUF special token {i} is not valid UTF-8") from None
            if text is not None:
                specials[text] = i
            elif specials:
                raise TokenizerError(f"{name}: GGUF token {i} is an ordinary token after special ones; "
                                     "llama2rs needs the merge ranks first")
            else:
                try:
                    ranks.append(bytes(_GPT2_BYTE_OF[c] for c in bytes(token).decode("utf-8")))
                except (KeyError, UnicodeDecodeError):
                    raise TokenizerError(f"{name}: GGUF token {i} is not in GPT-2's byte-to-character mapping") from None
        self = object.__new__(cls)
        self._path = name
        self._init(ranks, specials, PRE_TOKENIZERS[str(pre)], None, name, vocab_size)
        self._format = "gguf"
        self._bos = bos_id if bos_id is not None else self._bos
        self._eos = eos_id if eos_id is not None else self._eos
        stops = [self._eos] + [specials[t] for t in LLAMA3_STOP_TOKENS if t in specials]
        self._stop_ids = tuple(dict.fromkeys(stops))
        return self

    @classmethod
    def from_bytes(cls, data: bytes, vocab_size: int | None = None, name: str = "<bytes>") -> "ByteLevelTokenizer":
        self = object.__new__(cls)
        self._path = name
        self._load(bytes(data), repr(name), vocab_size)
        return self

    def _load(self, data: bytes, where: str, vocab_size: int | None) -> None:
        ranks = _load_tiktoken(data, where)
        self._init(ranks, llama3_special_tokens(len(ranks)), LLAMA3_PATTERN, (LLAMA3_CHUNK_CHARS, LLAMA3_MAX_RUN),
                   where, vocab_size)
        self._format = "tiktoken"
        self._stop_ids = tuple(self._specials[t] for t in LLAMA3_STOP_TOKENS)

    def _init(self, ranks: list[bytes], specials: dict[str, int], pattern: str, slicing: Optional[tuple[int, int]],
              where: str, vocab_size: int | None) -> None:
        # Checked here, the one way into the core's tokenizer, for every source (a tokenizer.json,
        # a GGUF file, a llama2rs file's tokenizer_spec): an empty special token or a cut of 0
        # characters made encode() loop forever, and an id beyond u32 raised OverflowError (one
        # near it would have sized the id table to 2**32 entries).
        for text, id in specials.items():
            if not text:
                raise TokenizerError(f"{where}: special token {id} is empty")
            if isinstance(id, bool) or not isinstance(id, int) or not 0 <= id < LIMITS["vocab_size"]:
                raise TokenizerError(f"{where}: special token {text!r} has id {id}, outside [0, {LIMITS['vocab_size']})"[:300])
        if slicing is not None and not all(isinstance(n, int) and 1 <= n <= 1 << 40 for n in slicing):
            raise TokenizerError(f"{where}: the cuts {list(slicing)} must be positive character counts")
        self._specials = specials
        self._pattern, self._slicing, self._n_ranks = pattern, slicing, len(ranks)
        try:
            self._bpe = _core.ByteLevelBpe(ranks, list(specials.items()), pattern, slicing)
        except ValueError as exc:
            raise TokenizerError(f"{where}: {exc}") from None
        self._bos = specials.get("<|begin_of_text|>", -1)
        self._eos = specials.get("<|end_of_text|>", -1)
        if vocab_size is not None and vocab_size != self._bpe.vocab_size:
            raise TokenizerError(
                f"{where}: the tokenizer has {self._bpe.vocab_size} tokens but the model's vocab_size is {vocab_size}"
            )

    # -- facts ------------------------------------------------------------

    @property
    def path(self) -> str:
        """The file this tokenizer was loaded from."""
        return self._path

    @property
    def format(self) -> str:
        """``"tiktoken"`` (a tokenizer.model file), ``"tokenizer.json"`` or ``"gguf"`` (a GGUF
        file's vocabulary): where the vocabulary came from."""
        return self._format

    @property
    def vocab_size(self) -> int:
        """Ranks plus special tokens."""
        return int(self._bpe.vocab_size)

    @property
    def bos_id(self) -> int:
        """``<|begin_of_text|>`` (or what the file names instead; -1 for none)."""
        return self._bos

    @property
    def eos_id(self) -> int:
        """``<|end_of_text|>`` (or what the file names instead; -1 for none)."""
        return self._eos

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Every id that ends generation: EOS, and Llama 3's ``<|end_of_text|>``, ``<|eom_id|>``
        and ``<|eot_id|>`` where the vocabulary has them."""
        return self._stop_ids

    @property
    def special_tokens(self) -> dict[str, int]:
        """Each special token's text and id."""
        return dict(self._specials)

    @property
    def pieces(self) -> tuple[bytes, ...]:
        """Every token's bytes, indexed by id (a special token's text)."""
        return tuple(bytes(self._bpe.token_bytes(i)) for i in range(self.vocab_size))

    @property
    def max_token_length(self) -> int:
        return max(len(p) for p in self.pieces)

    @property
    def scores(self) -> tuple[float, ...]:
        raise TokenizerError(f"{self._path}: a byte-level BPE tokenizer has ranks, not sentencepiece scores")

    def to_bin_bytes(self) -> bytes:
        raise TokenizerError(
            f"{self._path}: a byte-level BPE tokenizer has no llama2.c tokenizer.bin encoding (a llama2rs file stores "
            "it with to_file_parts)"
        )

    def to_file_parts(self) -> tuple[bytes, dict[str, Any]]:
        """This tokenizer as a llama2rs file stores it: its ranks as tiktoken text, and the rest
        (pattern, special tokens, cuts, BOS/EOS, stop ids) as a JSON-able dict."""
        lines = [base64.b64encode(bytes(self._bpe.token_bytes(i))) + b" %d\n" % i for i in range(self._n_ranks)]
        spec = {"type": "byte_level_bpe", "pattern": self._pattern, "special_tokens": dict(self._specials),
                "cuts": list(self._slicing) if self._slicing else None, "bos_id": self._bos, "eos_id": self._eos,
                "stop_ids": list(self._stop_ids), "source_format": self._format}
        return b"".join(lines), spec

    @classmethod
    def from_file_parts(cls, ranks: bytes, spec: Mapping[str, Any], vocab_size: int | None = None,
                        name: str = "<model file>") -> "ByteLevelTokenizer":
        """The inverse of :meth:`to_file_parts`."""
        where = repr(name)
        try:
            specials = {str(k): int(v) for k, v in spec["special_tokens"].items()}
            cuts = spec.get("cuts")
            slicing = (int(cuts[0]), int(cuts[1])) if cuts else None
            pattern, bos, eos = str(spec["pattern"]), int(spec["bos_id"]), int(spec["eos_id"])
            stop_ids = tuple(int(t) for t in spec["stop_ids"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
            raise TokenizerError(f"{where}: bad byte-level BPE tokenizer description: {exc!r}") from None
        self = object.__new__(cls)
        self._path = name
        self._init(_load_tiktoken(ranks, where), specials, pattern, slicing, where, vocab_size)
        self._format = str(spec.get("source_format", "tiktoken"))
        for id in (bos, eos, *stop_ids):
            if id != -1:
                self._check_id(id)
        self._bos, self._eos, self._stop_ids = bos, eos, stop_ids
        return self

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"ByteLevelTokenizer({self._path!r}, vocab_size={self.vocab_size})"

    # -- lookups ----------------------------------------------------------

    def _check_id(self, token: int) -> int:
        token = operator.index(token)
        if not 0 <= token < self.vocab_size:
            raise InvalidTokenError(f"token id {token} is out of range for vocab_size {self.vocab_size}")
        return token

    def id_to_piece(self, id: int) -> str:
        return bytes(self._bpe.token_bytes(self._check_id(id))).decode("utf-8", errors="replace")

    def piece_to_id(self, piece: str) -> int | None:
        special = self._bpe.special_id(piece)
        if special is not None:
            return int(special)
        ids = self._bpe.encode(piece, False)
        return int(ids[0]) if len(ids) == 1 and self.piece_bytes(None, ids[0]) == piece.encode() else None

    # -- encoding and decoding --------------------------------------------

    def encode(self, text: str | bytes, bos: bool = True, eos: bool = False, special: bool = False) -> list[int]:
        """Token ids of ``text`` (bytes are read as UTF-8), with BOS first and EOS last if asked."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", errors="replace")
        if not isinstance(text, str):
            raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
        try:
            ids = self._bpe.encode(text, bool(special))
        except UnicodeEncodeError:  # lone surrogates: as Python writes them, then replaced
            ids = self._bpe.encode(text.encode("utf-8", errors="replace").decode("utf-8"), bool(special))
        for wanted, id, what in ((bos, self._bos, "BOS"), (eos, self._eos, "EOS")):
            if wanted and id < 0:
                raise TokenizerError(f"{self._path}: this vocabulary has no {what} token")
        return ([self._bos] if bos else []) + list(ids) + ([self._eos] if eos else [])

    def piece_bytes(self, prev_id: int | None, id: int) -> bytes:
        """The bytes token ``id`` contributes to the text (BOS: none)."""
        id = self._check_id(id)
        return b"" if id == self._bos else bytes(self._bpe.token_bytes(id))

    def decode_bytes(self, ids: Iterable[int], prev_id: int | None = None) -> bytes:
        checked = [self._check_id(t) for t in ids]
        return bytes(self._bpe.decode([t for t in checked if t != self._bos]))

    def decode(self, ids: Iterable[int], prev_id: int | None = None) -> str:
        """The text of ``ids``; invalid UTF-8 (a character cut by the end of ``ids``) as U+FFFD."""
        return self.decode_bytes(ids, prev_id).decode("utf-8", errors="replace")

    def stream(self, prev_id: int | None = None) -> StreamDecoder:
        return StreamDecoder(self, prev_id)
