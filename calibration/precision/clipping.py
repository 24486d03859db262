"""MSE clipping ranges for INT8 activations: the threshold that minimises the expected quantization error.

``max`` calibration spends the 256 levels on the largest value ever seen; ``percentile`` and ``entropy`` cut the
tail by a fixed rule. ``mse`` picks, per tensor, the threshold ``T`` that minimises, over the calibration
histogram of ``|x|``, rounding noise inside the range (``step^2 / 12`` with ``step = range / levels``) plus the
squared clipping error outside it (``(|x| - T)^2``). The histograms come from ONNX Runtime's own collector (the
``percentile`` calibrator's absolute-value histograms, 2048 bins), and the ranges are written in ONNX Runtime's
calibration-cache format, so ``quantize_static(calibration_cache_path=...)`` reads them like any other.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

__all__ = ["mse_threshold", "calibrate_mse", "MSE_BINS"]

MSE_BINS = 2048


def mse_threshold(hist: np.ndarray, edges: np.ndarray, levels: int = 254, min_bin: int = 16) -> tuple[float, float]:
    """The clipping threshold on ``|x|`` with the least expected squared error, and that error per sample.

    ``hist``/``edges``: a histogram of ``|x|`` (``len(edges) == len(hist) + 1``, from 0). ``levels``: the steps
    across ``[-T, T]`` (254 for symmetric int8). Thresholds below bin ``min_bin`` are not considered.
    """
    h = np.asarray(hist, np.float64)
    e = np.asarray(edges, np.float64)
    total = h.sum()
    if total <= 0 or e[-1] <= 0:
        return float(e[-1]), 0.0
    c = 0.5 * (e[:-1] + e[1:])
    t = e[1:]  # candidate thresholds: the right edge of each bin

    # tail sums beyond bin k (exclusive): S0 = sum h, S1 = sum h c, S2 = sum h c^2
    def tail(v: np.ndarray) -> np.ndarray:
        r = np.cumsum(v[::-1])[::-1]
        return np.concatenate([r[1:], [0.0]])

    s0, s1, s2 = tail(h), tail(h * c), tail(h * c * c)
    clip_err = s2 - 2 * t * s1 + t * t * s0
    step = 2 * t / levels
    round_err = (total - s0) * step * step / 12.0
    err = (clip_err + round_err) / total
    k0 = min(max(min_bin, 0), len(t) - 1)
    k = k0 + int(np.argmin(err[k0:]))
    return float(t[k]), float(err[k])


def calibrate_mse(
    fp32_onnx: str | os.PathLike, reader: Any, op_types: Iterable[str], ranges: str | os.PathLike, symmetric: bool
) -> dict[str, Any]:
    """Collect ``|x|`` histograms of the inputs/outputs of ``op_types`` over ``reader`` (an ONNX Runtime
    CalibrationDataReader) and write MSE-optimal ranges to ``ranges`` (ONNX Runtime's cache format, MinMax kind).

    ``symmetric``: ranges ``[-T, T]`` (TensorRT); otherwise ``[max(min, -T), min(max, T)]`` (uint8 with a zero
    point). Returns a summary: tensors, and how many were clipped below their max.
    """
    import onnxruntime.quantization as q
    from onnxruntime.quantization.calibrate import TensorsData, create_calibrator, save_tensors_data

    print(f"[int8] mse clipping search on {Path(fp32_onnx).name}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="int8-mse-") as tmp:
        cal = create_calibrator(
            Path(fp32_onnx),
            list(op_types),
            augmented_model_path=str(Path(tmp) / "aug.onnx"),
            calibrate_method=q.CalibrationMethod.Percentile,
            extra_options={"num_bins": MSE_BINS, "percentile": 100.0, "symmetric": True},
        )
        cal.collect_data(reader)
        hists = dict(cal.collector.histogram_dict)
        del cal
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    clipped = 0
    for name, (hist, edges, lo, hi) in hists.items():
        levels = 254 if symmetric else 255
        t, _ = mse_threshold(hist, edges, levels)
        amax = float(edges[-1])
        if t < amax * 0.999:
            clipped += 1
        if symmetric:
            data[name] = (np.array(-t, np.float32), np.array(t, np.float32))
        else:
            data[name] = (np.array(max(float(lo), -t), np.float32), np.array(min(float(hi), t), np.float32))
    save_tensors_data(TensorsData(q.CalibrationMethod.MinMax, data), Path(ranges))
    return {"method": "mse", "tensors": len(data), "clipped_below_max": clipped, "bins": MSE_BINS}
