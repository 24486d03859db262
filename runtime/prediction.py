"""What the runtime returns for one clip: top-k labels with probabilities."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["Prediction", "check_top_k", "softmax", "top_k", "prediction_metadata"]


@dataclass
class Prediction:
    """Top-k labels of one clip."""

    top_k: list[tuple[str, float]]  # (label, probability), best first
    logits: np.ndarray = field(repr=False)
    latency_ms: float = 0.0  # preprocessing + inference for this call
    #: what the bundle says about every prediction it makes, e.g. ``{"random_weights": True, "warning": ...}`` for a
    #: bundle built from random weights (issue 26); empty for a trained model
    metadata: dict[str, Any] = field(default_factory=dict)

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


def prediction_metadata(manifest: dict[str, Any]) -> dict[str, Any]:
    """What every prediction of a bundle carries: ``random_weights`` and a warning when its ``provenance`` says the
    weights are random (issue 26), else nothing."""
    prov = manifest.get("provenance") or {}
    if prov.get("weights") != "random":
        return {}
    return {
        "random_weights": True,
        "warning": "this bundle was built from random weights (make engine "
        "RANDOM_WEIGHTS=1): its predictions mean nothing",
    }
