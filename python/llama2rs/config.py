"""The shape of a Llama-2-style model, validated."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Mapping, Union

from ._core import CONFIG_LIMITS
from .errors import ConfigError

__all__ = ["Config", "LIMITS"]

# Upper bound of each integer field, well above any real Llama (70B: dim 8192, hidden 28672,
# 80 layers, 64 heads, vocab 32000-128256): a header beyond them is corrupt, not a bigger
# model. Stated once, in the Rust core (rust/config.rs), which enforces the same numbers.
LIMITS: Mapping[str, int] = MappingProxyType(dict(CONFIG_LIMITS))


@dataclass(frozen=True)
class Config:
    """Model shape. ``head_size = dim // n_heads``; GQA shares each kv head among ``kv_mul`` heads."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    # Facts llama2.c files do not store (llama2.c hard-codes these values); our own format does.
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first inconsistency."""
        for name, upper in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
            if not 1 <= value <= upper:
                raise ConfigError(f"{name} must be in [1, {upper}], got {value}")
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
        for name in ("bos_id", "eos_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name} must be a token id in [0, {self.vocab_size}), got {value!r}")
        if self.dim % self.n_heads != 0:
            raise ConfigError(f"dim ({self.dim}) must be a multiple of n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads != 0:
            raise ConfigError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_size % 2 != 0:
            raise ConfigError(f"head size dim/n_heads ({self.head_size}) must be even for RoPE")

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        """Width of one position's keys (or values): ``n_kv_heads * head_size``."""
        return self.n_kv_heads * self.head_size

    @property
    def kv_mul(self) -> int:
        """How many query heads share one kv head."""
        return self.n_heads // self.n_kv_heads

    def to_dict(self) -> dict[str, Union[int, float]]:
        return asdict(self)
