"""ONNX Runtime backend: CPU (the embedded default), CUDA and TensorRT execution providers."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError
from .base import Backend
from .onnxruntime_session import OnnxRuntimeSession

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "uint8": "tensor(uint8)"}
_LEVELS = {"disable_all": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
           "all": "ORT_ENABLE_ALL"}


class OnnxRuntimeBackend(Backend):
    """``InferenceSession`` with the settings the bundle recorded; ``run`` is thread-safe in ONNX Runtime.

    The model is loaded from the bytes ``runtime.Engine`` verified (never re-read from the path), except for
    models with an external-data file (over 2 GB), which ONNX Runtime must open by path.
    """

    name = "onnxruntime"
    thread_safe = True

    def __init__(self, engine_path: Path, manifest: dict[str, Any], device: str = "cpu", threads: int | None = None,
                 providers: list[str] | None = None, **options: Any) -> None:
        super().__init__(engine_path, manifest, device, **options)
        import onnxruntime as ort

        session = OnnxRuntimeSession.from_dict(manifest.get("session") or {}, where=f"{engine_path}: manifest session")
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
        level = session.graph_optimization_level
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
        n = threads if threads is not None else session.intra_op_num_threads
        so.intra_op_num_threads = int(n)
        so.inter_op_num_threads = session.inter_op_num_threads
        so.log_severity_level = 3
        external = (manifest.get("files") or {}).get(self.engine_path.name + ".data") is not None
        model: bytes | str = str(engine_path) if external or self.engine_bytes is None else self.engine_bytes
        try:
            self.session = ort.InferenceSession(model, sess_options=so, providers=provider_args)
        except Exception as e:  # onnxruntime raises its own exception types for corrupt or foreign files
            raise RuntimeError(f"{engine_path}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from e
        finally:
            self.engine_bytes = None  # ONNX Runtime holds its own copy
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        # Cheap checks that the model is the one the manifest describes (they matter with verify=False).
        want_in, want_out = manifest["input"]["name"], manifest["output"]["name"]
        if self.input_name != want_in or want_out not in [o.name for o in self.session.get_outputs()]:
            raise BundleError(f"{engine_path}: the model's input/outputs are {self.input_name!r}/"
                              f"{[o.name for o in self.session.get_outputs()]}, the manifest says {want_in!r}/"
                              f"{want_out!r}: not the model this bundle was built with")
        self.output_name = want_out
        got_type = self.session.get_inputs()[0].type
        want_type = _ORT_TYPES.get(manifest["input"]["dtype"])
        if got_type != want_type:
            raise BundleError(f"{engine_path}: the model's input {self.input_name!r} is {got_type}, the manifest's "
                              f"input.dtype is {manifest['input']['dtype']!r}: not the model this bundle was built with")
        classes = next(o.shape for o in self.session.get_outputs() if o.name == want_out)[-1]
        if isinstance(classes, int) and classes != manifest["output"]["shape"][-1]:
            raise BundleError(f"{engine_path}: the model outputs {classes} classes, the manifest says "
                              f"{manifest['output']['shape'][-1]}: not the model this bundle was built with")
        self.settings = {"providers": self.session.get_providers(), "intra_op_num_threads": so.intra_op_num_threads,
                         "graph_optimization_level": level, "onnxruntime": ort.__version__}

    def infer(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, **self.settings}
