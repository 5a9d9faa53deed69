"""GGUF files for the tests, written and read with gguf-py (llama.cpp's own Python package).

Never imported by the runtime: llama2rs reads GGUF in Rust; this module is the independent
side the tests compare it with.

* :func:`write_gguf` writes :class:`~llama2rs.weights.Weights` (e.g. from
  :func:`fixtures.random_weights`) as a GGUF v3 file of architecture ``llama`` with
  llama.cpp's tensor names, each matrix in the type ``types(name)`` chooses. Types gguf-py
  can quantize (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0) are quantized from the weights with
  ``gguf.quants.quantize``; gguf-py has no quantizer for the K-quants (Q2_K..Q6_K), so those
  matrices get random block bytes whose fp16 scale fields (``d``, ``dmin``) are set to small
  random finite values, which makes every block valid (the weights then only fix the shape).
* :func:`read_gguf` reads a GGUF back with ``gguf.GGUFReader`` into float32 ``Weights``,
  every tensor dequantized with ``gguf.quants.dequantize``, and :func:`reference_logits` runs
  :func:`llama2rs.reference.forward` on them: the expected logits of any GGUF we write.

GGUF dimensions are innermost first: a numpy ``[rows, cols]`` matrix is stored with
``ne = [cols, rows]`` (gguf-py's writer and reader reverse the shapes). Q/K rows are written
as they are: GGUF's (Meta's) interleaved-pair RoPE layout is llama2rs's own.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

from llama2rs.config import Config
from llama2rs.reference import forward
from llama2rs.weights import Weights, dense

__all__ = ["T", "write_gguf", "read_gguf", "reference_logits", "gguf_name", "q4_k_m", "uniform",
           "spm_vocab", "quantizable", "K_SCALE_FIELDS", "header"]

# The per-layer names: ours -> llama.cpp's.
LAYER_NAMES = {"rms_att": "attn_norm", "wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
               "rms_ffn": "ffn_norm", "w1": "ffn_gate", "w2": "ffn_down", "w3": "ffn_up"}
GLOBAL_NAMES = {"token_embedding": "token_embd", "rms_final": "output_norm", "classifier": "output"}

# Byte offsets of the fp16 scale fields in one block of each K-quant (ggml-common.h), and
# dmin's size relative to d (about the mean quant, so the weights come out centred).
K_SCALE_FIELDS: dict[T, tuple[tuple[int, float], ...]] = {
    T.Q2_K: ((80, 1.0), (82, 1.5)),    # scales[16] qs[64] d dmin
    T.Q3_K: ((108, 1.0),),             # hmask[32] qs[64] scales[12] d
    T.Q4_K: ((0, 1.0), (2, 7.5)),      # d dmin scales[12] qs[128]
    T.Q5_K: ((0, 1.0), (2, 15.5)),     # d dmin scales[12] qh[32] qs[128]
    T.Q6_K: ((208, 1.0),),             # ql[128] qh[64] scales[16] d
}


def gguf_name(ours: str) -> str:
    """llama.cpp's tensor name of one of ours (``layers.3.wq`` -> ``blk.3.attn_q.weight``)."""
    if ours.startswith("layers."):
        _, i, name = ours.split(".")
        return f"blk.{i}.{LAYER_NAMES[name]}.weight"
    return f"{GLOBAL_NAMES[ours]}.weight"


def uniform(qtype: T) -> Callable[[str], T]:
    """Every matrix (embedding and classifier included) in ``qtype``."""
    return lambda name: qtype


def q4_k_m(name: str) -> T:
    """A mix like llama.cpp's Q4_K_M: Q6_K for the classifier and the first layer's attn_v and
    ffn_down, Q4_K for everything else."""
    if name in ("output.weight", "blk.0.attn_v.weight", "blk.0.ffn_down.weight"):
        return T.Q6_K
    return T.Q4_K


def quantizable(qtype: T) -> bool:
    """Whether gguf-py can quantize float data to ``qtype``."""
    try:
        gguf.quants.quantize(np.zeros((1, 256), np.float32), qtype)
    except NotImplementedError:
        return False
    return True


