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
(q·kᵀ, p·v) have an activation as their s8 operand, which no weight narrowing reaches. 7 bits cost accuracy where
8 bits are exact: base 8x224 (random weights), 3 synthetic clips, VNNI, bf16: cosine 0.9995 with the file as is,
0.9986 ``portable``; on the AVX2 path (f32) the file as is falls to 0.9969 (0.889 on noise frames; ``portable``
0.9986 and 0.982 on both paths).

Where the 7-bit weights come from matters on real footage (motion model calibrated on vtest.avi, widened, 24 clips
of cup.mp4 and tree.avi, exact integer arithmetic, mean / min cosine): narrowed from the 8-bit file (a second
rounding) 0.9980 / 0.987, short of issue 25's bar; quantized from float (ONNX Runtime's ``reduce_range``: per
channel into [-64, 64], whose pair sums 2 x 255 x 64 still fit 16 bits) 0.9993 / 0.998, against 0.9995 / 0.998
for the 8-bit file. So ``make engine`` decides the form with the build target and, for ``portable``, quantizes the
weights from float (``quantize_int8(weight_bits=7)``); :func:`to_cpu_int8_form` then keeps them as they are. The
OpenVINO bundle built so under ``ONEDNN_MAX_CPU_ISA=AVX2``, through ``runtime.Engine`` on those clips: 0.99933 /
0.99714 on the AVX2 path, 0.99946 / 0.99813 on the VNNI path. So the form
follows the CPU the bundle is built on (:func:`choose_cpu_int8_form`): ``portable`` where oneDNN's INT8 saturates
(x86 without VNNI/AMX, or ``ONEDNN_MAX_CPU_ISA`` capped below VNNI), ``vnni`` (the TensorRT file unchanged)
elsewhere; ``TIMESFORMER_CPU_INT8_FORM=portable|vnni`` overrides it for a bundle meant for another machine. The
manifest records the form and the runtime warns when a ``vnni`` bundle loads on a CPU that saturates.
"""

from __future__ import annotations

import os
from typing import Any

from runtime.cpu_isa import CpuIsa, cpu_isa

from calibration.precision.overflow import WEIGHT_BITS_SAFE, narrow_weights

__all__ = ["CPU_INT8_FORMS", "FORM_ENV", "choose_cpu_int8_form", "float_activation_matmuls", "to_cpu_int8_form"]

CPU_INT8_FORMS = ("portable", "vnni")
#: overrides the form chosen from this CPU (a bundle built here for another machine)
FORM_ENV = "TIMESFORMER_CPU_INT8_FORM"


def choose_cpu_int8_form(isa: CpuIsa | None = None) -> tuple[str, str]:
    """The CPU INT8 form for a bundle built here, and why (naming the ISA)."""
    isa = isa or cpu_isa()
    asked = os.environ.get(FORM_ENV, "").strip()
    if asked:
        if asked not in CPU_INT8_FORMS:
            raise ValueError(f"{FORM_ENV}={asked!r}: expected one of {CPU_INT8_FORMS}")
        return asked, f"{FORM_ENV}={asked} (this CPU: {isa.describe()})"
    if isa.onednn_pairs_saturate:
        return "portable", f"{isa.describe()}: 8-bit weights and int8 q·kᵀ/p·v would saturate 16-bit pair sums"
    return "vnni", f"{isa.describe()}: INT8 sums in 32 bits here, 8-bit weights are exact"


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
        dead = [
            n
            for n in g.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in read for o in n.output)
        ]
        if not dead:
            return
        for n in dead:
            g.node.remove(n)


def to_cpu_int8_form(model: Any, form: str | None = None, why: str | None = None) -> dict[str, Any]:
    """Rewrite the Q/DQ ONNX ``model`` in place into ``form`` (:data:`CPU_INT8_FORMS`; None:
    :func:`choose_cpu_int8_form`, ``why`` then comes from it too); returns the record the manifest keeps
    (``build.openvino.cpu_int8``), which the runtime checks on load.

    ``portable`` takes the weights as they are where they already fit 7 bits (``make engine`` quantizes them from
    float so: ``quantize_int8(weight_bits=7)``) and narrows 8-bit ones (one more rounding, which costs accuracy)."""
    why = why or f"{form!r} asked for"
    if form is None:
        form, why = choose_cpu_int8_form()
    if form not in CPU_INT8_FORMS:
        raise ValueError(f"cpu INT8 form {form!r}: expected one of {CPU_INT8_FORMS}")
    if form == "vnni":
        return {
            "form": "vnni",
            "why": why,
            "weight_bits": 8,
            "float_matmuls": [],
            "saturation_safe": False,
            "note": "the TensorRT Q/DQ file unchanged: exact only where INT8 sums in 32 bits (VNNI, AMX, ARM); "
            "x86 without VNNI saturates its 16-bit pair sums",
        }
    narrowed = narrow_weights(model, WEIGHT_BITS_SAFE)
    floats = float_activation_matmuls(model)
    return {
        "form": "portable",
        "why": why,
        "weight_bits": WEIGHT_BITS_SAFE,
        "weights_7bit_from": "8-bit weights (narrowed)" if narrowed["channels_requantized"] else "float",
        "weight_tensors": narrowed["tensors"],
        "float_matmuls": floats,
        "saturation_safe": True,
        "note": "7-bit weights and float activation x activation matmuls: no 16-bit pair sum can saturate, so "
        "AVX2-only x86 computes what VNNI, AMX and ARM compute (calibration/precision/cpu_int8.py)",
    }
