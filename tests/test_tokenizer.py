"""Tests of llama2rs.tokenizer against llama2.c's run.c semantics and sentencepiece."""

from __future__ import annotations

import os
import random
import re
import struct
import time
from pathlib import Path

import pytest

from llama2rs.errors import InvalidTokenError, TokenizerError
from llama2rs.tokenizer import StreamDecoder, Tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("LLAMA2RS_MODELS") or REPO_ROOT.parent / "shared" / "models")

TOK512_BIN = MODELS / "stories260K" / "tok512.bin"
TOK512_MODEL = MODELS / "stories260K" / "tok512.model"
LLAMA2_BIN = MODELS / "llama2-tokenizer" / "tokenizer.bin"
LLAMA2_MODEL = MODELS / "llama2-tokenizer" / "tokenizer.model"


def _need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"tokenizer fixtures missing: {', '.join(missing)}")


@pytest.fixture(scope="module")
def tok512() -> Tokenizer:
    _need(TOK512_BIN)
    return Tokenizer(TOK512_BIN)


@pytest.fixture(scope="module")
def tok512_model() -> Tokenizer:
    _need(TOK512_MODEL)
    return Tokenizer(TOK512_MODEL)


@pytest.fixture(scope="module")
def llama2() -> Tokenizer:
    _need(LLAMA2_BIN)
    return Tokenizer(LLAMA2_BIN)


@pytest.fixture(scope="module")
def llama2_model() -> Tokenizer:
    _need(LLAMA2_MODEL)
    return Tokenizer(LLAMA2_MODEL)


@pytest.fixture(scope="module", params=["tok512", "llama2"])
def tok(request: pytest.FixtureRequest) -> Tokenizer:
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------------------
# a literal (O(n^2)) transcription of run.c's encode(), to compare with


def naive_encode(t: Tokenizer, text: str | bytes, bos: bool = True, eos: bool = False) -> list[int]:
    pieces = t.pieces
    scores = t.scores

    index: dict[bytes, int] = {}
    for i, p in enumerate(pieces):
        index.setdefault(p, i)

    def str_lookup(s: bytes) -> int:
        # run.c: bsearch over the sorted vocab; on duplicates llama2rs defines the lowest id
        return index.get(s, -1)

    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    tokens: list[int] = []
    if bos:
        tokens.append(1)
    if raw:
        dummy = str_lookup(b" ")
        if dummy != -1:
            tokens.append(dummy)
    buf = bytearray()
    for k, c in enumerate(raw):
        if c & 0xC0 != 0x80:
            buf.clear()
        buf.append(c)
        nxt = raw[k + 1] if k + 1 < len(raw) else 0
        if nxt & 0xC0 == 0x80 and len(buf) < 4:
            continue
        tid = str_lookup(bytes(buf))
        if tid != -1:
            tokens.append(tid)
        else:
            tokens.extend(b + 3 for b in buf)
        buf.clear()
    while True:
        best_score = struct.unpack("<f", struct.pack("<f", -1e10))[0]
        best_id = best_idx = -1
        for i in range(len(tokens) - 1):
            tid = str_lookup(pieces[tokens[i]] + pieces[tokens[i + 1]])
            if tid != -1 and scores[tid] > best_score:
                best_score, best_id, best_idx = scores[tid], tid, i
        if best_idx == -1:
            break
        tokens[best_idx : best_idx + 2] = [best_id]
    if eos:
        tokens.append(2)
    return tokens


def _random_text(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.25:
            out.append(rng.choice(" \n\t  "))
        elif r < 0.6:
            out.append(chr(rng.randint(32, 126)))
        elif r < 0.75:
            out.append(chr(rng.randint(0xA0, 0x2FFF)))
        elif r < 0.85:
            out.append(chr(rng.randint(0x4E00, 0x9FFF)))
        elif r < 0.95:
            out.append(rng.choice("😀🎉👍🏽中文日本語한국어éüñßø"))
        else:
            c = rng.randint(1, 0x10FFFF)
            out.append(chr(c if not 0xD800 <= c < 0xE000 else 0x41))
    return "".join(out)


def _write_bin(path: Path, pieces: list[bytes], scores: list[float], max_len: int | None = None) -> Path:
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(map(len, pieces)) if max_len is None else max_len))
        for p, s in zip(pieces, scores):
            f.write(struct.pack("<fi", s, len(p)))
            f.write(p)
    return path


