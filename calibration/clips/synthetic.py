"""Synthetic action clips whose label needs time to tell, written as real H.264 videos.

Each clip shows one bright shape (triangle, bar, L, T or notched ellipse) of a random colour on a dark,
textured, noisy background with camera shake, and, half of the time, a small blinking distractor. The shape moves
left/right/up/down,
rotates clockwise/anticlockwise, or grows/shrinks, at a random speed from a random size, colour,
position and orientation. Every class is drawn from the same per-frame distribution of positions,
sizes and orientations, so a single frame cannot tell a class from its pair: only the motion can.

This is the task ``motion``; :data:`TASKS` also holds ``motion16`` (:mod:`calibration.clips.synthetic_hard`:
the same motions, slow or fast, with a moving distractor and an occluder).

``generate_dataset`` writes balanced clips of a task as ``clip_NNNNN.mp4`` (libx264, yuv420p) with
``labels.csv`` (``file,label_index,label_name``), ``classes.txt`` and ``task.txt`` (the task's name; a
folder without it is the ``motion`` task); the same seed gives the same decoded frames.
CLI: ``python -m calibration.clips.synthetic OUT_DIR --clips N --seed S [--task motion16]``.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.files import sha256_code, sha256_json, temp_path_beside, write_text_atomic

from calibration.clips import synthetic_hard, synthetic_scene
from runtime.cli_args import ArgumentParser, user_errors
from calibration.clips.synthetic_scene import _SHAKE, _SHAPES, MOTIONS, _background, _shape_mask

__all__ = [
    "CLASSES",
    "render_clip",
    "generate_dataset",
    "read_dataset",
    "write_video",
    "CONTAINERS",
    "SyntheticTask",
    "TASKS",
    "DEFAULT_TASK",
    "get_task",
    "dataset_task",
    "task_of_metadata",
]

#: Action classes; pairs (0,1), (2,3), (4,5), (6,7) differ only in the direction of time.
CLASSES: list[str] = list(MOTIONS)

#: container -> (codec, pix_fmt) used by :func:`write_video`
CONTAINERS: dict[str, tuple[str, str]] = {
    "mp4": ("libx264", "yuv420p"),
    "mkv": ("libx264", "yuv420p"),
    "avi": ("mpeg4", "yuv420p"),
}


def render_clip(
    label: int, rng: np.random.Generator, width: int = 128, height: int = 96, num_frames: int = 24
) -> np.ndarray:
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
        blink = (
            rng.uniform(8, width - 8),
            rng.uniform(8, height - 8),
            rng.uniform(3, 5) * scale_px,
            rng.uniform(0, 255, size=3).astype(np.float32),
            rng.random(n) < 0.5,
        )

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        oy, ox = int(shake[i, 0]), int(shake[i, 1])
        frame = bg[_SHAKE + oy : _SHAKE + oy + height, _SHAKE + ox : _SHAKE + ox + width].copy()
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


@dataclass(frozen=True)
class SyntheticTask:
    """A synthetic task: its classes, renderer, and the class each label becomes when a clip is mirrored
    left-right (``hflip``), top-bottom (``vflip``) or played backwards (``reverse``)."""

    name: str
    classes: list[str]
    render: Callable[..., np.ndarray]  # (label, rng, width, height, num_frames) -> (N, H, W, 3) uint8
    hflip: list[int]
    vflip: list[int]
    reverse: list[int]
    sources: tuple[str, ...]  # the files whose code decides the clips

    def source_hash(self) -> str:
        """SHA-256 over the generator's code (its syntax trees: a formatter run leaves it unchanged)."""
        return sha256_json(*[sha256_code(f) for f in self.sources], length=64)


# the 8 motions mirrored or reversed: left<->right, up<->down, cw<->ccw, grow<->shrink
_HFLIP = [1, 0, 2, 3, 5, 4, 6, 7]
_VFLIP = [0, 1, 3, 2, 5, 4, 6, 7]
_REVERSE = [1, 0, 3, 2, 5, 4, 7, 6]


