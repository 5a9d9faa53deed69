"""``llama2rs serve``: an OpenAI-compatible HTTP server over one mapped model, with batched
decoding (``pip install "llama2rs[server]"``: FastAPI, uvicorn, sse-starlette, jinja2).

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (server-sent events when
``stream``), ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text) and ``GET /``
(a chat page). Requests share one :class:`~llama2rs.engine.Engine`: up to ``parallel`` are
decoded together, ``queue`` more wait, and past that a request gets 503 with ``Retry-After``.
Bad input gets 400 with OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``.
A streaming client that disconnects frees its slot at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from importlib import resources
from typing import Any, AsyncIterator, List, Optional, Union

from .completion import (
    CHAT_DEFAULTS, COMPLETION_DEFAULTS, TextAssembler, chat_chunks, chat_completion_dict, check_max_tokens, check_stop, chunk_dict, completion_chunks,
    completion_result, new_id, sampling_params,
)
from .engine import Engine, QueueFullError, Request, TokenEvent
from .errors import ArgumentError, ContextLengthError, Llama2rsError

try:
    from fastapi import FastAPI, Request as HttpRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from pydantic import BaseModel, ConfigDict, Field
    from sse_starlette.sse import EventSourceResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"llama2rs serve needs the server extra: pip install 'llama2rs[server]' ({exc})") from None

__all__ = ["create_app", "serve", "uvicorn_config"]

#: Seconds a client is told to wait (Retry-After) when the queue is full.
RETRY_AFTER_SECONDS = 1
#: What ``--api-key`` leaves open: the health check, and the chat page (static; it asks for the
#: key and sends it with its API calls, which a browser's navigation to ``/`` cannot).
OPEN_ROUTES = ("/health", "/")
#: The largest request body accepted (413 beyond), and how long a client may take to send it
#: (408 beyond): a slow or oversized upload cannot hold a worker.
MAX_BODY_BYTES = 1 << 20
BODY_TIMEOUT_SECONDS = 10.0
#: Connections served at once (uvicorn answers 503 beyond) and how long an idle one stays open.
MAX_CONNECTIONS = 512
KEEP_ALIVE_SECONDS = 5


class BodyLimit:
    """ASGI middleware: a request body larger than ``max_bytes`` gets 413, and one that does not
    arrive within ``timeout`` seconds gets 408, before any route reads it."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES, timeout: float = BODY_TIMEOUT_SECONDS) -> None:
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _send_error(send, 413, f"the request body is {int(declared)} bytes; the limit is {self.max_bytes}")
            return
        messages, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                await _send_error(send, 408, f"the request body did not arrive within {self.timeout:g} s")
                return
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await _send_error(send, 413, f"the request body is over the limit of {self.max_bytes} bytes")
                return
            if not message.get("more_body"):
                break
        replay = iter(messages)

        async def replayed() -> Any:
            try:
                return next(replay)
            except StopIteration:
                return await receive()  # e.g. http.disconnect, later

        await self.app(scope, replayed, send)


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps(_error_body(message, "invalid_request_error", None)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------
# request bodies: types only; ranges are checked by the library, as for Python callers


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: Optional[str] = None
    temperature: float = COMPLETION_DEFAULTS.temperature
    top_p: float = COMPLETION_DEFAULTS.top_p
    top_k: int = COMPLETION_DEFAULTS.top_k
    min_p: float = COMPLETION_DEFAULTS.min_p
    repeat_penalty: float = COMPLETION_DEFAULTS.repeat_penalty
    presence_penalty: float = COMPLETION_DEFAULTS.presence_penalty
    frequency_penalty: float = COMPLETION_DEFAULTS.frequency_penalty
    seed: Optional[int] = None
    stop: Union[str, List[str], None] = None
    stream: bool = False
    n: int = 1
    user: Optional[str] = None
    ignore_eos: bool = False  # vLLM's extension: generate past the stop ids (benchmarks)


class CompletionBody(_Sampling):
    prompt: Union[str, List[int], List[str]]
    max_tokens: Optional[int] = 16
    logprobs: Optional[int] = None
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: str
    content: Union[str, List[dict]]


class ChatBody(_Sampling):
    messages: List[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    temperature: float = CHAT_DEFAULTS.temperature


# ---------------------------------------------------------------------------------------------
# errors in OpenAI's shape


def _error_body(message: str, kind: str, param: Optional[str]) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _error(status: int, message: str, kind: str = "invalid_request_error", param: Optional[str] = None,
           headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse(_error_body(message, kind, param), status_code=status, headers=headers)


class _HttpError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, kind: str = "invalid_request_error",
                 headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers


def _library_error(exc: Llama2rsError, param: Optional[str]) -> _HttpError:
    if isinstance(exc, QueueFullError):
        return _HttpError(503, f"the server is busy: {exc}", None, "server_busy",
                          {"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, ContextLengthError):
        return _HttpError(400, str(exc), param, "context_length_exceeded")
    return _HttpError(400, str(exc), param)


# ---------------------------------------------------------------------------------------------
# the app


class _Metrics:
    """Token throughput over the last ``window`` seconds, from the engine's counters."""

    def __init__(self, engine: Engine, window: float = 10.0) -> None:
        self.engine, self.window = engine, window
        self.samples: list[tuple[float, int]] = []

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        self.samples.append((now, self.engine.tokens_total))
        self.samples = [s for s in self.samples if now - s[0] <= self.window]
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def create_app(model: Any, model_name: Optional[str] = None, parallel: int = 8, queue: int = 64,
               api_key: Optional[str] = None, chat_template: Optional[str] = None,
               prefill_chunk: int = 64, max_body_bytes: int = MAX_BODY_BYTES,
               body_timeout: float = BODY_TIMEOUT_SECONDS) -> "FastAPI":
    """The server's ASGI app over ``model`` (a :class:`llama2rs.Model` with a tokenizer)."""
    tokenizer = model._require_tokenizer()
    template = model.chat_template(chat_template)  # a bad --chat-template fails at start
    name = model_name or model.path.name
    engine = Engine(model._core, parallel=parallel, queue=queue, prefill_chunk=prefill_chunk)
    metrics = _Metrics(engine)
    http_requests = {"total": 0, "errors": 0}
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()

    app = FastAPI(title="llama2rs", version="1", lifespan=lifespan)
    app.state.engine = engine

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        http_requests["errors"] += 1
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return _error(400, f"the request body is not valid JSON: {first.get('msg')}")
        where = ".".join(loc) or None
        return _error(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", param=where)

    @app.exception_handler(_HttpError)
    async def _http_error(request: HttpRequest, exc: _HttpError) -> JSONResponse:
        http_requests["errors"] += 1
        return _error(exc.status, exc.message, exc.kind, exc.param, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: HttpRequest, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), "invalid_request_error" if exc.status_code < 500 else "server_error")

    @app.middleware("http")
    async def _authorize(request: HttpRequest, call_next: Any) -> Any:
        http_requests["total"] += 1
        if api_key and request.url.path not in OPEN_ROUTES:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, b"Bearer " + api_key.encode()):  # constant time
                http_requests["errors"] += 1
                return _error(401, "invalid or missing API key (Authorization: Bearer KEY)", "authentication_error")
        return await call_next(request)

    @app.exception_handler(Exception)
    async def _unexpected(request: HttpRequest, exc: Exception) -> JSONResponse:
        # Logged here; the client gets no stack trace, only that it was our fault.
        logging.getLogger("llama2rs.server").exception("unexpected error on %s", request.url.path)
        http_requests["errors"] += 1
        return _error(500, "internal server error", "server_error")

    def _check_common(body: _Sampling) -> None:
        if body.n != 1:
            raise _HttpError(400, "n must be 1 (one choice per request)", "n")
        if body.model is not None and body.model != name:
            raise _HttpError(404, f"the model {body.model!r} does not exist; this server runs {name!r}", "model",
                             "not_found_error")

    def _prepare(ids: List[int], body: _Sampling, max_tokens: Optional[int], logprobs: int,
                 prompt_param: str) -> tuple[TextAssembler, Any, int]:
        try:
            params = sampling_params(body.temperature, body.top_p, body.top_k, body.min_p, body.repeat_penalty,
                                     body.presence_penalty, body.frequency_penalty, body.seed, logprobs)
            stops = check_stop(body.stop)
            if len(ids) >= model.config.seq_len:
                raise ContextLengthError(f"the prompt is {len(ids)} tokens but the context length is "
                                         f"{model.config.seq_len}, which leaves no room to generate")
            max_new = check_max_tokens(max_tokens, len(ids), model.config.seq_len)
        except ContextLengthError as exc:
            raise _library_error(exc, prompt_param) from None
        except Llama2rsError as exc:
            param = str(exc).split(" ", 1)[0] if isinstance(exc, ArgumentError) else None
            raise _library_error(exc, param) from None
        return TextAssembler(tokenizer, ids[-1], stops), params, max_new

    def _submit(ids: List[int], params: Any, max_new: int, ignore_eos: bool) -> tuple[Request, asyncio.Queue]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent] = asyncio.Queue()

        def sink(event: TokenEvent) -> None:  # called on the engine's thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            handle = engine.submit(ids, params, max_new, () if ignore_eos else model.stop_ids, sink=sink)
        except Llama2rsError as exc:
            raise _library_error(exc, None) from None
        return handle, events

    async def _pieces(assembler: TextAssembler, events: asyncio.Queue, handle: Request,
                      http: HttpRequest) -> AsyncIterator[Any]:
        """The request's pieces; a client that leaves cancels it (checked while waiting)."""
        try:
            while assembler.finish_reason is None:
                try:
                    event = await asyncio.wait_for(events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await http.is_disconnected():
                        return
                    continue
                try:
                    piece = assembler.feed(event)
                except Llama2rsError as exc:  # the engine failed this request (not its input)
                    raise _HttpError(500, str(exc), None, "server_error") from None
                if piece is not None:
                    yield piece
        finally:
            if assembler.finish_reason is None:
                handle.cancel()

    def _sse(chunks: AsyncIterator[dict]) -> EventSourceResponse:
        async def events() -> AsyncIterator[str]:
            try:
                async for chunk in chunks:
                    yield json.dumps(chunk)
            except _HttpError as exc:  # after the headers went out: an error event ends the stream
                yield json.dumps(_error_body(exc.message, exc.kind, exc.param))
                return
            yield "[DONE]"

        return EventSourceResponse(events(), ping=15)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, http: HttpRequest) -> Any:
        _check_common(body)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise _HttpError(400, "only one prompt per request", "prompt")
            prompt = prompt[0]
        try:
            ids = model._prompt_ids(prompt)
        except Llama2rsError as exc:
            raise _library_error(exc, "prompt") from None
        logprobs = body.logprobs or 0
        assembler, params, max_new = _prepare(ids, body, body.max_tokens, logprobs, "prompt")
        handle, events = _submit(ids, params, max_new, body.ignore_eos)
        echo_text = tokenizer.decode(ids) if body.echo else ""
        cid = new_id("cmpl")
        pieces = _pieces(assembler, events, handle, http)
        if body.stream:
            async def chunks() -> AsyncIterator[dict]:
                if echo_text:
                    yield chunk_dict(cid, name, echo_text, None)
                async for piece in pieces:
                    for chunk in completion_chunks(cid, name, [piece], "", bool(logprobs)):
                        yield chunk

            return _sse(chunks())
        collected = [piece async for piece in pieces]
        return completion_result(cid, name, collected, len(ids), assembler.completion_tokens, echo_text,
                                 bool(logprobs))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, http: HttpRequest) -> Any:
        _check_common(body)
        messages = [m.model_dump() for m in body.messages]
        try:
            ids = template.apply(tokenizer, messages)
        except Llama2rsError as exc:
            raise _library_error(exc, "messages") from None
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        assembler, params, max_new = _prepare(ids, body, max_tokens, 0, "messages")
        handle, events = _submit(ids, params, max_new, body.ignore_eos)
        cid = new_id("chatcmpl")
        pieces = _pieces(assembler, events, handle, http)
        if body.stream:
            async def chunks() -> AsyncIterator[dict]:
                first = True
                async for piece in pieces:
                    for chunk in chat_chunks(cid, name, [piece]):
                        if chunk["choices"][0]["delta"] == {"role": "assistant"} and not first:
                            continue  # the role goes in the first chunk only
                        first = False
                        yield chunk

            return _sse(chunks())
        collected = [piece async for piece in pieces]
        reason = collected[-1].finish_reason if collected else "length"
        return chat_completion_dict(cid, name, "".join(p.text for p in collected), reason, len(ids),
                                    assembler.completion_tokens)

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": int(time.time()),
                                            "owned_by": "llama2rs"}]}

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "model": name, "active": engine.active, "waiting": engine.waiting}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        lines = []
        for metric, kind, help_text, value in (
            ("llama2rs_http_requests_total", "counter", "HTTP requests received", http_requests["total"]),
            ("llama2rs_http_errors_total", "counter", "HTTP requests answered with an error", http_requests["errors"]),
            ("llama2rs_requests_total", "counter", "Generation requests accepted", engine.requests_total),
            ("llama2rs_tokens_generated_total", "counter", "Tokens generated", engine.tokens_total),
            ("llama2rs_steps_total", "counter", "Batched decoding steps", engine.steps_total),
            ("llama2rs_queue_depth", "gauge", "Requests waiting for a slot", engine.waiting),
            ("llama2rs_active_sequences", "gauge", "Sequences in the batch", engine.active),
            ("llama2rs_batch_size", "gauge", "Sequences in the last step", engine.last_batch_size),
            ("llama2rs_tokens_per_second", "gauge", "Tokens generated per second over the last 10 s",
             round(metrics.tokens_per_second(), 3)),
        ):
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}", f"{metric} {value}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    async def chat_page() -> Any:
        return HTMLResponse(resources.files("llama2rs").joinpath("static/chat.html").read_text(encoding="utf-8"))

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, timeout=body_timeout)
    return app


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model: Any, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Run the server until interrupted or SIGTERM (loopback only unless ``host`` says
    otherwise). On shutdown, streams in flight are finished as cancelled within a few seconds."""
    import sys

    import uvicorn

    if not is_loopback(host) and not options.get("api_key"):
        print(f"llama2rs serve: warning: listening on {host}, beyond this machine, without --api-key: anyone who "
              "can reach the port can use the model", file=sys.stderr)
    app = create_app(model, **options)
    uvicorn.Server(uvicorn_config(app, host, port)).run()


def uvicorn_config(app: Any, host: str, port: int, log_level: str = "info") -> Any:
    """uvicorn's settings for ``app``, with the server's limits on connections and idle time."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, limit_concurrency=MAX_CONNECTIONS,
                          timeout_keep_alive=KEEP_ALIVE_SECONDS, timeout_graceful_shutdown=10)
