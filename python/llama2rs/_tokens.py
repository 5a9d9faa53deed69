"""What every tokenizer shares: reading its file, recognising its kind, and streaming its text."""

from __future__ import annotations

import codecs
import operator
import os
import re
import stat
from typing import TYPE_CHECKING, Iterable, Optional

from .errors import TokenizerError

if TYPE_CHECKING:
    from typing import Protocol

    class _PieceSource(Protocol):
        def piece_bytes(self, prev_id: Optional[int], id: int) -> bytes: ...

__all__ = ["BOS_ID", "EOS_ID", "StreamDecoder", "looks_like_tiktoken", "read_file"]

#: Token ids fixed by the Llama 2 sentencepiece vocabulary (and hard-coded in run.c); a
#: sentencepiece piece right after BOS loses its leading space.
BOS_ID = 1
EOS_ID = 2

_TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2} [0-9]+\r?\n")


def read_file(path: str, limit: Optional[int] = None) -> bytes:
    """The bytes of a tokenizer file (the first ``limit`` of them, if given). Only regular
    files: a FIFO would block the open, and a device (/dev/zero) never ends."""
    where = repr(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise TokenizerError(f"{where}: not a regular file: a tokenizer is read from a file")
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except FileNotFoundError:
        raise TokenizerError(f"{where}: tokenizer file not found") from None
    except OSError as exc:
        raise TokenizerError(f"{where}: cannot read tokenizer file: {exc}") from None


def looks_like_tiktoken(data: bytes) -> bool:
    """Whether ``data`` starts as a tiktoken BPE file does (a ``base64-token rank`` line)."""
    return _TIKTOKEN_LINE.match(data[:200]) is not None


class StreamDecoder:
    """Incremental decoder for generated tokens, one token at a time.

    :meth:`push` returns only complete characters: bytes of a multi-byte UTF-8
    character split over several byte tokens are held back until the character is
    complete; sequences that cannot become valid UTF-8 turn into U+FFFD as soon as
    that is certain.  The concatenation of everything :meth:`push` and :meth:`flush`
    return equals ``tokenizer.decode(ids, prev_id=prev_id)``.

    Args:
        tokenizer: the tokenizer whose pieces to use.
        prev_id: the token before the first pushed one (e.g. the last prompt token,
            or 1 right after BOS, which strips the first piece's leading space);
            ``None`` for no previous token.
    """

    def __init__(self, tokenizer: _PieceSource, prev_id: int | None = BOS_ID) -> None:
        self._tokenizer = tokenizer
        self._prev: int | None = None if prev_id is None else operator.index(prev_id)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def prev_id(self) -> int | None:
        """The last token seen (pushed, or given to the constructor)."""
        return self._prev

    def push(self, id: int) -> str:
        """Add one token; return the text it completes (possibly ``""``).

        Raises:
            InvalidTokenError: ``id`` is not in ``[0, vocab_size)``.
        """
        data = self._tokenizer.piece_bytes(self._prev, id)
        self._prev = operator.index(id)
        return self._decoder.decode(data)

    def push_many(self, ids: Iterable[int]) -> str:
        """Push several tokens; return the text they complete."""
        return "".join(self.push(t) for t in ids)

    def flush(self) -> str:
        """End of stream: return held-back bytes (an incomplete character becomes U+FFFD)."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text

