"""Frame sources for the camera hub: what a camera is, how it is opened, and whether it comes back.

A source opens into an iterator of ``(H, W, 3)`` uint8 frames. The hub runs each source on its own
thread (PyAV releases the GIL while it decodes, so decoding overlaps inference) and re-opens it with
exponential backoff when it drops, if :attr:`FrameSource.retry` says so. PyAV is imported only when a
video source is opened.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

__all__ = ["FrameSource", "VideoSource", "CallableSource", "ArraySource", "PushSource", "as_source", "is_live"]


def is_live(url: str) -> bool:
    """Network streams and cameras run at their own pace (they drop, not wait); files can be read at ours."""
    s = str(url)
    return s.isdigit() or s.startswith(
        ("/dev/video", "rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
    )


class FrameSource:
    """One camera's frames. Subclasses implement :meth:`open`.

    ``retry``: re-open (with backoff) after an error; ``ends``: the stream ending is normal (a file), not a
    drop to reconnect; ``loop``: re-open a stream that ended normally;
    ``live``: the source does not wait for the hub, so a full queue drops its oldest window (a file
    that is not live makes its decoding thread wait instead: every window of a file is predicted).
    """

    name: str = "source"
    retry: bool = False
    ends: bool = True
    loop: bool = False
    live: bool = True
    #: ``open(wants=...)`` yields None for frames ``wants()`` declines, skipping their conversion
    skips_unsampled: bool = False

    def open(self, wants: Callable[[], bool] | None = None) -> Iterator[np.ndarray | None]:
        """The frames; ``wants`` is passed only when :attr:`skips_unsampled` is set."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class VideoSource(FrameSource):
    """A video file, an ``rtsp://``/``http://`` URL or a camera index, decoded by PyAV.

    Network streams and cameras are retried (with backoff, up to the hub's bound) when they drop or fail to open; a
    file is retried only with ``loop=True`` (it then also restarts when it ends, and a file that was
    removed is waited for). ``realtime=True`` paces a file at its frame rate, as a camera would deliver it.
    """

    def __init__(
        self, url: str | int | os.PathLike, loop: bool = False, realtime: bool = False, max_frames: int | None = None
    ) -> None:
        self.url = str(url)
        self.name = self.url
        live = is_live(self.url)
        self.loop = loop
        self.retry = live or loop
        self.ends = not live
        self.live = live or realtime
        self.realtime = realtime and not live
        self.max_frames = max_frames

    skips_unsampled = True

    def open(self, wants: Callable[[], bool] | None = None) -> Iterator[np.ndarray | None]:
        """Decoded RGB frames; with ``wants``, None for the frames it declines (decoded, not converted)."""
        from .video_source import iter_frames_or_skip, open_source  # PyAV, lazily

        if not self.realtime:
            yield from iter_frames_or_skip(self.url, self.max_frames, wants)
            return
        container = open_source(self.url)
        try:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 25)
        finally:
            container.close()
        yield from paced(iter_frames_or_skip(self.url, self.max_frames, wants), rate)


class CallableSource(FrameSource):
    """``factory()`` returns an iterable of frames; called again on every (re)connect (e.g. an app's capture)."""

    def __init__(
        self,
        factory: Callable[[], Iterable[np.ndarray]],
        name: str = "callable",
        retry: bool = True,
        live: bool = True,
        ends: bool = False,
    ) -> None:
        self.factory, self.name, self.retry, self.live, self.ends = factory, name, retry, live, ends

    def open(self, wants: Callable[[], bool] | None = None) -> Iterator[np.ndarray | None]:
        yield from self.factory()


class ArraySource(FrameSource):
    """Pre-decoded frames replayed at ``fps`` (a simulated camera): ``count`` frames, cycling through ``frames``."""

    def __init__(
        self, frames: np.ndarray, fps: float | None, count: int | None = None, name: str = "array", offset: int = 0
    ) -> None:
        self.frames, self.fps, self.count, self.name, self.offset = frames, fps, count, name, offset
        self.live = fps is not None

    def open(self, wants: Callable[[], bool] | None = None) -> Iterator[np.ndarray | None]:
        n = len(self.frames)
        total = n if self.count is None else self.count
        it = (self.frames[(self.offset + i) % n] for i in range(total))
        yield from (paced(it, self.fps) if self.fps else it)


class PushSource(FrameSource):
    """Frames the app pushes itself (``hub.push(camera, frame)``); the hub runs no thread for it.

    Push one camera's frames from one thread at a time (they are serialised per camera anyway)."""

    def __init__(self, name: str = "push", live: bool = True) -> None:
        self.name, self.live = name, live


def paced(frames: Iterable[np.ndarray | None], fps: float) -> Iterator[np.ndarray | None]:
    """Yield frames no faster than ``fps``, on a fixed schedule (a late frame does not shift the ones after it)."""
    period = 1.0 / fps
    t0 = time.perf_counter()
    for i, frame in enumerate(frames):
        delay = t0 + i * period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield frame


def as_source(
    source: "FrameSource | str | int | os.PathLike | Callable[[], Iterable[np.ndarray]] | None", loop: bool = False
) -> FrameSource:
    """What :meth:`CameraHub.add_camera` accepts: a source object, a path/URL/camera index, a frame factory,
    or ``None`` (frames pushed by the app)."""
    if isinstance(source, FrameSource):
        return source
    if source is None:
        return PushSource()
    if isinstance(source, (str, int, Path, os.PathLike)):
        return VideoSource(source, loop=loop)
    if callable(source):
        return CallableSource(source, name=getattr(source, "__name__", "callable"))
    raise TypeError(
        f"source: expected a FrameSource, a path, URL or camera index, a frame factory or None, "
        f"got {type(source).__name__}"
    )
