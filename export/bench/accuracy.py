"""Accuracy of every shipped bundle on a labelled task, against FP32 PyTorch: does INT8/FP16 cost accuracy?

``python -m export.bench.accuracy [--model models/weights/motion16.safetensors] [--n 1600] [--clips SPEC]
[--backends onnxruntime,openvino] [--precisions fp32,fp16,int8] [--out-dir artifacts/bench/accuracy]``

The model's own synthetic task (``synthetic_task`` in its checkpoint metadata) gives the held-out clips
(``synthetic-<task>:<seed + 9000>``, never the training, held-out or calibration seeds) and the calibration clips
of every INT8 build. Each (backend, precision) bundle is built by ``make engine``'s code (parity included), loaded
with :class:`runtime.Engine` as an app would and run on every clip. The TensorRT FP16 and INT8 ONNX files (the
ones ``make engine BACKEND=tensorrt`` compiles) run too, in ONNX Runtime on the CPU: the same graph and
precisions, TensorRT's kernels differ in rounding only.

Per row: top-1 accuracy, its difference from FP32 PyTorch in points, the clips it gets wrong that FP32 got right
and the reverse (a difference of k clips is ``100 k / n`` points), top-1 agreement and logit cosine. The bars
(issue 15): INT8 within :data:`BARS` ``["int8"]`` points of FP32, FP16 within ``["fp16"]``; with fewer clips than
:data:`MIN_CLIPS_FOR_BARS` one clip is more than the FP16 bar and no verdict is given. Writes
``accuracy.json`` and ``accuracy.md`` atomically.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cli_args import ArgumentParser
from runtime.files import write_json_atomic, write_text_atomic

from runtime.cli_args import user_errors

from calibration.precision.provenance import calibration_source, measured_on, provenance_line
from export.bench.harness import machine, machine_line, markdown_table

__all__ = ["BARS", "run_bench", "accuracy_row", "verdicts", "markdown", "main"]

DEFAULT_MODEL = "models/weights/motion16.safetensors"
#: |accuracy - FP32 PyTorch accuracy| allowed, in points
BARS = {"int8": 0.5, "fp16": 0.1, "fp32": 0.0}
#: below this many clips one clip is 0.1 points or more: too coarse for the FP16 bar
MIN_CLIPS_FOR_BARS = 1000
#: the eval seed offset (training uses the task's seed, its held-out set seed + 1, calibration ``seed``, parity +1000)
EVAL_SEED_OFFSET = 9000


def _log(msg: str) -> None:
    print(f"[accuracy] {msg}", file=sys.stderr, flush=True)


def accuracy_row(name: str, ref: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Accuracy of ``logits`` and how it differs, clip by clip, from the FP32 reference ``ref``."""
    from calibration.precision.metrics import compare_logits

    m = compare_logits(ref, logits, labels)
    ref_ok = ref.argmax(1) == labels
    ok = logits.argmax(1) == labels
    n = len(labels)
    return {
        "name": name,
        "clips": n,
        "accuracy": float(ok.mean()),
        "reference_accuracy": float(ref_ok.mean()),
        "delta_points": float(100.0 * (ok.mean() - ref_ok.mean())),
        "lost": int(np.sum(ref_ok & ~ok)),
        "gained": int(np.sum(~ref_ok & ok)),
        "top1_agreement": m["top1_agreement"],
        "mean_cosine": m["mean_cosine"],
        "min_cosine": m["min_cosine"],
        "max_abs_logit": m["max_abs_logit"],
    }


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each reduced-precision row against its bar; ``met`` is None when there are too few clips to tell."""
    out = []
    for r in rows:
        bar = BARS.get(r.get("precision", ""))
        if not bar:
            continue
        met = None if r["clips"] < MIN_CLIPS_FOR_BARS else abs(r["delta_points"]) <= bar + 1e-9
        out.append(
            {"name": r["name"], "precision": r["precision"], "delta_points": r["delta_points"], "bar": bar, "met": met}
        )
    return out


def _engine_logits(engine: Any, clips: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate(
        [engine.infer(np.ascontiguousarray(clips[i : i + batch])) for i in range(0, len(clips), batch)]
    )


def _eval_labels(evalset: Any, spec: str | None, labels: list[str]) -> np.ndarray:
    """The held-out clips' labels as int64, checked against the model's classes."""
    if evalset.labels is None:
        raise ValueError(f"--clips {spec}: the clips have no labels (a folder needs labels.csv)")
    if evalset.classes and list(evalset.classes) != list(labels):
        raise ValueError(f"--clips {spec}: its classes {evalset.classes} are not the model's {labels}")
    lab: np.ndarray = evalset.labels.astype(np.int64)
    if lab.max() >= len(labels):
        raise ValueError(f"--clips {spec}: label {int(lab.max())} is outside the model's {len(labels)} classes")
    return lab


def _reference_logits(net: Any, clips: np.ndarray, batch: int) -> np.ndarray:
    """FP32 PyTorch logits of ``clips``, ``batch`` at a time."""
    import torch

    with torch.no_grad():
        out: np.ndarray = np.concatenate(
            [
                net(torch.from_numpy(np.ascontiguousarray(clips[i : i + batch]))).numpy()
                for i in range(0, len(clips), batch)
            ]
        )
    return out


def _log_row(row: dict[str, Any]) -> None:
    _log(f"{row['name']}: {100 * row['accuracy']:.2f}% ({row['delta_points']:+.2f} points)")


def _bundle_rows(
    model: str,
    backends: tuple[str, ...],
    precisions: tuple[str, ...],
    calib: str | None,
    calib_clips: int,
    seed: int,
    threads: int | None,
    batch: int,
    cache_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    evalset: Any,
    ref: np.ndarray,
    lab: np.ndarray,
) -> list[dict[str, Any]]:
    """Step 3: build every (backend, precision) bundle, run it with :class:`runtime.Engine` and score it."""
    from export.bundle.build import BuildRequest, build_bundle
    from runtime import Engine

    rows: list[dict[str, Any]] = []
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    for backend in backends:
        if backend == "openvino":
            from runtime.backends.openvino_backend import openvino_available

            ok, why = openvino_available()
            if not ok:
                _log(f"openvino rows left out: {why}")
                continue
        for p in precisions:
            req = BuildRequest(
                model=model,
                precision=p,
                backend=backend,
                out=str(work / f"{backend}-{p}"),
                cache_dir=str(cache_dir),
                calib=calib,
                calib_clips=calib_clips,
                parity_clips=8,
                threads=threads,
                seed=seed,
                batch=(1, batch, batch),
                allow_precision_fallback=True,
            )  # fp16 without FP16/BF16 arithmetic: recorded
            bundle = build_bundle(req)
            with Engine(bundle, threads=threads) as engine:
                logits = _engine_logits(engine, evalset.clips, batch)
                desc = engine.describe()
            what = {"onnxruntime": "ONNX Runtime bundle", "openvino": "OpenVINO bundle"}[backend]
            if backend == "openvino" and p != "fp32":
                what += f" ({desc.get('inference_precision')} inference)"
            rows.append(
                {
                    **accuracy_row(f"{backend}-{p}", ref, logits, lab),
                    "backend": backend,
                    "precision": p,
                    "what": what,
                    "bundle": str(bundle),
                }
            )
            _log_row(rows[-1])
    return rows


def _tensorrt_rows(
    net: Any,
    labels: list[str],
    pre: Any,
    source: Any,
    precisions: tuple[str, ...],
    calib: str | None,
    calib_clips: int,
    seed: int,
    threads: int | None,
    cache_dir: str | os.PathLike,
    evalset: Any,
    ref: np.ndarray,
    lab: np.ndarray,
) -> list[dict[str, Any]]:
    """Step 4: the TensorRT FP16/INT8 ONNX files, run and scored in ONNX Runtime on the CPU."""
    from calibration.precision.int8_search import run_logits
    from export.bundle.fp32_cache import cached_fp32_onnx
    from export.bundle.precision_step import precision_onnx
    from export.onnx.attention import resolve_attention

    rows: list[dict[str, Any]] = []
    attention = resolve_attention("auto", "tensorrt", None, precision="int8")
    fp32 = cached_fp32_onnx(net, labels, pre, source, attention, cache_dir, verbose=False)
    for p in (q for q in precisions if q != "fp32"):
        path, info = precision_onnx(
            fp32,
            p,
            "tensorrt",
            calib,
            pre,
            calib_clips,
            "max",
            cache_dir,
            seed,
            progress=False,
            **({"form": "qdq-fp16"} if p == "int8" else {}),
        )
        logits = run_logits(path, evalset.clips, threads)
        rows.append(
            {
                **accuracy_row(f"tensorrt-onnx-{p}", ref, logits, lab),
                "backend": "tensorrt (ONNX in ORT)",
                "precision": p,
                "what": f"the TensorRT {p} ONNX ({info.get('form')}), run in ONNX Runtime",
                "onnx": str(path),
            }
        )
        _log_row(rows[-1])
    return rows


def _versions() -> dict[str, str]:
    """Versions of torch, ONNX Runtime and (when installed) OpenVINO."""
    import onnxruntime as ort
    import torch

    versions = {"torch": torch.__version__, "onnxruntime": ort.__version__}
    try:
        import openvino

        versions["openvino"] = openvino.__version__.split("-")[0]
    except ImportError:
        pass
    return versions


def run_bench(
    model: str = DEFAULT_MODEL,
    n: int = 1600,
    clips: str | None = None,
    backends: tuple[str, ...] = ("onnxruntime", "openvino"),
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8"),
    tensorrt_files: bool = True,
    calib_clips: int = 64,
    seed: int = 0,
    threads: int | None = None,
    batch: int = 16,
    cache_dir: str | os.PathLike = "artifacts/cache",
    work_dir: str | os.PathLike = "artifacts/bench/accuracy/work",
) -> dict[str, Any]:
    """Build, run and score every bundle; returns the report."""
    import torch

    from calibration.clips.calibset import load_calibration_set, synthetic_spec
    from calibration.clips.synthetic import DEFAULT_TASK
    from models import load_source, model_task

    t0 = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    net, labels, pre, source = load_source(model, seed)
    if labels is None:
        raise ValueError(
            f"--model {model}: has no class names, so there is no accuracy to measure (a preset has "
            "random weights); use a trained checkpoint such as models/weights/motion16.safetensors"
        )
    task = model_task(net) or DEFAULT_TASK
    calib = synthetic_spec(task, seed)
    spec = clips or synthetic_spec(task, seed + EVAL_SEED_OFFSET)
    _log(f"1/4 {n} held-out clips of task {task!r} ({spec}); calibration on {calib}")
    evalset = load_calibration_set(spec, pre, n, seed)
    lab = _eval_labels(evalset, spec, labels)

    _log("2/4 FP32 PyTorch reference")
    ref = _reference_logits(net, evalset.clips, batch)
    rows = [
        {
            **accuracy_row("pytorch-fp32", ref, ref, lab),
            "backend": "pytorch",
            "precision": "fp32",
            "what": "the reference",
        }
    ]

    _log("3/4 bundles")
    rows += _bundle_rows(
        model, backends, precisions, calib, calib_clips, seed, threads, batch, cache_dir, work_dir, evalset, ref, lab
    )
    if tensorrt_files:
        _log("4/4 the TensorRT ONNX files, in ONNX Runtime")
        rows += _tensorrt_rows(
            net, labels, pre, source, precisions, calib, calib_clips, seed, threads, cache_dir, evalset, ref, lab
        )

    meta = getattr(getattr(net, "checkpoint", None), "metadata", None) or {}
    return {
        "model": model,
        "task": task,
        "source": source,
        "classes": len(labels),
        "recipe_heldout_accuracy": meta.get("heldout_accuracy"),
        "clips": {**evalset.info(), "spec": spec},
        "calibration": {"spec": calib, "clips": calib_clips, "source": calibration_source(calib)},
        "isa": measured_on(),  # issue 25: INT8 numbers depend on the CPU's INT8 instructions
        "rows": rows,
        "verdicts": verdicts(rows),
        "bars_points": BARS,
        "min_clips_for_bars": MIN_CLIPS_FOR_BARS,
        "versions": _versions(),
        "machine": machine(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def markdown(rep: dict[str, Any]) -> str:
    n = rep["clips"]["n_clips"]
    lines = [
        f"# Accuracy: {rep['model']} (task {rep['task']}, {rep['classes']} classes)",
        "",
        f"{n} held-out clips from `{rep['clips']['spec']}` (one clip = {100 / n:.3f} points); calibration "
        f"`{rep['calibration']['spec']}`, {rep['calibration']['clips']} clips. Reference: FP32 PyTorch. "
        f"{rep['date']}, {rep['seconds']} s.",
        "",
        machine_line(rep["machine"]),
        "",
        provenance_line(rep.get("isa") or {}, rep["calibration"].get("source") or {}),
        "",
    ]
    lines += markdown_table(
        [
            "engine",
            "top-1 accuracy",
            "vs FP32 (points)",
            "lost / gained clips",
            "top-1 agree",
            "mean cosine",
            "min cosine",
            "what",
        ],
        [
            [
                r["name"],
                f"{100 * r['accuracy']:.2f}%",
                f"{r['delta_points']:+.2f}",
                f"{r['lost']} / {r['gained']}",
                f"{100 * r['top1_agreement']:.2f}%",
                f"{r['mean_cosine']:.6f}",
                f"{r['min_cosine']:.6f}",
                r["what"],
            ]
            for r in rep["rows"]
        ],
    )
    bars = "Bars (issue 15): INT8 within {int8} points of FP32, FP16 within {fp16}.".format(**rep["bars_points"])
    lines += ["", bars, ""]
    for v in rep["verdicts"]:
        state = (
            "not judged: fewer than {} clips".format(rep["min_clips_for_bars"])
            if v["met"] is None
            else "met"
            if v["met"]
            else "**NOT met**"
        )
        lines.append(f"- {v['name']}: {v['delta_points']:+.2f} points (bar ±{v['bar']}): {state}")
    return "\n".join(lines) + "\n"


@user_errors("python -m export.bench.accuracy")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m export.bench.accuracy", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a trained checkpoint with class names")
    ap.add_argument("--n", type=int, default=1600, help="held-out clips (>= 1000 for a verdict on the bars)")
    ap.add_argument("--clips", default=None, help="evaluation clips (default: the model's task, seed + 9000)")
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--precisions", default="fp32,fp16,int8")
    ap.add_argument("--no-tensorrt-files", action="store_true", help="leave out the TensorRT ONNX rows")
    ap.add_argument("--calib-clips", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default="artifacts/cache")
    ap.add_argument("--out", "--out-dir", dest="out_dir", default="artifacts/bench/accuracy")
    a = ap.parse_args(argv)
    if a.n < 1:
        raise ValueError(f"--n: expected a positive number of clips, got {a.n}")
    backends = tuple(b for b in a.backends.split(",") if b)
    for b in backends:
        if b not in ("onnxruntime", "openvino"):
            raise ValueError(
                f"--backends: expected onnxruntime and/or openvino, got {b!r} (TensorRT's files are "
                "the tensorrt-onnx rows)"
            )
    precisions = tuple(p for p in a.precisions.split(",") if p)
    for p in precisions:
        if p not in BARS:
            raise ValueError(f"--precisions: expected fp32, fp16 and/or int8, got {p!r}")
    rep = run_bench(
        a.model,
        a.n,
        a.clips,
        backends,
        precisions,
        not a.no_tensorrt_files,
        a.calib_clips,
        a.seed,
        a.threads,
        cache_dir=a.cache_dir,
        work_dir=Path(a.out_dir) / "work",
    )
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "accuracy.json", rep)
    text = markdown(rep)
    write_text_atomic(out / "accuracy.md", text)
    print(text)
    print(f"wrote {out / 'accuracy.json'} and {out / 'accuracy.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
