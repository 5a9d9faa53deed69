"""``llama2rs serve`` through the official ``openai`` client, on loopback: completions, streams,
chat, stop sequences, errors, the queue, disconnects and metrics. Bounded in count and time."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any, Iterator

import pytest

import llama2rs
from conftest import STORIES, TOK512, need

openai = pytest.importorskip("openai")
try:  # the openai client's own HTTP library (httpx2 in openai 3, httpx before)
    import httpx2 as httpx
except ImportError:
    httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("sse_starlette")

from llama2rs.server import create_app, uvicorn_config  # noqa: E402

PROMPT = "Once upon a time"
# llama2.c's sampling: no top-k and no min-p (the API's defaults follow llama-cpp-python's).
PLAIN = {"top_k": 0, "min_p": 0}


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free loopback port in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", 0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def _serve_command(arguments: list[str], start_timeout: float) -> tuple[Any, int]:
    """``llama2rs serve ARGUMENTS`` in a child process on a free loopback port, once /health answers."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "llama2rs", "serve", *arguments, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + start_timeout
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server, port
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            pytest.fail(f"llama2rs serve {' '.join(arguments)} did not start")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def model() -> llama2rs.Model:
    need(STORIES, TOK512)
    return llama2rs.Model(STORIES, tokenizer_path=TOK512)


@pytest.fixture(scope="module")
def url(model: llama2rs.Model) -> Iterator[str]:
    with running(create_app(model, parallel=4, queue=16)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_greedy_and_seeded_completions_equal_model_generate(client, model):
    """The same text as Model.generate, and so as llama2.c (whose runs Model.generate matches
    in test_llama2c_parity.py)."""
    result = client.completions.create(model="stories260K.bin", prompt=PROMPT, max_tokens=60, temperature=0,
                                       extra_body=PLAIN)
    assert result.choices[0].text == model.complete(PROMPT, max_tokens=60, temperature=0.0)
    assert result.choices[0].finish_reason == "length"
    assert result.usage.prompt_tokens == len(model.tokenize(PROMPT)) and result.usage.completion_tokens == 60
    for seed in (1, 42, 1234):
        result = client.completions.create(model="stories260K.bin", prompt=PROMPT, max_tokens=80, temperature=0.9,
                                           top_p=0.9, seed=seed, extra_body=PLAIN)
        expected = model.complete(PROMPT, max_tokens=80, temperature=0.9, top_p=0.9, seed=seed)
        assert result.choices[0].text == expected, seed


def test_streamed_completion_is_the_same_text(client, model):
    stream = client.completions.create(model="stories260K.bin", prompt=PROMPT, max_tokens=50, temperature=0.8,
                                       top_p=0.9, seed=7, stream=True, extra_body=PLAIN)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == model.complete(PROMPT, max_tokens=50, temperature=0.8, seed=7)
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


@pytest.mark.parametrize("stop", [["Lily"], ["girl named", "zzz"], [" "], ["d L", "ed"]])
def test_stop_sequences_hold_under_streaming(client, model, stop):
    """Streamed pieces join to exactly the text cut before the first stop sequence: nothing
    is emitted and then taken back, and no stop sequence shows."""
    full = model.complete(PROMPT, max_tokens=80, temperature=0.0)
    cut = min((full.find(s) for s in stop if s in full), default=len(full))
    expected = full[:cut]
    plain = client.completions.create(model="stories260K.bin", prompt=PROMPT, max_tokens=80, temperature=0,
                                      stop=stop, extra_body=PLAIN)
    assert plain.choices[0].text == expected
    assert plain.choices[0].finish_reason == ("stop" if cut < len(full) else "length")
    pieces = [c.choices[0].text for c in client.completions.create(
        model="stories260K.bin", prompt=PROMPT, max_tokens=80, temperature=0, stop=stop, stream=True, extra_body=PLAIN)]
    assert "".join(pieces) == expected
    assert not any(s in "".join(pieces) for s in stop)


def test_chat_completion_and_stream(client, model):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story."}]
    result = client.chat.completions.create(model="stories260K.bin", messages=messages, max_tokens=30,
                                            temperature=0, extra_body=PLAIN)
    expected = model.create_chat_completion(messages, max_tokens=30, temperature=0, **PLAIN)
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert result.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    chunks = list(client.chat.completions.create(model="stories260K.bin", messages=messages, max_tokens=30,
                                                 temperature=0, stream=True, extra_body=PLAIN))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == result.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_models_health_and_metrics(client, url):
    assert [m.id for m in client.models.list().data] == ["stories260K.bin"]
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"llama2rs_requests", "llama2rs_tokens_generated", "llama2rs_queue_depth", "llama2rs_batch_size",
            "llama2rs_tokens_per_second"} <= set(families)
    assert families["llama2rs_tokens_generated"].samples[0].value > 0


