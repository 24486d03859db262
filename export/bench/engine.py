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

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.cli_args import ArgumentParser
from runtime.files import temp_path_beside, write_json_atomic, write_text_atomic

from runtime.cli_args import user_errors


def _percentiles(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "n": int(a.size)}


def time_call(fn: Callable[[], Any], iters: int, warmup: int, min_seconds: float = 0.0) -> list[float]:
    """Wall-clock seconds of ``iters`` calls of ``fn`` after ``warmup`` calls (more while under ``min_seconds``)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < iters or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
        if len(samples) >= 10 * iters:
            break
    return samples


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory and the versions of the libraries that matter for the numbers."""
    import importlib.metadata as md

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "cuda-python"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    import psutil

    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "platform": platform.platform(),
            "versions": versions}


def bench_preprocess(preprocess, iters: int = 30, height: int = 480, width: int = 640) -> dict[str, Any]:
    """Raw ``height x width`` uint8 frames -> one canonical clip, in this thread (one core)."""
    from runtime.preprocess import preprocess_frames

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (preprocess.num_frames, height, width, 3), dtype=np.uint8)
    out = np.empty((preprocess.num_frames, 3, preprocess.crop_size, preprocess.crop_size), np.float32)
    samples = time_call(lambda: preprocess_frames(frames, preprocess, out=out), iters, 3)
    return {"source": f"{width}x{height}", "frames": preprocess.num_frames, "crop": preprocess.crop_size,
            **_percentiles(samples)}


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
    return {"preprocess_per_sampled_frame": _percentiles(samples), "every": stream.every,
            "window_is_view_of_ring": bool(np.shares_memory(view, stream._ring))}


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


#: rounds of the engine and PyTorch eager, alternating, per batch size
ROUNDS = 5
#: a side whose round medians spread (max - min) more than this fraction of their median is too noisy to compare
SPREAD_TOLERANCE = 0.25


def summarize_rounds(seconds: list[float]) -> dict[str, Any]:
    """Median, min, max, interquartile range and relative spread ((max - min) / median) of per-round times."""
    a = np.asarray(seconds, np.float64) * 1e3
    med = float(np.median(a))
    q1, q3 = np.percentile(a, [25, 75])
    return {"median_ms": med, "min_ms": float(a.min()), "max_ms": float(a.max()), "iqr_ms": float(q3 - q1),
            "spread": float((a.max() - a.min()) / med) if med > 0 else float("inf"), "rounds": int(a.size),
            "rounds_ms": [float(v) for v in a]}


def speedup_verdict(engine_rounds: list[float], torch_rounds: list[float],
                    tolerance: float = SPREAD_TOLERANCE) -> dict[str, Any]:
    """Whether the rounds support a speed-up claim, and which.

    ``engine_rounds``/``torch_rounds``: the median seconds of each interleaved round. A claim needs at least
    three rounds per side and each side's rounds within ``tolerance`` of their median (max - min); otherwise
    ``speedup`` is None and ``reason`` says why (other load on the machine, thread oversubscription...).
    ``speedup_range`` is the worst and best ratio the rounds allow."""
    e, t = summarize_rounds(engine_rounds), summarize_rounds(torch_rounds)
    reasons = []
    for name, s in (("engine", e), ("PyTorch eager", t)):
        if s["rounds"] < 3:
            reasons.append(f"{name}: {s['rounds']} round(s), at least 3 needed")
        elif s["spread"] > tolerance:
            reasons.append(f"{name} rounds disagree: {s['min_ms']:.3g}..{s['max_ms']:.3g} ms, a spread of "
                           f"{s['spread']:.0%} of the median (tolerance {tolerance:.0%})")
    out: dict[str, Any] = {"engine": e, "torch_eager": t, "tolerance": tolerance}
    if reasons:
        return {**out, "speedup": None, "speedup_range": None,
                "reason": "no speed-up claimed: " + "; ".join(reasons) + " (the machine is busy or unsteady)"}
    return {**out, "speedup": t["median_ms"] / e["median_ms"],
            "speedup_range": [t["min_ms"] / e["max_ms"], t["max_ms"] / e["min_ms"]], "reason": None}


