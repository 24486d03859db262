"""One camera of a :class:`runtime.hub.CameraHub`: its ring of preprocessed frames, its queue of due windows, its
counters and state, and the loop that decodes its source and reconnects with exponential backoff when it drops.

The hub's lock guards the queue fields; the scheduling across cameras and the engine calls are in :mod:`runtime.hub`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .engine_api import BatchEngine
from .preprocess import FramePreprocessor
from .sources import FrameSource, PushSource

__all__ = ["CameraId", "HubResult", "Window", "Camera", "is_stale", "run_source"]

CameraId = Any  # any hashable the app chooses (defaults to 0, 1, 2, ...)


@dataclass
class HubResult:
    """One window of one camera, predicted."""

    camera: CameraId
    first_frame: int  # index of the window's first frame among the frames this camera delivered (0-based)
    last_frame: int  # ... and of its last frame (the prediction is due when it arrives)
    top_k: list[tuple[str, float]]  # (label, probability), best first
    logits: np.ndarray = field(repr=False)
    latency_ms: float = 0.0  # from the arrival of the last frame to the result
    batch_size: int = 1  # windows in the engine call that computed it

    @property
    def label(self) -> str:
        return self.top_k[0][0]


@dataclass
class Window:
    start: int  # first sampled frame (a monotonic ring index)
    first_frame: int
    last_frame: int
    arrived: float  # perf_counter() of the last frame's arrival


class Camera:
    """One camera's ring, queue and counters. Queue fields are guarded by the hub's lock."""

    def __init__(
        self,
        cid: CameraId,
        source: FrameSource,
        engine: BatchEngine,
        every: int | None,
        bgr: bool,
        top_k: int,
        queue: int,
        on_result: Callable[[HubResult], None] | None,
        block: bool,
    ) -> None:
        cfg = engine.preprocess
        self.id, self.source, self.cfg, self.bgr, self.top_k = cid, source, cfg, bgr, top_k
        self.on_result, self.block = on_result, block
        self.stride = max(1, cfg.sampling_rate)
        self.T = cfg.num_frames
        self.span = (cfg.num_frames - 1) * self.stride + 1  # source frames one window covers
        if every is None:  # as ClipStream: half a window, on the sampling grid
            every = max(self.stride, (cfg.num_frames * self.stride // 2) // self.stride * self.stride)
        if every <= 0 or every % self.stride:
            raise ValueError(
                f"every: expected a positive multiple of the sampling rate {self.stride}, got {every} "
                "(windows must fall on the sampling grid to reuse the preprocessed frames)"
            )
        if queue < 1:
            raise ValueError(f"queue: expected at least 1 window per camera, got {queue}")
        self.every, self.queue = every, queue
        # Sampled frames the ring keeps: `queue` pending windows, plus a whole new window after a reconnect (the
        # old windows stay queued while the new run fills its first window, which the queue bound cannot see).
        self.capacity = 2 * self.T + (queue - 1) * (every // self.stride)
        self.ring = np.empty((self.capacity, 3, cfg.crop_size, cfg.crop_size), np.float32)
        self.pending: deque[Window] = deque()
        self.push_lock = threading.Lock()  # one producer at a time: frames of a camera arrive in order
        self.deliver_lock = threading.RLock()  # remove_camera waits out a delivery in progress (re-entrant: a
        # callback may remove its own camera)
        self.pre: FramePreprocessor | None = None
        self.sampled = 0  # sampled frames written, ever (ring index; never reset so queued windows stay valid)
        self.seg_start = 0  # frame index where the current unbroken run of frames began
        self.frames = 0
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.removed = False
        # counters (read by metrics(); ints are updated under the hub lock or by the one producer)
        self.windows_due = self.predictions = self.dropped = self.failed = self.discarded = 0
        self.inflight = 0  # windows in an engine call now
        self.reconnects = self.reconnect_attempts = self.restarts = 0
        self.failed_attempts = 0  # consecutive attempts without a frame in the current outage
        self.status = "waiting for frames" if isinstance(source, PushSource) else "connecting"
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # time.time() of the last error
        self.next_retry_at: float | None = None  # time.time() of the next attempt while retrying
        self.latencies: deque[float] = deque(maxlen=8192)

    def reset(self) -> None:
        """The next frame starts a new run (after a reconnect, a loop or a resolution change)."""
        self.seg_start = self.frames

    def samples_next(self) -> bool:
        """Whether the next frame is sampled into a window (every ``stride``-th frame of the current run)."""
        return (self.frames - self.seg_start) % self.stride == 0

    def copy_window(self, w: Window, out: np.ndarray) -> None:
        """The window's ``T`` frames into ``out`` (one or two slices of the ring)."""
        s, c, t = w.start % self.capacity, self.capacity, self.T
        head = min(t, c - s)
        out[:head] = self.ring[s : s + head]
        if head < t:
            out[head:] = self.ring[: t - head]

    def ring_bytes(self) -> int:
        return self.ring.nbytes

    def metrics(self) -> dict[str, Any]:
        """This camera's counters, state and latency percentiles (``CameraHub.metrics()["cameras"]``)."""
        lat = np.asarray(self.latencies, np.float64)
        return {
            "source": self.source.name,
            "status": self.status,
            "frames": self.frames,
            "windows_due": self.windows_due,
            "predictions": self.predictions,
            "dropped": self.dropped,
            "failed": self.failed,
            "discarded": self.discarded,
            "queued": len(self.pending),
            "in_flight": self.inflight,
            "reconnects": self.reconnects,
            "reconnect_attempts": self.reconnect_attempts,
            "restarts": self.restarts,
            "failed_attempts": self.failed_attempts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "next_retry_at": self.next_retry_at,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        }


