"""Synthetic action clips whose label needs time to tell, written as real H.264 videos.

Each clip shows one bright shape (triangle, bar, L, T or notched ellipse) of a random colour on a dark,
textured, noisy background with camera shake, and, half of the time, a small blinking distractor. The shape moves left/right/up/down,
rotates clockwise/anticlockwise, or grows/shrinks, at a random speed from a random size, colour,
position and orientation. Every class is drawn from the same per-frame distribution of positions,
sizes and orientations, so a single frame cannot tell a class from its pair: only the motion can.

``generate_dataset`` writes balanced clips as ``clip_NNNNN.mp4`` (libx264, yuv420p) with
``labels.csv`` (``file,label_index,label_name``) and ``classes.txt``; the same seed gives the same
decoded frames. CLI: ``python -m calibration.synthetic OUT_DIR --clips N --seed S``.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path

import numpy as np

from runtime.files import temp_path_beside, write_text_atomic

from .cli import user_errors

__all__ = ["CLASSES", "render_clip", "generate_dataset", "read_dataset", "write_video", "CONTAINERS"]

#: Action classes; pairs (0,1), (2,3), (4,5), (6,7) differ only in the direction of time.
CLASSES: list[str] = ["move_left", "move_right", "move_up", "move_down", "rotate_cw", "rotate_ccw", "grow", "shrink"]

#: container -> (codec, pix_fmt) used by :func:`write_video`
CONTAINERS: dict[str, tuple[str, str]] = {"mp4": ("libx264", "yuv420p"), "mkv": ("libx264", "yuv420p"),
                                          "avi": ("mpeg4", "yuv420p")}

_SHAPES = ("triangle", "bar", "ell", "tee", "notched_ellipse")
_SHAKE = 1  # maximum camera shake, pixels (at 96 px short side)


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in the shape's own unit coordinates (none of the shapes is rotation invariant)."""
    if kind == "triangle":  # isosceles, apex at v = -1
        return (v <= 0.8) & (np.abs(u) <= 0.5 * (v + 1.0))
    if kind == "bar":
        return (np.abs(u) <= 0.95) & (np.abs(v) <= 0.4)
    if kind == "ell":
        return (((u >= -0.8) & (u <= 0.8) & (v >= 0.35) & (v <= 0.8))
                | ((u >= -0.8) & (u <= -0.35) & (v >= -0.8) & (v <= 0.8)))
    if kind == "tee":
        return (((np.abs(u) <= 0.85) & (v >= -0.85) & (v <= -0.4)) | ((np.abs(u) <= 0.22) & (v >= -0.85) & (v <= 0.85)))
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


