"""A camera hub: many cameras, one engine, batched across cameras.

Each camera keeps a ring of preprocessed frames, as :class:`runtime.ClipStream` does: only the frames
the model samples are preprocessed, once, on arrival. A window that falls due is queued as a
reference into the ring (no copy). Unlike ClipStream's, the ring holds each frame once (a window that
wraps around is copied in two pieces): it is copied into the batch anyway, and with many cameras the
ring is the memory that counts. One inference thread (or a few) gathers
the due windows across cameras into one ``engine.infer`` call of up to the engine's largest batch,
copying each window into the batch at that moment; it waits at most ``max_wait_ms`` after the oldest
due window, so a lone camera is never held back for company.

When the device falls behind, each camera's queue holds at most ``queue`` windows: a live camera
drops its oldest (counted per camera), and the ring, sized for exactly that queue, bounds memory; a
file that is not read in real time makes its decoding thread wait instead. Batches are filled oldest
window first, one window per camera per round, so a busy camera cannot starve the others.

Sources (files, URLs, camera indices, frame factories, or frames pushed by the app) decode on their
own threads and are re-opened with exponential backoff when they drop (see :mod:`runtime.sources`), until
``retries`` consecutive attempts gave no frame or the outage lasted ``retry_for_s``. Every camera has a state:
``connecting``, ``live``, ``retrying``, ``failed`` (or ``ended`` for a file, ``removed``), with its last error,
in :meth:`CameraHub.metrics` and reported to ``on_status`` on each change.

``batching``: ``"auto"`` (the default) measures whether batching across cameras costs less per window on this
device than one window per call, and keeps measuring (:mod:`runtime.batching`); ``"on"`` always batches up to the
engine's largest batch, ``"off"`` runs one window per call; ``metrics()["batching"]`` says which it chose and why.

One camera's ring, queue, counters, state and reconnect loop are in :mod:`runtime.hub_camera`; this module
schedules the windows of all cameras into engine calls and delivers the results.

Works with any :class:`runtime.engine_api.BatchEngine` (``preprocess``, ``clip_shape``, ``batch_range``, ``labels``,
``infer(x)``, ``close()``): ``runtime.Engine`` or ``runtime.remote.RemoteEngine``.
"""

from __future__ import annotations

import itertools
import queue as queue_mod
import sys
import threading
import time
from collections import Counter
from typing import Any, Callable, Iterator

import numpy as np

from .batching import BatchPolicy
from .engine_api import BatchEngine
from .errors import InputError
from .prediction import check_top_k
from .prediction import top_k as _top_k
from .hub_camera import Camera, CameraId, HubResult, Window, is_stale, run_source
from .preprocess import FramePreprocessor
from .sources import PushSource, as_source

__all__ = ["CameraHub", "HubResult"]


