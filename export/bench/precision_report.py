"""Precision report: FP32 / FP16 / INT8 ONNX models in ONNX Runtime against the FP32 PyTorch reference.

``python -m export.bench.precision_report --model <checkpoint|preset> [--clips <folder|synthetic[:SEED]|x.npz>]
[--precisions fp32,fp16,int8] [--targets onnxruntime,tensorrt] [--out artifacts/reports/<name>]``

Per precision and target (each target gets its own FP32 export: ``ort`` attention for ONNX Runtime,
``decomposed`` for TensorRT, and its own FP16/INT8 conversion through
:func:`calibration.precision.build.precision_onnx`):
top-1 accuracy (when the clips have labels and the model has named classes), top-1 and top-5 agreement,
cosine similarity and max |Δ| of the logits, and per block the relative error of the block output
(the exported ``block_{i}_output`` tensors, exposed as extra outputs of a copy of the model, against
``TimeSformer.forward_with_blocks``) with the first block where the error jumps. The TensorRT models
run here in ONNX Runtime (same graph and precision; TensorRT's kernels differ in rounding only).
Written as ``report.json`` and ``report.md``, atomically.

Outlier handling (issue 15): ``--smooth default|off|ALPHA`` (SmoothQuant before INT8; the default is
:data:`calibration.precision.int8.SMOOTH_DEFAULT_ALPHA`), ``--outliers S,C`` (report on the function-preserving outlier
version
of the model, :func:`models.outliers.add_outliers`), ``--sensitivity`` (per-layer sensitivity of every INT8 target:
one MatMul quantized at a time) and ``--keep-float auto`` (rebuild with the most sensitive MatMuls in float, within
:data:`calibration.precision.int8_search.KEEP_FLOAT_BUDGET` of the MACs). The report records what was smoothed, what was
kept
in float, and which tools did it (:data:`TOOLS`).
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.log import progress
from runtime.cli_args import ArgumentParser
from runtime.files import write_json_atomic, write_text_atomic

from runtime.cli_args import user_errors
from export.bench.harness import machine

# the one block-divergence routine (shared with make parity); the jump rule re-exported under its old names here
from calibration.precision.provenance import calibration_source, measured_on, provenance_line
from calibration.graph.blocks import (
    JUMP_FACTOR,
    JUMP_FLOOR,
    BlockErrors,
    BlockRunner,
    divergence,
    first_jump_block,
    largest_step_block,
)

__all__ = ["precision_report", "first_jump_block", "largest_step_block", "write_report", "main"]

TARGETS = ("onnxruntime", "tensorrt")
#: what quantizes and what smooths, and the libraries measured against (recorded in every report)
TOOLS = {
    "int8": "onnxruntime.quantization (quantize_static Q/DQ for TensorRT and ONNX Runtime static; quantize_dynamic)",
    "smoothquant": "calibration.precision.smoothquant "
    "(ours: folded into LayerNorm and MatMul weights on the FP32 ONNX)",
    "smoothquant_alternatives": (
        "onnxruntime.quantization quantize_static(extra_options={'SmoothQuant': True}) needs Intel Neural "
        "Compressor 2.x (neural_compressor.adaptor.ox_utils, gone from 3.x; pulls opencv, scikit-learn, scipy, "
        "pycocotools); measured with INC 2.6 on the S=40/4-channel motion model it equals ours (static Q/DQ min "
        "cosine 0.99948 both) but covers only quantize_static, not the dynamic form ONNX Runtime ships, so ours is "
        "used. NVIDIA ModelOpt's SmoothQuant: not installed (optional and heavy: pulls CUDA PyTorch)."
    ),
    "clipping": "max | percentile | entropy (onnxruntime calibrators) | mse (calibration.precision.clipping, ours)",
    "sensitivity": "calibration.precision.int8_search (ours: one node quantized at a time, logits vs FP32)",
}


_log = progress("report", __name__)


def _fp32_export(net, labels, pre, source: dict[str, Any], target: str, cache_dir: Path) -> tuple[Path, str]:
    from export.onnx.attention import default_attention
    from export.bundle.fp32_cache import cached_fp32_onnx

    attention = default_attention(target)
    return cached_fp32_onnx(net, labels, pre, source, attention, cache_dir, verbose=False), attention


def precision_report(
    model: str,
    clips: str | None = None,
    n_clips: int = 64,
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8"),
    targets: tuple[str, ...] = ("onnxruntime", "tensorrt"),
    calib: str | None = None,
    calib_clips: int = 32,
    method: str = "max",
    cache_dir: str | os.PathLike = "artifacts/cache",
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    smooth: float | None | str = "default",
    outliers: tuple[float, int] | None = None,
    sensitivity: bool = False,
    keep_float: str | None = None,
    sensitivity_clips: int = 16,
) -> dict[str, Any]:
    """Measure every (precision, target) on ``n_clips`` clips of ``clips``; returns the report dict.

    ``smooth``/``outliers``/``sensitivity``/``keep_float``: see the module doc (``keep_float="auto"`` implies
    ``sensitivity``); sensitivity is measured on the first ``sensitivity_clips`` evaluation clips.

    ``clips`` defaults to ``synthetic:{seed + 9000}`` (never the calibration clips, which default to
    ``synthetic`` with ``seed``); for a checkpoint trained on another synthetic task (``synthetic_task`` in its
    metadata), both default to that task's clips (``synthetic-TASK``).
    """
    import onnxruntime as ort

    from calibration.clips.calibset import load_calibration_set, synthetic_spec
    from models import model_task

    t0 = time.perf_counter()
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    for p in precisions:
        if p not in ("fp32", "fp16", "int8"):
            raise ValueError(f"precision {p!r}: expected fp32, fp16 or int8")
    net, labels, pre, source, outlier_record = _reference(model, seed, outliers)
    task = model_task(net)
    calib = calib or synthetic_spec(task)  # a model trained on a synthetic task: its own clips, for both
    evalset = load_calibration_set(clips or synthetic_spec(task, seed + 9000), pre, n_clips, seed, progress=progress)
    build = _Build(
        pre,
        calib,
        calib_clips,
        method,
        cache,
        seed,
        progress,
        {"smooth": smooth},
        sensitivity or keep_float == "auto",
        keep_float,
        evalset.clips[:sensitivity_clips],
    )
    models = [m for target in targets for m in _models_for(net, labels, source, target, precisions, build)]
    lab = evalset.labels if evalset.labels is not None and labels is not None else None
    rows = _evaluate(net, models, evalset.clips, lab, threads, progress)
    return {
        "model": model,
        "source": source,
        "model_config": net.config.to_dict(),
        "clips": {
            **evalset.info(),
            "selection": evalset.selection[:8] + ([{"...": len(evalset) - 8}] if len(evalset) > 8 else []),
        },
        "labels": bool(lab is not None),
        "calibration": {
            "calib": calib or "synthetic",
            "clips": calib_clips,
            "method": method,
            "seed": seed,
            "source": calibration_source(calib),
        },
        "isa": measured_on(),  # issue 25: INT8 numbers depend on the CPU's INT8 instructions
        "outliers": outlier_record,
        "int8_options": {"smooth": smooth, "keep_float": keep_float},
        "sensitivity": build.sensitivity_by_target,
        "tools": TOOLS,
        "reference": "PyTorch FP32 (models.TimeSformer.forward_with_blocks)",
        "runtime": f"onnxruntime {ort.__version__} CPU",
        "rows": rows,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _reference(
    model: str, seed: int, outliers: tuple[float, int] | None
) -> tuple[Any, Any, Any, dict[str, Any], dict[str, Any] | None]:
    """The FP32 PyTorch reference (its outlier version when asked): net, labels, preprocessing, source, record."""
    from models import load_source

    net, labels, pre, source = load_source(model, seed)
    net.eval()
    if outliers is None:
        return net, labels, pre, source, None
    from models.outliers import add_outliers
    from runtime.files import sha256_json

    net, record = add_outliers(net, float(outliers[0]), int(outliers[1]), seed)
    source = {
        "checkpoint": f"{source['checkpoint']} + outliers S={outliers[0]:g} C={outliers[1]}",
        "checkpoint_sha256": sha256_json(source["checkpoint_sha256"], record),
    }
    return net, labels, pre, source, record


@dataclass
class _Build:
    """How the reduced-precision models are built (one set of options for every target)."""

    pre: Any
    calib: str | None
    calib_clips: int
    method: str
    cache: Path
    seed: int
    progress: bool
    int8_options: dict[str, Any]
    sensitivity: bool
    keep_float: str | None
    sensitivity_clips: np.ndarray
    sensitivity_by_target: dict[str, Any] = field(default_factory=dict)

    def onnx(self, fp32: Path, precision: str, target: str, options: dict[str, Any] | None) -> tuple[Path, Any]:
        from export.bundle.precision_step import precision_onnx

        return precision_onnx(
            fp32,
            precision,
            target,
            self.calib,
            self.pre,
            self.calib_clips,
            self.method,
            self.cache,
            self.seed,
            progress=self.progress,
            int8_options=options,
        )


def _models_for(
    net: Any, labels: Any, source: dict[str, Any], target: str, precisions: tuple[str, ...], b: _Build
) -> list[dict[str, Any]]:
    """One target's FP32 export and its FP16/INT8 conversions (INT8 with sensitivity and keep-float when asked)."""
    fp32, attention = _fp32_export(net, labels, b.pre, source, target, b.cache)
    out = []
    for p in precisions:
        entry: dict[str, Any] = {"precision": p, "target": target, "attention": attention}
        if p == "fp32":
            out.append({**entry, "onnx": fp32, "form": "fp32", "build": None})
            continue
        path, info = b.onnx(fp32, p, target, b.int8_options if p == "int8" else None)
        if p == "int8" and b.sensitivity:
            sens = b.sensitivity_by_target[target] = _sensitivity(
                fp32,
                target,
                info,
                b.calib,
                b.pre,
                b.calib_clips,
                b.seed,
                b.cache,
                b.sensitivity_clips,
                b.int8_options["smooth"],
                b.method,
                b.progress,
            )
            if b.keep_float == "auto" and sens["keep_float"]:
                path, info = b.onnx(fp32, p, target, {**b.int8_options, "keep_float": sens["keep_float"]})
        build = {
            k: info.get(k)
            for k in ("set_sha256", "calib", "n_clips", "skipped", "method", "kept_fp32_counts", "seconds", "reused")
        }
        if p == "int8":
            build["smoothquant"] = _smooth_summary(info.get("detail", {}).get("smoothquant"))
            build["kept_float"] = info.get("detail", {}).get("kept_float", [])
        if p == "fp16":
            build["kept_fp32"] = [k["node"] for k in info.get("kept_fp32", [])]
        out.append({**entry, "onnx": path, "form": info.get("form"), "build": build})
    return out


