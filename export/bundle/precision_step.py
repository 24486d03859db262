"""The precision step of ``make engine`` and the reports: :func:`calibration.precision.build.precision_onnx` plus, for
TensorRT targets, a check of the result against what TensorRT's parser and builder accept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.options import Backend, Precision

from calibration.precision.build import precision_onnx as _precision_onnx

__all__ = ["precision_onnx", "tensorrt_check"]


def tensorrt_check(path: Path, precision: str) -> dict[str, Any]:
    """The strongly typed TensorRT build plan for ``path`` (installed TensorRT, else a nominal 10.3, or 10.14 when
    the graph has the ONNX Attention operator); raises on what TensorRT would refuse."""
    from calibration.graph.onnx_inspect import inspect_onnx

    from export.tensorrt.plan import TensorRTBuildOptions, plan_build

    try:
        import tensorrt as trt

        version = str(trt.__version__)
    except Exception:  # noqa: BLE001 - the stub packages raise OSError too
        version = "10.14.0" if inspect_onnx(path)["attention_nodes"] else "10.3.0"
    int8_form = inspect_onnx(path)["int8_form"] if precision == Precision.INT8 else None
    options = TensorRTBuildOptions(
        precision=precision, strongly_typed=True, int8_form=int8_form if int8_form in ("fp16", "fp32") else "fp16"
    )
    plan = plan_build(path, options, trt_version=version)
    return {
        "trt_version": version,
        "precision_detected": plan.onnx["precision_detected"],
        "onnx_precision": plan.onnx_precision,
        "qdq_nodes": plan.onnx["qdq_nodes"],
        "warnings": list(plan.warnings),
    }


def precision_onnx(
    fp32_onnx: Path, precision: str, target: str, *args: Any, **kwargs: Any
) -> tuple[Path, dict[str, Any]]:
    """:func:`calibration.precision.build.precision_onnx`, vetted by :func:`tensorrt_check` when ``target`` is
    TensorRT."""
    if target == Backend.TENSORRT:
        kwargs.setdefault("target_check", tensorrt_check)
    return _precision_onnx(fp32_onnx, precision, target, *args, **kwargs)