# ---------------------------------------------------------------------------
# expectations produced by llama2.c itself


# Produced by llama2.c's own run.c encode() (compiled C, bos=1, eos=0) on the fixture
# tokenizers: "tok512" is stories260K/tok512.bin, "llama2" is llama2-tokenizer/tokenizer.bin.
LLAMA2C_ENCODINGS: dict[str, dict[str, list[int]]] = {
    "tok512": {
        "": [1],
        "a": [1, 261],
        " ": [1, 410, 410],
        "  leading spaces": [1, 410, 410, 278, 411, 380, 299, 262, 427, 412, 331, 419],
        "Once upon a time": [1, 403, 407, 261, 378],
        "Hello, world!": [1, 346, 306, 414, 432, 263, 304, 341, 443],
        "The quick brown fox jumps over the lazy dog.": [
            1, 291, 410, 456, 425, 417, 340, 268, 420, 327, 416, 272, 414, 444, 410, 449, 425, 423,
            427, 419, 334, 330, 265, 278, 412, 451, 422, 400, 428, 426
        ],
        "unicode: héllo wörld — naïve café": [
            1, 318, 416, 417, 429, 414, 418, 411, 467, 270, 485, 306, 414, 263, 198, 185, 420, 341,
            410, 481, 297, 412, 198, 178, 360, 280, 412, 431, 485
        ],
        "emoji 😀 and 中文字符": [
            1, 344, 423, 414, 449, 417, 410, 243, 162, 155, 131, 269, 410, 231, 187, 176, 233, 153,
            138, 232, 176, 154, 234, 175, 169
        ],
        "tabs\tand\nnewlines\n\n": [
            1, 259, 412, 430, 419, 12, 412, 264, 13, 416, 411, 424, 421, 271, 406, 13, 13
        ],
        "<s> not special </s>": [
            1, 410, 504, 419, 505, 297, 309, 262, 427, 411, 429, 417, 412, 421, 410, 504, 492, 419,
            505
        ],
        "1234567890 3.14159": [
            1, 410, 475, 479, 472, 484, 480, 490, 491, 487, 483, 477, 410, 472, 426, 475, 484, 475,
            480, 483
        ],
        "ĀĂĄ Ωμέγα Привет": [
            1, 410, 199, 131, 199, 133, 199, 135, 410, 209, 172, 209, 191, 209, 176, 209, 182, 209,
            180, 410, 211, 162, 212, 131, 211, 187, 211, 181, 211, 184, 212, 133
        ],
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx y y y y y y y y y y y y y y y y y y y y": [
            1, 410, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444,
            444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444,
            444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444, 444,
            348, 348, 348, 348, 348, 348, 348, 348, 348, 348, 348, 348, 348, 348, 348, 348, 348,
            348, 348, 348
        ],
        "don't stop believin'": [
            1, 279, 289, 439, 413, 349, 414, 427, 329, 421, 417, 411, 435, 271, 439
        ],
    },
    "llama2": {
        "": [1],
        "a": [1, 263],
        " ": [1, 259],
        "  leading spaces": [1, 259, 8236, 8162],
        "Once upon a time": [1, 9038, 2501, 263, 931],
        "Hello, world!": [1, 15043, 29892, 3186, 29991],
        "The quick brown fox jumps over the lazy dog.": [
            1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278, 17366, 11203, 29889
        ],
        "unicode: héllo wörld — naïve café": [
            1, 29104, 29901, 298, 3610, 417, 281, 1340, 430, 813, 1055, 30085, 345, 274, 28059
        ],
        "emoji 😀 and 中文字符": [
            1, 953, 29877, 2397, 29871, 243, 162, 155, 131, 322, 29871, 30275, 30333, 30578, 31277
        ],
        "tabs\tand\nnewlines\n\n": [1, 18859, 12, 392, 13, 1482, 9012, 13, 13],
        "<s> not special </s>": [1, 529, 29879, 29958, 451, 4266, 1533, 29879, 29958],
        "1234567890 3.14159": [
            1, 29871, 29896, 29906, 29941, 29946, 29945, 29953, 29955, 29947, 29929, 29900, 29871,
            29941, 29889, 29896, 29946, 29896, 29945, 29929
        ],
        "ĀĂĄ Ωμέγα Привет": [
            1, 29871, 30484, 31468, 199, 135, 29871, 30357, 30167, 30273, 30197, 30110, 7203, 7616
        ],
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx y y y y y y y y y y y y y y y y y y y y": [
            1, 921, 14633, 14633, 14633, 14633, 14633, 14633, 14633, 14633, 14633, 14633, 14633,
            4419, 12353, 343, 343, 343, 343, 343, 343, 343, 343, 343, 343, 343, 343, 343, 343, 343,
            343, 343, 343, 343, 343
        ],
        "don't stop believin'": [1, 1016, 29915, 29873, 5040, 1339, 347, 3845, 29915],
    },
}


