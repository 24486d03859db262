"""Test doubles for TensorRT and cuda-python (a plain module, not a test file), and tiny ONNX models.

The fakes follow TensorRT's documented behaviour where the code under test depends on it:

* ``INetworkDefinition.get_layer`` returns a base ``ILayer``: type-specific attributes
  (``INormalizationLayer.compute_precision``) need ``layer.__class__ = trt.INormalizationLayer``;
  ``ILayer.precision`` / ``set_output_type`` are gone in TensorRT 11.
* ``IBuilderConfig.set_timing_cache(cache, ignore_mismatch=False)`` returns False for a cache made by another
  TensorRT/GPU (here: a blob starting with ``OTHER-GPU``).
* The ONNX parser reads ``Attention`` only from 10.14, into a non-decomposable ``IAttention``; the builder finds
  no FP32 implementation for it and returns no engine, logging an error (onnx-tensorrt
  builtin_op_importers.cpp, Attention importer: ``TRT_decomposable`` defaults to 0).
* Execution is asynchronous: ``cudaMemcpyAsync``, ``execute_async_v3`` and ``cudaGraphLaunch`` are queued on the
  stream and run at ``cudaStreamSynchronize``; results read before the sync are stale.
* Streams are cuda-bindings objects: ``getPtr()`` gives the handle; ``int(stream)`` (deprecated from 12.9.1)
  raises here.

Host memory stands in for device memory and ONNX Runtime for the engine. They check the call sequence, flags,
buffers and graph logic; not TensorRT itself.
"""
from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


CLIP = (2, 3, 8, 8)  # (frames, 3, H, W)
FEAT = int(np.prod(CLIP))
HIDDEN, CLASSES = 16, 5


def _trt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - the stub packages raise OSError too
        return False
    return True


# ------------------------------------------------------------------------------------- tiny models

def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def _save(graph: onnx.GraphProto, path: Path, opset: int = 17, extra_opsets=()) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def _io(batch="N", clip=CLIP, elem=TensorProto.FLOAT):
    x = helper.make_tensor_value_info("video", elem, [batch, *clip])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, CLASSES])
    return x, y


def _weights(rng: np.random.Generator, dtype=np.float32):
    return {
        "w1": (rng.standard_normal((FEAT, HIDDEN)) * 0.05).astype(dtype),
        "b1": (rng.standard_normal(HIDDEN) * 0.1).astype(dtype),
        "ln_s": np.ones(HIDDEN, np.float32),
        "ln_b": np.zeros(HIDDEN, np.float32),
        "w2": (rng.standard_normal((HIDDEN, CLASSES)) * 0.3).astype(dtype),
        "b2": (rng.standard_normal(CLASSES) * 0.1).astype(dtype),
    }


