"""Clips from real video files, sampled and preprocessed as the published TimeSformer models expect.

Frame ``i`` of a file is its ``i``-th frame in presentation order. The reader first lists the video
packets (demuxing only, no decoding) to map frame indices to presentation timestamps; a clip that
needs frames ``a..b`` seeks to the keyframe at or before ``a`` and decodes forward to ``b``, matching
frames by timestamp, so long files are not decoded in full and variable-frame-rate files sample the
right frames. Frames per clip, dense/uniform sampling, the clip position and the padding of short
videos (indices clamped, frames repeated) come from :func:`runtime.preprocess.sample_indices`; the
resize and crops from :func:`runtime.preprocess.preprocess_frames`.

A missing, empty, corrupt or unsupported file raises :class:`VideoReadError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from runtime.preprocess import PreprocessConfig, preprocess_frames, sample_indices

__all__ = ["VideoReadError", "decode_frames", "video_info", "read_clip", "read_clips"]


class VideoReadError(ValueError):
    """A video file that cannot be read: missing, empty, corrupt, unsupported or without video."""


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a base dependency
        raise RuntimeError("reading video needs PyAV: pip install av") from e
    return av


class _Video:
    """An open video file with its presentation-ordered frame timestamps."""

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        av = _av()
        self.path = str(path)
        p = Path(path)
        if not p.exists():
            raise VideoReadError(f"{path}: no such file")
        if p.is_dir():
            raise VideoReadError(f"{path}: is a directory, expected a video file")
        if p.stat().st_size == 0:
            raise VideoReadError(f"{path}: empty file (0 bytes), expected a video")
        try:
            self.container = av.open(self.path)
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise VideoReadError(f"{path}: not a readable video container ({type(e).__name__}: {e})") from e
        try:
            if not self.container.streams.video:
                kinds = sorted({s.type for s in self.container.streams}) or ["no streams"]
                raise VideoReadError(f"{path}: expected a video stream, found {', '.join(kinds)}")
            self.stream = self.container.streams.video[0]
            self.stream.thread_count = max(1, int(threads))
            self.stream.thread_type = "SLICE" if threads > 1 else "NONE"
            if self.stream.codec_context is None or not self.stream.codec_context.name:
                raise VideoReadError(f"{path}: unsupported video codec")
            self.pts = self._frame_timestamps()
        except BaseException:
            self.container.close()
            raise

    def _frame_timestamps(self) -> list[int] | None:
        """Sorted presentation timestamps of all frames, or None when packets carry no pts."""
        av = _av()
        stamps: list[int] = []
        missing = False
        try:
            for packet in self.container.demux(self.stream):
                if packet.size == 0:
                    continue
                if packet.pts is None:
                    missing = True
                else:
                    stamps.append(int(packet.pts))
        except (av.error.FFmpegError, OSError) as e:
            raise VideoReadError(f"{self.path}: corrupt video data after {len(stamps)} packets ({e})") from e
        if not stamps and not missing:
            raise VideoReadError(f"{self.path}: the video stream holds no frames")
        self.container.seek(0)
        if missing or len(set(stamps)) != len(stamps):
            return None
        return sorted(stamps)

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> "_Video":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def count_frames(self) -> int:
        if self.pts is not None:
            return len(self.pts)
        return sum(1 for _ in self._iter_sequential(0, None))

    def _iter_sequential(self, first: int, last: int | None):
        """(index, frame) for frames first..last decoded from the start, counting frames."""
        av = _av()
        self.container.seek(0)
        n = 0
        try:
            for frame in self.container.decode(self.stream):
                if last is not None and n > last:
                    return
                if n >= first:
                    yield n, frame
                n += 1
        except (av.error.FFmpegError, OSError) as e:
            raise VideoReadError(f"{self.path}: decoding failed after {n} frames ({e})") from e

    def frames(self, wanted: Sequence[int]) -> dict[int, np.ndarray]:
        """RGB uint8 frames for the (sorted, unique) frame indices ``wanted``."""
        av = _av()
        wanted = sorted(set(int(i) for i in wanted))
        if not wanted:
            return {}
        first, last = wanted[0], wanted[-1]
        need = set(wanted)
        out: dict[int, np.ndarray] = {}
        if self.pts is None:  # no timestamps to seek by: decode from the start and count
            for i, frame in self._iter_sequential(first, last):
                if i in need:
                    out[i] = frame.to_ndarray(format="rgb24")
        else:
            index_of = {p: i for i, p in enumerate(self.pts)}
            start_pts, end_pts = self.pts[first], self.pts[last]
            self.container.seek(
                start_pts if first > 0 else self.pts[0], stream=self.stream, backward=True, any_frame=False
            )
            decoded = 0
            try:
                for frame in self.container.decode(self.stream):
                    decoded += 1
                    pts = frame.pts
                    if pts is None:
                        continue
                    if pts > end_pts:
                        break
                    i = index_of.get(int(pts))
                    if i is not None and i in need and i not in out:
                        out[i] = frame.to_ndarray(format="rgb24")
                        if len(out) == len(need):
                            break
            except (av.error.FFmpegError, OSError) as e:
                raise VideoReadError(f"{self.path}: decoding failed near frame {first + len(out)} ({e})") from e
            if len(out) < len(need) and first > 0:  # the seek landed after the window: decode from the start
                for i, frame in self._iter_sequential(0, last):
                    if i in need and i not in out:
                        out[i] = frame.to_ndarray(format="rgb24")
        missing = sorted(need - set(out))
        if missing:
            raise VideoReadError(
                f"{self.path}: expected frames {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                f"of {self.count_frames()}, but they could not be decoded (truncated or corrupt file)"
            )
        return out


def decode_frames(
    path: str | os.PathLike, start_frame: int = 0, max_frames: int | None = None, threads: int = 1
) -> np.ndarray:
    """Frames ``start_frame .. start_frame+max_frames-1`` (all remaining by default) as ``(N, H, W, 3)`` uint8 RGB."""
    if start_frame < 0:
        raise ValueError(f"start_frame: expected >= 0, got {start_frame}")
    if max_frames is not None and max_frames <= 0:
        raise ValueError(f"max_frames: expected a positive number or None, got {max_frames}")
    with _Video(path, threads) as v:
        n = v.count_frames()
        if start_frame >= n:
            raise VideoReadError(f"{path}: start_frame {start_frame} is past the last frame (the video has {n})")
        stop = n if max_frames is None else min(n, start_frame + max_frames)
        got = v.frames(range(start_frame, stop))
    return np.stack([got[i] for i in range(start_frame, stop)])


def video_info(path: str | os.PathLike) -> dict:
    """``{frames, fps, width, height, duration, codec}`` of the first video stream (frames counted exactly)."""
    with _Video(path) as v:
        s = v.stream
        frames = v.count_frames()
        rate = s.average_rate or s.guessed_rate
        span = 0.0
        if v.pts is not None and s.time_base is not None and frames > 1:
            span = float((v.pts[-1] - v.pts[0]) * s.time_base)
        if rate:  # the container's average rate (the nominal rate of constant-rate files)
            fps = float(rate)
        else:
            fps = (frames - 1) / span if span > 0 else 0.0
        if span > 0:  # first to last frame, plus one mean frame interval
            duration = span * frames / (frames - 1)
        else:
            duration = frames / fps if fps else float(v.container.duration or 0) / 1e6
        return {
            "frames": frames,
            "fps": float(fps),
            "width": int(s.codec_context.width),
            "height": int(s.codec_context.height),
            "duration": float(duration),
            "codec": s.codec_context.name,
        }


def clip_indices(num_frames: int, pre: PreprocessConfig, clip_index: int = -1, num_clips: int = 1) -> np.ndarray:
    """The frame indices :func:`read_clip` takes from a video of ``num_frames`` frames."""
    return sample_indices(num_frames, pre, clip_index, num_clips)


def read_clip(
    path: str | os.PathLike,
    pre: PreprocessConfig,
    clip_index: int = -1,
    num_clips: int = 1,
    crop_index: int = 1,
    threads: int = 1,
) -> np.ndarray:
    """One clip in the canonical layout ``(T, 3, crop, crop)`` float32, channels in the model's order
    (``pre.channel_order``): frames are decoded as RGB, and ``preprocess_frames`` flips them for a BGR model.

    ``clip_index`` of ``num_clips`` evenly spaced windows (``-1``: the centre window) for dense sampling;
    ``crop_index`` 0/1/2 picks the first/centre/last of three crops when ``pre.num_crops == 3``.
    """
    if pre.num_crops not in (1, 3):
        raise ValueError(f"num_crops: expected 1 or 3, got {pre.num_crops}")
    if crop_index not in (0, 1, 2):
        raise ValueError(f"crop_index: expected 0, 1 or 2, got {crop_index}")
    with _Video(path, threads) as v:
        n = v.count_frames()
        idx = sample_indices(n, pre, clip_index, num_clips)
        got = v.frames(idx.tolist())
    frames = np.stack([got[int(i)] for i in idx])
    try:
        return preprocess_frames(frames, pre, bgr=False, crop_index=crop_index)  # decoded as rgb24
    except ValueError as e:
        raise VideoReadError(
            f"{path}: frames of {frames.shape[2]}x{frames.shape[1]} do not fit the preprocessing ({e})"
        ) from e


def read_clips(
    paths: Iterable[str | os.PathLike],
    pre: PreprocessConfig,
    progress: bool = True,
    on_error: str = "raise",
    clip_index: int = -1,
    crop_index: int = 1,
) -> tuple[np.ndarray, list[str]]:
    """Clips of many files as ``(N, T, 3, crop, crop)`` float32, and the errors of the files skipped.

    ``on_error="raise"`` stops at the first unreadable file; ``"skip"`` leaves it out and reports
    ``"<path>: <reason>"`` in the returned list.
    """
    from tqdm import tqdm

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error: expected 'raise' or 'skip', got {on_error!r}")
    paths = list(paths)
    clips, errors = [], []
    for p in tqdm(paths, desc="reading clips", unit="clip", disable=not progress):
        try:
            clips.append(read_clip(p, pre, clip_index=clip_index, crop_index=crop_index))
        except VideoReadError as e:
            if on_error == "raise":
                raise
            errors.append(str(e))
    shape = (0, pre.num_frames, 3, pre.crop_size, pre.crop_size)
    return (np.stack(clips) if clips else np.empty(shape, np.float32)), errors