class CameraHub:
    """Many cameras, one engine: per-camera clip buffers and one batched engine call for the windows due.

    >>> hub = CameraHub(engine, max_wait_ms=20)
    >>> hub.add_camera("rtsp://cam1/stream", on_result=print)
    >>> hub.add_camera("lobby.mp4", camera_id="lobby")
    >>> for r in hub.results(): print(r.camera, r.first_frame, r.last_frame, r.label, r.latency_ms)
    """

    def __init__(
        self,
        engine: BatchEngine,
        max_batch: int | None = None,
        max_wait_ms: float = 20.0,
        queue: int = 4,
        workers: int = 1,
        results: int = 1024,
        on_result: Callable[[HubResult], None] | None = None,
        backoff: tuple[float, float] = (0.5, 30.0),
        max_age_ms: float | None = None,
        retries: int | None = 10,
        retry_for_s: float | None = None,
        on_status: Callable[[CameraId, str, str | None], None] | None = None,
        batching: str = "auto",
    ) -> None:
        self.engine = engine
        self._owns_engine = False  # from_bundle: the hub opened the engine and closes it
        cfg = engine.preprocess
        expected = (cfg.num_frames, 3, cfg.crop_size, cfg.crop_size)
        if tuple(engine.clip_shape) != expected:
            raise InputError(
                f"engine clip shape: expected {expected} (frames, 3, crop, crop) from its preprocessing, "
                f"got {tuple(engine.clip_shape)}"
            )
        lo, hi = (int(v) for v in engine.batch_range)
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch: expected at least 1, got {max_batch}")
        self.min_batch, self.max_batch = lo, hi if max_batch is None else min(hi, max_batch)
        self.max_batch = max(self.max_batch, lo)
        self.max_wait = max_wait_ms / 1e3
        # Under a long overload the per-camera bound still lets (cameras x queue) windows wait; an app that wants
        # only fresh answers drops windows older than this when a batch is formed (counted as dropped).
        self.max_age = None if max_age_ms is None else max_age_ms / 1e3
        self.queue, self.backoff, self.on_result = queue, backoff, on_result
        if retries is not None and retries < 0:
            raise ValueError(f"retries: expected 0 or more consecutive failed attempts (None: forever), got {retries}")
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError(f"backoff: expected (first, longest) delays with 0 < first <= longest, got {backoff}")
        self.retries, self.retry_for_s, self.on_status = retries, retry_for_s, on_status
        self.batching = BatchPolicy(batching, self.max_batch, lo)  # whether batching across cameras pays here
        self._measured = threading.Event()
        #: (windows, seconds, [(camera, latency s), ...]) per successful engine call: for exporters (runtime/metrics.py)
        self.on_call: Callable[[int, float, list[tuple[CameraId, float]]], None] | None = None
        self._cv = threading.Condition()
        self._cams: dict[CameraId, Camera] = {}
        self._pres: dict[tuple[int, int, bool], FramePreprocessor] = {}
        self._ids = itertools.count()
        self._pending = 0
        self._inflight = 0
        self._closing = False
        self._drain_on_close = False
        self._results: queue_mod.Queue | None = queue_mod.Queue(results) if results else None
        self.results_dropped = 0
        self.batch_sizes: Counter[int] = Counter()
        self.busy_s = 0.0
        self.calls = 0
        self.engine_errors = 0
        self.callback_errors = 0
        self.last_engine_error: str | None = None
        self._t0 = time.perf_counter()
        # Each inference thread's batch buffer is allocated here, in the caller's thread: a batch that does not fit
        # in memory fails the constructor with a MemoryError, not the inference thread with windows left queued
        # forever (issue 28 #10).
        shape = (self.max_batch, cfg.num_frames, 3, cfg.crop_size, cfg.crop_size)
        try:
            batches = [np.empty(shape, np.float32) for _ in range(workers)]
        except MemoryError:
            gib = workers * np.prod(shape, dtype=np.float64) * 4 / 2**30
            raise MemoryError(
                f"CameraHub: {workers} batch buffer(s) of {shape} float32 ({gib:.1f} GiB) do not fit in "
                "memory; pass a smaller max_batch"
            ) from None
        self._workers = [
            threading.Thread(target=self._work, args=(b,), name=f"hub-infer-{i}", daemon=True)
            for i, b in enumerate(batches)
        ]
        for t in self._workers:
            t.start()

    @classmethod
    def from_bundle(cls, bundle: str, device: str = "auto", **kwargs: Any) -> "CameraHub":
        """A hub on a new :class:`runtime.Engine` for ``bundle`` (closed with the hub)."""
        from .engine import Engine

        hub = cls(Engine(bundle, device=device), **kwargs)
        hub._owns_engine = True
        return hub

    # ----------------------------------------------------------------- cameras
    def add_camera(
        self,
        source: Any = None,
        camera_id: CameraId | None = None,
        *,
        every: int | None = None,
        bgr: bool = False,
        top_k: int = 5,
        on_result: Callable[[HubResult], None] | None = None,
        loop: bool = False,
        queue: int | None = None,
        drop_oldest: bool | None = None,
    ) -> CameraId:
        """Add a camera while the hub runs; returns its id.

        ``source``: a :class:`~runtime.sources.FrameSource`, a file path, URL or camera index, a function
        returning an iterable of frames (called again on each reconnect), or ``None`` for frames the app
        pushes with :meth:`push`. ``every``: frames between windows (a multiple of the sampling rate).
        ``drop_oldest``: what a full queue does (default: drop for live sources, wait for files).
        """
        check_top_k(top_k)
        src = as_source(source, loop=loop)
        block = (not src.live) if drop_oldest is None else not drop_oldest
        with self._cv:
            if self._closing:
                raise RuntimeError("add_camera: the hub is closed")
            cid = camera_id
            if cid is None:
                cid = next(self._ids)
                while cid in self._cams:
                    cid = next(self._ids)
            elif cid in self._cams:
                raise ValueError(f"camera_id: {cid!r} is already in use")
            cam = Camera(
                cid, src, self.engine, every, bgr, top_k, self.queue if queue is None else queue, on_result, block
            )
            self._cams[cid] = cam
        if not isinstance(src, PushSource):
            cam.thread = threading.Thread(target=self._run_source, args=(cam,), name=f"hub-source-{cid}", daemon=True)
            cam.thread.start()
        return cid

    def remove_camera(self, camera_id: CameraId, timeout: float = 5.0) -> dict[str, Any]:
        """Stop a camera and forget its queued windows; returns its final metrics."""
        with self._cv:
            cam = self._cams.pop(camera_id, None)
            if cam is None:
                raise KeyError(f"camera_id: no camera {camera_id!r} (cameras: {sorted(map(str, self._cams))})")
            cam.removed = True
            cam.stop.set()
            cam.discarded += len(cam.pending)
            self._pending -= len(cam.pending)
            cam.pending.clear()
            self._prune_preprocessors()
            self._cv.notify_all()  # a producer waiting for room must see the stop
            if threading.current_thread() not in self._workers:  # (a callback may remove a camera: no wait there)
                while cam.inflight:  # its windows in an engine call now end as discarded, then the counts are final
                    self._cv.wait()
        with cam.deliver_lock:  # no result of this camera is delivered once this returns
            pass
        if cam.thread is not None and cam.thread is not threading.current_thread():
            cam.thread.join(timeout)
        cam.status = "removed"
        return cam.metrics()

    @property
    def cameras(self) -> list[CameraId]:
        with self._cv:
            return list(self._cams)

    def push(self, camera_id: CameraId, frame: np.ndarray | None, arrived: float | None = None) -> None:
        """Hand one ``(H, W, 3)`` uint8 frame of a camera to the hub (for cameras added with ``source=None``).

        ``None`` for a frame the hub does not sample (:meth:`wants_frame` was False): it is counted, so the sampling
        stays in step, and an app that decodes video itself saves converting it (measured: half the RGB
        conversions for a model sampling every 2nd frame)."""
        cam = self._cams.get(camera_id)  # a dict read is atomic; add/remove hold the lock to write
        if cam is None:
            raise KeyError(f"camera_id: no camera {camera_id!r}")
        self._push(cam, frame, time.perf_counter() if arrived is None else arrived)

    def wants_frame(self, camera_id: CameraId) -> bool:
        """Whether the camera's next frame will be sampled into a window (every ``sampling_rate``-th frame of an
        unbroken run); when False, ``push(camera_id, None)`` counts it without its pixels."""
        cam = self._cams.get(camera_id)
        if cam is None:
            raise KeyError(f"camera_id: no camera {camera_id!r}")
        return cam.samples_next()

    def _preprocessor(self, height: int, width: int, bgr: bool, cam: Camera | None = None) -> FramePreprocessor:
        """One per frame size, shared by the cameras (its taps are ~350 kB for 64 px crops; it is safe to call from
        several threads: the scratch buffer is per thread). Only the sizes some camera uses now are kept: a camera
        that changes resolution again and again, or cameras removed, leave nothing behind (issue 28 #11)."""
        key = (height, width, bgr)
        with self._cv:
            pre = self._pres.get(key)
            if pre is None:
                pre = FramePreprocessor(self.engine.preprocess, height, width, bgr=bgr)
            self._pres[key] = pre
            self._prune_preprocessors(keep=pre, leaving=cam)
            return pre

    def _prune_preprocessors(self, keep: FramePreprocessor | None = None, leaving: Camera | None = None) -> None:
        """Forget the preprocessors no camera holds (``leaving`` is about to drop its own for ``keep``). Hub lock
        held."""
        used = {id(c.pre) for c in self._cams.values() if c.pre is not None and c is not leaving} | {id(keep)}
        self._pres = {k: p for k, p in self._pres.items() if id(p) in used}

    def _push(self, cam: Camera, frame: np.ndarray | None, arrived: float) -> None:
        if frame is None:
            with cam.push_lock:
                if cam.samples_next():
                    raise InputError(
                        f"camera {cam.id!r}: frame: None for a frame the hub samples (wants_frame() is True): "
                        "expected (H, W, 3) uint8"
                    )
                cam.frames += 1
            return
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise InputError(
                f"camera {cam.id!r}: frame: expected (H, W, 3) uint8, got {tuple(frame.shape)} {frame.dtype}"
            )
        with cam.push_lock:
            if cam.pre is None or (cam.pre.height, cam.pre.width) != frame.shape[:2]:
                if cam.pre is not None:
                    cam.reset()  # the camera changed resolution: start a new window
                cam.pre = self._preprocessor(frame.shape[0], frame.shape[1], cam.bgr, cam)
            if cam.status == "waiting for frames":
                self._set_status(cam, "live")
            k = cam.frames - cam.seg_start  # index within the current unbroken run
            cam.frames += 1
            if k % cam.stride:
                return
            s = cam.sampled
            # The slot about to be written must not hold a queued window. The ring is sized so that the queue bound
            # acts first; this catches runs broken again and again before a window fills. Only this producer
            # appends to cam.pending, so a check without the lock that finds nothing stale is final.
            if is_stale(cam, s):
                with self._cv:
                    while is_stale(cam, s):
                        if cam.block and not (cam.stop.is_set() or self._closing):
                            self._cv.wait(0.5)
                            continue
                        cam.pending.popleft()
                        cam.dropped += 1
                        self._pending -= 1
            slot = s % cam.capacity
            cam.pre(frame, cam.ring[slot])
            cam.sampled = s + 1
            if k < cam.span - 1 or (k - (cam.span - 1)) % cam.every:
                return
            w = Window(s + 1 - cam.T, cam.frames - cam.span, cam.frames - 1, arrived)
            with self._cv:
                if cam.removed:
                    return
                if cam.block:  # a file: wait for room rather than lose a window
                    while len(cam.pending) >= cam.queue and not (cam.stop.is_set() or self._closing):
                        self._cv.wait(0.5)
                    if cam.stop.is_set() or self._closing:  # stopped while waiting: as if it came after the stop
                        return
                elif len(cam.pending) >= cam.queue:  # live: the newest window matters most; drop the oldest
                    cam.pending.popleft()
                    cam.dropped += 1
                    self._pending -= 1
                cam.windows_due += 1
                cam.pending.append(w)
                self._pending += 1
                self._cv.notify_all()

    # ----------------------------------------------------------------- decoding threads
    def _set_status(self, cam: Camera, status: str, error: str | None = None) -> None:
        """A camera's state (connecting, live, retrying, failed, ended), reported once per change to ``on_status``."""
        if error is not None:
            cam.last_error, cam.last_error_at = error, time.time()
        if status == cam.status:
            return
        cam.status = status
        if self.on_status is not None:
            try:
                self.on_status(cam.id, status, cam.last_error)
            except Exception:  # noqa: BLE001 - an app's callback must not stop a source
                pass

    def _run_source(self, cam: Camera) -> None:
        """Decode a camera's source on its thread, reconnecting as :func:`runtime.hub_camera.run_source` says."""
        run_source(cam, self._push, self._set_status, self.backoff, self.retries, self.retry_for_s)

    # ----------------------------------------------------------------- scheduling and inference
    def _select(self, limit: int) -> list[tuple[Camera, Window]]:
        """Up to ``limit`` windows: oldest first, one per camera per round (no camera starves). Hub lock held."""
        if self.max_age is not None:
            old = time.perf_counter() - self.max_age
            for c in self._cams.values():
                while c.pending and not c.block and c.pending[0].arrived < old:  # (a file's windows wait)
                    c.pending.popleft()
                    c.dropped += 1
                    self._pending -= 1
        chosen: list[tuple[Camera, Window]] = []
        depth = 0
        cams = [c for c in self._cams.values() if c.pending]
        while len(chosen) < limit:
            cands = [c for c in cams if len(c.pending) > depth]
            if not cands:
                break
            cands.sort(key=lambda c: c.pending[depth].arrived)
            chosen += [(c, c.pending[depth]) for c in cands[: limit - len(chosen)]]
            depth += 1
        for c, _ in chosen:
            c.pending.popleft()  # a camera's chosen windows are its oldest ones, in order
            c.inflight += 1
        self._pending -= len(chosen)
        return chosen

    def _oldest(self) -> float:
        return min(c.pending[0].arrived for c in self._cams.values() if c.pending)

    def _measure(self, batch: np.ndarray) -> None:
        """The batching policy's start measurement, by the first inference thread (the others wait for it)."""
        if threading.current_thread() is self._workers[0] and self.batching.needs_measuring:
            try:
                batch[: self.max_batch] = 0.0
                self.batching.measure(self.engine.infer, batch)
            except Exception as e:  # noqa: BLE001 - an engine that fails here fails on real windows too, counted there
                self.batching.needs_measuring = False
                self.batching.reason = f"not measured ({type(e).__name__}: {e}); batching on"
        self._measured.set()
        self._measured.wait()

    def _work(self, batch: np.ndarray) -> None:
        self._measure(batch)
        while True:
            with self._cv:
                while True:
                    if self._closing and (not self._drain_on_close or self._pending == 0):
                        return
                    if self._pending == 0:
                        self._cv.wait()
                        continue
                    wait = self._oldest() + self.max_wait - time.perf_counter()
                    full = self.max_batch if self.batching.batched else 1
                    if self._pending >= full or wait <= 0 or self._closing:
                        break
                    self._cv.wait(wait)
                chosen = self._select(self.batching.limit(self._pending))
                if not chosen:  # all were too old
                    self._cv.notify_all()
                    continue
                # Copy while the lock is held: a producer overwrites only slots no queued window uses, and these
                # windows left the queue just now, so their slots are intact until the lock is released.
                for i, (cam, w) in enumerate(chosen):
                    cam.copy_window(w, batch[i])
                self._inflight += 1
                self._cv.notify_all()  # producers waiting for room
            try:
                self._infer(batch, chosen)
            finally:
                with self._cv:
                    self._inflight -= 1
                    self._cv.notify_all()

    def _infer(self, batch: np.ndarray, chosen: list[tuple[Camera, Window]]) -> None:
        n = len(chosen)
        m = max(n, self.min_batch)
        if m > n:  # an engine whose smallest batch exceeds the windows due: pad with copies, discard their rows
            batch[n:m] = batch[n - 1]
        t0 = time.perf_counter()
        try:
            logits = np.asarray(self.engine.infer(batch[:m]))
            if (
                logits.ndim != 2
                or logits.shape[0] != m
                or (self.engine.labels and logits.shape[1] != len(self.engine.labels))
            ):
                raise InputError(
                    f"engine.infer: expected logits ({m}, {len(self.engine.labels or []) or 'classes'}), "
                    f"got {logits.shape}"
                )
            if not np.isfinite(logits).all():  # never deliver NaN probabilities (issue 28 #7)
                raise InputError(f"engine.infer: returned non-finite logits (NaN/Inf) for {m} window(s)")
            logits = logits[:n]
        except Exception as e:  # noqa: BLE001 - one failed call must not stop the hub; counted per camera
            t1 = time.perf_counter()
            with self._cv:
                self.busy_s += t1 - t0
                self.calls += 1
                self.engine_errors += 1
                self.last_engine_error = f"{type(e).__name__}: {e}"
                for cam, _ in chosen:
                    cam.inflight -= 1
                    cam.failed += 1
            if self.engine_errors == 1:
                print(
                    f"runtime.hub: engine call failed ({type(e).__name__}: {e}); counted per camera as failed",
                    file=sys.stderr,
                )
            return
        t1 = time.perf_counter()
        self.batching.observe(n, t1 - t0)
        results = []
        with self._cv:
            self.busy_s += t1 - t0
            self.calls += 1
            self.batch_sizes[n] += 1
            for i, (cam, w) in enumerate(chosen):
                cam.inflight -= 1
                if cam.removed:
                    cam.discarded += 1
                    continue
                lat = (t1 - w.arrived) * 1e3
                cam.predictions += 1
                cam.latencies.append(lat)
                results.append(
                    (
                        cam,
                        HubResult(
                            cam.id,
                            w.first_frame,
                            w.last_frame,
                            _top_k(logits[i], self.engine.labels, cam.top_k),
                            logits[i].copy(),
                            lat,
                            n,
                        ),
                    )
                )
        if self.on_call is not None:
            try:
                self.on_call(n, t1 - t0, [(cam.id, r.latency_ms / 1e3) for cam, r in results])
            except Exception as e:  # noqa: BLE001 - an exporter must not stop the hub
                self.callback_errors += 1
                if self.callback_errors == 1:
                    print(f"runtime.hub: on_call raised {type(e).__name__}: {e}", file=sys.stderr)
        for cam, r in results:
            with cam.deliver_lock:
                if cam.removed:
                    continue
                self._deliver(cam, r)

    def _deliver(self, cam: Camera, r: HubResult) -> None:
        for cb in (cam.on_result, self.on_result):
            if cb is not None:
                try:
                    cb(r)
                except Exception as e:  # noqa: BLE001 - an app's callback must not stop the hub
                    self.callback_errors += 1
                    if self.callback_errors == 1:
                        print(f"runtime.hub: on_result raised {type(e).__name__}: {e}", file=sys.stderr)
        if self._results is not None:
            while True:
                try:
                    self._results.put_nowait(r)
                    break
                except queue_mod.Full:  # nobody reads the iterator: keep the newest results, count the rest
                    try:
                        self._results.get_nowait()
                        self.results_dropped += 1
                    except queue_mod.Empty:
                        pass

    # ----------------------------------------------------------------- results, waiting, metrics
    def results(self, timeout: float | None = None) -> Iterator[HubResult]:
        """Results of every camera as they come; ends when the hub is closed (or after ``timeout`` s of silence)."""
        if self._results is None:
            raise RuntimeError("results: this hub was made with results=0 (callbacks only)")
        last = time.perf_counter()
        while True:
            try:
                r = self._results.get(timeout=0.1)
            except queue_mod.Empty:
                if self._closing and not any(t.is_alive() for t in self._workers) and self._results.empty():
                    return
                if timeout is not None and time.perf_counter() - last >= timeout:
                    return
                continue
            last = time.perf_counter()
            yield r

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no window is queued or being predicted; False on timeout."""
        end = None if timeout is None else time.perf_counter() + timeout
        with self._cv:
            while self._pending or self._inflight:
                left = None if end is None else end - time.perf_counter()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(left if left is not None else 0.5)
        return True

    def wait_sources(self, timeout: float | None = None) -> bool:
        """Wait until every source thread has finished (files that ended, failed sources); False on timeout."""
        end = None if timeout is None else time.perf_counter() + timeout
        for cam in list(self._cams.values()):
            if cam.thread is not None:
                cam.thread.join(None if end is None else max(0.0, end - time.perf_counter()))
                if cam.thread.is_alive():
                    return False
        return True

    def metrics(self) -> dict[str, Any]:
        """Per camera: predictions, drops, reconnects, latency p50/p99; the batch-size histogram; device time share
        (time inside ``engine.infer`` / wall time since the hub started, summed over inference threads)."""
        with self._cv:
            cams = list(self._cams.values())
            wall = time.perf_counter() - self._t0
            hist = dict(sorted(self.batch_sizes.items()))
            per = {str(c.id): c.metrics() for c in cams}
            n = sum(hist.values())
            return {
                "cameras": per,
                "batch_sizes": hist,
                "calls": self.calls,
                "mean_batch": (sum(k * v for k, v in hist.items()) / n) if n else None,
                "device_time_share": self.busy_s / wall / len(self._workers) if wall > 0 else 0.0,
                "busy_s": self.busy_s,
                "wall_s": wall,
                "queued": self._pending,
                "ring_bytes": sum(c.ring_bytes() for c in cams),
                "engine_errors": self.engine_errors,
                "last_engine_error": self.last_engine_error,
                "callback_errors": self.callback_errors,
                "results_dropped": self.results_dropped,
                "verification": getattr(self.engine, "verification", None),
                "batching": self.batching.describe(),
            }  # stored parity on this device

    def close(self, drain: bool = False, timeout: float = 10.0) -> None:
        """Stop the sources and the inference threads and join them; ``drain=True`` first predicts what is queued."""
        with self._cv:
            if self._closing and not any(t.is_alive() for t in self._workers):
                return
            for cam in self._cams.values():
                cam.stop.set()
            self._drain_on_close = drain
            self._closing = True
            self._cv.notify_all()
        end = time.perf_counter() + timeout  # one deadline for all: a source stuck in a read must not add up
        threads = [c.thread for c in list(self._cams.values()) if c.thread is not None] + self._workers
        for t in threads:
            if t is not threading.current_thread():
                t.join(max(0.0, end - time.perf_counter()))
        if self._owns_engine:
            self.engine.close()

    def __enter__(self) -> "CameraHub":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