def _evaluate(
    net: Any,
    models: list[dict[str, Any]],
    clips: np.ndarray,
    labels: np.ndarray | None,
    threads: int | None,
    progress: bool,
) -> list[dict[str, Any]]:
    """Every model on every clip against ``net.forward_with_blocks``: logit metrics and per-block divergence."""
    import torch
    from tqdm import tqdm

    from calibration.precision.metrics import compare_logits

    depth = net.config.depth
    runners = [BlockRunner(m["onnx"], depth, threads) for m in models]
    errors = [BlockErrors() for _ in models]
    logits: list[list[np.ndarray]] = [[] for _ in models]
    ref_logits = []
    for i in tqdm(range(len(clips)), desc="evaluating", unit="clip", disable=not progress, file=sys.stderr):
        x = np.ascontiguousarray(clips[i : i + 1])
        with torch.no_grad():
            rl, rb = net.forward_with_blocks(torch.from_numpy(x))
        ref_logits.append(rl.numpy())
        ref_blocks = [b.numpy() for b in rb]
        for run, err, out in zip(runners, errors, logits):
            lg, blocks = run(x)
            out.append(lg)
            err.add(ref_blocks, blocks)
    del runners
    ref = np.concatenate(ref_logits)
    rows = []
    for m, err, out in zip(models, errors, logits):
        d = divergence(err.rows(), m["precision"])
        blocks = [{"block": r["block"], "mean_rel_error": r["rel_l2"], "min_cosine": r["cosine"]} for r in d["blocks"]]
        rows.append(
            {
                "precision": m["precision"],
                "target": m["target"],
                "attention": m["attention"],
                "form": m["form"],
                "onnx": str(m["onnx"]),
                **compare_logits(ref, np.concatenate(out), labels),
                "blocks": blocks,
                "first_jump_block": d["first_jump_block"],
                "largest_step_block": d["largest_step_block"],
                "final_block_rel_error": blocks[-1]["mean_rel_error"] if blocks else None,
                "build": m["build"],
            }
        )
    return rows


