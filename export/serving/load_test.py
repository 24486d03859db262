"""Load generator for a served engine (``make serve``): ``make load-test URL=... [CLIENTS=8] [SECONDS=20]``.

``python -m export.serving.load_test --url http://127.0.0.1:8000 [--clients 8] [--seconds 20] [--kill-after S]
[--engine <bundle>] [--input frames|clip]`` runs ``clients`` threads, each sending one window of frames at a time
(synthetic motion clips, rendered once) through :class:`runtime.remote.RemoteEngine`, for ``seconds``; then prints
one JSON object::

    {"requests": issued, "ok": n, "errors": n, "lost": issued - ok - errors, "retried": n, "p50_ms", "p99_ms",
     "throughput": ok per second, "mean_batch", "replicas_seen", "mismatches" (with --engine), "killed",
     "ok_after_kill", ...}

Every request is accounted for: it ends ``ok``, or as an ``error`` with the client's message (after its retries),
or, if its thread is still stuck when the run is collected, as ``lost`` (which must be 0). ``--kill-after S`` calls
``ray.kill`` on one replica S seconds in (Serve starts a replacement); the requests it held are retried by the
client. With ``--engine``, every answer is compared with ``runtime.Engine`` on the same clip here.
Exit status: 0 when nothing was lost and no answer differed, 1 otherwise, 2 for a usage error.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cli_args import ArgumentParser
from runtime.errors import BundleError, InputError
from runtime.preprocess import preprocess_frames, sample_indices
from runtime.remote import RemoteEngine, RemoteEngineError

from runtime.cli_args import user_errors

__all__ = ["LoadResult", "make_clips", "expected_logits", "run_load", "main"]


@dataclasses.dataclass
class LoadResult:
    requests: int
    ok: int
    errors: int
    lost: int
    retried: int
    p50_ms: float | None
    p99_ms: float | None
    throughput: float
    seconds: float
    clients: int
    mean_batch: float | None
    replicas_seen: int
    mismatches: int | None
    killed: dict[str, Any] | None
    ok_after_kill: int | None  # answers completed after the replica was killed: the service went on
    error_messages: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make_clips(client: RemoteEngine, n: int = 16, seed: int = 0, input: str = "frames") -> list[np.ndarray]:
    """``n`` synthetic motion clips (all 8 classes) shaped for the served model: the frames one window spans at
    ``4:3`` of the short side (``input="frames"``), or ``T`` frames at the crop size (``input="clip"``)."""
    from calibration.clips.synthetic import CLASSES, render_clip

    cfg = client.preprocess
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n):
        if input == "clip":
            frames = render_clip(
                i % len(CLASSES),
                rng,
                width=cfg.crop_size,
                height=cfg.crop_size,
                num_frames=cfg.window() if cfg.sampling == "dense" else cfg.num_frames,
            )
            frames = frames[sample_indices(len(frames), cfg)]
        else:
            h = max(cfg.short_side, 32)
            frames = render_clip(
                i % len(CLASSES),
                rng,
                width=h * 4 // 3,
                height=h,
                num_frames=cfg.window() if cfg.sampling == "dense" else cfg.num_frames,
            )
        clips.append(np.ascontiguousarray(frames))
    return clips


def expected_logits(bundle: str | Path, clips: list[np.ndarray], input: str = "frames") -> list[np.ndarray]:
    """What ``runtime.Engine`` on this machine answers for each clip (the reference for the served answers)."""
    from runtime import Engine

    with Engine(bundle) as engine:
        if input == "frames":
            return [engine.predict(c).logits for c in clips]
        cfg = dataclasses.replace(engine.preprocess, short_side=engine.preprocess.crop_size, num_crops=1)
        return [engine.infer(preprocess_frames(c, cfg)[None])[0] for c in clips]


class _Tally:
    """The run's clock and what the clients saw, under one lock."""

    def __init__(self, seconds: float) -> None:
        self.lock = threading.Lock()
        self.seconds = seconds
        self.counts = {"issued": 0, "ok": 0, "errors": 0, "mismatches": 0}
        self.latencies: list[float] = []
        self.done_at: list[float] = []
        self.batches: list[int] = []
        self.replicas: set[str] = set()
        self.messages: collections.Counter[str] = collections.Counter()
        self.restart()

    def restart(self) -> None:
        """Start the clock (again): the deadline is ``seconds`` from now."""
        self.t_start = time.perf_counter()
        self.deadline = self.t_start + self.seconds
        self.last_done = self.t_start

    def issued(self) -> None:
        with self.lock:
            self.counts["issued"] += 1

    def error(self, e: Exception) -> None:
        with self.lock:
            self.counts["errors"] += 1
            self.messages[str(e)[:200]] += 1
            self.last_done = time.perf_counter()

    def ok(self, out: dict[str, Any], ms: float, bad: bool) -> None:
        with self.lock:
            self.counts["ok"] += 1
            self.counts["mismatches"] += bad
            self.latencies.append(ms)
            self.done_at.append(time.perf_counter() - self.t_start)
            self.batches.append(int(out.get("batch", 1)))
            self.replicas.add(str(out.get("replica")))
            self.last_done = time.perf_counter()

    def result(self, retried: int, clients: int, checked: bool, killed: dict[str, Any]) -> LoadResult:
        with self.lock:  # threads still running past the grace period are counted as lost, and never silently
            ok, errors, issued = self.counts["ok"], self.counts["errors"], self.counts["issued"]
            lat = np.asarray(self.latencies)
            elapsed = max(self.last_done - self.t_start, 1e-9)
            return LoadResult(
                requests=issued,
                ok=ok,
                errors=errors,
                lost=issued - ok - errors,
                retried=retried,
                p50_ms=round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                p99_ms=round(float(np.percentile(lat, 99)), 2) if lat.size else None,
                throughput=round(ok / elapsed, 2),
                seconds=round(elapsed, 2),
                clients=clients,
                mean_batch=round(float(np.mean(self.batches)), 2) if self.batches else None,
                replicas_seen=len(self.replicas),
                mismatches=self.counts["mismatches"] if checked else None,
                killed=killed or None,
                ok_after_kill=sum(t > killed["at_s"] for t in self.done_at) if "at_s" in killed else None,
                error_messages=dict(self.messages.most_common(3)),
            )


