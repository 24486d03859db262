"""``python -m runtime check BUNDLE``: does this device compute what the build computed, and how fast?

With only the runtime installed (numpy and the bundle's backend; no torch): parity of the engine against the
bundle's stored reference (``runtime/reference.py``) with the build's tolerances, per clip; the first diverging
block where the backend can expose block outputs (on failure, or ``--blocks always``); latency and throughput the
way trtexec / benchmark_app report them (``runtime/latency.py``); a per-layer profile (``runtime/probes.py``); and
the device fingerprint (``runtime/device.py``). Prints a short summary, writes one JSON report with ``--out``.
Exit status: 0 parity passed, 1 parity failed, 2 a user error (no such bundle, a tampered or missing reference).
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

from .cli_args import ArgumentParser, user_errors
from .cpu_isa import cpu_isa
from .device import fingerprint, summary
from .engine import Engine
from .files import check_report_file, write_json_atomic
from .reference import has_reference, load_reference, stored_parity

__all__ = ["run_check", "summary_lines", "main"]


def run_check(
    bundle: str | Path,
    device: str = "auto",
    threads: int | None = None,
    parity: bool = True,
    blocks: str = "on-failure",
    latency: bool = True,
    batches: list[int] | None = None,
    concurrency: list[int] | None = None,
    warmup: int = 2,
    iterations: int = 10,
    duration: float = 2.0,
    profile: bool = True,
    profile_iterations: int = 3,
) -> dict[str, Any]:
    """The check as a JSON-ready dict (see the module docstring); raises BundleError/ValueError on user errors."""
    from .latency import latency_report
    from .probes import block_report, layer_profile

    if blocks not in ("always", "on-failure", "never"):
        raise ValueError(f"--blocks: expected always, on-failure or never, got {blocks!r}")
    opts: dict[str, Any] = {"threads": threads} if threads is not None else {}
    with Engine(bundle, device=device, verify_on_device="never", **opts) as engine:
        m = engine.manifest
        # before any timing: a tampered or missing reference stops here (only --no-parity runs without one)
        ref = load_reference(engine.bundle_dir, m) if parity or has_reference(m) else None
        report: dict[str, Any] = {
            "tool": "python -m runtime check",
            "bundle": str(bundle),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": fingerprint(),
            "cpu_isa": cpu_isa().describe(),
            "engine": engine.describe(),
            "built": {
                "backend": m["backend"],
                "backend_version": m.get("backend_version"),
                "precision": m["precision"],
                **{k: (m.get("build") or {}).get(k) for k in ("date", "host", "machine", "speed_vs_fp32")},
                "parity": {
                    k: (m.get("parity") or {}).get(k)
                    for k in ("max_abs_logit", "min_cosine", "top1_agreement", "passed")
                },
            },
            "parity": None,
            "blocks": None,
            "latency": None,
            "profile": None,
        }
        if parity and ref is not None:  # with parity, the reference was loaded above (or raised)
            report["parity"] = stored_parity(engine, ref)
            if blocks == "always" or (blocks == "on-failure" and not report["parity"]["passed"]):
                report["blocks"] = block_report(engine, ref)
        x = ref.inputs(engine.input_dtype) if ref is not None else _random_clips(engine)
        if latency:
            report["latency"] = latency_report(engine, x, batches, concurrency, warmup, iterations, duration)
        if profile:
            report["profile"] = layer_profile(engine, x[: engine.batch_range[0]], profile_iterations)
    report["passed"] = None if report["parity"] is None else report["parity"]["passed"]
    return report


def _random_clips(engine: Engine) -> Any:
    import numpy as np

    x = np.random.default_rng(0).standard_normal((engine.batch_range[0], *engine.clip_shape))
    if engine.input_dtype.kind == "f":
        return x.astype(engine.input_dtype)
    return (x * 40 + 128).clip(0, 255).astype(np.uint8)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e-2 else f"{v:.6f}" if v > 0.99 else f"{v:.4g}"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The short human summary of a report."""
    b = report["built"]
    lines = [
        f"check {report['bundle']}: {b['backend']} {b['precision']} (built {b.get('date') or '?'} on "
        f"{b.get('host') or '?'} {b.get('machine') or ''})".rstrip(),
        f"device: {summary(report['device'])}",
    ]
    speed = b.get("speed_vs_fp32")
    if speed and "error" in speed:
        lines.append(f"INT8 against ONNX Runtime FP32 was not timed at the build: {speed['error']}")
    elif speed:  # a CPU INT8 bundle timed itself against FP32 where it was built (issue 25)
        there = (
            f"INT8 took {speed['ratio']:.2f}x the time of ONNX Runtime FP32 there"
            if speed.get("ratio") is not None
            else "INT8 against ONNX Runtime FP32 there: no ratio claimed (its rounds disagreed)"
        )
        here = "" if speed.get("cpu") == report.get("cpu_isa") else f"; this CPU is {report.get('cpu_isa')}"
        lines.append(f"built on {speed.get('cpu')}: {there}{here}")
    p = report["parity"]
    if p is not None:
        mt, tol = p["metrics"], p["tolerance"]
        verdict = "PASSED" if p["passed"] else "FAILED: " + "; ".join(p["failures"])
        lines.append(f"parity vs stored FP32 PyTorch on {p['clips']} clips: {verdict}")
        lines.append(
            f"  max |dlogit| {_fmt(mt['max_abs_logit'])}, min cosine {_fmt(mt['min_cosine'])}, top-1 "
            f"agreement {mt['top1_agreement']:.3f}, top-5 {mt['top5_agreement']:.3f}; tolerance "
            + ", ".join(f"{k} {'<=' if k.startswith('max_') else '>='} {v:g}" for k, v in tol.items())
        )
        bp = b["parity"]
        if bp.get("max_abs_logit") is not None:
            lines.append(
                f"  at the build: max |dlogit| {_fmt(bp['max_abs_logit'])}, min cosine "
                f"{_fmt(bp['min_cosine'])}, top-1 agreement {bp['top1_agreement']:.3f}"
            )
        if p.get("vs_build_engine"):
            v = p["vs_build_engine"]
            lines.append(
                f"  against the build machine's engine: max |dlogit| {_fmt(v['max_abs_logit'])}, min cosine "
                f"{_fmt(v['min_cosine'])}"
            )
        for row in p["metrics"]["per_clip"]:
            if row["failures"]:
                lines.append(f"  clip {row['clip']}: {'; '.join(row['failures'])}")
    bl = report.get("blocks")
    if bl:
        if bl["available"]:
            first = bl["first_diverging_block"]
            worst = max(bl["blocks"], key=lambda r: r["rel_l2"])
            lines.append(
                f"blocks: first diverging block {first if first is not None else 'none'} (relative L2 > "
                f"{bl['threshold_rel_l2']:g}); worst block {worst['block']} at {worst['rel_l2']:.3g}"
            )
        else:
            lines.append(f"blocks: not available ({bl['note']})")
    lat = report.get("latency")
    for r in (lat or {}).get("runs", []):
        lines.append(
            f"latency batch {r['batch']} x{r['concurrency']} request{'s' * (r['concurrency'] > 1)}: p50 "
            f"{r['p50_ms']:.2f} p90 {r['p90_ms']:.2f} p99 {r['p99_ms']:.2f} max {r['max_ms']:.2f} ms "
            f"(first {r['first_ms']:.1f} ms, {r['iterations']} calls); "
            f"{r['throughput_clips_per_s']:.1f} clips/s"
        )
    prof = report.get("profile")
    if prof:
        if prof["available"]:
            top = ", ".join(f"{t['type']} {100 * (t['share'] or 0):.0f}%" for t in prof["by_type"][:4])
            lines.append(f"profile ({prof['source'].split(' (')[0]}, batch {prof['batch']}): {top}")
        else:
            lines.append(f"profile: not available ({prof['note']})")
    return lines


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


