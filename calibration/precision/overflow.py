"""7-bit INT8 weights for x86 CPUs without VNNI (the "overflow fix" of NNCF; ONNX Runtime's ``reduce_range``).

x86 integer kernels without VNNI/AMX multiply u8 activations by s8 weights with ``vpmaddubsw``, which adds each pair
of products in 16 bits and saturates (255 x 127 x 2 = 64,770 > 32,767); oneDNN runs s8 activations as u8 shifted by
128, so symmetric int8 activations saturate too. Weights held in [-64, 63] keep every pair sum within int16
(255 x 64 x 2 = 32,640), so the same file computes the same numbers on AVX2-only, VNNI, AMX and ARM CPUs.
:mod:`calibration.precision.saturation` models the 16-bit pair sums in numpy and predicts what 8-bit weights lose.

:func:`narrow_weights` rewrites the int8 weight initializers of a Q/DQ ONNX in place: per output channel the
range is re-quantized to 7 bits (the scale grows by max|w| / 63), everything else is left as it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["WEIGHT_BITS_SAFE", "narrow_weights", "weight_int_range"]

#: weight bits whose u8 x s8 pair sums cannot saturate 16 bits (the largest |w| is 2**(bits-1))
WEIGHT_BITS_SAFE = 7


def weight_int_range(bits: int) -> tuple[int, int]:
    """The signed integer range of ``bits``-bit weights, e.g. 7 -> (-64, 63)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"weight bits: expected 2..8, got {bits}")
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _axis(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def narrow_weights(model: Any, bits: int = WEIGHT_BITS_SAFE) -> dict[str, Any]:
    """Re-quantize every int8 weight (a DequantizeLinear reading an int8 initializer of rank >= 2, zero point 0)
    of the ONNX ``model`` to ``bits`` bits, in place; returns ``{"weight_bits", "tensors", "max_abs",
    "channels_requantized"}``.

    Per channel of the DequantizeLinear's axis (per tensor for a scalar scale): a channel with max|q| <= 2**(bits-1)
    (which cannot saturate: ONNX Runtime's ``reduce_range`` weights) is kept; the others get new scale = old scale x
    max|q| / hi, q' = clip(round(q x old / new), lo, hi). The scale keeps its dtype (FP16 or FP32). A weight whose
    zero point is not 0 is refused (ValueError naming it): that is not the symmetric form this project writes.
    """
    from onnx import TensorProto, numpy_helper

    lo, hi = weight_int_range(bits)
    inits = {t.name: t for t in model.graph.initializer}
    done, worst, requantized = 0, 0, 0
    seen: set[str] = set()
    scaled: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] in seen:
            continue
        w = inits.get(node.input[0])
        if w is None or w.data_type != TensorProto.INT8 or len(w.dims) < 2:
            continue  # an activation, a bias or a scalar
        if len(node.input) > 2 and node.input[2] and np.any(numpy_helper.to_array(inits[node.input[2]]) != 0):
            raise ValueError(
                f"DequantizeLinear {node.name!r}: weight {w.name!r} has a nonzero zero point; expected "
                "symmetric int8 weights"
            )
        s_init = inits.get(node.input[1])
        if s_init is None:
            raise ValueError(f"DequantizeLinear {node.name!r}: scale {node.input[1]!r} is not an initializer")
        q = numpy_helper.to_array(w).astype(np.int32)
        scale = numpy_helper.to_array(s_init)
        shape = [1] * q.ndim
        if scale.ndim:
            shape[_axis(node) % q.ndim] = -1
        if s_init.name in scaled:
            raise ValueError(
                f"DequantizeLinear {node.name!r}: scale {s_init.name!r} is shared with weight "
                f"{scaled[s_init.name]!r}; expected one scale per weight"
            )
        if scale.ndim:
            ax = _axis(node) % q.ndim
            amax = np.abs(q).max(axis=tuple(i for i in range(q.ndim) if i != ax))
        else:
            amax = np.abs(q).max()
        # a channel already within +-2**(bits-1) cannot saturate (e.g. ONNX Runtime's reduce_range weights, quantized
        # from float to [-64, 64]) and stays as it is; the others are re-quantized to [lo, hi]
        ratio = np.where(amax <= hi + 1, 1.0, amax.astype(np.float64) / hi)
        requantized += int(np.count_nonzero(ratio != 1.0))
        new_scale = (scale.astype(np.float64) * ratio).astype(scale.dtype)
        real = q * scale.astype(np.float64).reshape(shape)
        q_new = np.clip(np.rint(real / new_scale.astype(np.float64).reshape(shape)), lo, hi + 1).astype(np.int8)
        w.CopyFrom(numpy_helper.from_array(q_new, w.name))
        s_init.CopyFrom(numpy_helper.from_array(new_scale.reshape(scale.shape), s_init.name))
        seen.add(node.input[0])
        scaled[s_init.name] = w.name
        worst = max(worst, int(np.abs(q_new).max()))
        done += 1
    return {"weight_bits": bits, "tensors": done, "max_abs": worst, "channels_requantized": requantized}
