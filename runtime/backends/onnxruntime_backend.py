"""ONNX Runtime backend: CPU (the embedded default), CUDA and TensorRT execution providers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError
from .base import Backend
from .onnxruntime_session import OnnxRuntimeSession
from .onnxruntime_session import ORT_LEVEL_NAMES as _LEVELS

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "uint8": "tensor(uint8)"}


class OnnxRuntimeBackend(Backend):
    """``InferenceSession`` with the settings the bundle recorded; ``run`` is thread-safe in ONNX Runtime.

    The model is loaded from the bytes ``runtime.Engine`` verified (never re-read from the path), except for
    models with an external-data file (over 2 GB), which ONNX Runtime must open by path.
    """

    name = "onnxruntime"
    thread_safe = True

    def __init__(
        self,
        engine_path: Path,
        manifest: dict[str, Any],
        device: str = "cpu",
        threads: int | None = None,
        providers: list[str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(engine_path, manifest, device, **options)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RuntimeError(
                f"{engine_path}: this ONNX Runtime bundle needs onnxruntime, which is not installed: "
                "pip install './runtime[cpu]' (or './runtime[gpu]' for its CUDA provider)"
            ) from e

        session = OnnxRuntimeSession.from_dict(manifest.get("session") or {}, where=f"{engine_path}: manifest session")
        provider_args = _provider_args(ort, device, providers)
        so, int8_config = _session_options(ort, session, threads, manifest)
        level = session.graph_optimization_level
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
        self._check_model(engine_path, manifest)  # cheap; they matter with verify=False
        self.settings = {
            "providers": self.session.get_providers(),
            "intra_op_num_threads": so.intra_op_num_threads,
            "graph_optimization_level": level,
            "onnxruntime": ort.__version__,
            "int8_config": int8_config,
        }

    def _check_model(self, engine_path: Path, manifest: dict[str, Any]) -> None:
        """Check the session's input/output names, input dtype, fixed dims and classes against the manifest
        (:class:`BundleError` when they differ); ``output_name`` becomes the manifest's output."""
        want_in, want_out = manifest["input"]["name"], manifest["output"]["name"]
        if self.input_name != want_in or want_out not in [o.name for o in self.session.get_outputs()]:
            raise BundleError(
                f"{engine_path}: the model's input/outputs are {self.input_name!r}/"
                f"{[o.name for o in self.session.get_outputs()]}, the manifest says {want_in!r}/"
                f"{want_out!r}: not the model this bundle was built with"
            )
        self.output_name = want_out
        got_type = self.session.get_inputs()[0].type
        want_type = _ORT_TYPES.get(manifest["input"]["dtype"])
        if got_type != want_type:
            raise BundleError(
                f"{engine_path}: the model's input {self.input_name!r} is {got_type}, the manifest's "
                f"input.dtype is {manifest['input']['dtype']!r}: not the model this bundle was built "
                "with"
            )
        _check_fixed_dims(engine_path, self.input_name, self.session.get_inputs()[0].shape, manifest["input"]["shape"])
        classes = next(o.shape for o in self.session.get_outputs() if o.name == want_out)[-1]
        if isinstance(classes, int) and classes != manifest["output"]["shape"][-1]:
            raise BundleError(
                f"{engine_path}: the model outputs {classes} classes, the manifest says "
                f"{manifest['output']['shape'][-1]}: not the model this bundle was built with"
            )

    def infer(self, x: np.ndarray) -> np.ndarray:
        if self.session is None:
            raise RuntimeError(f"{self.engine_path}: the ONNX Runtime session was closed")
        out: np.ndarray = self.session.run([self.output_name], {self.input_name: x})[0]
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, **self.settings}


def _provider_args(ort: Any, device: str, providers: list[str] | None) -> list[Any]:
    """The execution providers for ``device`` (or ``providers``) with their device id; ``RuntimeError`` when this
    onnxruntime lacks the first one."""
    kind = device.split(":")[0]
    if providers is None:
        check_device(device)
        providers = _PROVIDERS[kind]
    available = ort.get_available_providers()
    if providers[0] not in available:
        raise RuntimeError(
            f"device {device!r} needs ONNX Runtime's {providers[0]}, but this onnxruntime "
            f"({ort.__version__}) has only {available}; install onnxruntime-gpu in place of "
            "onnxruntime (pip uninstall onnxruntime; pip install './runtime[gpu]') or use "
            "device='cpu'"
        )
    device_id = int(device.split(":")[1]) if ":" in device else 0
    return [(p, {"device_id": device_id}) if p != "CPUExecutionProvider" else p for p in providers]


def _session_options(
    ort: Any, session: OnnxRuntimeSession, threads: int | None, manifest: dict[str, Any]
) -> tuple[Any, dict[str, str]]:
    """``SessionOptions`` from the bundle's session settings (threads capped at this machine's CPUs, ``threads``
    checked) and the INT8 config entries added to them."""
    so = ort.SessionOptions()
    level = session.graph_optimization_level
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
    cpus = available_cpus()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 4 * cpus:
            raise ValueError(f"threads: expected 1..{4 * cpus} (this machine has {cpus} CPUs), got {threads!r}")
        n = threads
    else:  # the bundle's value was right where it was built: never more threads than CPUs here (issue 28 #12)
        n = min(session.intra_op_num_threads, cpus)
    so.intra_op_num_threads = int(n)
    so.inter_op_num_threads = min(session.inter_op_num_threads, cpus)
    so.log_severity_level = 3
    from ..cpu_isa import ort_int8_config

    int8_config = ort_int8_config(manifest.get("precision", ""))  # issue 25: exact INT8 on x86 without VNNI
    for k, v in int8_config.items():
        so.add_session_config_entry(k, v)
    return so, int8_config


def check_device(device: str) -> str:
    """``device`` as this backend names devices (``cpu``, ``cuda[:N]``, ``tensorrt[:N]``); ``ValueError`` otherwise.
    Cheap (no onnxruntime import): ``make serve`` checks it before Ray starts."""
    kind, _, index = str(device).partition(":")
    if kind not in _PROVIDERS or (index and not index.isdigit()):
        raise ValueError(f"device: expected one of {sorted(_PROVIDERS)} (optionally ':N'), got {device!r}")
    return device


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _check_fixed_dims(engine_path: Path, name: str, model_shape: Any, manifest_shape: list[int]) -> None:
    """The model's fixed input dimensions must be the manifest's (frames, channels, crop): a manifest whose
    num_frames or crop size disagrees with the engine is refused at load, not at the first call (issue 28 #16)."""
    dims = list(model_shape or [])
    if len(dims) != len(manifest_shape):
        raise BundleError(
            f"{engine_path}: the model's input {name!r} has shape {dims}, the manifest's input.shape is "
            f"{manifest_shape}: not the model this bundle was built with"
        )
    for i, (got, want) in enumerate(zip(dims, manifest_shape)):
        if isinstance(got, int) and got > 0 and want != -1 and got != want:
            raise BundleError(
                f"{engine_path}: the model's input {name!r} has shape {dims}, the manifest's "
                f"input.shape is {manifest_shape} (dimension {i} differs; preprocess.num_frames and "
                "crop_size must match the engine): not the model this bundle was built with"
            )
