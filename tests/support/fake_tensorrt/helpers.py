"""Helpers the TensorRT test files share: build options for the tiny models, the manifest entries the backend
reads, ONNX Runtime as the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .models import CLASSES, CLIP

__all__ = ["opts", "backend_manifest", "run_ort", "trt_importable"]


def trt_importable() -> bool:
    """Whether a real ``tensorrt`` imports here (the stub packages raise OSError, not ImportError)."""
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def opts(**kw: Any) -> Any:
    """Build options for the small models here: batch profile (1, 2, 4) unless given."""
    from export.tensorrt.plan import TensorRTBuildOptions

    kw.setdefault("batch", (1, 2, 4))
    return TensorRTBuildOptions(**kw)


def backend_manifest(info: dict, precision: str, **session: Any) -> dict:
    """The manifest entries ``TensorRTBackend`` reads, for a plan ``build_engine`` returned ``info`` about."""
    return {
        "schema_version": 1,
        "backend": "tensorrt",
        "backend_version": info["trt_version"],
        "engine_file": "model.plan",
        "precision": precision,
        "input": {
            "name": "video",
            "dtype": "float32",
            "layout": "BTCHW",
            "shape": [-1, *CLIP],
            "batch": dict(zip(("min", "opt", "max"), (1, 2, 4))),
        },
        "output": {"name": "logits", "dtype": "float32", "shape": [-1, CLASSES]},
        "session": {**info["session"], **session},
    }


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    """The ONNX model at ``path`` on ``x`` in ONNX Runtime CPU: the reference a TensorRT engine is compared with."""
    import onnxruntime as ort

    from runtime.backends.onnxruntime_session import cpu_session_options

    so = cpu_session_options()  # exact INT8 kernels on every CPU, as TensorRT computes
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"video": x})[0]
