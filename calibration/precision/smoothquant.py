"""SmoothQuant on the FP32 ONNX graph: move activation outliers into the weights, exactly, before INT8.

Xiao et al. (2023): a Linear ``Y = X W`` equals ``(X diag(s)^-1) (diag(s) W)`` for any positive ``s``. With
``s_j = max|X_j|^a / max|W_j|^(1-a)`` the activation channels that are ``S`` times larger than the rest come out
the same size as the others, and the weights take the difference, where per-channel weight quantization and the
smaller dynamic range of weights absorb it. ``a`` (alpha) sets how much of the range moves.

Here ``X`` is the output of a ``LayerNormalization`` whose every consumer is a MatMul/Gemm with a constant weight
(directly, or through a ``Gather`` that picks tokens, as the class token before the head): ``diag(s)^-1`` folds
into the LayerNorm's scale and bias, ``diag(s)`` into the weights' input-channel rows, so the smoothed FP32 model
computes the same function (to FP32 rounding) and costs nothing at run time. The per-channel ``max|X_j|`` is
measured on calibration clips at the MatMul inputs in ONNX Runtime.

ONNX Runtime's own SmoothQuant (``quantize_static(extra_options={"SmoothQuant": True})``) calls Intel Neural
Compressor (``neural_compressor.adaptor.ox_utils.smooth_quant``), which is not a dependency here; see
:func:`ort_smoothquant_available`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from runtime.log import progress
import numpy as np

from calibration.graph.onnx_compare import session_with_outputs

__all__ = [
    "SmoothGroup",
    "SmoothQuantError",
    "find_smooth_groups",
    "activation_channel_max",
    "smooth_model",
    "smooth_onnx",
    "search_alpha",
    "ort_smoothquant_available",
    "DEFAULT_ALPHA",
    "ALPHAS",
]

#: the migration strength used when none is searched (the paper's default for most models)
DEFAULT_ALPHA = 0.5
#: the alphas :func:`search_alpha` tries
ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: scales are kept within this range so that a dead channel (max 0) or a zero weight row cannot blow up
_S_MIN, _S_MAX = 1e-4, 1e4
#: ops between a LayerNorm and its MatMul that keep the channel axis (the last) as it is
_PASS_THROUGH = ("Gather", "Identity")


class SmoothQuantError(RuntimeError):
    """The graph cannot be smoothed as asked; the message names the tensor or node."""


@dataclass
class SmoothGroup:
    """One LayerNorm and the MatMul/Gemm weights that read its output."""

    layernorm: str  #: node name
    scale: str  #: initializer name of the LayerNorm's scale (gamma)
    bias: str | None  #: initializer name of its bias (beta), if any
    inputs: list[str] = field(default_factory=list)  #: the MatMul/Gemm input tensors (activation side)
    weights: list[tuple[str, str, int]] = field(default_factory=list)  #: (node name, weight initializer, in-axis)


_log = progress("smoothquant", __name__)


def ort_smoothquant_available() -> tuple[bool, str]:
    """Whether ONNX Runtime's built-in SmoothQuant can run here (it needs Intel Neural Compressor), and why not."""
    try:
        import importlib

        importlib.import_module("neural_compressor.adaptor.ox_utils.smooth_quant")
        return True, "neural_compressor.adaptor.ox_utils.smooth_quant importable"
    except Exception as e:  # noqa: BLE001 - an import of a third-party package can fail in many ways
        return False, (
            f"onnxruntime.quantization's SmoothQuant needs Intel Neural Compressor "
            f"(neural_compressor.adaptor.ox_utils.smooth_quant): {type(e).__name__}: {e}"
        )


def _rank_of(model: Any) -> dict[str, int]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference is only a help here
        inferred = model
    ranks: dict[str, int] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    return ranks


