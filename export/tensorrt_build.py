"""Build TensorRT engines (plan files) from the exported ONNX with the TensorRT 10 / 11 Python API.

Two steps, so that everything up to the TensorRT call can be checked on a machine without a GPU:

* :func:`plan_build` — pure Python (needs only ``onnx``): inspects the ONNX and returns the exact plan
  handed to TensorRT (creation flags, builder flags, optimisation profile, config) for a given TensorRT
  version, and refuses combinations that cannot work, with errors naming the file, tensor, expected
  and actual values.
* :func:`build_engine` — imports ``tensorrt`` lazily, runs the plan and writes the plan file atomically.

Precision is decided in the ONNX graph (strongly typed networks, the default, and the only mode of
TensorRT 11): FP32 ONNX -> FP32 engine, FP16 ONNX -> FP16 engine, Q/DQ ONNX -> INT8 engine.
TensorRT 10 (e.g. 10.3 on JetPack 6) may also build weakly typed (``strongly_typed=False``):
FP32 ONNX + ``BuilderFlag.FP16`` with LayerNorm (``NORMALIZATION``) and ``SOFTMAX`` layers pinned to FP32
through precision constraints, or Q/DQ ONNX + ``BuilderFlag.INT8``; DLA on TensorRT 10 needs this mode.

TensorRT API by version (all looked up with ``hasattr`` at build time):

=============================  ==========================================================
``EXPLICIT_BATCH``             creation flag needed before 10 only (deprecated and ignored from 10.0)
``STRONGLY_TYPED``             creation flag, opt-in in 10; deprecated and ignored in 11 (always on)
``BuilderFlag.FP16/INT8``      10 only (removed in 11), exclusive with ``STRONGLY_TYPED``
precision constraints          ``OBEY_PRECISION_CONSTRAINTS``, ``ILayer.precision``,
                               ``set_output_type``: 10 only (removed in 11)
``config.progress_monitor``    ``IProgressMonitor``, since 10.0
ONNX ``Attention`` operator    parsed since 10.14
=============================  ==========================================================
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.manifest import temp_beside

PRECISIONS = ("fp32", "fp16", "int8")
HARDWARE_COMPATIBILITY = {
    "none": "NONE",
    "ampere_plus": "AMPERE_PLUS",
    "same_compute_capability": "SAME_COMPUTE_CAPABILITY",
}
#: TensorRT layer types pinned to FP32 in a weakly typed FP16 build (LayerNorm and Softmax).
FP32_PINNED_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX")
#: the first TensorRT whose ONNX parser reads the opset-23 ``Attention`` operator
ATTENTION_MIN_TRT = (10, 14)
#: the oldest TensorRT this builder drives (named-tensor API, ``execute_async_v3``)
MIN_TRT = (8, 6)

INSTALL_HINT = ("install TensorRT with `pip install .[tensorrt]` on a machine with an NVIDIA GPU, "
                "or use the ONNX Runtime engine instead (BACKEND=onnxruntime)")

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_ONNX_DOMAINS = ("", "ai.onnx")
_LOW_FLOAT_TYPES = ("float16", "bfloat16")


class TensorRTBuildError(RuntimeError):
    """A build that cannot work, or a TensorRT call that failed; the message names file, tensor, values."""


@dataclass
class TensorRTBuildOptions:
    """What to build; see the module docstring for how each option maps onto TensorRT."""

    precision: str = "fp32"
    #: strongly typed network (precision taken from the ONNX). TensorRT 11 always builds strongly typed.
    strongly_typed: bool = True
    #: (min, opt, max) batch of the optimisation profile
    batch: tuple[int, int, int] = (1, 1, 8)
    #: ONNX input to profile; None: the model's only input
    input_name: str | None = None
    #: per-clip input shape without the batch, e.g. (frames, 3, H, W); None: read from the ONNX
    input_shape: tuple[int, ...] | None = None
    workspace_mib: int = 4096
    #: timing cache file, loaded when present and saved (atomically) after the build
    timing_cache: str | None = None
    #: DLA core to build for (fp16/int8 only; unsupported layers fall back to the GPU)
    dla_core: int | None = None
    #: "none" | "ampere_plus" | "same_compute_capability"
    hardware_compatibility: str = "none"
    #: plan runs on later TensorRT versions too (the runtime must allow engine host code)
    version_compatible: bool = False
    #: 0..5 (TensorRT's default is 3); None leaves TensorRT's default
    builder_optimization_level: int | None = None
    #: allow TF32 for FP32 math (TensorRT's default); False clears BuilderFlag.TF32
    tf32: bool = True
    verbose: bool = False

    def validate(self) -> None:
        """Check the options on their own (no ONNX, no TensorRT); raises TensorRTBuildError."""
        if self.precision not in PRECISIONS:
            raise TensorRTBuildError(f"precision {self.precision!r} not supported; expected one of {PRECISIONS}")
        b = tuple(self.batch)
        if len(b) != 3 or not all(isinstance(v, int) and v >= 1 for v in b) or not b[0] <= b[1] <= b[2]:
            raise TensorRTBuildError(f"batch {self.batch!r} invalid; expected (min, opt, max) integers with "
                                     "1 <= min <= opt <= max")
        if self.input_shape is not None and not all(isinstance(v, int) and v >= 1 for v in self.input_shape):
            raise TensorRTBuildError(f"input_shape {self.input_shape!r} invalid; expected positive integers "
                                     "(frames, 3, H, W) without the batch")
        if not isinstance(self.workspace_mib, int) or self.workspace_mib < 1:
            raise TensorRTBuildError(f"workspace_mib {self.workspace_mib!r} invalid; expected an integer >= 1")
        if self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise TensorRTBuildError(f"hardware_compatibility {self.hardware_compatibility!r} not supported; "
                                     f"expected one of {tuple(HARDWARE_COMPATIBILITY)}")
        lvl = self.builder_optimization_level
        if lvl is not None and (not isinstance(lvl, int) or not 0 <= lvl <= 5):
            raise TensorRTBuildError(f"builder_optimization_level {lvl!r} invalid; expected 0..5 or None")
        if self.dla_core is not None:
            if not isinstance(self.dla_core, int) or self.dla_core < 0:
                raise TensorRTBuildError(f"dla_core {self.dla_core!r} invalid; expected None or an integer >= 0")
            if self.precision == "fp32":
                raise TensorRTBuildError("dla_core is set but precision is 'fp32'; DLA runs only FP16 or INT8 "
                                         "(use precision='fp16' or 'int8', or dla_core=None)")
            if self.hardware_compatibility != "none":
                raise TensorRTBuildError(f"dla_core is set with hardware_compatibility="
                                         f"{self.hardware_compatibility!r}; hardware compatibility applies to "
                                         "GPU engines only (use 'none')")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["batch"] = list(self.batch)
        d["input_shape"] = None if self.input_shape is None else list(self.input_shape)
        return d


# --------------------------------------------------------------------------------------------- versions

def parse_trt_version(version: str) -> tuple[int, int, int]:
    """``"10.3.0.26"`` -> ``(10, 3, 0)``; raises TensorRTBuildError on anything else."""
    m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", str(version))
    if not m:
        raise TensorRTBuildError(f"TensorRT version {version!r} not understood; expected e.g. '10.3.0'")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


# ------------------------------------------------------------------------------------- ONNX inspection

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        name = onnx.TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"onnx-type-{elem_type}"
    return {"float": "float32", "double": "float64"}.get(name, name)


def _is_float(dtype_name: str) -> bool:
    return dtype_name.startswith(("float", "bfloat"))


def _iter_graphs(graph: Any) -> Iterator[Any]:
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _iter_graphs(g)


def _node_label(node: Any, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def _tensor_values(tensor: Any, base_dir: Path) -> Any:
    import onnx
    from onnx import numpy_helper

    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        from onnx.external_data_helper import load_external_data_for_tensor

        tensor = onnx.TensorProto.FromString(tensor.SerializeToString())
        load_external_data_for_tensor(tensor, str(base_dir))
    return numpy_helper.to_array(tensor)


def inspect_onnx(onnx_path: str | os.PathLike) -> dict[str, Any]:
    """Summarise what a TensorRT build depends on: I/O, float types, Q/DQ, attention and contrib ops.

    Weights are not loaded (external data stays on disk); only Q/DQ zero points are read.
    """
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise TensorRTBuildError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types
        raise TensorRTBuildError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    graph = model.graph

    init_names = {t.name for t in graph.initializer}
    init_by_name = {t.name: t for t in graph.initializer}
    external = sorted({kv.value for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                       for kv in t.external_data if kv.key == "location"})

    float_inits: Counter[str] = Counter()
    float_init_examples: dict[str, str] = {}
    for t in graph.initializer:
        name = _dtype_name(t.data_type)
        if _is_float(name):
            float_inits[name] += 1
            float_init_examples.setdefault(name, t.name)

    # every float type mentioned anywhere: I/O, value_info, Cast targets, Constant values
    typed: dict[str, str] = {}  # float dtype -> an example "where"

    def note(dtype_name: str, where: str) -> None:
        if _is_float(dtype_name):
            typed.setdefault(dtype_name, where)

    for dt, example in float_init_examples.items():
        note(dt, f"initializer '{example}'")
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.HasField("tensor_type"):
            note(_dtype_name(vi.type.tensor_type.elem_type), f"tensor '{vi.name}'")

    ops: Counter[str] = Counter()
    qdq: list[str] = []
    attention: list[str] = []
    custom_attention: list[str] = []
    contrib: list[str] = []
    layernorm: list[str] = []
    zero_point_problems: list[str] = []
    constants: dict[str, Any] = {}
    idx = 0
    for g in _iter_graphs(graph):
        for node in g.node:
            idx += 1
            label = _node_label(node, idx)
            ops[node.op_type] += 1
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        for out in node.output:
                            constants[out] = attr.t
                        note(_dtype_name(attr.t.data_type), f"Constant node '{label}'")
            if node.op_type == "Cast":
                for attr in node.attribute:
                    if attr.name == "to":
                        note(_dtype_name(attr.i), f"Cast node '{label}'")
            if node.domain == "com.microsoft":
                contrib.append(f"'{label}' ({node.op_type})")
            if node.op_type in _QDQ_OPS:
                qdq.append(label)
                if node.domain not in _ONNX_DOMAINS:
                    zero_point_problems.append(
                        f"node '{label}' is {node.domain}.{node.op_type}; TensorRT reads only the ONNX-domain "
                        f"{node.op_type}")
                if len(node.input) > 2 and node.input[2]:
                    zp_name = node.input[2]
                    zp = init_by_name.get(zp_name, constants.get(zp_name))
                    if zp is not None:
                        dt = _dtype_name(zp.data_type)
                        if dt == "uint8":
                            zero_point_problems.append(
                                f"node '{label}': zero point '{zp_name}' is uint8 (asymmetric); expected int8 "
                                "with value 0 (TensorRT supports symmetric signed quantization only)")
                        else:
                            values = _tensor_values(zp, path.parent)
                            if values.size and bool((values != 0).any()):
                                zero_point_problems.append(
                                    f"node '{label}': zero point '{zp_name}' ({dt}) has non-zero values "
                                    f"(max |zp| = {int(abs(values.astype('int64')).max())}); expected all 0 "
                                    "(TensorRT supports symmetric quantization only)")
            if node.op_type == "Attention":
                if node.domain in _ONNX_DOMAINS:
                    attention.append(label)
                elif node.domain != "com.microsoft":
                    custom_attention.append(f"'{label}' (domain {node.domain!r})")
            if node.op_type == "LayerNormalization" and len(node.input) > 1:
                scale = init_by_name.get(node.input[1])
                if scale is not None and _dtype_name(scale.data_type) in _LOW_FLOAT_TYPES:
                    layernorm.append(label)

    inputs = []
    for vi in graph.input:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        dims: list[int | str] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or "?")
        inputs.append({"name": vi.name, "dtype": _dtype_name(tt.elem_type), "shape": dims})
    outputs = []
    for vi in graph.output:
        tt = vi.type.tensor_type
        dims = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                for d in tt.shape.dim]
        outputs.append({"name": vi.name, "dtype": _dtype_name(tt.elem_type), "shape": dims})

    has_low = {dt: where for dt, where in typed.items() if dt in _LOW_FLOAT_TYPES}
    if qdq:
        detected = "int8"
    elif "float16" in has_low:
        detected = "fp16"
    elif has_low:
        detected = "bf16"
    else:
        detected = "fp32"
    return {
        "path": str(path),
        "sha256": _sha256(path),
        "bytes": path.stat().st_size,
        "external_data": external,
        "opsets": {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        "inputs": inputs,
        "outputs": outputs,
        "float_initializers": dict(float_inits),
        "float_initializer_examples": float_init_examples,
        "float_types": typed,
        "precision_detected": detected,
        "qdq_nodes": qdq,
        "qdq_problems": zero_point_problems,
        "attention_nodes": attention,
        "custom_attention_nodes": custom_attention,
        "contrib_nodes": contrib,
        "fp16_layernorm_nodes": layernorm,
        "op_counts": dict(ops),
    }


# ------------------------------------------------------------------------------------------- the plan

def _check_precision(info: dict[str, Any], precision: str, strongly_typed: bool) -> None:
    path = info["path"]
    qdq = info["qdq_nodes"]
    low = {dt: where for dt, where in info["float_types"].items() if dt in _LOW_FLOAT_TYPES}
    inits = info["float_initializers"]
    mode = "strongly typed" if strongly_typed else "weakly typed"
    if info["qdq_problems"]:
        raise TensorRTBuildError(f"{path}: Q/DQ nodes TensorRT cannot build:\n  - "
                                 + "\n  - ".join(info["qdq_problems"][:10]))
    if precision == "fp32":
        if qdq:
            raise TensorRTBuildError(
                f"{path}: precision 'fp32' requested, but the ONNX has {len(qdq)} QuantizeLinear/DequantizeLinear "
                f"nodes (e.g. '{qdq[0]}'); expected none. Build it with precision='int8', or use the FP32 ONNX.")
        if low:
            dt, where = next(iter(low.items()))
            raise TensorRTBuildError(
                f"{path}: precision 'fp32' requested, but {where} is {dt}; expected float32 throughout "
                f"(float initializers: {inits}). Build it with precision='fp16', or use the FP32 ONNX.")
    elif precision == "fp16":
        if qdq:
            raise TensorRTBuildError(
                f"{path}: precision 'fp16' requested, but the ONNX has {len(qdq)} QuantizeLinear/DequantizeLinear "
                f"nodes (e.g. '{qdq[0]}'); that is an INT8 model: build it with precision='int8'.")
        if strongly_typed and "float16" not in low:
            example = info["float_initializer_examples"].get("float32", "?")
            raise TensorRTBuildError(
                f"{path}: precision 'fp16' requested with a strongly typed build, so the ONNX itself must be FP16: "
                f"expected float16 initializers/tensors, found only {sorted(info['float_types']) or ['none']} "
                f"(float initializers: {inits}, e.g. '{example}'). Export the FP16 ONNX, or on TensorRT 10 build "
                "the FP32 ONNX with strongly_typed=False.")
        if not strongly_typed and low:
            dt, where = next(iter(low.items()))
            raise TensorRTBuildError(
                f"{path}: precision 'fp16' requested with a weakly typed build (BuilderFlag.FP16), which expects "
                f"the FP32 ONNX, but {where} is {dt}. Build an FP16 ONNX strongly typed (strongly_typed=True), "
                "or pass the FP32 ONNX.")
    elif precision == "int8":
        if not qdq:
            raise TensorRTBuildError(
                f"{path}: precision 'int8' requested ({mode}), but the ONNX has no QuantizeLinear/DequantizeLinear "
                f"nodes; expected a Q/DQ (explicitly quantized) ONNX from the calibration step. TensorRT INT8 "
                f"calibrators are not used (removed in TensorRT 11). Float types found: {sorted(info['float_types'])}.")


def _resolve_profile(info: dict[str, Any], options: TensorRTBuildOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    path = info["path"]
    inputs = info["inputs"]
    if not inputs:
        raise TensorRTBuildError(f"{path}: the ONNX graph has no inputs")
    names = [i["name"] for i in inputs]
    if len(inputs) > 1:
        raise TensorRTBuildError(f"{path}: the ONNX has several inputs {names}; this builder profiles a single "
                                 "video input")
    inp = inputs[0]
    if options.input_name is not None and options.input_name != inp["name"]:
        raise TensorRTBuildError(f"{path}: input '{options.input_name}' not found; the ONNX input is '{inp['name']}'")
    onnx_shape = inp["shape"]
    name = inp["name"]
    if len(onnx_shape) < 2:
        raise TensorRTBuildError(f"{path}: input '{name}' has shape {onnx_shape}; expected (batch, frames, 3, H, W)")
    onnx_clip = onnx_shape[1:]
    if options.input_shape is not None:
        want = tuple(options.input_shape)
        if len(want) != len(onnx_clip):
            raise TensorRTBuildError(f"{path}: input '{name}' has shape {onnx_shape} (rank {len(onnx_shape)}); "
                                     f"expected rank {len(want) + 1} for input_shape {want} plus the batch")
        for axis, (w, o) in enumerate(zip(want, onnx_clip), start=1):
            if isinstance(o, int) and o != w:
                raise TensorRTBuildError(f"{path}: input '{name}' dim {axis} is {o} in the ONNX (shape "
                                         f"{onnx_shape}); expected {w} from input_shape {want}")
        clip = want
    else:
        dynamic = [axis for axis, o in enumerate(onnx_clip, start=1) if not isinstance(o, int)]
        if dynamic:
            raise TensorRTBuildError(f"{path}: input '{name}' has dynamic dims {dynamic} besides the batch (shape "
                                     f"{onnx_shape}); set input_shape, e.g. (frames, 3, H, W)")
        clip = tuple(int(o) for o in onnx_clip)
    bmin, bopt, bmax = (int(v) for v in options.batch)
    b0 = onnx_shape[0]
    if isinstance(b0, int) and not bmin == bopt == bmax == b0:
        raise TensorRTBuildError(f"{path}: input '{name}' has a fixed batch of {b0} (shape {onnx_shape}); expected a "
                                 f"dynamic batch dim for the profile batch {tuple(options.batch)}. Re-export with a "
                                 f"dynamic batch, or set batch=({b0}, {b0}, {b0}).")
    profile = {
        "input": name,
        "min": (bmin, *clip),
        "opt": (bopt, *clip),
        "max": (bmax, *clip),
    }
    return inp, profile


def _installed_trt_version() -> str:
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001 - missing libs raise OSError/ImportError
        raise TensorRTBuildError(f"tensorrt is not importable here ({type(e).__name__}: {e}); pass trt_version "
                                 "(e.g. '10.3.0') to plan a build for another machine") from e
    return str(trt.__version__)


def plan_build(onnx_path: str | os.PathLike, options: TensorRTBuildOptions | None = None,
               trt_version: str | None = None) -> dict[str, Any]:
    """The exact build TensorRT ``trt_version`` will be asked for, without importing TensorRT.

    ``trt_version`` None means the installed TensorRT's. Raises TensorRTBuildError for any combination
    that cannot build (precision vs ONNX, Attention before 10.14, DLA rules, shapes).
    """
    options = options or TensorRTBuildOptions()
    options.validate()
    version = trt_version if trt_version is not None else _installed_trt_version()
    major, minor, patch = parse_trt_version(version)
    vtuple = (major, minor)
    if vtuple < MIN_TRT:
        raise TensorRTBuildError(f"TensorRT {version} is too old; this builder needs TensorRT >= "
                                 f"{MIN_TRT[0]}.{MIN_TRT[1]} (named-tensor API)")
    info = inspect_onnx(onnx_path)
    path = info["path"]
    warnings: list[str] = []

    # typing mode: TensorRT 11 has no other
    strongly_typed = bool(options.strongly_typed)
    if major >= 11 and not strongly_typed:
        warnings.append(f"TensorRT {version} always builds strongly typed networks; strongly_typed=False ignored "
                        "(precision comes from the ONNX)")
        strongly_typed = True
    if strongly_typed and major < 9:
        raise TensorRTBuildError(f"TensorRT {version} has no strongly typed networks (STRONGLY_TYPED arrived in 9); "
                                 "pass strongly_typed=False")

    if info["contrib_nodes"]:
        raise TensorRTBuildError(
            f"{path}: ONNX Runtime contrib operators (domain com.microsoft), which TensorRT cannot parse: "
            f"{', '.join(info['contrib_nodes'][:5])}. Export without ONNX Runtime fusions for TensorRT.")
    if info["attention_nodes"]:
        if vtuple < ATTENTION_MIN_TRT:
            raise TensorRTBuildError(
                f"{path}: node '{info['attention_nodes'][0]}' ({len(info['attention_nodes'])} in all) is the ONNX "
                f"Attention operator (opset 23), which TensorRT {version} cannot parse: its ONNX parser reads "
                f"Attention since {ATTENTION_MIN_TRT[0]}.{ATTENTION_MIN_TRT[1]}. Re-export the ONNX with "
                "ATTENTION=decomposed (MatMul/Softmax/MatMul).")
        if options.precision == "fp32":
            warnings.append(f"{path}: {len(info['attention_nodes'])} ONNX Attention nodes in an FP32 build: TensorRT "
                            "has no FP32 fused attention kernel; export the FP32 ONNX with ATTENTION=decomposed")
    if info["custom_attention_nodes"] and vtuple >= ATTENTION_MIN_TRT:
        warnings.append(f"{path}: nodes named Attention in a custom domain ({info['custom_attention_nodes'][0]}) "
                        "may be taken by TensorRT's built-in Attention importer instead of their local function")

    _check_precision(info, options.precision, strongly_typed)
    inp, profile = _resolve_profile(info, options)

    # Builder.html (NetworkDefinitionCreationFlag): EXPLICIT_BATCH is ignored from 10.0 (networks are always
    # explicit batch); STRONGLY_TYPED forbids layer precisions/output types, and the 10.x -> 11.x migration
    # guide removes the FP16/INT8/OBEY_PRECISION_CONSTRAINTS builder flags (strong typing always on, the
    # flag kept only for API compatibility). So the builder-flag path below exists only for weakly typed 10.x.
    creation_flags: list[str] = []
    if major < 10:
        creation_flags.append("EXPLICIT_BATCH")
    if strongly_typed and major < 11:
        creation_flags.append("STRONGLY_TYPED")

    builder_flags: list[str] = []
    clear_flags: list[str] = []
    fp32_layer_types: list[str] = []
    if not strongly_typed:
        if options.precision == "fp16":
            builder_flags += ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
            fp32_layer_types = list(FP32_PINNED_LAYER_TYPES)
            ops = info["op_counts"]
            if not ops.get("LayerNormalization") and ops.get("ReduceMean"):
                warnings.append(f"{path}: no LayerNormalization nodes but ReduceMean ones: LayerNorm looks "
                                "decomposed, and only NORMALIZATION layers are pinned to FP32; export at opset >= 17")
        elif options.precision == "int8":
            builder_flags.append("INT8")
    if info["fp16_layernorm_nodes"] and options.precision in ("fp16", "int8"):
        warnings.append(f"{path}: {len(info['fp16_layernorm_nodes'])} LayerNormalization nodes have float16 scale "
                        f"(e.g. '{info['fp16_layernorm_nodes'][0]}'); TensorRT runs them in FP16 in a strongly typed "
                        "build, a known overflow source: keep LayerNorm and Softmax FP32 in the ONNX")
    if options.version_compatible:
        builder_flags.append("VERSION_COMPATIBLE")
    if options.dla_core is not None:
        builder_flags.append("GPU_FALLBACK")
        if strongly_typed and major < 11:
            raise TensorRTBuildError(
                f"dla_core={options.dla_core} with a strongly typed build on TensorRT {version}: DLA on TensorRT 10 "
                "needs the FP16/INT8 builder flags, which strongly typed networks forbid. Pass strongly_typed=False "
                "(FP32 ONNX for fp16, Q/DQ ONNX for int8).")
        if vtuple > (10, 7) and major < 11:
            warnings.append(f"NVIDIA documents TensorRT 10.7 as the last 10.x release with DLA; TensorRT {version} "
                            "may not build for DLA")
        if major >= 11:
            warnings.append(f"DLA support in TensorRT 11 depends on the release and platform (none in 11.0-11.3; "
                            f"Jetson AGX Orin from 11.4.1 with JetPack 7.2.2); check TensorRT {version}'s notes")
    if not options.tf32:
        clear_flags.append("TF32")
    if options.hardware_compatibility != "none" and vtuple < (8, 6):
        raise TensorRTBuildError(f"hardware_compatibility needs TensorRT >= 8.6; got {version}")

    config = {
        "workspace_bytes": int(options.workspace_mib) << 20,
        "timing_cache": options.timing_cache,
        "default_device_type": "DLA" if options.dla_core is not None else "GPU",
        "dla_core": options.dla_core,
        "hardware_compatibility_level": HARDWARE_COMPATIBILITY[options.hardware_compatibility],
        "builder_optimization_level": options.builder_optimization_level,
        "progress_monitor": major >= 10,
    }
    return {
        "onnx": {k: info[k] for k in ("path", "sha256", "bytes", "external_data", "opsets", "precision_detected",
                                      "float_initializers")}
                | {"qdq_nodes": len(info["qdq_nodes"]), "attention_nodes": len(info["attention_nodes"])},
        "tensorrt": {"version": str(version), "major": major, "minor": minor, "patch": patch},
        "precision": options.precision,
        "strongly_typed": strongly_typed,
        "creation_flags": creation_flags,
        "builder_flags": builder_flags,
        "clear_builder_flags": clear_flags,
        "fp32_layer_types": fp32_layer_types,
        "input": {"name": inp["name"], "dtype": inp["dtype"], "onnx_shape": inp["shape"]},
        "outputs": info["outputs"],
        "profile": profile,
        "config": config,
        "options": options.to_dict(),
        "warnings": warnings,
    }


# ------------------------------------------------------------------------------------ TensorRT side

def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001 - the stub/bindings packages fail with OSError too
        raise TensorRTBuildError(f"TensorRT is not available here ({type(e).__name__}: {e}); {INSTALL_HINT}") from e
    return trt


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
    return cudart


def tensorrt_available() -> tuple[bool, str]:
    """(True, description) when ``tensorrt`` imports and cuda-python sees a CUDA GPU; else (False, why)."""
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001
        return False, f"tensorrt not importable ({type(e).__name__}: {e})"
    try:
        cudart = _import_cudart()
    except Exception as e:  # noqa: BLE001
        return False, f"TensorRT {trt.__version__} imports, but cuda-python does not ({type(e).__name__}: {e})"
    try:
        res = cudart.cudaGetDeviceCount()
    except Exception as e:  # noqa: BLE001
        return False, f"cudaGetDeviceCount raised {type(e).__name__}: {e}"
    err, count = res[0], res[1]
    if int(err) != 0:
        return False, f"no CUDA GPU visible (cudaGetDeviceCount: {getattr(err, 'name', err)})"
    if not count:
        return False, "no CUDA GPU visible (cudaGetDeviceCount returned 0)"
    return True, f"TensorRT {trt.__version__}, {count} CUDA device(s)"


def _write_bytes_atomic(path: Path, data: Any) -> None:
    tmp = temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _make_logger(trt: Any, verbose: bool) -> Any:
    """An ILogger that prints WARNING+ (VERBOSE+ with verbose) and keeps the errors for our messages."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.threshold = int(trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING)

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            if int(severity) <= self.threshold:
                print(f"[TensorRT {getattr(severity, 'name', severity)}] {msg}", file=sys.stderr)

    return _Logger()


