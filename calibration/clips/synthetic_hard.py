"""The harder synthetic task ``motion16``: the eight motions of :mod:`calibration.clips.synthetic`, each slow or fast.

Classes (16): ``<motion>_<speed>`` for ``motion`` in move_left, move_right, move_up, move_down, rotate_cw,
rotate_ccw, grow, shrink and ``speed`` in slow, fast; index ``2 * motion_index + (speed == "fast")``.
The speed of a clip is drawn log-uniformly from its class's range (at 96 px short side):

==========  =====================================  ============  ============
motion      speed measured as                      slow          fast
==========  =====================================  ============  ============
move_*      pixels per frame                       1.00 - 2.03   1.97 - 4.00
rotate_*    degrees per frame                      7.00 - 14.2   13.8 - 28.0
grow/shrink log(size at the end / size at start)   0.36 - 0.73   0.71 - 1.44
==========  =====================================  ============  ============

The slow and fast ranges of a motion overlap by ``2 * OVERLAP`` in log-speed (about 4 % of each
range), so some clips cannot be told apart even in principle (a perfect speed reader would misclassify
about 2 % of them), and many more are close to the boundary for a reader that measures speed from 8
noisy frames: held-out accuracy stays below 100 % and precision losses can show.

Nuisances on top of the 8-class scene (same textured background, camera shake and noise):

* a second, moving object: a smaller (half-size 5-8 px against 13-19 px) and dimmer shape with its own
  random direction, speed (0.5-3.5 px/frame) and spin, drawn under the subject;
* partial occlusion: a static bar (5-9 px thick, half to all of the frame long, vertical or horizontal)
  drawn over both objects, within 15 % of the frame's centre so that it often crosses the subject's path;
  it is thinner than the subject, which is never hidden whole.

Every class draws the same random numbers in the same order, and the speed only scales the motion about
the clip's middle: with an odd number of frames the middle frame is the same picture for all 16 classes.
"""

from __future__ import annotations

import numpy as np

from calibration.clips.synthetic_scene import _SHAKE, _SHAPES, MOTIONS, _background, _shape_mask

__all__ = ["CLASSES", "MOTIONS", "SPEED_RANGES", "OVERLAP", "render_clip", "speed_range"]

SPEEDS = ("slow", "fast")
CLASSES: list[str] = [f"{m}_{s}" for m in MOTIONS for s in SPEEDS]

#: motion kind -> (lowest slow speed, highest fast speed); the slow/fast boundary is their geometric mean
SPEED_RANGES: dict[str, tuple[float, float]] = {"move": (1.0, 4.0), "rotate": (7.0, 28.0), "scale": (0.36, 1.44)}
#: half-width of the slow/fast overlap in log-speed (each class spans log(4)/2 + OVERLAP)
OVERLAP = 0.015


def _kind(motion: str) -> str:
    return "move" if motion.startswith("move_") else "rotate" if motion.startswith("rotate_") else "scale"


