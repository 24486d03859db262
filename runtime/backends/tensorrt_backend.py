"""TensorRT backend: runs a bundle's ``model.plan`` with the TensorRT 10/11 runtime and cuda-python.

Dependencies: numpy, ``tensorrt`` and ``cuda-python`` >= 12.6 of the driver's CUDA major (docs/tensorrt.md), nothing
from the
build side (no torch, no ``models``/``export``).

Manifest keys read (``runtime/manifest.py``): ``backend_version`` (the TensorRT that built the plan),
``input``/``output`` (names, batch range), ``precision`` and ``session``:
:class:`runtime.backends.tensorrt_session.TensorRTSession` (the one definition the builder writes):
``version_compatible`` (plan built with ``BuilderFlag.VERSION_COMPATIBLE``: host code allowed), ``dla_core``
(the runtime's ``DLA_core``), ``cuda_graph``. Constructor options override it (``cuda_graph=True``, ...).

Per instance: one execution context, one non-blocking CUDA stream, pinned host buffers
(``cudaMallocHost``) and device buffers (``cudaMalloc``) sized for the profile's max batch, bound once
with ``set_tensor_address``; ``infer`` does ``set_input_shape`` -> async H2D -> ``execute_async_v3``
(or a CUDA graph launch) -> async D2H -> stream sync.

``cuda_graph=True``: the first call at a batch size warms up and captures ``execute_async_v3``
(``cudaStreamBeginCapture``/``EndCapture``/``GraphInstantiate``) on an execution context of its own,
since a graph replays its context's state for one shape; later calls at that batch size only
``cudaGraphLaunch``. A plan that cannot be captured falls back to plain execution with a warning.

Device memory: every execution context is created with ``ExecutionContextAllocationStrategy.USER_MANAGED``
(TensorRT >= 10) and given one activation block of ``device_memory_size_v2`` bytes (the maximum over the
profile), allocated once by this backend (``set_device_memory``). All contexts, the main one and one per
captured batch size, share it: they run one at a time on this backend's one stream, so a graph per batch
size costs no activation memory of its own. ``describe()["device_memory"]`` reports the sizes.

Not thread-safe (``thread_safe = False``): the context, stream and staging buffers are per instance.
Use one backend per thread, or let ``runtime.Engine`` serialise calls with its lock.
"""

from __future__ import annotations

import ctypes
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends import tensorrt_detect
from runtime.backends.base import Backend
from runtime.backends.tensorrt_detect import stream_handle
from runtime.backends.tensorrt_session import TensorRTSession
from runtime.errors import BundleError
from runtime.versions import VersionError, parse_version


class TensorRTBackendError(RuntimeError):
    """The plan cannot be loaded or run here (missing TensorRT, version mismatch, bad input)."""


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the function and CUDA's error string."""


# ------------------------------------------------------------------------------------------ imports


def import_cudart() -> Any:
    """cuda-python's ``cuda.bindings.runtime`` (see ``tensorrt_detect``); raises TensorRTBackendError."""
    try:
        return tensorrt_detect.import_cudart()
    except tensorrt_detect.TensorRTUnavailable as e:
        raise TensorRTBackendError(str(e)) from e


def _import_tensorrt() -> Any:
    try:
        return tensorrt_detect.import_tensorrt()
    except tensorrt_detect.TensorRTUnavailable as e:
        raise TensorRTBackendError(str(e)) from e


# ----------------------------------------------------------------------------------- cuda-python glue


def _error_text(cudart: Any, err: Any) -> str:
    name = getattr(err, "name", str(err))
    desc = ""
    try:
        res = cudart.cudaGetErrorString(err)
        desc = res[1] if isinstance(res, tuple) else res
        if isinstance(desc, bytes):
            desc = desc.decode(errors="replace")
    except Exception:  # noqa: BLE001 - best effort
        pass
    return f"{name} ({int(err)}){': ' + desc if desc else ''}"