def render_clip(label: int, rng: np.random.Generator, width: int = 128, height: int = 96,
                num_frames: int = 24) -> np.ndarray:
    """Render one clip of class ``CLASSES[label]`` as ``(num_frames, height, width, 3)`` uint8 RGB."""
    if not 0 <= int(label) < len(CLASSES):
        raise ValueError(f"label: expected 0..{len(CLASSES) - 1}, got {label}")
    if width < 32 or height < 32 or num_frames < 2:
        raise ValueError(f"clip size: expected at least 32x32 pixels and 2 frames, got {width}x{height}x{num_frames}")
    name = CLASSES[int(label)]
    n = num_frames
    scale_px = min(width, height) / 96.0  # speeds and sizes are tuned for 96 px short side
    t = np.arange(n, dtype=np.float32) - (n - 1) / 2.0  # centred time: the clip's middle is t = 0

    bg = _background(rng, height + 2 * _SHAKE, width + 2 * _SHAKE)
    colour = rng.uniform(170, 255, size=3).astype(np.float32)  # a bright shape on the dark scene
    shade = rng.uniform(-20, 20)
    kind = _SHAPES[int(rng.integers(len(_SHAPES)))]
    size_mid = rng.uniform(13.0, 19.0) * scale_px  # half-size at the clip's middle
    angle0 = rng.uniform(0, 2 * np.pi)
    cx0 = width / 2 + rng.uniform(-6, 6) * scale_px
    cy0 = height / 2 + rng.uniform(-4, 4) * scale_px
    drift = rng.uniform(-0.15, 0.15, size=2) * scale_px  # slow nuisance drift, px/frame

    cx = cx0 + drift[0] * t
    cy = cy0 + drift[1] * t
    angle = np.full(n, angle0, np.float32)
    size = np.full(n, size_mid, np.float32)
    if name.startswith("move_"):
        speed = rng.uniform(2.6, 3.6) * scale_px
        direction = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}[name]
        cx = cx + direction[0] * speed * t
        cy = cy + direction[1] * speed * t
    elif name.startswith("rotate_"):
        omega = np.deg2rad(rng.uniform(10.0, 15.0))  # image y points down: positive angle turns clockwise
        angle = angle0 + (omega if name == "rotate_cw" else -omega) * t
    else:
        ratio = rng.uniform(2.6, 3.4)  # size at the end / size at the start
        rate = np.log(ratio) / (n - 1)
        size = size_mid * np.exp((rate if name == "grow" else -rate) * t)

    # camera shake: a bounded random walk of integer offsets applied to the whole frame
    shake = np.clip(np.cumsum(rng.integers(-1, 2, size=(n, 2)), axis=0), -_SHAKE, _SHAKE)
    noise_std = rng.uniform(2.0, 4.0)
    blink = None
    if rng.random() < 0.5:  # a small static distractor that blinks at random
        blink = (rng.uniform(8, width - 8), rng.uniform(8, height - 8), rng.uniform(3, 5) * scale_px,
                 rng.uniform(0, 255, size=3).astype(np.float32), rng.random(n) < 0.5)

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        oy, ox = int(shake[i, 0]), int(shake[i, 1])
        frame = bg[_SHAKE + oy:_SHAKE + oy + height, _SHAKE + ox:_SHAKE + ox + width].copy()
        dx, dy = x - (cx[i] - ox), y - (cy[i] - oy)
        c, s = np.cos(angle[i]), np.sin(angle[i])
        u = (c * dx + s * dy) / size[i]
        v = (-s * dx + c * dy) / size[i]
        m = _shape_mask(kind, u, v)
        frame[m] = colour + (shade * u[m])[:, None]
        if blink is not None and blink[4][i]:
            bx, by, br, bc, _ = blink
            frame[(x - bx + ox) ** 2 + (y - by + oy) ** 2 <= br * br] = bc
        frame += rng.normal(0.0, noise_std, size=frame.shape).astype(np.float32)
        np.clip(frame, 0, 255, out=frame)
        out[i] = frame.astype(np.uint8)
    return out


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 15, container: str | None = None,
                crf: int = 18) -> Path:
    """Encode ``(N, H, W, 3)`` uint8 RGB frames to ``path`` atomically (codec chosen by the container)."""
    import av

    path = Path(path)
    container = container or path.suffix.lstrip(".")
    if container not in CONTAINERS:
        raise ValueError(f"{path}: container: expected one of {sorted(CONTAINERS)}, got {container!r}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames: expected (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    codec, pix_fmt = CONTAINERS[container]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path, f".{container}")
    try:
        with av.open(str(tmp), "w", format="matroska" if container == "mkv" else container) as out:
            stream = out.add_stream(codec, rate=fps)
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = pix_fmt
            stream.thread_count = 1  # one encoder thread: the same input always gives the same bytes
            if codec == "libx264":
                stream.options = {"crf": str(crf), "preset": "veryfast"}
            else:
                stream.options = {"qscale": "3"}
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def generate_dataset(out_dir: str | os.PathLike, n_clips: int, seed: int, width: int = 128, height: int = 96,
                     num_frames: int = 24, fps: int = 15, container: str = "mp4",
                     progress: bool = True) -> list[tuple[Path, int]]:
    """Write ``n_clips`` balanced clips (labels cycle through the classes, order shuffled) plus labels.

    Clip ``i`` is rendered from its own generator seeded with ``(seed, i)``, so a clip does not depend
    on how many others are made. Returns ``[(path, label_index), ...]`` in file order.
    """
    from tqdm import tqdm

    if n_clips <= 0:
        raise ValueError(f"n_clips: expected a positive number, got {n_clips}")
    if container not in CONTAINERS:
        raise ValueError(f"container: expected one of {sorted(CONTAINERS)}, got {container!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.arange(n_clips) % len(CLASSES)
    np.random.default_rng([seed, 1 << 20]).shuffle(labels)
    items: list[tuple[Path, int]] = []
    for i in tqdm(range(n_clips), desc=f"clips -> {out}", unit="clip", disable=not progress):
        label = int(labels[i])
        frames = render_clip(label, np.random.default_rng([seed, i]), width, height, num_frames)
        path = write_video(out / f"clip_{i:05d}.{container}", frames, fps=fps, container=container)
        items.append((path, label))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "label_index", "label_name"])
    for path, label in items:
        w.writerow([path.name, label, CLASSES[label]])
    write_text_atomic(out / "classes.txt", "".join(c + "\n" for c in CLASSES))
    write_text_atomic(out / "labels.csv", buf.getvalue())
    return items


def read_dataset(directory: str | os.PathLike) -> list[tuple[Path, int]]:
    """``[(path, label_index), ...]`` from ``labels.csv`` in ``directory`` (as written by :func:`generate_dataset`)."""
    d = Path(directory)
    labels = d / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"{labels}: no labels file; expected a directory written by "
                                "calibration.synthetic.generate_dataset (labels.csv: file,label_index,label_name)")
    with open(labels, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["file", "label_index", "label_name"]:
        raise ValueError(f"{labels}: expected the header 'file,label_index,label_name', got {rows[0] if rows else 'an empty file'}")
    items = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 3 or not row[1].lstrip("-").isdigit():
            raise ValueError(f"{labels}:{line}: expected 'file,label_index,label_name', got {row}")
        idx = int(row[1])
        if not 0 <= idx < len(CLASSES) or CLASSES[idx] != row[2]:
            raise ValueError(f"{labels}:{line}: label {idx} {row[2]!r} is not one of {list(enumerate(CLASSES))}")
        path = d / row[0]
        if not path.is_file():
            raise FileNotFoundError(f"{labels}:{line}: {path} is missing")
        items.append((path, idx))
    return items


@user_errors("python -m calibration.synthetic")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m calibration.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--clips", type=int, default=len(CLASSES) * 8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--container", default="mp4", choices=sorted(CONTAINERS))
    a = ap.parse_args(argv)
    items = generate_dataset(a.out_dir, a.clips, a.seed, a.width, a.height, a.frames, a.fps, a.container)
    print(f"wrote {len(items)} clips, labels.csv and classes.txt to {a.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
