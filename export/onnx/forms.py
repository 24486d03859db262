"""The export's attention forms, defined once and importable without torch (the build's option table and its
``--help`` need them; :mod:`export.onnx.attention` writes them, see its docstring for what each form is)."""

from __future__ import annotations

__all__ = ["ATTENTION_MODES", "ATTENTION_CHOICES"]

#: the ONNX forms of attention: the standard ``Attention`` operator, ``MatMul -> Softmax -> MatMul`` (what TensorRT
#: fuses), ONNX Runtime's ``com.microsoft.MultiHeadAttention``
ATTENTION_MODES: tuple[str, ...] = ("onnx", "decomposed", "ort")
#: the ``--attention`` choices: the modes plus ``auto`` (:func:`export.onnx.attention.default_attention`)
ATTENTION_CHOICES: tuple[str, ...] = ATTENTION_MODES + ("auto",)
