"""A numpy model of INT8 matmuls on x86 CPUs without VNNI, to predict what their 16-bit pair sums lose (issue 25).

Without VNNI/AMX, x86 integer kernels (oneDNN, so OpenVINO; ONNX Runtime's MLAS U8S8) compute a u8 x s8 dot
product with ``vpmaddubsw``: each pair of adjacent products along K is added in 16 bits with signed saturation,
``sat16(a[2k] * b[2k] + a[2k+1] * b[2k+1])``, and ``vpmaddwd`` (x 1) then adds the pairs in 32 bits. oneDNN runs
s8 activations as u8 shifted by 128 and subtracts ``128 * sum(b)`` afterwards, so symmetric int8 activations
saturate just the same. :func:`saturating_matmul` is that arithmetic; it matches OpenVINO 2026.4 under
``ONEDNN_MAX_CPU_ISA=AVX2`` bit for bit on a single Q/DQ MatMul (tests/calibration/test_saturation.py). With weights
in [-64, 63] (:mod:`calibration.precision.overflow`) no pair can saturate: 255 x 64 x 2 = 32,640 <= 32,767.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["INT16_MAX", "saturating_matmul", "exact_matmul", "matmul_loss", "max_pair_sum"]

INT16_MAX = 32767


def _as_u8(a: np.ndarray, zero_point: int) -> tuple[np.ndarray, int]:
    """Activations as the kernel's u8 operand, and the zero point it subtracts: s8 is shifted by 128."""
    a = np.asarray(a)
    if a.dtype == np.int8:
        return a.astype(np.int64) + 128, int(zero_point) + 128
    if a.dtype == np.uint8:
        return a.astype(np.int64), int(zero_point)
    raise TypeError(f"activations: expected int8 or uint8 values, got {a.dtype}")


def _check(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    b = np.asarray(b)
    if b.dtype != np.int8:
        raise TypeError(f"weights: expected int8 values, got {b.dtype}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"shapes: expected (M, K) activations and (K, N) weights, got {a.shape} and {b.shape}")
    return b.astype(np.int64)


def exact_matmul(a: np.ndarray, b: np.ndarray, zero_point: int = 0) -> np.ndarray:
    """``(a - zero_point) @ b`` in int64: what VNNI, AMX and ARM compute."""
    a = np.asarray(a)
    return (a.astype(np.int64) - int(zero_point)) @ _check(a, b)


def saturating_matmul(a: np.ndarray, b: np.ndarray, zero_point: int = 0, block: int = 64) -> np.ndarray:
    """``(a - zero_point) @ b`` the way ``vpmaddubsw`` + ``vpmaddwd`` compute it (int64 result).

    ``a``: (M, K) int8 (run as u8 + 128, as oneDNN does) or uint8 activations; ``b``: (K, N) int8 weights. Pairs
    are adjacent along K (an odd K is padded with a zero). Rows are processed ``block`` at a time to bound memory.
    """
    u, zp = _as_u8(a, zero_point)
    w = _check(u, b)
    if w.shape[0] % 2:
        u, w = np.pad(u, ((0, 0), (0, 1))), np.pad(w, ((0, 1), (0, 0)))
    out = np.empty((u.shape[0], w.shape[1]), np.int64)
    for i in range(0, u.shape[0], block):
        p = u[i : i + block, :, None] * w[None]  # (m, K, N) products, exact in int64
        out[i : i + block] = np.clip(p[:, 0::2] + p[:, 1::2], -INT16_MAX - 1, INT16_MAX).sum(1)
    return out - zp * w.sum(0)


def max_pair_sum(b: np.ndarray, activations: str = "u8") -> int:
    """The largest |pair sum| any activations can produce with weights ``b`` ((K, N) int8): <= 32,767 means the
    16-bit pair sums never saturate. ``activations``: "u8" (0..255, also s8 shifted by 128)."""
    if activations != "u8":
        raise ValueError(f"activations: only 'u8' (the kernel's operand) is modelled, got {activations!r}")
    w = np.abs(_check(np.zeros((1, np.asarray(b).shape[0])), b))
    if w.shape[0] % 2:
        w = np.pad(w, ((0, 1), (0, 0)))
    return int((255 * (w[0::2] + w[1::2])).max())


def matmul_loss(a: np.ndarray, b: np.ndarray, zero_point: int = 0) -> dict[str, Any]:
    """What saturation costs one quantized matmul: relative L2 error and min row cosine of the saturated result
    against the exact one, and the fraction of output elements that changed."""
    exact = exact_matmul(a, b, zero_point).astype(np.float64)
    sat = saturating_matmul(a, b, zero_point).astype(np.float64)
    err = np.linalg.norm(sat - exact) / max(np.linalg.norm(exact), 1e-30)
    num = (sat * exact).sum(1)
    den = np.linalg.norm(sat, axis=1) * np.linalg.norm(exact, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)
    return {
        "relative_error": float(err),
        "min_row_cosine": float(cos.min()),
        "changed_fraction": float(np.mean(sat != exact)),
        "max_pair_sum": max_pair_sum(b),
    }
