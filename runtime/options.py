"""The enumerations a bundle is made of, defined once: its precision and its backend.

The runtime is the lowest layer, so these live here; the build (``export/bundle/options.py``), the TensorRT
planner, the precision step and the manifest's reader all import them. Members are strings (``Precision.INT8 ==
"int8"``, ``f"{Precision.INT8}"`` is ``int8``, JSON writes ``"int8"``), so a manifest or a request holding plain
strings compares equal to them.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Precision", "Backend", "PRECISIONS", "BACKENDS"]


class _StrEnum(str, Enum):
    """``enum.StrEnum`` (Python 3.11) for 3.10 too: the member is its value in ``str()``, f-strings and JSON."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)


class Precision(_StrEnum):
    """The engine's precision (``manifest.json``'s ``precision``, ``make engine PRECISION=``)."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Backend(_StrEnum):
    """The inference backend that runs a bundle (``manifest.json``'s ``backend``)."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"
    OPENVINO = "openvino"


#: the values, in order, for ``choices`` and messages
PRECISIONS: tuple[str, ...] = tuple(p.value for p in Precision)
BACKENDS: tuple[str, ...] = tuple(b.value for b in Backend)
