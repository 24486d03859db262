"""The report of ``make bench-cpu`` (:mod:`export.bench.cpu`): ``cpu.md`` (engines, GEMM peaks, targets, load times)
and ``cpu.png`` (median latency per engine with each dtype's compute floor), from the report dict it writes to
``cpu.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.bench.harness import SPREAD_TOLERANCE, machine_line, markdown_table, pyplot, save_figure

__all__ = ["markdown", "plot"]


def _engine_row(name: str, r: dict[str, Any]) -> list[Any]:
    a = r["accuracy"]
    if r.get("ratio_vs_ort_fp32") is not None:
        ratio = f"{r['ratio_vs_ort_fp32']:.3f}"
    elif "ratio_median_vs_ort_fp32" in r:
        ratio = f"none claimed ({r['ratio_median_vs_ort_fp32']:.3f} median; rounds disagree)"
    else:
        ratio = None
    frac = f"{r['fraction_of_peak']:.0%} {r['dtype']}" if "fraction_of_peak" in r else None
    return [
        name,
        f"{r['median_s']:.4f}",
        f"{r['min_s']:.4f}",
        f"{r['spread']:.0%}",
        ratio,
        f"{r['gflops']:.0f}",
        frac,
        f"{a['mean_cosine']:.6f}",
        f"{a['min_cosine']:.6f}",
        f"{a['top1_agreement']:.2f}",
        f"{a['max_abs_logit']:.2e}",
        r["what"],
    ]


def _target_lines(report: dict[str, Any]) -> list[str]:
    lines = ["", "Targets (issue 18; latency ratios against our ONNX Runtime FP32 in this run):", ""]
    for name, c in report["targets"].items():
        if c["ratio"] is None:
            lines.append(f"- {name}: **not judged**: {c['reason']} (median ratio {c['ratio_median']:.3f}x)")
            continue
        lines.append(
            f"- {name}: {c['ratio']:.3f}x (needs <= {c['max_ratio']}), mean cosine {c['mean_cosine']:.6f} "
            f"(needs >= {c['min_mean_cosine']}): **{'passed' if c['passed'] else 'NOT met'}**"
        )
    return lines


def _accuracy_sets(report: dict[str, Any]) -> list[str]:
    """Accuracy per held-out set (synthetic clips, real footage, noise frames), with the INT8 calibration source."""
    rows = [(n, r) for n, r in report["results"].items() if r["group"] != "gemm" and "sets" in r["accuracy"]]
    if not rows:
        return []
    names = list(rows[0][1]["accuracy"]["sets"])
    calib = (report.get("calibration") or {}).get("describe", report.get("calib", "?"))
    lines = [
        "",
        f"Accuracy against FP32 PyTorch per held-out set (mean / min cosine, top-1 agreement); INT8 "
        f"calibrated on {calib}:",
        "",
    ]
    lines += markdown_table(
        ["engine"] + [f"{k} ({rows[0][1]['accuracy']['sets'][k]['clips']} clips)" for k in names],
        [
            [n]
            + [
                "{mean_cosine:.5f} / {min_cosine:.5f} / {top1_agreement:.2f}".format(**r["accuracy"]["sets"][k])
                for k in names
            ]
            for n, r in rows
        ],
    )
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: one table of engines, one of GEMM peaks, the targets and the load times."""
    res = report["results"]
    lines = [
        f"# CPU benchmark: {report['model']} ({report['gflop_per_clip']:.1f} GFLOP per clip), batch 1",
        "",
        f"{report['threads']} threads; {machine_line(report['machine'])}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "openvino_capabilities")
        + f". {report['rounds']} interleaved rounds after {report['warmup']} warm-up; a ratio is claimed only when "
        f"both sides' rounds spread at most {report.get('spread_tolerance', SPREAD_TOLERANCE):.0%} of their "
        f"median. Accuracy on {report['eval_clips']} held-out clips (seed {report['eval_seed']}) against FP32 "
        "PyTorch.",
        "",
    ]
    lines += markdown_table(
        [
            "engine",
            "median s",
            "min s",
            "spread (p10-p90)/median",
            "vs ORT FP32",
            "GFLOP/s",
            "of its peak",
            "mean cosine",
            "min cosine",
            "top-1 agree",
            "max abs dlogit",
            "what",
        ],
        [_engine_row(n, r) for n, r in res.items() if r["group"] != "gemm"],
    )
    lines += ["", "Peak of this machine in the same run (best GEMM round):", ""]
    lines += markdown_table(
        ["GEMM", "median s", "best GFLOP/s (GOP/s for int8)", "compute floor per clip at that peak"],
        [
            [
                r["what"],
                f"{r['median_s']:.4f}",
                f"{r['gflops_best']:.0f}",
                f"{report['gflop_per_clip'] / r['gflops_best']:.3f} s",
            ]
            for r in res.values()
            if r["group"] == "gemm"
        ],
    )
    lines += [
        "",
        "Peak used per dtype (best GEMM): "
        + ", ".join(f"{d} {v:.0f} GFLOP/s" for d, v in report["peak_gflops"].items())
        + " (a lower bound: a whole model can run faster than a GEMM that misses the hardware's peak).",
    ]
    lines += _accuracy_sets(report)
    if report["targets"]:
        lines += _target_lines(report)
    if report["load"]:
        lines += ["", "OpenVINO bundle load (compiled-model cache in a user folder):", ""]
        for name, d in report["load"].items():
            lines.append(
                f"- {name}: first load {d['first_load_s']:.2f} s (compile), second {d['second_load_s']:.2f} s "
                f"(from cache: {d['second_from_cache']})"
            )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Median latency per engine (bars, p10-p90 whiskers) with the compute floor of each dtype's measured peak."""
    plt = pyplot()
    rows = [(n, r) for n, r in report["results"].items() if r["group"] != "gemm"]
    colors = {"anchor": "#999999", "ours": "#1f77b4"}
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    y = np.arange(len(rows))
    med = np.array([r["median_s"] for _, r in rows])
    lo = med - np.array([r["p10_s"] for _, r in rows])
    hi = np.array([r["p90_s"] for _, r in rows]) - med
    ax.barh(y, med, xerr=[lo, hi], color=[colors[r["group"]] for _, r in rows], capsize=3)
    ax.set_yticks(y, [f"{n} ({r['dtype']})" for n, r in rows])
    ax.invert_yaxis()
    styles = {"fp32": ":", "bf16": "--", "int8": "-."}
    for d, peak in report["peak_gflops"].items():
        ax.axvline(
            report["gflop_per_clip"] / peak,
            color="k",
            linestyle=styles[d],
            linewidth=1,
            label=f"{d} floor at the GEMM peak ({peak:.0f} GFLOP/s)",
        )
    ax.set_xlabel("seconds per clip (median; whiskers p10-p90)")
    ax.set_title(
        f"{report['model']}, batch 1, {report['threads']} threads: {report['machine']['cpu']['model']}", fontsize=9
    )
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)
