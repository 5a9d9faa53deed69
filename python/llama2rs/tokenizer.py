"""The byte-pair-encoding tokenizer of llama2.c, in pure Python.

:class:`Tokenizer` reads either of the two files that describe a Llama 2 style
sentencepiece vocabulary:

* llama2.c's ``tokenizer.bin`` (written by llama2.c's ``tokenizer.py export``):
  a little-endian ``int32 max_token_length`` followed, for every token, by a
  ``float32 score``, an ``int32 length`` and ``length`` bytes of piece text;
* sentencepiece's ``tokenizer.model`` (a ``ModelProto`` protobuf), parsed here
  without depending on sentencepiece or protobuf.  Its pieces are mapped the way
  llama2.c's export does it (``'▁'`` becomes ``' '``, the BOS piece becomes
  ``"\\n<s>\\n"`` and the EOS piece ``"\\n</s>\\n"``), so the ``.bin`` and the
  ``.model`` of one tokenizer load to the same vocabulary and encode alike.

:meth:`Tokenizer.from_pieces` takes a sentencepiece vocabulary as lists of pieces and scores
(e.g. the ``tokenizer.ggml.tokens`` and ``scores`` of a GGUF file) and maps it the same way.

The format is recognised by content, not by file extension.

:meth:`Tokenizer.encode` reproduces ``encode()`` of llama2.c's ``run.c``
exactly (including its quirks), with an ``O(n log n)`` merge loop instead of
run.c's ``O(n^2)`` one, in the Rust core (``rust/score_bpe.rs``; this module reads the
files).  :meth:`Tokenizer.decode`, :meth:`Tokenizer.piece_bytes`
and :class:`StreamDecoder` follow run.c's ``decode()``.

Deliberate choices where run.c is undefined or C-specific:

* Duplicate pieces: run.c finds a piece with ``bsearch`` over the sorted
  vocabulary, so which id a duplicated piece maps to is unspecified there.
  Here the **lowest id** always wins (in :meth:`encode` and :meth:`piece_to_id`).
* If the vocabulary has no ``" "`` piece, run.c would emit the id ``-1`` as its
  dummy prefix; here no dummy prefix token is emitted at all.
* C strings end at a NUL byte; Python strings may contain ``"\\x00"``, which is
  encoded like any other character (normally as the byte token ``<0x00>``).
* :meth:`piece_bytes` returns the piece that run.c's ``decode()`` returns;
  it does not apply ``safe_printf``'s filter of unprintable single bytes, so
  that ``decode(encode(s)) == s`` holds for control characters too.
"""

from __future__ import annotations

import operator
import os
import struct
from typing import Iterable, Sequence

from . import _core
from ._tokens import BOS_ID, EOS_ID, StreamDecoder, looks_like_tiktoken, read_file
from .errors import InvalidTokenError, TokenizerError

__all__ = ["Tokenizer", "StreamDecoder"]

_BOS_PIECE = b"\n<s>\n"
_EOS_PIECE = b"\n</s>\n"
_SPM_SPACE = "\u2581"  # '▁', sentencepiece's whitespace marker

_INT32 = struct.Struct("<i")
_FLOAT32 = struct.Struct("<f")
_SCORE_LEN = struct.Struct("<fi")


# ---------------------------------------------------------------------------
# file loading


