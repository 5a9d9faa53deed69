"""Completions in the shape of llama-cpp-python's and OpenAI's: token events become text pieces,
stop sequences end the text, and results are OpenAI-shaped dicts.

:class:`TextAssembler` is the one state machine behind ``Model.create_completion``,
``Model.create_chat_completion`` and the server, synchronous or not: it decodes tokens without
splitting a UTF-8 character, holds back text that could still become a stop sequence (so
nothing is emitted and then retracted), cuts the text at the first stop sequence, and keeps
each emitted token's log-probabilities.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Sequence

from .engine import SamplingParams, TokenEvent
from .errors import ArgumentError

__all__ = ["COMPLETION_DEFAULTS", "CHAT_DEFAULTS", "SamplingDefaults", "StopMatcher", "TextAssembler", "Piece", "check_stop", "check_max_tokens", "sampling_params",
           "completion_result", "completion_chunks", "chat_chunks", "chat_completion_dict", "new_id"]


@dataclass(frozen=True)
class SamplingDefaults:
    """llama-cpp-python's defaults, which ``Model.create_completion``/``create_chat_completion``
    and the server's request bodies share (one statement of them)."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


COMPLETION_DEFAULTS = SamplingDefaults()
CHAT_DEFAULTS = SamplingDefaults(temperature=0.2)


def check_stop(stop: Any) -> list[str]:
    """``stop`` as a list of non-empty strings (OpenAI allows one string or a list, up to 4;
    we allow 16)."""
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 16:
        raise ArgumentError(f"stop must be a non-empty string or a list of up to 16 of them, got {stop!r}")
    return list(stops)


class StopMatcher:
    """Text in, text out, ending at the first stop sequence: the longest tail that is still
    the start of a stop sequence is held back until it is decided."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """The text that is now certain (``stopped`` turns True at a stop sequence)."""
        if self.stopped:
            return ""
        buffer = self.held + text
        cuts = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped, self.held = True, ""
            return buffer[:min(cuts)]
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buffer)), keep, -1):
                if buffer.endswith(s[:n]):
                    keep = n
                    break
        self.held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[:len(buffer) - keep]

    def flush(self) -> str:
        """At the end of generation: what was held back was no stop sequence after all."""
        text, self.held = ("" if self.stopped else self.held), ""
        return text


@dataclass
class Piece:
    """Text released by :class:`TextAssembler`, with the tokens that completed it (and their
    log-probabilities, when asked for); ``finish_reason`` on the last piece."""

    text: str
    tokens: list[str] = field(default_factory=list)
    logprobs: list[Optional[float]] = field(default_factory=list)
    top_logprobs: list[Optional[dict[str, float]]] = field(default_factory=list)
    finish_reason: Optional[str] = None


class TextAssembler:
    """Token events in, :class:`Piece` s out (see the module doc)."""

    def __init__(self, tokenizer: Any, prev_id: Optional[int], stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.decoder = tokenizer.stream(prev_id=prev_id)
        self.matcher = StopMatcher(stops)
        self.completion_tokens = 0
        self.text_so_far = ""  # emitted text
        # Tokens whose text is not all emitted yet: (token's text, end offset in the decoded text, lp, top).
        self._pending: list[tuple[str, int, Optional[float], Optional[dict[str, float]]]] = []
        self._decoded = 0  # characters decoded so far
        self.finish_reason: Optional[str] = None

    def _text_of(self, token: int) -> str:
        """A token's own text, as OpenAI's logprobs name tokens."""
        return bytes(self.tokenizer.piece_bytes(None, token)).decode("utf-8", errors="replace")

    def _top(self, top: Optional[list[tuple[int, float]]]) -> Optional[dict[str, float]]:
        if top is None:
            return None
        return {self._text_of(t): lp for t, lp in top}

    def _release(self, text: str, final: bool) -> Piece:
        self.text_so_far += text
        emitted = len(self.text_so_far)
        done = [p for p in self._pending if p[1] <= emitted or final and not self.matcher.stopped]
        self._pending = [p for p in self._pending if p not in done]
        return Piece(text, [p[0] for p in done], [p[2] for p in done], [p[3] for p in done])

    def feed(self, event: TokenEvent) -> Optional[Piece]:
        """The piece this event releases (None when it releases nothing)."""
        if self.finish_reason is not None:
            return None
        if event.error is not None:
            raise event.error
        text = ""
        if event.token is not None:
            self.completion_tokens += 1
            decoded = self.decoder.push(event.token)
            self._decoded += len(decoded)
            self._pending.append((self._text_of(event.token), self._decoded, event.logprob,
                                  self._top(event.top_logprobs)))
            text = self.matcher.push(decoded)
            if self.matcher.stopped:
                piece = self._release(text, final=False)
                self._pending.clear()
                piece.finish_reason = self.finish_reason = "stop"
                return piece
        if event.finish_reason is not None:
            text += self.matcher.push(self.decoder.flush())
            if not self.matcher.stopped:
                text += self.matcher.flush()
            piece = self._release(text, final=True)
            reason = "stop" if self.matcher.stopped else event.finish_reason
            piece.finish_reason = self.finish_reason = reason
            return piece
        return self._release(text, final=False) if text else None

    def run(self, events: Iterable[TokenEvent]) -> Iterator[Piece]:
        """Every piece of ``events``, up to and including the one that finishes."""
        for event in events:
            piece = self.feed(event)
            if piece is not None:
                yield piece
            if self.finish_reason is not None:
                return


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def logprobs_dict(pieces: Sequence[Piece], offset0: int) -> dict[str, Any]:
    """OpenAI's legacy completion ``logprobs``: tokens, their text offsets, logprobs, tops."""
    tokens: list[str] = []
    offsets: list[int] = []
    token_logprobs: list[Optional[float]] = []
    tops: list[Optional[dict[str, float]]] = []
    offset = offset0
    for piece in pieces:
        for token, lp, top in zip(piece.tokens, piece.logprobs, piece.top_logprobs):
            tokens.append(token)
            offsets.append(offset)
            token_logprobs.append(lp)
            tops.append(top)
        offset += len(piece.text)
    return {"tokens": tokens, "text_offset": offsets, "token_logprobs": token_logprobs, "top_logprobs": tops}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_dict(id: str, model: str, text: str, finish_reason: Optional[str], prompt_tokens: int,
                    completion_tokens: int, logprobs: Optional[dict[str, Any]]) -> dict[str, Any]:
    return {"id": id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}],
            "usage": _usage(prompt_tokens, completion_tokens)}


