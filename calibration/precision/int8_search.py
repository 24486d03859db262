"""Searches around :func:`calibration.precision.int8.quantize_int8`: the clipping method, and per-layer sensitivity with
the
most sensitive MatMuls kept in float within a stated budget.

* :func:`search_clipping` builds the INT8 model with each calibration method (``max``, ``percentile``,
  ``entropy``, ``mse``) and keeps the one whose logits agree best with FP32 on held-out clips (static forms only:
  the dynamic form measures its ranges at run time).
* :func:`layer_sensitivity` quantizes one MatMul/Gemm/Conv at a time (every other one left float) and measures
  how far the logits move from FP32 (``1 - mean cosine``); :func:`choose_keep_float` then keeps the worst in
  float, most sensitive first, while they stay within :data:`KEEP_FLOAT_BUDGET` of the quantizable
  multiply-accumulates and :data:`KEEP_FLOAT_MAX_NODES` nodes, and only those that carry a real share of the error.

Everything runs in ONNX Runtime on the CPU, against the FP32 ONNX on the same clips.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from runtime.log import progress
import numpy as np

from calibration.precision.int8 import TRT_OP_TYPES, quantize_int8
from calibration.precision.metrics import compare_logits
from calibration.graph.onnx_compare import session_with_outputs

__all__ = [
    "KEEP_FLOAT_BUDGET",
    "KEEP_FLOAT_MAX_NODES",
    "quantizable_nodes",
    "node_macs",
    "run_logits",
    "layer_sensitivity",
    "choose_keep_float",
    "search_clipping",
    "STATIC_METHODS",
]

#: the most of the quantizable multiply-accumulates that may stay float (the INT8 speed-up must survive it)
KEEP_FLOAT_BUDGET = 0.05
#: and at most this many nodes
KEEP_FLOAT_MAX_NODES = 4
#: a node is kept float only if its own error is at least this share of the worst node's
KEEP_FLOAT_MIN_SHARE = 0.25
STATIC_METHODS = ("max", "percentile", "entropy", "mse")


_log = progress("int8-search", __name__)


def quantizable_nodes(fp32_onnx: str | os.PathLike, target: str, form: str | None = None) -> list[str]:
    """Names of the nodes the INT8 build of ``target``/``form`` quantizes (MatMul/Gemm, plus Conv when static)."""
    import onnx

    model = onnx.load(str(fp32_onnx), load_external_data=False)
    ops = (
        TRT_OP_TYPES
        if target == "tensorrt"
        else (("MatMul", "Gemm") if form in (None, "dynamic") else ("MatMul", "Gemm", "Conv"))
    )
    names = [n.name for n in model.graph.node if n.op_type in ops]
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"{fp32_onnx}: the {ops} nodes need unique, non-empty names to be kept float by name")
    return names


def node_macs(fp32_onnx: str | os.PathLike, clip: np.ndarray | None = None) -> dict[str, int]:
    """Multiply-accumulates per MatMul/Gemm/Conv node for one clip: from the shapes of a real run on ``clip``
    (``(1, T, 3, H, W)``) when given, else from shape inference (unknown dims then count as 1)."""
    import onnx

    model = onnx.load(str(fp32_onnx), load_external_data=False)
    shapes: dict[str, list[int]] = {}
    if clip is not None:
        nodes = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
        names = sorted(
            {t for n in nodes for t in (n.input[0], n.input[1], n.output[0])}
            - {t.name for t in model.graph.initializer}
            - {i.name for i in model.graph.input}
        )
        s = session_with_outputs(model, names)
        res = s.run(names, {s.get_inputs()[0].name: np.ascontiguousarray(clip[:1], np.float32)})
        shapes.update({t: list(v.shape) for t, v in zip(names, res)})
    else:
        model = onnx.shape_inference.infer_shapes(model)
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.name not in shapes and vi.type.HasField("tensor_type"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    macs: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        a, b = shapes.get(n.input[0]), shapes.get(n.input[1])
        out = shapes.get(n.output[0])
        if not a or not b or not out:
            macs[n.name] = 0
            continue
        if n.op_type == "Conv":  # output elements x (in channels / groups) x kernel area
            macs[n.name] = int(np.prod(out) * int(np.prod(b[1:])))
        else:  # output elements x the contracted dimension
            trans_a = next((x.i for x in n.attribute if x.name == "transA"), 0)
            macs[n.name] = int(np.prod(out) * (a[-2] if trans_a else a[-1]))
    return macs


def run_logits(onnx_path: str | os.PathLike, clips: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Logits of ``clips`` (one at a time) in ONNX Runtime CPU."""
    import onnxruntime as ort

    from runtime.backends.onnxruntime_session import cpu_session_options

    so = cpu_session_options(threads)  # exact integer sums on x86 without VNNI, as the backend runs them
    s = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    x = np.ascontiguousarray(clips, np.float32)
    return np.concatenate([s.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))]).astype(np.float32)


def _builder(
    fp32_onnx: Path,
    target: str,
    form: str | None,
    calib_clips: np.ndarray,
    set_sha256: str,
    cache_dir: Path,
    smooth: float | None | str,
    work: Path,
) -> Callable[..., tuple[Path, dict[str, Any]]]:
    def build(method: str, keep_float: list[str] | None, tag: str) -> tuple[Path, dict[str, Any]]:
        out = work / f"{tag}.onnx"
        info = quantize_int8(
            fp32_onnx,
            out,
            target,
            method,
            lambda: calib_clips,
            set_sha256,
            cache_dir,
            form=form,
            validate_clips=0,
            progress=False,
            smooth=smooth,
            keep_float=keep_float,
        )
        return out, info

    return build


