"""Quality figures: perplexity of a model on a text, and how far its next-token distributions
are from a base model's (mean KL divergence), as used to judge quantization."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .quantize.calibrate import calibration_windows
from .errors import ArgumentError
from .model import Model

__all__ = ["Evaluation", "evaluate"]


@dataclass(frozen=True)
class Evaluation:
    perplexity: float  # exp(mean negative log-likelihood of each next token)
    n_predictions: int  # tokens predicted (window length - 1, summed over windows)
    n_windows: int
    window: int
    base_perplexity: Optional[float] = None
    kl_divergence: Optional[float] = None  # mean KL(base || model) in nats, over all positions
    top1_agreement: Optional[float] = None  # fraction of positions where both argmaxes agree


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def evaluate(model: Model, text: str, base: Optional[Model] = None, window: Optional[int] = None,
             max_windows: Optional[int] = None) -> Evaluation:
    """Split ``text`` (tokenized with ``model``'s tokenizer) into windows of ``window`` tokens
    (default: the context length, at most 512), each starting with BOS, and score them."""
    seq_len = model.config.seq_len
    window = min(seq_len, 512) if window is None else window
    if not 2 <= window <= seq_len:
        raise ArgumentError(f"window must be in [2, {seq_len}], got {window}")
    if base is not None and base.config.vocab_size != model.config.vocab_size:
        raise ArgumentError(
            f"the base model's vocab_size ({base.config.vocab_size}) differs from the model's ({model.config.vocab_size})"
        )
    ids = model.tokenize(text, bos=False)
    windows = calibration_windows(ids, window, max_windows or 1 << 30, model.config.bos_id)
    if not windows or len(windows[0]) < 2:
        raise ArgumentError("the text is too short to evaluate: it needs at least one token")
    nll = base_nll = kl = 0.0
    agree = n_pred = n_pos = 0
    for w in windows:
        logp = _log_softmax(model.logits(w))  # [T, vocab]
        targets = np.asarray(w[1:])
        nll -= logp[np.arange(len(w) - 1), targets].sum()
        n_pred += len(w) - 1
        if base is not None:
            base_logp = _log_softmax(base.logits(w))
            base_nll -= base_logp[np.arange(len(w) - 1), targets].sum()
            kl += (np.exp(base_logp) * (base_logp - logp)).sum()
            agree += int((base_logp.argmax(-1) == logp.argmax(-1)).sum())
            n_pos += len(w)
    result = Evaluation(float(np.exp(nll / n_pred)), n_pred, len(windows), window)
    if base is None:
        return result
    return Evaluation(result.perplexity, n_pred, len(windows), window, float(np.exp(base_nll / n_pred)),
                      kl / n_pos, agree / n_pos)
