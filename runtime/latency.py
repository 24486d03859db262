"""Latency and throughput of a loaded ``Engine``, reported the way trtexec and OpenVINO's benchmark_app do.

Per (batch size, concurrent requests): warm-up calls first (the first call's time is reported apart, as
benchmark_app does), then calls until both ``iterations`` and ``duration`` are reached (trtexec's rule), each
request thread calling ``Engine.infer`` back to back; latency min/mean/p50/p90/p99/max over every call, and
throughput in clips and calls per second of wall time. No timing assertion anywhere: this is measurement.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

__all__ = ["measure", "latency_report", "stats_ms"]


def stats_ms(seconds: list[float]) -> dict[str, float]:
    """min/mean/p50/p90/p99/max in milliseconds (numpy's linear-interpolation percentiles)."""
    a = np.asarray(seconds, np.float64) * 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "min_ms": float(a.min()),
        "mean_ms": float(a.mean()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "max_ms": float(a.max()),
    }


def measure(
    engine: Any, x: np.ndarray, warmup: int = 2, iterations: int = 10, duration: float = 2.0, concurrency: int = 1
) -> dict[str, Any]:
    """Time ``engine.infer(x)`` from ``concurrency`` threads; see the module docstring."""
    t = time.perf_counter()
    engine.infer(x)
    first = time.perf_counter() - t
    for _ in range(max(0, warmup - 1)):
        engine.infer(x)
    samples: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []
    counter = [0]
    lock = threading.Lock()
    start = time.perf_counter()

    def worker(mine: list[float]) -> None:
        try:
            while True:
                with lock:
                    done = counter[0] >= iterations and time.perf_counter() - start >= duration
                    counter[0] += 1
                if done:
                    return
                t0 = time.perf_counter()
                engine.infer(x)
                mine.append(time.perf_counter() - t0)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in samples]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    flat = [s for per in samples for s in per]
    return {
        "batch": int(len(x)),
        "concurrency": concurrency,
        "warmup": warmup,
        "first_ms": first * 1e3,
        "iterations": len(flat),
        "seconds": wall,
        **stats_ms(flat),
        "throughput_clips_per_s": len(flat) * len(x) / wall,
        "throughput_calls_per_s": len(flat) / wall,
    }


def latency_report(
    engine: Any,
    clips: np.ndarray,
    batches: list[int] | None = None,
    concurrency: list[int] | None = None,
    warmup: int = 2,
    iterations: int = 10,
    duration: float = 2.0,
) -> dict[str, Any]:
    """Every batch size at one request at a time, then the smallest batch with each concurrency above 1.

    ``clips`` (real inputs, e.g. the reference set's) are tiled to each batch. ``batches`` default to the
    engine's min, opt and max; sizes outside the engine's range are a ``ValueError``."""
    lo, hi = engine.batch_range
    opt = int(engine.manifest["input"]["batch"].get("opt", lo))
    batches = sorted(set(batches or [lo, opt, hi]))
    bad = [b for b in batches if not lo <= b <= hi]
    if bad:
        raise ValueError(f"--batch {','.join(map(str, bad))}: outside this engine's batch range {lo}..{hi}")
    concurrency = sorted(set(concurrency or [1]))
    if any(c < 1 for c in concurrency):
        raise ValueError(f"--concurrency: expected counts >= 1, got {concurrency}")
    runs = [(b, 1) for b in batches] + [(batches[0], c) for c in concurrency if c > 1]
    rows = []
    for b, c in runs:
        x = np.ascontiguousarray(np.resize(clips, (b, *clips.shape[1:])))
        rows.append(measure(engine, x, warmup=warmup, iterations=iterations, duration=duration, concurrency=c))
    return {
        "method": "warm-up calls (first call reported apart), then calls until both the iteration count and the "
        "duration are reached; percentiles over every call",
        "warmup": warmup,
        "iterations": iterations,
        "duration_s": duration,
        "runs": rows,
    }
