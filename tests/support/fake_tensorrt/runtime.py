"""The runtime side of the fake ``tensorrt``: ``Runtime``, ``ICudaEngine``, ``IExecutionContext``.

The engine runs the parsed ONNX in ONNX Runtime, on the fake cuda-python's host memory. Documented behaviour
it follows:

* ``execute_async_v3(stream)`` takes the raw ``cudaStream_t`` as an int; any other value is not a stream
  (TensorRT's enqueue fails with an invalid-handle CUDA error and returns False).
* Each context made with the default ``ExecutionContextAllocationStrategy.STATIC`` allocates the engine's
  ``device_memory_size_v2`` bytes (``device_memory_size`` before 10.1) of device memory of its own;
  ``USER_MANAGED`` allocates none, and the context cannot run until ``set_device_memory(ptr, size)`` (10.1+;
  ``device_memory = ptr`` before) gives it at least that much.
"""

from __future__ import annotations

import ctypes
import json
from typing import Any

import numpy as np

__all__ = ["Context", "Engine", "Runtime", "ACTIVATION_BYTES_PER_CLIP"]

#: the fake engine's activation memory: this many bytes per clip of the profile's max batch
ACTIVATION_BYTES_PER_CLIP = 1 << 16


class Context:
    trt: Any = None

    def __init__(self, engine: "Engine", user_managed: bool) -> None:
        self.engine, self.shapes, self.addresses = engine, {}, {}
        self.memory: int | None = None
        self.owned_memory: int | None = None
        if not user_managed:
            self.owned_memory = int(engine.cuda.cudaMalloc(engine.device_memory_size_v2)[1])
            self.memory = self.owned_memory

    def set_device_memory(self, ptr: int, size: int) -> None:
        if size < self.engine.device_memory_size_v2:
            raise ValueError(f"set_device_memory: {size} bytes < the engine's {self.engine.device_memory_size_v2}")
        self.memory = int(ptr)

    def __del__(self) -> None:
        if self.owned_memory is not None:
            self.engine.cuda.cudaFree(self.owned_memory)
            self.owned_memory = None

    def set_input_shape(self, name: str, shape: Any) -> bool:
        ok = all(lo <= d <= hi for d, lo, hi in zip(shape, self.engine.pmin, self.engine.pmax))
        if ok:
            self.shapes[name] = tuple(shape)
        return ok

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (self.shapes[self.engine.input][0], self.engine.classes)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        assert type(stream_handle) is int, f"execute_async_v3 takes the raw stream handle, got {stream_handle!r}"
        engine = self.engine
        state = engine.cuda.streams.get(stream_handle)
        if state is None:  # not a stream: e.g. a host address such as cudaStream_t.getPtr()
            engine.errors.append(
                f"execute_async_v3: CUDA error 400 (invalid resource handle) for stream 0x{stream_handle:x}"
            )
            return False
        if self.memory is None:
            engine.errors.append("execute_async_v3: the context has no device memory (USER_MANAGED)")
            return False
        shape = self.shapes[engine.input]
        addresses = dict(self.addresses)

        def run() -> None:
            n = int(np.prod(shape))
            x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(addresses[engine.input]))
            y = engine.session.run(None, {engine.input: x.reshape(shape).copy()})[0]
            y = np.ascontiguousarray(y, np.float32)
            ctypes.memmove(addresses["logits"], y.ctypes.data, y.nbytes)

        if state.capture is None:
            engine.executions += 1
        state.enqueue(run)  # runs at the next synchronisation (or is captured into a graph)
        return True


class Engine:
    trt: Any = None

    def __init__(self, meta: dict[str, Any], cuda: Any) -> None:
        import onnxruntime as ort

        self.cuda = cuda
        self.meta = meta
        from runtime.backends.onnxruntime_session import cpu_session_options

        # TensorRT's INT8 sums in 32 bits: run the Q/DQ model with exact integer kernels on every CPU
        self.session = ort.InferenceSession(meta["onnx"], cpu_session_options(), providers=["CPUExecutionProvider"])
        self.input, self.pmin, self.pmax = meta["input"], tuple(meta["min"]), tuple(meta["max"])
        self.contexts, self.executions = 0, 0
        self.errors: list[str] = []
        self.classes = int(self.session.get_outputs()[0].shape[-1])
        self.num_io_tensors = 2
        self.device_memory_size_v2 = ACTIVATION_BYTES_PER_CLIP * self.pmax[0]

    @property
    def device_memory_size(self) -> int:  # deprecated in 10.1
        return self.device_memory_size_v2

    def get_tensor_name(self, i: int) -> str:
        return [self.input, "logits"][i]

    def get_tensor_mode(self, name: str) -> Any:
        return self.trt.TensorIOMode.INPUT if name == self.input else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def get_tensor_profile_shape(self, name: str, index: int) -> tuple:
        return self.pmin, self.pmin, self.pmax

    def create_execution_context(self, strategy: Any = None) -> Context:
        self.contexts += 1
        user = strategy is not None and strategy == self.trt.ExecutionContextAllocationStrategy.USER_MANAGED
        return self.trt.Context(self, user_managed=user)


class Runtime:
    trt: Any = None

    def __init__(self, logger: Any) -> None:
        self.engine_host_code_allowed, self.DLA_core = False, -1
        self.engine: Engine | None = None
        self.trt.runtimes.append(self)

    def deserialize_cuda_engine(self, blob: bytes) -> Engine | None:
        if not bytes(blob).startswith(b"FAKEPLAN\n"):
            return None
        self.engine = self.trt.Engine(json.loads(bytes(blob).split(b"\n", 1)[1]), self.trt.cuda)
        return self.engine
