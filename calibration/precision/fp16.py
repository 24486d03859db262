"""FP16 ONNX with the fragile parts kept FP32, decided from activations measured on calibration clips.

A strongly typed TensorRT build (the only kind in TensorRT 11) runs every op in the type the ONNX
gives it and ignores LayerNorm's ``stash_type``, so the FP16 decisions live in the graph:

* LayerNormalization and Softmax stay FP32 always (:data:`ALWAYS_FP32_OPS`);
* a node stays FP32 when one of its float inputs or outputs reaches ``overflow_threshold`` (default
  half of FP16's 65504) on the calibration clips: FP16 would overflow to inf there;
* a node stays FP32 when its own FP16 error is large: each compute node is evaluated a second time
  on FP16-rounded inputs and weights with its output rounded to FP16 (FP32 accumulation, as
  TensorRT's FP16 kernels do) and kept FP32 when ``max|out16 - out32| / max|out32|`` exceeds
  ``error_threshold``.

Both measurements come from one ONNX Runtime pass per clip over an augmented copy of the FP32 model
(``Abs -> ReduceMax`` per tensor and the FP16 emulation per node, all as extra scalar outputs), and
are cached as JSON by model and calibration set. The conversion itself is
``onnxruntime.transformers.float16.convert_float_to_float16`` with those nodes blocked; graph inputs
and outputs stay float32 by default (casts inserted), and initializers used only by FP32 nodes stay
FP32 (shared ones are duplicated first, so no weight is rounded to FP16 and cast back).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.log import progress
from runtime.files import temp_path_beside, write_text_atomic

__all__ = [
    "ALWAYS_FP32_OPS",
    "FP16_MAX",
    "DEFAULT_OVERFLOW_THRESHOLD",
    "DEFAULT_ERROR_THRESHOLD",
    "FP16Error",
    "measure_activations",
    "decide_fp32_nodes",
    "convert_fp16",
    "fp32_node_types",
]

ALWAYS_FP32_OPS = ("LayerNormalization", "Softmax")
FP16_MAX = 65504.0
DEFAULT_OVERFLOW_THRESHOLD = 0.5 * FP16_MAX
DEFAULT_ERROR_THRESHOLD = 1e-2
#: ops whose FP16 error is measured (data movement ops are exact in FP16 up to overflow, which is checked anyway)
COMPUTE_OPS = (
    "MatMul",
    "Gemm",
    "Conv",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Erf",
    "Exp",
    "Log",
    "Tanh",
    "Sigmoid",
    "Relu",
    "Gelu",
    "ReduceMean",
    "ReduceSum",
    "ReduceL2",
    "Einsum",
)
STATS_VERSION = 1
_FLOAT = 1
_FLOAT16 = 10


class FP16Error(RuntimeError):
    """An FP16 conversion that cannot go on; the message names the file/tensor, expected and actual."""


_log = progress("fp16", __name__)


def _load(path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as e:
        raise FP16Error(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e


def _name_nodes(model) -> None:
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}__{i}"
        seen.add(node.name)


def _float_tensors(model) -> set[str]:
    """Names of float32 tensors (graph inputs, node outputs) per shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in inferred.graph.initializer:
        types[t.name] = t.data_type
    return {n for n, t in types.items() if t == _FLOAT}


def _augment(model, ops: tuple[str, ...]) -> tuple[Any, dict[str, str], dict[str, str]]:
    """A copy of ``model`` with extra outputs: ``max|x|`` of every float tensor, the FP16 error of each compute node.

    Returns the model, {absmax output: tensor}, {error output: node name}.
    """
    import onnx
    from onnx import helper, numpy_helper

    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    g = aug.graph
    floats = _float_tensors(model)
    inits = {t.name: t for t in g.initializer}
    new_nodes, new_inits, outputs = [], [], []
    absmax: dict[str, str] = {}
    errors: dict[str, str] = {}
    k = 0

    def reduce_absmax(tensor: str, out: str) -> None:
        nonlocal k
        k += 1
        new_nodes.append(helper.make_node("Abs", [tensor], [f"__abs{k}"], name=f"__abs{k}"))
        new_nodes.append(helper.make_node("ReduceMax", [f"__abs{k}"], [out], name=f"__rmax{k}", keepdims=0))
        outputs.append(helper.make_tensor_value_info(out, _FLOAT, []))

    names = [i.name for i in g.input if i.name not in inits and i.name in floats]
    names += [o for n in g.node for o in n.output if o and o in floats]
    for t in dict.fromkeys(names):
        out = f"__absmax__{len(absmax)}"
        reduce_absmax(t, out)
        absmax[out] = t

    rounded: dict[str, str] = {}

    def fp16_rounded(tensor: str) -> str:
        """``tensor`` rounded through FP16 (initializers once, at build time)."""
        if tensor in rounded:
            return rounded[tensor]
        name = f"__r16__{len(rounded)}"
        if tensor in inits:
            arr = numpy_helper.to_array(inits[tensor])
            new_inits.append(numpy_helper.from_array(arr.astype(np.float16).astype(np.float32), name))
        else:
            new_nodes.append(helper.make_node("Cast", [tensor], [name + "_h"], to=_FLOAT16, name=name + "_h"))
            new_nodes.append(helper.make_node("Cast", [name + "_h"], [name], to=_FLOAT, name=name))
        rounded[tensor] = name
        return name

    for node in g.node:
        if node.op_type not in ops or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            continue
        out = node.output[0]
        if out not in floats:
            continue
        ins = [fp16_rounded(i) if i and (i in floats) else i for i in node.input]
        dup = onnx.NodeProto()
        dup.CopyFrom(node)
        dup.name = f"__dup16__{node.name}"
        del dup.input[:]
        dup.input.extend(ins)
        del dup.output[:]
        dup.output.append(f"__dup16__{out}")
        new_nodes.append(dup)
        r = fp16_rounded(f"__dup16__{out}")
        k += 1
        new_nodes.append(helper.make_node("Sub", [r, out], [f"__d{k}"], name=f"__d{k}"))
        err_out = f"__err__{len(errors)}"
        reduce_absmax(f"__d{k}", err_out)
        errors[err_out] = node.name
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    g.output.extend(outputs)
    return aug, absmax, errors


