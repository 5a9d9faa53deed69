"""Llama 3's tokenizer.model (tiktoken text) against Meta's reference encoder: tiktoken with the
pattern and special tokens of llama_models 0.3.0's llama3/tokenizer.py, and its cuts of long
texts (written out in tests/support/llama3_vocab.py as Meta wrote them, independently of the Rust
code); the same vocabulary in a GGUF file; and the tokenizer.json fixture of
tests/support/tokenizer_json.py against HuggingFace's tokenizers."""

from __future__ import annotations

import numpy as np
import pytest

import llama2rs
from conftest import MODELS, need
from llama2rs import TokenizerError
from llama2rs.bpe import ByteLevelTokenizer

tiktoken = pytest.importorskip("tiktoken")
from support.llama3_vocab import MetaTokenizer, TEXTS, UNCUT_TEXTS, gguf_tokenizer_arrays, random_texts  # noqa: E402

LLAMA3 = MODELS / "llama3-tokenizer" / "tokenizer.model"


@pytest.fixture(scope="module")
def pair():
    need(LLAMA3)
    return llama2rs.Tokenizer(LLAMA3), MetaTokenizer(LLAMA3)


@pytest.mark.parametrize("index", range(len(TEXTS)))
def test_equals_metas_encoder(pair, index):
    ours, meta = pair
    text = TEXTS[index]
    assert ours.encode(text, bos=True) == meta.encode(text, bos=True, eos=False)
    assert ours.encode(text, bos=False, eos=True) == meta.encode(text, bos=False, eos=True)
    assert ours.decode(ours.encode(text)) == text


def test_random_mixed_text(pair):
    ours, meta = pair
    for text in random_texts(11, 200):
        assert ours.encode(text, bos=False) == meta.encode(text, bos=False, eos=False), repr(text)
        assert ours.decode(ours.encode(text)) == text


def test_special_tokens_only_where_allowed(pair):
    ours, meta = pair
    text = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    as_text = ours.encode(text, bos=False)
    assert as_text == meta.encode(text, bos=False, eos=False)
    assert not set(as_text) & set(ours.special_tokens.values())
    allowed = ours.encode(text, bos=False, special=True)
    assert allowed == meta.encode(text, bos=False, eos=False, allowed_special="all")
    assert allowed[0] == 128006 and allowed[-1] == 128009
    assert ours.decode(allowed) == text


def test_facts_and_stop_ids(pair):
    ours, _ = pair
    assert isinstance(ours, ByteLevelTokenizer) and ours.format == "tiktoken"
    assert ours.vocab_size == len(ours) == 128256
    assert (ours.bos_id, ours.eos_id) == (128000, 128001)
    assert ours.stop_ids == (128001, 128008, 128009)  # <|end_of_text|>, <|eom_id|>, <|eot_id|>
    assert ours.piece_to_id("<|eot_id|>") == 128009 and ours.id_to_piece(128009) == "<|eot_id|>"
    assert ours.piece_to_id(" the") == ours.encode(" the", bos=False)[0]
    with pytest.raises(llama2rs.InvalidTokenError, match="128256"):
        ours.decode([128256])
    with pytest.raises(TokenizerError, match="has 128256 tokens but the model's vocab_size is 32000"):
        llama2rs.Tokenizer(LLAMA3, vocab_size=32000)


def test_streaming_never_splits_a_character(pair):
    ours, _ = pair
    text = "naïve 日本語 👨‍👩‍👧‍👦 done"
    ids = ours.encode(text, bos=False)
    stream = ours.stream()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)


def test_corrupt_tiktoken_files(tmp_path):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"IQ== 0\nIg== 2\n")
    with pytest.raises(TokenizerError, match="line 2 has rank 2, expected 1"):
        llama2rs.Tokenizer(path)
    path.write_bytes(b"IQ== 0\n!!!! 1\n")
    with pytest.raises(TokenizerError, match="corrupt tiktoken file: line 2"):
        llama2rs.Tokenizer(path)
    path.write_bytes(b"IQ== 0\nIg== 1\n")  # only two bytes of the 256
    with pytest.raises(TokenizerError, match="no token for the single byte 0x00"):
        llama2rs.Tokenizer(path)


# -- the same vocabulary in a GGUF file (tokenizer.ggml.model = gpt2, pre = llama-bpe) ---------------


@pytest.fixture(scope="module")
def llama3_gguf(tmp_path_factory):
    """A Llama-3-vocabulary GGUF whose every layer adds nothing and whose classifier favours
    <|eot_id|>: greedy decoding's first token is <|eot_id|>, whatever the prompt. Tokens and types
    as convert_hf_to_gguf writes them, but no merges (llama2rs needs only the ranks; the file with
    merges is test_gguf.py's Llama-3-shaped model)."""
    import numpy as np
    from gguf import GGUFValueType

    from llama2rs.config import Config
    from support.fixtures import random_weights
    from support.gguf_files import T, uniform, write_gguf

    need(LLAMA3)
    tokens, types, _ = gguf_tokenizer_arrays(LLAMA3)
    config = Config(dim=64, hidden_dim=128, n_layers=1, n_heads=1, n_kv_heads=1, vocab_size=len(tokens),
                    seq_len=64, rope_theta=500000.0)
    weights = random_weights(config, 0)
    for layer in weights.layers:
        layer["wo"][:] = 0
        layer["w2"][:] = 0
    weights.token_embedding[:] = 1.0
    weights.rms_final[:] = 1.0
    classifier = np.zeros((config.vocab_size, config.dim), dtype=np.float32)
    classifier[128009] = 1.0
    weights.classifier = classifier
    path = tmp_path_factory.mktemp("llama3") / "llama3-vocab.gguf"
    return write_gguf(path, weights, uniform(T.F16), tokens=tokens, token_types=types, tokenizer_model="gpt2",
                      bos_eos=(128000, 128001), kv={"tokenizer.ggml.pre": ("llama-bpe", GGUFValueType.STRING)})


