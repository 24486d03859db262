"""The scene both synthetic tasks draw (:mod:`calibration.clips.synthetic`, :mod:`calibration.clips.synthetic_hard`).

The eight motions, the shapes (none of them rotation invariant), a dark textured background and the
camera shake bound. Kept apart from the renderers so that both can use them without importing each other.
"""

from __future__ import annotations

import numpy as np

#: the eight motions; pairs (0,1), (2,3), (4,5), (6,7) differ only in the direction of time
MOTIONS: tuple[str, ...] = (
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "rotate_cw",
    "rotate_ccw",
    "grow",
    "shrink",
)

_SHAPES = ("triangle", "bar", "ell", "tee", "notched_ellipse")
_SHAKE = 1  # maximum camera shake, pixels (at 96 px short side)


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in the shape's own unit coordinates (none of the shapes is rotation invariant)."""
    if kind == "triangle":  # isosceles, apex at v = -1
        return (v <= 0.8) & (np.abs(u) <= 0.5 * (v + 1.0))
    if kind == "bar":
        return (np.abs(u) <= 0.95) & (np.abs(v) <= 0.4)
    if kind == "ell":
        return ((u >= -0.8) & (u <= 0.8) & (v >= 0.35) & (v <= 0.8)) | (
            (u >= -0.8) & (u <= -0.35) & (v >= -0.8) & (v <= 0.8)
        )
    if kind == "tee":
        return ((np.abs(u) <= 0.85) & (v >= -0.85) & (v <= -0.4)) | ((np.abs(u) <= 0.22) & (v >= -0.85) & (v <= 0.85))
    if kind == "notched_ellipse":
        return ((u / 0.95) ** 2 + (v / 0.6) ** 2 <= 1.0) & ~(((u - 0.55) / 0.3) ** 2 + (v / 0.3) ** 2 <= 1.0)
    raise ValueError(f"unknown shape {kind!r}")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A dark float32 (H, W, 3) texture: base colour, a few coloured gratings and soft blobs."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(15, 75, size=3).astype(np.float32)
    img = np.broadcast_to(base, (height, width, 3)).copy()
    for _ in range(3):
        fx, fy = rng.uniform(-0.25, 0.25, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(2, 5, size=3).astype(np.float32)
        img += np.sin(fx * x + fy * y + phase)[..., None] * amp
    for _ in range(int(rng.integers(2, 6))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(4, 14)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-10, 10, size=3).astype(np.float32)
    return img