@user_errors("python -m runtime check", (RuntimeError,))  # a missing backend package, as python -m runtime
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m runtime check", description=__doc__.splitlines()[0])
    ap.add_argument("bundle", help="engine bundle directory (holds manifest.json)")
    ap.add_argument("--out", default=None, help="write the JSON report here")
    ap.add_argument("--device", default="auto", help="cpu, cuda[:N], tensorrt (ONNX Runtime providers) or auto")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the bundle's)")
    ap.add_argument(
        "--blocks",
        default="on-failure",
        choices=("always", "on-failure", "never"),
        help="localise a divergence block by block (default: when parity fails)",
    )
    ap.add_argument("--batch", default=None, help="batch sizes to time, e.g. 1,4 (default: the engine's min,opt,max)")
    ap.add_argument("--concurrency", default="1,2", help="concurrent requests to time at the smallest batch")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up calls per measurement")
    ap.add_argument("--iterations", type=int, default=10, help="at least this many timed calls per measurement")
    ap.add_argument("--duration", type=float, default=2.0, help="and at least this many seconds per measurement")
    ap.add_argument("--profile-iterations", type=int, default=3)
    ap.add_argument("--no-parity", action="store_true", help="skip the parity check")
    ap.add_argument("--no-latency", action="store_true", help="skip the timing")
    ap.add_argument("--no-profile", action="store_true", help="skip the per-layer profile")
    ap.add_argument("--json", action="store_true", help="print the JSON report instead of the summary")
    a = ap.parse_args(argv)
    if not Path(a.bundle).is_dir():
        raise ValueError(f"{a.bundle}: no such bundle directory")
    if a.out:  # before minutes of timing: never into the bundle, and a folder that exists
        check_report_file(a.out, [a.bundle])
    if a.warmup < 1 or a.iterations < 1 or a.duration < 0 or a.profile_iterations < 1:
        raise ValueError("--warmup, --iterations and --profile-iterations must be >= 1, --duration >= 0")
    report = run_check(
        a.bundle,
        a.device,
        a.threads,
        parity=not a.no_parity,
        blocks=a.blocks,
        latency=not a.no_latency,
        batches=_ints(a.batch) if a.batch else None,
        concurrency=_ints(a.concurrency),
        warmup=a.warmup,
        iterations=a.iterations,
        duration=a.duration,
        profile=not a.no_profile,
        profile_iterations=a.profile_iterations,
    )
    if a.out:
        write_json_atomic(a.out, report)
    print(json.dumps(report, indent=2, default=str) if a.json else "\n".join(summary_lines(report)), flush=True)
    if a.out:
        print(f"wrote {a.out}", file=sys.stderr)
    return 1 if report["passed"] is False else 0
