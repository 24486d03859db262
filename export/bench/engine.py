"""``make bench ENGINE=<bundle>``: latency and throughput of an engine bundle on this machine.

In one run: warm-up, then per batch size the latency p50/p90/p99 and throughput of ``Engine.infer``;
the runtime's preprocessing (raw 640x480 frames -> the bundle's clip, and the published 8x224
contract) timed apart; the streaming buffer's cost per frame; peak host memory (and device memory on
GPUs); the machine and library versions; and the PyTorch eager FP32 reference timed in the same run
on the same machine. Writes JSON, a Markdown table and a PNG plot of latency against batch size.

Other load on the machine (or thread oversubscription: PyTorch eager with OpenMP threads on busy cores
can slow down 20x from one call to the next) makes single measurements meaningless, and a ratio of two
of them can be anything. So the engine and PyTorch eager run in interleaved rounds (``--rounds``, 5 by
default; who goes first alternates), each side is reported as the median of its round medians with
the min..max and IQR, the load average is recorded before and after, and a speed-up is claimed only when
each side's rounds spread (max - min) at most ``--tolerance`` (25%) of their median: otherwise the JSON
says ``speedup_vs_torch_eager: null`` with the reason, and the table, the plot and stderr warn.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.cli_args import ArgumentParser, user_errors

from export.bench.harness import (
    ROUNDS,
    SPREAD_TOLERANCE,
    check_report_dir,
    interleaved_rounds,
    load_average,
    machine,
    machine_line,
    logger,
    markdown_table,
    percentiles,
    pyplot,
    ratio_verdict,
    save_figure,
    summarize_rounds,
    time_call,
    write_report,
)

_log = logger("bench")


def bench_preprocess(preprocess, iters: int = 30, height: int = 480, width: int = 640) -> dict[str, Any]:
    """Raw ``height x width`` uint8 frames -> one canonical clip, in this thread (one core)."""
    from runtime.preprocess import preprocess_frames

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (preprocess.num_frames, height, width, 3), dtype=np.uint8)
    out = np.empty((preprocess.num_frames, 3, preprocess.crop_size, preprocess.crop_size), np.float32)
    samples = time_call(lambda: preprocess_frames(frames, preprocess, out=out), iters, 3)
    return {
        "source": f"{width}x{height}",
        "frames": preprocess.num_frames,
        "crop": preprocess.crop_size,
        **percentiles(samples),
    }


def bench_stream(engine, frames: int = 0) -> dict[str, Any]:
    """Streaming buffer: cost per pushed frame (inference excluded) and whether a prediction copies the window."""
    from runtime.preprocess import FramePreprocessor

    stream = engine.stream()
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    pre = FramePreprocessor(engine.preprocess, 480, 640)
    slot = np.empty(pre.out_shape, np.float32)
    samples = time_call(lambda: pre(frame, slot), 30, 3)
    view = stream.window_view
    return {
        "preprocess_per_sampled_frame": percentiles(samples),
        "every": stream.every,
        "window_is_view_of_ring": bool(np.shares_memory(view, stream._ring)),
    }


def _device_memory() -> dict[str, Any] | None:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]
        except ImportError:
            return None
    err, free, total = cudart.cudaMemGetInfo()
    if int(err) != 0:
        return None
    return {"used_mib": round((total - free) / 2**20, 1), "total_mib": round(total / 2**20, 1)}


def speedup_verdict(
    engine_rounds: list[float], torch_rounds: list[float], tolerance: float = SPREAD_TOLERANCE
) -> dict[str, Any]:
    """:func:`export.bench.harness.ratio_verdict` of PyTorch eager over the engine (a speed-up), with the sides
    named: ``engine``, ``torch_eager``, ``speedup``, ``speedup_range`` and ``reason``."""
    v = ratio_verdict(torch_rounds, engine_rounds, tolerance, names=("PyTorch eager", "engine"))
    return {
        "engine": v["reference"],
        "torch_eager": v["subject"],
        "tolerance": tolerance,
        "speedup": v["ratio"],
        "speedup_range": v["ratio_range"],
        "reason": v["reason"] and v["reason"].replace("no ratio claimed", "no speed-up claimed"),
    }


def _time_batch(
    engine: Any, net: Any, b: int, iters: int, warmup: int, rounds: int, tolerance: float
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One batch size: the engine (and PyTorch eager) in interleaved rounds; the engine row and the eager row."""
    x = np.random.default_rng(b).standard_normal((b,) + engine.clip_shape).astype(np.float32)
    fns: dict[str, Callable[[], Any]] = {"engine": lambda: engine.infer(x)}
    if net is not None:
        import torch

        xt = torch.from_numpy(x)

        def eager() -> Any:
            with torch.inference_mode():
                return net(xt)

        fns["torch_eager"] = eager
    for _ in range(max(0, warmup - 1)):
        engine.infer(x)
    s = interleaved_rounds(
        fns, rounds, {"engine": max(2, iters // rounds), "torch_eager": max(1, iters // (2 * rounds))}
    )
    p = percentiles(s.flat("engine"))
    row: dict[str, Any] = {
        "batch": b,
        **p,
        "clips_per_s": b / (p["p50_ms"] / 1e3),
        "rounds": summarize_rounds(s.round_medians("engine")),
    }
    if net is None:
        return row, None
    verdict = speedup_verdict(s.round_medians("engine"), s.round_medians("torch_eager"), tolerance)
    row.update(
        speedup_vs_torch_eager=verdict["speedup"],
        speedup_range=verdict["speedup_range"],
        speedup_reason=verdict["reason"],
    )
    if verdict["reason"]:
        _log.warning(f"batch {b}: {verdict['reason']}")
    return row, {"batch": b, **percentiles(s.flat("torch_eager")), "rounds": verdict["torch_eager"]}


def _check_batches(engine: Any, batches: list[int] | None) -> list[int]:
    lo, hi = engine.batch_range
    if batches is None:
        return sorted({b for b in (1, 2, 4, 8) if lo <= b <= hi} | {lo})
    bad = [b for b in batches if not lo <= b <= hi]
    if bad:
        raise ValueError(f"batch sizes {bad} outside the bundle's range {lo}..{hi}")
    return batches


def bench_bundle(
    bundle: str | os.PathLike,
    batches: list[int] | None = None,
    iters: int = 20,
    warmup: int = 3,
    torch_reference: bool = True,
    threads: int | None = None,
    progress: bool = True,
    rounds: int = ROUNDS,
    tolerance: float = SPREAD_TOLERANCE,
) -> dict[str, Any]:
    """All the numbers for one bundle (see the module docstring)."""
    import psutil
    from tqdm import tqdm

    from runtime import Engine
    from runtime.preprocess import PreprocessConfig

    if rounds < 1:
        raise ValueError(f"rounds: expected at least 1, got {rounds}")
    proc = psutil.Process()
    load_before = load_average()
    engine = Engine(bundle, **({"threads": threads} if threads is not None else {}))
    batches = _check_batches(engine, batches)
    net = None
    if torch_reference:
        import torch

        from export.bundle.parity import reference_model

        if threads:
            torch.set_num_threads(threads)
        net, _ = reference_model(engine.manifest, None)
    bar = tqdm(total=len(batches) + 2, desc="bench", disable=not progress, file=sys.stderr)
    # Preprocessing first: ONNX Runtime's worker threads spin for a while after each run and would share the core.
    bar.set_postfix_str("preprocessing")
    preprocess = {
        "bundle_contract": bench_preprocess(engine.preprocess),
        "published_8x224": bench_preprocess(PreprocessConfig(8, 32, "dense", 224, 224)),
    }
    bar.update()
    rows, torch_rows, peak_rss = [], [], proc.memory_info().rss
    for b in batches:
        bar.set_postfix_str(f"batch {b}: {rounds} interleaved rounds")
        row, torch_row = _time_batch(engine, net, b, iters, warmup, rounds, tolerance)
        peak_rss = max(peak_rss, proc.memory_info().rss)
        rows.append(row)
        torch_rows += [torch_row] if torch_row else []
        bar.update()
    result: dict[str, Any] = {
        "bundle": str(bundle),
        "engine": engine.describe(),
        "precision": engine.precision,
        "clip_shape": list(engine.clip_shape),
        "iters": iters,
        "warmup": warmup,
        "method": {
            "rounds": rounds,
            "engine_iters_per_round": max(2, iters // rounds),
            "torch_iters_per_round": max(1, iters // (2 * rounds)) if net is not None else None,
            "spread_tolerance": tolerance,
            "rule": "engine and PyTorch eager alternate in rounds (who goes first alternates too); per side "
            "the median of the round medians, and a speed-up only when both sides' rounds spread "
            "(max - min) at most the tolerance of their median",
        },
        "engine_rows": rows,
        "preprocess": preprocess,
        "stream": bench_stream(engine),
    }
    bar.update()
    bar.close()
    if net is not None:
        result["torch_eager"] = torch_rows
    result["load_average"] = {"before": load_before, "after": load_average()}
    result["peak_host_rss_mib"] = round(max(peak_rss, proc.memory_info().rss) / 2**20, 1)
    result["device_memory"] = _device_memory() if engine.manifest["backend"] == "tensorrt" else None
    result["machine"] = machine()
    engine.close()
    return result


def _fmt_rounds(r: dict[str, Any]) -> str:
    return f"{r['median_ms']:.2f} [{r['min_ms']:.2f}..{r['max_ms']:.2f}]"


def _speedup_cell(r: dict[str, Any], t: dict[str, Any] | None) -> tuple[str, str]:
    if t is None:
        return "-", "-"
    if r.get("speedup_vs_torch_eager") is None:
        return "none claimed (see below)", _fmt_rounds(t["rounds"])
    lo, hi = r["speedup_range"]
    return f"{r['speedup_vs_torch_eager']:.2f}x ({lo:.2f}..{hi:.2f})", _fmt_rounds(t["rounds"])


def markdown(result: dict[str, Any]) -> str:
    """The report as Markdown: latency per batch size with the speed-up verdict, preprocessing, streaming, memory."""
    e, method = result["engine"], result.get("method", {})
    lines = [
        f"# Benchmark: {result['bundle']}",
        "",
        f"{e.get('backend')} {result['precision']}, clip {'x'.join(map(str, result['clip_shape']))}; "
        f"{machine_line(result['machine'])}",
        "",
        f"Engine and PyTorch eager measured in {method.get('rounds', '?')} interleaved rounds; per side the "
        f"median of the round medians [min..max]. A speed-up is claimed only when each side's rounds spread "
        f"at most {method.get('spread_tolerance', SPREAD_TOLERANCE):.0%} of their median.",
        "",
    ]
    torch_rows = {r["batch"]: r for r in result.get("torch_eager") or []}
    table, warnings = [], []
    for r in result["engine_rows"]:
        t = torch_rows.get(r["batch"])
        ratio, tcol = _speedup_cell(r, t)
        if t is not None and r.get("speedup_vs_torch_eager") is None:
            warnings.append(f"- batch {r['batch']}: {r.get('speedup_reason')}")
        table.append(
            [
                r["batch"],
                f"{r['p50_ms']:.2f}",
                f"{r['p90_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['clips_per_s']:.2f}",
                _fmt_rounds(r["rounds"]),
                tcol,
                ratio,
            ]
        )
    lines += markdown_table(
        ["batch", "p50 ms", "p90 ms", "p99 ms", "clips/s", "engine rounds ms", "PyTorch eager rounds ms", "speed-up"],
        table,
    )
    if warnings:
        lines += ["", "**Warning: rounds disagree, no speed-up claimed for these batch sizes:**", *warnings]
    la = result.get("load_average") or {}
    if la.get("before", {}).get("1min") is not None:
        lines += [
            "",
            f"Load average (1 min) before/after: {la['before']['1min']} / {la['after'].get('1min')} on "
            f"{la['before']['cores']} cores.",
        ]
    p, s = result["preprocess"], result["stream"]
    lines += [""] + markdown_table(
        ["preprocessing (one core)", "p50 ms per clip"],
        [
            [f"{name}: {row['frames']} frames {row['source']} -> {row['crop']}", f"{row['p50_ms']:.2f}"]
            for name, row in p.items()
        ],
    )
    lines += [
        "",
        f"Streaming buffer: {s['preprocess_per_sampled_frame']['p50_ms']:.2f} ms per sampled frame, "
        f"prediction every {s['every']} frames, window handed over without a copy: {s['window_is_view_of_ring']}.",
        f"Peak host memory: {result['peak_host_rss_mib']} MiB.",
    ]
    if result.get("device_memory"):
        lines.append(f"Device memory: {result['device_memory']['used_mib']} MiB used.")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Latency against batch size: round medians with their min..max as error bars; the title says when the
    rounds disagree and no speed-up is claimed."""
    plt = pyplot()

    def bars(rows: list[dict[str, Any]]) -> tuple[list[int], list[float], list[list[float]]]:
        med = [r["rounds"]["median_ms"] for r in rows]
        err = [
            [m - r["rounds"]["min_ms"] for m, r in zip(med, rows)],
            [r["rounds"]["max_ms"] - m for m, r in zip(med, rows)],
        ]
        return [r["batch"] for r in rows], med, err

    fig, ax = plt.subplots(figsize=(6, 4))
    xs, med, err = bars(result["engine_rows"])
    ax.errorbar(xs, med, yerr=err, fmt="o-", capsize=3, label=f"engine ({result['precision']}), rounds min..max")
    if result.get("torch_eager"):
        xs, med, err = bars(result["torch_eager"])
        ax.errorbar(xs, med, yerr=err, fmt="s--", capsize=3, label="PyTorch eager FP32, rounds min..max")
    ax.set_xlabel("batch (clips)")
    ax.set_ylabel("latency (ms)")
    title = Path(result["bundle"]).name
    if any(r.get("speedup_reason") for r in result["engine_rows"]):
        title += "\nrounds disagree: no speed-up claimed"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def write(result: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """``bench.json``, ``bench.md`` and ``bench.png`` in ``out_dir``."""
    return write_report(out_dir, "bench", result, markdown(result), plot)


def _check_args(a: Any) -> None:
    """Counts the user gave, each usable: ``--iters 0`` wrote a report of no timings, ``--threads 99999`` went to
    torch as it came."""
    from runtime.backends.onnxruntime_backend import available_cpus

    cpus = available_cpus()
    for name, lo, hi in (("iters", 1, 100000), ("warmup", 0, 100000), ("rounds", 1, 1000), ("threads", 0, 4 * cpus)):
        v = getattr(a, name)
        if v is not None and not lo <= v <= hi:
            raise ValueError(
                f"--{name}: expected {lo}..{hi}{f' (this machine has {cpus} CPUs)' * (name == 'threads')}, got {v}"
            )
    if not 0 < a.tolerance < math.inf:
        raise ValueError(f"--tolerance: expected a positive number (a relative spread, e.g. 0.1), got {a.tolerance}")


@user_errors("make bench")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m export.bench.engine", description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True, help="engine bundle directory")
    ap.add_argument("--batch", default=None, help="comma-separated batch sizes (default: 1,2,4,8 within the range)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime / PyTorch threads (0: all cores)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager reference")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds of engine and PyTorch eager")
    ap.add_argument(
        "--tolerance",
        type=float,
        default=SPREAD_TOLERANCE,
        help="largest (max - min) / median of a side's rounds that still allows a speed-up claim",
    )
    ap.add_argument("--out", default=None, help="report directory (default artifacts/bench/<bundle name>)")
    a = ap.parse_args(argv)
    _check_args(a)
    try:
        batches = [int(b) for b in a.batch.split(",")] if a.batch else None
    except ValueError:
        raise ValueError(f"--batch {a.batch!r}: expected comma-separated integers, e.g. 1,2,4,8") from None
    out = check_report_dir(a.out or f"artifacts/bench/{Path(a.engine).resolve().name}", [a.engine])
    result = bench_bundle(
        a.engine,
        batches,
        a.iters,
        a.warmup,
        not a.no_torch,
        a.threads or None,  # 0: the backend's default (make)
        rounds=a.rounds,
        tolerance=a.tolerance,
    )
    paths = write(result, out)
    print(markdown(result))
    print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