def _random_k_blocks(rows: int, cols: int, qtype: T, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``[rows, bytes per row]``: random quants and sub-block scales, fp16 scale fields
    random in [1, 4) times a factor that gives the dequantized values an RMS of about
    ``1/sqrt(cols)`` (as :func:`random_weights` does), so activations stay O(1)."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block_size
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    unit = rng.uniform(1.0, 4.0, size=n_blocks)

    def set_scales(factor: float) -> None:
        for offset, relative in K_SCALE_FIELDS[qtype]:
            half = (unit * factor * relative).astype(np.float16)
            assert np.isfinite(half).all() and (half > 0).all()
            blocks[:, offset:offset + 2] = half.reshape(-1, 1).view(np.uint8)

    set_scales(1.0)
    rms = float(np.sqrt(np.mean(gguf.quants.dequantize(blocks, qtype).astype(np.float64) ** 2)))
    set_scales(1.0 / (rms * np.sqrt(cols)))
    return blocks.reshape(rows, cols // block_size * type_size)


def _encode(matrix: np.ndarray, qtype: T, rng: np.random.Generator) -> np.ndarray:
    matrix = np.ascontiguousarray(dense(matrix), dtype=np.float32)
    if qtype in K_SCALE_FIELDS:
        return _random_k_blocks(matrix.shape[0], matrix.shape[1], qtype, rng)
    return gguf.quants.quantize(matrix, qtype)


def spm_vocab(model_file: str | Path) -> tuple[list[str], list[float], list[int]]:
    """Pieces, scores and token types of a sentencepiece tokenizer.model, as llama.cpp's
    convert_hf_to_gguf.py stores them in ``tokenizer.ggml.*`` (its type mapping: unknown,
    control, unused, byte, else normal)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    pieces, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        pieces.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            kind = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            kind = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            kind = gguf.TokenType.BYTE
        else:
            kind = gguf.TokenType.NORMAL
        types.append(int(kind))
    return pieces, scores, types


def write_gguf(
    path: str | Path,
    weights: Weights,
    types: Callable[[str], T] = uniform(T.F32),
    *,
    seed: int = 0,
    arch: str = "llama",
    tokens: Optional[Sequence[str]] = None,
    scores: Optional[Sequence[float]] = None,
    token_types: Optional[Sequence[int]] = None,
    tokenizer_model: str = "llama",
    write_defaults: bool = True,
    drop: Sequence[str] = (),
    replace: Optional[dict[str, np.ndarray]] = None,
    alignment: Optional[int] = None,
    bos_eos: tuple[int, int] = (1, 2),
    kv: Optional[dict[str, tuple[object, "gguf.GGUFValueType"]]] = None,
    extra: Optional[dict[str, np.ndarray]] = None,
) -> Path:
    """Write ``weights`` as a GGUF v3 file; return its path.

    ``types(gguf_name)`` picks each matrix's type (norm vectors are always F32). K-quant
    matrices get random valid blocks (see the module doc), drawn from ``seed``. The llama.*
    keys come from ``weights.config``; with ``write_defaults=False``, ``head_count_kv`` and
    ``rope.freq_base`` are left out (readers must then take head_count and 10000). The
    tokenizer.ggml.* keys are written when ``tokens`` is given (``scores`` and
    ``token_types`` only if given). ``drop`` leaves tensors out and ``replace`` writes other
    float data under a name (both by GGUF name), to make broken files. ``alignment`` writes
    ``general.alignment`` and aligns the tensor data to it (gguf-py's default is 32 unwritten);
    ``bos_eos`` are the token ids written with ``tokens``. ``kv`` adds or replaces metadata
    (``key: (value, type)``; a value None removes the key); ``extra`` adds F32 tensors.
    """
    path = Path(path)
    c = weights.config
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_context_length(c.seq_len)
    w.add_embedding_length(c.dim)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(c.hidden_dim)
    w.add_head_count(c.n_heads)
    if write_defaults or c.n_kv_heads != c.n_heads:
        w.add_head_count_kv(c.n_kv_heads)
    w.add_layer_norm_rms_eps(c.norm_eps)
    if write_defaults or c.rope_theta != 10000.0:
        w.add_rope_freq_base(c.rope_theta)
    w.add_rope_dimension_count(c.head_size)
    if tokens is not None:
        w.add_tokenizer_model(tokenizer_model)
        w.add_token_list(list(tokens))
        if scores is not None:
            w.add_token_scores(list(scores))
        if token_types is not None:
            w.add_token_types(list(token_types))
        w.add_bos_token_id(bos_eos[0])
        w.add_eos_token_id(bos_eos[1])
    for key, (value, vtype) in (kv or {}).items():
        w.kv_data[0].pop(key, None)
        if value is not None:
            w.add_key_value(key, value, vtype, sub_type=gguf.GGUFValueType.get_type(value[0])
                            if vtype == gguf.GGUFValueType.ARRAY else None)
    replace = replace or {}
    for ours, tensor in weights.named_tensors():
        name = gguf_name(ours)
        if name in drop:
            continue
        data = replace.get(name, tensor)
        if np.ndim(data) == 1:
            w.add_tensor(name, np.asarray(data, dtype=np.float32))
            continue
        qtype = types(name)
        encoded = _encode(data, qtype, rng)
        w.add_tensor(name, encoded, raw_dtype=None if qtype in (T.F32, T.F16) else qtype)
    for name, data in (extra or {}).items():
        w.add_tensor(name, np.asarray(data, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _field(reader: gguf.GGUFReader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.parts[field.data[0]][0].item() if len(field.data) == 1 else field.contents()


def read_gguf(path: str | Path) -> tuple[Weights, dict[str, T]]:
    """A GGUF file's weights, dequantized to float32 by gguf-py, and each tensor's type."""
    reader = gguf.GGUFReader(str(path))
    arch = str(reader.fields["general.architecture"].contents())
    tensors = {t.name: t for t in reader.tensors}

    def matrix(name: str) -> np.ndarray:
        t = tensors[name]
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        rows_cols = tuple(int(n) for n in reversed(t.shape.tolist()))  # ne is innermost first
        return np.ascontiguousarray(values.reshape(rows_cols), dtype=np.float32)

    embedding = matrix("token_embd.weight")
    n_heads = int(_field(reader, f"{arch}.attention.head_count"))
    n_tokens = reader.fields.get("tokenizer.ggml.tokens")
    config = Config(
        dim=int(_field(reader, f"{arch}.embedding_length")),
        hidden_dim=int(_field(reader, f"{arch}.feed_forward_length")),
        n_layers=int(_field(reader, f"{arch}.block_count")),
        n_heads=n_heads,
        n_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", n_heads)),
        vocab_size=len(n_tokens.data) if n_tokens is not None else embedding.shape[0],
        seq_len=int(_field(reader, f"{arch}.context_length")),
        norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        bos_id=int(_field(reader, "tokenizer.ggml.bos_token_id", 1)),
        eos_id=int(_field(reader, "tokenizer.ggml.eos_token_id", 2)),
    )
    layers = []
    for i in range(config.n_layers):
        layers.append({ours: matrix(f"blk.{i}.{theirs}.weight") for ours, theirs in LAYER_NAMES.items()})
    classifier = matrix("output.weight") if "output.weight" in tensors else None
    weights = Weights(config, embedding, layers, matrix("output_norm.weight"), classifier)
    if "rope_freqs.weight" in tensors:
        weights.rope_freq_factors = matrix("rope_freqs.weight").reshape(-1)
    weights.check()
    return weights, {name: T(t.tensor_type) for name, t in tensors.items()}


def reference_logits(path: str | Path, tokens: Sequence[int]) -> np.ndarray:
    """The NumPy reference's logits for a GGUF file (gguf-py's dequantization, float64 math)."""
    weights, _ = read_gguf(path)
    return forward(weights, tokens)


def header(version: int = 3, n_tensors: int = 0, n_kv: int = 0) -> bytes:
    """The 24-byte GGUF header: magic, version, tensor count, KV count (little endian)."""
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)
