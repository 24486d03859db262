"""What the runtime returns for one clip: top-k labels with probabilities."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["Prediction", "check_top_k", "softmax", "top_k"]


@dataclass
class Prediction:
    """Top-k labels of one clip."""

    top_k: list[tuple[str, float]]  # (label, probability), best first
    logits: np.ndarray = field(repr=False)
    latency_ms: float = 0.0  # preprocessing + inference for this call

    @property
    def label(self) -> str:
        return self.top_k[0][0]

    @property
    def index(self) -> int:
        return int(np.argmax(self.logits))


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable for large logits."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def check_top_k(k: object) -> int:
    """``k`` as a count of labels to return: an integer >= 1 (more than the classes returns them all)."""
    from .errors import InputError

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"top_k: expected a positive integer (labels to return), got {k!r}")
    return int(k)


def top_k(logits: np.ndarray, labels: Sequence[str] | None, k: int) -> list[tuple[str, float]]:
    """``(label, probability)`` of the ``k`` most likely classes of one row of logits, best first."""
    k = check_top_k(k)
    probs = softmax(np.asarray(logits, np.float64))
    order = np.argsort(-probs, kind="stable")[:k]
    names = labels if labels is not None else [str(i) for i in range(probs.shape[-1])]
    return [(names[i], float(probs[i])) for i in order]