@pytest.mark.parametrize("name", ["tok512", "llama2"])
def test_matches_llama2c_run_c(name: str, request: pytest.FixtureRequest) -> None:
    expected = LLAMA2C_ENCODINGS.get(name)
    if not expected:
        pytest.skip("no llama2.c reference encodings recorded")
    t: Tokenizer = request.getfixturevalue(name)
    for text, ids in expected.items():
        assert t.encode(text) == ids, text
        assert naive_encode(t, text) == ids, text


# ---------------------------------------------------------------------------
# loading


def test_properties(tok512: Tokenizer, llama2: Tokenizer) -> None:
    assert tok512.vocab_size == len(tok512) == 512
    assert llama2.vocab_size == 32000
    assert tok512.max_token_length == 7
    assert llama2.max_token_length == 27
    for t in (tok512, llama2):
        assert t.bos_id == 1 and t.eos_id == 2
        assert t.format == "bin"
        assert t.id_to_piece(1) == "\n<s>\n"
        assert t.id_to_piece(2) == "\n</s>\n"
        assert t.id_to_piece(3) == "<0x00>"
        assert t.piece_to_id("<0xFF>") == 258
        assert t.piece_to_id(" ") is not None
        assert t.piece_to_id("no such piece, surely") is None
        assert len(t.scores) == len(t.pieces) == t.vocab_size
    assert llama2.id_to_piece(278) == " the"
    assert llama2.piece_to_id(" the") == 278


@pytest.mark.parametrize("pair", [("tok512", "tok512_model"), ("llama2", "llama2_model")])
def test_bin_and_model_agree(pair: tuple[str, str], request: pytest.FixtureRequest) -> None:
    tb: Tokenizer = request.getfixturevalue(pair[0])
    tm: Tokenizer = request.getfixturevalue(pair[1])
    assert tm.format == "model"
    assert tb.vocab_size == tm.vocab_size
    assert tb.pieces == tm.pieces
    assert tb.scores == tm.scores
    assert tb.max_token_length == tm.max_token_length
    rng = random.Random(7)
    texts = ["", "Hello world", "Once upon a time, there was a girl.", "  a\n\nb  ", "日本語 😀"]
    texts += [_random_text(rng, rng.randint(1, 80)) for _ in range(200)]
    for text in texts:
        assert tb.encode(text, eos=True) == tm.encode(text, eos=True), text
        ids = tb.encode(text)
        assert tb.decode(ids) == tm.decode(ids)


def test_format_detected_by_content(tmp_path: Path) -> None:
    _need(TOK512_BIN, TOK512_MODEL)
    model_named_bin = tmp_path / "tokenizer.bin"
    model_named_bin.write_bytes(TOK512_MODEL.read_bytes())
    bin_named_model = tmp_path / "tokenizer.model"
    bin_named_model.write_bytes(TOK512_BIN.read_bytes())
    a, b = Tokenizer(model_named_bin), Tokenizer(bin_named_model)
    assert (a.format, b.format) == ("model", "bin")
    assert a.pieces == b.pieces and a.scores == b.scores


def test_bin_with_max_length_10_is_not_taken_for_protobuf(tmp_path: Path) -> None:
    # max_token_length == 10 makes the file start with 0x0A, like a protobuf
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n", b"abcdefghij"]
    t = Tokenizer(_write_bin(tmp_path / "t.bin", pieces, [0.0] * 4))
    assert t.format == "bin"
    assert t.pieces == tuple(pieces) and t.max_token_length == 10


@pytest.mark.parametrize("model_path, bin_path", [(TOK512_MODEL, TOK512_BIN), (LLAMA2_MODEL, LLAMA2_BIN)])
def test_from_pieces_equals_llama2c_export(model_path: Path, bin_path: Path) -> None:
    """Pieces and scores as sentencepiece itself reports them (what a GGUF file stores) map
    to llama2.c's exported tokenizer.bin byte for byte."""
    spm = pytest.importorskip("sentencepiece")
    _need(model_path, bin_path)
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    n = sp.get_piece_size()
    t = Tokenizer.from_pieces([sp.id_to_piece(i) for i in range(n)], [sp.get_score(i) for i in range(n)],
                              sp.bos_id(), sp.eos_id(), vocab_size=n, name="spm", format="test")
    assert (t.path, t.format, t.vocab_size) == ("spm", "test", n)
    assert t.to_bin_bytes() == bin_path.read_bytes()