def find_smooth_groups(model: Any) -> list[SmoothGroup]:
    """Every LayerNormalization whose output reaches only constant-weight MatMul/Gemm inputs (see the module doc)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    ranks = _rank_of(model)
    groups: list[SmoothGroup] = []
    for ln in g.node:
        if ln.op_type != "LayerNormalization" or len(ln.input) < 2 or ln.input[1] not in inits:
            continue
        if len(ln.input) > 2 and ln.input[2] and ln.input[2] not in inits:
            continue
        grp = SmoothGroup(ln.name, ln.input[1], ln.input[2] if len(ln.input) > 2 and ln.input[2] else None)
        ok, frontier = True, [ln.output[0]]
        while frontier and ok:
            t = frontier.pop()
            if t in outputs or not consumers.get(t):
                ok = False
                break
            for c in consumers[t]:
                if c.op_type in ("MatMul", "Gemm") and c.input[0] == t and c.input[1] in inits and c.input[1] != t:
                    w = inits[c.input[1]]
                    attrs = {a.name: a.i for a in c.attribute}
                    if len(w.dims) != 2 or attrs.get("transA", 0):
                        ok = False
                        break
                    axis = 1 if (c.op_type == "Gemm" and attrs.get("transB", 0)) else 0
                    grp.inputs.append(t)
                    grp.weights.append((c.name, c.input[1], axis))
                elif c.op_type in _PASS_THROUGH and c.input[0] == t:
                    if c.op_type == "Gather":
                        axis = next((a.i for a in c.attribute if a.name == "axis"), 0)
                        rank = ranks.get(t)
                        if rank is None or axis in (-1, rank - 1):  # gathering channels would reorder them
                            ok = False
                            break
                    frontier.append(c.output[0])
                else:
                    ok = False
                    break
        if ok and grp.weights:
            groups.append(grp)
    return groups


def activation_channel_max(
    fp32_onnx: str | os.PathLike, clips: np.ndarray, tensors: Iterable[str], input_name: str | None = None
) -> dict[str, np.ndarray]:
    """Per tensor, ``max |x|`` per channel (last axis) over ``clips`` run one by one in ONNX Runtime CPU."""
    import onnx

    model = onnx.load(str(fp32_onnx))
    names = sorted(set(tensors))
    sess = session_with_outputs(model, names)
    name = input_name or sess.get_inputs()[0].name
    out: dict[str, np.ndarray] = {}
    clips = np.ascontiguousarray(clips, np.float32)
    for i in range(len(clips)):
        for t, v in zip(names, sess.run(names, {name: clips[i : i + 1]})):
            m = np.abs(v.reshape(-1, v.shape[-1])).max(0)
            out[t] = m if t not in out else np.maximum(out[t], m)
    return out


def _array(init: Any) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(init).astype(np.float32)


def smooth_model(
    model: Any, act_max: dict[str, np.ndarray], alpha: float = DEFAULT_ALPHA, groups: list[SmoothGroup] | None = None
) -> dict[str, Any]:
    """Fold SmoothQuant scales into ``model`` (an ``onnx.ModelProto``, changed in place); returns what was done.

    ``act_max``: per MatMul input tensor, ``max |x|`` per channel (:func:`activation_channel_max`). Initializers
    used by more than one node are copied before they change, so only the group's own nodes see the new values.
    """
    from onnx import numpy_helper

    if not 0.0 <= alpha <= 1.0:
        raise SmoothQuantError(f"alpha: expected 0..1, got {alpha}")
    g = model.graph
    groups = find_smooth_groups(model) if groups is None else groups
    inits = {t.name: t for t in g.initializer}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    nodes = {n.name: n for n in g.node}

    def replace(node_name: str, old: str, arr: np.ndarray, suffix: str) -> None:
        node = nodes[node_name]
        if uses.get(old, 0) > 1:  # shared (e.g. identical LayerNorm weights deduplicated by the exporter)
            new = f"{old}__{suffix}_{node_name}"  # node names are unique: so is this, per copy
            if new in inits:
                raise SmoothQuantError(f"initializer {new!r} already exists; cannot copy {old!r} for {node_name!r}")
            g.initializer.append(numpy_helper.from_array(arr.astype(np.float32), new))
            for k, i in enumerate(node.input):
                if i == old:
                    node.input[k] = new
            uses[old] -= 1
            uses[new] = 1
            inits[new] = g.initializer[-1]
        else:
            inits[old].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), old))

    done = []
    for grp in groups:
        missing = [t for t in grp.inputs if t not in act_max]
        if missing:
            raise SmoothQuantError(f"LayerNorm {grp.layernorm!r}: no activation statistics for {missing}")
        xmax = np.max([act_max[t] for t in grp.inputs], axis=0).astype(np.float64)
        wmax = np.zeros_like(xmax)
        for _, w, axis in grp.weights:
            wa = np.abs(_array(inits[w])).astype(np.float64)
            wmax = np.maximum(wmax, wa.max(axis=1 - axis))
        if xmax.shape != wmax.shape:
            raise SmoothQuantError(
                f"LayerNorm {grp.layernorm!r}: activation has {xmax.shape[0]} channels, the "
                f"weights read {wmax.shape[0]}"
            )
        s = np.where(
            (xmax > 0) & (wmax > 0),
            np.power(np.maximum(xmax, 1e-30), alpha) / np.power(np.maximum(wmax, 1e-30), 1.0 - alpha),
            1.0,
        )
        s = np.clip(s, _S_MIN, _S_MAX)
        ln = nodes[grp.layernorm]
        replace(grp.layernorm, ln.input[1], _array(inits[ln.input[1]]) / s, "smooth")
        if grp.bias is not None:
            replace(grp.layernorm, ln.input[2], _array(inits[ln.input[2]]) / s, "smooth")
        for node_name, _, axis in grp.weights:
            w_name = nodes[node_name].input[1]
            w = _array(inits[w_name])
            w = w * (s[:, None] if axis == 0 else s[None, :])
            replace(node_name, w_name, w, "smooth")
        ratio_before = float(xmax.max() / max(np.median(xmax), 1e-30))
        after = xmax / s
        done.append(
            {
                "layernorm": grp.layernorm,
                "matmuls": [w[0] for w in grp.weights],
                "outlier_ratio_before": round(ratio_before, 2),
                "outlier_ratio_after": round(float(after.max() / max(np.median(after), 1e-30)), 2),
                "scale_min": float(s.min()),
                "scale_max": float(s.max()),
            }
        )
    return {
        "alpha": float(alpha),
        "groups": done,
        "layernorms_smoothed": len(done),
        "matmuls_smoothed": sum(len(d["matmuls"]) for d in done),
    }


def smooth_onnx(
    fp32_onnx: str | os.PathLike,
    out: str | os.PathLike,
    clips: np.ndarray,
    alpha: float = DEFAULT_ALPHA,
    act_max: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write the smoothed FP32 model of ``fp32_onnx`` to ``out`` (atomically); returns what was done.

    ``act_max`` (from :func:`activation_channel_max` on the same model and clips) saves the measurement when
    several alphas are tried.
    """
    import onnx

    from runtime.files import atomic_output

    model = onnx.load(str(fp32_onnx))
    groups = find_smooth_groups(model)
    if not groups:
        raise SmoothQuantError(
            f"{fp32_onnx}: no LayerNormalization feeds only constant-weight MatMul/Gemm nodes; nothing to smooth"
        )
    if act_max is None:
        act_max = activation_channel_max(fp32_onnx, clips, [t for grp in groups for t in grp.inputs])
    info = smooth_model(model, act_max, alpha, groups)
    with atomic_output(Path(out), ".onnx") as tmp:
        onnx.save(model, str(tmp))
    info["clips"] = int(len(clips))
    return info


