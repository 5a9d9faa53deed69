"""The chat page (``GET /``) in headless Chromium, driven over the DevTools protocol: type a
message, press Enter, and watch the answer stream in. Skips where Chromium is not installed
(Debian's ``chromium`` package). ``LLAMA2RS_SCREENSHOT=path.png`` keeps a screenshot."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from typing import Any

import pytest

from conftest import STORIES, TOK512, need

pytest.importorskip("fastapi")
websockets_sync = pytest.importorskip("websockets.sync.client")

from test_server import _slow_engine, running  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class DevTools:
    """A minimal DevTools-protocol client for one page: send a command, wait for its result."""

    def __init__(self, ws_url: str) -> None:
        self._connection = websockets_sync.connect(ws_url, max_size=None, open_timeout=20)
        self.ws = self._connection.__enter__()
        self.ids = itertools.count(1)

    def __call__(self, method: str, **params: Any) -> dict:
        id = next(self.ids)
        self.ws.send(json.dumps({"id": id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


@pytest.fixture()
def chromium(tmp_path):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    process = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", f"--user-data-dir={tmp_path}/profile",
         "--window-size=900,700", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        port = None
        while port is None:
            assert time.monotonic() < deadline and process.poll() is None, "Chromium did not start"
            line = process.stderr.readline()  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
            if "DevTools listening on" in line:
                port = int(line.split("ws://127.0.0.1:")[1].split("/")[0])
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _page_socket(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
        pages = [t for t in json.load(response) if t["type"] == "page"]
    return pages[0]["webSocketDebuggerUrl"]


def test_chat_page_streams_an_answer(chromium):
    need(STORIES, TOK512)
    import llama2rs
    from llama2rs.server import create_app

    model = llama2rs.Model(STORIES, tokenizer_path=TOK512)
    app = create_app(model, parallel=2, queue=2)
    _slow_engine(app, 0.01)  # so the browser sees the answer grow, token by token
    with running(app) as base:
        page = DevTools(_page_socket(chromium))
        try:
            page("Page.enable")
            page("Page.navigate", url=f"{base}/")
            deadline = time.monotonic() + 30
            while page.evaluate("document.readyState") != "complete" or not page.evaluate(
                    "document.getElementById('model').textContent"):
                assert time.monotonic() < deadline, "the page did not load"
                time.sleep(0.05)
            assert page.evaluate("document.getElementById('model').textContent") == "(stories260K.bin)"
            # Type like a person: focus the box, insert the text, press Enter.
            page.evaluate("document.getElementById('message').focus()")
            page("Input.insertText", text="Tell me a story")
            for kind in ("keyDown", "keyUp"):
                page("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                     text="\r" if kind == "keyDown" else "")
            seen: list[str] = []
            deadline = time.monotonic() + 60
            while page.evaluate("document.getElementById('send').disabled") is not False or not seen:
                assert time.monotonic() < deadline, f"no finished answer; saw {seen[-1:]}"
                text = page.evaluate("(document.querySelector('.assistant') || {}).textContent || ''")
                if text and (not seen or text != seen[-1]):
                    seen.append(text)
                time.sleep(0.02)
            final = page.evaluate("document.querySelector('.assistant').textContent")
            assert page.evaluate("document.querySelector('.user').textContent") == "You: Tell me a story"
            assert final.startswith("Model: ") and len(final) > len("Model: ") + 10
            growing = [t for t in seen if t != "Model: "]
            assert len(growing) >= 3 and all(final.startswith(t) for t in growing), "the answer did not stream"
            assert not page.evaluate("document.querySelector('.error')")
            shot = base64.b64decode(page("Page.captureScreenshot", format="png")["data"])
            assert shot.startswith(b"\x89PNG")
            if os.environ.get("LLAMA2RS_SCREENSHOT"):
                with open(os.environ["LLAMA2RS_SCREENSHOT"], "wb") as handle:
                    handle.write(shot)
        finally:
            page.close()
