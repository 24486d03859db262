"""INT8 on outlier versions of a model: plain vs SmoothQuant, for the TensorRT Q/DQ ONNX and the shipped ONNX Runtime
form, against the FP32 PyTorch reference (issue 15's bar: mean cosine >= 0.999, min cosine >= 0.99, top-1
agreement >= 99%).

``python -m export.bench.outliers [--model models/weights/motion_tiny.safetensors] [--scales 10,40,100]
[--channels 1,4,8] [--n 200] [--out artifacts/bench/outliers]``

Each outlier model (:func:`models.outliers.add_outliers`, exact in FP32) is exported once per target attention
form, built through :func:`export.bundle.precision_step.precision_onnx` exactly as ``make engine`` builds it (``smooth``
off, then the default), and run in ONNX Runtime CPU on ``--n`` held-out synthetic clips (seed 9000, never
calibrated on). S = 1 is the model as it is. Writes ``outliers.json`` and ``outliers.md`` atomically.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from pathlib import Path
from typing import Any


from runtime.log import progress
from runtime.cli_args import ArgumentParser
from runtime.files import sha256_json, write_json_atomic, write_text_atomic

from runtime.cli_args import user_errors

from calibration.precision.provenance import calibration_source, measured_on, provenance_line

from export.bench.harness import machine, machine_line, markdown_table

BAR = {"mean_cosine": 0.999, "min_cosine": 0.99, "top1_agreement": 0.99}


_log = progress("bench-outliers", __name__)


def meets_bar(m: dict[str, Any]) -> bool:
    return all(m[k] >= v for k, v in BAR.items())


#: what the sweep scores: the TensorRT Q/DQ file and ONNX Runtime's form in ONNX Runtime, and the OpenVINO bundle's
#: model in OpenVINO (built from the TensorRT file)
TARGETS = ("tensorrt", "onnxruntime", "openvino")


def _row(
    s: float, c: int, target: str, form: str, sq: dict[str, Any] | None, m: dict[str, Any], tried: Any = None
) -> dict[str, Any]:
    """One sweep row from the metrics ``m`` against FP32 PyTorch, logged as it is made."""
    keys = ("mean_cosine", "min_cosine", "top1_agreement", "top5_agreement", "top1_accuracy", "top1_accuracy_reference")
    row = {
        "scale": s,
        "channels": c,
        "target": target,
        "form": form,
        "smooth": None if sq is None else sq.get("alpha"),
        **{k: m.get(k) for k in keys},
        "meets_bar": meets_bar(m),
        "forms_tried": tried,
    }
    _log(
        f"S={s:g} C={c} {target} {form} smooth={row['smooth']}: mean cos {m['mean_cosine']:.5f} "
        f"min {m['min_cosine']:.4f} top-1 agree {m['top1_agreement']:.3f} -> "
        f"{'meets' if row['meets_bar'] else 'MISSES'} the bar"
    )
    return row


def _openvino_logits(qdq: Path, form: str, clips: Any, work: Path) -> tuple[Any, str]:
    """The OpenVINO INT8 bundle's model as OpenVINO runs it on this CPU: the Q/DQ file (built for the CPU INT8
    ``form``, as ``make engine`` builds it) in that form, compiled by the OpenVINO CPU plugin with f32 inference
    precision, clip by clip. Returns the logits and the form's name."""
    import numpy as np
    import onnx

    from runtime.backends.openvino_backend import import_openvino

    from calibration.precision.cpu_int8 import to_cpu_int8_form

    model = onnx.load(str(qdq))
    to_cpu_int8_form(model, form)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{qdq.stem}-{form}.onnx"
    onnx.save(model, str(path))
    try:
        compiled = import_openvino().Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    finally:
        path.unlink()
    return np.concatenate([compiled(clips[i : i + 1])[0] for i in range(len(clips))]), f"tensorrt q/dq, cpu form {form}"


