"""Parity metrics between an engine's logits and the PyTorch reference, and the per-precision tolerances."""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.reference import DECISIVE_MARGIN, decisive_rows, top1_on_decisive

__all__ = ["TOLERANCES", "DECISIVE_MARGIN", "compare_logits", "check_tolerance", "cosine_rows", "decisive_rows"]

#: What an engine of each precision must meet against the FP32 PyTorch reference.
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_logit": 1e-3, "top1_agreement": 1.0},
    "fp16": {"min_cosine": 0.999, "top1_agreement": 0.99, "top5_agreement": 0.95},
    "int8": {"min_cosine": 0.99, "top1_agreement": 0.9, "top5_agreement": 0.8},
}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64).reshape(len(a), -1)
    b = b.astype(np.float64).reshape(len(b), -1)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def compare_logits(reference: np.ndarray, actual: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Max/mean abs error, cosine, top-1 and top-5 agreement (and accuracies when labels are given)."""
    if reference.shape != actual.shape:
        raise ValueError(f"logits: reference shape {reference.shape} != engine shape {actual.shape}")
    ref = reference.astype(np.float64)
    act = actual.astype(np.float64)
    k = min(5, ref.shape[1])
    top5_ref = np.argsort(-ref, axis=1)[:, :k]
    top5_act = np.argsort(-act, axis=1)[:, :k]
    cos = cosine_rows(ref, act)
    out: dict[str, Any] = {
        "clips": int(len(ref)),
        "max_abs_logit": float(np.abs(ref - act).max()),
        "mean_abs_logit": float(np.abs(ref - act).mean()),
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "top1_agreement": float((ref.argmax(1) == act.argmax(1)).mean()),
        **_decisive_agreement(ref, act),
        "top5_agreement": float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top5_ref, top5_act)])),
    }
    if labels is not None:
        out["top1_accuracy_reference"] = float((ref.argmax(1) == labels).mean())
        out["top1_accuracy"] = float((act.argmax(1) == labels).mean())
    return out


def _decisive_agreement(ref: np.ndarray, act: np.ndarray) -> dict[str, Any]:
    decisive = decisive_rows(ref)
    same = ref.argmax(1) == act.argmax(1)
    return {
        "decisive_clips": int(decisive.sum()),
        "top1_agreement_decisive": float(same[decisive].mean()) if decisive.any() else None,
    }


def check_tolerance(metrics: dict[str, Any], precision: str, tolerance: dict[str, float] | None = None) -> list[str]:
    """The tolerance entries ``metrics`` fails (empty when it passes). ``top1_agreement`` is held on the decisive
    clips (:data:`DECISIVE_MARGIN`) when the metrics count them; with none decisive it is not judged."""
    tol = tolerance if tolerance is not None else TOLERANCES[precision]
    failures = []
    for key, limit in tol.items():
        if key == "top1_agreement" and "decisive_clips" in metrics:
            failure = top1_on_decisive(metrics, limit)
            failures += [failure] if failure else []
            continue
        value = metrics[key]
        ok = value <= limit if key.startswith("max_") else value >= limit
        if not ok:
            op = "<=" if key.startswith("max_") else ">="
            failures.append(f"{key} = {value:.6g}, needs {op} {limit:g}")
    return failures
