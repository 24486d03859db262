"""Instrumented second sessions of a bundle's engine: block outputs and per-layer profiles.

``runtime.Engine`` runs the engine as built; these open the same verified engine bytes a second time with the
backend's own settings plus what the question needs:

* block outputs (the first diverging block): ONNX Runtime gets the ``block_{i}_output`` tensors appended to the
  model's graph outputs (a protobuf field appended to the serialized model, so no ``onnx`` package is needed);
  OpenVINO gets them through ``Model.add_outputs``. Marking a tensor as an output can keep a backend from fusing
  across it, so these runs localise a divergence; the logits of record are the Engine's. TensorRT plans mark only
  their outputs: not available there.
* per-layer profiles: ONNX Runtime's profiler (``SessionOptions.enable_profiling``: per node kernel times) and
  OpenVINO's performance counters (``PERF_COUNT``: per executed node real time). TensorRT: not here (``trtexec
  --dumpProfile`` on the plan gives it).
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .manifest import BundleFiles
from .reference import ReferenceSet
from .backends.onnxruntime_session import ORT_LEVEL_NAMES as _LEVELS

__all__ = ["block_report", "layer_profile", "append_outputs"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def append_outputs(model: bytes, names: list[str]) -> bytes:
    """A serialized ONNX ``ModelProto`` with ``names`` added to its graph outputs.

    Protobuf merges a repeated embedded message field that appears twice, and appends to repeated fields, so
    ``ModelProto.graph`` (field 7) carrying only ``GraphProto.output`` (field 12) entries of ``ValueInfoProto``
    (name: field 1) adds outputs without parsing the model; ONNX Runtime infers their types."""
    graph = b"".join(_field(12, _field(1, n.encode())) for n in names)
    return model + _field(7, graph)


def _engine_bytes(engine: Any) -> bytes:
    m = engine.manifest
    entry = m["files"][m["engine_file"]]
    with BundleFiles(engine.bundle_dir) as files:
        return files.read(m["engine_file"], entry["size"], entry["sha256"])


def _ort_session(engine: Any, outputs: list[str] | None = None, profile_dir: str | None = None) -> Any:
    import onnxruntime as ort

    backend = engine.backend
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, _LEVELS[backend.settings["graph_optimization_level"]]
    )
    so.intra_op_num_threads = int(backend.settings["intra_op_num_threads"])
    so.log_severity_level = 3
    for k, v in backend.settings.get("int8_config", {}).items():  # the backend's exact INT8 kernels
        so.add_session_config_entry(k, v)
    if profile_dir:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(profile_dir) / "ort")
    data = _engine_bytes(engine)
    if outputs:
        data = append_outputs(data, outputs)
    return ort.InferenceSession(data, so, providers=backend.session.get_providers())


def _ov_compiled(engine: Any, outputs: list[str] | None = None, perf: bool = False) -> Any:
    import openvino as ov

    s = engine.backend.settings
    core = ov.Core()
    model = core.read_model(_engine_bytes(engine))
    if outputs:
        model.add_outputs(outputs)
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": s["inference_precision"],
        "PERFORMANCE_HINT": s["performance_hint"],
        "INFERENCE_NUM_THREADS": s["num_threads"],
    }
    if perf:
        config["PERF_COUNT"] = True
    return core.compile_model(model, s["ov_device"], config)


def _not_available(engine: Any, what: str) -> str | None:
    m = engine.manifest
    backend = m["backend"]
    if backend not in ("onnxruntime", "openvino"):
        return f"{backend}: {what} not available (a TensorRT plan exposes only its outputs)"
    if m["engine_file"] + ".data" in m["files"]:
        return f"{m['engine_file']}: an ONNX model with external data; {what} not available"
    return None


def _one_clip(engine: Any, clip: np.ndarray) -> np.ndarray:
    """``clip`` as a batch the engine accepts (repeated up to its minimum batch)."""
    return np.ascontiguousarray(np.repeat(clip[None], engine.batch_range[0], axis=0))


def _block_runner(engine: Any, names: list[str]) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    x_name = engine.input_name
    if engine.manifest["backend"] == "onnxruntime":
        sess = _ort_session(engine, names)
        return lambda x: dict(zip(names, sess.run(names, {x_name: x})))
    compiled = _ov_compiled(engine, names)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        request.infer({0: x})
        return {n: np.array(request.get_tensor(compiled.output(n)).data, dtype=np.float32) for n in names}

    return run


def block_report(engine: Any, ref: ReferenceSet) -> dict[str, Any]:
    """Per block: the relative L2 error of the stored sample of its output, and its norm against the stored norm;
    the first block past the reference's threshold. ``{"available": False, "note": ...}`` where the backend cannot
    expose block outputs or the reference holds no block statistics."""
    if ref.block_samples is None or ref.block_index is None or ref.block_norm is None:
        return {"available": False, "note": "the reference set holds no block statistics"}
    why = _not_available(engine, "block outputs")
    if why:
        return {"available": False, "note": why}
    names, index = ref.block_names, ref.block_index
    try:
        run = _block_runner(engine, names)
    except Exception as e:  # noqa: BLE001 - a graph without these names, or a backend refusing them
        return {"available": False, "note": f"block outputs {names[0]}..{names[-1]}: {type(e).__name__}: {e}"[:400]}
    rel = np.zeros((len(ref.clips), len(names)))
    ratio = np.zeros_like(rel)
    x = ref.inputs(engine.input_dtype)
    for c in range(len(x)):
        outs = run(_one_clip(engine, x[c]))
        for j, name in enumerate(names):
            flat = np.asarray(outs[name], np.float32).reshape(engine.batch_range[0], -1)[0].astype(np.float64)
            if flat.size <= index.max():
                return {
                    "available": False,
                    "note": f"{name}: {flat.size} values per clip here, the reference "
                    f"sampled positions up to {int(index.max())}",
                }
            want = ref.block_samples[c, j].astype(np.float64)
            rel[c, j] = np.linalg.norm(flat[index] - want) / max(np.linalg.norm(want), 1e-30)
            ratio[c, j] = np.linalg.norm(flat) / max(float(ref.block_norm[c, j]), 1e-30)
    rows: list[dict[str, Any]] = [
        {
            "block": j,
            "name": n,
            "rel_l2": float(rel[:, j].max()),
            "norm_ratio_min": float(ratio[:, j].min()),
            "norm_ratio_max": float(ratio[:, j].max()),
        }
        for j, n in enumerate(names)
    ]
    threshold = float(ref.block_threshold or 0.0)
    first = next((r["block"] for r in rows if r["rel_l2"] > threshold), None)
    return {
        "available": True,
        "threshold_rel_l2": threshold,
        "first_diverging_block": first,
        "blocks": rows,
        "note": "relative L2 error of the stored sample of each block's output (worst clip); block outputs "
        "marked as graph outputs in a second session",
    }


def layer_profile(engine: Any, x: np.ndarray, iterations: int = 3, top: int = 10) -> dict[str, Any]:
    """The slowest nodes and the time per operator type, averaged over ``iterations`` runs of batch ``x`` (after
    one warm-up), from the backend's own profiler."""
    why = _not_available(engine, "a per-layer profile")
    if why:
        return {"available": False, "note": why}
    per_node: dict[str, float] = defaultdict(float)
    node_type: dict[str, str] = {}
    if engine.manifest["backend"] == "onnxruntime":
        with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
            sess = _ort_session(engine, profile_dir=tmp)
            sess.run(None, {engine.input_name: x})  # warm-up: counted by the profiler, dropped below
            for _ in range(iterations):
                sess.run(None, {engine.input_name: x})
            events = json.loads(Path(sess.end_profiling()).read_text())
        runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
        start = runs[1]["ts"] if len(runs) > 1 else 0  # skip the warm-up run's nodes
        for e in events:
            if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time") and e.get("ts", 0) >= start:
                name = e["name"][: -len("_kernel_time")]
                per_node[name] += e["dur"] / 1e3
                node_type[name] = e.get("args", {}).get("op_name", "?")
        source = "ONNX Runtime profiler (SessionOptions.enable_profiling)"
    else:
        compiled = _ov_compiled(engine, perf=True)
        request = compiled.create_infer_request()
        request.infer({0: x})
        for _ in range(iterations):
            request.infer({0: x})
            for p in request.profiling_info:
                if str(p.status).endswith("EXECUTED"):
                    per_node[p.node_name] += p.real_time.total_seconds() * 1e3
                    node_type[p.node_name] = f"{p.node_type}/{p.exec_type}"
        source = "OpenVINO performance counters (PERF_COUNT: per executed node real time)"
    by_type: dict[str, float] = defaultdict(float)
    for name, ms in per_node.items():
        by_type[node_type[name]] += ms / iterations
    total = sum(per_node.values()) / iterations
    slow = sorted(per_node.items(), key=lambda kv: -kv[1])[:top]
    return {
        "available": True,
        "source": source,
        "batch": int(len(x)),
        "iterations": iterations,
        "total_node_ms": round(total, 4),
        "top_nodes": [
            {
                "node": n,
                "type": node_type[n],
                "ms": round(ms / iterations, 4),
                "share": round(ms / iterations / total, 4) if total else None,
            }
            for n, ms in slow
        ],
        "by_type": [
            {"type": t, "ms": round(ms, 4), "share": round(ms / total, 4) if total else None}
            for t, ms in sorted(by_type.items(), key=lambda kv: -kv[1])[:top]
        ],
    }
