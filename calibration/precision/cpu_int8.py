"""The INT8 form a CPU bundle's Q/DQ ONNX takes, per instruction set (issue 25).

Measured with OpenVINO 2026.4 on AMD Zen 4 (AVX-512 VNNI) and on the same CPU with ``ONEDNN_MAX_CPU_ISA=AVX2``
(which reproduces AVX2-only INT8 bit for bit on a single Q/DQ MatMul, see :mod:`calibration.precision.saturation`),
motion model, 32 held-out synthetic clips, min cosine against FP32 PyTorch (f32 inference precision):

================================================  =========  =========================
form                                               VNNI       AVX2 path
================================================  =========  =========================
TensorRT Q/DQ file as is (8-bit weights)           0.99914    0.99808 (differs by 0.18)
7-bit weights only                                 0.99892    0.99591
8-bit weights, activation x activation matmuls     0.99987    0.99784
in float
``portable``: 7-bit weights + those in float       0.99926    0.99926 (same to 4e-3)
================================================  =========  =========================

Both changes are needed: the weight matmuls saturate through their 8-bit weights, and the attention matmuls
(q·kᵀ, p·v) have an activation as their s8 operand, which no weight narrowing reaches. Those two matmuls are a
few percent of the model's MACs; the weight narrowing changes no kernel. ``portable`` is therefore the default on
every CPU (one bundle, the same numbers on AVX2, VNNI, AMX and ARM); ``vnni`` keeps the TensorRT file unchanged
and is only chosen on request, on a CPU whose INT8 does not saturate.
"""
from __future__ import annotations

from typing import Any

from calibration.precision.overflow import WEIGHT_BITS_SAFE, narrow_weights

__all__ = ["CPU_INT8_FORMS", "DEFAULT_CPU_INT8_FORM", "float_activation_matmuls", "to_cpu_int8_form"]

CPU_INT8_FORMS = ("portable", "vnni")
DEFAULT_CPU_INT8_FORM = "portable"


def float_activation_matmuls(model: Any) -> list[str]:
    """Run every MatMul whose two inputs are both dequantized activations (no constant weight) on the float values
    instead, in place: its inputs are rewired to the tensors the QuantizeLinear read. Returns the MatMul names.

    A Q/DQ pair left with no reader is removed, so that no int8 tensor is computed for nothing.
    """
    g = model.graph
    consts = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in g.node for o in n.output}
    changed = []
    for i, node in enumerate(g.node):
        if node.op_type != "MatMul":
            continue
        dqs = [producer.get(x) for x in node.input]
        if not all(d is not None and d.op_type == "DequantizeLinear" and d.input[0] not in consts for d in dqs):
            continue
        qs = [producer.get(d.input[0]) for d in dqs]
        if not all(q is not None and q.op_type == "QuantizeLinear" for q in qs):
            continue
        for k, q in enumerate(qs):
            node.input[k] = q.input[0]
        if not node.name:
            node.name = f"MatMul__cpu_int8_{i}"
        changed.append(node.name)
    _drop_unread(g)
    return changed


def _drop_unread(g: Any) -> None:
    """Remove Q/DQ nodes whose outputs nobody reads (repeatedly: a DQ first, then its Q)."""
    while True:
        read = {x for n in g.node for x in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)]
        if not dead:
            return
        for n in dead:
            g.node.remove(n)


def to_cpu_int8_form(model: Any, form: str = DEFAULT_CPU_INT8_FORM) -> dict[str, Any]:
    """Rewrite the Q/DQ ONNX ``model`` in place into ``form`` (:data:`CPU_INT8_FORMS`); returns the record the
    manifest keeps (``build.openvino.cpu_int8``), which the runtime checks against the CPU it loads on."""
    if form not in CPU_INT8_FORMS:
        raise ValueError(f"cpu INT8 form {form!r}: expected one of {CPU_INT8_FORMS}")
    if form == "vnni":
        return {"form": "vnni", "weight_bits": 8, "float_matmuls": [], "saturation_safe": False,
                "note": "the TensorRT Q/DQ file unchanged: exact only where INT8 sums in 32 bits (VNNI, AMX, ARM); "
                        "x86 without VNNI saturates its 16-bit pair sums"}
    narrowed = narrow_weights(model, WEIGHT_BITS_SAFE)
    floats = float_activation_matmuls(model)
    return {"form": "portable", "weight_bits": WEIGHT_BITS_SAFE, "weights_narrowed": narrowed["tensors"],
            "float_matmuls": floats, "saturation_safe": True,
            "note": "7-bit weights and float activation x activation matmuls: no 16-bit pair sum can saturate, so "
                    "AVX2-only x86 computes what VNNI, AMX and ARM compute (calibration/precision/cpu_int8.py)"}
