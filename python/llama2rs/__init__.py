"""llama2rs: run Llama-2-style language models fast on CPUs, with a Rust core.

>>> import llama2rs
>>> m = llama2rs.Model("stories260K.bin", tokenizer_path="tok512.bin")
>>> "".join(m.generate("Once upon a time", max_tokens=20))
"""

from ._core import __version__
from .config import Config
from .errors import (
    ArgumentError,
    ConfigError,
    ContextLengthError,
    InternalError,
    InvalidTokenError,
    Llama2rsError,
    ModelFileError,
    OutOfMemoryError,
    TokenizerError,
)
from .model import Model, available_kernels, find_tokenizer
from .tokenizer import Tokenizer

__all__ = [
    "__version__",
    "Model",
    "Tokenizer",
    "Config",
    "find_tokenizer",
    "available_kernels",
    "Llama2rsError",
    "ModelFileError",
    "OutOfMemoryError",
    "ConfigError",
    "TokenizerError",
    "InvalidTokenError",
    "ContextLengthError",
    "ArgumentError",
    "InternalError",
]