def _load_bin(data: bytes, where: str) -> tuple[int, list[bytes], list[float]]:
    """Parse llama2.c's tokenizer.bin; return (max_token_length, pieces, scores)."""
    size = len(data)
    if size < 4:
        raise TokenizerError(
            f"{where}: truncated tokenizer.bin: the 4-byte max_token_length header "
            f"needs 4 bytes, found {size}"
        )
    (max_len,) = _INT32.unpack_from(data, 0)
    if max_len < 0:
        raise TokenizerError(
            f"{where}: corrupt tokenizer.bin: max_token_length is {max_len} (negative)"
        )
    pieces: list[bytes] = []
    scores: list[float] = []
    off = 4
    while off < size:
        i = len(pieces)
        if off + 8 > size:
            raise TokenizerError(
                f"{where}: truncated tokenizer.bin: token {i} at byte offset {off} needs "
                f"8 bytes for its score and length, found {size - off}"
            )
        score, length = _SCORE_LEN.unpack_from(data, off)
        off += 8
        if length < 0:
            raise TokenizerError(
                f"{where}: corrupt tokenizer.bin: token {i} has negative length {length}"
            )
        if length > max_len:
            raise TokenizerError(
                f"{where}: corrupt tokenizer.bin: token {i} is {length} bytes long, more "
                f"than the header's max_token_length {max_len}"
            )
        if off + length > size:
            raise TokenizerError(
                f"{where}: truncated tokenizer.bin: token {i} needs {length} bytes of "
                f"text at byte offset {off}, found {size - off}"
            )
        pieces.append(bytes(data[off : off + length]))
        scores.append(score)
        off += length
    return max_len, pieces, scores


class _ProtoReader:
    """Minimal reader of the protobuf wire format (enough for ModelProto)."""

    def __init__(self, data: bytes, start: int, end: int, where: str) -> None:
        self.data = data
        self.pos = start
        self.end = end
        self.where = where

    def fail(self, problem: str) -> TokenizerError:
        return TokenizerError(
            f"{self.where}: corrupt sentencepiece .model file: {problem} "
            f"(at byte offset {self.pos})"
        )

    def at_end(self) -> bool:
        return self.pos >= self.end

    def varint(self) -> int:
        result = 0
        shift = 0
        data = self.data
        while True:
            if self.pos >= self.end:
                raise self.fail("truncated varint")
            b = data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift >= 70:
                raise self.fail("varint longer than 10 bytes")

    def tag(self) -> tuple[int, int]:
        key = self.varint()
        field, wire = key >> 3, key & 7
        if field == 0:
            raise self.fail("field number 0")
        return field, wire

    def take(self, n: int) -> int:
        """Advance over n bytes; return the offset they start at."""
        if n < 0 or self.pos + n > self.end:
            raise self.fail(
                f"truncated field: needs {n} bytes, found {self.end - self.pos}"
            )
        start = self.pos
        self.pos += n
        return start

    def length_delimited(self) -> tuple[int, int]:
        n = self.varint()
        start = self.take(n)
        return start, start + n

    def fixed32(self) -> int:
        return self.take(4)

    def skip(self, field: int, wire: int) -> None:
        if wire == 0:
            self.varint()
        elif wire == 1:
            self.take(8)
        elif wire == 2:
            self.length_delimited()
        elif wire == 5:
            self.take(4)
        elif wire == 3:
            # Start group: skip nested fields up to the matching end group. Groups nest as deep
            # as the file says, so a stack, not recursion (5000 levels were a RecursionError).
            open_groups = [field]
            while open_groups:
                if self.at_end():
                    raise self.fail(f"unterminated group (field {open_groups[-1]})")
                f, w = self.tag()
                if w == 4:
                    if f != open_groups[-1]:
                        raise self.fail(f"end group {f} does not match start group {open_groups[-1]}")
                    open_groups.pop()
                elif w == 3:
                    open_groups.append(f)
                else:
                    self.skip(f, w)
        else:
            raise self.fail(f"invalid wire type {wire} for field {field}")

    def sub(self, start: int, end: int) -> "_ProtoReader":
        return _ProtoReader(self.data, start, end, self.where)


def _as_int32(value: int) -> int:
    """Interpret a decoded varint as protobuf int32 (negatives are 64-bit two's complement)."""
    value &= 0xFFFFFFFFFFFFFFFF
    if value >= 1 << 63:
        value -= 1 << 64
    return value


