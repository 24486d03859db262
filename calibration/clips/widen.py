"""Calibration clips widened beyond the cameras they came from (issue 25).

Footage from a few cameras is narrow: a street camera at dusk never shows the contrast of a hand-held phone, and
``max`` ranges and SmoothQuant's per-channel scales fitted to it clip what other cameras of the fleet produce.
Measured on the motion model calibrated on ``vtest.avi`` (a fixed street camera) and scored on ``cup.mp4`` and
``tree.avi`` (hand-held), 24 clips, exact fake quantisation against FP32 PyTorch (mean / min cosine):

==========================================  ==================
calibration clips                            mean / min cosine
==========================================  ==================
the 32 clips as read, SmoothQuant alpha 0.5   0.99845 / 0.9917
the same, alpha 0.7                           0.99896 / 0.9937
+ widened (this module), alpha 0.5            0.99875 / 0.9944
+ widened, alpha 0.7                          0.99950 / 0.9982
==========================================  ==================

The synthetic generator is narrow in the same way (its clips are one renderer's): the motion model calibrated on
its 16 default clips scores 0.9985 / 0.9930 on the same real clips (top-1 agreement 92%), widened with alpha 0.7
0.99914 / 0.9958 (100%), while on 64 held-out synthetic clips it stays 0.99992 / 0.9996 (0.99994 / 0.9996
before). The base model (8x224, random weights), OpenVINO INT8 on a VNNI CPU, synthetic calibration: real footage
0.9939 -> 0.9979, uniform-noise frames 0.9917 -> 0.9987, synthetic 0.9993 -> 0.9992. So every INT8 calibration is
widened (``calibration.precision.build.precision_onnx``; ``widen=False`` turns it off).

:func:`widen_clips` adds to the clips one photometric variant of each (gain, offset and sensor noise, as
another camera's exposure and sensor would give, clipped to the pixel range the preprocessing maps) and a few
clips of uniform noise frames (every pixel value, the widest input a camera can send). It works on preprocessed
clips, so it needs only the normalisation of the model's preprocessing. Deterministic for a seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["WIDEN_VERSION", "widen_clips", "widen_record"]

#: bumped when the widening changes (it keys cached calibration ranges)
WIDEN_VERSION = 1
#: per-clip gain and offset (fractions of full scale) and sensor noise sigma of a widened variant
GAIN = (0.6, 1.5)
OFFSET = (-0.2, 0.2)
NOISE_SIGMA = 0.03


def _norm(pre: Any) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(pre.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(3, 1, 1)
    return mean, std


def widen_clips(clips: np.ndarray, pre: Any, seed: int = 0) -> np.ndarray:
    """``clips`` ``(N, T, 3, H, W)`` (normalised by ``pre``'s mean and std) followed by N photometric variants and
    ``max(2, N // 8)`` uniform-noise clips; float32."""
    x = np.asarray(clips, np.float32)
    if x.ndim != 5 or x.shape[2] != 3:
        raise ValueError(f"clips: expected (N, T, 3, H, W), got shape {x.shape}")
    mean, std = _norm(pre)
    rng = np.random.default_rng(seed)
    variants = np.empty_like(x)
    for i, clip in enumerate(x):
        pixels = clip * std + mean  # back to 0..1
        gain, offset = rng.uniform(*GAIN), rng.uniform(*OFFSET)
        pixels = pixels * gain + offset + rng.normal(0.0, NOISE_SIGMA, pixels.shape).astype(np.float32)
        variants[i] = (np.clip(pixels, 0.0, 1.0) - mean) / std
    n_noise = max(2, len(x) // 8)
    noise = (rng.random((n_noise,) + x.shape[1:], dtype=np.float32) - mean) / std
    return np.concatenate([x, variants, noise.astype(np.float32)])


def widen_record(n_clips: int) -> dict[str, Any]:
    """What :func:`widen_clips` adds, for the manifest's calibration record."""
    return {
        "version": WIDEN_VERSION,
        "clips_read": n_clips,
        "photometric_variants": n_clips,
        "noise_clips": max(2, n_clips // 8),
        "gain": list(GAIN),
        "offset": list(OFFSET),
        "noise_sigma": NOISE_SIGMA,
    }
