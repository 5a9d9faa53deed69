"""The commands that run a model: ``generate``, ``info``, ``perplexity`` and ``bench``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Iterator

from ..errors import ArgumentError
from .common import Commands, add_kv_cache_argument, non_negative_float, non_negative_int, positive_int, unit_float

__all__ = ["add_model_commands", "add_measure_commands", "COMMANDS"]


def add_model_commands(commands: Commands) -> None:
    gen = commands.add_parser("generate", help="stream text after a prompt")
    gen.add_argument("model", help="model file (llama2rs v1/v2, llama2.c legacy, v1 or v2 Q8_0, or GGUF v3)")
    gen.add_argument("-p", "--prompt", default="", help="prompt text (default: empty)")
    gen.add_argument("-n", "--max-tokens", type=non_negative_int, default=256,
                     help="new tokens to generate at most (the prompt does not count; default 256)")
    gen.add_argument("--temp", type=non_negative_float, default=1.0,
                     help="temperature, 0 = greedy (default 1.0, as llama2.c)")
    gen.add_argument("--top-p", type=unit_float, default=0.9, help="nucleus sampling threshold (default 0.9)")
    gen.add_argument("--top-k", type=non_negative_int, default=0, help="keep the k likeliest tokens (0 = off)")
    gen.add_argument("-s", "--seed", type=positive_int, default=None, help="random seed (default: random)")
    gen.add_argument("-t", "--threads", type=positive_int, default=None, help="threads (default: physical cores)")
    gen.add_argument("-z", "--tokenizer", default=None, help="tokenizer file (default: found beside the model)")
    gen.add_argument("--ignore-eos", action="store_true", help="do not stop at BOS/EOS")
    gen.add_argument("--no-echo", action="store_true", help="do not print the prompt before the new text")
    add_kv_cache_argument(gen)

    info = commands.add_parser("info", help="print a model file's format and config")
    info.add_argument("model", help="model file")


def add_measure_commands(commands: Commands) -> None:
    ppl = commands.add_parser("perplexity", help="perplexity on a text, and KL divergence from a base model")
    ppl.add_argument("model", help="model file")
    ppl.add_argument("--text", required=True, help="UTF-8 text file to score")
    ppl.add_argument("--base", help="base model (e.g. the unquantized one): report mean KL(base || model)")
    ppl.add_argument("--window", type=positive_int, default=None, help="tokens per window (default: min(seq_len, 512))")
    ppl.add_argument("--max-windows", type=positive_int, default=None, help="score at most this many windows")
    ppl.add_argument("-t", "--threads", type=positive_int, default=None, help="threads (default: physical cores)")
    ppl.add_argument("-z", "--tokenizer", default=None, help="tokenizer file (default: the model's)")
    add_kv_cache_argument(ppl)

    bench = commands.add_parser("bench", help="prefill and decode speed, against the memory-bandwidth limit")
    bench.add_argument("model", help="model file")
    bench.add_argument("-t", "--threads", type=positive_int, action="append", help="thread count (repeatable; default 1 and 2)")
    bench.add_argument("--prompt", type=positive_int, default=128, help="prompt tokens (default 128)")
    bench.add_argument("--decode", type=positive_int, default=64, help="tokens to decode (default 64)")
    bench.add_argument("--repeats", type=positive_int, default=3, help="runs per figure (median; default 3)")
    add_kv_cache_argument(bench)


def _bench(args: argparse.Namespace) -> int:
    from ..bench import report

    print(report(args.model, args.threads, args.prompt, args.decode, args.repeats, kv_cache=args.kv_cache))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from ..model import Model

    model = Model(args.model, tokenizer_path=args.tokenizer, n_threads=args.threads, kv_cache=args.kv_cache)
    out = sys.stdout
    if not args.no_echo:
        out.write(args.prompt)
        out.flush()
    start = time.perf_counter()
    prompt_ids = model.tokenize(args.prompt)
    stream = model.generate_tokens(
        prompt_ids, args.max_tokens, args.temp, args.top_p, args.top_k, args.seed, args.ignore_eos
    )
    count = 0

    def counted(tokens: Iterator[int]) -> Iterator[int]:
        nonlocal count
        for token in tokens:
            count += 1
            yield token

    for piece in model.detokenize_stream(counted(stream), prev_id=prompt_ids[-1]):
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    elapsed = time.perf_counter() - start
    rate = count / elapsed if elapsed > 0 else float("inf")
    print(
        f"achieved tok/s: {rate:.1f} ({count} tokens after a {len(prompt_ids)}-token prompt, "
        f"{elapsed:.3f} s, {model.n_threads} threads)",
        file=sys.stderr,
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    from ..model import Model

    model = Model(args.model)
    c = model.config
    rows = [
        ("path", str(model.path)),
        ("format", model.format),
        ("file size", f"{model.file_size} bytes"),
        ("dim", c.dim),
        ("hidden_dim", c.hidden_dim),
        ("n_layers", c.n_layers),
        ("n_heads", c.n_heads),
        ("n_kv_heads", c.n_kv_heads),
        ("head_size", c.head_size),
        ("vocab_size", c.vocab_size),
        ("seq_len", c.seq_len),
        ("shared classifier", model.shared_classifier),
        ("group size", model.group_size if model.group_size is not None else "-"),
        ("tokenizer", model.tokenizer.path if model.tokenizer is not None else model._no_tokenizer),
    ]
    rows += [(key, model.metadata[key]) for key in ("source", "quantization") if key in model.metadata]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _perplexity(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate
    from ..model import Model

    try:
        text = open(args.text, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        raise ArgumentError(f"cannot read --text {args.text}: {e}") from None
    model = Model(args.model, tokenizer_path=args.tokenizer, n_threads=args.threads, kv_cache=args.kv_cache)
    base = None if args.base is None else Model(args.base, tokenizer_path=args.tokenizer, n_threads=args.threads)
    result = evaluate(model, text, base, args.window, args.max_windows)
    print(f"perplexity: {result.perplexity:.4f} ({result.n_predictions} predictions in {result.n_windows} "
          f"windows of {result.window} tokens)")
    if result.kl_divergence is not None and result.top1_agreement is not None:
        print(f"base perplexity: {result.base_perplexity:.4f}")
        print(f"mean KL(base || model): {result.kl_divergence:.6f} nats/token")
        print(f"top-1 agreement: {100 * result.top1_agreement:.2f}%")
    return 0


COMMANDS = {"generate": _generate, "info": _info, "perplexity": _perplexity, "bench": _bench}