def test_from_pieces_errors() -> None:
    with pytest.raises(TokenizerError, match="3 pieces but 2 scores"):
        Tokenizer.from_pieces(["a", "b", "c"], [0.0, 0.0])
    with pytest.raises(TokenizerError, match="holds no tokens"):
        Tokenizer.from_pieces([], [])
    with pytest.raises(TokenizerError, match="piece 1 is a bytes"):
        Tokenizer.from_pieces(["a", b"b"], [0.0, 0.0])  # type: ignore[list-item]
    with pytest.raises(TokenizerError, match="expected 4 tokens, found 3"):
        Tokenizer.from_pieces(["a", "b", "c"], [0.0] * 3, vocab_size=4)
    with pytest.raises(TokenizerError, match="not a float32"):
        Tokenizer.from_pieces(["a"], [1e300])
    t = Tokenizer.from_pieces(["<unk>", "<s>", "</s>", "\u2581a\u2581b"], [0.0, 0.0, 0.0, 0.1], None, None)
    assert t.pieces == (b"<unk>", b"<s>", b"</s>", b" a b") and t.scores[3] == struct.unpack("<f", struct.pack("<f", 0.1))[0]


def test_vocab_size_argument() -> None:
    _need(TOK512_BIN, TOK512_MODEL)
    for path in (TOK512_BIN, TOK512_MODEL):
        assert Tokenizer(path, vocab_size=512).vocab_size == 512
        for wrong in (511, 513, 32000):
            with pytest.raises(TokenizerError, match=rf"expected {wrong} tokens, found 512") as e:
                Tokenizer(path, vocab_size=wrong)
            assert str(path) in str(e.value)


# ---------------------------------------------------------------------------
# errors


def test_missing_and_empty_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.bin"
    with pytest.raises(TokenizerError, match="not found") as e:
        Tokenizer(missing)
    assert str(missing) in str(e.value)
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    with pytest.raises(TokenizerError, match="empty") as e:
        Tokenizer(empty)
    assert str(empty) in str(e.value)
    with pytest.raises(TokenizerError, match="not a regular file"):
        Tokenizer(tmp_path)  # a directory