@pytest.mark.parametrize("body,param", [
    ({"prompt": PROMPT, "max_tokens": "many"}, "max_tokens"),
    ({"prompt": PROMPT, "temperature": -1}, "temperature"),
    ({"prompt": PROMPT, "top_p": 1.5}, "top_p"),
    ({"prompt": PROMPT, "stop": [""]}, "stop"),
    ({"prompt": [1, 99999]}, "prompt"),
    ({"prompt": "x " * 600}, "prompt"),  # longer than the 512-token context
    ({"prompt": PROMPT, "n": 2}, "n"),
    ({"max_tokens": 3}, "prompt"),
])
def test_bad_completion_requests_get_400(url, body, param):
    response = httpx.post(f"{url}/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_bad_json_and_bad_chat_get_400(url):
    response = httpx.post(f"{url}/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]
    for messages in ([], [{"role": "robot", "content": "hi"}], [{"role": "user", "content": 5}],
                     [{"role": "assistant", "content": "first"}]):
        response = httpx.post(f"{url}/v1/chat/completions", json={"messages": messages})
        assert response.status_code == 400, (messages, response.text)
        assert "error" in response.json()
    response = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "model": "gpt-4"})
    assert response.status_code == 404 and response.json()["error"]["param"] == "model"


def test_the_chat_page(url):
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "/v1/chat/completions" in page.text and "<form" in page.text


def _slow_engine(app: Any, delay: float) -> None:
    """Make each generated token take ``delay`` seconds more, so a test can act mid-stream."""
    engine = app.state.engine
    submit = engine.submit

    def slow_submit(*args: Any, sink: Any = None, **kwargs: Any) -> Any:
        def slow_sink(event: Any) -> None:
            time.sleep(delay)
            sink(event)

        return submit(*args, sink=slow_sink if sink else None, **kwargs)

    engine.submit = slow_submit


def test_a_full_queue_gets_503_and_a_disconnect_frees_its_slot(model):
    app = create_app(model, parallel=1, queue=0)
    _slow_engine(app, 0.01)
    with running(app) as base:
        with httpx.Client(base_url=base, timeout=30) as http:
            body = {"prompt": PROMPT, "max_tokens": 400, "stream": True, "temperature": 0}
            with http.stream("POST", "/v1/completions", json=body) as stream:
                lines = stream.iter_lines()
                assert next(line for line in lines if line.startswith("data:"))
                busy = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
                assert busy.status_code == 503 and busy.headers["retry-after"]
                assert busy.json()["error"]["type"] == "server_busy"
            # The client left after one chunk: its slot is free within a few tokens.
            deadline = time.monotonic() + 10
            while http.get("/health").json()["active"]:
                assert time.monotonic() < deadline, "the slot was not freed"
                time.sleep(0.05)
            tokens = app.state.engine.tokens_total
            assert tokens < 200, tokens  # far fewer than the 400 asked for
            done = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3})
            assert done.status_code == 200


def test_api_key(model):
    """With a key every route but /health and the static page needs it."""
    with running(create_app(model, api_key="s3cret")) as base:
        for path in ("/v1/models", "/metrics"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                denied = httpx.get(f"{base}{path}", headers=headers)
                assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
        assert httpx.post(f"{base}/v1/completions", json={"prompt": "x"}).status_code == 401
        assert httpx.get(f"{base}/health").status_code == 200 and httpx.get(f"{base}/").status_code == 200
        assert httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="s3cret", max_retries=0)
        assert client.models.list().data[0].id == "stories260K.bin"