def search_alpha(
    fp32_onnx: str | os.PathLike,
    clips: np.ndarray,
    score: Callable[[Path, float], float],
    work_dir: str | os.PathLike,
    alphas: Iterable[float] = ALPHAS,
) -> dict[str, Any]:
    """Try each alpha: smooth, then ``score(smoothed_fp32_path, alpha)`` (higher is better, e.g. the INT8 model's
    mean cosine against FP32 on held-out clips). Returns the best alpha, its path and every score."""
    import onnx

    model = onnx.load(str(fp32_onnx))
    groups = find_smooth_groups(model)
    act_max = activation_channel_max(fp32_onnx, clips, [t for grp in groups for t in grp.inputs])
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    scores: list[dict[str, float]] = []
    best: tuple[float, float, Path] | None = None
    for a in alphas:
        path = work / f"smooth-a{a:.2f}.onnx"
        smooth_onnx(fp32_onnx, path, clips, a, act_max)
        sc = float(score(path, a))
        scores.append({"alpha": float(a), "score": sc})
        _log(f"alpha {a:.2f}: score {sc:.6f}")
        if best is None or sc > best[0]:
            best = (sc, float(a), path)
    assert best is not None
    return {"alpha": best[1], "score": best[0], "path": str(best[2]), "scores": scores}
