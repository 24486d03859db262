"""Video files as cameras for ``make bench-cameras SOURCE=<video>``: looping PyAV decoders and the decoder's limit.

:class:`LoopingDecoder` decodes a file frame by frame, forever (it reopens the file at its end), with FFmpeg's own
threads (``thread_count``; 0 lets FFmpeg choose) and hands out RGB frames either full size or resized by FFmpeg's
scaler (``VideoFrame.reformat(width, height)``, in the same pass as the YUV -> RGB conversion).
:func:`decode_rate` measures frames/s of the decoder alone (no conversion), ``decoders`` at once, as the cameras run
them; :func:`choose_decoding` picks the thread count and the output size by measuring them on this machine.
:func:`synthetic_video` makes a 720p H.264 file from the synthetic motion clips when no real footage is at hand.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LoopingDecoder", "decode_rate", "scaled_size", "convert_cost", "choose_decoding", "synthetic_video"]

#: decoder thread counts tried (0: FFmpeg's choice, one per core plus one)
THREAD_CHOICES = (1, 2, 0)
#: the decoder scaler's filter when it resizes: area averaging (measured on 720p -> 64 px: as close to the
#: preprocessing's own resize as bilinear or bicubic, and cheaper; fast-bilinear aliases, twice as far off)
SCALER = "AREA"


class LoopingDecoder:
    """Frames of ``path`` forever. ``size``: (width, height) to resize to with FFmpeg's scaler, None for full size."""

    def __init__(self, path: str | Path, threads: int = 1, size: tuple[int, int] | None = None) -> None:
        from av.video.reformatter import VideoReformatter

        self.path, self.threads, self.size = str(path), threads, size
        self.loops = 0
        # one scaler context for the decoder's life: VideoFrame.reformat makes a new one per frame, which cost
        # twice the conversion itself (720p -> 114x64 RGB: 0.74 vs 0.35 ms per frame)
        self._reformatter = VideoReformatter()
        self._open()

    def _open(self) -> None:
        import av

        self._container = av.open(self.path)
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = self.threads
        self._frames = self._container.decode(stream)

    def next_raw(self) -> Any:
        """The next decoded ``av.VideoFrame`` (YUV, not converted)."""
        for _ in range(2):
            for frame in self._frames:
                return frame
            self._container.close()
            self.loops += 1
            self._open()
        raise ValueError(f"{self.path}: no video frames")

    def convert(self, frame: Any) -> np.ndarray:
        """``frame`` as ``(H, W, 3)`` uint8 RGB, resized by the scaler when ``size`` is set."""
        if self.size is None:
            return frame.to_ndarray(format="rgb24")
        w, h = self.size
        return self._reformatter.reformat(frame, width=w, height=h, format="rgb24", interpolation=SCALER).to_ndarray()

    def __next__(self) -> np.ndarray:
        return self.convert(self.next_raw())

    def close(self) -> None:
        self._container.close()


def video_size(path: str | Path) -> tuple[int, int, float]:
    """(width, height, frames per second) of the file's first video stream."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s.codec_context.width, s.codec_context.height, float(s.average_rate or 25)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """The frame size with the short side ``short_side`` (even, aspect kept): what the model's resize needs."""
    scale = short_side / min(width, height)
    return max(short_side, 2 * round(width * scale / 2)), max(short_side, 2 * round(height * scale / 2))


def decode_rate(path: str | Path, threads: int, decoders: int = 1, seconds: float = 2.0) -> dict[str, Any]:
    """Frames/s of ``decoders`` looping decoders at once (threads each), decoding only: the decoder's limit."""
    counts = [0] * decoders
    stop = time.perf_counter() + seconds

    def run(i: int) -> None:
        d = LoopingDecoder(path, threads)
        while time.perf_counter() < stop:
            d.next_raw()
            counts[i] += 1
        d.close()

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(decoders)]
    t0, c0 = time.perf_counter(), time.process_time()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    return {
        "threads": threads,
        "decoders": decoders,
        "frames": sum(counts),
        "seconds": round(wall, 3),
        "fps": sum(counts) / wall,
        "cpu_s_per_frame": (time.process_time() - c0) / max(1, sum(counts)),
    }


