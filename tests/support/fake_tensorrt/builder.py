"""The builder side of the fake ``tensorrt``: layers, network, ONNX parser, profile, config, builder.

Classes read the faked TensorRT version and its enums from ``self.trt`` (the fake module; bound by
:func:`tests.support.fake_tensorrt.module.fake_tensorrt`). Documented behaviour they follow:

* ``INetworkDefinition.get_layer`` returns a base ``ILayer``: type-specific attributes need a cast
  (``layer.__class__ = trt.INormalizationLayer``); ``ILayer.precision``/``set_output_type`` are gone in 11.
* ``IBuilderConfig`` starts with ``BuilderFlag.TF32`` set (TensorRT enables TF32 by default; ``clear_flag``
  removes it).
* On DLA an optimisation profile must have min = opt = max (NvInfer.h, ``IOptimizationProfile``/``addInput``):
  the build fails otherwise.
* The ONNX parser reads ``Attention`` from 10.14 into an ``IAttention`` seen through its boundary layers
  (``LayerType.ATTENTION_INPUT``/``ATTENTION_OUTPUT``, ``IAttentionBoundaryLayer.get_attention()``), not
  decomposable (onnx-tensorrt's importer: ``TRT_decomposable`` defaults to 0). Without a fused kernel (FP32; or a
  GPU without one: ``no_fused_attention``) the build fails unless ``IAttention.decomposable`` is set.
* ``set_timing_cache(cache, ignore_mismatch=False)`` returns False for another TensorRT/GPU's cache (a blob
  starting with ``OTHER-GPU``).
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import onnx

__all__ = [
    "ILayer",
    "ILayer10",
    "INormalizationLayer",
    "IAttention",
    "IAttentionBoundaryLayer",
    "Network",
    "ParserError",
    "OnnxParser",
    "Profile",
    "TimingCache",
    "Config",
    "Builder",
    "ONNX_LAYER_TYPES",
]

#: ONNX op -> LayerType name in the fake's network
ONNX_LAYER_TYPES = {"MatMul": "MATRIX_MULTIPLY", "LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX"}


class ILayer:
    """What ``INetworkDefinition.get_layer`` returns: the base class, whatever the layer's type (TensorRT 11:
    no ``precision``/``set_output_type``)."""

    __slots__ = ("type", "name", "num_outputs", "_precision", "output_types", "_compute_precision", "_attention")

    def __init__(self, kind: Any, name: str = "", attention: "IAttention | None" = None) -> None:
        self.type, self.name, self.num_outputs = kind, name, 1
        self._precision, self.output_types, self._compute_precision = None, {}, None
        self._attention = attention


class ILayer10(ILayer):
    """TensorRT 10's ILayer: ``precision`` and ``set_output_type`` (deprecated in 10.12, removed in 11)."""

    __slots__ = ()

    @property
    def precision(self) -> Any:
        return self._precision

    @precision.setter
    def precision(self, dt: Any) -> None:
        self._precision = dt

    def set_output_type(self, i: int, dt: Any) -> None:
        self.output_types[i] = dt


class INormalizationLayer(ILayer10):
    __slots__ = ()

    @property
    def compute_precision(self) -> Any:
        return self._compute_precision

    @compute_precision.setter
    def compute_precision(self, dt: Any) -> None:
        self._compute_precision = dt


class IAttention:
    """The attention helper (not a layer); ``decomposable`` defaults to False as the ONNX importer leaves it."""

    def __init__(self, name: str) -> None:
        self.name, self.decomposable = name, False


class IAttentionBoundaryLayer(ILayer10):
    __slots__ = ()

    def get_attention(self) -> IAttention:
        return self._attention


class Network:
    def __init__(self, flags: int) -> None:
        self.flags, self.inputs, self.layers = flags, [], []
        self.attentions: list[IAttention] = []
        self.onnx_path: str | None = None
        self.onnx_precision: str | None = None

    num_inputs = property(lambda self: len(self.inputs))
    num_layers = property(lambda self: len(self.layers))

    def get_input(self, i: int) -> Any:
        return self.inputs[i]

    def get_layer(self, i: int) -> ILayer:
        return self.layers[i]


class ParserError:
    def __init__(self, name: str, op: str, desc: str) -> None:
        self._name, self._op, self._desc = name, op, desc

    def desc(self) -> str:
        return self._desc

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._op


