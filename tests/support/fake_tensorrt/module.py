"""The fake ``tensorrt`` module of one version, and :func:`install` (fake ``tensorrt`` + fake cuda-python)."""

from __future__ import annotations

import enum
import importlib.machinery
import sys
import types
from typing import Any

import numpy as np

from . import builder as b
from . import runtime as r
from .cuda import FakeCudart, native_handle_module

__all__ = ["fake_tensorrt", "install"]


def _enum(name: str, members: list[str]) -> type[enum.IntEnum]:
    return enum.IntEnum(name, {m: i for i, m in enumerate(members)})


class Severity(enum.IntEnum):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)


class ILogger:
    Severity = Severity

    def __init__(self) -> None:
        pass


class Logger(ILogger):
    WARNING = Severity.WARNING

    def __init__(self, severity: Severity = Severity.WARNING) -> None:
        super().__init__()

    def log(self, severity: Severity, msg: str) -> None:
        pass


class IProgressMonitor:
    def __init__(self) -> None:
        pass


def _enums(trt: types.ModuleType, major: int, minor: int) -> None:
    flags = ["GPU_FALLBACK", "VERSION_COMPATIBLE", "TF32", "REFIT"]
    if major < 11:
        flags += ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]
    trt.BuilderFlag = _enum("BuilderFlag", flags)
    trt.NetworkDefinitionCreationFlag = _enum(
        "NetworkDefinitionCreationFlag", ["STRONGLY_TYPED"] if major >= 11 else ["EXPLICIT_BATCH", "STRONGLY_TYPED"]
    )
    trt.MemoryPoolType = _enum("MemoryPoolType", ["WORKSPACE"])
    trt.LayerType = _enum(
        "LayerType",
        ["MATRIX_MULTIPLY", "NORMALIZATION", "SOFTMAX", "OTHER"]
        + (["ATTENTION_INPUT", "ATTENTION_OUTPUT"] if (major, minor) >= (10, 14) else []),
    )
    trt.DeviceType = _enum("DeviceType", ["GPU", "DLA"])
    trt.HardwareCompatibilityLevel = _enum(
        "HardwareCompatibilityLevel",
        ["NONE", "AMPERE_PLUS"] + (["SAME_COMPUTE_CAPABILITY"] if (major, minor) >= (10, 9) else []),
    )
    trt.TensorIOMode = _enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.ExecutionContextAllocationStrategy = _enum(
        "ExecutionContextAllocationStrategy", ["STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"]
    )


def _bind(trt: types.ModuleType, cls: type) -> type:
    """``cls`` with ``trt`` (this fake module) as its class attribute: the classes' link to version and enums."""
    return type(cls.__name__, (cls,), {"trt": trt, "__slots__": ()} if "__slots__" in cls.__dict__ else {"trt": trt})


def fake_tensorrt(
    cuda: FakeCudart, version: str = "10.3.0", fail_parse: bool = False, no_fused_attention: bool = False
) -> types.ModuleType:
    """A ``tensorrt`` module of ``version`` whose engines run the parsed ONNX in ONNX Runtime on ``cuda``.

    ``no_fused_attention``: this GPU has no fused attention kernel for the model (a non-decomposable IAttention
    fails to build even in FP16).
    """
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # torch.export looks for optional backends
    major, minor = (int(v) for v in version.split(".")[:2])
    trt.version_tuple = (major, minor)
    trt.cuda, trt.fail_parse, trt.no_fused_attention = cuda, fail_parse, no_fused_attention
    trt.builds, trt.runtimes = [], []
    _enums(trt, major, minor)
    trt.float32, trt.float16 = "float32", "float16"
    trt.nptype = lambda dt: {"float32": np.float32, "float16": np.float16}[dt]
    trt.ILogger, trt.Logger, trt.IProgressMonitor = ILogger, Logger, IProgressMonitor
    trt.ILayer = b.ILayer if major >= 11 else b.ILayer10
    trt.INormalizationLayer = b.INormalizationLayer
    if (major, minor) >= (10, 14):
        trt.IAttention, trt.IAttentionBoundaryLayer = b.IAttention, b.IAttentionBoundaryLayer
    for cls in (b.OnnxParser, b.Config, b.Builder, r.Context, r.Engine, r.Runtime):
        setattr(trt, cls.__name__, _bind(trt, cls))
    return trt


def install(
    monkeypatch: Any, cuda: FakeCudart, version: str = "10.3.0", native_handle: bool = False, **kw: Any
) -> types.ModuleType:
    """Put a fake ``tensorrt`` of ``version`` and the fake cuda-python in place (undone by ``monkeypatch``).

    ``native_handle``: also fake ``cuda.bindings.utils.get_cuda_native_handle`` (cuda-bindings >= 12.9.1);
    without it that module is made unimportable, as on older cuda-python 12.x.
    """
    import runtime.backends.tensorrt_detect as detect

    trt = fake_tensorrt(cuda, version, **kw)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(detect, "import_cudart", lambda: cuda)
    monkeypatch.setattr(detect, "cuda_python_version", lambda: "12.9.1" if native_handle else "12.6.0")
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", native_handle_module() if native_handle else None)
    return trt
