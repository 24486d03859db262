"""Is TensorRT usable here, and if not, why: shared by the builder's ``BACKEND=auto`` and the TensorRT backend.

cuda-python: only ``cuda.bindings.runtime`` (cuda-python >= 12.6) is used. The old ``cuda.cudart`` module is
gone from cuda-python 13 (cuda-bindings 13 ships a CUDA 13 runtime), and cuda-python 12.x >= 12.6 has
``cuda.bindings``, so no fallback is kept. A cuda-python whose CUDA major is newer than the driver's (13.x on a
JetPack 6 / CUDA 12 driver) cannot run; :func:`tensorrt_available` says so instead of "no GPU".
"""
from __future__ import annotations

from typing import Any

__all__ = ["TensorRTUnavailable", "CUDA_PYTHON_FOR_CUDA", "import_tensorrt", "import_cudart", "cuda_python_version",
           "driver_cuda_version", "tensorrt_available", "stream_handle", "install_hint"]

#: the cuda-python pin per CUDA major (pyproject extras ``tensorrt-cu12`` / ``tensorrt-cu13``)
CUDA_PYTHON_FOR_CUDA = {12: "cuda-python>=12.6,<13", 13: "cuda-python>=13,<14"}


class TensorRTUnavailable(RuntimeError):
    """TensorRT or cuda-python cannot be used here; the message says what is missing and how to get it."""


def install_hint() -> str:
    """How to get TensorRT + cuda-python, per platform."""
    return ("on x86 with CUDA 12: pip install '.[tensorrt-cu12]'; with CUDA 13: pip install '.[tensorrt-cu13]'; "
            "on Jetson (JetPack 6): TensorRT comes with JetPack (apt install nvidia-jetpack), then "
            f"pip install '{CUDA_PYTHON_FOR_CUDA[12]}' (README: Deploying). Or use BACKEND=onnxruntime")


def import_tensorrt() -> Any:
    """``import tensorrt``; raises :class:`TensorRTUnavailable` (the stub wheels raise OSError, not ImportError)."""
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001
        raise TensorRTUnavailable(f"tensorrt is not importable ({type(e).__name__}: {e}); {install_hint()}") from e
    return trt


def import_cudart() -> Any:
    """cuda-python's runtime API, ``cuda.bindings.runtime``; raises :class:`TensorRTUnavailable`."""
    try:
        from cuda.bindings import runtime as cudart
    except Exception as e:  # noqa: BLE001
        raise TensorRTUnavailable(f"cuda-python's cuda.bindings.runtime is not importable ({type(e).__name__}: {e}); "
                                  f"install {CUDA_PYTHON_FOR_CUDA[12]!r} for a CUDA 12 driver (JetPack 6) or "
                                  f"{CUDA_PYTHON_FOR_CUDA[13]!r} for CUDA 13") from e
    return cudart


def cuda_python_version() -> str | None:
    """The installed cuda-bindings (or cuda-python) version, or None."""
    from importlib import metadata

    for dist in ("cuda-bindings", "cuda-python"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def driver_cuda_version(cudart: Any) -> tuple[int, int] | None:
    """The driver's CUDA version as (major, minor), e.g. (12, 6); None when it cannot be read."""
    try:
        res = cudart.cudaDriverGetVersion()
    except Exception:  # noqa: BLE001
        return None
    err, value = (res[0], res[1]) if isinstance(res, tuple) else (0, res)
    if int(err) != 0 or not value:
        return None
    return int(value) // 1000, (int(value) % 1000) // 10


def stream_handle(stream: Any) -> int:
    """The raw ``cudaStream_t`` for ``execute_async_v3``: ``getPtr()`` (``int(stream)`` is deprecated from
    cuda-bindings 12.9.1), or the int itself."""
    get_ptr = getattr(stream, "getPtr", None)
    return int(get_ptr()) if callable(get_ptr) else int(stream)


def tensorrt_available() -> tuple[bool, str]:
    """(True, description) when TensorRT imports and cuda-python sees a CUDA GPU; else (False, exactly why)."""
    try:
        trt = import_tensorrt()
    except TensorRTUnavailable as e:
        return False, str(e)
    try:
        cudart = import_cudart()
    except TensorRTUnavailable as e:
        return False, f"TensorRT {trt.__version__} imports, but {e}"
    bindings = cuda_python_version()
    driver = driver_cuda_version(cudart)
    if bindings and driver:
        from runtime.versions import VersionError, parse_version

        try:
            b_major = parse_version(bindings)[0]
        except VersionError:
            b_major = None
        if b_major is not None and b_major > driver[0]:
            want = CUDA_PYTHON_FOR_CUDA.get(driver[0], f"cuda-python {driver[0]}.x")
            return False, (f"cuda-python {bindings} (a CUDA {b_major} runtime) cannot run on this driver's CUDA "
                           f"{driver[0]}.{driver[1]}: pip install '{want}'")
    try:
        res = cudart.cudaGetDeviceCount()
    except Exception as e:  # noqa: BLE001
        return False, f"cudaGetDeviceCount raised {type(e).__name__}: {e}"
    err, count = res[0], res[1]
    if int(err) != 0:
        return False, f"no CUDA GPU visible (cudaGetDeviceCount: {getattr(err, 'name', err)})"
    if not count:
        return False, "no CUDA GPU visible (cudaGetDeviceCount returned 0)"
    drv = f", driver CUDA {driver[0]}.{driver[1]}" if driver else ""
    return True, f"TensorRT {trt.__version__}, {count} CUDA device(s){drv}, cuda-python {bindings or 'unknown'}"