class OnnxParser:
    trt: Any = None  # bound to the fake module

    def __init__(self, network: Network, logger: Any) -> None:
        self.network, self.errors = network, []

    num_errors = property(lambda self: len(self.errors))

    def parse_from_file(self, path: str) -> bool:
        from calibration.graph.onnx_inspect import inspect_onnx

        trt = self.trt
        if trt.fail_parse:
            self.errors = [ParserError("fused_gelu", "Gelu", "Unsupported operator")]
            return False
        model = onnx.load(path)
        if trt.version_tuple < (10, 14):
            self.errors = [
                ParserError(n.name, n.op_type, "No importer registered for op: Attention")
                for n in model.graph.node
                if n.op_type == "Attention"
            ]
            if self.errors:
                return False
        layer_cls = ILayer if trt.version_tuple[0] >= 11 else ILayer10
        self.network.inputs = [SimpleNamespace(name=i.name) for i in model.graph.input]
        for n in model.graph.node:
            if n.op_type == "Attention":
                att = IAttention(n.name)
                self.network.attentions.append(att)
                self.network.layers += [
                    layer_cls(trt.LayerType.ATTENTION_INPUT, n.name + "_in", att),
                    layer_cls(trt.LayerType.ATTENTION_OUTPUT, n.name + "_out", att),
                ]
            else:
                self.network.layers.append(layer_cls(trt.LayerType[ONNX_LAYER_TYPES.get(n.op_type, "OTHER")], n.name))
        self.network.onnx_path = path
        self.network.onnx_precision = inspect_onnx(path)["precision_detected"]
        return True

    def get_error(self, i: int) -> ParserError:
        return self.errors[i]


class Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, mn: Any, opt: Any, mx: Any) -> None:
        self.shapes[name] = (tuple(mn), tuple(opt), tuple(mx))


class TimingCache:
    def __init__(self, blob: bytes) -> None:
        self.blob = bytes(blob)

    def serialize(self) -> bytes:
        return self.blob + b"+timed"


class Config:
    trt: Any = None

    def __init__(self) -> None:
        trt = self.trt
        self.flags = {trt.BuilderFlag.TF32}  # TensorRT sets TF32 by default
        self.pools: dict = {}
        self.profiles: list[Profile] = []
        self.cache = None
        self.progress_monitor = None
        self.default_device_type = trt.DeviceType.GPU
        self.DLA_core = -1
        self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE
        self.builder_optimization_level = 3

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.pools[pool] = size

    def set_flag(self, f: Any) -> None:
        self.flags.add(f)

    def clear_flag(self, f: Any) -> None:
        self.flags.discard(f)

    def get_flag(self, f: Any) -> bool:
        return f in self.flags

    def add_optimization_profile(self, p: Profile) -> int:
        self.profiles.append(p)
        return len(self.profiles) - 1

    def create_timing_cache(self, blob: bytes) -> TimingCache:
        return TimingCache(blob)

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        if cache.blob.startswith(b"OTHER-GPU") and not ignore_mismatch:
            return False  # a cache made by another TensorRT/GPU
        self.cache = cache
        return True

    def get_timing_cache(self) -> TimingCache | None:
        return self.cache


class Builder:
    trt: Any = None

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> Network:
        return Network(flags)

    def create_builder_config(self) -> Config:
        return self.trt.Config()

    def create_optimization_profile(self) -> Profile:
        return Profile()

    def _error(self, msg: str) -> None:
        self.logger.log(self.trt.ILogger.Severity.ERROR, msg)

    def _progress(self, config: Config) -> None:
        m = config.progress_monitor
        if m is None:
            return
        m.phase_start("Building engine", None, 2)
        m.phase_start("Tactics", "Building engine", 3)
        for step in range(3):
            assert m.step_complete("Tactics", step) is True
        m.phase_finish("Tactics")
        m.step_complete("Building engine", 1)
        m.phase_finish("Building engine")

    def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
        trt = self.trt
        self._progress(config)
        trt.builds.append(SimpleNamespace(network=network, config=config))
        ((name, (mn, opt, mx)),) = config.profiles[0].shapes.items()
        if config.default_device_type == trt.DeviceType.DLA and not mn == opt == mx:
            self._error(
                f"{name}: DLA requires the optimization profile's min, opt and max dimensions to be equal; "
                f"got min {mn}, opt {opt}, max {mx}"
            )
            return None
        fp16 = network.onnx_precision == "fp16" or trt.BuilderFlag.__members__.get("FP16") in config.flags
        for att in network.attentions:
            if att.decomposable:
                continue
            if network.onnx_precision == "fp32" or not fp16:
                self._error(
                    f"{att.name}: could not find any implementation for the non-decomposable IAttention in FP32"
                )
                return None
            if trt.no_fused_attention:
                self._error(
                    f"{att.name}: no fused attention kernel for this GPU and shape; the IAttention is not decomposable"
                )
                return None
        meta = {
            "onnx": network.onnx_path,
            "input": name,
            "min": mn,
            "max": mx,
            "tf32": trt.BuilderFlag.TF32 in config.flags,
            "decomposed_attention": [a.name for a in network.attentions if a.decomposable],
        }
        return b"FAKEPLAN\n" + json.dumps(meta).encode()