def cuda_check(cudart: Any, fn_name: str, result: Any) -> Any:
    """Unpack a cuda-python ``(err, *values)`` result: raise CudaError naming ``fn_name`` on failure.

    Returns None, the single value, or a tuple of values.
    """
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(err) != 0:
        raise CudaError(f"{fn_name} failed: {_error_text(cudart, err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def cuda_call(cudart: Any, fn_name: str, *args: Any) -> Any:
    """``cudart.<fn_name>(*args)`` with error checking (see :func:`cuda_check`)."""
    return cuda_check(cudart, fn_name, getattr(cudart, fn_name)(*args))


# ------------------------------------------------------------------------------------ compatibility


def _version_tuple(version: str | None) -> tuple[int, int, int] | None:
    try:
        return parse_version(version) if version else None
    except VersionError:
        return None


def check_plan_compatibility(
    plan_path: str | Path, built_version: str | None, installed_version: str, version_compatible: bool = False
) -> None:
    """Refuse a plan that the installed TensorRT cannot run, before deserialising it.

    A plain plan runs only on the TensorRT version that built it ("Version Compatibility" in the developer
    guide); this pre-check compares major.minor and leaves patch/build mismatches to deserialisation, which
    fails with TensorRT's own message. A version-compatible plan runs on the same or a newer TensorRT of the
    same major; across majors only 10 -> 11 and 8 -> 10 (TensorRT 11.4.1 Support Matrix, Engine Portability).
    An unknown ``built_version`` is not checked here (deserialisation will tell).
    """
    built = _version_tuple(built_version) if built_version else None
    installed = _version_tuple(installed_version)
    if built is None or installed is None:
        return
    if not version_compatible:
        if built[:2] != installed[:2]:
            raise TensorRTBackendError(
                f"{plan_path}: built with TensorRT {built_version}, but TensorRT {installed_version} is installed; "
                f"a plan runs only on the TensorRT version that built it ({built_version}). Install TensorRT "
                f"{built_version}, rebuild the engine here, or build it with version_compatible=True."
            )
        return
    cross_major = (built[0], installed[0]) in ((10, 11), (8, 10))
    if installed < built or (installed[0] != built[0] and not cross_major):
        raise TensorRTBackendError(
            f"{plan_path}: version-compatible plan built with TensorRT {built_version} cannot run on TensorRT "
            f"{installed_version}: it needs the same or a newer TensorRT {built[0]}.x (or 11.x for a 10.x plan)."
        )


def _parse_device(device: str) -> int:
    m = re.fullmatch(r"(?:cuda|gpu)(?::(\d+))?", str(device).strip().lower())
    if not m:
        raise TensorRTBackendError(
            f"device {device!r} not supported by the TensorRT backend; expected 'cuda' or 'cuda:N'"
        )
    return int(m.group(1) or 0)


# ------------------------------------------------------------------------------------------ buffers


class _Binding:
    """One I/O tensor: pinned host staging buffer + device buffer, both sized for the profile's max."""

    def __init__(self, cudart: Any, name: str, dtype: np.dtype, max_shape: tuple[int, ...], is_input: bool) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)
        self.max_shape = tuple(int(d) for d in max_shape)
        self.is_input = is_input
        count = int(np.prod(self.max_shape)) if self.max_shape else 1
        self.nbytes = max(count * self.dtype.itemsize, 1)
        self.host_ptr = 0
        self.device_ptr = 0
        self.host: np.ndarray | None = None
        try:
            self.host_ptr = int(cuda_call(cudart, "cudaMallocHost", self.nbytes))
            raw = (ctypes.c_uint8 * self.nbytes).from_address(self.host_ptr)
            self.host = np.ctypeslib.as_array(raw).view(self.dtype)  # flat view over the pinned memory
            self.device_ptr = int(cuda_call(cudart, "cudaMalloc", self.nbytes))
        except BaseException:
            self.free(cudart, [])
            raise

    def staging(self) -> np.ndarray:
        """The pinned host buffer (flat); refused once :meth:`free` released it."""
        if self.host is None:
            raise RuntimeError(f"tensor '{self.name}': its host buffer was freed (the backend is closed)")
        return self.host

    def free(self, cudart: Any, errors: list[str]) -> None:
        self.host = None  # drop the view before the memory goes
        for fn, attr in (("cudaFree", "device_ptr"), ("cudaFreeHost", "host_ptr")):
            ptr = getattr(self, attr)
            if ptr:
                try:
                    cuda_call(cudart, fn, ptr)
                except Exception as e:  # noqa: BLE001 - free the rest regardless
                    errors.append(f"{self.name}: {e}")
                setattr(self, attr, 0)


