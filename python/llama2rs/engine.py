"""Many sequences over one mapped model: the core's continuous-batching decoder driven from a
background thread.

An :class:`Engine` admits up to ``parallel`` sequences into one batch; each step advances all of
them with one pass over the weights (``_core.BatchDecoder``, GIL released). Further requests
wait in a queue of at most ``queue`` entries; past that, :meth:`Engine.submit` raises
:class:`QueueFullError`. Each request is a stream of :class:`TokenEvent` ending with one whose
``finish_reason`` is set (``"stop"``: a stop id; ``"length"``: ``max_tokens`` or a full context;
``"cancelled"``). A request that is cancelled (its client left) frees its slot at the next step.
"""

from __future__ import annotations

import collections
import queue
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, Optional, Sequence

from . import _core
from .errors import ArgumentError, ContextLengthError, Llama2rsError

__all__ = ["Engine", "SamplingParams", "TokenEvent", "Request", "QueueFullError", "solo_events"]


class QueueFullError(Llama2rsError):
    """The engine's queue is full: try again later."""


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence samples (see ``Model.create_completion``); all checked at creation."""

    temperature: float = 0.0
    top_p: float = 0.9
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: Optional[int] = None
    logprobs: int = 0

    def core_args(self, vocab_size: int) -> dict[str, Any]:
        """Keyword arguments of ``_core.BatchDecoder.add`` (a random seed when none is given)."""
        seed = self.seed if self.seed is not None else secrets.randbits(63) | 1
        return {
            "temperature": self.temperature, "top_p": self.top_p, "top_k": min(self.top_k, vocab_size),
            "seed": seed, "repeat_penalty": self.repeat_penalty, "repeat_last_n": self.repeat_last_n,
            "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
            "min_p": self.min_p, "logprobs": self.logprobs,
        }


@dataclass(frozen=True)
class TokenEvent:
    """One sampled token (``token`` None on the final event of a request that ends without
    one), its log-probability and the most likely alternatives when asked for, and why the
    request ended, on its last event."""

    token: Optional[int]
    logprob: Optional[float] = None
    top_logprobs: Optional[list[tuple[int, float]]] = None
    finish_reason: Optional[str] = None
    error: Optional[Llama2rsError] = None  # with finish_reason "error": what ended the request


Sink = Callable[[TokenEvent], None]


@dataclass(eq=False)
class Request:
    """A submitted sequence. Iterate it (blocking) for its events, or give the engine a
    ``sink`` that receives them (e.g. one that hands them to an asyncio loop)."""

    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    stop_ids: frozenset[int]
    sink: Optional[Sink] = None
    generated: int = 0
    cancelled: bool = False
    _queue: "queue.SimpleQueue[TokenEvent]" = field(default_factory=queue.SimpleQueue)

    def emit(self, event: TokenEvent) -> None:
        (self.sink or self._queue.put)(event)

    def cancel(self) -> None:
        """Stop generating: the slot is freed at the engine's next step."""
        self.cancelled = True

    def __iter__(self) -> Iterator[TokenEvent]:
        """The events, blocking; an event carrying an error raises it."""
        while True:
            event = self._queue.get()
            if event.error is not None:
                raise event.error
            yield event
            if event.finish_reason is not None:
                return


def _finish(request: Request, token: Optional[int], context_full: bool) -> Optional[str]:
    """Why a request ends after sampling ``token``, or None if it goes on."""
    if token is not None and token in request.stop_ids:
        return "stop"
    if request.generated >= request.max_tokens or context_full:
        return "length"
    return None


def _check_prompt(prompt: Sequence[int], seq_len: int) -> list[int]:
    ids = list(prompt)
    if not ids:
        raise ArgumentError("the prompt is empty: it needs at least one token (BOS)")
    if len(ids) >= seq_len:
        raise ContextLengthError(f"the prompt is {len(ids)} tokens but the context length (seq_len) is {seq_len}, "
                                 "which leaves no room to generate")
    return ids


def solo_events(core_model: Any, prompt: Sequence[int], params: SamplingParams, max_tokens: int,
                stop_ids: frozenset[int], prefill_chunk: int = 64) -> Iterator[TokenEvent]:
    """One sequence on a batch decoder of its own, stepped in the caller's thread: what
    ``Model.create_completion`` runs. The prompt is checked before this returns."""
    config = core_model.config
    ids = _check_prompt(prompt, config["seq_len"])
    decoder = _core.BatchDecoder(core_model, prefill_chunk)
    decoder.add(ids, **params.core_args(config["vocab_size"]))
    request = Request(ids, params, max_tokens, stop_ids)

    def run() -> Iterator[TokenEvent]:
        if max_tokens == 0:
            yield TokenEvent(None, finish_reason="length")
            return
        while True:
            for _, token, logprob, top, context_full in decoder.step():
                request.generated += 1
                reason = _finish(request, token, context_full)
                if reason == "stop":
                    yield TokenEvent(None, finish_reason="stop")  # the stop token is not text
                    return
                yield TokenEvent(token, logprob, top, reason)
                if reason is not None:
                    return

    return run()