def _smooth_summary(sq: dict[str, Any] | None) -> dict[str, Any] | None:
    """What SmoothQuant did, in brief: alpha, counts and the worst max/median activation ratio before and after."""
    if not sq:
        return None
    if sq.get("skipped"):
        return {"alpha": sq.get("alpha"), "skipped": sq["skipped"]}
    groups = sq.get("groups", [])
    return {
        "alpha": sq.get("alpha"),
        "layernorms": sq.get("layernorms_smoothed"),
        "matmuls": sq.get("matmuls_smoothed"),
        "max_outlier_ratio_before": max((g["outlier_ratio_before"] for g in groups), default=None),
        "max_outlier_ratio_after": max((g["outlier_ratio_after"] for g in groups), default=None),
        "per_layernorm": [
            {k: g[k] for k in ("layernorm", "matmuls", "outlier_ratio_before", "outlier_ratio_after")} for g in groups
        ],
    }


def _sensitivity(
    fp32: Path,
    target: str,
    info: dict[str, Any],
    calib: str | None,
    pre: Any,
    calib_clips: int,
    seed: int,
    cache: Path,
    eval_clips: np.ndarray,
    smooth: float | None | str,
    method: str,
    progress: bool,
) -> dict[str, Any]:
    """Per-layer sensitivity of ``target``'s INT8 form and the nodes to keep float within the budget."""
    from calibration.clips.calibset import load_calibration_set
    from calibration.precision.int8_search import choose_keep_float, layer_sensitivity

    cset = load_calibration_set(calib, pre, calib_clips, seed, progress=progress)
    form = info.get("form")
    form = (
        {"dynamic": "dynamic", "qdq-static": "qdq", "qoperator-static": "qoperator"}.get(form)
        if target == "onnxruntime"
        else None
    )
    sens = layer_sensitivity(
        fp32, target, cset.clips, eval_clips, cset.sha256, cache, form=form, method=method, smooth=smooth
    )
    return {**sens, **choose_keep_float(sens)}