def is_stale(cam: Camera, s: int) -> bool:
    """Whether writing sampled frame ``s`` would overwrite the oldest queued window of ``cam``."""
    try:
        return cam.pending[0].start <= s - cam.capacity
    except IndexError:  # empty (or emptied by the scheduler just now)
        return False


def run_source(
    cam: Camera,
    push: Callable[[Camera, np.ndarray | None, float], None],
    set_status: Callable[..., None],
    backoff: tuple[float, float],
    retries: int | None,
    retry_for_s: float | None,
) -> None:
    """Decode a source; re-open it with exponential backoff (``backoff`` = (first, longest) delay) when it drops,
    until ``retries`` consecutive attempts gave no frame or the outage lasted ``retry_for_s``: then ``failed``."""
    src, attempt, recovering = cam.source, 0, False
    initial, longest = backoff
    outage_since = time.perf_counter()
    while not cam.stop.is_set():
        got, reason = 0, "ended"
        try:
            # a source that can skips converting the frames the hub will not sample (every stride-th is)
            frames = src.open(wants=cam.samples_next) if src.skips_unsampled else src.open()
            for frame in frames:
                if cam.stop.is_set():
                    break
                arrived = time.perf_counter()
                if got == 0:
                    set_status(cam, "live")
                    attempt, cam.failed_attempts = 0, 0
                    if recovering:  # frames again after a drop: reconnected
                        cam.reconnects += 1
                        recovering = False
                got += 1
                push(cam, frame, arrived)
        except Exception as e:  # noqa: BLE001 - any failure of a source is reported per camera, then retried
            reason = f"{type(e).__name__}: {e}"
            cam.last_error, cam.last_error_at = reason, time.time()
        if cam.stop.is_set():
            break
        cam.reset()
        if got:
            outage_since = time.perf_counter()
        if reason == "ended" and src.ends:  # a file came to its end: normal, not a drop
            if not src.loop:
                set_status(cam, "ended" if got else "failed", None if got else "no frames")
                break
            if got:
                cam.restarts += 1
                continue
        if not src.retry:
            set_status(cam, "ended" if reason == "ended" else "failed")
            break
        # a dropped stream, an error, or a file that is gone: back off, then reconnect
        if reason == "ended":
            cam.last_error, cam.last_error_at = ("stream ended" if got else "no frames"), time.time()
        attempt += 1
        cam.failed_attempts = attempt
        outage = time.perf_counter() - outage_since
        if (retries is not None and attempt > retries) or (retry_for_s is not None and outage >= retry_for_s):
            bound = (
                f"{retries} retries" if retries is not None and attempt > retries else f"{outage:.0f} s without frames"
            )
            set_status(cam, "failed", f"gave up after {bound} ({cam.last_error})")
            break
        set_status(cam, "retrying")
        recovering = True
        cam.reconnect_attempts += 1
        delay = min(longest, initial * (2 ** (attempt - 1)))
        cam.next_retry_at = time.time() + delay
        cam.stop.wait(delay)
        cam.next_retry_at = None
