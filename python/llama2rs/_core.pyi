"""Type stubs for the Rust extension (checked against it by mypy's stubtest in the tests)."""

from os import PathLike
from pathlib import Path
from typing import Optional, Sequence, TypedDict, Union, final

import numpy as np
import numpy.typing as npt

__all__ = ["BatchDecoder", "ByteLevelBpe", "CONFIG_LIMITS", "KERNEL_NAMES", "Model", "Session", "__version__", "available_kernels",
           "read_bandwidth"]

__version__: str
# Upper bound of each integer Config field (every field is at least 1).
CONFIG_LIMITS: dict[str, int]
# Every kernel implementation's name, slowest first (available_kernels() lists this CPU's).
KERNEL_NAMES: tuple[str, ...]

def available_kernels() -> list[str]: ...
def read_bandwidth(n_bytes: int = ..., n_threads: int = 1, repeats: int = 3) -> float: ...
# A GGUF file's tokenizer.ggml.* arrays (stub-only name: at run time a plain dict).
class _Vocabulary(TypedDict):
    model: str  # tokenizer.ggml.model, e.g. "llama" (sentencepiece) or "gpt2"
    pre: Optional[str]  # tokenizer.ggml.pre, e.g. "llama-bpe"
    tokens: list[bytes]  # the raw token strings (sentencepiece pieces, "\u2581" as UTF-8)
    scores: Optional[list[float]]
    token_type: Optional[list[int]]
    bos_id: Optional[int]
    eos_id: Optional[int]

@final
class Model:
    def __new__(
        cls,
        path: Union[str, PathLike[str]],
        n_threads: Optional[int] = None,
        kernels: Optional[str] = None,
        exact: bool = False,
        kv_cache: Optional[str] = None,
    ) -> Model: ...
    @property
    def kernels(self) -> str: ...
    @property
    def exact(self) -> bool: ...
    @property
    def kv_cache(self) -> str: ...
    @property
    def config(self) -> dict[str, Union[int, float]]: ...
    @property
    def format(self) -> str: ...
    @property
    def group_size(self) -> Optional[int]: ...
    @property
    def shared_classifier(self) -> bool: ...
    @property
    def n_threads(self) -> int: ...
    @property
    def file_size(self) -> int: ...
    @property
    def path(self) -> Path: ...
    @property
    def tokenizer_bytes(self) -> Optional[bytes]: ...
    @property
    def vocabulary(self) -> Optional[_Vocabulary]: ...
    @property
    def metadata(self) -> dict[str, str]: ...
    def logits(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]: ...
    def session(self, temperature: float, top_p: float, top_k: int, seed: int) -> Session: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...

@final
class Session:
    def feed(self, tokens: Sequence[int]) -> None: ...
    def sample(self) -> int: ...
    @property
    def pos(self) -> int: ...
    @property
    def remaining(self) -> int: ...

@final
class ByteLevelBpe:
    def __new__(
        cls,
        ranks: Sequence[bytes],
        specials: Sequence[tuple[str, int]],
        pattern: str,
        slicing: Optional[tuple[int, int]] = None,
    ) -> ByteLevelBpe: ...
    @property
    def vocab_size(self) -> int: ...
    def encode(self, text: str, allow_special: bool = False) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> bytes: ...
    def token_bytes(self, id: int) -> bytes: ...
    def special_id(self, text: str) -> Optional[int]: ...

@final
class BatchDecoder:
    def __new__(cls, model: Model, prefill_chunk: int = 64) -> BatchDecoder: ...
    def add(
        self,
        prompt: Sequence[int],
        temperature: float,
        top_p: float,
        top_k: int,
        seed: int,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        min_p: float = 0.0,
        logprobs: int = 0,
    ) -> int: ...
    def remove(self, id: int) -> bool: ...
    # Per sequence that sampled: (id, token, logprob, top logprobs, context_full).
    def step(self) -> list[tuple[int, int, Optional[float], Optional[list[tuple[int, float]]], bool]]: ...
    def __len__(self) -> int: ...
    @property
    def prefilling(self) -> int: ...