def test_oversized_and_slow_bodies(model):
    import socket

    with running(create_app(model, max_body_bytes=4096, body_timeout=0.5)) as base:
        big = httpx.post(f"{base}/v1/completions", content=b"{" + b" " * 5000 + b"}",
                         headers={"content-type": "application/json"})
        assert big.status_code == 413 and "limit" in big.json()["error"]["message"]
        # Chunked, with no length declared: counted as it comes.
        def chunks():
            for _ in range(10):
                yield b" " * 1000
        chunked = httpx.post(f"{base}/v1/completions", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        # A client that declares a body and sends part of it, then stalls.
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"prompt\": ")
            reply = slow.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
        assert httpx.get(f"{base}/health").status_code == 200


def test_no_stack_traces(model, monkeypatch):
    app = create_app(model)

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.state.engine, "submit", broken)
    with running(app) as base:
        response = httpx.post(f"{base}/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
        assert response.status_code == 500 and response.json()["error"]["message"] == "internal server error"
        assert "secret" not in response.text and "Traceback" not in response.text


def test_binding_beyond_loopback_without_a_key_warns(model, monkeypatch, capsys):
    import uvicorn as uv

    from llama2rs import server as server_module

    monkeypatch.setattr(uv.Server, "run", lambda *a, **k: None)
    server_module.serve(model, host="0.0.0.0", port=1)
    assert "without --api-key" in capsys.readouterr().err
    server_module.serve(model, host="127.0.0.1", port=1)
    server_module.serve(model, host="0.0.0.0", port=1, api_key="k")
    assert "warning" not in capsys.readouterr().err


def test_concurrent_clients_on_loopback(url, model):
    """16 clients, 64 requests (the load benchmark runs 200), all answered, each with the text
    it would get alone."""
    from concurrent.futures import ThreadPoolExecutor

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)

    def one(i: int) -> bool:
        result = client.completions.create(model="stories260K.bin", prompt=PROMPT, max_tokens=20 + i % 7,
                                           temperature=0.8, top_p=0.9, seed=i + 1, extra_body=PLAIN)
        expected = model.complete(PROMPT, max_tokens=20 + i % 7, temperature=0.8, top_p=0.9, seed=i + 1)
        return result.choices[0].text == expected

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(one, range(64)))


def test_ray_serve_replicas_behind_one_route(model, tmp_path):
    """Two replicas on Ray Serve answer the openai client as one server does (skips without
    ray[serve], which CI does not install: it is large)."""
    pytest.importorskip("ray.serve")
    import subprocess
    import sys

    server, port = _serve_command([str(STORIES), "-z", str(TOK512), "--replicas", "2", "-t", "1"], 120)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        for seed in (3, 4, 5, 6):
            result = client.completions.create(model="stories260K.bin", prompt=PROMPT, max_tokens=30, temperature=0.9,
                                               top_p=0.9, seed=seed, extra_body=PLAIN)
            assert result.choices[0].text == model.complete(PROMPT, max_tokens=30, temperature=0.9, seed=seed)
    finally:
        server.terminate()
        server.wait(timeout=60)
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True)