def _client(
    tally: _Tally,
    client: RemoteEngine,
    k: int,
    clients: int,
    clips: list[np.ndarray],
    expected: list[np.ndarray] | None,
    input: str,
    atol: float,
) -> None:
    """One load client: clips ``k``, ``k + clients``, ... one request at a time until the deadline."""
    i = k
    while time.perf_counter() < tally.deadline:
        j = i % len(clips)
        i += clients
        tally.issued()
        t0 = time.perf_counter()
        try:
            out = client.predict_json(clips[j], input=input)
        except (RemoteEngineError, InputError) as e:
            tally.error(e)
            continue
        dt = (time.perf_counter() - t0) * 1e3
        bad = expected is not None and not (
            np.allclose(np.asarray(out["logits"], np.float32), expected[j], atol=atol, rtol=0)
        )
        tally.ok(out, dt, bad)


def _kill_later(tally: _Tally, url: str, kill_after: float, killed: dict[str, Any]) -> None:
    """``kill_after`` seconds into the run, ray.kill one replica; what happened goes into ``killed``."""
    from runtime.serving.app import kill_replica

    time.sleep(max(0.0, tally.t_start + kill_after - time.perf_counter()))
    try:
        killed["replica"] = kill_replica(url)
        killed["at_s"] = time.perf_counter() - tally.t_start
    except Exception as e:  # noqa: BLE001 - reported in the result, not raised from a thread
        killed["error"] = f"{type(e).__name__}: {e}"


def run_load(
    url: str,
    clients: int = 8,
    seconds: float = 20.0,
    kill_after: float | None = None,
    clips: list[np.ndarray] | None = None,
    expected: list[np.ndarray] | None = None,
    input: str = "frames",
    timeout_s: float = 30.0,
    retries: int = 3,
    atol: float = 1e-4,
) -> LoadResult:
    """Run the load; see the module docstring. ``expected[i]`` are the reference logits of ``clips[i]``."""
    client = RemoteEngine(url, timeout_s=timeout_s, retries=retries)
    clips = clips if clips is not None else make_clips(client, input=input)
    killed: dict[str, Any] = {}
    tally = _Tally(seconds)
    threads = [
        threading.Thread(
            target=_client,
            args=(tally, client, k, clients, clips, expected, input, atol),
            daemon=True,
            name=f"load-{k}",
        )
        for k in range(clients)
    ]
    joined = False
    if kill_after is not None:
        from runtime.serving.app import connect_ray

        joined = connect_ray()  # in the main thread, before the clock starts: joining Ray takes a second or two
        tally.restart()
        threads.append(
            threading.Thread(
                target=_kill_later, args=(tally, url, kill_after, killed), daemon=True, name="kill-replica"
            )
        )
    for t in threads:
        t.start()
    # a request started just before the deadline may take all its attempts: wait that long, then count the rest lost
    grace = tally.deadline + (timeout_s + 1.0) * (retries + 1) + 2.0 * (2**retries)
    for t in threads:
        t.join(max(0.0, grace - time.perf_counter()))
    if joined:
        import ray

        ray.shutdown()  # only this driver disconnects; the cluster and the application keep running
    return tally.result(client.retried, clients, expected is not None, killed)


@user_errors("python -m export.serving.load_test")
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m export.serving.load_test", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the served endpoint, e.g. http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients, each one request at a time")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--kill-after", type=float, default=None, help="ray.kill one replica this many seconds in")
    p.add_argument("--engine", default=None, help="the served bundle, here too: check every answer against it")
    p.add_argument("--input", choices=("frames", "clip"), default="frames")
    p.add_argument("--clips", type=int, default=16, help="distinct clips to cycle through")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per attempt")
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    if a.clients < 1 or a.seconds <= 0:
        print(f"make load-test: CLIENTS must be >= 1 and SECONDS > 0, got {a.clients} and {a.seconds}", file=sys.stderr)
        return 2
    try:
        client = RemoteEngine(a.url, timeout_s=a.timeout, retries=1)
        clips = make_clips(client, a.clips, input=a.input)
        expected = expected_logits(a.engine, clips, a.input) if a.engine else None
    except (ValueError, RemoteEngineError, BundleError) as e:  # InputError is a ValueError
        print(f"make load-test: {e}", file=sys.stderr)
        return 2
    res = run_load(a.url, a.clients, a.seconds, a.kill_after, clips, expected, a.input, a.timeout, a.retries)
    text = json.dumps(res.to_dict())
    print(text)
    if a.out:
        from runtime.files import write_text_atomic

        write_text_atomic(a.out, text + "\n")
    return 0 if res.lost == 0 and not res.mismatches and not (res.killed or {}).get("error") else 1


if __name__ == "__main__":
    sys.exit(main())