def _markdown(rep: dict[str, Any]) -> str:
    lines = [
        f"# Precision report: {rep['model']}",
        "",
        f"{rep['clips']['n_clips']} clips from `{rep['clips']['spec']}` (sha256 {rep['clips']['sha256'][:12]}), "
        f"reference {rep['reference']}, run in {rep['runtime']}. Calibration: {rep['calibration']['calib']}, "
        f"{rep['calibration']['clips']} clips, method {rep['calibration']['method']}.",
        "",
        provenance_line(rep.get("isa") or {}, rep["calibration"].get("source") or {}),
        "",
    ]
    has_acc = rep["labels"]
    head = (
        ["precision", "target", "form"]
        + (["top-1 acc (ref → this)"] if has_acc else [])
        + [
            "top-1 agree",
            "top-5 agree",
            "min cosine",
            "mean cosine",
            "max abs Δlogit",
            "first jump block",
            "largest step block",
            "last block rel err",
        ]
    )
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rep["rows"]:
        cells = [r["precision"], r["target"], str(r["form"])]
        if has_acc:
            cells.append(f"{100 * r['top1_accuracy_reference']:.1f}% → {100 * r['top1_accuracy']:.1f}%")
        cells += [
            f"{100 * r['top1_agreement']:.1f}%",
            f"{100 * r['top5_agreement']:.1f}%",
            f"{r['min_cosine']:.6f}",
            f"{r['mean_cosine']:.6f}",
            f"{r['max_abs_logit']:.3g}",
            "none" if r["first_jump_block"] is None else str(r["first_jump_block"]),
            "-" if r["largest_step_block"] is None else str(r["largest_step_block"]),
            f"{r['final_block_rel_error']:.3g}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"A block jumps when its relative error is >= {JUMP_FACTOR:g}x the previous block's and above the "
        f"precision's floor {JUMP_FLOOR}.",
        "",
        "Per block mean relative error (‖engine − reference‖ / ‖reference‖ of `block_{i}_output`):",
        "",
    ]
    depth = len(rep["rows"][0]["blocks"]) if rep["rows"] else 0
    lines += ["| precision / target | " + " | ".join(str(i) for i in range(depth)) + " |", "|---|" + "---|" * depth]
    for r in rep["rows"]:
        lines.append(
            f"| {r['precision']} / {r['target']} | "
            + " | ".join(f"{b['mean_rel_error']:.2e}" for b in r["blocks"])
            + " |"
        )
    kept = [
        (r["target"], r["build"].get("kept_fp32_counts"), r["build"].get("kept_fp32"))
        for r in rep["rows"]
        if r["precision"] == "fp16" and r["build"]
    ]
    for target, counts, nodes in kept:
        lines += [
            "",
            f"FP16 for {target}: kept FP32 {counts}" + (f"; measured: {', '.join(nodes[:20])}" if nodes else ""),
        ]
    lines += _outlier_markdown(rep)
    return "\n".join(lines) + "\n"


