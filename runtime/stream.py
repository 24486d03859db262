"""A streaming clip buffer for live cameras.

Frames are pushed one at a time. Only the frames the model will see (every ``sampling_rate``-th
frame) are preprocessed, once, when they arrive, into a ring of ``2 x num_frames`` slots where each
frame is written twice (slot ``j`` and ``j + T``): the last ``T`` sampled frames are then always one
contiguous slice of the ring, which is handed to the engine as it is. No prediction copies or
re-preprocesses the window.

A ``ClipStream`` is one camera's buffer: its frames must arrive in order, from one thread at a time. The
engine behind it may be shared by many streams on many threads; a second thread calling :meth:`push` (or
:meth:`reset`) while a call is in progress is refused with :class:`StreamBusyError` rather than allowed to
interleave frames or overwrite the window the engine is reading.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from .engine_api import ClipEngine
from .errors import InputError
from .prediction import Prediction, check_top_k, top_k
from .preprocess import FramePreprocessor


class StreamBusyError(RuntimeError):
    """Two threads used one ClipStream at once; a stream is per camera (use one per camera and thread)."""


class ClipStream:
    """Push frames; every ``every`` frames (once the window is full) :meth:`push` returns a prediction.

    Per camera and per thread (see the module docstring); uses only :class:`runtime.engine_api.ClipEngine`
    (``preprocess``, ``infer``, ``labels``), so any engine object offering it works (local or remote).
    """

    def __init__(self, engine: ClipEngine, every: int | None = None, bgr: bool = False, top_k: int = 5) -> None:
        cfg = engine.preprocess
        self.engine, self.bgr, self.top_k = engine, bgr, check_top_k(top_k)
        self.stride = max(1, cfg.sampling_rate)
        self.frames_per_clip = cfg.num_frames
        self.window = (cfg.num_frames - 1) * self.stride + 1
        if every is None:
            every = max(self.stride, (cfg.num_frames * self.stride // 2) // self.stride * self.stride)
        if every <= 0 or every % self.stride:
            raise ValueError(
                f"every: expected a positive multiple of the sampling rate {self.stride}, got {every} "
                "(predictions must fall on the sampling grid to reuse the preprocessed frames)"
            )
        self.every = every
        t = cfg.num_frames
        self._ring = np.empty((2 * t, 3, cfg.crop_size, cfg.crop_size), np.float32)
        self._pre: FramePreprocessor | None = None
        self._busy = threading.Lock()
        self._reset()

    def _enter(self, what: str) -> None:
        # non-blocking: a stream used by two threads at once is a bug in the caller (frame order undefined)
        if not self._busy.acquire(blocking=False):
            raise StreamBusyError(
                f"ClipStream.{what}: another thread is using this stream; a ClipStream is one "
                "camera's buffer and takes its frames in order from one thread: create one "
                "stream per camera (engine.stream()), the Engine itself may be shared"
            )

    def reset(self) -> None:
        """Forget the frames seen so far (e.g. after a camera reconnect)."""
        self._enter("reset")
        try:
            self._reset()
        finally:
            self._busy.release()

    def _reset(self) -> None:
        self.frames_seen = 0
        self._sampled = 0

    @property
    def window_view(self) -> np.ndarray:
        """The current clip ``(1, T, 3, H, W)``: a view into the ring, not a copy."""
        t = self.frames_per_clip
        start = self._sampled % t
        return self._ring[start : start + t][None]

    def push(self, frame: np.ndarray) -> Prediction | None:
        """Add one ``(H, W, 3)`` uint8 frame; returns a prediction when one is due."""
        self._enter("push")
        try:
            return self._push(frame)
        finally:
            self._busy.release()

    def _push(self, frame: np.ndarray) -> Prediction | None:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise InputError(f"frame: expected (H, W, 3) uint8, got {tuple(frame.shape)} {frame.dtype}")
        if self._pre is None or (self._pre.height, self._pre.width) != frame.shape[:2]:
            if self._pre is not None:
                self._reset()  # the camera changed resolution: start a new window
            self._pre = FramePreprocessor(self.engine.preprocess, frame.shape[0], frame.shape[1], bgr=self.bgr)
        k = self.frames_seen
        self.frames_seen += 1
        if k % self.stride:
            return None
        t0 = time.perf_counter()
        t = self.frames_per_clip
        slot = self._sampled % t
        self._pre(frame, self._ring[slot])
        self._ring[slot + t] = self._ring[slot]
        self._sampled += 1
        if k < self.window - 1 or (k - (self.window - 1)) % self.every:
            return None
        logits = self.engine.infer(self.window_view)[0]
        return Prediction(
            top_k(logits, self.engine.labels, self.top_k),
            logits,
            (time.perf_counter() - t0) * 1e3,
            dict(getattr(self.engine, "prediction_metadata", {})),
        )
