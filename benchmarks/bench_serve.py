"""Load on ``llama2rs serve`` over loopback, with the official ``openai`` client.

Two measurements, each against a server this script starts (``llama2rs serve``, 127.0.0.1):

* ``load``: ``--clients`` concurrent clients send ``--requests`` completions in all; reports
  requests/s, generated tokens/s, p50/p99 latency and errors.
* ``streams``: for B in ``--streams`` (default 1 2 4 8 16), B clients stream at once; reports the
  generated tok/s of all of them and its ratio to one stream (the batching gain).

``--replicas N`` serves through Ray Serve (``pip install "ray[serve]"``) with N replicas of
``-t`` threads each. Bounded in count and time; loopback only. Needs ``pip install
"llama2rs[server]" openai``.

    python benchmarks/bench_serve.py MODEL [-z TOKENIZER] [--parallel 8] [-t 2] load
    python benchmarks/bench_serve.py MODEL --parallel 16 -t 2 streams
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Optional

import openai


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, parallel: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "llama2rs", "serve", args.model, "--port", str(port), "--parallel", str(parallel),
               "--queue", "1024", "-t", str(args.threads)]
    if args.tokenizer:
        command += ["-z", args.tokenizer]
    if args.replicas:
        command += ["--replicas", str(args.replicas)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    import urllib.request

    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit("the server did not start")
            time.sleep(0.2)


async def load(url: str, clients: int, requests: int, max_tokens: int, prompt: str) -> dict:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    name = (await client.models.list()).data[0].id
    latencies: list[float] = []
    tokens = errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker() -> None:
        nonlocal tokens, errors
        while not queue.empty():
            i = queue.get_nowait()
            start = time.perf_counter()
            try:
                result = await client.completions.create(model=name, prompt=prompt, max_tokens=max_tokens,
                                                         temperature=0.8, seed=i + 1)
                tokens += result.usage.completion_tokens
            except openai.APIError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {"requests": requests, "errors": errors, "seconds": elapsed, "requests_per_s": len(latencies) / elapsed,
            "tokens_per_s": tokens / elapsed, "p50": latencies[len(latencies) // 2] if latencies else float("nan"),
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")}


async def streams(url: str, n: int, max_tokens: int, prompt: str, rounds: int) -> float:
    """Generated tok/s of ``n`` concurrent streams (the median of ``rounds``)."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    name = (await client.models.list()).data[0].id

    async def one(seed: int) -> int:
        count = 0
        stream = await client.completions.create(model=name, prompt=prompt, max_tokens=max_tokens,
                                                 temperature=0.8, seed=seed, stream=True,
                                                 extra_body={"ignore_eos": True})
        async for chunk in stream:
            count += 1 if chunk.choices[0].text else 0  # a piece per token, but for held-back bytes
        return count

    rates = []
    for r in range(rounds):
        start = time.perf_counter()
        counts = await asyncio.gather(*(one(r * n + i + 1) for i in range(n)))
        rates.append(sum(counts) / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("-z", "--tokenizer")
    parser.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=None, help="serve with Ray Serve, this many replicas")
    parser.add_argument("--prompt", default="Once upon a time")
    sub = parser.add_subparsers(dest="mode", required=True)
    lp = sub.add_parser("load")
    lp.add_argument("--clients", type=int, default=16)
    lp.add_argument("--requests", type=int, default=200)
    lp.add_argument("--max-tokens", type=int, default=64)
    sp = sub.add_parser("streams")
    sp.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    sp.add_argument("--max-tokens", type=int, default=64)
    sp.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    parallel = max(args.streams) if args.mode == "streams" else args.parallel
    server, url = start_server(args, max(parallel, args.parallel))
    try:
        if args.mode == "load":
            r = asyncio.run(load(url, args.clients, args.requests, args.max_tokens, args.prompt))
            where = f"--replicas {args.replicas} " if args.replicas else ""
            print(f"{r['requests']} requests from {args.clients} clients, {where}--parallel {args.parallel} -t {args.threads}: "
                  f"{r['errors']} errors, {r['seconds']:.1f} s, {r['requests_per_s']:.2f} req/s, "
                  f"{r['tokens_per_s']:.1f} generated tok/s, latency p50 {r['p50']:.2f} s, p99 {r['p99']:.2f} s")
        else:
            base = None
            print(f"streams of {args.max_tokens} tokens, -t {args.threads}, median of {args.rounds}")
            print("| streams | generated tok/s | vs 1 stream |")
            print("|---|---|---|")
            for n in args.streams:
                rate = asyncio.run(streams(url, n, args.max_tokens, args.prompt, args.rounds))
                base = base or rate
                print(f"| {n} | {rate:.1f} | {rate / base:.2f}x |")
    finally:
        server.terminate()
        server.wait(timeout=60)
        if args.replicas:
            subprocess.run(["ray", "stop", "--force"], capture_output=True)


if __name__ == "__main__":
    main()