def convert_cost(
    path: str | Path, size: tuple[int, int] | None, preprocess: Any, frames: int = 60
) -> tuple[dict[str, Any], np.ndarray]:
    """CPU per frame of decode + conversion + the hub's preprocessing of every ``sampling_rate``-th frame for one
    output size (None: full size, resized by the preprocessing); and the preprocessed frames."""
    from runtime.preprocess import FramePreprocessor

    d = LoopingDecoder(path, 1, size)
    pre, outs = None, []
    c0 = time.process_time()
    for i in range(frames):
        rgb = next(d)
        if pre is None:
            pre = FramePreprocessor(preprocess, rgb.shape[0], rgb.shape[1])
        if i % preprocess.sampling_rate == 0:
            outs.append(np.empty(pre.out_shape, np.float32))
            pre(rgb, outs[-1])
    cost = (time.process_time() - c0) / frames
    d.close()
    return {"size": list(size) if size else "full", "cpu_ms_per_frame": 1e3 * cost}, np.stack(outs)


def choose_decoding(path: str | Path, preprocess: Any, decoders: int, seconds: float = 2.0) -> dict[str, Any]:
    """Measure and choose: the decoder thread count with the most frames/s for ``decoders`` decoders at once (that
    rate is the decode-only limit), and the output size (full size vs the scaler's resize to the model's short side)
    with the least CPU per frame, preprocessing included. The scaler's frames differ a little from the full-size
    path's after preprocessing (another resize filter): their mean |difference| (normalised units) is recorded."""
    width, height, fps = video_size(path)
    rates = [decode_rate(path, t, decoders, seconds) for t in THREAD_CHOICES]
    best = max(rates, key=lambda r: r["fps"])
    small = scaled_size(width, height, preprocess.short_side)
    full, full_out = convert_cost(path, None, preprocess)
    scaled, scaled_out = convert_cost(path, small, preprocess)
    scaled["mean_abs_diff_vs_full"] = float(np.abs(scaled_out - full_out).mean())
    size = None if full["cpu_ms_per_frame"] <= scaled["cpu_ms_per_frame"] else small
    return {
        "video": {"path": str(path), "width": width, "height": height, "fps": fps},
        "decode_rates": rates,
        "threads": best["threads"],
        "decode_limit_fps": best["fps"],
        "output_costs": [full, scaled],
        "scaler": SCALER,
        "output_size": list(size) if size else None,
        "rule": "threads: the most decode-only frames/s with as many decoders at once as pacing threads; output "
        "size: the least CPU per frame for decode + RGB conversion + the hub's preprocessing",
    }


def synthetic_video(
    path: str | Path, width: int = 1280, height: int = 720, seconds: float = 8.0, fps: int = 25, seed: int = 0
) -> Path:
    """A ``width x height`` H.264 file of synthetic motion clips (made once; rendering 720p takes a minute)."""
    from calibration.clips.synthetic import CLASSES, render_clip, write_video

    path = Path(path)
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    n = int(seconds * fps)
    per = 25
    clips = [render_clip(i % len(CLASSES), rng, width, height, num_frames=per) for i in range(-(-n // per))]
    return write_video(path, np.concatenate(clips)[:n], fps=fps, container="mp4", crf=23)


def footage_720p(path: str | Path, seconds: float = 30.0, crf: int = 23) -> Path:
    """A 1280x720 H.264 file of real camera footage: the first ``seconds`` of OpenCV's ``vtest.avi`` (a fixed
    street camera, 768x576 MPEG-4; :mod:`calibration.clips.footage`) scaled by libswscale (bicubic) and encoded at
    its own frame rate. The content is a real camera's (noise, compression artefacts, people walking), the size and
    codec those of a common IP camera stream. Made once; raises RuntimeError naming ``make footage`` without it."""
    import av

    from calibration.clips.footage import INSTALL_HINT, find_footage
    from calibration.clips.synthetic import write_video

    path = Path(path)
    if path.is_file():
        return path
    folder = find_footage()
    if folder is None:
        raise RuntimeError(f"--source footage-720p needs OpenCV's sample videos: {INSTALL_HINT}")
    frames = []
    with av.open(str(folder / "vtest.avi")) as src:
        stream = src.streams.video[0]
        fps = int(round(float(stream.average_rate or 10)))
        for frame in src.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24", width=1280, height=720, interpolation="BICUBIC"))
            if len(frames) >= seconds * fps:
                break
    return write_video(path, np.stack(frames), fps=fps, container="mp4", crf=crf)