def _outlier_markdown(rep: dict[str, Any]) -> list[str]:
    lines = ["", "## INT8 outlier handling", ""]
    if rep.get("outliers"):
        o = rep["outliers"]
        lines += [
            f"Model made with activation outliers (function-preserving): S = {o['scale']:g}, {o['channels']} "
            f"channels in each of {o['layernorms']} LayerNorms (seed {o['seed']}).",
            "",
        ]
    lines += [f"Options: {rep.get('int8_options')}.", ""]
    for r in rep["rows"]:
        if r["precision"] != "int8" or not r["build"]:
            continue
        sq = r["build"].get("smoothquant")
        if sq is None:
            what = "SmoothQuant off"
        elif sq.get("skipped"):
            what = f"SmoothQuant skipped ({sq['skipped']})"
        else:
            what = (
                f"SmoothQuant α {sq['alpha']}: {sq['layernorms']} LayerNorms / {sq['matmuls']} MatMuls, worst "
                f"max/median activation ratio {sq['max_outlier_ratio_before']} → {sq['max_outlier_ratio_after']}"
            )
        kept = r["build"].get("kept_float") or []
        lines.append(f"- {r['target']} ({r['form']}): {what}; kept float: {', '.join(kept) if kept else 'none'}")
    for target, s in (rep.get("sensitivity") or {}).items():
        b = s["budget"]
        lines += [
            "",
            f"Per-layer sensitivity, {target} ({s['form'] or 'Q/DQ'}, {s['clips']} clips; {s['metric']}); "
            f"all INT8: mean cosine {s['all_int8']['mean_cosine']:.6f}, min {s['all_int8']['min_cosine']:.5f}. "
            f"Budget: at most {100 * b['max_mac_share']:g}% of the MACs and {b['max_nodes']} nodes, each with at "
            f"least {100 * b['min_error_share_of_worst']:g}% of the worst node's error; chosen: "
            f"{', '.join(s['keep_float']) or 'none'} ({100 * s['mac_share_kept_float']:.2f}% of the MACs).",
            "",
            "| node | op | MAC share | 1 − mean cos | min cos |",
            "|---|---|---|---|---|",
        ]
        for n in s["nodes"][:10]:
            lines.append(
                f"| {n['node']} | {n['op']} | {100 * n['mac_share']:.2f}% | {n['error']:.2e} | {n['min_cosine']:.5f} |"
            )
    lines += [
        "",
        "Tools: " + "; ".join(f"{k}: {str(v).rstrip('.')}" for k, v in (rep.get("tools") or {}).items()) + ".",
    ]
    return lines