def test_truncated_bin(tmp_path: Path) -> None:
    _need(TOK512_BIN)
    data = TOK512_BIN.read_bytes()
    path = tmp_path / "t.bin"
    boundaries = {4}  # offsets where an entry ends: a shorter but well-formed file
    off = 4
    while off < len(data):
        off += 8 + struct.unpack_from("<i", data, off + 4)[0]
        boundaries.add(off)
    for cut in (1, 3, 5, 11, 12, 13, 17, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        if cut in boundaries:
            with pytest.raises(TokenizerError, match="expected 512 tokens, found"):
                Tokenizer(path, vocab_size=512)
            continue
        for vocab_size in (None, 512):
            with pytest.raises(TokenizerError, match="truncated") as e:
                Tokenizer(path, vocab_size=vocab_size)
            assert str(path) in str(e.value)
    path.write_bytes(data[:4])
    with pytest.raises(TokenizerError, match="no tokens"):
        Tokenizer(path)


def test_corrupt_bin(tmp_path: Path) -> None:
    path = tmp_path / "t.bin"
    path.write_bytes(struct.pack("<i", -5) + struct.pack("<fi", 0.0, 1) + b"a")
    with pytest.raises(TokenizerError, match="max_token_length is -5"):
        Tokenizer(path)
    path.write_bytes(struct.pack("<i", 4) + struct.pack("<fi", 0.0, -1))
    with pytest.raises(TokenizerError, match="negative length -1"):
        Tokenizer(path)
    path.write_bytes(struct.pack("<i", 2) + struct.pack("<fi", 0.0, 3) + b"abc")
    with pytest.raises(TokenizerError, match="3 bytes long, more than the header's max_token_length 2"):
        Tokenizer(path)


def test_truncated_and_corrupt_model(tmp_path: Path) -> None:
    _need(TOK512_MODEL)
    data = TOK512_MODEL.read_bytes()
    path = tmp_path / "t.model"
    for cut in (3, 5, 10, 15, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(TokenizerError, match="corrupt sentencepiece .model file: truncated") as e:
            Tokenizer(path)
        assert str(path) in str(e.value)
    cases = {
        b"\x0a\x02\x0f\x01": "invalid wire type 7",
        b"\x0a\x03\x08\x01\x00": "field number 0",
        b"\x0a\x03\x0a\x01\xff": "not valid UTF-8",
        b"\x0a\x0b\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff": "varint longer than 10 bytes",
        b"\x0a\x03\x0b\x08\x01": "unterminated group",
    }
    for blob, problem in cases.items():
        path.write_bytes(blob)
        with pytest.raises(TokenizerError, match=problem):
            Tokenizer(path)


def test_fuzzed_files_raise_only_tokenizer_error(tmp_path: Path) -> None:
    _need(TOK512_BIN, TOK512_MODEL)
    rng = random.Random(3)
    path = tmp_path / "fuzz"
    for source in (TOK512_BIN, TOK512_MODEL):
        data = bytearray(source.read_bytes())
        for _ in range(300):
            blob = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                blob[rng.randrange(len(blob))] = rng.randrange(256)
            if rng.random() < 0.3:
                del blob[rng.randrange(len(blob)) :]
            path.write_bytes(bytes(blob))
            try:
                t = Tokenizer(path)
            except TokenizerError:
                continue
            # a tokenizer that loads must work (or say why it cannot encode)
            assert t.decode([0, 1, 2]) is not None
            try:
                ids = t.encode("hello world")
            except TokenizerError as exc:
                assert "byte-fallback" in str(exc)
            else:
                t.decode(ids)


def test_invalid_token_ids(tok512: Tokenizer) -> None:
    for bad in (-1, 512, 10**9):
        with pytest.raises(InvalidTokenError, match=rf"{bad}.*vocab_size 512"):
            tok512.decode([1, 5, bad])
        with pytest.raises(InvalidTokenError, match=str(bad)):
            tok512.piece_bytes(1, bad)
        with pytest.raises(InvalidTokenError, match=str(bad)):
            tok512.id_to_piece(bad)
        with pytest.raises(InvalidTokenError, match=str(bad)):
            tok512.stream().push(bad)


def test_missing_byte_fallback_token(tmp_path: Path) -> None:
    t = Tokenizer(_write_bin(tmp_path / "small.bin", [b"<unk>", b"\n<s>\n", b"\n</s>\n", b" ", b"a"], [0.0] * 5))
    assert t.encode("a") == [1, 3, 4]
    with pytest.raises(TokenizerError, match="byte 0x62"):
        t.encode("b")


# ---------------------------------------------------------------------------
# encoding


def test_encode_basics(tok: Tokenizer) -> None:
    assert tok.encode("") == [1]
    assert tok.encode("", bos=False) == []
    assert tok.encode("", bos=False, eos=True) == [2]
    dummy = tok.piece_to_id(" ")
    ids = tok.encode("x", bos=False, eos=True)
    assert ids[-1] == 2 and ids[0] in (dummy, tok.piece_to_id(" x"))
    # an unknown 4-byte character falls back to its 4 byte tokens (byte + 3)
    assert tok.encode("\U0001F9EA", bos=False) == [dummy] + [b + 3 for b in "\U0001F9EA".encode()]


def test_encode_known_llama2(llama2: Tokenizer) -> None:
    # the Llama 2 tokenization of a few strings (as also given by sentencepiece)
    assert llama2.encode("Hello world") == [1, 15043, 3186]
    assert llama2.encode("Hello world", bos=False, eos=True) == [15043, 3186, 2]
    assert llama2.encode(" ") == [1, 259]
    assert llama2.encode("\n") == [1, 29871, 13]


@pytest.mark.parametrize("seed", range(4))
def test_heap_encode_equals_naive_random(tok: Tokenizer, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(150):
        text = _random_text(rng, rng.randint(0, 40))
        assert tok.encode(text) == naive_encode(tok, text), text


def test_heap_encode_equals_naive_whitespace_and_repeats(tok: Tokenizer) -> None:
    # runs of equal pieces give many score ties; llama2's whitespace pieces score -1e9
    texts = ["a" * 37, " " * 21, "\n" * 9, "ab" * 20, " the" * 10, "  x  y   z    w" * 3, "😀" * 7]
    for text in texts:
        assert tok.encode(text) == naive_encode(tok, text), text


def test_heap_encode_equals_naive_raw_bytes(tok512: Tokenizer) -> None:
    # bytes input: invalid UTF-8, stray continuation bytes, run.c's 4-byte group cap
    rng = random.Random(11)
    samples = [b"\x80\x80\x80\x80\x80\x80", b"a\x80\x81\x82\x83\x84b", b"\xf0\x9f\x98\x80\x80", b"\xff\xfe"]
    samples += [bytes(rng.choice(b"ab \x80\xbf\xc3\xa9\xe4\xf0") for _ in range(rng.randint(1, 30))) for _ in range(300)]
    for raw in samples:
        assert tok512.encode(raw) == naive_encode(tok512, raw), raw


def test_heap_encode_equals_naive_synthetic_vocab(tmp_path: Path) -> None:
    # a vocabulary full of score ties, duplicate pieces and never-merging scores
    base = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [b"<0x%02X>" % i for i in range(256)]
    extra = [b" ", b"a", b"b", b"c", b"ab", b"ba", b"bc", b"ca", b"abc", b"ab", b"aa", b"cc", b"aaa", b" a", b"bb", b"cab"]
    extra_scores = [0.0, -1.0, -1.0, -1.0, -2.0, -2.0, -2.0, -2.0, -3.0, 5.0, -2.0, -1e10, -2.0, float("nan"), -1e9, -3.0]
    t = Tokenizer(_write_bin(tmp_path / "syn.bin", base + extra, [0.0] * len(base) + extra_scores))
    ab_first = 259 + extra.index(b"ab")
    assert t.piece_to_id("ab") == ab_first  # duplicates: lowest id wins
    assert t.encode("ab", bos=False) == [259, ab_first]  # the duplicate's score 5.0 is not used
    assert t.encode("cc", bos=False) == [259, 262, 262]  # score -1e10 never merges
    rng = random.Random(5)
    for _ in range(1500):
        text = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 25)))
        assert t.encode(text, eos=True) == naive_encode(t, text, eos=True), text


