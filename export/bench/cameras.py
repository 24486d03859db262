"""``make bench-cameras ENGINE=<bundle>``: many simulated cameras at real-time pace through the camera hub.

Frames are rendered before the clock starts (the synthetic motion clips of :mod:`calibration.clips.synthetic`,
or a video's decoded frames), so generating them is not measured. Each camera delivers its frames on a
fixed schedule at ``FPS`` (cameras out of phase with each other, as real ones are), pushed into a
:class:`runtime.hub.CameraHub` by a few pacing threads; the hub preprocesses, batches across cameras
and predicts. Measured:

1. ``CAMERAS`` cameras for ``SECONDS`` s with batching on, then the same run with batching off (max
   batch 1), alternating for ``--rounds`` rounds: windows due, predicted, dropped, latency p50/p99 from
   the last frame's arrival, the batch-size histogram, engine time per window and device time share;
   the batched and unbatched logits of the same windows compared (a dynamically quantised INT8 engine
   scales each batch as a whole, so a camera's logits depend on its batch partners).
2. The largest number of cameras served with no drops (doubling, then bisecting, with short runs), with
   batching on and off. Served means no window dropped and the cameras kept their pace (the pacing
   threads' lag p90 under one frame period: otherwise the machine could not even deliver the frames; a
   few late frames, e.g. from other load on the machine, are tolerated when the pacers catch up).
3. Overload at ``--overload`` times the cameras served: memory (resident set sampled through the run
   and the rings' bytes), drops per camera, and the fewest predictions any camera got (no starvation).

With ``--source <video file>`` (``make bench-cameras SOURCE=...``) every camera loops the file through its own
PyAV decoder instead, decoding as it delivers (decode counts in the camera's pace, as on a real camera). Before the
runs, :func:`export.bench.decode.choose_decoding` measures the decoder's thread count and the output size (full size
or the decoder's scaler resizing to the model's short side); the decode-only limit (frames/s of the decoders alone)
is measured before and after, and the cameras held at 0 drops are reported as a fraction of it (the goal:
:data:`GOAL_DECODE_FRACTION`). ``--source footage-720p`` makes a 720p H.264 file of real street-camera
footage (``vtest.avi``, ``make footage``), ``--source synthetic-720p`` one from the synthetic clips.

Writes ``artifacts/bench/cameras/<bundle name>.json``.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.cli_args import ArgumentParser, user_errors

from export.bench.harness import check_report_dir, load_average, logger, machine, write_report

_log = logger("cameras")
#: issue 27's goal: cameras held at 0 drops, as a fraction of the decode-only limit (decoded frames/s over camera fps)
GOAL_DECODE_FRACTION = 0.8


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def render_frames(width: int, height: int, seed: int = 0, video: str | None = None) -> np.ndarray:
    """The frames every simulated camera replays (each from its own offset): a video's, or one synthetic clip
    of each motion class."""
    if video:
        from runtime.video_source import iter_frames

        frames = np.stack(list(iter_frames(video, max_frames=600)))
        if len(frames) < 2:
            raise ValueError(f"--video {video}: {len(frames)} frames; expected a video")
        return frames
    from calibration.clips.synthetic import CLASSES, render_clip

    rng = np.random.default_rng(seed)
    return np.concatenate([render_clip(i, rng, width, height, num_frames=48) for i in range(len(CLASSES))])


@dataclass(frozen=True)
class DecodedSource:
    """Cameras that each loop a video file through their own decoder (decode included in the pacing)."""

    path: str
    threads: int = 1
    size: tuple[int, int] | None = None  # (width, height) from the decoder's scaler; None: full size


def _feed(
    frames: "np.ndarray | DecodedSource", cameras: int
) -> tuple[Callable[[int, int], np.ndarray], Callable[[int, int], None], Callable[[], None]]:
    """``get(camera, frame index)``, ``skip(camera, frame index)`` (a frame the hub does not sample: decoded, not
    converted) and a closer: rendered frames (each camera from its own offset) or one looping decoder per camera."""
    if isinstance(frames, DecodedSource):
        from export.bench.decode import LoopingDecoder

        decoders = [LoopingDecoder(frames.path, frames.threads, frames.size) for _ in range(cameras)]
        return (
            (lambda c, f: next(decoders[c])),
            (lambda c, f: decoders[c].next_raw() and None),
            (lambda: [d.close() for d in decoders] and None),
        )
    offset = [(c * 37) % len(frames) for c in range(cameras)]
    return (lambda c, f: frames[(offset[c] + f) % len(frames)]), (lambda c, f: None), (lambda: None)


def _expected_windows(cfg: Any, cameras: int, n_frames: int) -> int:
    """Windows ``cameras`` cameras of ``n_frames`` frames each are due (the hub's span and prediction stride)."""
    span = (cfg.num_frames - 1) * cfg.sampling_rate + 1
    every = max(cfg.sampling_rate, (cfg.num_frames * cfg.sampling_rate // 2) // cfg.sampling_rate * cfg.sampling_rate)
    return cameras * len(range(span - 1, n_frames, every))


def _hub_counts(m: dict[str, Any], latencies: list[float], lags: list[list[float]]) -> dict[str, Any]:
    """A run's windows, latencies, batches, engine time and pacing lag from the hub's metrics."""
    cams = m["cameras"].values()
    lat = np.asarray(latencies)
    lag = np.concatenate([np.asarray(x) for x in lags]) * 1e3
    predictions = sum(c["predictions"] for c in cams)
    return {
        "windows_due": sum(c["windows_due"] for c in cams),
        "frames_pushed": sum(c["frames"] for c in cams),
        "predictions": predictions,
        "dropped": sum(c["dropped"] for c in cams),
        "failed": sum(c["failed"] for c in cams),
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "mean_batch": m["mean_batch"],
        "batch_sizes": {str(k): v for k, v in m["batch_sizes"].items()},
        "engine_calls": m["calls"],
        "engine_ms_per_window": 1e3 * m["busy_s"] / max(1, predictions),
        "engine_ms_per_call": 1e3 * m["busy_s"] / max(1, m["calls"]),
        "device_time_share": m["device_time_share"],
        "predictions_per_camera": [min(c["predictions"] for c in cams), max(c["predictions"] for c in cams)],
        "dropped_per_camera": [min(c["dropped"] for c in cams), max(c["dropped"] for c in cams)],
        "starved_cameras": sum(1 for c in cams if c["predictions"] == 0),
        "pace_lag_p90_ms": float(np.percentile(lag, 90)),
        "pace_lag_p99_ms": float(np.percentile(lag, 99)),
        "pace_lag_max_ms": float(lag.max()),
    }


def _pace(
    hub: Any,
    get: Callable[[int, int], np.ndarray],
    skip: Callable[[int, int], None],
    cameras: int,
    period: float,
    n_frames: int,
    pacers: int,
    skip_late: bool,
) -> tuple[list[list[float]], list[int]]:
    """Deliver ``n_frames`` frames of every camera on its schedule (cameras out of phase, as real ones are) from
    ``pacers`` threads; returns each thread's lags (seconds behind schedule) and frames skipped as too late."""
    lags: list[list[float]] = [[] for _ in range(pacers)]
    skipped = [0] * pacers

    def pace(p: int, t0: float) -> None:
        mine = list(range(p, cameras, pacers))
        phase = {c: (c / cameras) * period for c in mine}
        for f in range(n_frames):
            for c in mine:
                due = t0 + f * period + phase[c]
                now = time.perf_counter()
                if due > now:
                    time.sleep(due - now)
                    now = time.perf_counter()
                lags[p].append(now - due)
                if skip_late and now - due > period:
                    skipped[p] += 1
                    continue
                # decoding (a DecodedSource) counts in the camera's pace; a frame the hub will not sample is
                # decoded but not converted, as an app feeding the hub does (CameraHub.wants_frame)
                hub.push(c, get(c, f) if hub.wants_frame(c) else skip(c, f), arrived=now)

    t0 = time.perf_counter() + 0.2
    threads = [threading.Thread(target=pace, args=(p, t0), daemon=True) for p in range(pacers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lags, skipped


class _MemoryMonitor:
    """The process's resident memory, sampled every 0.25 s on a thread between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.start_mb = 0.0

    def _sample(self) -> None:
        while not self._done.wait(0.25):
            self.samples.append(_rss_mb())

    def start(self) -> None:
        self.start_mb = _rss_mb()
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        rss, rss0 = self.samples, self.start_mb
        return {
            "rss_start_mb": rss0,
            "rss_peak_mb": max(rss, default=rss0),
            "rss_end_mb": rss[-1] if rss else rss0,
            "rss_every_second_mb": [round(v, 1) for v in rss[3::4]],  # flat once the rings exist: memory is bounded
        }


def _served(out: dict[str, Any], drained: bool, expected: int, period: float) -> bool:
    """Whether the machine kept up: nothing dropped or failed, every due window predicted, the pacers on time."""
    return bool(
        out["dropped"] == 0
        and out["failed"] == 0
        and drained
        and out["predictions"] == out["windows_due"] == expected
        and out["pace_lag_p90_ms"] < 1e3 * period
    )


def run_cameras(
    engine: Any,
    frames: "np.ndarray | DecodedSource",
    cameras: int,
    fps: float,
    seconds: float,
    max_batch: int | None,
    max_wait_ms: float,
    queue: int,
    pacers: int,
    keep_logits: bool = False,
    skip_late: bool = False,
) -> dict[str, Any]:
    """One run: ``cameras`` cameras at ``fps`` for ``seconds``; returns the counts, latencies and memory.

    A pacing thread that falls behind delivers late frames late (and catches up); with ``skip_late`` it skips
    frames more than a period late instead, as a live camera's frames are lost when nobody reads them (the
    overload run, where the machine cannot even take every frame)."""
    from runtime.hub import CameraHub

    n_frames = int(round(fps * seconds))
    latencies: list[float] = []
    logits: dict[tuple[int, int], np.ndarray] = {}

    def collect(r) -> None:  # called on the inference thread: keep it cheap
        latencies.append(r.latency_ms)
        if keep_logits:
            logits[(r.camera, r.last_frame)] = r.logits

    # batched runs batch always ("on"), so that the batched-vs-unbatched comparison measures batching itself
    hub = CameraHub(
        engine,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        queue=queue,
        results=0,
        on_result=collect,
        batching="off" if max_batch == 1 else "on",
    )
    for i in range(cameras):
        hub.add_camera(camera_id=i)
    period = 1.0 / fps
    memory = _MemoryMonitor()
    get, skip, close_feed = _feed(frames, cameras)
    memory.start()
    cpu0 = time.process_time()
    lags, skipped = _pace(hub, get, skip, cameras, period, n_frames, pacers, skip_late)
    drained = hub.drain(timeout=60)
    cpu_s = time.process_time() - cpu0
    m = hub.metrics()
    hub.close()
    close_feed()
    memory.stop()
    expected = _expected_windows(engine.preprocess, cameras, n_frames)
    out = {
        "cameras": cameras,
        "fps": fps,
        "seconds": seconds,
        "max_batch": hub.max_batch,
        "max_wait_ms": max_wait_ms,
        "queue": queue,
        "windows_expected": expected,
        "frames_skipped_late": sum(skipped),
        "drained": drained,
        **_hub_counts(m, latencies, lags),
        "cpu_s": cpu_s,  # the whole process (decoders, pacers, hub, engine threads): all a camera costs
        **memory.summary(),
        "ring_mb": m["ring_bytes"] / 2**20,
    }
    out["served"] = _served(out, drained, expected, period)
    if keep_logits:
        out["_logits"] = logits
    return out


def _line(r: dict[str, Any]) -> str:
    p50 = f"{r['p50_ms']:.1f}" if r["p50_ms"] is not None else "-"
    p99 = f"{r['p99_ms']:.1f}" if r["p99_ms"] is not None else "-"
    mb = f"{r['mean_batch']:.2f}" if r["mean_batch"] else "-"
    return (
        f"{r['cameras']:5d} cameras, max batch {r['max_batch']}: due {r['windows_due']}, predicted "
        f"{r['predictions']}, dropped {r['dropped']}, p50 {p50} ms, p99 {p99} ms, mean batch {mb}, "
        f"{r['engine_ms_per_window']:.2f} ms engine/window, device {100 * r['device_time_share']:.0f}%, "
        f"pace lag p90 {r['pace_lag_p90_ms']:.1f} ms{'' if r['served'] else '  (not served)'}"
    )


def max_served(
    engine: Any,
    frames: np.ndarray,
    start: int,
    fps: float,
    seconds: float,
    max_batch: int | None,
    kw: dict[str, Any],
    limit: int = 2048,
    tries: int = 2,
) -> tuple[int, list[dict[str, Any]]]:
    """The most cameras served with no drops: double from ``start`` until a count fails, then bisect (to ~10%).

    A count is served when one of ``tries`` runs drops nothing (every run is recorded)."""
    runs: list[dict[str, Any]] = []

    def ok(n: int) -> bool:
        for attempt in range(tries):  # other load on the machine can stall the device for seconds: retry a failure
            r = run_cameras(engine, frames, n, fps, seconds, max_batch, **kw)
            runs.append({k: v for k, v in r.items() if not k.startswith("_")} | {"attempt": attempt + 1})
            _log.info("  search: " + _line(r))
            if r["served"]:
                return True
        return False

    lo, n = 0, max(1, start)
    while n <= limit and ok(n):
        lo, n = n, n * 2
    hi = n
    if lo == 0:  # even `start` failed: search below it
        hi, n = start, max(1, start // 2)
        while n >= 1 and not ok(n):
            hi, n = n, n // 2
        lo = n if n >= 1 else 0
    while hi - lo > max(1, lo // 10):
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo, runs


def compare_logits(a: dict, b: dict) -> dict[str, Any]:
    """Batched vs unbatched logits of the windows both runs predicted."""
    keys = sorted(set(a) & set(b))
    if not keys:
        return {"windows": 0}
    x, y = np.stack([a[k] for k in keys]), np.stack([b[k] for k in keys])
    return {
        "windows": len(keys),
        "identical": int(sum(np.array_equal(a[k], b[k]) for k in keys)),
        "max_abs_diff": float(np.abs(x - y).max()),
        "top1_agreement": float((x.argmax(1) == y.argmax(1)).mean()),
    }


def _parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m export.bench.cameras", description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True, help="engine bundle directory")
    ap.add_argument("--cameras", type=int, default=16)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=1, help="batched/unbatched runs alternated this many times")
    ap.add_argument("--max-wait-ms", type=float, default=20.0)
    ap.add_argument("--queue", type=int, default=4, help="windows queued per camera before the oldest is dropped")
    ap.add_argument("--pacers", type=int, default=4, help="threads delivering the cameras' frames (and decoding them)")
    ap.add_argument(
        "--search-seconds", type=float, default=4.0, help="length of each run of the capacity search (0: no search)"
    )
    ap.add_argument(
        "--tries", type=int, default=2, help="runs per camera count in the search before it counts as not served"
    )
    ap.add_argument(
        "--overload", type=float, default=10.0, help="overload run at this many times the cameras served (0: none)"
    )
    ap.add_argument("--overload-seconds", type=float, default=6.0)
    ap.add_argument("--overload-max", type=int, default=2000, help="at most this many cameras in the overload run")
    ap.add_argument(
        "--source",
        default=None,
        help="a video file every camera loops through its own decoder, "
        "decode included ('footage-720p': real street-camera footage (make footage) as 720p H.264; "
        "'synthetic-720p': a 720p H.264 file made from the synthetic clips)",
    )
    ap.add_argument("--decode-seconds", type=float, default=2.0, help="length of each decode-only measurement")
    ap.add_argument("--video", default=None, help="replay this video's pre-decoded frames (decode not measured)")
    ap.add_argument("--size", default="128x96", help="synthetic frame size WxH")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    ap.add_argument("--out", default=None, help="JSON path (default artifacts/bench/cameras/<bundle name>.json)")
    return ap


def _check_args(a: Any) -> tuple[int, int]:
    for name in ("cameras", "rounds", "queue", "pacers"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name}: expected at least 1, got {getattr(a, name)}")
    if not (0 < a.fps < math.inf and 0 < a.seconds < math.inf):  # NaN and inf failed deep inside (int(nan))
        raise ValueError(f"--fps and --seconds: expected positive numbers, got {a.fps} and {a.seconds}")
    for name, low in (
        ("max_wait_ms", 0),
        ("search_seconds", 0),
        ("overload", 0),
        ("overload_seconds", 1e-3),
        ("decode_seconds", 1e-3),
    ):
        if not low <= getattr(a, name) < math.inf:
            raise ValueError(
                f"--{name.replace('_', '-')}: expected a finite number {'>= 0' if low == 0 else '> 0'}, "
                f"got {getattr(a, name)}"
            )
    if a.source and a.video:
        raise ValueError("--source and --video: give one (--source decodes as the cameras run, --video pre-decodes)")
    try:
        width, height = (int(v) for v in a.size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size: expected WxH (e.g. 128x96), got {a.size!r}") from None
    return width, height


def _check_windows(cfg: Any, a: Any) -> None:
    """Each camera must fill at least one clip window in ``--seconds`` (else there is nothing to measure)."""
    n = int(round(a.fps * a.seconds))
    if _expected_windows(cfg, 1, n) == 0:
        span = (cfg.num_frames - 1) * cfg.sampling_rate + 1
        raise ValueError(
            f"--fps {a.fps:g} for --seconds {a.seconds:g}: {n} frames per camera, fewer than one clip "
            f"window of this engine ({span} frames); run longer or at a higher frame rate"
        )


def _decoded_source(a: Any, engine: Any) -> tuple[DecodedSource, dict[str, Any]]:
    """The file the cameras loop, and the decoding chosen by measurement (threads, output size, decode limit)."""
    from export.bench.decode import choose_decoding, footage_720p, synthetic_video

    path = a.source
    if path == "synthetic-720p":
        _log.info("making a 720p H.264 file from the synthetic clips (once)")
        path = str(synthetic_video(Path("artifacts/cache/bench_cameras/synthetic-720p.mp4")))
    elif path == "footage-720p":
        _log.info("making a 720p H.264 file of real street-camera footage (vtest.avi, once)")
        path = str(footage_720p(Path("artifacts/cache/bench_cameras/footage-720p.mp4")))
    elif not Path(path).is_file():
        what = "no such file" if not Path(path).exists() else "not a plain file (a folder, FIFO or device)"
        raise ValueError(f"--source {path}: {what}; expected a video file")
    _log.info(f"decode-only limit and output size of {path} ({a.pacers} decoders at once)")
    choice = choose_decoding(path, engine.preprocess, a.pacers, a.decode_seconds)
    for r in choice["decode_rates"]:
        _log.info(
            f"  decode only, {r['decoders']} decoders x {r['threads'] or 'auto'} threads: {r['fps']:.0f} frames/s"
        )
    for c in choice["output_costs"]:
        _log.info(f"  decode + RGB {c['size']} + preprocessing: {c['cpu_ms_per_frame']:.2f} ms CPU per frame")
    size = tuple(choice["output_size"]) if choice["output_size"] else None
    return DecodedSource(path, choice["threads"], size), choice  # type: ignore[arg-type]


def _batched_vs_unbatched(engine: Any, frames: Any, a: Any, kw: dict[str, Any]) -> dict[str, Any]:
    """``--rounds`` rounds of the batched and the unbatched hub with ``--cameras`` cameras: the headline numbers."""
    batched, single = [], []
    for _ in range(a.rounds):
        for runs, mb in ((batched, None), (single, 1)):
            r = run_cameras(engine, frames, a.cameras, a.fps, a.seconds, mb, keep_logits=True, **kw)
            _log.info("  " + _line(r))
            runs.append(r)
    logits = compare_logits(batched[-1].pop("_logits"), single[-1].pop("_logits"))
    for r in batched + single:
        r.pop("_logits", None)
    worst = max(batched, key=lambda r: (r["dropped"], r["p99_ms"] or 0))  # the headline is the worst round
    per_b = [r["engine_ms_per_window"] for r in batched]
    per_s = [r["engine_ms_per_window"] for r in single]
    return {
        **{
            k: worst[k]
            for k in (
                "cameras",
                "fps",
                "seconds",
                "windows_due",
                "predictions",
                "dropped",
                "p50_ms",
                "p99_ms",
                "mean_batch",
            )
        },
        "headline": "the batched round with the most drops (then the highest p99); every round is listed",
        "batched": batched,
        "unbatched": single,
        "batching_gain": {
            "engine_ms_per_window_batched": per_b,
            "engine_ms_per_window_unbatched": per_s,
            "gain": float(np.median(per_s) / np.median(per_b)),
            "note": "engine time per predicted window, one call per window over batched calls (same cameras, "
            "same frames); medians over the rounds, each round listed",
            "logits_batched_vs_unbatched": logits,
        },
    }


def _search(engine: Any, frames: Any, a: Any, kw: dict[str, Any]) -> dict[str, Any]:
    """The most cameras served with no drops (batched and unbatched) and the overload run."""
    _log.info("largest number of cameras served with no drops")
    n_b, runs_b = max_served(engine, frames, a.cameras, a.fps, a.search_seconds, None, kw, tries=a.tries)
    n_s, runs_s = max_served(engine, frames, a.cameras, a.fps, a.search_seconds, 1, kw, tries=a.tries)
    out: dict[str, Any] = {
        "max_cameras_no_drops": n_b,
        "max_cameras_no_drops_unbatched": n_s,
        "search": {"seconds": a.search_seconds, "tries": a.tries, "batched": runs_b, "unbatched": runs_s},
    }
    if a.overload > 0 and n_b > 0:
        n = min(a.overload_max, int(round(a.overload * n_b)))
        _log.info(f"overload: {n} cameras ({a.overload:g}x)")
        r = run_cameras(engine, frames, n, a.fps, a.overload_seconds, None, skip_late=True, **kw)
        _log.info("  " + _line(r))
        out["overload"] = r
    return out


def _decode_verdict(choice: dict[str, Any], src: DecodedSource, result: dict[str, Any], a: Any) -> dict[str, Any]:
    """Cameras held at 0 drops next to the decode-only limit, re-measured after the search (the same run)."""
    from export.bench.decode import decode_rate

    again = decode_rate(src.path, src.threads, a.pacers, a.decode_seconds)
    limits = [choice["decode_limit_fps"], again["fps"]]
    limit_cameras = float(np.median(limits)) / a.fps
    counts = {"batched": result.get("max_cameras_no_drops"), "unbatched": result.get("max_cameras_no_drops_unbatched")}
    mode = max((m for m in counts if counts[m] is not None), key=lambda m: counts[m], default=None)
    served = counts[mode] if mode else None
    out = {
        **choice,
        "decode_limit_fps_after": again["fps"],
        "decode_limit_cameras": limit_cameras,
        "decode_limit_cameras_range": [min(limits) / a.fps, max(limits) / a.fps],
        "cameras_no_drops": served,
        "batching": mode,
        "goal_fraction": GOAL_DECODE_FRACTION,
        "fraction_of_decode_limit": None if served is None else served / limit_cameras,
        "goal_met": None if served is None else served / limit_cameras >= GOAL_DECODE_FRACTION,
    }
    # CPU per frame does not depend on other load the way frames/s does: the decoder's CPU per frame over all the
    # cameras' CPU per frame is the fraction of the decode limit the cameras reach on an otherwise idle machine.
    best = next(r for r in choice["decode_rates"] if r["threads"] == src.threads)
    runs = [r for r in result.get("search", {}).get(mode or "", []) if r["served"] and r["cameras"] == served]
    if runs and runs[-1]["frames_pushed"]:
        camera_cpu = runs[-1]["cpu_s"] / runs[-1]["frames_pushed"]
        out["cpu_ms_per_frame"] = {"decode_only": 1e3 * best["cpu_s_per_frame"], "cameras": 1e3 * camera_cpu}
        out["cpu_fraction_of_decode_limit"] = best["cpu_s_per_frame"] / camera_cpu
    return out


def _summary(result: dict[str, Any], fps: float, seconds: float) -> list[str]:
    g = result["batching_gain"]
    per_b, per_s = (float(np.median(g[k])) for k in ("engine_ms_per_window_batched", "engine_ms_per_window_unbatched"))
    lines = [
        f"{result['cameras']} cameras at {fps:g} fps for {seconds:g} s: {result['predictions']} predicted + "
        f"{result['dropped']} dropped of {result['windows_due']} due; p50 {result['p50_ms']:.1f} ms, p99 "
        f"{result['p99_ms']:.1f} ms, mean batch {result['mean_batch']:.2f}; engine time per window "
        f"{per_b:.2f} ms batched vs {per_s:.2f} ms one call per window ({g['gain']:.2f}x)"
    ]
    if "max_cameras_no_drops" in result:
        lines.append(
            f"most cameras served with no drops: {result['max_cameras_no_drops']} batched, "
            f"{result['max_cameras_no_drops_unbatched']} with batching off"
        )
    d = result.get("decode")
    if d:
        v = d["video"]
        size = "x".join(map(str, d["output_size"])) if d["output_size"] else "full size"
        lo, hi = d["decode_limit_cameras_range"]
        frac = "-" if d["fraction_of_decode_limit"] is None else f"{d['fraction_of_decode_limit']:.0%}"
        lines.append(
            f"{v['width']}x{v['height']} video decoded as the cameras run ({d['threads'] or 'auto'} decoder "
            f"threads, frames {size}): {d['cameras_no_drops']} cameras at 0 drops vs the decode-only limit "
            f"{d['decode_limit_cameras']:.1f} cameras ({lo:.1f}..{hi:.1f}; {d['decode_limit_fps']:.0f} and "
            f"{d['decode_limit_fps_after']:.0f} frames/s before and after): {frac} of it (goal >= "
            f"{GOAL_DECODE_FRACTION:.0%}; batching {d['batching']})"
        )
        if "cpu_fraction_of_decode_limit" in d:
            c = d["cpu_ms_per_frame"]
            lines.append(
                f"CPU per frame: decoder alone {c['decode_only']:.2f} ms, cameras (decode, conversion, hub, engine) "
                f"{c['cameras']:.2f} ms: {d['cpu_fraction_of_decode_limit']:.0%} of the decode limit on an idle machine"
            )
    return lines


@user_errors("make bench-cameras")
def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    width, height = _check_args(a)
    out = Path(a.out or f"artifacts/bench/cameras/{Path(a.engine).resolve().name}.json")
    check_report_dir(out.parent, [a.engine])
    from runtime import Engine

    engine = Engine(a.engine, **({"threads": a.threads} if a.threads else {}))  # 0: the backend's default (make)
    _check_windows(engine.preprocess, a)
    src, choice = _decoded_source(a, engine) if a.source else (None, None)
    frames: Any = src if src is not None else render_frames(width, height, video=a.video)
    kw = {"max_wait_ms": a.max_wait_ms, "queue": a.queue, "pacers": a.pacers}
    result: dict[str, Any] = {
        "bundle": str(Path(a.engine).resolve()),
        "engine": engine.describe(),
        "frame_size": list(frames.shape[1:3]) if src is None else None,
        "machine": machine(),
    }
    _log.info(
        f"{a.cameras} cameras at {a.fps:g} fps for {a.seconds:g} s, batches up to {engine.batch_range[1]} vs 1 "
        f"({a.rounds} round(s))"
    )
    # Warm-up: the first call at each batch size plans and allocates (ONNX Runtime), then the hub's threads.
    cfg = engine.preprocess
    for bs in range(engine.batch_range[0], engine.batch_range[1] + 1):
        for _ in range(3):
            engine.infer(np.zeros((bs, cfg.num_frames, 3, cfg.crop_size, cfg.crop_size), np.float32))
    run_cameras(engine, frames, 2, a.fps, 1.0, None, **kw)
    result.update(_batched_vs_unbatched(engine, frames, a, kw))
    if a.search_seconds > 0:
        result.update(_search(engine, frames, a, kw))
    if src is not None:
        result["decode"] = _decode_verdict(choice, src, result, a)  # type: ignore[arg-type]
    result["load_average_after"] = load_average()
    engine.close()
    write_report(out.parent, out.stem, result)
    print("\n".join(_summary(result, a.fps, a.seconds)))
    _log.info(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