def test_gguf_gpt2_vocabulary_tokenizes_as_tiktoken(pair, llama3_gguf):
    _, meta = pair
    model = llama2rs.Model(llama3_gguf)
    assert model.tokenizer.format == "gguf" and model.tokenizer.vocab_size == 128256
    for text in TEXTS[:-3] + ["a" * 100]:  # llama.cpp does not cut long runs: neither does this
        assert model.tokenize(text) == [128000] + meta.model.encode(text, disallowed_special=()), repr(text)
        assert model.detokenize(model.tokenize(text)) == text


def test_generation_stops_at_eot(llama3_gguf):
    model = llama2rs.Model(llama3_gguf)
    assert set(model.stop_ids) >= {128000, 128001, 128008, 128009}
    prompt = model.tokenize("Hello")
    assert list(model.generate_tokens(prompt, max_tokens=5, ignore_eos=True)) == [128009] * 5  # what it samples
    assert list(model.generate_tokens(prompt, max_tokens=5)) == []  # ... and where it stops
    assert model.complete("Hello", max_tokens=5) == ""


def test_gguf_pre_tokenizer_we_do_not_run(tmp_path, llama3_gguf):
    import shutil

    from gguf import GGUFReader

    path = tmp_path / "qwen.gguf"
    shutil.copy(llama3_gguf, path)
    field = GGUFReader(str(path), "r+").fields["tokenizer.ggml.pre"]
    field.parts[field.data[0]][:] = np.frombuffer(b"qwen2-bpe", dtype=np.uint8)  # as long as "llama-bpe"
    model = llama2rs.Model(path)
    with pytest.raises(TokenizerError, match="its GGUF pre-tokenizer is 'qwen2-bpe'; llama2rs runs"):
        model.tokenize("Hello")
    assert list(model.generate_tokens([128000], max_tokens=2, ignore_eos=True)) == [128009, 128009]  # ids still run


# -- the same vocabulary as HuggingFace's tokenizer.json (the fixture of tests/support/tokenizer_json.py) ---


@pytest.fixture(scope="module", params=["lists", "strings"])
def hf_tokenizer(request):
    """HuggingFace's tokenizers library reading our Llama 3 tokenizer.json, with the merges in
    either format (one session builds the vocabulary and merges once)."""
    import json

    tokenizers = pytest.importorskip("tokenizers")
    need(LLAMA3)
    from support.tokenizer_json import llama3_tokenizer_json

    return tokenizers.Tokenizer.from_str(json.dumps(llama3_tokenizer_json(LLAMA3, request.param)))


def test_tokenizer_json_fixture_encodes_as_tiktoken(pair, hf_tokenizer):
    """The fixture is Llama 3's tokenizer.json: HuggingFace's own encoder, given it, gives tiktoken's
    tokens under Meta's pattern (without Meta's cuts of long runs, which HF does not make). HF
    splits added tokens out of any text, hence tiktoken with its specials allowed."""
    _, meta = pair
    hf = hf_tokenizer
    assert hf.get_vocab_size(with_added_tokens=False) == 128000 and hf.get_vocab_size() == 128256
    assert hf.token_to_id("<|eot_id|>") == 128009 and hf.token_to_id("Ġthe") == meta.model.encode(" the")[0]
    for text in UNCUT_TEXTS + random_texts(12, 200):
        ids = hf.encode(text, add_special_tokens=False).ids
        assert ids == meta.model.encode(text, allowed_special="all"), repr(text[:80])
        assert hf.decode(ids, skip_special_tokens=False) == text
    assert hf.encode("Hello world").ids == [128000] + meta.model.encode("Hello world")  # the post-processor's BOS


def test_tokenizer_directory(tmp_path):
    import json

    tokenizers = pytest.importorskip("tokenizers")
    need(LLAMA3)
    from support.tokenizer_json import write_llama3_tokenizer_files

    folder = write_llama3_tokenizer_files(tmp_path / "llama3", LLAMA3)
    assert sorted(p.name for p in folder.iterdir()) == ["generation_config.json", "special_tokens_map.json",
                                                         "tokenizer.json", "tokenizer_config.json"]
    hf = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert hf.encode("Hi<|eot_id|>", add_special_tokens=False).ids == [13347, 128009]
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert (config["bos_token"], config["eos_token"]) == ("<|begin_of_text|>", "<|eot_id|>")
    assert config["added_tokens_decoder"]["128009"]["content"] == "<|eot_id|>"
    generation = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (128000, [128001, 128008, 128009])
    try:
        import jinja2
    except ImportError:
        return
    text = jinja2.Template(config["chat_template"]).render(
        messages=[{"role": "user", "content": " Hi "}], bos_token=config["bos_token"], add_generation_prompt=True)
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