def speed_range(label: int) -> tuple[float, float]:
    """The (low, high) speed of class ``label`` in the units of the table in the module docstring."""
    motion, fast = MOTIONS[label // 2], label % 2 == 1
    lo, hi = SPEED_RANGES[_kind(motion)]
    mid = float(np.sqrt(lo * hi))
    return (float(mid * np.exp(-OVERLAP)), hi) if fast else (lo, float(mid * np.exp(OVERLAP)))


def render_clip(
    label: int, rng: np.random.Generator, width: int = 128, height: int = 96, num_frames: int = 24
) -> np.ndarray:
    """Render one clip of class ``CLASSES[label]`` as ``(num_frames, height, width, 3)`` uint8 RGB."""
    if not 0 <= int(label) < len(CLASSES):
        raise ValueError(f"label: expected 0..{len(CLASSES) - 1}, got {label}")
    if width < 32 or height < 32 or num_frames < 2:
        raise ValueError(f"clip size: expected at least 32x32 pixels and 2 frames, got {width}x{height}x{num_frames}")
    label = int(label)
    motion = MOTIONS[label // 2]
    n = num_frames
    scale_px = min(width, height) / 96.0  # speeds and sizes are tuned for 96 px short side
    t = np.arange(n, dtype=np.float32) - (n - 1) / 2.0  # centred time: the clip's middle is t = 0

    # the subject, drawn exactly like the 8-class task's shape
    bg = _background(rng, height + 2 * _SHAKE, width + 2 * _SHAKE)
    colour = rng.uniform(170, 255, size=3).astype(np.float32)
    shade = rng.uniform(-20, 20)
    kind = _SHAPES[int(rng.integers(len(_SHAPES)))]
    size_mid = rng.uniform(13.0, 19.0) * scale_px
    angle0 = rng.uniform(0, 2 * np.pi)
    cx0 = width / 2 + rng.uniform(-6, 6) * scale_px
    cy0 = height / 2 + rng.uniform(-4, 4) * scale_px
    drift = rng.uniform(-0.15, 0.15, size=2) * scale_px
    lo, hi = speed_range(label)
    speed = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # one draw whatever the class

    # the distractor: smaller, dimmer, its own straight path and spin
    d_kind = _SHAPES[int(rng.integers(len(_SHAPES)))]
    d_colour = rng.uniform(80, 140, size=3).astype(np.float32)
    d_size = rng.uniform(5.0, 8.0) * scale_px
    d_angle0 = rng.uniform(0, 2 * np.pi)
    d_x0, d_y0 = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
    d_dir = rng.uniform(0, 2 * np.pi)
    d_speed = rng.uniform(0.5, 3.5) * scale_px
    d_spin = np.deg2rad(rng.uniform(-8.0, 8.0))

    # the occluder: a static bar near the centre (part of the scene: it shakes with the background)
    vertical = rng.random() < 0.5
    thick = rng.uniform(5.0, 9.0) * scale_px
    along, across = (height, width) if vertical else (width, height)
    bar_pos = across / 2 + rng.uniform(-0.15, 0.15) * across
    bar_len = rng.uniform(0.5, 1.0) * along
    bar_start = rng.uniform(0.0, along - bar_len)
    bar_colour = rng.uniform(25, 110, size=3).astype(np.float32)

    cx = cx0 + drift[0] * t
    cy = cy0 + drift[1] * t
    angle = np.full(n, angle0, np.float32)
    size = np.full(n, size_mid, np.float32)
    if motion.startswith("move_"):
        direction = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}[motion]
        cx = cx + direction[0] * speed * scale_px * t
        cy = cy + direction[1] * speed * scale_px * t
    elif motion.startswith("rotate_"):
        omega = np.deg2rad(speed)  # image y points down: positive angle turns clockwise
        angle = angle0 + (omega if motion == "rotate_cw" else -omega) * t
    else:
        rate = speed / (n - 1)  # speed = log(size at the end / size at the start)
        size = size_mid * np.exp((rate if motion == "grow" else -rate) * t)
    d_cx = d_x0 + np.cos(d_dir) * d_speed * t
    d_cy = d_y0 + np.sin(d_dir) * d_speed * t
    d_angle = d_angle0 + d_spin * t

    shake = np.clip(np.cumsum(rng.integers(-1, 2, size=(n, 2)), axis=0), -_SHAKE, _SHAKE)
    noise_std = rng.uniform(2.0, 4.0)

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        oy, ox = int(shake[i, 0]), int(shake[i, 1])
        frame = bg[_SHAKE + oy : _SHAKE + oy + height, _SHAKE + ox : _SHAKE + ox + width].copy()
        for kd, px, py, ang, sz, col, shd in (
            (d_kind, d_cx[i], d_cy[i], d_angle[i], d_size, d_colour, 0.0),
            (kind, cx[i], cy[i], angle[i], size[i], colour, shade),
        ):
            dx, dy = x - (px - ox), y - (py - oy)
            c, s = np.cos(ang), np.sin(ang)
            u = (c * dx + s * dy) / sz
            v = (-s * dx + c * dy) / sz
            m = _shape_mask(kd, u, v)
            frame[m] = col + (shd * u[m])[:, None]
        a_coord, c_coord = (y - oy, x - ox) if vertical else (x - ox, y - oy)
        frame[(np.abs(c_coord - bar_pos) <= thick / 2) & (a_coord >= bar_start) & (a_coord <= bar_start + bar_len)] = (
            bar_colour
        )
        frame += rng.normal(0.0, noise_std, size=frame.shape).astype(np.float32)
        np.clip(frame, 0, 255, out=frame)
        out[i] = frame.astype(np.uint8)
    return out
