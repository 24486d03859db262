"""Run two ONNX files on the same clips in ONNX Runtime (CPU) and compare their logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.onnxruntime_session import cpu_session_options

from calibration.precision.metrics import compare_logits

__all__ = ["cpu_session", "session_with_outputs", "validate_against_fp32"]


def cpu_session(path: Path) -> Any:
    """An ONNX Runtime CPU session of ``path``, quiet."""
    import onnxruntime as ort

    so = cpu_session_options()
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def session_with_outputs(model: Any, names: list[str]) -> Any:
    """An ONNX Runtime CPU session of the ``onnx.ModelProto`` ``model`` in which each float tensor of ``names`` is
    also a graph output (added to ``model`` in place), to read intermediate activations."""
    import onnx
    import onnxruntime as ort

    have = {o.name for o in model.graph.output}
    for t in names:
        if t not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    so = cpu_session_options()
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def validate_against_fp32(
    fp32_onnx: Path, quant_onnx: Path, clips: np.ndarray, reference: np.ndarray | None = None
) -> tuple[dict[str, Any], np.ndarray]:
    """Logit parity of ``quant_onnx`` against ``fp32_onnx`` on ``clips`` in ONNX Runtime CPU (and the FP32 logits).

    One clip per call: the result of a dynamically quantised model must not depend on what shares its batch."""
    if reference is None:
        s32 = cpu_session(fp32_onnx)
        name = s32.get_inputs()[0].name
        reference = np.concatenate([s32.run(None, {name: clips[i : i + 1]})[0] for i in range(len(clips))])
    sq = cpu_session(quant_onnx)
    name = sq.get_inputs()[0].name
    out = np.concatenate([sq.run(None, {name: clips[i : i + 1]})[0] for i in range(len(clips))])
    return compare_logits(reference, out), reference
