"""The preprocessing contract, as data plus a numpy implementation shared by every stage.

Canonical model input for the whole project: ``(batch, frames, 3, H, W)`` float32, RGB,
``(pixel / 255 - mean) / std``. Raw camera frames are ``(H, W, 3)`` uint8 (RGB, or BGR
when flagged). Resizing follows the published TimeSformer test path: bilinear resize of the
short side (``align_corners=False``, no antialias, as ``torch.nn.functional.interpolate``),
then a centre crop (or three crops along the long side).
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from .errors import InputError

__all__ = [
    "PreprocessConfig",
    "FramePreprocessor",
    "preprocess_frames",
    "resize_crop_indices",
    "normalize",
    "CHANNEL_ORDERS",
]

CHANNEL_ORDERS = ("RGB", "BGR")
SAMPLINGS = ("dense", "uniform")
#: upper bound of every integer field: sizes and counts are int32 dimensions for the engines
MAX_INT = 2**31 - 1
STD_RANGE = (1e-6, 1e6)
MEAN_LIMIT = 1e6


def _check_int(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= MAX_INT:
        raise ValueError(f"preprocess.{name}: expected an integer in 1..{MAX_INT}, got {v!r}")


def _three_floats(name: str, v: Any, positive: bool) -> tuple[float, float, float]:
    if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__len__") or len(v) != 3:
        raise ValueError(f"preprocess.{name}: expected 3 numbers (one per channel), got {v!r}")
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)) or not math.isfinite(x):
            raise ValueError(f"preprocess.{name}: expected 3 finite numbers, got {list(v)!r}")
        # bounds that keep (pixel / 255 - mean) / std finite in float32 (and catch 0..255 units by mistake)
        if positive and not STD_RANGE[0] <= x <= STD_RANGE[1]:
            raise ValueError(
                f"preprocess.{name}: expected 3 numbers in {STD_RANGE[0]:g}..{STD_RANGE[1]:g} (pixels "
                f"are divided by them), got {list(v)!r}"
            )
        if not positive and not abs(x) <= MEAN_LIMIT:
            raise ValueError(f"preprocess.{name}: expected 3 numbers within +-{MEAN_LIMIT:g}, got {list(v)!r}")
        out.append(float(x))
    return out[0], out[1], out[2]


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw video becomes the canonical tensor; validated on construction (``ValueError`` naming the field).

    ``channel_order`` is the order the MODEL expects its three input channels in ("RGB", or "BGR" for models
    trained on frames decoded by OpenCV, such as the official Something-Something-v2 checkpoints); ``mean``
    and ``std`` are per model input channel, in that order. The frames handed to the preprocessing carry
    their own flag (``bgr=``); the two are compared and the channels flipped when they differ.
    """

    num_frames: int = 8
    sampling_rate: int = 32  # take every n-th frame of the source (dense sampling)
    sampling: str = "dense"  # "dense" (frames at a fixed stride) or "uniform" (spread over the video)
    short_side: int = 224
    crop_size: int = 224
    num_crops: int = 1  # 1: centre crop; 3: left/centre/right (or top/centre/bottom)
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        # mean/std become tuples of floats (hashable: the config keys the preprocessor cache)
        object.__setattr__(self, "mean", _three_floats("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _three_floats("std", self.std, positive=True))
        for name in ("num_frames", "sampling_rate", "short_side", "crop_size", "num_crops"):
            _check_int(name, getattr(self, name))
        if self.num_crops not in (1, 3):
            raise ValueError(f"preprocess.num_crops: expected 1 (centre crop) or 3, got {self.num_crops!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"preprocess.sampling: expected one of {SAMPLINGS}, got {self.sampling!r}")
        if self.crop_size > self.short_side:
            # the crop is taken from the frame resized to short_side: it cannot be larger
            raise ValueError(
                f"preprocess.crop_size: expected at most short_side ({self.short_side}), got {self.crop_size}"
            )
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"preprocess.channel_order: expected one of {CHANNEL_ORDERS}, got {self.channel_order!r}")

    @property
    def model_bgr(self) -> bool:
        """Whether the model expects BGR channels."""
        return self.channel_order == "BGR"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "PreprocessConfig":
        """Parse and validate (missing keys take the defaults); ``ValueError`` names the field."""
        if not isinstance(d, dict):
            raise ValueError(f"preprocess: expected a JSON object, got {type(d).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"preprocessing contract: unknown keys {sorted(map(str, unknown))}; expected a subset of "
                f"{sorted(known)}"
            )
        return cls(**d)

    def window(self) -> int:
        """Number of consecutive source frames one dense clip spans."""
        return (self.num_frames - 1) * self.sampling_rate + 1


def _axis_taps(src: int, dst_full: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps (i0, i1, w1) for output pixels [start, start+count) of a src->dst_full resize.

    Same values as ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``, written so
    that ``i1 == i0 + 1`` whenever ``src > 1``: past the last source pixel the pair (src-2, src-1) with
    weight 1 replaces torch's clamped pair (src-1, src-1), which gives the same value.
    """
    # float32 arithmetic, as torch's CPU kernel computes the source coordinates
    scale = np.float32(src) / np.float32(dst_full)
    x = (np.arange(start, start + count, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    x = np.maximum(x, np.float32(0.0))
    if src == 1:
        zeros = np.zeros(count, np.int64)
        return zeros, zeros, np.zeros(count, np.float32)
    i0 = np.minimum(np.floor(x).astype(np.int64), src - 2)
    w1 = np.minimum(x - i0.astype(np.float32), np.float32(1.0)).astype(np.float32)
    return i0, i0 + 1, w1


def resize_crop_indices(
    height: int, width: int, short_side: int, crop_size: int, crop_index: int = 1, num_crops: int = 1
) -> tuple[tuple, tuple]:
    """Taps for 'resize short side to ``short_side``, then crop ``crop_size``', computed only for the crop.

    ``crop_index`` 0/1/2 picks the first/centre/last crop along the long side (centre for one crop).
    """
    if height <= 0 or width <= 0:  # InputError: the caller's frames (a 400 when served), not a broken engine
        raise InputError(f"frames: expected frames of at least 1x1 pixels, got {height}x{width} (height x width)")
    if height <= width:
        new_h, new_w = short_side, int(np.floor(width * short_side / height))
    else:
        new_h, new_w = int(np.floor(height * short_side / width)), short_side
    if crop_size > min(new_h, new_w):
        raise ValueError(f"crop {crop_size} larger than resized frame {new_h}x{new_w}")
    top, left = (new_h - crop_size) // 2, (new_w - crop_size) // 2
    if num_crops == 3:
        if new_h > new_w:
            top = [0, (new_h - crop_size) // 2, new_h - crop_size][crop_index]
        else:
            left = [0, (new_w - crop_size) // 2, new_w - crop_size][crop_index]
    return _axis_taps(height, new_h, top, crop_size), _axis_taps(width, new_w, left, crop_size)


def normalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8/float ``(..., H, W, 3)`` in 0..255 -> float32 ``(..., 3, H, W)`` normalised."""
    scale = (1.0 / (255.0 * np.asarray(std, np.float32))).astype(np.float32)
    shift = (np.asarray(mean, np.float32) / np.asarray(std, np.float32)).astype(np.float32)
    x = pixels.astype(np.float32, copy=False) * scale - shift
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


class FramePreprocessor:
    """Resize-crop-normalise of single ``(H, W, 3)`` uint8 frames, with the sampling taps precomputed.

    Each output value is the bilinear blend of four source bytes at ``base``, ``base + 3`` (the pixel to
    the right), ``base + 3W`` (below) and ``base + 3W + 3``. One index array serves all four taps (as
    offset views of the frame), and the four weights (with ``1/(255*std)`` folded in) are computed once
    per source size, so a frame costs four gathers and one weighted sum: about 0.45 ms for
    640x480 -> 224 on one core.

    ``bgr`` says the order of the frames given; ``cfg.channel_order`` the order the model expects. When they
    differ, output channel ``c`` reads source byte ``2 - c``.

    Thread safety: an instance may be called from several threads at once (``preprocess_frames`` shares one
    per frame size between threads). The taps are read-only after ``__init__``; the gather scratch buffer is
    per thread.
    """

    def __init__(self, cfg: PreprocessConfig, height: int, width: int, bgr: bool = False, crop_index: int = 1) -> None:
        self.cfg, self.height, self.width, self.bgr = cfg, height, width, bgr
        self.flip = bool(bgr) != cfg.model_bgr
        (y0, y1, wy), (x0, x1, wx) = resize_crop_indices(
            height, width, cfg.short_side, cfg.crop_size, crop_index, cfg.num_crops
        )
        ch = np.arange(3)[:, None, None]
        if self.flip:  # output channel c (the model's order) reads source byte 2 - c
            ch = 2 - ch
        std = np.asarray(cfg.std, np.float32)[:, None, None]
        mean = np.asarray(cfg.mean, np.float32)[:, None, None]
        self.index = (y0[None, :, None] * (width * 3) + x0[None, None, :] * 3 + ch).ravel().astype(np.intp)
        dy = (y1[0] - y0[0]) * width * 3
        dx = (x1[0] - x0[0]) * 3
        self.offsets = (0, dx, dy, dy + dx)
        if int(self.index.max()) + dy + dx >= height * width * 3 or int(self.index.min()) < 0:
            raise AssertionError(f"resize taps out of range for a {height}x{width} frame")  # a bug, not bad input
        self.weight = np.stack(
            [
                np.broadcast_to(
                    (wys[None, :, None] * wxs[None, None, :]) / (255.0 * std), (3, cfg.crop_size, cfg.crop_size)
                )
                .astype(np.float32)
                .ravel()
                for wys in (1 - wy, wy)
                for wxs in (1 - wx, wx)
            ]
        )
        self.shift = np.ascontiguousarray(
            np.broadcast_to(mean / std, (3, cfg.crop_size, cfg.crop_size)), np.float32
        ).ravel()
        # Per-thread gather scratch: one shared buffer let two threads overwrite each other's taps between
        # the gathers and the weighted sum (issue 13: wrong logits under concurrent predict). A thread-local
        # costs one attribute lookup per frame; a fresh buffer per call would page-fault ~600 kB per frame.
        self._scratch = threading.local()

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (3, self.cfg.crop_size, self.cfg.crop_size)

    def __call__(self, frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """One ``(H, W, 3)`` uint8 frame -> ``(3, crop, crop)`` float32 (written into ``out`` when given)."""
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"frame: expected ({self.height}, {self.width}, 3) uint8, got {tuple(frame.shape)} {frame.dtype}"
            )
        flat = np.ascontiguousarray(frame).reshape(-1)
        dst = np.empty(self.out_shape, np.float32) if out is None else out
        if dst.shape != self.out_shape or dst.dtype != np.float32 or not dst.flags.c_contiguous:
            raise ValueError(
                f"out: expected a C-contiguous float32 array of shape {self.out_shape}, got "
                f"{dst.shape} {dst.dtype}{'' if dst.flags.c_contiguous else ' (not contiguous)'}"
            )
        o = dst.reshape(-1)
        taps = getattr(self._scratch, "taps", None)
        if taps is None:
            taps = self._scratch.taps = np.empty((4, self.shift.size), np.uint8)
        for i, off in enumerate(self.offsets):
            # every index is in range (checked in __init__); a mode other than "raise" lets numpy write
            # straight into ``out`` instead of through a buffer: about 30% faster
            np.take(flat[off:], self.index, out=taps[i], mode="wrap")
        np.einsum("in,in->n", taps, self.weight, out=o, casting="unsafe")
        np.subtract(o, self.shift, out=o)
        return dst


def preprocess_frames(
    frames: np.ndarray | Sequence[np.ndarray],
    cfg: PreprocessConfig,
    bgr: bool = False,
    crop_index: int = 1,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Frames ``(T, H, W, 3)`` uint8 (already temporally sampled) -> ``(T, 3, crop, crop)`` float32.

    ``bgr``: the frames are BGR (as OpenCV decodes them); the output is in ``cfg.channel_order``. Thread-safe.
    """
    arr = frames if isinstance(frames, np.ndarray) else np.stack([np.asarray(f) for f in frames])
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames: expected (T, H, W, 3), got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise ValueError(f"frames: expected dtype uint8, got {arr.dtype}")
    if arr.shape[0] != cfg.num_frames:
        raise ValueError(f"frames: expected {cfg.num_frames} frames, got {arr.shape[0]}")
    pre = _cached(cfg, arr.shape[1], arr.shape[2], bgr, crop_index)
    result = np.empty((arr.shape[0],) + pre.out_shape, np.float32) if out is None else out
    for t in range(arr.shape[0]):
        pre(arr[t], result[t])
    return result


_CACHE: dict[tuple, FramePreprocessor] = {}


def _cached(cfg: PreprocessConfig, h: int, w: int, bgr: bool, crop_index: int) -> FramePreprocessor:
    # Shared by threads: dict get/set are atomic under the GIL, and a preprocessor dropped by clear() stays
    # valid for a thread still holding it; two threads may build the same one once, which is harmless.
    key = (cfg, h, w, bool(bgr), crop_index)
    pre = _CACHE.get(key)
    if pre is None:
        if len(_CACHE) > 16:
            _CACHE.clear()
        pre = _CACHE[key] = FramePreprocessor(cfg, h, w, bgr, crop_index)
    return pre


def sample_indices(num_available: int, cfg: PreprocessConfig, clip_index: int = -1, num_clips: int = 1) -> np.ndarray:
    """Which of ``num_available`` decoded frames form a clip, as the published models sample them.

    Dense: ``num_frames`` frames at stride ``sampling_rate`` from a window placed at ``clip_index`` of
    ``num_clips`` evenly spaced positions (``-1``: the centre); uniform: spread over the whole video.
    Indices come from ``linspace(start, end, num_frames)`` clamped to the video, so a video shorter
    than the window repeats frames, as the original ``temporal_sampling`` does.
    """
    if num_available <= 0:
        raise ValueError("no frames to sample from")
    if cfg.sampling == "uniform":
        start, end = 0.0, float(num_available - 1)
    else:
        span = float(cfg.window() - 1)
        delta = max(num_available - 1 - span, 0.0)
        if clip_index < 0:
            start = delta / 2.0
        else:
            start = delta * clip_index / max(num_clips - 1, 1)
        end = start + span
    idx = np.linspace(start, end, cfg.num_frames)
    return np.clip(idx, 0, num_available - 1).astype(np.int64)
