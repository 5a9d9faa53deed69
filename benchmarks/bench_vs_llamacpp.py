"""llama2rs against llama.cpp (through llama-cpp-python) on the same CPU, in the same run.

For each shape (TinyLlama-1.1B and Llama-2-7B, random weights) this writes, once, into
benchmarks/out/:
  1. a HuggingFace checkpoint (fp16 safetensors + config.json + the Llama-2 tokenizer.model);
  2. our file from it with export.py's default: 4-bit, group 128, round-to-nearest, embedding and
     classifier in Q8_0 (`--quantize q4 --group-size 128`);
  3. llama.cpp's stock Q4_0 of the same weights: an F16 GGUF written with the `gguf` package,
     quantized by llama.cpp's own `llama_model_quantize` (Q4_0 matrices, Q6_K for output.weight).
Then, interleaved at 1 and 2 threads, it times a 128-token prompt in one batch and 64 greedy
decode steps for both, measures the machine's read bandwidth in the same run, and prints
tok/s, the ratio to llama.cpp and the fraction of the bandwidth limit.

    pip install llama-cpp-python gguf sentencepiece
    python benchmarks/bench_vs_llamacpp.py [--shapes tinyllama llama2-7b] [--repeats 3]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

# Nothing here uses BLAS, but numpy's OpenBLAS pool spins a while after it starts and takes a
# core from whichever engine runs then (on 2 cores: -25% on a short run). One thread, no pool.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import llama2rs
from llama2rs import export
from llama2rs.bench import measure, read_bandwidth, weight_bytes_per_token
from llama2rs.config import Config

REPO = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("LLAMA2RS_MODELS") or REPO.parent / "shared" / "models")
TOKENIZER_MODEL = MODELS / "llama2-tokenizer" / "tokenizer.model"
SHAPES = {
    "tinyllama": Config(dim=2048, hidden_dim=5632, n_layers=22, n_heads=32, n_kv_heads=4, vocab_size=32000, seq_len=2048),
    "llama2-7b": Config(dim=4096, hidden_dim=11008, n_layers=32, n_heads=32, n_kv_heads=32, vocab_size=32000, seq_len=4096),
}
PROMPT, DECODE = 128, 64
# llama.cpp's llama_ftype values (llama.h).
FTYPES = {"q4_0": 2, "q4_k_m": 15, "q6_k": 18, "q8_0": 7}


def hf_tensor_shapes(c: Config) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (c.vocab_size, c.dim), "model.norm.weight": (c.dim,),
              "lm_head.weight": (c.vocab_size, c.dim)}
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (c.dim,), p + "post_attention_layernorm.weight": (c.dim,),
            p + "self_attn.q_proj.weight": (c.dim, c.dim), p + "self_attn.k_proj.weight": (c.kv_dim, c.dim),
            p + "self_attn.v_proj.weight": (c.kv_dim, c.dim), p + "self_attn.o_proj.weight": (c.dim, c.dim),
            p + "mlp.gate_proj.weight": (c.hidden_dim, c.dim), p + "mlp.up_proj.weight": (c.hidden_dim, c.dim),
            p + "mlp.down_proj.weight": (c.dim, c.hidden_dim),
        })
    return shapes


def write_random_hf(directory: Path, c: Config) -> None:
    """fp16 random weights, streamed to disk (a 7B checkpoint never sits in memory)."""
    directory.mkdir(parents=True, exist_ok=True)
    shapes = hf_tensor_shapes(c)
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 24, dtype=np.float32) * 0.02).astype(np.float16)  # 32 MB
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    tmp = directory / "model.safetensors.tmp"
    with open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for name, shape in shapes.items():
            size = int(np.prod(shape))
            if name.endswith("norm.weight"):
                f.write(np.ones(size, np.float16).tobytes())
                continue
            start = int(rng.integers(0, 1 << 20))
            while size > 0:
                take = min(size, pool.size - start)
                f.write(pool[start : start + take].tobytes())
                size -= take
                start = 0
    os.replace(tmp, directory / "model.safetensors")
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": c.dim,
              "intermediate_size": c.hidden_dim, "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
              "num_key_value_heads": c.n_kv_heads, "vocab_size": c.vocab_size, "max_position_embeddings": c.seq_len,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
              "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"}
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    shutil.copyfile(TOKENIZER_MODEL, directory / "tokenizer.model")


def write_gguf(hf_dir: Path, out: Path, c: Config, matrix_type: str = "Q4_0") -> None:
    """The HF checkpoint as a GGUF with llama.cpp's names and the Llama-2 tokenizer: every
    matrix in ``matrix_type`` (``"Q4_0"``, quantized by the gguf package, or ``"F16"``), norms F32."""
    import gguf
    import sentencepiece

    from llama2rs.formats import safetensors

    tensors = safetensors.read(hf_dir / "model.safetensors", bf16_to_float32=False)
    w = gguf.GGUFWriter(str(out) + ".tmp", "llama")
    w.add_name("random")
    w.add_context_length(c.seq_len)
    w.add_embedding_length(c.dim)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(c.hidden_dim)
    w.add_rope_dimension_count(c.head_size)
    w.add_head_count(c.n_heads)
    w.add_head_count_kv(c.n_kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0 if matrix_type == "Q4_0" else gguf.LlamaFileType.MOSTLY_F16)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
                 "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(c.n_layers):
        for hf_name, g_name in per_layer.items():
            names[f"model.layers.{i}.{hf_name}.weight"] = f"blk.{i}.{g_name}.weight"
    for hf_name, g_name in names.items():
        data = np.asarray(tensors[hf_name])
        if data.ndim == 1:
            w.add_tensor(g_name, data.astype(np.float32))
        elif matrix_type == "F16":
            w.add_tensor(g_name, data.astype(np.float16))
        else:
            w.add_tensor(g_name, gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q4_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(str(out) + ".tmp", out)


def write_f16_gguf(out: Path, c: Config, hf_dir: Path) -> None:
    """Every matrix F16, norms F32, llama.cpp's names and the Llama-2 tokenizer (from the random
    HF checkpoint in ``hf_dir``, written first if missing)."""
    if not (hf_dir / "model.safetensors").exists():
        write_random_hf(hf_dir, c)
    write_gguf(hf_dir, out, c, matrix_type="F16")


def quantize_with_llamacpp(src: Path, out: Path, ftype: int) -> None:
    """``src`` quantized by llama.cpp's own quantizer to ``ftype`` (a llama_ftype of FTYPES)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(src).encode(), (str(out) + ".tmp").encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not quantize {src}")
    os.replace(str(out) + ".tmp", out)