def layer_sensitivity(
    fp32_onnx: str | os.PathLike,
    target: str,
    calib_clips: np.ndarray,
    eval_clips: np.ndarray,
    set_sha256: str,
    cache_dir: str | os.PathLike,
    form: str | None = None,
    method: str = "max",
    smooth: float | None | str = "default",
    reference: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per quantizable node: the logit error vs FP32 when only that node is INT8 (everything else float).

    Returns ``{"nodes": [{"node", "op", "macs", "mac_share", "error", "min_cosine"}], "all_int8": metrics}``,
    nodes sorted by error, worst first. ``error`` is ``1 - mean cosine`` of the logits on ``eval_clips``.
    """
    import onnx

    fp32_onnx, cache_dir = Path(fp32_onnx), Path(cache_dir)
    if target == "onnxruntime" and form is None:
        form = "dynamic"
    ref = run_logits(fp32_onnx, eval_clips) if reference is None else reference
    names = quantizable_nodes(fp32_onnx, target, form)
    ops = {n.name: n.op_type for n in onnx.load(str(fp32_onnx), load_external_data=False).graph.node}
    macs = node_macs(fp32_onnx, eval_clips[:1])
    total = max(sum(macs.get(n, 0) for n in names), 1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8-sensitivity-") as work:  # one model at a time on disk
        build = _builder(fp32_onnx, target, form, calib_clips, set_sha256, cache_dir, smooth, Path(work))
        path, _ = build(method, None, "all")
        all_metrics = compare_logits(ref, run_logits(path, eval_clips))
        path.unlink()
        for i, n in enumerate(names):
            path, _ = build(method, [m for m in names if m != n], f"only-{i}")
            m = compare_logits(ref, run_logits(path, eval_clips))
            path.unlink()
            rows.append(
                {
                    "node": n,
                    "op": ops.get(n),
                    "macs": macs.get(n, 0),
                    "mac_share": macs.get(n, 0) / total,
                    "error": 1.0 - m["mean_cosine"],
                    "min_cosine": m["min_cosine"],
                }
            )
    rows.sort(key=lambda r: -r["error"])
    _log(
        f"sensitivity of {len(rows)} nodes ({target}, {form or 'qdq'}): worst {rows[0]['node']} "
        f"(1 - cos {rows[0]['error']:.2e})"
        if rows
        else "no quantizable nodes"
    )
    return {
        "target": target,
        "form": form,
        "method": method,
        "nodes": rows,
        "all_int8": all_metrics,
        "metric": "1 - mean cosine of the logits vs FP32 with only this node INT8",
        "clips": int(len(eval_clips)),
    }


def choose_keep_float(
    sensitivity: dict[str, Any],
    budget: float = KEEP_FLOAT_BUDGET,
    max_nodes: int = KEEP_FLOAT_MAX_NODES,
    min_share: float = KEEP_FLOAT_MIN_SHARE,
) -> dict[str, Any]:
    """The nodes to keep float: worst first, while within ``budget`` of the MACs and ``max_nodes``, and only nodes
    whose error is at least ``min_share`` of the worst's. Returns the names and the budget statement."""
    rows = sensitivity["nodes"]
    chosen: list[str] = []
    used = 0.0
    worst = rows[0]["error"] if rows else 0.0
    for r in rows:
        if len(chosen) >= max_nodes or r["error"] < min_share * worst or r["error"] <= 0:
            break
        if used + r["mac_share"] > budget:
            continue  # a big node over budget: a smaller one further down may still fit
        chosen.append(r["node"])
        used += r["mac_share"]
    return {
        "keep_float": chosen,
        "mac_share_kept_float": used,
        "budget": {"max_mac_share": budget, "max_nodes": max_nodes, "min_error_share_of_worst": min_share},
    }


def search_clipping(
    fp32_onnx: str | os.PathLike,
    target: str,
    calib_clips: np.ndarray,
    eval_clips: np.ndarray,
    set_sha256: str,
    cache_dir: str | os.PathLike,
    form: str | None = None,
    methods: tuple[str, ...] = STATIC_METHODS,
    smooth: float | None | str = "default",
    keep_float: list[str] | None = None,
    reference: np.ndarray | None = None,
) -> dict[str, Any]:
    """Build with each calibration method and pick the one with the highest mean cosine vs FP32 on ``eval_clips``
    (ties: the higher min cosine). Static forms only (TensorRT Q/DQ, ONNX Runtime qdq/qoperator)."""
    fp32_onnx, cache_dir = Path(fp32_onnx), Path(cache_dir)
    if target == "onnxruntime" and form in (None, "dynamic"):
        raise ValueError(
            "search_clipping: the dynamic form has no calibrated ranges; pass form='qdq' or "
            "'qoperator' for ONNX Runtime, or target='tensorrt'"
        )
    ref = run_logits(fp32_onnx, eval_clips) if reference is None else reference
    results = []
    with tempfile.TemporaryDirectory(prefix="int8-clipping-") as work:
        build = _builder(fp32_onnx, target, form, calib_clips, set_sha256, cache_dir, smooth, Path(work))
        for m in methods:
            path, _ = build(m, keep_float, f"clip-{m}")
            metrics = compare_logits(ref, run_logits(path, eval_clips))
            path.unlink()
            results.append(
                {
                    "method": m,
                    "mean_cosine": metrics["mean_cosine"],
                    "min_cosine": metrics["min_cosine"],
                    "top1_agreement": metrics["top1_agreement"],
                }
            )
            _log(
                f"{target} {form or 'qdq'} {m}: mean cosine {metrics['mean_cosine']:.6f}, "
                f"min {metrics['min_cosine']:.5f}"
            )
    best = max(results, key=lambda r: (r["mean_cosine"], r["min_cosine"]))
    return {"best": best["method"], "results": results, "target": target, "form": form}
