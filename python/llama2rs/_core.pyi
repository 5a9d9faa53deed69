"""Type stubs for the Rust extension (checked against it by mypy's stubtest in the tests)."""

from os import PathLike
from pathlib import Path
from typing import Optional, Sequence, TypedDict, Union, final

import numpy as np
import numpy.typing as npt

__all__ = ["CONFIG_LIMITS", "KERNEL_NAMES", "Model", "Session", "__version__", "available_kernels", "read_bandwidth"]

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

@final
class Session:
    def feed(self, tokens: Sequence[int]) -> None: ...
    def sample(self) -> int: ...
    @property
    def pos(self) -> int: ...
    @property
    def remaining(self) -> int: ...
