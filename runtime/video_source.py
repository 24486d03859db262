"""Frames from a video file, an RTSP/HTTP URL or a camera, through PyAV (an optional dependency)."""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterator

import numpy as np


def _av() -> Any:
    try:
        import av
    except ImportError as e:
        raise RuntimeError("reading video needs PyAV: pip install av") from e
    return av


def open_source(source: str | int) -> Any:
    """Open a file path, a URL (``rtsp://``, ``http://``) or a camera index / ``/dev/videoN``."""
    av = _av()
    src = str(source)
    options = {}
    fmt = None
    if src.isdigit():
        src = f"/dev/video{src}" if sys.platform.startswith("linux") else src
        fmt = "v4l2" if sys.platform.startswith("linux") else ("avfoundation" if sys.platform == "darwin" else "dshow")
    elif src.startswith("/dev/video"):
        fmt = "v4l2"
    elif src.startswith(("rtsp://", "rtsps://")):
        # a socket timeout (microseconds): a camera that stops sending raises instead of blocking the reader
        # forever, so the hub can reconnect it
        options = {"rtsp_transport": "tcp", "fflags": "nobuffer", "timeout": "5000000"}
    elif src.startswith(("http://", "https://")):
        options = {"rw_timeout": "5000000"}
    try:
        return av.open(src, format=fmt, options=options)
    except (av.error.FFmpegError, OSError) as e:
        raise RuntimeError(f"{source}: cannot open as a video source ({e})") from e


def iter_frames(source: str | int, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Decoded frames as ``(H, W, 3)`` uint8 RGB, in presentation order."""
    yield from (f for f in iter_frames_or_skip(source, max_frames) if f is not None)


def iter_frames_or_skip(
    source: str | int, max_frames: int | None = None, wants: Callable[[], bool] | None = None
) -> Iterator[np.ndarray | None]:
    """:func:`iter_frames`, but a frame for which ``wants()`` returns False is decoded (the next ones need it) and
    not converted to RGB: None comes in its place (the camera hub's unsampled frames, :meth:`CameraHub.push`)."""
    av = _av()
    container = open_source(source)
    try:
        if not container.streams.video:
            raise RuntimeError(f"{source}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        n = 0
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24") if wants is None or wants() else None
                n += 1
                if max_frames is not None and n >= max_frames:
                    return
        except av.error.FFmpegError as e:
            raise RuntimeError(f"{source}: decoding failed after {n} frames ({e})") from e
    finally:
        container.close()
