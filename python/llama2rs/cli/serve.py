"""The commands that talk: ``chat`` (a conversation at the terminal) and ``serve`` (the
OpenAI-compatible server)."""

from __future__ import annotations

import argparse
import sys

from ..errors import ArgumentError
from .common import Commands, add_kv_cache_argument, non_negative_int, positive_int

__all__ = ["add_chat_commands", "COMMANDS"]


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (llama2rs, llama2.c or GGUF)")
    parser.add_argument("-z", "--tokenizer", default=None, help="tokenizer file (default: the model's own)")
    parser.add_argument("-t", "--threads", type=positive_int, default=None, help="threads (default: physical cores)")
    parser.add_argument("--chat-template", default=None, metavar="NAME|FILE",
                        help="llama2, llama3 or a Jinja2 file (default: the model's own, else by vocabulary)")
    add_kv_cache_argument(parser)


def add_chat_commands(commands: Commands) -> None:
    chat = commands.add_parser("chat", help="talk to a model at the terminal (history kept; Ctrl-D ends)")
    _model_arguments(chat)
    chat.add_argument("--system", default=None, help="a system message to start the conversation")
    chat.add_argument("-n", "--max-tokens", type=non_negative_int, default=512, help="tokens per answer at most")
    chat.add_argument("--temp", type=float, default=0.7, help="temperature (default 0.7; 0 = greedy)")
    chat.add_argument("-s", "--seed", type=positive_int, default=None, help="random seed")

    serve = commands.add_parser("serve", help="an OpenAI-compatible HTTP server (pip install 'llama2rs[server]')")
    _model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    serve.add_argument("--parallel", type=positive_int, default=8, help="sequences decoded together (default 8)")
    serve.add_argument("--queue", type=non_negative_int, default=64,
                       help="requests that may wait for a slot; past that, 503 (default 64)")
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes")
    serve.add_argument("--model-name", default=None, help="the model id clients use (default: the file name)")
    serve.add_argument("--replicas", type=positive_int, default=None,
                       help="run this many replicas behind one route with Ray Serve (pip install 'ray[serve]')")


def _open(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ..model import Model

    return Model(args.model, tokenizer_path=args.tokenizer, n_threads=args.threads, kv_cache=args.kv_cache)


def _chat(args: argparse.Namespace) -> int:
    model = _open(args)
    model.chat_template(args.chat_template)  # a bad template fails now, not at the first turn
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        chunks = model.create_chat_completion(messages, max_tokens=args.max_tokens, temperature=args.temp,
                                              seed=args.seed, stream=True, chat_template=args.chat_template)
        answer = []
        for chunk in chunks:
            text = chunk["choices"][0]["delta"].get("content", "")
            answer.append(text)
            sys.stdout.write(text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(answer)})


def _serve(args: argparse.Namespace) -> int:
    try:
        from ..server import serve
    except ImportError as exc:
        raise ArgumentError(str(exc)) from None
    if args.replicas is not None:
        try:
            from ..ray_serve import run
            import ray  # noqa: F401
        except ImportError:
            raise ArgumentError("--replicas runs on Ray Serve: pip install 'ray[serve]'") from None
        _open(args)  # a bad model or tokenizer fails here, not in every replica
        run(args.model, host=args.host, port=args.port, tokenizer=args.tokenizer, replicas=args.replicas,
            threads=args.threads or 1, parallel=args.parallel, queue=args.queue, chat_template=args.chat_template,
            model_name=args.model_name, api_key=args.api_key)
        return 0
    model = _open(args)
    try:
        serve(model, host=args.host, port=args.port, parallel=args.parallel, queue=args.queue, api_key=args.api_key,
              chat_template=args.chat_template, model_name=args.model_name)
    except SystemExit as exit:
        # uvicorn shuts down gracefully on SIGTERM, then raises the signal again, which the
        # command line turns into exit 143: after a graceful stop, that is success.
        if exit.code != 128 + 15:
            raise
    return 0


COMMANDS = {"chat": _chat, "serve": _serve}
