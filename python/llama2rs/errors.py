"""Exceptions raised by llama2rs.

Every error the package raises on bad input is a subclass of :class:`Llama2rsError`,
so ``except llama2rs.Llama2rsError`` catches them all. Most are also ``ValueError``s,
because they describe a value (a file, an argument, a token id) that is wrong.
The Rust core raises these same classes (it looks them up here by name).
"""

from __future__ import annotations

__all__ = [
    "Llama2rsError",
    "ModelFileError",
    "ConfigError",
    "TokenizerError",
    "InvalidTokenError",
    "ContextLengthError",
    "ArgumentError",
    "OutOfMemoryError",
    "InternalError",
]


class Llama2rsError(Exception):
    """Base class of every error raised by llama2rs."""


class ModelFileError(Llama2rsError, ValueError):
    """A model file is missing, truncated, corrupt or of an unknown format."""


class ConfigError(Llama2rsError, ValueError):
    """A model configuration is inconsistent (e.g. ``dim % n_heads != 0``)."""


class TokenizerError(Llama2rsError, ValueError):
    """A tokenizer file is missing, corrupt, or does not fit the model."""


class InvalidTokenError(Llama2rsError, ValueError):
    """A token id is outside ``[0, vocab_size)``."""


class ContextLengthError(Llama2rsError, ValueError):
    """A sequence is longer than the model's context (``seq_len``)."""


class ArgumentError(Llama2rsError, ValueError):
    """A call got an argument outside its allowed range."""


class OutOfMemoryError(Llama2rsError, MemoryError):
    """A buffer a call needs (e.g. the KV cache of a huge context) could not be allocated."""


class InternalError(Llama2rsError, RuntimeError):
    """A bug in llama2rs: its Rust core panicked. The message says where and why; please report
    it. The process goes on (the panic was caught where the core was called), but the object
    whose call raised this may be left half-updated."""