def test_encode_10k_chars_is_fast(llama2: Tokenizer, tok512: Tokenizer) -> None:
    rng = random.Random(0)
    text = "".join(_random_text(rng, 1) if rng.random() < 0.1 else rng.choice("etaoin shrdlu") for _ in range(10_000))
    for t in (llama2, tok512):
        start = time.perf_counter()
        ids = t.encode(text)
        elapsed = time.perf_counter() - start
        assert elapsed < 1.0, f"encoding 10k chars took {elapsed:.3f}s"
        assert t.decode(ids) == text


# ---------------------------------------------------------------------------
# decoding

ROUNDTRIP_TEXTS = [
    "",
    "a",
    " ",
    "  leading spaces",
    "trailing spaces   ",
    "\n",
    "line one\nline two\n\n\tindented",
    "Once upon a time, there was a little girl named Lily.",
    "héllo wörld, ça va? ñandú",
    "日本語のテキストと中文文本",
    "한국어 텍스트",
    "emoji 😀🎉👍🏽 and flags 🇫🇷 and ZWJ 👨‍👩‍👧",
    "math ∑∫√∞ ≠ ≤ ≥",
    "mixed\r\nline endings\r",
    "<s> </s> <0x41> <unk>",
    "control \x01\x02\x7f and nul \x00 bytes",
]


def test_decode_roundtrip(tok: Tokenizer) -> None:
    rng = random.Random(2)
    texts = ROUNDTRIP_TEXTS + [_random_text(rng, rng.randint(1, 100)) for _ in range(300)]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text, text
        assert tok.decode(tok.encode(text, eos=True)) == text, text
        assert tok.decode(tok.encode(text, bos=False), prev_id=1) == text, text


def test_decode_rules(llama2: Tokenizer) -> None:
    the = llama2.piece_to_id(" the")
    assert the is not None
    # the space of the first piece after BOS is dropped, but only there
    assert llama2.decode([1, the, the]) == "the the"
    assert llama2.decode([the, the]) == " the the"
    assert llama2.decode([1, the, 2, 1, the]) == "thethe"  # stripped after each BOS
    assert llama2.piece_bytes(1, the) == b"the"
    assert llama2.piece_bytes(5, the) == b" the"
    assert llama2.piece_bytes(None, the) == b" the"
    assert llama2.piece_bytes(7, 1) == b"" and llama2.piece_bytes(7, 2) == b""
    assert llama2.piece_bytes(7, 3 + 0xE2) == b"\xe2"
    assert llama2.piece_bytes(1, 3 + 0x20) == b" "  # a byte piece is not stripped
    assert llama2.piece_bytes(7, 0) == b"<unk>"
    assert llama2.decode([3 + 0xFF]) == "\ufffd"
    assert llama2.decode_bytes([3 + 0xFF, 3 + 0x41]) == b"\xffA"
    import numpy as np

    assert llama2.decode(np.array(llama2.encode("numpy ids"), dtype=np.int64)) == "numpy ids"


