"""ONNX Runtime CPU latency by precision: FP32 vs the chosen INT8 form (and FP16, for information).

``python -m export.bench.precision [--model base] [--runs 5] [--warmup 2] [--all-forms] [--no-fp16]``

Base 8x224 with random weights (temporal layers perturbed, as ``make engine`` does for presets),
exported with the attention mode ONNX Runtime uses (:data:`export.onnx.attention.ORT_DEFAULT`), batch 1.
Every model is built through :func:`calibration.precision.build.precision_onnx` (cached in ``--cache-dir``),
timed in interleaved rounds (``--runs``, after ``--warmup`` calls; a speed-up is claimed only when the rounds agree),
and compared with FP32 on the
same clip (cosine). ``--all-forms`` times every INT8 form of :data:`calibration.precision.int8.ORT_FORMS` (how
the default was chosen). Prints a table and writes ``artifacts/bench/precision.json`` atomically.
The goal: INT8 at least :data:`GOAL_SPEEDUP` times faster than FP32.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.onnxruntime_session import cpu_session_options
from runtime.cli_args import ArgumentParser, user_errors

from export.bench.harness import (
    SPREAD_TOLERANCE,
    interleaved_rounds,
    logger,
    machine,
    machine_line,
    markdown_table,
    ratio_verdict,
    spread_stats,
    write_report,
)

_log = logger("precision")

GOAL_SPEEDUP = 2.5


def open_session(path: Path, threads: int | None) -> Any:
    """A quiet ONNX Runtime CPU session of ``path`` with every graph optimisation."""
    import onnxruntime as ort

    so = cpu_session_options(threads, level="all")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _variants(
    model: str, all_forms: bool, fp16: bool, calib: str | None, calib_clips: int, cache: Path, seed: int
) -> tuple[list[tuple[str, str | None, Path, dict[str, Any] | None]], Any, str]:
    """The models to time: (name, form, ONNX path, build info); the preprocessing and the attention mode."""
    from calibration.precision.int8 import ORT_FORMS
    from export.bundle.fp32_cache import cached_fp32_onnx
    from export.bundle.precision_step import precision_onnx
    from export.onnx.attention import ORT_DEFAULT
    from models import load_source

    net, labels, pre, source = load_source(model, seed)
    fp32 = cached_fp32_onnx(net, labels, pre, source, ORT_DEFAULT, cache, verbose=False)
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
    return variants, pre, ORT_DEFAULT


def run_bench(
    model: str = "base",
    runs: int = 5,
    warmup: int = 2,
    all_forms: bool = False,
    fp16: bool = True,
    calib: str | None = None,
    calib_clips: int = 4,
    cache_dir: str = "artifacts/cache",
    threads: int | None = None,
    seed: int = 0,
    tolerance: float = SPREAD_TOLERANCE,
) -> dict[str, Any]:
    """Build FP32 / INT8 (/ FP16) of ``model`` and time them in interleaved rounds; returns the results dict.

    A speed-up over FP32 is claimed (and the goal judged) only when both sides' rounds agree within ``tolerance``."""
    import onnxruntime as ort

    from calibration.clips.calibset import load_clips
    from calibration.precision.int8 import ORT_FORM_WHY
    from calibration.precision.metrics import cosine_rows

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    variants, pre, attention = _variants(model, all_forms, fp16, calib, calib_clips, cache, seed)
    x = load_clips(calib, pre, 1, seed + 777)[:1]
    sessions = {name: open_session(p, threads) for name, _, p, _ in variants}
    outs = {name: s.run(None, {s.get_inputs()[0].name: x})[0] for name, s in sessions.items()}
    _log.info(f"timing {', '.join(sessions)}: {warmup} warm-up + {runs} interleaved rounds")
    t = interleaved_rounds(
        {n: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for n, s in sessions.items()},
        runs,
        1,
        max(warmup - 1, 0),
    )
    del sessions
    gc.collect()
    ref = outs["fp32"]
    rows: list[dict[str, Any]] = []
    for name, form, p, info in variants:
        v = ratio_verdict(t.round_medians("fp32"), t.round_medians(name), tolerance, names=("fp32", name))
        st = spread_stats(t.flat(name))
        rows.append(
            {
                "name": name,
                "form": form,
                "onnx": str(p),
                **st,
                "max_s": float(np.max(t.flat(name))),
                "times_s": t.flat(name),
                "speedup_vs_fp32": v["ratio"],
                "speedup_reason": v["reason"],
                "speedup_median_vs_fp32": spread_stats(t.flat("fp32"))["median_s"] / st["median_s"],
                "cosine_vs_fp32": float(cosine_rows(ref, outs[name])[0]),
                "top1_same_as_fp32": bool(ref.argmax() == outs[name].argmax()),
                "build_seconds": info.get("seconds") if info else None,
            }
        )
    int8 = next(r for r in rows if r["name"] == "int8")
    return {
        "model": model,
        "attention": attention,
        "batch": 1,
        "runs": runs,
        "warmup": warmup,
        "threads": threads or "onnxruntime default",
        "rows": rows,
        "int8_form": int8["form"],
        "int8_speedup": int8["speedup_vs_fp32"],
        "int8_speedup_median": int8["speedup_median_vs_fp32"],
        "goal_speedup": GOAL_SPEEDUP,
        "goal_met": None if int8["speedup_vs_fp32"] is None else int8["speedup_vs_fp32"] >= GOAL_SPEEDUP,
        "why_this_form": ORT_FORM_WHY,
        "onnxruntime": ort.__version__,
        "machine": machine(),
    }


def format_table(res: dict[str, Any]) -> str:
    """The results as Markdown: one row per model, then the goal's verdict."""

    def speedup(r: dict[str, Any]) -> str:
        return (
            f"{r['speedup_vs_fp32']:.2f}x"
            if r["speedup_vs_fp32"] is not None
            else f"none claimed ({r['speedup_median_vs_fp32']:.2f}x median; rounds disagree)"
        )

    lines = [
        f"ONNX Runtime {res['onnxruntime']} CPU, {res['model']} (attention {res['attention']}), batch 1, "
        f"{res['runs']} interleaved rounds after {res['warmup']} warm-up",
        "",
        machine_line(res["machine"]),
        "",
    ]
    lines += markdown_table(
        ["model", "form", "median (s)", "min (s)", "spread (p10-p90)/median", "speed-up vs FP32", "cosine vs FP32"],
        [
            [
                r["name"],
                r["form"],
                f"{r['median_s']:.3f}",
                f"{r['min_s']:.3f}",
                f"{r['spread']:.0%}",
                speedup(r),
                f"{r['cosine_vs_fp32']:.5f}",
            ]
            for r in res["rows"]
        ],
    )
    if res["goal_met"] is None:
        verdict = f"not judged: {next(r for r in res['rows'] if r['name'] == 'int8')['speedup_reason']}"
    else:
        verdict = f"{res['int8_speedup']:.2f}x: goal >= {res['goal_speedup']}x {'met' if res['goal_met'] else 'MISSED'}"
    return "\n".join(lines + ["", f"INT8 ({res['int8_form']}) speed-up {verdict}"])


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
    res = run_bench(
        a.model, a.runs, a.warmup, a.all_forms, not a.no_fp16, a.calib, a.calib_clips, a.cache_dir, a.threads
    )
    out = Path(a.out)
    write_report(out.parent, out.stem, res)
    print(format_table(res))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