def test_abuse_on_loopback_leaves_health_answering_within_a_second(model):
    """200 idle and slow connections, oversized bodies, random JSON and real requests at once,
    bounded in count and time: /health answers within 1 s throughout, and real requests succeed."""
    import asyncio
    import random as random_module

    async def abuse(base: str) -> tuple[float, list[int], int]:
        host, port = base.removeprefix("http://").split(":")
        rng = random_module.Random(13)
        worst, statuses, completed = 0.0, [], 0
        stop = asyncio.Event()

        async def monitor() -> None:
            nonlocal worst
            async with httpx.AsyncClient(base_url=base, timeout=5) as http:
                while not stop.is_set():
                    start = time.perf_counter()
                    assert (await http.get("/health")).status_code == 200
                    worst = max(worst, time.perf_counter() - start)
                    await asyncio.sleep(0.05)

        async def slow_client(i: int) -> None:  # trickles a request's headers, a byte at a time
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
                for byte in b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n":
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.05)
                writer.close()
            except OSError:
                pass

        async def junk(http: httpx.AsyncClient) -> None:
            kind = rng.randrange(4)
            if kind == 0:
                body = b"{" + b"x" * (2 << 20)  # over the 1 MB limit
            elif kind == 1:
                body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            elif kind == 2:
                body = json.dumps({"prompt": rng.choice([None, 5, [], {"a": 1}, "x" * 3000, [1e9]]),
                                   "max_tokens": rng.choice([-1, "2", 1e9, None]),
                                   "temperature": rng.choice([-3, "hot", 1e300, None])}).encode()
            else:
                body = json.dumps({"messages": rng.choice([[], [{}], "hi", [{"role": "user", "content": 7}]])}).encode()
            path = "/v1/chat/completions" if kind == 3 else "/v1/completions"
            try:
                response = await http.post(path, content=body, headers={"content-type": "application/json"})
                statuses.append(response.status_code)
            except httpx.HTTPError:  # the server answers 413 and closes before a 2 MB upload ends
                statuses.append(413 if kind == 0 else 0)

        async def real(http: httpx.AsyncClient, seed: int) -> None:
            nonlocal completed
            response = await http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 20, "seed": seed})
            completed += response.status_code == 200

        watcher = asyncio.create_task(monitor())
        async with httpx.AsyncClient(base_url=base, timeout=30,
                                     limits=httpx.Limits(max_connections=300)) as http:
            await asyncio.gather(*(slow_client(i) for i in range(200)), *(junk(http) for _ in range(150)),
                                 *(real(http, s + 1) for s in range(30)))
        stop.set()
        await watcher
        return worst, statuses, completed

    app = create_app(model, parallel=4, queue=64)
    with running(app) as base:
        worst, statuses, completed = asyncio.run(abuse(base))
        assert httpx.get(f"{base}/health").status_code == 200
    assert worst < 1.0, worst
    assert completed == 30
    assert statuses and all(400 <= s < 500 for s in statuses), sorted(set(statuses))


def test_sigterm_ends_streams_in_flight_and_exits_promptly(tmp_path):
    """llama2rs serve on SIGTERM: open streams end (as finished or cut), and the process exits
    0 within the graceful-shutdown bound."""
    import signal

    from llama2rs.config import Config
    from llama2rs.formats import l2rs
    from support.fixtures import random_weights

    # A model whose long streams take seconds: 4096 positions.
    config = Config(dim=256, hidden_dim=768, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=512, seq_len=4096)
    path = tmp_path / "long.l2rs.safetensors"
    l2rs.write_model(path, random_weights(config, 1), llama2rs.Tokenizer(TOK512).to_bin_bytes())
    server, port = _serve_command([str(path), "-t", "2"], 60)
    try:
        base = f"http://127.0.0.1:{port}"
        body = {"prompt": "Once", "max_tokens": None, "stream": True, "ignore_eos": True, "temperature": 0.8}
        with httpx.Client(base_url=base, timeout=60) as http, http.stream("POST", "/v1/completions", json=body) as stream:
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
            sent = time.monotonic()
            server.send_signal(signal.SIGTERM)
            try:
                for _ in lines:  # the stream ends: finished, or closed by the shutdown
                    pass
            except httpx.HTTPError:
                pass
        assert server.wait(timeout=30) == 0
        assert time.monotonic() - sent < 15
    finally:
        server.kill()


def test_a_model_that_fails_mid_request_gets_500_and_the_server_goes_on(model, tmp_path):
    """Corrupt weights surface during decoding, not at submit: the request gets a 500 (or, once
    its stream has begun, an error event) naming the problem, and the engine keeps serving."""
    import numpy as np

    from llama2rs import export
    from support.fixtures import poison_tensor

    source = export.load_source("llama2c", STORIES, TOK512)
    intact = export.export(source, tmp_path / "intact.l2rs.safetensors", progress=False, quantize="q8")
    poisoned = llama2rs.Model(poison_tensor(intact, tmp_path / "nan.l2rs.safetensors", "layers.1.wv.q8_0_scales",
                                            np.nan, np.float32))
    with running(create_app(poisoned, parallel=2, queue=4)) as base:
        with httpx.Client(base_url=base, timeout=30) as http:
            for _ in range(2):  # the engine survives the first failure
                plain = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 5})
                assert plain.status_code == 500, plain.text
                assert plain.json()["error"]["type"] == "server_error"
                assert "NaN or infinite values" in plain.json()["error"]["message"]
            streamed = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 5, "stream": True})
            events = [json.loads(line[5:]) for line in streamed.text.splitlines() if line.startswith("data:")]
            assert events and "weights or scales are corrupt" in events[-1]["error"]["message"], streamed.text
            assert http.get("/health").status_code == 200
