"""Is TensorRT usable here, and if not, why: shared by the builder's ``BACKEND=auto`` and the TensorRT backend.

cuda-python: only ``cuda.bindings.runtime`` (cuda-python >= 12.6) is used. The old ``cuda.cudart`` module is
gone from cuda-python 13 (cuda-bindings 13 ships a CUDA 13 runtime), and cuda-python 12.x >= 12.6 has
``cuda.bindings``, so no fallback is kept. A cuda-python whose CUDA major is newer than the driver's (13.x on a
JetPack 6 / CUDA 12 driver) cannot run; :func:`tensorrt_available` says so instead of "no GPU".
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "TensorRTUnavailable",
    "CUDA_PYTHON_FOR_CUDA",
    "import_tensorrt",
    "import_cudart",
    "cuda_python_version",
    "driver_cuda_version",
    "tensorrt_available",
    "stream_handle",
    "install_hint",
]

#: the cuda-python pin per CUDA major (pyproject extras ``tensorrt-cu12`` / ``tensorrt-cu13``)
CUDA_PYTHON_FOR_CUDA = {12: "cuda-python>=12.6,<13", 13: "cuda-python>=13,<14"}


class TensorRTUnavailable(RuntimeError):
    """TensorRT or cuda-python cannot be used here; the message says what is missing and how to get it."""


def install_hint() -> str:
    """How to get TensorRT + cuda-python, per platform."""
    return (
        "on x86 with CUDA 12: pip install '.[tensorrt-cu12]'; with CUDA 13: pip install '.[tensorrt-cu13]'; "
        "on Jetson (JetPack 6): TensorRT comes with JetPack (apt install nvidia-jetpack), then "
        f"pip install '{CUDA_PYTHON_FOR_CUDA[12]}' (docs/tensorrt.md). Or use BACKEND=onnxruntime"
    )


def import_tensorrt() -> Any:
    """``import tensorrt``; raises :class:`TensorRTUnavailable` (the stub wheels raise OSError, not ImportError)."""
    try:
        import tensorrt as trt
    except Exception as e:
        raise TensorRTUnavailable(f"tensorrt is not importable ({type(e).__name__}: {e}); {install_hint()}") from e
    return trt


def import_cudart() -> Any:
    """cuda-python's runtime API, ``cuda.bindings.runtime``; raises :class:`TensorRTUnavailable`."""
    try:
        from cuda.bindings import runtime as cudart
    except Exception as e:
        raise TensorRTUnavailable(
            f"cuda-python's cuda.bindings.runtime is not importable ({type(e).__name__}: {e}); "
            f"install {CUDA_PYTHON_FOR_CUDA[12]!r} for a CUDA 12 driver (JetPack 6) or "
            f"{CUDA_PYTHON_FOR_CUDA[13]!r} for CUDA 13"
        ) from e
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
    """The raw ``cudaStream_t`` value for ``execute_async_v3`` and graph capture.

    cuda-bindings keeps a handle in storage of its own: ``getPtr()`` is the address of that storage (a pointer TO
    the handle), never the handle; ``int(stream)`` is the handle, and from cuda-bindings 12.9.1
    ``cuda.bindings.utils.get_cuda_native_handle(stream)`` returns the same value (``_pvt_ptr[0]``,
    ``cuda/bindings/utils/_get_handle.pyx``). That one is used where it exists, ``int(stream)`` otherwise.
    """
    if isinstance(stream, int):
        return stream
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:  # cuda-bindings < 12.9.1
        return int(stream)
    try:
        return int(get_cuda_native_handle(stream))
    except TypeError:  # not a cuda-bindings handle type it knows
        return int(stream)


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
            return False, (
                f"cuda-python {bindings} (a CUDA {b_major} runtime) cannot run on this driver's CUDA "
                f"{driver[0]}.{driver[1]}: pip install '{want}'"
            )
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