def _with_speeds(perm: list[int]) -> list[int]:
    """A permutation of the 8 motions applied to motion16's ``2 * motion + fast`` (the speed is kept)."""
    return [2 * perm[k // 2] + k % 2 for k in range(2 * len(perm))]


_MOTION_SOURCES = (__file__, synthetic_scene.__file__)
DEFAULT_TASK = "motion"
#: the synthetic tasks by name
TASKS: dict[str, SyntheticTask] = {
    "motion": SyntheticTask("motion", CLASSES, render_clip, _HFLIP, _VFLIP, _REVERSE, _MOTION_SOURCES),
    "motion16": SyntheticTask(
        "motion16",
        synthetic_hard.CLASSES,
        synthetic_hard.render_clip,
        _with_speeds(_HFLIP),
        _with_speeds(_VFLIP),
        _with_speeds(_REVERSE),
        _MOTION_SOURCES + (synthetic_hard.__file__,),
    ),
}


def get_task(name: str) -> SyntheticTask:
    """The task called ``name``; ValueError naming the known tasks otherwise."""
    if name not in TASKS:
        raise ValueError(f"synthetic task: expected one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name]


def task_of_metadata(metadata: dict[str, Any]) -> str | None:
    """The synthetic task a checkpoint was trained on, from its metadata (None: not a synthetic task).

    ``synthetic_task`` names it; ``motion_tiny``, written before that key, says so in ``task``."""
    if "synthetic_task" in metadata:
        return str(metadata["synthetic_task"])
    if str(metadata.get("task", "")).startswith("synthetic motion clips"):
        return DEFAULT_TASK
    return None


def write_video(
    path: str | os.PathLike, frames: np.ndarray, fps: int = 15, container: str | None = None, crf: int = 18
) -> Path:
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


def generate_dataset(
    out_dir: str | os.PathLike,
    n_clips: int,
    seed: int,
    width: int = 128,
    height: int = 96,
    num_frames: int = 24,
    fps: int = 15,
    container: str = "mp4",
    progress: bool = True,
    task: str = DEFAULT_TASK,
) -> list[tuple[Path, int]]:
    """Write ``n_clips`` balanced clips of ``task`` (labels cycle through its classes, order shuffled) plus
    ``labels.csv``, ``classes.txt`` and ``task.txt``.

    Clip ``i`` is rendered from its own generator seeded with ``(seed, i)``, so a clip does not depend
    on how many others are made. Returns ``[(path, label_index), ...]`` in file order.
    """
    from tqdm import tqdm

    spec = get_task(task)
    classes = spec.classes
    if n_clips <= 0:
        raise ValueError(f"n_clips: expected a positive number, got {n_clips}")
    if container not in CONTAINERS:
        raise ValueError(f"container: expected one of {sorted(CONTAINERS)}, got {container!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.arange(n_clips) % len(classes)
    np.random.default_rng([seed, 1 << 20]).shuffle(labels)
    items: list[tuple[Path, int]] = []
    for i in tqdm(range(n_clips), desc=f"{task} clips -> {out}", unit="clip", disable=not progress):
        label = int(labels[i])
        frames = spec.render(label, np.random.default_rng([seed, i]), width, height, num_frames)
        path = write_video(out / f"clip_{i:05d}.{container}", frames, fps=fps, container=container)
        items.append((path, label))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "label_index", "label_name"])
    for path, label in items:
        w.writerow([path.name, label, classes[label]])
    write_text_atomic(out / "task.txt", task + "\n")
    write_text_atomic(out / "classes.txt", "".join(c + "\n" for c in classes))
    write_text_atomic(out / "labels.csv", buf.getvalue())
    return items


def dataset_task(directory: str | os.PathLike) -> str:
    """The task of a folder written by :func:`generate_dataset`: ``task.txt``, or ``motion`` without one."""
    path = Path(directory) / "task.txt"
    if not path.is_file():
        return DEFAULT_TASK
    name = path.read_text().strip()
    if name not in TASKS:
        raise ValueError(f"{path}: expected a synthetic task name ({', '.join(TASKS)}), got {name!r}")
    return name


def read_dataset(directory: str | os.PathLike, task: str | None = None) -> list[tuple[Path, int]]:
    """``[(path, label_index), ...]`` from ``labels.csv`` in ``directory`` (as written by :func:`generate_dataset`).

    Labels are checked against the classes of the folder's task (:func:`dataset_task`); with ``task``,
    the folder must be of that task."""
    d = Path(directory)
    found = dataset_task(d)
    if task is not None and found != get_task(task).name:
        where = "" if (d / "task.txt").is_file() else " (no task.txt: written before tasks had names)"
        raise ValueError(f"{d / 'task.txt'}: expected clips of the synthetic task {task!r}, found {found!r}{where}")
    classes = TASKS[found].classes
    labels = d / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(
            f"{labels}: no labels file; expected a directory written by "
            "calibration.clips.synthetic.generate_dataset (labels.csv: file,label_index,label_name)"
        )
    with open(labels, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["file", "label_index", "label_name"]:
        raise ValueError(
            f"{labels}: expected the header 'file,label_index,label_name', got {rows[0] if rows else 'an empty file'}"
        )
    items = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 3 or not row[1].lstrip("-").isdigit():
            raise ValueError(f"{labels}:{line}: expected 'file,label_index,label_name', got {row}")
        idx = int(row[1])
        if not 0 <= idx < len(classes) or classes[idx] != row[2]:
            raise ValueError(
                f"{labels}:{line}: label {idx} {row[2]!r} is not a class of the task {found!r}: "
                f"expected one of {list(enumerate(classes))}"
            )
        path = d / row[0]
        if not path.is_file():
            raise FileNotFoundError(f"{labels}:{line}: {path} is missing")
        items.append((path, idx))
    return items


@user_errors("python -m calibration.clips.synthetic")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m calibration.clips.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--task", default=DEFAULT_TASK, choices=list(TASKS), help="which synthetic task's clips")
    ap.add_argument("--clips", type=int, default=None, help="number of clips (default: 8 per class)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--container", default="mp4", choices=sorted(CONTAINERS))
    a = ap.parse_args(argv)
    clips = a.clips if a.clips is not None else 8 * len(TASKS[a.task].classes)
    items = generate_dataset(a.out_dir, clips, a.seed, a.width, a.height, a.frames, a.fps, a.container, task=a.task)
    print(f"wrote {len(items)} {a.task} clips, labels.csv, classes.txt and task.txt to {a.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