def prepare(shape: str, out_dir: Path) -> tuple[Path, Path]:
    c = SHAPES[shape]
    hf_dir, ours = out_dir / f"{shape}-hf", out_dir / f"{shape}-q4g128-default.l2rs.safetensors"
    f16, theirs = out_dir / f"{shape}-f16.gguf", out_dir / f"{shape}-q4_0.gguf"
    if not (hf_dir / "model.safetensors").exists():
        t = time.perf_counter()
        write_random_hf(hf_dir, c)
        print(f"[{shape}] wrote the HF checkpoint in {time.perf_counter() - t:.0f} s", flush=True)
    if not ours.exists():
        t = time.perf_counter()
        source = export.load_source("hf", hf_dir)
        export.export(source, ours, quantize="q4", group_size=128, progress=False)
        print(f"[{shape}] export.py -> {ours.name} in {time.perf_counter() - t:.0f} s", flush=True)
    if not theirs.exists():
        t = time.perf_counter()
        if not f16.exists():
            write_f16_gguf(f16, c, hf_dir)
        quantize_with_llamacpp(f16, theirs, FTYPES["q4_0"])
        print(f"[{shape}] llama.cpp quantized {theirs.name} in {time.perf_counter() - t:.0f} s", flush=True)
    return ours, theirs


def time_llamacpp(llm, vocab: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    prompt = [1] + rng.integers(3, vocab, size=PROMPT - 1).tolist()
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    middle = time.perf_counter()
    # Random weights: the next token's value does not change the work, so no sampling here.
    for token in rng.integers(3, vocab, size=DECODE).tolist():
        llm.eval([token])
    end = time.perf_counter()
    return PROMPT / (middle - start), DECODE / (end - middle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        from llama_cpp import Llama
    except ImportError:
        Llama = None
        print("llama-cpp-python is not installed: measuring llama2rs alone", file=sys.stderr)

    rows = []
    for shape in args.shapes:
        ours_path, gguf_path = prepare(shape, args.out)
        per_token = weight_bytes_per_token(str(ours_path))
        for threads in args.threads:
            model = llama2rs.Model(ours_path, n_threads=threads)
            llm = None
            if Llama is not None:
                llm = Llama(str(gguf_path), n_ctx=PROMPT + DECODE + 8, n_batch=PROMPT, n_ubatch=PROMPT,
                            n_threads=threads, n_threads_batch=threads, verbose=False)
            ours, theirs, bandwidth = [], [], []
            for rep in range(args.repeats):  # interleaved, so drift hits both alike
                bandwidth.append(read_bandwidth(threads))
                s = measure(model, PROMPT, DECODE, repeats=1, seed=rep)
                ours.append((s.prefill_tok_s, s.decode_tok_s))
                if llm is not None:
                    theirs.append(time_llamacpp(llm, model.config.vocab_size, rep))
            med = lambda pairs, i: statistics.median(p[i] for p in pairs) if pairs else float("nan")
            row = dict(shape=shape, threads=threads, kernels=model.kernels, bandwidth=statistics.median(bandwidth),
                       ours_prefill=med(ours, 0), ours_decode=med(ours, 1),
                       cpp_prefill=med(theirs, 0), cpp_decode=med(theirs, 1), gb_per_token=per_token / 1e9)
            row["bandwidth_fraction"] = row["ours_decode"] * per_token / row["bandwidth"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            del llm

    print()
    print(f"{'shape':<10} {'thr':>3} | {'decode tok/s':>12} {'llama.cpp':>9} {'ratio':>6} | "
          f"{'prefill tok/s':>13} {'llama.cpp':>9} {'ratio':>6} | {'GB/s':>5} {'of limit':>8}")
    for r in rows:
        print(f"{r['shape']:<10} {r['threads']:>3} | {r['ours_decode']:12.1f} {r['cpp_decode']:9.1f} "
              f"{r['ours_decode'] / r['cpp_decode']:5.2f}x | {r['ours_prefill']:13.1f} {r['cpp_prefill']:9.1f} "
              f"{r['ours_prefill'] / r['cpp_prefill']:5.2f}x | {r['bandwidth'] / 1e9:5.1f} {r['bandwidth_fraction']:8.0%}")
    print(f"(128-token prompt in one batch, 64 greedy decode steps, median of {args.repeats}; llama2rs's default "
          f"export (4-bit g128, Q8_0 embedding and classifier) against llama.cpp's stock Q4_0; llama2rs "
          f"with {rows[0]['kernels']} kernels reads {rows[0]['gb_per_token']:.3f} GB per token for {rows[0]['shape']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