# ------------------------------------------------------------------------------------------ backend


class TensorRTBackend(Backend):
    """A TensorRT plan on one CUDA device; see the module docstring for the execution path."""

    name = "tensorrt"
    thread_safe = False  # one context/stream/staging buffers per instance: one instance per thread

    def __init__(self, engine_path: Path, manifest: dict[str, Any], device: str = "cuda", **options: Any) -> None:
        super().__init__(engine_path, manifest, device, **options)
        self._closed = True
        self._bindings: dict[str, _Binding] = {}
        # input shape -> (context, graph, graph_exec), or None where capture failed
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any] | None] = {}
        self._stream: Any = None
        self._context: Any = None
        self._activation_ptr = 0  # the device memory all execution contexts share (USER_MANAGED)
        self._activation_bytes = 0
        self._contexts_made = 0
        self._engine: Any = None
        self._runtime: Any = None
        trt = _import_tensorrt()
        cudart = import_cudart()
        self._trt, self._cudart = trt, cudart
        try:
            session = TensorRTSession.from_dict(manifest.get("session") or {}, where=f"{engine_path}: manifest session")
        except BundleError as e:
            raise TensorRTBackendError(str(e)) from e
        self.session = session
        self.version_compatible = bool(options.get("version_compatible", session.version_compatible))
        self.cuda_graph = bool(options.get("cuda_graph", session.cuda_graph))
        dla_core = options.get("dla_core", session.dla_core)
        self.trt_version = str(trt.__version__)
        self.built_version = manifest.get("backend_version")
        self.device_id = _parse_device(device)
        plan_path = self.engine_path
        check_plan_compatibility(plan_path, self.built_version, self.trt_version, self.version_compatible)

        cuda_call(cudart, "cudaSetDevice", self.device_id)
        props = cuda_call(cudart, "cudaGetDeviceProperties", self.device_id)
        name = getattr(props, "name", b"")
        self.device_name = name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if self.version_compatible:
            # a VERSION_COMPATIBLE plan embeds its lean runtime (unless built with EXCLUDE_LEAN_RUNTIME), which
            # the runtime loads only once told to trust the plan ("Version Compatibility", Runtime.html)
            self._runtime.engine_host_code_allowed = True
        if dla_core is not None:
            self._runtime.DLA_core = int(dla_core)
        try:
            blob = self.engine_data()  # the bytes Engine verified against the manifest, not a second read
        except OSError as e:
            raise TensorRTBackendError(f"{plan_path}: cannot read the plan ({e})") from e
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None:
            raise TensorRTBackendError(
                f"{plan_path}: TensorRT {self.trt_version} could not deserialize the plan (built with TensorRT "
                f"{self.built_version or 'unknown'}{', version-compatible' if self.version_compatible else ''} on "
                f"another GPU/driver?); rebuild the engine on this machine. See TensorRT's log above."
            )
        self._setup_io()
        self._closed = False

    # -- setup -------------------------------------------------------------------------------------
    def _setup_io(self) -> None:
        trt, cudart, engine = self._trt, self._cudart, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise TensorRTBackendError(
                f"{self.engine_path}: expected one input and at least one output; the plan has "
                f"inputs {inputs} and outputs {outputs}"
            )
        want_in = (self.manifest.get("input") or {}).get("name")
        if want_in and want_in != inputs[0]:
            raise TensorRTBackendError(
                f"{self.engine_path}: the manifest's input is '{want_in}', the plan's is '{inputs[0]}'"
            )
        want_out = (self.manifest.get("output") or {}).get("name")
        if want_out and want_out not in outputs:
            raise TensorRTBackendError(
                f"{self.engine_path}: the manifest's output '{want_out}' is not among the plan's outputs {outputs}"
            )
        self.input_name = inputs[0]
        self.output_names = outputs
        self.output_name = want_out or outputs[0]

        self._context = self._new_context("the main execution context")
        self._stream = cuda_call(cudart, "cudaStreamCreateWithFlags", cudart.cudaStreamNonBlocking)

        pmin, popt, pmax = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(self.input_name, 0))
        self.profile = {"min": pmin, "opt": popt, "max": pmax}
        self.batch_range = (pmin[0], pmax[0])
        want_batch = (self.manifest.get("input") or {}).get("batch") or {}
        if want_batch and (want_batch.get("min", pmin[0]) < pmin[0] or want_batch.get("max", pmax[0]) > pmax[0]):
            raise TensorRTBackendError(
                f"{self.engine_path}: the manifest's batch range {want_batch} exceeds the "
                f"plan's profile batch {pmin[0]}..{pmax[0]}"
            )
        if not self._context.set_input_shape(self.input_name, pmax):
            raise TensorRTBackendError(
                f"{self.engine_path}: TensorRT refused input shape {pmax} for '{self.input_name}'"
            )
        self._current_shape: tuple[int, ...] | None = pmax
        self._bindings[self.input_name] = _Binding(
            cudart, self.input_name, self._np_dtype(self.input_name), pmax, is_input=True
        )
        for out in outputs:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(out))
            if any(d < 0 for d in shape):
                raise TensorRTBackendError(
                    f"{self.engine_path}: output '{out}' has a data-dependent shape {shape}; not supported"
                )
            self._bindings[out] = _Binding(cudart, out, self._np_dtype(out), shape, is_input=False)
        self._bind(self._context)
        self._out_shapes: dict[tuple[int, ...], dict[str, tuple[int, ...]]] = {}

    def _new_context(self, what: str) -> Any:
        """An execution context on the shared activation memory (USER_MANAGED; TensorRT >= 10), else one that
        allocates its own (TensorRT 8.6)."""
        trt, engine = self._trt, self._engine
        strategy = getattr(getattr(trt, "ExecutionContextAllocationStrategy", None), "USER_MANAGED", None)
        if strategy is None:
            context = engine.create_execution_context()
        else:
            if not self._activation_ptr:
                size = getattr(engine, "device_memory_size_v2", None)  # 10.1+; device_memory_size before
                self._activation_bytes = int(size if size is not None else engine.device_memory_size)
                self._activation_ptr = int(cuda_call(self._cudart, "cudaMalloc", max(self._activation_bytes, 1)))
            context = engine.create_execution_context(strategy)
            if context is not None:
                if hasattr(context, "set_device_memory"):
                    context.set_device_memory(self._activation_ptr, self._activation_bytes)
                else:  # TensorRT 10.0
                    context.device_memory = self._activation_ptr
        if context is None:
            raise TensorRTBackendError(f"{self.engine_path}: could not create {what} (GPU memory?)")
        self._contexts_made += 1
        return context

    def _np_dtype(self, name: str) -> np.dtype:
        trt_dtype = self._engine.get_tensor_dtype(name)
        try:
            dtype: np.dtype = np.dtype(self._trt.nptype(trt_dtype))
            return dtype
        except (TypeError, KeyError, ValueError) as e:
            raise TensorRTBackendError(
                f"{self.engine_path}: tensor '{name}' has type {trt_dtype}, which numpy cannot "
                "hold; export the plan with float32/float16 I/O"
            ) from e

    # -- execution ---------------------------------------------------------------------------------
    def _bind(self, context: Any) -> None:
        for b in self._bindings.values():
            if not context.set_tensor_address(b.name, b.device_ptr):
                raise TensorRTBackendError(f"{self.engine_path}: set_tensor_address failed for '{b.name}'")

    def _execute(self, context: Any) -> None:
        if not context.execute_async_v3(stream_handle(self._stream)):
            raise TensorRTBackendError(f"{self.engine_path}: execute_async_v3 failed (see TensorRT's log)")

    def _capture(self, shape: tuple[int, ...]) -> tuple[Any, Any, Any] | None:
        """Warm up, then capture ``execute_async_v3`` at ``shape`` on a context of its own.

        A captured graph replays that context's state for that shape, so each captured batch size gets
        its own execution context (and activation memory). Returns (context, graph, graph_exec), or None
        when the plan cannot be captured; the warm-up run's output is in the output buffers either way.
        """
        cudart = self._cudart
        context = self._new_context(f"the execution context for the CUDA graph at input shape {shape}")
        self._bind(context)
        if not context.set_input_shape(self.input_name, shape):
            raise TensorRTBackendError(f"{self.engine_path}: TensorRT refused input shape {shape}")
        self._execute(context)  # warm-up: TensorRT finishes its shape-dependent setup here
        cuda_call(cudart, "cudaStreamSynchronize", self._stream)
        graph = None
        try:
            cuda_call(
                cudart,
                "cudaStreamBeginCapture",
                self._stream,
                cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal,
            )
            try:
                ok = context.execute_async_v3(stream_handle(self._stream))
            finally:
                graph = cuda_call(cudart, "cudaStreamEndCapture", self._stream)  # always leave capture mode
            if not ok:
                raise TensorRTBackendError("execute_async_v3 failed during stream capture")
            # cuda-python (cuda.bindings.runtime 12.x and 13.x): cudaGraphInstantiate(graph, flags) -> (err, exec)
            graph_exec = cuda_call(cudart, "cudaGraphInstantiate", graph, 0)
            return context, graph, graph_exec
        except Exception as e:  # noqa: BLE001 - fall back to plain execution at this shape
            if graph is not None:
                cudart.cudaGraphDestroy(graph)
            cudart.cudaGetLastError()  # reset the error state a failed capture leaves behind
            warnings.warn(
                f"{self.engine_path}: CUDA graph capture failed at input shape {shape} ({e}); running "
                "without a graph at this shape",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    def _output_shapes(self, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        out_shapes = self._out_shapes.get(shape)
        if out_shapes is None:
            self._set_main_shape(shape)
            out_shapes = {o: tuple(int(d) for d in self._context.get_tensor_shape(o)) for o in self.output_names}
            self._out_shapes[shape] = out_shapes
        return out_shapes

    def _set_main_shape(self, shape: tuple[int, ...]) -> None:
        if shape != self._current_shape:
            if not self._context.set_input_shape(self.input_name, shape):
                raise TensorRTBackendError(f"{self.engine_path}: TensorRT refused input shape {shape}")
            self._current_shape = shape

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one batch; returns the manifest's output (logits) as float32 numpy."""
        if self._closed:
            raise TensorRTBackendError(f"{self.engine_path}: backend is closed")
        cudart = self._cudart
        inp = self._bindings[self.input_name]
        x = np.ascontiguousarray(x, dtype=inp.dtype)
        shape = tuple(int(d) for d in x.shape)
        pmin, pmax = self.profile["min"], self.profile["max"]
        if len(shape) != len(pmax) or any(not lo <= d <= hi for d, lo, hi in zip(shape, pmin, pmax)):
            raise TensorRTBackendError(
                f"{self.engine_path}: input '{self.input_name}' shape {shape} outside the "
                f"plan's profile min {pmin} .. max {pmax}"
            )
        cuda_call(cudart, "cudaSetDevice", self.device_id)
        out_shapes = self._output_shapes(shape)
        inp.staging()[: x.size] = x.reshape(-1)
        cuda_call(
            cudart,
            "cudaMemcpyAsync",
            inp.device_ptr,
            inp.host_ptr,
            x.nbytes,
            cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
            self._stream,
        )

        ran = False
        if self.cuda_graph:
            if shape not in self._graphs:
                self._graphs[shape] = self._capture(shape)
                ran = True  # the warm-up run produced this call's output
            elif (graph := self._graphs[shape]) is not None:
                cuda_call(cudart, "cudaGraphLaunch", graph[2], self._stream)
                ran = True
        if not ran:
            self._set_main_shape(shape)
            self._execute(self._context)

        out = self._bindings[self.output_name]
        oshape = out_shapes[self.output_name]
        count = int(np.prod(oshape)) if oshape else 1
        cuda_call(
            cudart,
            "cudaMemcpyAsync",
            out.host_ptr,
            out.device_ptr,
            count * out.dtype.itemsize,
            cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
            self._stream,
        )
        cuda_call(cudart, "cudaStreamSynchronize", self._stream)
        return out.staging()[:count].reshape(oshape).astype(np.float32, copy=True)

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Free graphs, buffers, stream, context, engine and runtime; safe to call twice."""
        if getattr(self, "_cudart", None) is None:
            return
        cudart = self._cudart
        errors: list[str] = []
        if self._stream is not None:
            try:
                cuda_call(cudart, "cudaStreamSynchronize", self._stream)
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
        for captured in self._graphs.values():
            if captured is not None:
                _, graph, graph_exec = captured
                for fn, handle in (("cudaGraphExecDestroy", graph_exec), ("cudaGraphDestroy", graph)):
                    try:
                        cuda_call(cudart, fn, handle)
                    except Exception as e:  # noqa: BLE001
                        errors.append(str(e))
        self._graphs = {}
        for b in self._bindings.values():
            b.free(cudart, errors)
        self._bindings = {}
        if self._stream is not None:
            try:
                cuda_call(cudart, "cudaStreamDestroy", self._stream)
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
            self._stream = None
        self._context = None  # release order: contexts, their shared memory, engine, runtime
        if self._activation_ptr:
            try:
                cuda_call(cudart, "cudaFree", self._activation_ptr)
            except Exception as e:  # noqa: BLE001
                errors.append(f"activation memory: {e}")
            self._activation_ptr = 0
        self._engine = None
        self._runtime = None
        self._closed = True
        if errors:
            raise TensorRTBackendError(f"{self.engine_path}: errors while closing: {'; '.join(errors)}")

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

    def describe(self) -> dict[str, Any]:
        """Backend, TensorRT version, GPU, profile and CUDA-graph state, for logs and benchmarks."""
        return {
            "backend": self.name,
            "version": self.trt_version,
            "built_with": self.built_version,
            "device": f"cuda:{self.device_id}",
            "device_name": getattr(self, "device_name", ""),
            "plan": str(self.engine_path),
            "precision": self.manifest.get("precision"),
            "batch_range": list(getattr(self, "batch_range", ())),
            "version_compatible": self.version_compatible,
            "cuda_graph": self.cuda_graph,
            "graphs_captured": sorted(s[0] for s, g in self._graphs.items() if g is not None),
            "device_memory": {
                "activation_bytes": self._activation_bytes,
                "shared_by_contexts": self._contexts_made if self._activation_bytes else 0,
                "io_bytes": sum(b.nbytes for b in self._bindings.values()),
            },
        }


__all__ = [
    "CudaError",
    "TensorRTBackend",
    "TensorRTBackendError",
    "check_plan_compatibility",
    "cuda_call",
    "cuda_check",
    "import_cudart",
]