def test_stream_decoder(tok: Tokenizer) -> None:
    for text in ROUNDTRIP_TEXTS + ["😀😀 中文 🎉", "ß" * 5 + "🏽" * 5]:
        ids = tok.encode(text)
        stream = tok.stream(prev_id=ids[0])
        assert isinstance(stream, StreamDecoder)
        chunks = [stream.push(i) for i in ids[1:]]
        chunks.append(stream.flush())
        for chunk in chunks:
            assert "\ufffd" not in chunk, (text, chunks)  # never a partial character
        assert "".join(chunks) == tok.decode(ids) == text
        assert stream.prev_id == ids[-1]


def test_stream_decoder_holds_partial_characters(llama2: Tokenizer) -> None:
    stream = llama2.stream()
    emoji = "😀".encode()
    out = [stream.push(b + 3) for b in emoji]
    assert out == ["", "", "", "😀"]
    assert stream.push(llama2.piece_to_id(" the") or 0) == " the"
    # an invalid sequence becomes U+FFFD as soon as it is clearly invalid
    assert stream.push(0xE2 + 3) == ""
    assert stream.push(0x41 + 3) == "\ufffdA"
    assert stream.push(0xE2 + 3) == ""
    assert stream.flush() == "\ufffd"
    # after BOS (the default) the leading space is dropped, as in decode()
    stream = StreamDecoder(llama2)
    assert stream.push_many(llama2.encode("Hi there", bos=False)) + stream.flush() == "Hi there"
    stream = StreamDecoder(llama2, prev_id=None)
    assert stream.push_many(llama2.encode("Hi there", bos=False)) == " Hi there"


def test_stream_equals_decode_on_random_ids(tok: Tokenizer) -> None:
    rng = random.Random(9)
    byte_ids = list(range(3 + 0x80, 3 + 0x100))
    for _ in range(200):
        ids = [rng.choice(byte_ids) if rng.random() < 0.6 else rng.randrange(tok.vocab_size) for _ in range(20)]
        stream = tok.stream(prev_id=1)
        text = "".join(stream.push(i) for i in ids) + stream.flush()
        assert text == tok.decode(ids, prev_id=1)


# ---------------------------------------------------------------------------
# sentencepiece


ENGLISH = [
    "Hello world",
    "Once upon a time, there was a little girl named Lily.",
    "She loved to play outside in the park with her friends.",
    "The quick brown fox jumps over the lazy dog.",
    "I believe the meaning of life is",
    "Simply put, the theory of relativity states that",
    "It's 3:45 p.m. on Tuesday, 12 March 2024 -- isn't it?",
    "Email me at someone@example.com or visit https://example.org/path?x=1&y=2.",
    "Tom said: \"Let's go!\" and (quietly) left.",
    "  Two leading spaces, and  double  spaces inside.",
    "Tabs\tand\nnewlines\n\nare bytes.",
    "naïve café résumé, Zürich and São Paulo",
    "数学 and émojis 😀 mixed in",
]


def test_llama2_agrees_with_sentencepiece(llama2: Tokenizer) -> None:
    spm = pytest.importorskip("sentencepiece")
    _need(LLAMA2_MODEL)
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))
    rng = random.Random(4)
    texts = ENGLISH + ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz ,.'!?\n") for _ in range(60)) for _ in range(300)]
    for text in texts:
        assert llama2.encode(text) == [1] + sp.encode(text), text
        assert llama2.decode(llama2.encode(text)) == sp.decode(sp.encode(text)), text


def test_literal_sentencepiece_space_marker_differs(llama2: Tokenizer) -> None:
    # Known difference: sentencepiece reads a literal '▁' (U+2581) in the input as a
    # space, while llama2.c's vocabulary has ' ' in its place, so run.c encodes '▁'
    # with three byte tokens.
    assert llama2.encode("a▁b", bos=False) == [263, 3 + 0xE2, 3 + 0x96, 3 + 0x81, 29890]
    assert llama2.decode(llama2.encode("a▁b")) == "a▁b"