def chunk_dict(id: str, model: str, text: str, finish_reason: Optional[str],
               logprobs: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    return {"id": id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}]}


def chat_completion_dict(id: str, model: str, text: str, finish_reason: Optional[str], prompt_tokens: int,
                         completion_tokens: int) -> dict[str, Any]:
    return {"id": id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": _usage(prompt_tokens, completion_tokens)}


def chat_chunk_dict(id: str, model: str, delta: dict[str, str], finish_reason: Optional[str]) -> dict[str, Any]:
    return {"id": id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


# ---------------------------------------------------------------------------------------------
# requests: checked arguments, then results in either shape


_NUMBER_RANGES = {
    "temperature": (0.0, 1e6), "top_p": (0.0, 1.0), "min_p": (0.0, 1.0), "repeat_penalty": (1e-6, 1e6),
    "presence_penalty": (-2.0, 2.0), "frequency_penalty": (-2.0, 2.0),
}


def sampling_params(temperature: Any, top_p: Any, top_k: Any, min_p: Any, repeat_penalty: Any,
                    presence_penalty: Any, frequency_penalty: Any, seed: Any, logprobs: Any) -> SamplingParams:
    """Checked sampling arguments (an :class:`ArgumentError` names the first bad one)."""
    values = {"temperature": temperature, "top_p": top_p, "min_p": min_p, "repeat_penalty": repeat_penalty,
              "presence_penalty": presence_penalty, "frequency_penalty": frequency_penalty}
    for name, value in values.items():
        low, high = _NUMBER_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ArgumentError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    for name, value, high in (("top_k", top_k, 1 << 31), ("logprobs", logprobs or 0, 20)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            raise ArgumentError(f"{name} must be an integer in [0, {high}], got {value!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 64):
        raise ArgumentError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return SamplingParams(float(temperature), float(top_p), int(top_k), float(min_p), float(repeat_penalty), 64,
                          float(presence_penalty), float(frequency_penalty),
                          None if seed is None else (seed or 1),  # llama2.c's generator cannot start at 0
                          int(logprobs or 0))


def check_max_tokens(max_tokens: Any, prompt_len: int, seq_len: int) -> int:
    """``max_tokens`` (None: until the context is full), at most what the context leaves."""
    room = seq_len - prompt_len
    if max_tokens is None or max_tokens == -1:
        return room
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise ArgumentError(f"max_tokens must be a non-negative integer, got {max_tokens!r}")
    return min(max_tokens, room)


def completion_result(id: str, model: str, pieces: list[Piece], prompt_tokens: int, completion_tokens: int,
                      echo_text: str, want_logprobs: bool) -> dict[str, Any]:
    text = echo_text + "".join(p.text for p in pieces)
    reason = pieces[-1].finish_reason if pieces else "length"
    logprobs = logprobs_dict(pieces, len(echo_text)) if want_logprobs else None
    return completion_dict(id, model, text, reason, prompt_tokens, completion_tokens, logprobs)


def completion_chunks(id: str, model: str, pieces: Iterable[Piece], echo_text: str,
                      want_logprobs: bool) -> Iterator[dict[str, Any]]:
    offset = 0
    if echo_text:
        yield chunk_dict(id, model, echo_text, None)
        offset = len(echo_text)
    for piece in pieces:
        logprobs = logprobs_dict([piece], offset) if want_logprobs else None
        offset += len(piece.text)
        yield chunk_dict(id, model, piece.text, piece.finish_reason, logprobs)


def chat_chunks(id: str, model: str, pieces: Iterable[Piece]) -> Iterator[dict[str, Any]]:
    yield chat_chunk_dict(id, model, {"role": "assistant"}, None)
    for piece in pieces:
        if piece.text:
            yield chat_chunk_dict(id, model, {"content": piece.text}, None)
        if piece.finish_reason is not None:
            yield chat_chunk_dict(id, model, {}, piece.finish_reason)