def make_fp32(path: Path, batch="N", clip=CLIP, dims=None, seed=0) -> Path:
    """video (N,2,3,8,8) -> Flatten -> MatMul+Add -> LayerNorm -> Softmax -> MatMul+Add -> logits."""
    w = _weights(np.random.default_rng(seed))
    x, y = _io(batch, dims if dims is not None else clip)
    nodes = [
        helper.make_node("Flatten", ["video"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("LayerNormalization", ["h1", "ln_s", "ln_b"], ["h2"], axis=-1, name="norm"),
        helper.make_node("Softmax", ["h2"], ["h3"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["h3", "w2"], ["h4"], name="fc2"),
        helper.make_node("Add", ["h4", "b2"], ["logits"], name="fc2_bias"),
    ]
    graph = helper.make_graph(nodes, "tiny_fp32", [x], [y], [_init(k, v) for k, v in w.items()])
    return _save(graph, path)


def make_fp16(path: Path, ln_fp16: bool = False, seed=0) -> Path:
    """FP16 weights and matmuls, float32 I/O; LayerNorm/Softmax in FP32 unless ``ln_fp16``."""
    w = _weights(np.random.default_rng(seed), np.float16)
    if ln_fp16:
        w["ln_s"], w["ln_b"] = w["ln_s"].astype(np.float16), w["ln_b"].astype(np.float16)
    x, y = _io()
    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    nodes = [
        helper.make_node("Cast", ["video"], ["v16"], to=f16, name="to_fp16"),
        helper.make_node("Flatten", ["v16"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
    ]
    if ln_fp16:
        nodes += [helper.make_node("LayerNormalization", ["h1", "ln_s", "ln_b"], ["h2"], axis=-1, name="norm"),
                  helper.make_node("Softmax", ["h2"], ["h3"], axis=-1, name="softmax")]
    else:
        nodes += [helper.make_node("Cast", ["h1"], ["h1f"], to=f32, name="ln_in_fp32"),
                  helper.make_node("LayerNormalization", ["h1f", "ln_s", "ln_b"], ["h2"], axis=-1, name="norm"),
                  helper.make_node("Softmax", ["h2"], ["h2s"], axis=-1, name="softmax"),
                  helper.make_node("Cast", ["h2s"], ["h3"], to=f16, name="sm_out_fp16")]
    nodes += [helper.make_node("MatMul", ["h3", "w2"], ["h4"], name="fc2"),
              helper.make_node("Add", ["h4", "b2"], ["h5"], name="fc2_bias"),
              helper.make_node("Cast", ["h5"], ["logits"], to=f32, name="to_fp32")]
    graph = helper.make_graph(nodes, "tiny_fp16", [x], [y], [_init(k, v) for k, v in w.items()])
    return _save(graph, path)


def make_qdq(path: Path, zp_dtype=np.int8, zp_value: int = 0, seed=0) -> Path:
    """Symmetric INT8 Q/DQ on the input activation and the first weight (per-tensor)."""
    w = _weights(np.random.default_rng(seed))
    w1 = w.pop("w1")
    s_w = np.float32(np.abs(w1).max() / 127)
    inits = [_init(k, v) for k, v in w.items()] + [
        _init("w1_q", np.clip(np.round(w1 / s_w), -127, 127).astype(np.int8)),
        _init("w1_scale", np.array(s_w, np.float32)),
        _init("w1_zp", np.array(0, np.int8)),
        _init("x_scale", np.array(4.0 / 127, np.float32)),
        _init("x_zp", np.array(zp_value, zp_dtype)),
    ]
    x, y = _io()
    nodes = [
        helper.make_node("QuantizeLinear", ["video", "x_scale", "x_zp"], ["xq"], name="x_quant"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xdq"], name="x_dequant"),
        helper.make_node("DequantizeLinear", ["w1_q", "w1_scale", "w1_zp"], ["w1"], name="w1_dequant"),
        helper.make_node("Flatten", ["xdq"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("LayerNormalization", ["h1", "ln_s", "ln_b"], ["h2"], axis=-1, name="norm"),
        helper.make_node("Softmax", ["h2"], ["h3"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["h3", "w2"], ["h4"], name="fc2"),
        helper.make_node("Add", ["h4", "b2"], ["logits"], name="fc2_bias"),
    ]
    graph = helper.make_graph(nodes, "tiny_qdq", [x], [y], inits)
    return _save(graph, path, opset=19)


def make_attention(path: Path, seed=0) -> Path:
    """Opset 23: video -> Reshape (N, 2 heads, 24 tokens, 8) -> ONNX Attention -> Flatten -> MatMul -> logits."""
    rng = np.random.default_rng(seed)
    inits = [_init("qkv_shape", np.array([0, 2, 24, 8], np.int64)),
             _init("w", (rng.standard_normal((FEAT, CLASSES)) * 0.05).astype(np.float32))]
    x, y = _io()
    nodes = [
        helper.make_node("Reshape", ["video", "qkv_shape"], ["qkv"], name="to_heads"),
        helper.make_node("Attention", ["qkv", "qkv", "qkv"], ["att"], name="blocks.0.attn"),
        helper.make_node("Flatten", ["att"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "w"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(nodes, "tiny_attention", [x], [y], inits)
    return _save(graph, path, opset=23)


def make_contrib(path: Path) -> Path:
    x, y = _io()
    nodes = [helper.make_node("Flatten", ["video"], ["flat"], axis=1),
             helper.make_node("Gelu", ["flat"], ["g"], domain="com.microsoft", name="fused_gelu"),
             helper.make_node("MatMul", ["g", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny_contrib", [x], [y],
                              [_init("w", np.zeros((FEAT, CLASSES), np.float32))])
    return _save(graph, path, extra_opsets=[helper.make_opsetid("com.microsoft", 1)])


def make_models(d: Path) -> dict[str, Path]:
    """Every tiny model the TensorRT tests use, written under ``d``."""
    return {
        "fp32": make_fp32(d / "fp32.onnx"),
        "fp16": make_fp16(d / "fp16.onnx"),
        "fp16_ln": make_fp16(d / "fp16_ln.onnx", ln_fp16=True),
        "int8": make_qdq(d / "int8.onnx"),
        "int8_uint8": make_qdq(d / "int8_uint8.onnx", zp_dtype=np.uint8, zp_value=128),
        "int8_nonzero": make_qdq(d / "int8_nonzero.onnx", zp_value=3),
        "attention": make_attention(d / "attention.onnx"),
        "contrib": make_contrib(d / "contrib.onnx"),
        "fixed_batch": make_fp32(d / "fixed_batch.onnx", batch=1),
        "symbolic": make_fp32(d / "symbolic.onnx", dims=(2, 3, "H", "W")),
    }


# ------------------------------------------------------------------------------------- cuda-python

class _FakeStream:
    """A cudaStream_t: work is queued and runs at cudaStreamSynchronize (or is recorded while capturing)."""

    def __init__(self, handle: int) -> None:
        self.handle, self.capture, self.queue = handle, None, []

    def getPtr(self) -> int:  # noqa: N802 - cuda-bindings' name
        return self.handle

    def __int__(self) -> int:
        raise AssertionError("int(cudaStream_t) is deprecated from cuda-bindings 12.9.1; use getPtr()")

    def enqueue(self, work) -> None:
        (self.capture if self.capture is not None else self.queue).append(work)

    def run(self) -> None:
        queue, self.queue = self.queue, []
        for work in queue:
            work()


class _Handle:
    def __init__(self, payload) -> None:
        self.payload = payload


class FakeCudart:
    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):
        cudaStreamCaptureModeThreadLocal = 1

    cudaStreamNonBlocking = 1

    def __init__(self) -> None:
        self.host, self.device, self.streams = {}, {}, {}
        self.graphs, self.execs = set(), set()
        self.launches = 0
        self.driver_version = 12060  # CUDA 12.6, as on JetPack 6

    def _ok(self, *values):
        return (self.cudaError_t.cudaSuccess, *values)

    def _alloc(self, table, n):
        buf = ctypes.create_string_buffer(n)
        table[ctypes.addressof(buf)] = buf
        return self._ok(ctypes.addressof(buf))

    def _free(self, table, ptr):
        return self._ok() if table.pop(ptr, None) is not None else (self.cudaError_t.cudaErrorInvalidValue,)

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
        self.streams[stream.getPtr()].enqueue(lambda: ctypes.memmove(dst, src, n))
        return self._ok()

    def cudaStreamCreateWithFlags(self, flags):
        s = _FakeStream(len(self.streams) + 100)
        self.streams[s.getPtr()] = s
        return self._ok(s)

    def cudaStreamSynchronize(self, s):
        self.streams[s.getPtr()].run()
        return self._ok()

    def cudaStreamDestroy(self, s):
        del self.streams[s.getPtr()]
        return self._ok()

    def cudaDriverGetVersion(self):
        return self._ok(self.driver_version)

    def cudaMemGetInfo(self):
        used = sum(len(b) for b in self.device.values())
        return self._ok((1 << 30) - used, 1 << 30)

    def cudaSetDevice(self, d):
        return self._ok()

    def cudaGetDeviceProperties(self, d):
        return self._ok(SimpleNamespace(name=b"Fake GPU"))

    def cudaGetDeviceCount(self):
        return self._ok(1)

    def cudaStreamBeginCapture(self, s, mode):
        self.streams[s.getPtr()].capture = []
        return self._ok()

    def cudaStreamEndCapture(self, s):
        g = _Handle(self.streams[s.getPtr()].capture)
        self.streams[s.getPtr()].capture = None
        self.graphs.add(g)
        return self._ok(g)

    def cudaGraphInstantiate(self, g, flags):
        e = _Handle(g.payload)
        self.execs.add(e)
        return self._ok(e)

    def cudaGraphLaunch(self, e, s):
        for work in e.payload:
            self.streams[s.getPtr()].enqueue(work)
        self.launches += 1
        return self._ok()

    def cudaGraphExecDestroy(self, e):
        self.execs.remove(e)
        return self._ok()

    def cudaGraphDestroy(self, g):
        self.graphs.remove(g)
        return self._ok()

    def cudaGetLastError(self):
        return self._ok()

    def cudaGetErrorString(self, err):
        return self._ok(b"fake error")


# ---------------------------------------------------------------------------------------- tensorrt

def fake_tensorrt(cuda: FakeCudart, version: str = "10.3.0", fail_parse: bool = False) -> Any:
    """A ``tensorrt`` module of ``version`` whose engines run the parsed ONNX in ONNX Runtime on ``cuda``."""
    import onnxruntime as ort

    from calibration.graph.onnx_inspect import inspect_onnx

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # torch.export looks for optional backends
    trt.builds = []
    trt.runtimes = []
    major, minor = (int(v) for v in version.split(".")[:2])

    def make_enum(name, members):
        return enum.IntEnum(name, {m: i for i, m in enumerate(members)})

    flags = ["GPU_FALLBACK", "VERSION_COMPATIBLE", "TF32", "REFIT"]
    if major < 11:
        flags += ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]
    trt.BuilderFlag = make_enum("BuilderFlag", flags)
    trt.NetworkDefinitionCreationFlag = make_enum(
        "NetworkDefinitionCreationFlag", ["STRONGLY_TYPED"] if major >= 11 else ["EXPLICIT_BATCH", "STRONGLY_TYPED"])
    trt.MemoryPoolType = make_enum("MemoryPoolType", ["WORKSPACE"])
    trt.LayerType = make_enum("LayerType", ["MATRIX_MULTIPLY", "NORMALIZATION", "SOFTMAX", "OTHER"]
                              + (["ATTENTION"] if (major, minor) >= (10, 14) else []))
    trt.DeviceType = make_enum("DeviceType", ["GPU", "DLA"])
    trt.HardwareCompatibilityLevel = make_enum(
        "HardwareCompatibilityLevel", ["NONE", "AMPERE_PLUS"] + (["SAME_COMPUTE_CAPABILITY"] if (major, minor) >= (10, 9)
                                                                 else []))
    trt.TensorIOMode = make_enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.float32, trt.float16 = "float32", "float16"
    trt.nptype = lambda dt: {"float32": np.float32, "float16": np.float16}[dt]

    class Severity(enum.IntEnum):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity

    class Logger(ILogger):
        WARNING = Severity.WARNING

        def __init__(self, severity=Severity.WARNING):
            super().__init__()

        def log(self, severity, msg):
            pass

    class IProgressMonitor:
        def __init__(self):
            pass

    trt.ILogger, trt.Logger, trt.IProgressMonitor = ILogger, Logger, IProgressMonitor

    # -- builder side
    class ILayer:  # what INetworkDefinition.get_layer returns: the base class, whatever the layer's type
        __slots__ = ("type", "name", "num_outputs", "_precision", "output_types", "_compute_precision")

        def __init__(self, kind, name=""):
            self.type, self.name, self.num_outputs = kind, name, 1
            self._precision, self.output_types, self._compute_precision = None, {}, None

        if major < 11:  # removed in TensorRT 11
            @property
            def precision(self):
                return self._precision

            @precision.setter
            def precision(self, dt):
                self._precision = dt

            def set_output_type(self, i, dt):
                self.output_types[i] = dt

    class INormalizationLayer(ILayer):
        __slots__ = ()

        @property
        def compute_precision(self):
            return self._compute_precision

        @compute_precision.setter
        def compute_precision(self, dt):
            self._compute_precision = dt

    trt.ILayer, trt.INormalizationLayer = ILayer, INormalizationLayer
    Layer = ILayer

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.layers = flags, [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_layers = property(lambda self: len(self.layers))

        def get_input(self, i):
            return self.inputs[i]

        def get_layer(self, i):
            return self.layers[i]

    class ParserError:
        def __init__(self, name, op, desc):
            self._name, self._op, self._desc = name, op, desc

        def desc(self):
            return self._desc

        def node_name(self):
            return self._name

        def node_operator(self):
            return self._op

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        num_errors = property(lambda self: len(self.errors))

        def parse_from_file(self, path):
            if fail_parse:
                self.errors = [ParserError("fused_gelu", "Gelu", "Unsupported operator")]
                return False
            model = onnx.load(path)
            if (major, minor) < (10, 14):
                self.errors = [ParserError(n.name, n.op_type, "No importer registered for op: Attention")
                               for n in model.graph.node if n.op_type == "Attention"]
                if self.errors:
                    return False
            kinds = {"MatMul": "MATRIX_MULTIPLY", "LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX",
                     "Attention": "ATTENTION"}
            self.network.inputs = [SimpleNamespace(name=i.name) for i in model.graph.input]
            self.network.layers = [ILayer(trt.LayerType[kinds.get(n.op_type, "OTHER")], n.name)
                                   for n in model.graph.node]
            self.network.onnx_path = path
            self.network.onnx_precision = inspect_onnx(path)["precision_detected"]
            return True

        def get_error(self, i):
            return self.errors[i]

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, mn, opt, mx):
            self.shapes[name] = (tuple(mn), tuple(opt), tuple(mx))

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+timed"

    class Config:
        def __init__(self):
            self.flags, self.cleared, self.pools, self.profiles = set(), set(), {}, []
            self.cache = None
            self.progress_monitor = None
            self.default_device_type = trt.DeviceType.GPU
            self.DLA_core = -1
            self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE
            self.builder_optimization_level = 3

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, f):
            self.flags.add(f)

        def clear_flag(self, f):
            self.cleared.add(f)

        def add_optimization_profile(self, p):
            self.profiles.append(p)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob):
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache.blob.startswith(b"OTHER-GPU") and not ignore_mismatch:
                return False  # a cache made by another TensorRT/GPU
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if config.progress_monitor is not None:
                config.progress_monitor.phase_start("Building engine", None, 2)
                config.progress_monitor.phase_start("Tactics", "Building engine", 3)
                for step in range(3):
                    assert config.progress_monitor.step_complete("Tactics", step) is True
                config.progress_monitor.phase_finish("Tactics")
                config.progress_monitor.step_complete("Building engine", 1)
                config.progress_monitor.phase_finish("Building engine")
            trt.builds.append(SimpleNamespace(network=network, config=config))
            attention = [layer for layer in network.layers if layer.type.name == "ATTENTION"]
            fp16 = network.onnx_precision == "fp16" or trt.BuilderFlag.__members__.get("FP16") in config.flags
            if attention and (network.onnx_precision == "fp32" or not fp16):
                self.logger.log(Severity.ERROR, f"{attention[0].name}: could not find any implementation for the "
                                "non-decomposable IAttention in FP32")
                return None
            (name, (mn, opt, mx)), = config.profiles[0].shapes.items()
            return b"FAKEPLAN\n" + json.dumps({"onnx": network.onnx_path, "input": name, "min": mn, "max": mx}).encode()

    trt.Builder, trt.OnnxParser = Builder, OnnxParser

    # -- runtime side
    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            ok = all(lo <= d <= hi for d, lo, hi in zip(shape, self.engine.pmin, self.engine.pmax))
            if ok:
                self.shapes[name] = tuple(shape)
            return ok

        def get_tensor_shape(self, name):
            return (self.shapes[self.engine.input][0], self.engine.classes)

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            assert type(stream_handle) is int, f"execute_async_v3 takes the raw stream handle, got {stream_handle!r}"
            shape = self.shapes[self.engine.input]
            addresses = dict(self.addresses)

            def run():
                n = int(np.prod(shape))
                x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(addresses[self.engine.input]))
                y = self.engine.session.run(None, {self.engine.input: x.reshape(shape).copy()})[0]
                y = np.ascontiguousarray(y, np.float32)
                ctypes.memmove(addresses["logits"], y.ctypes.data, y.nbytes)

            stream = cuda.streams[stream_handle]
            if stream.capture is None:
                self.engine.executions += 1
            stream.enqueue(run)  # runs at the next synchronisation (or is captured into a graph)
            return True

    class Engine:
        def __init__(self, meta):
            self.session = ort.InferenceSession(meta["onnx"], providers=["CPUExecutionProvider"])
            self.input, self.pmin, self.pmax = meta["input"], tuple(meta["min"]), tuple(meta["max"])
            self.contexts, self.executions = 0, 0
            self.classes = int(self.session.get_outputs()[0].shape[-1])
            self.num_io_tensors = 2

        def get_tensor_name(self, i):
            return [self.input, "logits"][i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == self.input else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_profile_shape(self, name, index):
            return self.pmin, self.pmin, self.pmax

        def create_execution_context(self):
            self.contexts += 1
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed, self.DLA_core = False, -1
            trt.runtimes.append(self)

        def deserialize_cuda_engine(self, blob):
            if not blob.startswith(b"FAKEPLAN\n"):
                return None
            self.engine = Engine(json.loads(blob.split(b"\n", 1)[1]))
            return self.engine

    trt.Runtime = Runtime
    return trt

def install(monkeypatch, cuda: FakeCudart, version: str = "10.3.0", **kw: Any) -> Any:
    """Put a fake ``tensorrt`` of ``version`` and the fake cuda-python in place (undone by ``monkeypatch``)."""
    import runtime.backends.tensorrt_detect as detect

    trt = fake_tensorrt(cuda, version, **kw)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(detect, "import_cudart", lambda: cuda)
    monkeypatch.setattr(detect, "cuda_python_version", lambda: "12.6.0")
    return trt


# ---- shared by the TensorRT test files ------------------------------------------------------------------------------
def opts(**kw: Any) -> Any:
    """Build options for the small models here: batch profile (1, 2, 4) unless given."""
    from export.tensorrt.plan import TensorRTBuildOptions

    kw.setdefault("batch", (1, 2, 4))
    return TensorRTBuildOptions(**kw)


def backend_manifest(info: dict, precision: str, **session: Any) -> dict:
    """The manifest entries ``TensorRTBackend`` reads, for a plan ``build_engine`` returned ``info`` about."""
    return {
        "schema_version": 1, "backend": "tensorrt", "backend_version": info["trt_version"],
        "engine_file": "model.plan", "precision": precision,
        "input": {"name": "video", "dtype": "float32", "layout": "BTCHW", "shape": [-1, *CLIP],
                  "batch": dict(zip(("min", "opt", "max"), (1, 2, 4)))},
        "output": {"name": "logits", "dtype": "float32", "shape": [-1, CLASSES]},
        "session": {**info["session"], **session},
    }


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    """The ONNX model at ``path`` on ``x`` in ONNX Runtime CPU: the reference a TensorRT engine is compared with."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"video": x})[0]
