"""The preprocessing contract, as data plus a numpy implementation shared by every stage.

Canonical model input for the whole project: ``(batch, frames, 3, H, W)`` float32, RGB,
``(pixel / 255 - mean) / std``. Raw camera frames are ``(H, W, 3)`` uint8 (RGB, or BGR
when flagged). Resizing follows the published TimeSformer test path: bilinear resize of the
short side (``align_corners=False``, no antialias, as ``torch.nn.functional.interpolate``),
then a centre crop (or three crops along the long side).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["PreprocessConfig", "preprocess_frames", "resize_crop_indices", "normalize"]


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw video becomes the canonical tensor."""

    num_frames: int = 8
    sampling_rate: int = 32  # take every n-th frame of the source (dense sampling)
    sampling: str = "dense"  # "dense" (frames at a fixed stride) or "uniform" (spread over the video)
    short_side: int = 224
    crop_size: int = 224
    num_crops: int = 1  # 1: centre crop; 3: left/centre/right (or top/centre/bottom)
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    channel_order: str = "RGB"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"preprocessing contract: unknown keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        d = dict(d)
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(float(v) for v in d[k])
        return cls(**d)

    def window(self) -> int:
        """Number of consecutive source frames one dense clip spans."""
        return (self.num_frames - 1) * self.sampling_rate + 1


def _axis_taps(src: int, dst_full: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps (i0, i1, w1) for output pixels [start, start+count) of a src->dst_full resize."""
    scale = src / dst_full
    x = (np.arange(start, start + count, dtype=np.float64) + 0.5) * scale - 0.5
    x = np.clip(x, 0.0, None)
    i0 = np.floor(x).astype(np.int64)
    i0 = np.minimum(i0, src - 1)
    i1 = np.minimum(i0 + 1, src - 1)
    w1 = (x - i0).astype(np.float32)
    return i0, i1, w1


def resize_crop_indices(height: int, width: int, short_side: int, crop_size: int, crop_index: int = 1,
                        num_crops: int = 1) -> tuple[tuple, tuple]:
    """Taps for 'resize short side to ``short_side``, then crop ``crop_size``', computed only for the crop.

    ``crop_index`` 0/1/2 picks the first/centre/last crop along the long side (centre for one crop).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
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


def preprocess_frames(frames: np.ndarray | Sequence[np.ndarray], cfg: PreprocessConfig, bgr: bool = False,
                      crop_index: int = 1) -> np.ndarray:
    """Frames ``(T, H, W, 3)`` uint8 (already temporally sampled) -> ``(T, 3, crop, crop)`` float32.

    Only the pixels of the crop are interpolated, so the cost does not depend on the source size.
    """
    if isinstance(frames, np.ndarray):
        arr = frames
    else:
        arr = np.stack([np.asarray(f) for f in frames])
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames: expected (T, H, W, 3), got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise ValueError(f"frames: expected dtype uint8, got {arr.dtype}")
    if arr.shape[0] != cfg.num_frames:
        raise ValueError(f"frames: expected {cfg.num_frames} frames, got {arr.shape[0]}")
    if bgr:
        arr = arr[..., ::-1]
    t, h, w, _ = arr.shape
    (y0, y1, wy), (x0, x1, wx) = resize_crop_indices(h, w, cfg.short_side, cfg.crop_size, crop_index, cfg.num_crops)
    # Rows first (gathering only the rows the crop needs), then columns.
    r0 = arr[:, y0].astype(np.float32)
    r1 = arr[:, y1].astype(np.float32)
    rows = r0 + (r1 - r0) * wy[None, :, None, None]
    c0 = rows[:, :, x0]
    c1 = rows[:, :, x1]
    out = c0 + (c1 - c0) * wx[None, None, :, None]
    return normalize(out, cfg.mean, cfg.std)