def _load_model(data: bytes, where: str) -> tuple[int, list[bytes], list[float]]:
    """Parse sentencepiece's ModelProto; return (max_token_length, pieces, scores)."""
    top = _ProtoReader(data, 0, len(data), where)
    raw_pieces: list[str] = []
    scores: list[float] = []
    bos, eos = BOS_ID, EOS_ID  # TrainerSpec defaults
    while not top.at_end():
        field, wire = top.tag()
        if field == 1 and wire == 2:  # repeated SentencePiece pieces
            start, end = top.length_delimited()
            msg = top.sub(start, end)
            text = ""
            score = 0.0
            while not msg.at_end():
                f, w = msg.tag()
                if f == 1 and w == 2:
                    s, e = msg.length_delimited()
                    try:
                        text = data[s:e].decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise msg.fail(
                            f"piece {len(raw_pieces)} is not valid UTF-8 ({exc.reason})"
                        ) from None
                elif f == 2 and w == 5:
                    (score,) = _FLOAT32.unpack_from(data, msg.fixed32())
                else:  # type (3) and anything else; the type does not change the mapping
                    msg.skip(f, w)
            raw_pieces.append(text)
            scores.append(score)
        elif field == 2 and wire == 2:  # TrainerSpec: read bos_id (41) / eos_id (42)
            start, end = top.length_delimited()
            spec = top.sub(start, end)
            while not spec.at_end():
                f, w = spec.tag()
                if f in (41, 42) and w == 0:
                    value = _as_int32(spec.varint())
                    if f == 41:
                        bos = value
                    else:
                        eos = value
                else:
                    spec.skip(f, w)
        else:
            top.skip(field, wire)
    pieces = _spm_pieces(raw_pieces, bos, eos)
    max_len = max((len(p) for p in pieces), default=0)
    return max_len, pieces, scores


def _spm_pieces(raw_pieces: Iterable[str], bos_id: int | None, eos_id: int | None) -> list[bytes]:
    """Sentencepiece pieces as llama2.c's tokenizer.py ``export()`` writes them: the BOS piece
    becomes ``"\\n<s>\\n"``, the EOS piece ``"\\n</s>\\n"``, and ``'\u2581'`` becomes ``' '`` in
    every other piece (UTF-8 encoded). The one place this mapping is made, for a
    tokenizer.model and for a vocabulary stored in a GGUF file alike."""
    pieces: list[bytes] = []
    for i, text in enumerate(raw_pieces):
        if i == bos_id:
            piece = _BOS_PIECE
        elif i == eos_id:
            piece = _EOS_PIECE
        else:
            piece = text.replace(_SPM_SPACE, " ").encode("utf-8")
        pieces.append(piece)
    return pieces


def _looks_like_model(data: bytes) -> bool:
    """True if data is a protobuf (sentencepiece .model) rather than a tokenizer.bin.

    A ModelProto starts with the tag 0x0A (field 1, length-delimited).  A tokenizer.bin
    starts with its int32 max_token_length, whose first byte may also be 0x0A (e.g. 10),
    but then its third byte is 0 for any length below 65536; in a protobuf that byte is
    either a varint continuation or a tag, and never 0.
    """
    return len(data) >= 3 and data[0] == 0x0A and data[2] != 0


# ---------------------------------------------------------------------------
# the tokenizer


def _parse_byte_piece(piece: bytes) -> int | None:
    """Return N if piece starts like run.c's ``sscanf(piece, "<0x%02hhX>")`` match."""
    if not piece.startswith(b"<0x"):
        return None
    digits = piece[3:5]
    n = 0
    while n < len(digits) and chr(digits[n]) in "0123456789abcdefABCDEF":
        n += 1
    if n == 0:
        return None
    return int(digits[:n], 16)


