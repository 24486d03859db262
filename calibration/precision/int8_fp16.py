"""Guards of the TensorRT INT8+FP16 Q/DQ form (``calibration.precision.int8.to_tensorrt_fp16_form``).

The form converts the float rest of the Q/DQ model (residual adds, GELU, the norms' neighbours) and the Q/DQ
scales to FP16. Two things can go wrong there, and each has a guard here, applied to the FP32-form model before
the conversion:

* **scales that underflow FP16.** FP16's smallest normal is 2**-14 (6.1e-5); a smaller scale becomes subnormal
  (fewer significant bits; the motion model's patch-embedding weights have 5.9e-5) and one below 2**-25 rounds
  to 0, which TensorRT's parser refuses ("scale must be positive"). :func:`guard_fp16_scales` raises every such
  scale to 2**-14 and re-quantizes the INT8 weights a clamped DequantizeLinear reads, so that Q and DQ still agree
  and the weight stays what it was up to the coarser step (an activation's Q/DQ pair shares its scale, so the pair
  stays consistent). The quantization step grows to 2**-14 only for tensors whose whole range is below
  127 * 2**-14 = 7.8e-3.
* **FP16 overflow and FP16 error in the float rest.** :func:`fp32_rest_nodes` runs ``calibration.precision.fp16``'s
  measurement (per-tensor max|x| and per-node FP16 error on calibration clips) on the FP32-form Q/DQ model and
  returns the float nodes to keep FP32, with why. Nodes fed by a DequantizeLinear (the INT8 matmuls: TensorRT
  runs them in INT8, their output type follows the DQ scales) are not blocked, since a Cast there would break the
  Q/DQ fusion; when such a node's output reaches the overflow threshold it is reported instead (use
  ``int8_form='fp32'`` for that model).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["FP16_MIN_NORMAL", "guard_fp16_scales", "fp32_rest_nodes"]

#: FP16's smallest normal number, 2**-14
FP16_MIN_NORMAL = float(np.finfo(np.float16).tiny)
_QDQ = ("QuantizeLinear", "DequantizeLinear")


def guard_fp16_scales(model: Any) -> list[dict[str, Any]]:
    """Raise Q/DQ scale initializers below :data:`FP16_MIN_NORMAL` to it (in place, FP32-form model).

    Re-quantizes the INT8 weight initializer of each DequantizeLinear whose scale was raised. Returns one record
    per scale changed: name, smallest value before, how many entries, what FP16 would have made of it.
    """
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    scale_users: dict[str, list[Any]] = {}
    for n in g.node:
        if n.op_type in _QDQ and len(n.input) > 1 and n.input[1] in inits:
            scale_users.setdefault(n.input[1], []).append(n)
    changed = []
    for name, users in scale_users.items():
        old = numpy_helper.to_array(inits[name])
        if old.dtype != np.float32:
            continue
        low = old < FP16_MIN_NORMAL
        if not low.any():
            continue
        new = np.where(low, np.float32(FP16_MIN_NORMAL), old).astype(np.float32)
        for dq in (u for u in users if u.op_type == "DequantizeLinear" and u.input[0] in inits):
            _requantize(inits[dq.input[0]], old, new, dq)
        inits[name].CopyFrom(numpy_helper.from_array(new, name))
        smallest = float(old.min())
        changed.append(
            {
                "scale": name,
                "min_before": smallest,
                "entries_raised": int(low.sum()),
                "fp16_would_be": "0 (refused by TensorRT's parser)"
                if float(np.float16(smallest)) == 0
                else "subnormal",
                "raised_to": FP16_MIN_NORMAL,
            }
        )
    return changed


def _requantize(weight: Any, old: np.ndarray, new: np.ndarray, dq: Any) -> None:
    """``round(q * old / new)`` for the int8 weight a DequantizeLinear reads, per its axis."""
    from onnx import numpy_helper

    q = numpy_helper.to_array(weight)
    if old.ndim == 0:
        ratio = old / new
    else:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % q.ndim
        shape = [1] * q.ndim
        shape[axis] = -1
        ratio = (old / new).reshape(shape)
    info = np.iinfo(q.dtype)
    lo = -127 if q.dtype == np.int8 else info.min  # symmetric INT8 as TensorRT takes it
    requant = np.clip(np.round(q.astype(np.float64) * ratio), lo, info.max).astype(q.dtype)
    weight.CopyFrom(numpy_helper.from_array(requant, weight.name))


def fp32_rest_nodes(
    fp32_qdq_path: Any,
    clips: np.ndarray,
    progress: bool = False,
    overflow_threshold: float | None = None,
    error_threshold: float | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(float nodes to keep FP32 in the INT8+FP16 form, INT8 matmuls whose FP16 output would overflow).

    ``calibration.precision.fp16``'s measurement on the FP32-form Q/DQ model at ``fp32_qdq_path``; the always-FP32
    ops (LayerNorm, Softmax) are left to the form's own rules.
    """
    import onnx

    from calibration.precision import fp16

    stats = fp16.measure_activations(fp32_qdq_path, clips, progress)
    kw = {
        k: v
        for k, v in (("overflow_threshold", overflow_threshold), ("error_threshold", error_threshold))
        if v is not None
    }
    decided = [k for k in fp16.decide_fp32_nodes(fp32_qdq_path, stats, **kw) if k["reason"] != "always"]
    model = onnx.load(str(fp32_qdq_path))
    fp16._name_nodes(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    keep, report = [], []
    for k in decided:
        node = by_name[k["node"]]
        if node.op_type in _QDQ:
            continue
        if any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in node.input):
            if k["reason"] == "overflow":
                report.append(k)
            continue
        keep.append(k)
    return keep, report
