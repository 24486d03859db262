"""ONNX Runtime backend: CPU (the embedded default), CUDA and TensorRT execution providers."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import Backend

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_LEVELS = {"disable_all": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
           "all": "ORT_ENABLE_ALL"}


class OnnxRuntimeBackend(Backend):
    """``InferenceSession`` with the settings the bundle recorded; ``run`` is thread-safe in ONNX Runtime."""

    name = "onnxruntime"
    thread_safe = True

    def __init__(self, engine_path: Path, manifest: dict[str, Any], device: str = "cpu", threads: int | None = None,
                 providers: list[str] | None = None, **options: Any) -> None:
        super().__init__(engine_path, manifest, device, **options)
        import onnxruntime as ort

        settings = dict(manifest.get("session") or {})
        kind = device.split(":")[0]
        if providers is None:
            if kind not in _PROVIDERS:
                raise ValueError(f"device: expected one of {sorted(_PROVIDERS)} (optionally ':N'), got {device!r}")
            providers = _PROVIDERS[kind]
        available = ort.get_available_providers()
        if providers[0] not in available:
            raise RuntimeError(f"device {device!r} needs ONNX Runtime's {providers[0]}, but this onnxruntime "
                               f"({ort.__version__}) has only {available}; install onnxruntime-gpu (pip install "
                               "'.[gpu]') or use device='cpu'")
        device_id = int(device.split(":")[1]) if ":" in device else 0
        provider_args = [(p, {"device_id": device_id}) if p != "CPUExecutionProvider" else p for p in providers]
        so = ort.SessionOptions()
        level = settings.get("graph_optimization_level", "all")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
        n = threads if threads is not None else settings.get("intra_op_num_threads", 0)
        so.intra_op_num_threads = int(n)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(engine_path), sess_options=so, providers=provider_args)
        except Exception as e:  # onnxruntime raises its own exception types for corrupt or foreign files
            raise RuntimeError(f"{engine_path}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from e
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.settings = {"providers": self.session.get_providers(), "intra_op_num_threads": so.intra_op_num_threads,
                         "graph_optimization_level": level, "onnxruntime": ort.__version__}

    def infer(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, **self.settings}
