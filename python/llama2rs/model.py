"""The user-facing model: the Rust core plus the tokenizer."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from . import _core
from .config import Config
from .errors import ArgumentError, ContextLengthError, InvalidTokenError, TokenizerError
from .completion import CHAT_DEFAULTS, COMPLETION_DEFAULTS
from .tokenizer import BOS_ID, EOS_ID, Tokenizer

if TYPE_CHECKING:
    from .chat import ChatTemplate

__all__ = ["Model", "find_tokenizer", "available_kernels"]


def available_kernels() -> list[str]:
    """The kernel implementations this CPU can run, slowest first (``scalar``, ``portable``, then
    ``avx2`` and ``avx512`` on x86 or ``neon`` on aarch64)."""
    return _core.available_kernels()

PathLike = Union[str, "os.PathLike[str]"]


def find_tokenizer(model_path: PathLike) -> Optional[Path]:
    """The tokenizer beside a model file: ``tokenizer.bin`` or ``tokenizer.model`` in the same
    folder, else the only ``tok*.bin`` (or ``tok*.model``) there (llama2.c names small ones
    ``tok512.bin``). None when there is no such file or the choice is ambiguous."""
    folder = Path(model_path).resolve().parent
    for name in ("tokenizer.bin", "tokenizer.model"):
        if (folder / name).is_file():
            return folder / name
    for pattern in ("tok*.bin", "tok*.model"):
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if len(found) == 1:
            return found[0]
    return None


def _check_int(name: str, value: object, minimum: int, maximum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ArgumentError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ArgumentError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def _token_ids(ids: Iterable[object], vocab_size: int) -> list[int]:
    """``ids`` as a list of ints, each an integer in ``[0, vocab_size)``: a float such as 5.7 is
    not silently truncated to 5, and an id too large for the core is an invalid token, not an
    ``OverflowError``."""
    checked = []
    for index, token in enumerate(ids):
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
            raise InvalidTokenError(f"token id at index {index} must be an integer, got {token!r}")
        if not 0 <= token < vocab_size:
            raise InvalidTokenError(f"token id {token} at index {index} is out of range for vocab_size {vocab_size}")
        checked.append(int(token))
    return checked


def _check_float(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ArgumentError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not low <= number <= high:
        raise ArgumentError(f"{name} must be in [{low}, {high}], got {value}")
    return number


def _vocabulary_problem(vocabulary: Mapping[str, Any]) -> Optional[str]:
    """Why a GGUF file's vocabulary cannot make our tokenizer (llama2.c's sentencepiece BPE), or
    None when it can."""
    kind = vocabulary.get("model")
    if kind == "gpt2":
        from .bpe import PRE_TOKENIZERS

        pre = vocabulary.get("pre")
        if pre not in PRE_TOKENIZERS:
            return (f"its GGUF pre-tokenizer is {pre!r}; llama2rs runs byte-level BPE vocabularies with "
                    f"{', '.join(repr(p) for p in sorted(PRE_TOKENIZERS))}")
        return None
    if kind != "llama":
        return (f"its GGUF tokenizer model is {kind!r}; llama2rs reads 'llama' (sentencepiece) and 'gpt2' "
                "(byte-level BPE) vocabularies")
    bos, eos = vocabulary.get("bos_id"), vocabulary.get("eos_id")
    if (bos if bos is not None else BOS_ID, eos if eos is not None else EOS_ID) != (BOS_ID, EOS_ID):
        return (f"its GGUF vocabulary has BOS/EOS ids {bos}/{eos}; llama2rs's tokenizer (llama2.c's) "
                f"needs {BOS_ID}/{EOS_ID}")
    return None


def _tokenizer_from_vocabulary(vocabulary: Mapping[str, Any], vocab_size: int, name: str) -> Tokenizer:
    """The tokenizer of a GGUF file's ``tokenizer.ggml.*`` arrays (sentencepiece pieces, UTF-8).
    Without scores every piece scores 0, as llama.cpp's llama-vocab.cpp does then
    (``scores ? scores[i] : 0.0f``). Token types are not used (llama2.c's export ignores them)."""
    tokens = vocabulary["tokens"]
    if vocabulary.get("model") == "gpt2":
        from .bpe import ByteLevelTokenizer

        return ByteLevelTokenizer.from_gguf(  # type: ignore[return-value]
            tokens, vocabulary.get("token_type"), vocabulary.get("pre"), vocabulary.get("bos_id"),
            vocabulary.get("eos_id"), vocab_size, name)
    pieces: list[str] = []
    for i, token in enumerate(tokens):
        try:
            pieces.append(bytes(token).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise TokenizerError(f"{name!r}: GGUF token {i} is not valid UTF-8 ({exc.reason})") from None
    scores = vocabulary.get("scores")
    if scores is None:
        scores = [0.0] * len(pieces)
    return Tokenizer.from_pieces(pieces, scores, BOS_ID, EOS_ID, vocab_size=vocab_size, name=name, format="gguf")


class Model:
    """A Llama-family model (Llama 2 and 3, Mistral): a llama2rs file (``*.l2rs.safetensors``,
    written by ``llama2rs export``, format version 1 to 3: fp32, Q8_0 or 4/8-bit GPTQ weights,
    tokenizer inside), a llama2.c file (legacy, version 1 fp32, version 2 Q8_0) or a GGUF file
    (version 3, architecture ``llama``; F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K and Q6_K
    tensors).

    The file is memory-mapped, not read: opening costs milliseconds whatever the size. A Model
    is read-only and can be shared by threads; every :meth:`generate` call owns its own state
    (KV cache, sampler) and computes with the GIL released.

    ``tokenizer_path`` defaults to the tokenizer stored in a llama2rs file or a GGUF file (its
    ``tokenizer.ggml.*`` sentencepiece or ``gpt2`` byte-level BPE vocabulary), else the one found
    beside the model (see :func:`find_tokenizer`); without one (or with a GGUF tokenizer llama2rs
    does not run), only the token-id methods work.
    ``n_threads`` defaults to the number of physical cores.
    ``kernels`` picks the implementation (``"auto"``: the fastest this CPU runs, chosen at run
    time; or ``"avx512"``, ``"avx2"``, ``"neon"``, ``"portable"``, ``"scalar"`` from
    :func:`available_kernels`). 4-bit weights multiply int8-quantized activations (blocks of
    32) unless ``exact=True``, which keeps activations in fp32.
    ``kv_cache`` is what the KV cache stores: ``"f16"`` (half the memory, and half the bytes
    attention reads per token) or ``"f32"``; ``"auto"`` picks f16 for 4-bit and 8-bit GPTQ
    weights and GGUF's integer block types (Q4_K ... Q4_1) on x86 kernels with hardware fp16
    conversion (``avx2``, ``avx512``), and f32 for fp32, F16/BF16 and llama2.c Q8_0 weights
    (whose results then equal llama2.c's), for ``exact=True`` and for the other kernels.
    """

    def __init__(
        self,
        model_path: PathLike,
        tokenizer_path: Optional[PathLike] = None,
        n_threads: Optional[int] = None,
        kernels: str = "auto",
        exact: bool = False,
        kv_cache: str = "auto",
    ) -> None:
        if n_threads is not None:
            # Past what the binding takes (int64); the core refuses more than it will spawn.
            n_threads = _check_int("n_threads", n_threads, 1, 2**63 - 1)
        self._core = _core.Model(os.fspath(model_path), n_threads, kernels, bool(exact), kv_cache)
        self.config = Config(**self._core.config)  # type: ignore[arg-type]
        self._path = Path(self._core.path)  # kept for messages after close()
        self._tokenizer: Optional[Tokenizer] = None
        self._stop_ids: Optional[tuple[int, ...]] = None
        # A tokenizer stored in the file is parsed on first use (~25 ms for 32000 tokens), so
        # opening stays in milliseconds; a tokenizer file is checked against the model now.
        self._embedded_tokenizer: Optional[bytes] = None
        self._vocabulary: Optional[dict] = None  # a GGUF file's, until parsed
        self._no_tokenizer = f"no tokenizer for {self.path}: none was found beside it; pass tokenizer_path="
        vocabulary = None if tokenizer_path is not None else self._core.vocabulary
        if tokenizer_path is not None:
            self._tokenizer = Tokenizer(tokenizer_path, vocab_size=self.config.vocab_size)
        elif vocabulary is not None:
            problem = _vocabulary_problem(vocabulary)
            if problem is None:
                self._vocabulary = dict(vocabulary)
            else:
                self._no_tokenizer = f"no tokenizer for {self.path}: {problem}; pass tokenizer_path="
        elif self._core.tokenizer_bytes:
            self._embedded_tokenizer = self._core.tokenizer_bytes
        else:
            found = find_tokenizer(model_path)
            if found is not None:
                self._tokenizer = Tokenizer(found, vocab_size=self.config.vocab_size)

    # -- facts -------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Optional[Tokenizer]:
        """The model's tokenizer, or None when it has none."""
        if self._tokenizer is None and self._embedded_tokenizer is not None:
            from .formats import l2rs  # a llama2rs file: its format's reader

            name = f"{self.path} (embedded)"
            self._tokenizer = l2rs.read_tokenizer(self._embedded_tokenizer, self.metadata, self.config.vocab_size, name)
            self._embedded_tokenizer = None
        if self._tokenizer is None and self._vocabulary is not None:
            self._tokenizer = _tokenizer_from_vocabulary(self._vocabulary, self.config.vocab_size, f"{self.path} (gguf)")
            self._vocabulary = None
        return self._tokenizer

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The ids generation stops at: BOS and EOS (llama2.c's), those a llama2rs file lists
        (every ``eos_token_id`` of its checkpoint), and the tokenizer's own stop tokens, such as
        Llama 3's ``<|eot_id|>`` and ``<|eom_id|>``."""
        if self._stop_ids is None:
            try:
                tokenizer_stops = tuple(getattr(self.tokenizer, "stop_ids", ()))
            except TokenizerError:  # a vocabulary we cannot read: its token ids still run
                tokenizer_stops = ()
            listed: tuple[int, ...] = ()
            if "stop_ids" in self.metadata:
                from .formats import l2rs

                listed = l2rs.stop_ids(self.metadata, self.config.vocab_size, str(self.path))
            self._stop_ids = tuple(dict.fromkeys((self.config.bos_id, self.config.eos_id) + listed + tokenizer_stops))
        return self._stop_ids

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        """Release the model: its memory map goes as soon as no generation running from it is
        left (the garbage collector does the same for a model nobody holds). Every later
        computation raises :class:`ArgumentError`; closing again does nothing. ``with
        llama2rs.Model(path) as m:`` closes at the end of the block."""
        self._core.close()

    @property
    def closed(self) -> bool:
        return self._core.closed

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def format(self) -> str:
        """``llama2rs-v1``, ``llama2c-legacy``, ``llama2c-v1``, ``llama2c-v2-q8_0`` or ``gguf-v3``."""
        return self._core.format

    @property
    def metadata(self) -> dict[str, str]:
        """A llama2rs file's metadata (source, quantization, ...); empty for llama2.c files."""
        return self._core.metadata

    @property
    def group_size(self) -> Optional[int]:
        """Weights per scale for Q8_0 files, else None."""
        return self._core.group_size

    @property
    def shared_classifier(self) -> bool:
        return self._core.shared_classifier

    @property
    def n_threads(self) -> int:
        return self._core.n_threads

    @property
    def kernels(self) -> str:
        """The kernel implementation in use: ``scalar``, ``portable``, ``avx2``, ``avx512`` or ``neon``."""
        return self._core.kernels

    @property
    def exact(self) -> bool:
        return self._core.exact

    @property
    def kv_cache(self) -> str:
        """What the KV cache stores: ``f32`` or ``f16``."""
        return self._core.kv_cache

    @property
    def file_size(self) -> int:
        return self._core.file_size

    def __repr__(self) -> str:
        state = ", closed" if self.closed else f", format={self.format!r}"
        return f"Model({str(self.path)!r}{state}, config={self.config})"

    # -- tokens ------------------------------------------------------------------------------

    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise TokenizerError(self._no_tokenizer)
        return self.tokenizer

    def tokenize(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of ``text``, exactly as llama2.c's encode() gives them."""
        return self._require_tokenizer().encode(text, bos=bos, eos=eos)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._require_tokenizer().decode(ids)

    # -- compute -----------------------------------------------------------------------------

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """float32 ``[len(ids), vocab_size]``: row i is the next-token logits after ``ids[:i+1]``,
        teacher-forced from position 0."""
        return self._core.logits(_token_ids(ids, self.config.vocab_size))

    def generate_tokens(
        self,
        prompt_ids: Sequence[int],
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 0.9,
        top_k: int = 0,
        seed: Optional[int] = None,
        ignore_eos: bool = False,
    ) -> Iterator[int]:
        """Sample up to ``max_tokens`` new token ids after ``prompt_ids`` (which should start with
        BOS). Stops early at any of :attr:`stop_ids` (unless ``ignore_eos``) and when the context is full.
        Arguments are checked and the prompt is run through the model when this is called (so a
        bad prompt fails here); new tokens are computed as the iterator is consumed."""
        max_tokens = _check_int("max_tokens", max_tokens, 0)
        temperature = _check_float("temperature", temperature, 0.0, float("inf"))
        top_p = _check_float("top_p", top_p, 0.0, 1.0)
        top_k = min(_check_int("top_k", top_k, 0), self.config.vocab_size)  # k >= vocab keeps all
        if seed is None:
            seed = secrets.randbits(63) | 1
        seed = _check_int("seed", seed, 1)
        if seed >= 1 << 64:
            raise ArgumentError(f"seed must be < 2**64, got {seed}")
        ids = _token_ids(prompt_ids, self.config.vocab_size)
        if not ids:
            raise ArgumentError(f"prompt_ids is empty: start it with BOS ({self.config.bos_id})")
        if len(ids) > self.config.seq_len:
            raise ContextLengthError(
                f"the prompt is {len(ids)} tokens but the context length (seq_len) is {self.config.seq_len}"
            )
        session = self._core.session(temperature, top_p, top_k, seed)
        session.feed(ids)  # checks the ids now, so a bad prompt fails at the call
        return self._sample_loop(session, max_tokens, () if ignore_eos else self.stop_ids)

    @staticmethod
    def _sample_loop(session: _core.Session, max_tokens: int, stop_ids: tuple[int, ...]) -> Iterator[int]:
        # Holds the session, not the model: a generation started before close() runs to its end.
        for produced in range(1, max_tokens + 1):
            token = session.sample()
            if token in stop_ids:
                return
            yield token
            if produced == max_tokens or session.remaining == 0:
                return
            session.feed([token])

    def generate(
        self,
        prompt: str,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 0.9,
        top_k: int = 0,
        seed: Optional[int] = None,
        ignore_eos: bool = False,
    ) -> Iterator[str]:
        """Stream the text that follows ``prompt`` (not the prompt itself), piece by piece.

        ``temperature`` 0 is greedy; otherwise logits are divided by it, ``top_k`` (0 = off)
        keeps the k likeliest tokens, and ``top_p`` samples from the nucleus (llama2.c's
        algorithm; 0 or 1 = off). With the same ``seed`` the text equals llama2.c's `run`
        with ``-s seed``. Pieces never split a UTF-8 character."""
        tokenizer = self._require_tokenizer()
        if not isinstance(prompt, str):
            raise ArgumentError(f"prompt must be a str, got {type(prompt).__name__}")
        prompt_ids = tokenizer.encode(prompt, bos=True)
        tokens = self.generate_tokens(prompt_ids, max_tokens, temperature, top_p, top_k, seed, ignore_eos)
        return self.detokenize_stream(tokens, prev_id=prompt_ids[-1])

    def detokenize_stream(self, tokens: Iterable[int], prev_id: int = 1) -> Iterator[str]:
        """Text of streamed token ids, piece by piece, never splitting a UTF-8 character.
        ``prev_id`` is the token before the first one (the space after BOS is dropped)."""
        decoder = self._require_tokenizer().stream(prev_id=prev_id)
        for token in tokens:
            text = decoder.push(token)
            if text:
                yield text
        tail = decoder.flush()
        if tail:
            yield tail

    def complete(self, prompt: str, **kwargs: object) -> str:
        """The whole generated text at once (``generate`` joined)."""
        return "".join(self.generate(prompt, **kwargs))  # type: ignore[arg-type]

    # -- completions in llama-cpp-python's and OpenAI's shape ------------------------------------

    def _prompt_ids(self, prompt: Union[str, Sequence[int]]) -> list[int]:
        if isinstance(prompt, str):
            return self._require_tokenizer().encode(prompt, bos=True)
        if isinstance(prompt, (bytes, bytearray)) or not isinstance(prompt, Sequence):
            raise ArgumentError(f"prompt must be a str or a list of token ids, got {type(prompt).__name__}")
        return _token_ids(prompt, self.config.vocab_size)

    def chat_template(self, choice: Optional[str] = None) -> "ChatTemplate":
        """The chat template: ``choice`` (``"llama2"``, ``"llama3"`` or a Jinja2 file), else
        the model's own (GGUF ``tokenizer.chat_template``, or the exported checkpoint's), else
        ``llama3`` or ``llama2`` by vocabulary."""
        from .chat import resolve_template

        return resolve_template(choice, self.metadata.get("chat_template"), self._require_tokenizer())

    def _complete(self, ids: list[int], max_tokens: Any, stop: Any, sampling: dict[str, Any]) -> tuple[Any, Any]:
        from .completion import TextAssembler, check_max_tokens, check_stop, sampling_params
        from .engine import solo_events

        tokenizer = self._require_tokenizer()
        params = sampling_params(**sampling)
        stops = check_stop(stop)
        max_new = check_max_tokens(max_tokens, len(ids), self.config.seq_len)
        events = solo_events(self._core, ids, params, max_new, frozenset(self.stop_ids))
        return TextAssembler(tokenizer, ids[-1], stops), events

    def create_completion(
        self,
        prompt: Union[str, Sequence[int]],
        max_tokens: Optional[int] = 16,
        temperature: float = COMPLETION_DEFAULTS.temperature,
        top_p: float = COMPLETION_DEFAULTS.top_p,
        top_k: int = COMPLETION_DEFAULTS.top_k,
        min_p: float = COMPLETION_DEFAULTS.min_p,
        repeat_penalty: float = COMPLETION_DEFAULTS.repeat_penalty,
        presence_penalty: float = COMPLETION_DEFAULTS.presence_penalty,
        frequency_penalty: float = COMPLETION_DEFAULTS.frequency_penalty,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        logprobs: Optional[int] = None,
        echo: bool = False,
        stream: bool = False,
        model: Optional[str] = None,
    ) -> Any:
        """A completion as llama-cpp-python's ``Llama.create_completion`` returns it (its
        defaults too): an OpenAI-shaped dict (``choices[0].text``, ``finish_reason`` ``"stop"``
        or ``"length"``, ``usage``, ``logprobs`` for the ``logprobs`` likeliest tokens), or with
        ``stream=True`` an iterator of chunk dicts. ``prompt`` is text (BOS is added) or token
        ids. Text that could still become one of the ``stop`` sequences is held back while
        streaming, and the text ends before the first one. With ``top_k=0, min_p=0`` and the
        same ``seed`` and ``temperature``/``top_p``, the text is :meth:`generate`'s."""
        from .completion import completion_chunks, completion_result, new_id

        ids = self._prompt_ids(prompt)
        assembler, events = self._complete(ids, max_tokens, stop, dict(
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, repeat_penalty=repeat_penalty,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, seed=seed, logprobs=logprobs))
        echo_text = self._require_tokenizer().decode(ids) if echo else ""
        cid, name = new_id("cmpl"), model or self.path.name
        if stream:
            return completion_chunks(cid, name, assembler.run(events), echo_text, bool(logprobs))
        pieces = list(assembler.run(events))
        return completion_result(cid, name, pieces, len(ids), assembler.completion_tokens, echo_text, bool(logprobs))

    def create_chat_completion(
        self,
        messages: Sequence[Mapping[str, Any]],
        max_tokens: Optional[int] = None,
        temperature: float = CHAT_DEFAULTS.temperature,
        top_p: float = CHAT_DEFAULTS.top_p,
        top_k: int = CHAT_DEFAULTS.top_k,
        min_p: float = CHAT_DEFAULTS.min_p,
        repeat_penalty: float = CHAT_DEFAULTS.repeat_penalty,
        presence_penalty: float = CHAT_DEFAULTS.presence_penalty,
        frequency_penalty: float = CHAT_DEFAULTS.frequency_penalty,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        stream: bool = False,
        model: Optional[str] = None,
        chat_template: Optional[str] = None,
    ) -> Any:
        """A chat completion as llama-cpp-python's ``create_chat_completion`` returns it:
        ``choices[0].message`` (or, streamed, chunks with ``delta``s). The prompt is
        :meth:`chat_template` applied to ``messages``; ``max_tokens=None`` runs to a stop id or
        the end of the context."""
        from .completion import chat_chunks, chat_completion_dict, new_id

        ids = self.chat_template(chat_template).apply(self._require_tokenizer(), messages)
        assembler, events = self._complete(ids, max_tokens, stop, dict(
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, repeat_penalty=repeat_penalty,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, seed=seed, logprobs=0))
        cid, name = new_id("chatcmpl"), model or self.path.name
        if stream:
            return chat_chunks(cid, name, assembler.run(events))
        pieces = list(assembler.run(events))
        reason = pieces[-1].finish_reason if pieces else "length"
        return chat_completion_dict(cid, name, "".join(p.text for p in pieces), reason, len(ids),
                                    assembler.completion_tokens)