# ----------------------------------------------------------------------------- tokenizer.json


def _gpt2_chars() -> dict[int, str]:
    """GPT-2's bytes_to_unicode, written out here (independently of llama2rs.bpe)."""
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, n = {}, 0
    for b in range(256):
        if b in kept:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def _tiny_tokenizer_json(merges: list[tuple[str, str]], **changes) -> dict:
    """A byte-level BPE tokenizer.json: the 256 bytes as ids 0..255, then one token per merge,
    then <|end|> as an added special token; ``changes`` replace top-level entries."""
    chars = _gpt2_chars()
    vocab = {chars[b]: b for b in range(256)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    doc = {
        "version": "1.0", "truncation": None, "padding": None, "normalizer": None,
        "added_tokens": [{"id": len(vocab), "content": "<|end|>", "special": True, "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False}],
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [[a, b] for a, b in merges]},
    }
    doc.update(changes)
    return doc


TINY_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "in")]


def test_tokenizer_json_byte_level_bpe(tmp_path):
    """A GPT-2-style tokenizer.json (ByteLevel with its regex) is recognised by content and
    encodes as the `tokenizers` package does, when that is installed; and by hand otherwise."""
    import json

    path = tmp_path / "tokenizer.json"
    doc = _tiny_tokenizer_json(TINY_MERGES)
    path.write_text(json.dumps(doc))
    tok = Tokenizer(path)
    assert tok.format == "tokenizer.json" and tok.vocab_size == 256 + 5 + 1
    # pieces " the", " in", " inthe", "in": Ġthe (258); Ġin (260); Ġin t he (260 116 257); in (259)
    assert tok.encode(" the in inthe", bos=False) == [258, 260, 260, 116, 257]
    assert tok.encode("in", bos=False) == [259]
    assert tok.encode("x<|end|>", bos=False, special=True) == [120, 261]
    assert tok.decode([258, 260, 261]) == " the in<|end|>"
    texts = [" the in inthe", "Hello, wörld! 日本 🙂\n\n  the", "'s 's 'S 123456 \t x"]
    try:
        import tokenizers
    except ImportError:
        return
    peer = tokenizers.Tokenizer.from_str(json.dumps(doc))
    for text in texts:
        assert tok.encode(text, bos=False) == peer.encode(text, add_special_tokens=False).ids, repr(text)


@pytest.mark.parametrize("change,needle", [
    ({"normalizer": {"type": "NFC"}}, "normalizer 'NFC'"),
    ({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}, "pre_tokenizer"),
    ({"decoder": {"type": "Metaspace"}}, "not a byte-level BPE"),
    ({"model": {"type": "Unigram", "vocab": []}}, "not a BPE tokenizer.json"),
])
def test_tokenizer_json_refusals(tmp_path, change, needle):
    import json

    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(_tiny_tokenizer_json(TINY_MERGES, **change)))
    with pytest.raises(TokenizerError, match=re.escape(needle)):
        Tokenizer(path)


def test_tokenizer_json_merges_out_of_id_order_are_refused(tmp_path):
    """Rank merging equals HuggingFace's pair merging only when merges follow the ids."""
    import json

    doc = _tiny_tokenizer_json(TINY_MERGES)
    doc["model"]["merges"] = doc["model"]["merges"][::-1]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TokenizerError, match="not in token-id order"):
        Tokenizer(path)
    doc["model"]["merges"] = [["q", "z"]]
    path.write_text(json.dumps(doc))
    with pytest.raises(TokenizerError, match="does not make a token"):
        Tokenizer(path)


def test_tokenizer_json_bos_eos_from_tokenizer_config(tmp_path):
    import json

    (tmp_path / "tokenizer.json").write_text(json.dumps(_tiny_tokenizer_json(TINY_MERGES)))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": None, "eos_token": {"content": "<|end|>"}}))
    tok = Tokenizer(tmp_path / "tokenizer.json")
    assert tok.eos_id == 261 and tok.stop_ids == (261,) and tok.bos_id == -1
    with pytest.raises(TokenizerError, match="no BOS token"):
        tok.encode("the")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
    with pytest.raises(TokenizerError, match="eos_token '<|nope|>' is not a token"):
        Tokenizer(tmp_path / "tokenizer.json")
