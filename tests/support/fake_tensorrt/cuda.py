"""A fake of cuda-python's ``cuda.bindings.runtime`` (and ``cuda.bindings.utils.get_cuda_native_handle``).

Handles follow cuda-bindings (``cuda/bindings/runtime.pyx`` and ``cuda/bindings/utils/_get_handle.pyx``): a
``cudaStream_t`` wrapper keeps the handle in storage of its own (``_pvt_val``, pointed to by ``_pvt_ptr``);
``getPtr()`` returns the address of that storage (a ``cudaStream_t*``), ``int(stream)`` returns the handle, and
``get_cuda_native_handle(stream)`` returns ``_pvt_ptr[0]``: the handle again. Runtime functions accept the wrapper
or the raw handle as an int, as cuda-bindings does.

Execution is asynchronous: ``cudaMemcpyAsync`` and ``cudaGraphLaunch`` queue work on the stream, which runs at
``cudaStreamSynchronize``; results read before the sync are stale. Host memory stands in for device memory.
"""

from __future__ import annotations

import ctypes
import enum
import types
from types import SimpleNamespace
from typing import Any, Callable

__all__ = ["CudaStream", "FakeCudart", "Handle", "native_handle_module"]


class CudaStream:
    """``cuda.bindings.runtime.cudaStream_t``: the handle lives in ``_pvt_val``; work is queued on the stream's
    record (``FakeCudart.queues``) and runs at ``cudaStreamSynchronize``."""

    def __init__(self, handle: int) -> None:
        self._pvt_val = ctypes.c_void_p(handle)  # the cudaStream_t value
        self._pvt_ptr = ctypes.addressof(self._pvt_val)  # where it is stored

    def getPtr(self) -> int:
        """The address of the wrapper's storage (a pointer TO the handle), as in cuda-bindings."""
        return self._pvt_ptr

    def __int__(self) -> int:
        return int(self._pvt_val.value or 0)

    def __repr__(self) -> str:
        return f"<cudaStream_t 0x{int(self):x}>"


class _StreamState:
    """What the fake driver knows about one stream: queued work and an optional capture."""

    def __init__(self) -> None:
        self.queue: list[Callable[[], None]] = []
        self.capture: list[Callable[[], None]] | None = None

    def enqueue(self, work: Callable[[], None]) -> None:
        (self.capture if self.capture is not None else self.queue).append(work)

    def run(self) -> None:
        queue, self.queue = self.queue, []
        for work in queue:
            work()


class Handle:
    """An opaque cuda-python handle (graph, graph exec) carrying the fake's payload."""

    def __init__(self, payload: Any) -> None:
        self.payload = payload


def native_handle_module() -> types.ModuleType:
    """A ``cuda.bindings.utils`` with ``get_cuda_native_handle`` (cuda-bindings >= 12.9.1)."""
    mod = types.ModuleType("cuda.bindings.utils")

    def get_cuda_native_handle(obj: Any) -> int:
        if isinstance(obj, CudaStream):
            return ctypes.c_void_p.from_address(obj._pvt_ptr).value or 0  # _pvt_ptr[0]
        raise TypeError("Unknown type: " + str(type(obj)))

    mod.get_cuda_native_handle = get_cuda_native_handle
    return mod


class FakeCudart:
    """``cuda.bindings.runtime``: results are ``(cudaError_t, *values)`` tuples."""

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorInvalidResourceHandle = 400

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):
        cudaStreamCaptureModeThreadLocal = 1

    cudaStreamNonBlocking = 1

    def __init__(self) -> None:
        self.host: dict[int, Any] = {}
        self.device: dict[int, Any] = {}
        self.streams: dict[int, _StreamState] = {}
        self.graphs: set[Handle] = set()
        self.execs: set[Handle] = set()
        self.launches = 0
        self.driver_version = 12060  # CUDA 12.6, as on JetPack 6
        self.device_count = 1
        self._wrappers: list[CudaStream] = []

    # -- helpers
    def _ok(self, *values: Any) -> tuple:
        return (self.cudaError_t.cudaSuccess, *values)

    def stream(self, s: Any) -> _StreamState | None:
        """The stream a cuda-python argument names: a ``cudaStream_t`` or its raw handle as an int."""
        return self.streams.get(int(s))

    def _alloc(self, table: dict, n: int) -> tuple:
        buf = ctypes.create_string_buffer(n)
        table[ctypes.addressof(buf)] = buf
        return self._ok(ctypes.addressof(buf))

    def _free(self, table: dict, ptr: int) -> tuple:
        return self._ok() if table.pop(ptr, None) is not None else (self.cudaError_t.cudaErrorInvalidValue,)

    def _bad_stream(self) -> tuple:
        return (self.cudaError_t.cudaErrorInvalidResourceHandle,)

    # -- memory
    def cudaMallocHost(self, n):
        return self._alloc(self.host, n)

    def cudaMalloc(self, n):
        return self._alloc(self.device, n)

    def cudaFreeHost(self, ptr):
        return self._free(self.host, ptr)

    def cudaFree(self, ptr):
        return self._free(self.device, ptr)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        assert isinstance(dst, int) and isinstance(src, int) and n > 0
        state = self.stream(stream)
        if state is None:
            return self._bad_stream()
        state.enqueue(lambda: ctypes.memmove(dst, src, n))
        return self._ok()

    def cudaMemGetInfo(self):
        used = sum(len(b) for b in self.device.values())
        return self._ok((1 << 30) - used, 1 << 30)

    # -- streams
    def cudaStreamCreateWithFlags(self, flags):
        handle = 0x7F0000 + 0x100 * (len(self._wrappers) + 1)  # a driver handle: not a host address of ours
        s = CudaStream(handle)
        self._wrappers.append(s)
        self.streams[handle] = _StreamState()
        return self._ok(s)

    def cudaStreamSynchronize(self, s):
        state = self.stream(s)
        if state is None:
            return self._bad_stream()
        state.run()
        return self._ok()

    def cudaStreamDestroy(self, s):
        return self._ok() if self.streams.pop(int(s), None) is not None else self._bad_stream()

    # -- device
    def cudaDriverGetVersion(self):
        return self._ok(self.driver_version)

    def cudaSetDevice(self, d):
        return self._ok()

    def cudaGetDeviceProperties(self, d):
        return self._ok(SimpleNamespace(name=b"Fake GPU"))

    def cudaGetDeviceCount(self):
        return self._ok(self.device_count)

    # -- graphs
    def cudaStreamBeginCapture(self, s, mode):
        state = self.stream(s)
        if state is None:
            return self._bad_stream()
        state.capture = []
        return self._ok()

    def cudaStreamEndCapture(self, s):
        state = self.stream(s)
        if state is None:
            return self._bad_stream()
        g = Handle(state.capture)
        state.capture = None
        self.graphs.add(g)
        return self._ok(g)

    def cudaGraphInstantiate(self, g, flags):
        e = Handle(g.payload)
        self.execs.add(e)
        return self._ok(e)

    def cudaGraphLaunch(self, e, s):
        state = self.stream(s)
        if state is None:
            return self._bad_stream()
        for work in e.payload:
            state.enqueue(work)
        self.launches += 1
        return self._ok()

    def cudaGraphExecDestroy(self, e):
        self.execs.remove(e)
        return self._ok()

    def cudaGraphDestroy(self, g):
        self.graphs.remove(g)
        return self._ok()

    # -- errors
    def cudaGetLastError(self):
        return self._ok()

    def cudaGetErrorString(self, err):
        return self._ok(b"fake error")