class Engine:
    """Batched decoding for many callers over one model (see the module doc).

    ``parallel``: sequences decoded together; ``queue``: requests that may wait beyond them;
    ``prefill_chunk``: prompt tokens fed per step (across all new sequences), so running
    streams keep going while a long prompt is read.
    """

    def __init__(self, core_model: Any, parallel: int = 8, queue: int = 64, prefill_chunk: int = 64) -> None:
        for name, value, low in (("parallel", parallel, 1), ("queue", queue, 0), ("prefill_chunk", prefill_chunk, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ArgumentError(f"{name} must be an integer >= {low}, got {value!r}")
        self._model = core_model
        self._config = core_model.config
        self.parallel, self.queue_size = parallel, queue
        self._decoder = _core.BatchDecoder(core_model, prefill_chunk)
        self._waiting: Deque[Request] = collections.deque()
        self._active: Dict[int, Request] = {}
        self._lock = threading.Condition()
        self._closed = False
        # Counters for /metrics.
        self.requests_total = 0
        self.tokens_total = 0
        self.steps_total = 0
        self.last_batch_size = 0
        self._thread = threading.Thread(target=self._run, name="llama2rs-engine", daemon=True)
        self._thread.start()

    # -- callers ----------------------------------------------------------------------------

    def submit(self, prompt: Sequence[int], params: SamplingParams, max_tokens: int,
               stop_ids: Sequence[int] = (), sink: Optional[Sink] = None) -> Request:
        """Queue a sequence; raises :class:`QueueFullError` when ``queue`` requests already
        wait, and the core's errors for a bad prompt or bad sampling arguments."""
        ids = _check_prompt(prompt, self._config["seq_len"])
        # Checked now, in the caller's thread: the same checks the decoder makes at admission.
        _core.BatchDecoder(self._model, 1).add(ids, **params.core_args(self._config["vocab_size"]))
        request = Request(ids, params, max_tokens, frozenset(stop_ids), sink)
        with self._lock:
            if self._closed:
                raise ArgumentError("the engine is closed")
            # Counted over both lists, so a request the thread has not admitted yet holds its place.
            if len(self._active) + len(self._waiting) >= self.parallel + self.queue_size:
                raise QueueFullError(f"{self.parallel} requests are running and {self.queue_size} waiting already "
                                     f"(--parallel {self.parallel}, --queue {self.queue_size})")
            self._waiting.append(request)
            self.requests_total += 1
            self._lock.notify()
        return request

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        """Finish every request as cancelled and stop the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=30)

    # -- the engine thread ------------------------------------------------------------------

    def _admit(self) -> None:
        while self._waiting and len(self._active) < self.parallel:
            request = self._waiting.popleft()
            if request.cancelled:
                request.emit(TokenEvent(None, finish_reason="cancelled"))
                continue
            if request.max_tokens == 0:
                request.emit(TokenEvent(None, finish_reason="length"))
                continue
            try:
                seq = self._decoder.add(request.prompt, **request.params.core_args(self._config["vocab_size"]))
            except Llama2rsError:  # checked at submit; kept safe anyway
                request.emit(TokenEvent(None, finish_reason="error"))
                continue
            self._active[seq] = request

    def _fail_active(self, exc: Llama2rsError) -> None:
        """End every running request with `exc`, which its consumer raises; the engine goes on."""
        with self._lock:
            for seq, request in list(self._active.items()):
                self._decoder.remove(seq)
                request.emit(TokenEvent(None, finish_reason="error", error=exc))
            self._active.clear()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._waiting and not self._active:
                    self._lock.wait()
                if self._closed:
                    for request in list(self._active.values()) + list(self._waiting):
                        request.emit(TokenEvent(None, finish_reason="cancelled"))
                    self._active.clear()
                    self._waiting.clear()
                    return
                for seq, request in list(self._active.items()):
                    if request.cancelled:
                        self._decoder.remove(seq)
                        del self._active[seq]
                        request.emit(TokenEvent(None, finish_reason="cancelled"))
                self._admit()
                if not self._active:
                    continue
            try:
                rows = self._decoder.step()  # the GIL is released inside
            except Llama2rsError as exc:  # e.g. corrupt weights: every sequence of the step ends
                self._fail_active(exc)
                continue
            self.steps_total += 1
            self.last_batch_size = len(self._active)
            for seq, token, logprob, top, context_full in rows:
                running = self._active.get(seq)
                if running is None:
                    continue
                request = running
                request.generated += 1
                self.tokens_total += 1
                reason = _finish(request, token, context_full)
                if reason == "stop":
                    request.emit(TokenEvent(None, finish_reason="stop"))
                else:
                    request.emit(TokenEvent(token, logprob, top, reason))
                if reason is not None:
                    with self._lock:
                        self._decoder.remove(seq)
                        del self._active[seq]
