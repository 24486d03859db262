"""``make bench ENGINE=<bundle>``: latency and throughput of an engine bundle on this machine.

In one run: warm-up, then per batch size the latency p50/p90/p99 and throughput of ``Engine.infer``;
the runtime's preprocessing (raw 640x480 frames -> the bundle's clip, and the published 8x224
contract) timed apart; the streaming buffer's cost per frame; peak host memory (and device memory on
GPUs); the machine and library versions; and the PyTorch eager FP32 reference timed in the same run
on the same machine, with the ratio. Writes JSON, a Markdown table and a PNG plot of latency
against batch size.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.files import temp_path_beside, write_json_atomic, write_text_atomic

from calibration.cli import user_errors


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


def bench_bundle(bundle: str | os.PathLike, batches: list[int] | None = None, iters: int = 20, warmup: int = 3,
                 torch_reference: bool = True, threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """All the numbers for one bundle (see the module docstring)."""
    import psutil
    from tqdm import tqdm

    from runtime import Engine

    proc = psutil.Process()
    opts = {"threads": threads} if threads is not None else {}
    engine = Engine(bundle, **opts)
    lo, hi = engine.batch_range
    if batches is None:
        batches = sorted({b for b in (1, 2, 4, 8) if lo <= b <= hi} | {lo})
    bad = [b for b in batches if not lo <= b <= hi]
    if bad:
        raise ValueError(f"batch sizes {bad} outside the bundle's range {lo}..{hi}")
    rng = np.random.default_rng(0)
    rows = []
    peak_rss = proc.memory_info().rss
    steps = len(batches) + (len(batches) if torch_reference else 0) + 2
    bar = tqdm(total=steps, desc="bench", disable=not progress, file=sys.stderr)
    # Preprocessing first: ONNX Runtime's worker threads spin for a while after each run and would share the core.
    from runtime.preprocess import PreprocessConfig

    bar.set_postfix_str("preprocessing")
    preprocess = {"bundle_contract": bench_preprocess(engine.preprocess),
                  "published_8x224": bench_preprocess(PreprocessConfig(8, 32, "dense", 224, 224))}
    bar.update()
    for b in batches:
        x = rng.standard_normal((b,) + engine.clip_shape).astype(np.float32)
        bar.set_postfix_str(f"engine batch {b}")
        samples = time_call(lambda: engine.infer(x), iters, warmup)
        peak_rss = max(peak_rss, proc.memory_info().rss)
        p = _percentiles(samples)
        rows.append({"batch": b, **p, "clips_per_s": b / (p["p50_ms"] / 1e3)})
        bar.update()
    result: dict[str, Any] = {"bundle": str(bundle), "engine": engine.describe(), "precision": engine.precision,
                              "clip_shape": list(engine.clip_shape), "iters": iters, "warmup": warmup, "engine_rows": rows,
                              "preprocess": preprocess}
    result["stream"] = bench_stream(engine)
    bar.update()
    if torch_reference:
        result["torch_eager"] = _bench_torch(engine, batches, iters, warmup, threads, bar)
        by_batch = {r["batch"]: r for r in result["torch_eager"]}
        for r in rows:
            ref = by_batch.get(r["batch"])
            if ref:
                r["speedup_vs_torch_eager"] = ref["p50_ms"] / r["p50_ms"]
    bar.close()
    result["peak_host_rss_mib"] = round(max(peak_rss, proc.memory_info().rss) / 2**20, 1)
    result["device_memory"] = _device_memory() if engine.manifest["backend"] == "tensorrt" else None
    result["machine"] = machine_info()
    engine.close()
    return result


def _bench_torch(engine, batches: list[int], iters: int, warmup: int, threads: int | None, bar) -> list[dict[str, Any]]:
    import torch

    from .parity_check import reference_model

    if threads:
        torch.set_num_threads(threads)
    net, _ = reference_model(engine.manifest, None)
    rows = []
    rng = np.random.default_rng(0)
    for b in batches:
        x = torch.from_numpy(rng.standard_normal((b,) + engine.clip_shape).astype(np.float32))
        bar.set_postfix_str(f"torch eager batch {b}")
        with torch.inference_mode():
            samples = time_call(lambda: net(x), max(3, iters // 2), 1)
        rows.append({"batch": b, **_percentiles(samples)})
        bar.update()
    return rows


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    e = result["engine"]
    lines = [f"# Benchmark: {result['bundle']}", "",
             f"{e.get('backend')} {result['precision']} on {m['cpu']} ({m['cores']} cores), clip "
             f"{'x'.join(map(str, result['clip_shape']))}; versions: "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), "",
             "| batch | p50 ms | p90 ms | p99 ms | clips/s | PyTorch eager p50 ms | speed-up |",
             "|---|---|---|---|---|---|---|"]
    torch_rows = {r["batch"]: r for r in result.get("torch_eager") or []}
    for r in result["engine_rows"]:
        t = torch_rows.get(r["batch"])
        lines.append(f"| {r['batch']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['clips_per_s']:.2f} | {t['p50_ms']:.2f} | {r['speedup_vs_torch_eager']:.2f}x |" if t else
                     f"| {r['batch']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['clips_per_s']:.2f} | - | - |")
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    rows = result["engine_rows"]
    ax.plot([r["batch"] for r in rows], [r["p50_ms"] for r in rows], "o-", label=f"engine ({result['precision']}) p50")
    ax.fill_between([r["batch"] for r in rows], [r["p50_ms"] for r in rows], [r["p99_ms"] for r in rows], alpha=0.2,
                    label="p50..p99")
    if result.get("torch_eager"):
        t = result["torch_eager"]
        ax.plot([r["batch"] for r in t], [r["p50_ms"] for r in t], "s--", label="PyTorch eager FP32 p50")
    ax.set_xlabel("batch (clips)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(Path(result["bundle"]).name)
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
    ap = argparse.ArgumentParser(prog="python -m export.bench_engine", description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True, help="engine bundle directory")
    ap.add_argument("--batch", default=None, help="comma-separated batch sizes (default: 1,2,4,8 within the range)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime / PyTorch threads (default: all cores)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager reference")
    ap.add_argument("--out", default=None, help="report directory (default artifacts/bench/<bundle name>)")
    a = ap.parse_args(argv)
    batches = [int(b) for b in a.batch.split(",")] if a.batch else None
    result = bench_bundle(a.engine, batches, a.iters, a.warmup, not a.no_torch, a.threads)
    paths = write(result, a.out or f"artifacts/bench/{Path(a.engine).resolve().name}")
    print(markdown(result))
    print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