class Tokenizer:
    """llama2.c's BPE tokenizer, loaded from a ``tokenizer.bin`` or ``tokenizer.model``.

    ``Tokenizer(path)`` of a byte-level BPE file (Llama 3's tiktoken ``tokenizer.model``, or a
    HuggingFace ``tokenizer.json``) returns a :class:`llama2rs.bpe.ByteLevelTokenizer` instead.

    Args:
        path: the tokenizer file, in any of these formats (detected by content).
        vocab_size: if given, the file must hold exactly this many tokens
            (e.g. the model's ``vocab_size``); otherwise all tokens in the file are read.

    Raises:
        TokenizerError: the file is missing, unreadable, empty, truncated, corrupt,
            or does not hold ``vocab_size`` tokens.
    """

    def __new__(cls, path: str | os.PathLike[str], vocab_size: int | None = None) -> Tokenizer:
        # Recognised by content: Llama 3's tokenizer.model is tiktoken text, and HuggingFace's
        # tokenizer.json is JSON, both byte-level BPEs.
        if cls is Tokenizer:
            head = read_file(os.fspath(path), limit=256)
            from .bpe import ByteLevelTokenizer, looks_like_tokenizer_json

            if looks_like_tiktoken(head) or looks_like_tokenizer_json(head):
                return ByteLevelTokenizer(path, vocab_size)  # type: ignore[return-value]
        return super().__new__(cls)

    def __init__(self, path: str | os.PathLike[str], vocab_size: int | None = None) -> None:
        self._path = os.fspath(path)
        self._load(read_file(self._path), repr(self._path), vocab_size)

    @classmethod
    def from_bytes(cls, data: bytes, vocab_size: int | None = None, name: str = "<bytes>") -> "Tokenizer":
        """A tokenizer from the contents of a tokenizer.bin or tokenizer.model file (e.g. the
        copy stored inside a llama2rs model file). ``name`` is used in error messages."""
        self = object.__new__(cls)
        self._path = name
        self._load(bytes(data), repr(name), vocab_size)
        return self

    def to_bin_bytes(self) -> bytes:
        """This vocabulary in llama2.c's tokenizer.bin encoding (how llama2rs files store it)."""
        parts = [struct.pack("<i", self._max_token_length)]
        for piece, score in zip(self._pieces, self._scores):
            parts.append(struct.pack("<fi", score, len(piece)))
            parts.append(piece)
        return b"".join(parts)

    @classmethod
    def from_pieces(
        cls,
        pieces: Sequence[str],
        scores: Sequence[float],
        bos_id: int | None = BOS_ID,
        eos_id: int | None = EOS_ID,
        vocab_size: int | None = None,
        name: str = "<pieces>",
        format: str = "pieces",
    ) -> "Tokenizer":
        """A tokenizer from a sentencepiece vocabulary given as its pieces (``'▁'`` for
        spaces, as in a tokenizer.model or a GGUF file's ``tokenizer.ggml.tokens``) and their
        scores. The pieces are mapped as llama2.c's export does (the same mapping a
        tokenizer.model gets: the ``bos_id`` piece becomes ``"\\n<s>\\n"``, the ``eos_id``
        piece ``"\\n</s>\\n"``, ``'▁'`` becomes ``' '``); ``None`` maps no piece.
        Encoding still uses run.c's fixed BOS 1 and EOS 2. ``name`` is used in error
        messages and as :attr:`path`; ``format`` becomes :attr:`format`.

        Raises:
            TokenizerError: no pieces, a piece that is not a str, a scores list of another
                length, or not ``vocab_size`` pieces.
        """
        where = repr(name)
        texts = list(pieces)
        values = list(scores)
        if len(values) != len(texts):
            raise TokenizerError(f"{where}: {len(texts)} pieces but {len(values)} scores")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TokenizerError(f"{where}: piece {i} is a {type(text).__name__}, not a str")
        try:
            mapped = _spm_pieces(texts, bos_id, eos_id)
        except UnicodeEncodeError as exc:
            raise TokenizerError(f"{where}: a piece cannot be encoded as UTF-8 ({exc.reason})") from None
        # scores are stored as float32 (as in every tokenizer file), so round them alike
        try:
            rounded = list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))
        except (struct.error, OverflowError, TypeError) as exc:
            raise TokenizerError(f"{where}: a score is not a float32 number ({exc})") from None
        self = object.__new__(cls)
        self._path = name
        self._format = format
        self._set_vocab(max((len(p) for p in mapped), default=0), mapped, rounded, where, vocab_size)
        return self

    def _load(self, data: bytes, where: str, vocab_size: int | None) -> None:
        if not data:
            raise TokenizerError(f"{where}: tokenizer file is empty (0 bytes)")
        if _looks_like_model(data):
            self._format = "model"
            max_len, pieces, scores = _load_model(data, where)
        else:
            self._format = "bin"
            max_len, pieces, scores = _load_bin(data, where)
        self._set_vocab(max_len, pieces, scores, where, vocab_size)

    def _set_vocab(
        self, max_len: int, pieces: list[bytes], scores: list[float], where: str, vocab_size: int | None
    ) -> None:
        if not pieces:
            raise TokenizerError(f"{where}: tokenizer file holds no tokens")
        if vocab_size is not None and len(pieces) != vocab_size:
            raise TokenizerError(
                f"{where}: vocab_size mismatch: expected {vocab_size} tokens, "
                f"found {len(pieces)} in the file"
            )
        self._pieces: list[bytes] = pieces
        self._scores: list[float] = scores
        self._max_token_length = max_len
        # piece -> id; on duplicates the lowest id wins (run.c's bsearch is unspecified)
        lookup: dict[bytes, int] = {}
        for i, p in enumerate(pieces):
            lookup.setdefault(p, i)
        self._lookup = lookup
        # what run.c's decode() yields for each id, after a non-BOS / after BOS
        out: list[bytes] = []
        out_after_bos: list[bytes] = []
        for p in pieces:
            byte = _parse_byte_piece(p)
            out.append(p if byte is None else bytes((byte,)))
            stripped = p[1:] if p.startswith(b" ") else p
            byte = _parse_byte_piece(stripped)
            out_after_bos.append(stripped if byte is None else bytes((byte,)))
        for special in (BOS_ID, EOS_ID):
            if special < len(pieces):
                out[special] = out_after_bos[special] = b""
        self._out = out
        self._out_after_bos = out_after_bos
        self._merger = _core.ScoreBpe(pieces, scores)  # the merging, in the core (GIL released)

    # -- properties -------------------------------------------------------

    @property
    def path(self) -> str:
        """The file this tokenizer was loaded from."""
        return self._path

    @property
    def format(self) -> str:
        """``"bin"`` (llama2.c tokenizer.bin), ``"model"`` (sentencepiece), or what
        :meth:`from_pieces` was given (``"gguf"`` for a GGUF file's vocabulary)."""
        return self._format

    @property
    def vocab_size(self) -> int:
        """Number of tokens."""
        return len(self._pieces)

    @property
    def bos_id(self) -> int:
        """Beginning-of-sequence token id (always 1, as in run.c)."""
        return BOS_ID

    @property
    def eos_id(self) -> int:
        """End-of-sequence token id (always 2, as in run.c)."""
        return EOS_ID

    @property
    def max_token_length(self) -> int:
        """Longest piece in bytes (for a .bin: the value stored in its header)."""
        return self._max_token_length

    @property
    def scores(self) -> tuple[float, ...]:
        """Merge score (a float32 value) of every token, indexed by id."""
        return tuple(self._scores)

    @property
    def pieces(self) -> tuple[bytes, ...]:
        """Raw piece bytes of every token, as stored in llama2.c's tokenizer.bin."""
        return tuple(self._pieces)

    def __len__(self) -> int:
        return len(self._pieces)

    def __repr__(self) -> str:
        return f"Tokenizer({self._path!r}, vocab_size={len(self._pieces)})"

    # -- lookups ----------------------------------------------------------

    def _check_id(self, token: int) -> int:
        token = operator.index(token)
        if not 0 <= token < len(self._pieces):
            raise InvalidTokenError(
                f"token id {token} is out of range for vocab_size {len(self._pieces)} "
                f"(valid ids are 0..{len(self._pieces) - 1})"
            )
        return token

    def id_to_piece(self, id: int) -> str:
        """The piece of token ``id`` as text (llama2.c form: ``' '`` for ``'▁'``).

        Raises:
            InvalidTokenError: ``id`` is not in ``[0, vocab_size)``.
        """
        return self._pieces[self._check_id(id)].decode("utf-8", errors="replace")

    def piece_to_id(self, piece: str) -> int | None:
        """The id of ``piece`` (llama2.c form), or ``None`` if it is not in the vocabulary.

        If a piece occurs more than once, the lowest id is returned.
        """
        return self._lookup.get(piece.encode("utf-8", errors="surrogatepass"))

    # -- encoding ---------------------------------------------------------

    def encode(self, text: str | bytes, bos: bool = True, eos: bool = False) -> list[int]:
        """Encode text to token ids exactly as llama2.c's ``encode()`` does.

        The steps: optional BOS (1); a dummy-prefix ``" "`` token if ``text`` is not
        empty; one token per UTF-8 codepoint, or one byte token (``byte + 3``) per byte
        of a codepoint that is not in the vocabulary; then, repeatedly, the adjacent
        pair whose concatenation is a piece with the highest score is merged (the
        leftmost such pair on ties); finally an optional EOS (2).

        Args:
            text: the text; ``bytes`` are taken as its raw UTF-8 encoding (invalid
                sequences are handled as run.c handles them).
            bos: prepend the BOS token.
            eos: append the EOS token.

        Raises:
            TokenizerError: the text needs a byte-fallback token the vocabulary lacks.
        """
        if isinstance(text, str):
            # A lone surrogate has no UTF-8: it becomes "?", as Python's encode(errors="replace")
            # writes it (and as the byte-level tokenizers do).
            raw = text.encode("utf-8", errors="replace")
        elif isinstance(text, (bytes, bytearray, memoryview)):
            raw = bytes(text)
        else:
            raise TypeError(f"encode() expects str or bytes, not {type(text).__name__}")

        tokens: list[int] = self._merger.encode(raw, bos)
        if eos:
            tokens.append(EOS_ID)
        return tokens

    # -- decoding ---------------------------------------------------------

    def piece_bytes(self, prev_id: int | None, id: int) -> bytes:
        """The bytes run.c's ``decode(prev_id, id)`` produces for one step.

        A piece right after BOS (``prev_id == 1``) loses its leading space; byte
        pieces ``<0xNN>`` become the raw byte; BOS and EOS give ``b""``.
        ``prev_id`` may be ``None`` (no previous token).

        Raises:
            InvalidTokenError: ``id`` is not in ``[0, vocab_size)``.
        """
        id = self._check_id(id)
        if prev_id == BOS_ID:
            return self._out_after_bos[id]
        return self._out[id]

    def decode_bytes(self, ids: Iterable[int], prev_id: int | None = None) -> bytes:
        """Like :meth:`decode`, but return the raw bytes (possibly not valid UTF-8)."""
        out = self._out
        after_bos = self._out_after_bos
        parts: list[bytes] = []
        prev = prev_id
        for token in ids:
            token = self._check_id(token)
            parts.append(after_bos[token] if prev == BOS_ID else out[token])
            prev = token
        return b"".join(parts)

    def decode(self, ids: Iterable[int], prev_id: int | None = None) -> str:
        """Decode token ids to text, following run.c's ``decode()``.

        BOS and EOS are skipped; the piece right after a BOS loses its leading space
        (the dummy prefix); ``<0xNN>`` pieces become raw bytes; the bytes are then
        decoded as UTF-8 with ``errors="replace"``.  So
        ``decode(encode(s)) == s`` for any string ``s`` without lone surrogates (which encode as
        ``"?"``).

        Args:
            ids: token ids (any iterable of ints, e.g. a list or a numpy array).
            prev_id: the token that precedes ``ids[0]``, if any (pass 1 when ``ids``
                follow a BOS that is not included).

        Raises:
            InvalidTokenError: an id is not in ``[0, vocab_size)``.
        """
        return self.decode_bytes(ids, prev_id).decode("utf-8", errors="replace")

    def stream(self, prev_id: int | None = BOS_ID) -> StreamDecoder:
        """A :class:`StreamDecoder` that starts after token ``prev_id`` (default BOS)."""
        return StreamDecoder(self, prev_id)