def run(
    model: str,
    scales: list[float],
    channels: list[int],
    n: int,
    calib_clips: int,
    method: str,
    cache_dir: str,
    seed: int = 0,
    smooths: tuple[Any, ...] = (None, "default"),
    targets: tuple[str, ...] = TARGETS,
) -> dict[str, Any]:
    import torch

    from calibration.clips.calibset import load_calibration_set
    from calibration.precision.int8 import outlier_defaults
    from calibration.precision.int8_search import run_logits
    from calibration.precision.metrics import compare_logits
    from calibration.precision.smoothquant import ort_smoothquant_available
    from models import load_source
    from models.outliers import add_outliers

    from export.onnx.attention import default_attention
    from export.bundle.fp32_cache import cached_fp32_onnx
    from export.bundle.precision_step import precision_onnx

    from calibration.precision.cpu_int8 import choose_cpu_int8_form

    t0 = time.perf_counter()
    cache = Path(cache_dir)
    cpu_form = choose_cpu_int8_form()[0] if "openvino" in targets else None
    net, labels, pre, source = load_source(model, seed)
    ev = load_calibration_set(f"synthetic:{seed + 9000}", pre, n, seed, progress=False)
    rows = []
    combos = [(1.0, 0)] + [(float(s), int(c)) for s in scales for c in channels]
    for s, c in combos:
        onet, rec = (net, None) if c == 0 else add_outliers(net, s, c, seed)
        with torch.no_grad():
            ref = torch.cat([onet(torch.from_numpy(ev.clips[i : i + 8])) for i in range(0, len(ev), 8)]).numpy()
        src = {
            "checkpoint": f"{source['checkpoint']} + outliers S={s:g} C={c}",
            "checkpoint_sha256": sha256_json(source["checkpoint_sha256"], rec),
        }
        for target in targets:
            # OpenVINO reads the TensorRT form, with 7-bit weights from float where its CPU form is portable
            qdq_target = "tensorrt" if target == "openvino" else target
            seven = {"weight_bits": 7} if target == "openvino" and cpu_form == "portable" else {}
            fp32 = cached_fp32_onnx(onet, labels, pre, src, default_attention(qdq_target), cache, verbose=False)
            for smooth in smooths:
                path, info = precision_onnx(
                    fp32,
                    "int8",
                    qdq_target,
                    None,
                    pre,
                    calib_clips,
                    method,
                    cache,
                    seed,
                    progress=False,
                    int8_options={"smooth": smooth, **seven},
                )
                sq = info["detail"].get("smoothquant")
                if target == "openvino":
                    out, form = _openvino_logits(path, cpu_form, ev.clips, cache / "outliers-openvino")
                    rows.append(_row(s, c, "openvino", form, sq, compare_logits(ref, out, ev.labels)))
                else:
                    m = compare_logits(ref, run_logits(path, ev.clips), ev.labels)
                    rows.append(_row(s, c, target, info["form"], sq, m, info["detail"].get("forms_tried")))
    ok, why = ort_smoothquant_available()
    return {
        "model": model,
        "clips": {"spec": ev.spec, "n": len(ev), "sha256": ev.sha256},
        "calibration": {"calib": "synthetic", "clips": calib_clips, "method": method, "seed": seed},
        "bar": BAR,
        "outlier_defaults": outlier_defaults(),
        "rows": rows,
        "ort_smoothquant": {"available": ok, "note": why},
        "reference": "PyTorch FP32 of the same outlier model",
        "machine": machine(),
        "isa": measured_on(),  # issue 25: INT8 numbers depend on the CPU's INT8 instructions
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def markdown(rep: dict[str, Any]) -> str:
    lines = [
        f"# INT8 on outlier versions of `{rep['model']}`",
        "",
        f"{rep['clips']['n']} held-out clips `{rep['clips']['spec']}`; calibration {rep['calibration']}; "
        f"bar {rep['bar']} vs {rep['reference']}.",
        "",
        provenance_line(rep.get("isa") or {}, calibration_source(rep["calibration"]["calib"])),
        "",
    ]

    def acc(r: dict[str, Any]) -> str | None:
        if r.get("top1_accuracy") is None:
            return None
        return f"{100 * r['top1_accuracy_reference']:.1f}% → {100 * r['top1_accuracy']:.1f}%"

    lines += markdown_table(
        [
            "S",
            "channels",
            "target",
            "form",
            "SmoothQuant α",
            "mean cos",
            "min cos",
            "top-1 agree",
            "top-5 agree",
            "acc (FP32 → INT8)",
            "bar",
        ],
        [
            [
                f"{r['scale']:g}",
                r["channels"],
                r["target"],
                r["form"],
                "off" if r["smooth"] is None else r["smooth"],
                f"{r['mean_cosine']:.5f}",
                f"{r['min_cosine']:.4f}",
                f"{100 * r['top1_agreement']:.1f}%",
                f"{100 * r['top5_agreement']:.1f}%",
                acc(r),
                "yes" if r["meets_bar"] else "**no**",
            ]
            for r in rep["rows"]
        ],
    )
    sm = [r for r in rep["rows"] if r["smooth"] is not None]
    lines += [
        "",
        f"With SmoothQuant: {sum(r['meets_bar'] for r in sm)}/{len(sm)} meet the bar; without: "
        f"{sum(r['meets_bar'] for r in rep['rows'] if r['smooth'] is None)}/"
        f"{sum(1 for r in rep['rows'] if r['smooth'] is None)}.",
        f"ONNX Runtime's own SmoothQuant: {'available' if rep['ort_smoothquant']['available'] else 'not usable'}"
        f" ({rep['ort_smoothquant']['note']}).",
        f"{rep['seconds']} s on {machine_line(rep['machine'])}.",
    ]
    return "\n".join(lines) + "\n"


@user_errors("python -m export.bench.outliers")
def main(argv: list[str] | None = None) -> int:
    from export.bundle.options import CALIB_METHODS, DEFAULT_MODEL, DEFAULTS  # the build's option table

    ap = ArgumentParser(prog="python -m export.bench.outliers", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--scales", default="10,40,100")
    ap.add_argument("--channels", default="1,4,8")
    ap.add_argument("--n", type=int, default=200, help="held-out clips (default 200)")
    ap.add_argument("--calib-clips", type=int, default=32)
    ap.add_argument("--method", default=DEFAULTS["calib_method"], choices=CALIB_METHODS)
    ap.add_argument("--cache-dir", default="artifacts/cache")
    ap.add_argument("--out", default="artifacts/bench/outliers")
    ap.add_argument("--default-only", action="store_true", help="only the default build (no SmoothQuant-off rows)")
    ap.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="comma-separated: tensorrt (its Q/DQ file in ONNX Runtime), onnxruntime, openvino (needs OpenVINO)",
    )
    a = ap.parse_args(argv)
    try:
        scales = [float(s) for s in a.scales.split(",") if s.strip()]
        chans = [int(c) for c in a.channels.split(",") if c.strip()]
    except ValueError as e:
        ap.error(f"--scales/--channels: comma-separated numbers expected ({e})")
    from runtime.backends.openvino_backend import openvino_available

    targets = tuple(t.strip() for t in a.targets.split(",") if t.strip())
    if not targets or any(t not in TARGETS for t in targets):
        ap.error(f"--targets: expected a comma-separated subset of {','.join(TARGETS)}, got {a.targets!r}")
    if "openvino" in targets and not openvino_available()[0]:
        ap.error(f"--targets openvino: {openvino_available()[1]}")
    smooths = ("default",) if a.default_only else (None, "default")
    rep = run(a.model, scales, chans, a.n, a.calib_clips, a.method, a.cache_dir, smooths=smooths, targets=targets)
    out = Path(a.out)
    write_json_atomic(out / "outliers.json", rep)
    write_text_atomic(out / "outliers.md", markdown(rep))
    print(markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