def _make_progress_monitor(trt: Any) -> Any | None:
    """An IProgressMonitor driving one tqdm bar per optimiser phase (TensorRT >= 10), or None."""
    if not hasattr(trt, "IProgressMonitor"):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None

    class _TqdmMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()  # TensorRT may call from several threads
            self._bars: dict[str, Any] = {}
            self._depth: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            try:
                with self._lock:
                    depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
                    self._depth[phase_name] = depth
                    self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, position=depth,
                                                  leave=depth == 0, dynamic_ncols=True)
            except Exception:  # noqa: BLE001 - never let a progress bar break a build
                pass

        def step_complete(self, phase_name: str, step: int) -> bool:
            try:
                with self._lock:
                    bar = self._bars.get(phase_name)
                    if bar is not None and step + 1 > bar.n:
                        bar.update(step + 1 - bar.n)
            except Exception:  # noqa: BLE001
                pass
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            try:
                with self._lock:
                    bar = self._bars.pop(phase_name, None)
                    self._depth.pop(phase_name, None)
                    if bar is not None:
                        bar.close()
            except Exception:  # noqa: BLE001
                pass

        def close_all(self) -> None:
            with self._lock:
                for bar in self._bars.values():
                    bar.close()
                self._bars.clear()

    return _TqdmMonitor()