def write_report(rep: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``report.json`` and ``report.md`` in ``out_dir``, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "report.json", out / "report.md"
    write_json_atomic(js, rep)
    write_text_atomic(md, _markdown(rep))
    return js, md


@user_errors("python -m export.bench.precision_report")
def main(argv: list[str] | None = None) -> int:
    from export.bundle.options import CALIB_METHODS, DEFAULT_MODEL, DEFAULTS  # the build's option table

    ap = ArgumentParser(prog="python -m export.bench.precision_report", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint path or preset name")
    ap.add_argument(
        "--clips",
        default=None,
        help="evaluation clips: folder | synthetic[:SEED] | .npy/.npz (default synthetic:SEED+9000)",
    )
    ap.add_argument("--n", type=int, default=64, help="evaluation clips (default 64)")
    ap.add_argument("--precisions", default="fp32,fp16,int8")
    ap.add_argument("--targets", default="onnxruntime,tensorrt")
    ap.add_argument("--calib", default=None, help="calibration clips (default: synthetic)")
    ap.add_argument("--calib-clips", type=int, default=32)
    ap.add_argument("--method", default=DEFAULTS["calib_method"], choices=CALIB_METHODS)
    ap.add_argument("--smooth", default="default", help="SmoothQuant alpha before INT8: default | off | 0..1")
    ap.add_argument(
        "--outliers",
        default=None,
        metavar="S,C",
        help="report on the outlier version of the model: scale S, C channels per LayerNorm",
    )
    ap.add_argument("--sensitivity", action="store_true", help="per-layer INT8 sensitivity of each target")
    ap.add_argument(
        "--keep-float",
        default=None,
        choices=("auto",),
        help="auto: keep the most sensitive MatMuls float within the budget (implies --sensitivity)",
    )
    ap.add_argument("--cache-dir", default="artifacts/cache")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="output folder (default artifacts/reports/<model name>)")
    a = ap.parse_args(argv)
    precisions = tuple(p.strip() for p in a.precisions.split(",") if p.strip())
    targets = tuple(t.strip() for t in a.targets.split(",") if t.strip())
    for t in targets:
        if t not in TARGETS:
            ap.error(f"--targets: {t!r} is not one of {TARGETS}")
    smooth: float | None | str
    if a.smooth in ("default", "off"):
        smooth = None if a.smooth == "off" else "default"
    else:
        try:
            smooth = float(a.smooth)
        except ValueError:
            ap.error(f"--smooth: expected default, off or a number in 0..1; got {a.smooth!r}")
        if not 0.0 <= smooth <= 1.0:
            ap.error(f"--smooth: alpha must be in 0..1; got {smooth}")
    outliers = None
    if a.outliers:
        try:
            s, c = a.outliers.split(",")
            outliers = (float(s), int(c))
        except ValueError:
            ap.error(f"--outliers: expected S,C (e.g. 40,4); got {a.outliers!r}")
    from models import SourceError

    try:
        rep = precision_report(
            a.model,
            a.clips,
            a.n,
            precisions,
            targets,
            a.calib,
            a.calib_clips,
            a.method,
            a.cache_dir,
            a.seed,
            a.threads,
            smooth=smooth,
            outliers=outliers,
            sensitivity=a.sensitivity,
            keep_float=a.keep_float,
        )
    except (SourceError, ValueError) as e:
        print(f"python -m export.bench.precision_report: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    out = a.out or f"artifacts/reports/{Path(a.model).stem if Path(a.model).suffix else a.model}"
    js, md = write_report(rep, out)
    print(md.read_text())
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