def measure_activations(
    fp32_onnx: str | os.PathLike, clips: np.ndarray, progress: bool = True, ops: tuple[str, ...] = COMPUTE_OPS
) -> dict[str, Any]:
    """Per tensor ``max|x|`` and per compute node the relative FP16 error, maxima over ``clips``."""
    import onnxruntime as ort
    from tqdm import tqdm

    path = Path(fp32_onnx)
    model = _load(path)
    _name_nodes(model)
    aug, absmax, errors = _augment(model, ops)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # No graph fusions: they could merge the duplicated nodes with their originals.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with tempfile.TemporaryDirectory(prefix="fp16-measure-") as tmp:
        aug_path = Path(tmp) / "augmented.onnx"
        import onnx

        onnx.save(aug, str(aug_path))
        sess = ort.InferenceSession(str(aug_path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    want = [n for n in names if n in absmax or n in errors]
    inp = sess.get_inputs()[0].name
    amax: dict[str, float] = {}
    err_abs: dict[str, float] = {}
    for i in tqdm(range(len(clips)), desc="measuring activations", unit="clip", disable=not progress, file=sys.stderr):
        values = sess.run(want, {inp: np.ascontiguousarray(clips[i : i + 1], np.float32)})
        for n, v in zip(want, values):
            v = float(v)
            if n in absmax:
                t = absmax[n]
                amax[t] = max(amax.get(t, 0.0), v) if np.isfinite(v) or v == np.inf else amax.get(t, 0.0)
            else:
                node = errors[n]
                err_abs[node] = max(err_abs.get(node, 0.0), v if np.isfinite(v) else np.inf)
    node_out = {n.name: n.output[0] for n in model.graph.node if n.output}
    rel = {}
    for node, e in err_abs.items():
        scale = amax.get(node_out[node], 0.0)
        rel[node] = float(e / scale) if scale > 0 else (0.0 if e == 0 else float("inf"))
    return {"version": STATS_VERSION, "clips": int(len(clips)), "absmax": amax, "fp16_rel_error": rel}


def decide_fp32_nodes(
    fp32_onnx: str | os.PathLike,
    stats: dict[str, Any],
    overflow_threshold: float = DEFAULT_OVERFLOW_THRESHOLD,
    error_threshold: float = DEFAULT_ERROR_THRESHOLD,
) -> list[dict[str, Any]]:
    """The nodes to keep FP32, each with why: ``always`` (op type), ``overflow`` or ``fp16-error``."""
    model = _load(Path(fp32_onnx))
    _name_nodes(model)
    amax = stats["absmax"]
    rel = stats["fp16_rel_error"]
    kept = []
    for node in model.graph.node:
        if node.op_type in ALWAYS_FP32_OPS:
            kept.append({"node": node.name, "op": node.op_type, "reason": "always"})
            continue
        tensors = [t for t in list(node.input) + list(node.output) if t in amax]
        big = max((amax[t] for t in tensors), default=0.0)
        if big >= overflow_threshold:
            t = max(tensors, key=lambda x: amax[x])
            kept.append(
                {
                    "node": node.name,
                    "op": node.op_type,
                    "reason": "overflow",
                    "tensor": t,
                    "max_abs": _json_float(big),
                    "threshold": overflow_threshold,
                }
            )
            continue
        e = rel.get(node.name, 0.0)
        if e > error_threshold:
            kept.append(
                {
                    "node": node.name,
                    "op": node.op_type,
                    "reason": "fp16-error",
                    "rel_error": _json_float(e),
                    "threshold": error_threshold,
                }
            )
    return kept


def _json_float(v: float) -> float | str:
    """``v``, or ``"inf"``/``"nan"`` (strict JSON has no infinities)."""
    return float(v) if np.isfinite(v) else str(v)


def _split_shared_initializers(model, blocked: set[str], block_ops: set[str]) -> int:
    """Give FP32 (blocked) nodes their own copy of initializers they share with FP16 nodes; returns copies made."""
    from onnx import TensorProto

    inits = {t.name: t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    users: dict[str, list[tuple[Any, bool]]] = {}
    for node in model.graph.node:
        is_blocked = node.name in blocked or node.op_type in block_ops
        for i in node.input:
            if i in inits:
                users.setdefault(i, []).append((node, is_blocked))
    copies = 0
    for name, us in users.items():
        if not (any(b for _, b in us) and any(not b for _, b in us)):
            continue
        copy_name = f"{name}__fp32"
        t = TensorProto()
        t.CopyFrom(inits[name])
        t.name = copy_name
        model.graph.initializer.append(t)
        copies += 1
        for node, b in us:
            if b:
                for j, i in enumerate(node.input):
                    if i == name:
                        node.input[j] = copy_name
    return copies


def _remove_cast_roundtrips(model) -> int:
    """Rewire ``x(fp32) -> Cast(fp16) -> Cast(fp32) -> consumer`` to ``x -> consumer``; returns edges rewired.

    ``convert_float_to_float16`` connects two FP32 (blocked) nodes through an FP16 tensor, which would
    overflow exactly the tensors the measurement kept FP32, and round the rest.
    """
    g = model.graph
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in list(g.value_info) + list(g.input) + list(g.output)
        if vi.type.HasField("tensor_type")
    }
    types.update({t.name: t.data_type for t in g.initializer})
    producer = {o: n for n in g.node for o in n.output}
    graph_outputs = {o.name for o in g.output}

    def cast_to(node) -> int | None:
        if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    replace: dict[str, str] = {}
    for node in g.node:
        if cast_to(node) != _FLOAT or node.output[0] in graph_outputs:
            continue
        src = producer.get(node.input[0])
        if src is not None and cast_to(src) == _FLOAT16 and types.get(src.input[0]) == _FLOAT:
            replace[node.output[0]] = src.input[0]
    if not replace:
        return 0
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in replace:
                node.input[i] = replace[name]
    # drop casts nobody reads any more
    while True:
        used = {i for n in g.node for i in n.input} | graph_outputs
        dead = [n for n in g.node if cast_to(n) is not None and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    live = {o for n in g.node for o in n.output} | {i.name for i in g.input}
    vis = [vi for vi in g.value_info if vi.name in live]
    del g.value_info[:]
    g.value_info.extend(vis)
    return len(replace)


def fp32_node_types(path: str | os.PathLike) -> dict[str, list[str]]:
    """{op type: [names of its nodes that compute in float32]} of an (FP16) ONNX, from its input types."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
        if vi.type.HasField("tensor_type")
    }
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    out: dict[str, list[str]] = {}
    for node in inferred.graph.node:
        if node.op_type == "Cast":
            continue
        if node.input and types.get(node.input[0]) == _FLOAT:
            out.setdefault(node.op_type, []).append(node.name)
    return out


class _Clips:
    """The calibration clips, read once on first use (never when the statistics are cached and nothing validates)."""

    def __init__(self, get_clips: Callable[[], np.ndarray] | None) -> None:
        self._get = get_clips
        self._clips: np.ndarray | None = None

    @property
    def read(self) -> bool:
        return self._clips is not None

    def __call__(self) -> np.ndarray:
        if self._clips is None:
            if self._get is None:
                raise FP16Error("no calibration clips given")
            self._clips = np.asarray(self._get(), np.float32)
        return self._clips


def _activation_stats(
    fp32_onnx: Path, stats_cache: str | os.PathLike | Callable[[], Path] | None, clips: _Clips, progress: bool
) -> tuple[dict[str, Any], str]:
    """The measured activation statistics (from ``stats_cache`` when it holds this version) and "hit" or "miss"."""
    cpath = Path(stats_cache() if callable(stats_cache) else stats_cache) if stats_cache else None
    if cpath is not None and cpath.is_file():
        stats = json.loads(cpath.read_text())
        if stats.get("version") == STATS_VERSION:
            _log(f"reusing the activation statistics {cpath}")
            return stats, "hit"
    _log(f"measuring activations and per-node FP16 error of {fp32_onnx.name} on {len(clips())} clips")
    stats = measure_activations(fp32_onnx, clips(), progress)
    if cpath is not None:
        write_text_atomic(cpath, json.dumps(stats))
    return stats, "miss"


def _always_fp32_nodes(fp32_onnx: Path) -> list[dict[str, str]]:
    """Without measurements: the nodes whose op is in :data:`ALWAYS_FP32_OPS`."""
    model0 = _load(fp32_onnx)
    _name_nodes(model0)
    return [
        {"node": n.name, "op": n.op_type, "reason": "always"} for n in model0.graph.node if n.op_type in ALWAYS_FP32_OPS
    ]


def _convert(fp32_onnx: Path, kept: list[dict[str, Any]], keep_io_types: bool) -> tuple[Any, int, int]:
    """The FP16 model with the ``kept`` nodes FP32; also how many initializers were duplicated and edges rewired."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = _load(fp32_onnx)
    _name_nodes(model)
    known = {n.name for n in model.graph.node}
    unknown = [k["node"] for k in kept if k["node"] not in known]
    if unknown:
        raise FP16Error(f"{fp32_onnx}: nodes to keep FP32 not in the graph: {unknown[:5]}")
    blocked = {k["node"] for k in kept}
    block_ops = set(DEFAULT_OP_BLOCK_LIST) | set(ALWAYS_FP32_OPS)
    # Initializers listed in value_info would be cast to FP16 and back for FP32 nodes; drop those entries.
    init_names = {t.name for t in model.graph.initializer}
    vis = [vi for vi in model.graph.value_info if vi.name not in init_names]
    del model.graph.value_info[:]
    model.graph.value_info.extend(vis)
    copies = _split_shared_initializers(model, blocked, block_ops)
    converted = convert_float_to_float16(
        model, keep_io_types=keep_io_types, op_block_list=sorted(block_ops), node_block_list=sorted(blocked)
    )
    rewired = _remove_cast_roundtrips(converted)
    for prop in list(converted.metadata_props):
        if prop.key == "precision":
            converted.metadata_props.remove(prop)
    converted.metadata_props.add(key="precision", value="fp16")
    return converted, copies, rewired


def _save_atomic(model: Any, out: Path) -> None:
    import onnx

    tmp = temp_path_beside(out, out.suffix or ".tmp")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def convert_fp16(
    fp32_onnx: str | os.PathLike,
    out: str | os.PathLike,
    get_clips: Callable[[], np.ndarray] | None,
    stats_cache: str | os.PathLike | Callable[[], Path] | None = None,
    keep_io_types: bool = True,
    overflow_threshold: float = DEFAULT_OVERFLOW_THRESHOLD,
    error_threshold: float = DEFAULT_ERROR_THRESHOLD,
    extra_fp32_nodes: list[str] | None = None,
    validate_clips: int = 4,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the FP16 model of ``fp32_onnx`` to ``out`` (atomically); returns what was kept FP32 and why.

    ``get_clips`` gives the calibration clips (called only when ``stats_cache`` is cold or for
    validation); None skips the measurement (only :data:`ALWAYS_FP32_OPS` and ``extra_fp32_nodes``
    stay FP32). ``stats_cache``: JSON file (or a callable giving it) for the measured activations, reused when present.
    """
    fp32_onnx, out = Path(fp32_onnx), Path(out)
    t0 = time.perf_counter()
    clips = _Clips(get_clips)
    cache_state = None
    if get_clips is not None:
        stats, cache_state = _activation_stats(fp32_onnx, stats_cache, clips, progress)
        kept = decide_fp32_nodes(fp32_onnx, stats, overflow_threshold, error_threshold)
    else:
        kept = _always_fp32_nodes(fp32_onnx)
    for name in extra_fp32_nodes or []:
        kept.append({"node": name, "op": "?", "reason": "asked"})

    converted, copies, rewired = _convert(fp32_onnx, kept, keep_io_types)
    _save_atomic(converted, out)

    by_reason: dict[str, int] = {}
    for k in kept:
        by_reason[k["reason"]] = by_reason.get(k["reason"], 0) + 1
    info: dict[str, Any] = {
        "form": "fp16",
        "keep_io_types": keep_io_types,
        "overflow_threshold": overflow_threshold,
        "error_threshold": error_threshold,
        "stats_cache": cache_state,
        "kept_fp32_counts": by_reason,
        "kept_fp32": [k for k in kept if k["reason"] != "always"],
        "kept_fp32_always": sorted({k["op"] for k in kept if k["reason"] == "always"}),
        "initializers_duplicated": copies,
        "fp32_edges_rewired": rewired,
        "validation": None,
    }
    if validate_clips and get_clips is not None:
        from calibration.graph.onnx_compare import validate_against_fp32

        info["validation"], _ = validate_against_fp32(fp32_onnx, out, clips()[:validate_clips])
    info["seconds"] = round(time.perf_counter() - t0, 2)
    info["clips_read"] = clips.read
    return info