def _enum(trt: Any, enum_name: str, member: str, version: str, what: str) -> Any:
    enum = getattr(trt, enum_name, None)
    if enum is None or not hasattr(enum, member):
        raise TensorRTBuildError(f"TensorRT {version} has no {enum_name}.{member} ({what})")
    return getattr(enum, member)


def _parser_errors(parser: Any) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        parts = []
        node_name = err.node_name() if hasattr(err, "node_name") else ""
        node_op = err.node_operator() if hasattr(err, "node_operator") else ""
        if node_name or node_op:
            parts.append(f"node '{node_name}' ({node_op})")
        elif hasattr(err, "node") and err.node() >= 0:
            parts.append(f"node #{err.node()}")
        parts.append(err.desc() if hasattr(err, "desc") else str(err))
        out.append(": ".join(parts))
    return out


def build_engine(onnx_path: str | os.PathLike, plan_path: str | os.PathLike,
                 options: TensorRTBuildOptions | None = None, progress: bool = True) -> dict[str, Any]:
    """Build ``onnx_path`` into the TensorRT plan ``plan_path`` (written atomically); returns build info.

    Raises TensorRTBuildError when TensorRT is missing, the plan is refused (see :func:`plan_build`),
    the parser fails (its errors listed) or the builder returns no engine (TensorRT's errors listed).
    """
    options = options or TensorRTBuildOptions()
    trt = _import_tensorrt()
    version = str(trt.__version__)
    plan = plan_build(onnx_path, options, trt_version=version)
    onnx_file = Path(onnx_path)
    out = Path(plan_path)
    logger = _make_logger(trt, options.verbose)

    def fail(msg: str) -> TensorRTBuildError:
        errs = logger.errors[-10:]
        return TensorRTBuildError(msg + ("\nTensorRT errors:\n  - " + "\n  - ".join(errs) if errs else ""))

    builder = trt.Builder(logger)
    flags = 0
    for name in plan["creation_flags"]:
        flags |= 1 << int(_enum(trt, "NetworkDefinitionCreationFlag", name, version, "network creation flag"))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):  # from the file, so external data is found beside it
        errors = _parser_errors(parser)
        raise fail(f"{onnx_file}: TensorRT {version}'s ONNX parser failed ({len(errors)} errors):\n  - "
                   + "\n  - ".join(errors[:20]))

    net_inputs = [network.get_input(i) for i in range(network.num_inputs)]
    input_name = plan["profile"]["input"]
    if input_name not in [t.name for t in net_inputs]:
        raise fail(f"{onnx_file}: the parsed network's inputs are {[t.name for t in net_inputs]}; expected "
                   f"'{input_name}'")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan["config"]["workspace_bytes"])
    for name in plan["builder_flags"]:
        config.set_flag(_enum(trt, "BuilderFlag", name, version, f"needed for precision {plan['precision']!r}"))
    for name in plan["clear_builder_flags"]:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))

    pinned = 0
    if plan["fp32_layer_types"]:
        pin_types = [_enum(trt, "LayerType", t, version, "layer type pinned to FP32") for t in plan["fp32_layer_types"]]
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type not in pin_types:
                continue
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            if hasattr(layer, "compute_precision"):  # INormalizationLayer's accumulation type
                layer.compute_precision = trt.float32
            pinned += 1

    profile = builder.create_optimization_profile()
    prof = plan["profile"]
    profile.set_shape(input_name, prof["min"], prof["opt"], prof["max"])
    if config.add_optimization_profile(profile) < 0:
        raise fail(f"{onnx_file}: TensorRT rejected the optimisation profile {prof}")

    if options.dla_core is not None:
        cores = getattr(builder, "num_DLA_cores", None)  # Builder.num_DLA_cores: DLA engines on this device
        if cores is not None and not 0 <= options.dla_core < int(cores):
            raise fail(f"dla_core={options.dla_core}, but this device has {int(cores)} DLA core(s); expected "
                       f"0..{int(cores) - 1} (none: build for the GPU with dla_core=None)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(options.dla_core)
    level = plan["config"]["hardware_compatibility_level"]
    if level != "NONE":
        config.hardware_compatibility_level = _enum(trt, "HardwareCompatibilityLevel", level, version,
                                                    f"hardware_compatibility={options.hardware_compatibility!r}")
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = int(options.builder_optimization_level)

    cache_info: dict[str, Any] = {"path": options.timing_cache, "loaded": False, "saved": False}
    if options.timing_cache:
        cache_path = Path(options.timing_cache)
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        # IBuilderConfig.create_timing_cache(bytes) gives no cache for an unreadable blob, and
        # set_timing_cache(cache, ignore_mismatch=False) returns False for another TensorRT/GPU's cache.
        cache = config.create_timing_cache(blob)
        if cache is None or not config.set_timing_cache(cache, False):
            plan["warnings"].append(f"{cache_path}: timing cache unreadable or made by another TensorRT/GPU; "
                                    "starting empty")
            cache = config.create_timing_cache(b"")
            if cache is None or not config.set_timing_cache(cache, False):
                raise fail(f"{onnx_file}: TensorRT {version} could not create an empty timing cache")
        else:
            cache_info["loaded"] = bool(blob)

    # ProgressMonitor.html: the monitor must outlive the config/builder using it (both are locals here).
    monitor = _make_progress_monitor(trt) if progress and hasattr(config, "progress_monitor") else None
    if monitor is not None:
        config.progress_monitor = monitor

    t0 = time.perf_counter()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if monitor is not None:
            monitor.close_all()
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise fail(f"{onnx_file}: TensorRT {version} failed to build the engine (precision {plan['precision']}, "
                   f"flags {plan['builder_flags']}, profile {prof})")
    data = memoryview(serialized)
    _write_bytes_atomic(out, data)
    plan_sha = hashlib.sha256(data).hexdigest()

    if options.timing_cache:
        timing = config.get_timing_cache()
        if timing is not None:
            _write_bytes_atomic(Path(options.timing_cache), memoryview(timing.serialize()))
            cache_info["saved"] = True

    return {
        "trt_version": version,
        "seconds": round(seconds, 3),
        "plan_path": str(out),
        "plan_bytes": out.stat().st_size,
        "plan_sha256": plan_sha,
        "onnx_sha256": plan["onnx"]["sha256"],
        "precision": plan["precision"],
        "strongly_typed": plan["strongly_typed"],
        "creation_flags": plan["creation_flags"],
        "builder_flags": plan["builder_flags"],
        "fp32_pinned_layers": pinned,
        "profile": {k: list(v) if isinstance(v, tuple) else v for k, v in prof.items()},
        "input": plan["input"],
        "outputs": plan["outputs"],
        "version_compatible": bool(options.version_compatible),
        "hardware_compatibility": options.hardware_compatibility,
        "dla_core": options.dla_core,
        "timing_cache": cache_info,
        "warnings": plan["warnings"],
        "build_plan": plan,
    }


__all__ = [
    "TensorRTBuildError",
    "TensorRTBuildOptions",
    "build_engine",
    "inspect_onnx",
    "parse_trt_version",
    "plan_build",
    "tensorrt_available",
]
