"""ONNX Runtime CPU latency by precision: FP32 vs the chosen INT8 form (and FP16, for information).

``python -m export.bench.precision [--model base] [--runs 5] [--warmup 2] [--all-forms] [--no-fp16]``

Base 8x224 with random weights (temporal layers perturbed, as ``make engine`` does for presets),
exported with the attention mode ONNX Runtime uses (:data:`export.onnx.attention.ORT_DEFAULT`), batch 1.
Every model is built through :func:`calibration.precision.build.precision_onnx` (cached in ``--cache-dir``),
timed in one run as the median of ``--runs`` after ``--warmup`` calls, and compared with FP32 on the
same clip (cosine). ``--all-forms`` times every INT8 form of :data:`calibration.precision.int8.ORT_FORMS` (how
the default was chosen). Prints a table and writes ``artifacts/bench/precision.json`` atomically.
The goal: INT8 at least :data:`GOAL_SPEEDUP` times faster than FP32.
"""
from __future__ import annotations

import datetime as _dt
import gc
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cli_args import ArgumentParser

from runtime.cli_args import user_errors

GOAL_SPEEDUP = 2.5


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def time_session(path: Path, x: np.ndarray, runs: int, warmup: int, threads: int | None
                 ) -> tuple[list[float], np.ndarray]:
    """Latencies (s) of ``runs`` calls after ``warmup`` calls, and the output logits."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = sess.run(None, {name: x})[0]
    for _ in range(max(warmup - 1, 0)):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t)
    del sess
    gc.collect()
    return times, out


def run_bench(model: str = "base", runs: int = 5, warmup: int = 2, all_forms: bool = False, fp16: bool = True,
              calib: str | None = None, calib_clips: int = 4, cache_dir: str = "artifacts/cache",
              threads: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Build and time FP32 / INT8 (/ FP16) of ``model``; returns the results dict."""
    import onnxruntime as ort

    from export.onnx.attention import ORT_DEFAULT
    from models import load_source

    from export.bundle.fp32_cache import cached_fp32_onnx
    from calibration.precision.metrics import cosine_rows

    from export.bundle.precision_step import precision_onnx
    from calibration.clips.calibset import load_clips
    from calibration.precision.int8 import ORT_FORM_WHY, ORT_FORMS

    load_start = os.getloadavg()[0]
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    net, labels, pre, source = load_source(model, seed)
    attention = ORT_DEFAULT
    fp32 = cached_fp32_onnx(net, labels, pre, source, attention, cache, verbose=False)
    del net
    gc.collect()
    variants: list[tuple[str, str | None, Path, dict[str, Any] | None]] = [("fp32", "fp32", fp32, None)]
    path, info = precision_onnx(fp32, "int8", "onnxruntime", calib, pre, calib_clips, "max", cache, seed)
    variants.append(("int8", info["form"], path, info))
    if all_forms:
        for form in ORT_FORMS:
            if form == {"dynamic": "dynamic", "qdq-static": "qdq", "qoperator-static": "qoperator"}.get(info["form"]):
                continue
            p, i = precision_onnx(fp32, "int8", "onnxruntime", calib, pre, calib_clips, "max", cache, seed, form=form)
            variants.append((f"int8 ({form})", i["form"], p, i))
    if fp16:
        p, i = precision_onnx(fp32, "fp16", "onnxruntime", calib, pre, calib_clips, "max", cache, seed)
        variants.append(("fp16", "fp16", p, i))

    x = load_clips(calib, pre, 1, seed + 777)[:1]
    rows: list[dict[str, Any]] = []
    ref = None
    for name, form, p, info in variants:
        _log(f"timing {name} ({p.name}): {warmup} warm-up + {runs} runs")
        times, out = time_session(p, x, runs, warmup, threads)
        if ref is None:
            ref = out
        rows.append({"name": name, "form": form, "onnx": str(p), "median_s": float(np.median(times)),
                     "min_s": float(np.min(times)), "max_s": float(np.max(times)), "times_s": times,
                     "cosine_vs_fp32": float(cosine_rows(ref, out)[0]),
                     "top1_same_as_fp32": bool(ref.argmax() == out.argmax()),
                     "build_seconds": info.get("seconds") if info else None})
    base = rows[0]["median_s"]
    for r in rows:
        r["speedup_vs_fp32"] = base / r["median_s"]
    int8 = next(r for r in rows if r["name"] == "int8")
    return {
        "model": model, "attention": attention, "batch": 1, "runs": runs, "warmup": warmup,
        "threads": threads or "onnxruntime default", "rows": rows, "int8_form": int8["form"],
        "int8_speedup": int8["speedup_vs_fp32"], "goal_speedup": GOAL_SPEEDUP,
        "goal_met": int8["speedup_vs_fp32"] >= GOAL_SPEEDUP, "why_this_form": ORT_FORM_WHY,
        "onnxruntime": ort.__version__, "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "processor": platform.processor(), "host": platform.node(),
        "load_average_at_start": load_start, "load_average_at_end": os.getloadavg()[0],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def format_table(res: dict[str, Any]) -> str:
    lines = [f"ONNX Runtime {res['onnxruntime']} CPU, {res['model']} (attention {res['attention']}), batch 1, "
             f"median of {res['runs']} after {res['warmup']} warm-up, load average {res['load_average_at_start']:.1f}",
             "", "| model | form | median (s) | min (s) | speed-up vs FP32 | cosine vs FP32 |",
             "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['name']} | {r['form']} | {r['median_s']:.3f} | {r['min_s']:.3f} | "
                     f"{r['speedup_vs_fp32']:.2f}x | {r['cosine_vs_fp32']:.5f} |")
    lines += ["", f"INT8 ({res['int8_form']}) speed-up {res['int8_speedup']:.2f}x: goal >= {res['goal_speedup']}x "
              f"{'met' if res['goal_met'] else 'MISSED'}"]
    return "\n".join(lines)


@user_errors("make bench-precision")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m export.bench.precision", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="base", help="preset or checkpoint (default base = base_8x224_k400)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--all-forms", action="store_true", help="time every ONNX Runtime INT8 form")
    ap.add_argument("--no-fp16", action="store_true")
    ap.add_argument("--calib", default=None, help="calibration clips (default synthetic)")
    ap.add_argument("--calib-clips", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache-dir", default="artifacts/cache")
    ap.add_argument("--out", default="artifacts/bench/precision.json")
    a = ap.parse_args(argv)
    res = run_bench(a.model, a.runs, a.warmup, a.all_forms, not a.no_fp16, a.calib, a.calib_clips, a.cache_dir,
                    a.threads)
    from runtime.files import write_json_atomic

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, res)
    print(format_table(res))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