def interleaved_rounds(fns: dict[str, Callable[[], Any]], iters: dict[str, int], rounds: int = ROUNDS,
                       warmup: int = 1) -> dict[str, list[list[float]]]:
    """Time each function in ``rounds`` rounds, alternating which goes first, so that load that comes and
    goes hits both sides alike; returns every sample per function and round."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    samples: dict[str, list[list[float]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            samples[name].append(time_call(fns[name], iters[name], 0))
    return samples


def _load() -> dict[str, Any]:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # not every system has it
        return {"available": False}
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2), "cores": os.cpu_count()}


def bench_bundle(bundle: str | os.PathLike, batches: list[int] | None = None, iters: int = 20, warmup: int = 3,
                 torch_reference: bool = True, threads: int | None = None, progress: bool = True,
                 rounds: int = ROUNDS, tolerance: float = SPREAD_TOLERANCE) -> dict[str, Any]:
    """All the numbers for one bundle (see the module docstring)."""
    import psutil
    from tqdm import tqdm

    from runtime import Engine

    if rounds < 1:
        raise ValueError(f"rounds: expected at least 1, got {rounds}")
    proc = psutil.Process()
    opts = {"threads": threads} if threads is not None else {}
    load_before = _load()
    engine = Engine(bundle, **opts)
    lo, hi = engine.batch_range
    if batches is None:
        batches = sorted({b for b in (1, 2, 4, 8) if lo <= b <= hi} | {lo})
    bad = [b for b in batches if not lo <= b <= hi]
    if bad:
        raise ValueError(f"batch sizes {bad} outside the bundle's range {lo}..{hi}")
    net = None
    if torch_reference:
        import torch

        from export.bundle.parity import reference_model

        if threads:
            torch.set_num_threads(threads)
        net, _ = reference_model(engine.manifest, None)
    rng = np.random.default_rng(0)
    rows, torch_rows = [], []
    peak_rss = proc.memory_info().rss
    bar = tqdm(total=len(batches) + 2, desc="bench", disable=not progress, file=sys.stderr)
    # Preprocessing first: ONNX Runtime's worker threads spin for a while after each run and would share the core.
    from runtime.preprocess import PreprocessConfig

    bar.set_postfix_str("preprocessing")
    preprocess = {"bundle_contract": bench_preprocess(engine.preprocess),
                  "published_8x224": bench_preprocess(PreprocessConfig(8, 32, "dense", 224, 224))}
    bar.update()
    engine_iters = max(2, iters // rounds)
    torch_iters = max(1, iters // (2 * rounds))
    for b in batches:
        x = rng.standard_normal((b,) + engine.clip_shape).astype(np.float32)
        fns: dict[str, Callable[[], Any]] = {"engine": lambda: engine.infer(x)}
        if net is not None:
            import torch

            xt = torch.from_numpy(x)

            def eager() -> Any:
                with torch.inference_mode():
                    return net(xt)

            fns["torch_eager"] = eager
        bar.set_postfix_str(f"batch {b}: {rounds} interleaved rounds")
        for _ in range(max(0, warmup - 1)):
            engine.infer(x)
        s = interleaved_rounds(fns, {"engine": engine_iters, "torch_eager": torch_iters}, rounds)
        peak_rss = max(peak_rss, proc.memory_info().rss)
        flat = [v for r in s["engine"] for v in r]
        p = _percentiles(flat)
        row: dict[str, Any] = {"batch": b, **p, "clips_per_s": b / (p["p50_ms"] / 1e3),
                               "rounds": summarize_rounds([float(np.median(r)) for r in s["engine"]])}
        if net is not None:
            t_rounds = [float(np.median(r)) for r in s["torch_eager"]]
            verdict = speedup_verdict([float(np.median(r)) for r in s["engine"]], t_rounds, tolerance)
            torch_rows.append({"batch": b, **_percentiles([v for r in s["torch_eager"] for v in r]),
                               "rounds": verdict["torch_eager"]})
            row["speedup_vs_torch_eager"] = verdict["speedup"]
            row["speedup_range"] = verdict["speedup_range"]
            row["speedup_reason"] = verdict["reason"]
            if verdict["reason"]:
                print(f"WARNING batch {b}: {verdict['reason']}", file=sys.stderr, flush=True)
        rows.append(row)
        bar.update()
    result: dict[str, Any] = {"bundle": str(bundle), "engine": engine.describe(), "precision": engine.precision,
                              "clip_shape": list(engine.clip_shape), "iters": iters, "warmup": warmup,
                              "method": {"rounds": rounds, "engine_iters_per_round": engine_iters,
                                         "torch_iters_per_round": torch_iters if net is not None else None,
                                         "spread_tolerance": tolerance,
                                         "rule": "engine and PyTorch eager alternate in rounds (who goes first "
                                                 "alternates too); per side the median of the round medians, and "
                                                 "a speed-up only when both sides' rounds spread (max - min) at "
                                                 "most the tolerance of their median"},
                              "engine_rows": rows, "preprocess": preprocess}
    result["stream"] = bench_stream(engine)
    bar.update()
    if net is not None:
        result["torch_eager"] = torch_rows
    bar.close()
    result["load_average"] = {"before": load_before, "after": _load()}
    result["peak_host_rss_mib"] = round(max(peak_rss, proc.memory_info().rss) / 2**20, 1)
    result["device_memory"] = _device_memory() if engine.manifest["backend"] == "tensorrt" else None
    result["machine"] = machine_info()
    engine.close()
    return result


def _fmt_rounds(r: dict[str, Any]) -> str:
    return f"{r['median_ms']:.2f} [{r['min_ms']:.2f}..{r['max_ms']:.2f}]"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    e = result["engine"]
    method = result.get("method", {})
    lines = [f"# Benchmark: {result['bundle']}", "",
             f"{e.get('backend')} {result['precision']} on {m['cpu']} ({m['cores']} cores), clip "
             f"{'x'.join(map(str, result['clip_shape']))}; versions: "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), "",
             f"Engine and PyTorch eager measured in {method.get('rounds', '?')} interleaved rounds; per side the "
             f"median of the round medians [min..max]. A speed-up is claimed only when each side's rounds spread "
             f"at most {method.get('spread_tolerance', SPREAD_TOLERANCE):.0%} of their median.", "",
             "| batch | p50 ms | p90 ms | p99 ms | clips/s | engine rounds ms | PyTorch eager rounds ms | speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    torch_rows = {r["batch"]: r for r in result.get("torch_eager") or []}
    warnings = []
    for r in result["engine_rows"]:
        t = torch_rows.get(r["batch"])
        if t is None:
            ratio, tcol = "-", "-"
        elif r.get("speedup_vs_torch_eager") is None:
            ratio, tcol = "none claimed (see below)", _fmt_rounds(t["rounds"])
            warnings.append(f"- batch {r['batch']}: {r.get('speedup_reason')}")
        else:
            lo, hi = r["speedup_range"]
            ratio, tcol = f"{r['speedup_vs_torch_eager']:.2f}x ({lo:.2f}..{hi:.2f})", _fmt_rounds(t["rounds"])
        lines.append(f"| {r['batch']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['clips_per_s']:.2f} | {_fmt_rounds(r['rounds'])} | {tcol} | {ratio} |")
    if warnings:
        lines += ["", "**Warning: rounds disagree, no speed-up claimed for these batch sizes:**", *warnings]
    la = result.get("load_average") or {}
    if la.get("before", {}).get("1min") is not None:
        lines += ["", f"Load average (1 min) before/after: {la['before']['1min']} / {la['after'].get('1min')} on "
                  f"{la['before']['cores']} cores."]
    p = result["preprocess"]
    s = result["stream"]
    lines += ["", "| preprocessing (one core) | p50 ms per clip |", "|---|---|"]
    for name, row in p.items():
        lines.append(f"| {name}: {row['frames']} frames {row['source']} -> {row['crop']} | {row['p50_ms']:.2f} |")
    lines += ["", f"Streaming buffer: {s['preprocess_per_sampled_frame']['p50_ms']:.2f} ms per sampled frame, "
              f"prediction every {s['every']} frames, window handed over without a copy: {s['window_is_view_of_ring']}.",
              f"Peak host memory: {result['peak_host_rss_mib']} MiB."]
    if result.get("device_memory"):
        lines.append(f"Device memory: {result['device_memory']['used_mib']} MiB used.")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Latency against batch size: round medians with their min..max as error bars; the title says when the
    rounds disagree and no speed-up is claimed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def bars(rows: list[dict[str, Any]]) -> tuple[list[int], list[float], list[list[float]]]:
        med = [r["rounds"]["median_ms"] for r in rows]
        err = [[m - r["rounds"]["min_ms"] for m, r in zip(med, rows)], [r["rounds"]["max_ms"] - m for m, r in zip(med, rows)]]
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
    tmp = temp_path_beside(path, ".png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def write(result: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "bench.json", result)
    write_text_atomic(out / "bench.md", markdown(result))
    plot(result, out / "bench.png")
    return [out / "bench.json", out / "bench.md", out / "bench.png"]


@user_errors("make bench")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m export.bench.engine", description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True, help="engine bundle directory")
    ap.add_argument("--batch", default=None, help="comma-separated batch sizes (default: 1,2,4,8 within the range)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime / PyTorch threads (default: all cores)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager reference")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds of engine and PyTorch eager")
    ap.add_argument("--tolerance", type=float, default=SPREAD_TOLERANCE,
                    help="largest (max - min) / median of a side's rounds that still allows a speed-up claim")
    ap.add_argument("--out", default=None, help="report directory (default artifacts/bench/<bundle name>)")
    a = ap.parse_args(argv)
    try:
        batches = [int(b) for b in a.batch.split(",")] if a.batch else None
    except ValueError:
        raise ValueError(f"--batch {a.batch!r}: expected comma-separated integers, e.g. 1,2,4,8") from None
    result = bench_bundle(a.engine, batches, a.iters, a.warmup, not a.no_torch, a.threads, rounds=a.rounds,
                          tolerance=a.tolerance)
    paths = write(result, a.out or f"artifacts/bench/{Path(a.engine).resolve().name}")
    print(markdown(result))
    print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
