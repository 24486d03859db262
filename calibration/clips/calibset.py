"""Calibration and evaluation clips: a fixed, recorded selection of canonical ``(N, T, 3, H, W)`` clips.

Three sources, named by one ``spec`` string:

* a folder of video files (decoded through :mod:`calibration.clips.video_reader`; labels from its
  ``labels.csv`` when present), or a single video file;
* ``"synthetic"`` / ``"synthetic:SEED"``: clips of the 8-class ``motion`` task rendered by
  :mod:`calibration.clips.synthetic`, written as H.264 files and decoded through the same reader (so
  calibration sees the real decode path); ``"synthetic-TASK"`` / ``"synthetic-TASK:SEED"`` name another
  task of :data:`calibration.clips.synthetic.TASKS` (``synthetic-motion16:SEED``: 16 classes, slow/fast);
* saved tensors: a ``.npy``/``.npz`` file, or a folder of them, in the canonical layout
  ``(N, T, 3, H, W)`` (or one ``(T, 3, H, W)`` clip) float32; an ``.npz`` may hold ``clips`` and ``labels``.

Decoded video is handed over in the model's channel order (``PreprocessConfig.channel_order``: RGB, or
BGR for models trained on BGR frames); saved tensors are taken as they are, already in that order.

The selection (files and clip offsets) is a function of the spec, ``n`` and ``seed`` only, and is
recorded together with a SHA-256 of the selection and the clip data. Unreadable files are reported by
name and skipped; a set with no usable clip is an error. :func:`selection_key` identifies a selection
*without* reading any clip (file names, sizes and modification times), which lets the precision build
skip the clips entirely when its caches are warm.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.log import progress
from runtime.files import sha256_code, sha256_file
from runtime.preprocess import PreprocessConfig

__all__ = [
    "CalibrationError",
    "CalibrationSet",
    "load_calibration_set",
    "load_clips",
    "selection_key",
    "READS",
    "VIDEO_EXTS",
    "TENSOR_EXTS",
]

VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts")
TENSOR_EXTS = (".npy", ".npz")
#: bumped when the selection rule changes (invalidates cached selections)
SELECTION_VERSION = 1
#: what this process has read: ``sets`` (calls that loaded clips) and ``clips`` (clips decoded or loaded)
READS: Counter[str] = Counter()


class CalibrationError(ValueError):
    """A calibration set that cannot be used; the message names the spec or file, expected and actual."""


@dataclass
class CalibrationSet:
    """Clips plus how they were chosen."""

    spec: str
    source: str  # "videos" | "synthetic" | "tensors"
    clips: np.ndarray  # (N, T, 3, H, W) float32
    labels: np.ndarray | None  # (N,) int64 class indices, or None
    selection: list[dict[str, Any]]  # one entry per clip: file (and key) plus clip_index/num_clips or index
    sha256: str
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"file", "error"}
    requested: int = 0
    seed: int = 0
    classes: list[str] | None = None  # names of the label indices, when known (synthetic tasks and their folders)

    def __len__(self) -> int:
        return int(len(self.clips))

    def info(self) -> dict[str, Any]:
        """JSON-friendly description (no clip data)."""
        return {
            "spec": self.spec,
            "source": self.source,
            "n_clips": len(self),
            "requested": self.requested,
            "seed": self.seed,
            "sha256": self.sha256,
            "labels": self.labels is not None,
            "classes": self.classes,
            "selection": self.selection,
            "skipped": self.skipped,
        }


_log = progress("calib", __name__)


SYNTHETIC_FORMS = "'synthetic[:SEED]' or 'synthetic-TASK[:SEED]'"


def synthetic_spec(task: str | None, seed: int | None = None) -> str | None:
    """The spec of ``task``'s synthetic clips, ``synthetic-TASK[:SEED]``. Without a seed, None for no task and for the
    default task, so that those callers keep the default spec (``synthetic``) and its cache keys."""
    from calibration.clips.synthetic import DEFAULT_TASK

    if not task or task == DEFAULT_TASK:
        return None if seed is None else f"synthetic:{seed}"
    return f"synthetic-{task}" + ("" if seed is None else f":{seed}")


def _parse_synthetic(spec: str, seed: int) -> tuple[str, int] | None:
    """``(task, generator seed)`` of a ``synthetic[-TASK][:SEED]`` spec, or None for other specs.

    A ``synthetic-...`` spec naming no known task is a path when that path exists, an error otherwise."""
    from calibration.clips.synthetic import DEFAULT_TASK, TASKS

    head, colon, text = spec.partition(":")
    if head == "synthetic":
        task = DEFAULT_TASK
    elif head.startswith("synthetic-"):
        task = head[len("synthetic-") :]
        if task not in TASKS:
            if Path(spec).exists():
                return None
            raise CalibrationError(
                f"calibration set {spec!r}: unknown synthetic task {task!r}; expected "
                f"{SYNTHETIC_FORMS} with TASK one of {', '.join(TASKS)}"
            )
    else:
        return None
    if not colon:
        return task, seed
    try:
        return task, int(text)
    except ValueError:
        raise CalibrationError(
            f"calibration set {spec!r}: expected {SYNTHETIC_FORMS} with an integer SEED, got {text!r}"
        ) from None


def _list_files(folder: Path, exts: tuple[str, ...]) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")
    )


def _classify(spec: str) -> tuple[str, list[Path]]:
    """``("videos" | "tensors", files)`` for a path spec; raises CalibrationError for anything else."""
    path = Path(spec)
    if path.is_dir():
        videos = _list_files(path, VIDEO_EXTS)
        if videos:
            return "videos", videos
        tensors = _list_files(path, TENSOR_EXTS)
        if tensors:
            return "tensors", tensors
        raise CalibrationError(
            f"calibration set {spec!r}: the folder has no video files ({', '.join(VIDEO_EXTS)}) "
            f"and no .npy/.npz tensors"
        )
    if path.is_file():
        ext = path.suffix.lower()
        if ext in TENSOR_EXTS:
            return "tensors", [path]
        if ext in VIDEO_EXTS:
            return "videos", [path]
        raise CalibrationError(
            f"calibration set {spec!r}: unsupported file type {ext!r}; expected a video "
            f"({', '.join(VIDEO_EXTS)}) or .npy/.npz tensors"
        )
    raise CalibrationError(
        f"calibration set {spec!r}: no such file or folder (expected a folder of videos, a "
        f".npy/.npz file, or {SYNTHETIC_FORMS})"
    )


def selection_key(spec: str | None, pre: PreprocessConfig, n: int, seed: int) -> str:
    """A key that changes whenever the selection or its data may change, computed without reading clips.

    Folders and files are keyed by names, sizes and modification times (and ``labels.csv``'s content);
    synthetic sets by the task, the generator seed and the source code of the task's generator and the reader.
    """
    spec = spec or "synthetic"
    parts: list[Any] = [SELECTION_VERSION, pre.to_dict(), int(n), int(seed)]
    synthetic_spec = _parse_synthetic(spec, seed)
    if synthetic_spec is not None:
        from calibration.clips import video_reader
        from calibration.clips.synthetic import get_task

        task, gen_seed = synthetic_spec
        parts += ["synthetic", task, gen_seed, get_task(task).source_hash(), sha256_code(video_reader.__file__)]
    else:
        kind, files = _classify(spec)
        parts += [kind, str(Path(spec).resolve())]
        for f in files:
            st = f.stat()
            parts.append([f.name, st.st_size, st.st_mtime_ns])
        csv_path = Path(spec) / "labels.csv"
        if csv_path.is_file():
            parts.append(["labels.csv", sha256_file(csv_path)])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _digest(selection: list[dict[str, Any]], clips: np.ndarray, labels: np.ndarray | None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(selection, sort_keys=True).encode())
    h.update(str(clips.shape).encode())
    h.update(np.ascontiguousarray(clips, dtype=np.float32).tobytes())
    if labels is not None:
        h.update(np.asarray(labels, np.int64).tobytes())
    return h.hexdigest()


def _read_labels_csv(folder: Path) -> tuple[dict[str, int], list[str] | None]:
    """``labels.csv`` -> ({file name: class index}, class names when the folder is a synthetic task's); ({}, None)
    when absent."""
    path = folder / "labels.csv"
    if not path.is_file():
        return {}, None
    try:
        from calibration.clips.synthetic import TASKS, dataset_task, read_dataset
    except ImportError:  # pragma: no cover - the generator ships with the package
        read_dataset = None
    if read_dataset is not None:
        try:
            return (
                {Path(p).name: int(label) for p, label in read_dataset(folder)},
                list(TASKS[dataset_task(folder)].classes),
            )
        except (ValueError, KeyError, OSError):
            pass  # not the generator's layout: fall back to plain "file,label" rows
    out: dict[str, int] = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) < 2 or not row[0].strip():
                continue
            try:
                out[Path(row[0].strip()).name] = int(row[1])
            except ValueError:
                if out:  # a header is only allowed as the first row
                    raise CalibrationError(f"{path}: label {row[1]!r} for {row[0]!r} is not a class index") from None
    return out, None


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="clip", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _from_videos(
    spec: str,
    files: list[Path],
    pre: PreprocessConfig,
    n: int,
    seed: int,
    labels_by_name: dict[str, int],
    progress: bool,
    source: str,
    display_root: Path | None = None,
    classes: list[str] | None = None,
) -> CalibrationSet:
    from calibration.clips.video_reader import VideoReadError, read_clip

    k = max(1, math.ceil(n / len(files)))  # clips per file when the folder has fewer files than n
    candidates = [(f, ci if k > 1 else -1) for f in files for ci in range(k)]
    order = np.random.default_rng(seed).permutation(len(candidates))
    clips: list[np.ndarray] = []
    labels: list[int] = []
    selection: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    bad: set[Path] = set()
    root = display_root or (Path(spec) if Path(spec).is_dir() else Path(spec).parent)
    with _progress(n, f"clips ({spec})", progress) as bar:
        for i in order:
            if len(clips) >= n:
                break
            f, ci = candidates[i]
            if f in bad:
                continue
            try:
                clip = read_clip(f, pre, clip_index=ci, num_clips=k)
            except (VideoReadError, OSError, ValueError) as e:
                bad.add(f)
                skipped.append({"file": f.name, "error": f"{type(e).__name__}: {e}"})
                _log(f"skipping unreadable {f} ({type(e).__name__}: {e})")
                continue
            READS["clips"] += 1
            clips.append(np.asarray(clip, np.float32))
            name = str(f.relative_to(root)) if f.is_relative_to(root) else f.name
            selection.append({"file": name, "clip_index": int(ci), "num_clips": int(k)})
            if labels_by_name:
                labels.append(labels_by_name.get(f.name, -1))
            bar.update(1)
    cset = _finish(spec, source, clips, labels if labels_by_name else None, selection, skipped, pre, n, seed)
    cset.classes = classes if cset.labels is not None else None
    return cset


def _finish(
    spec: str,
    source: str,
    clips: list[np.ndarray],
    labels: list[int] | None,
    selection: list[dict[str, Any]],
    skipped: list[dict[str, str]],
    pre: PreprocessConfig,
    n: int,
    seed: int,
) -> CalibrationSet:
    if skipped:
        _log(
            f"{spec}: skipped {len(skipped)} unreadable file(s): "
            + ", ".join(f"{s['file']} ({s['error']})" for s in skipped[:10])
            + (" ..." if len(skipped) > 10 else "")
        )
    if not clips:
        why = (
            (
                f"all {len(skipped)} file(s) were unreadable: "
                + "; ".join(f"{s['file']}: {s['error']}" for s in skipped[:5])
            )
            if skipped
            else "no clips found"
        )
        raise CalibrationError(
            f"calibration set {spec!r} is empty ({why}); expected at least one clip of shape "
            f"({pre.num_frames}, 3, {pre.crop_size}, {pre.crop_size})"
        )
    arr = np.stack(clips).astype(np.float32, copy=False)
    lab = None
    if labels is not None and all(v >= 0 for v in labels):
        lab = np.asarray(labels, np.int64)
    elif labels is not None:
        missing = [s["file"] for s, v in zip(selection, labels) if v < 0]
        _log(
            f"{spec}: labels.csv has no label for {len(missing)} selected file(s) (e.g. {missing[0]}); "
            "accuracy will not be reported"
        )
    if len(arr) < n:
        _log(f"{spec}: {len(arr)} clip(s) available, {n} requested; using {len(arr)}")
    READS["sets"] += 1
    return CalibrationSet(
        spec=spec,
        source=source,
        clips=arr,
        labels=lab,
        selection=selection,
        sha256=_digest(selection, arr, lab),
        skipped=skipped,
        requested=int(n),
        seed=int(seed),
    )


def _tensor_arrays(path: Path) -> list[tuple[str | None, np.ndarray, np.ndarray | None]]:
    """(key, array, labels) entries of one .npy/.npz file; raises OSError/ValueError when unreadable."""
    if path.suffix.lower() == ".npy":
        return [(None, np.load(path, mmap_mode="r", allow_pickle=False), None)]
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.files)
        if not keys:
            raise ValueError("the archive holds no arrays")
        labels = np.asarray(z["labels"]) if "labels" in keys else None
        main = [k for k in ("clips", "video") if k in keys]
        if main:
            return [(main[0], np.asarray(z[main[0]]), labels)]
        return [(k, np.asarray(z[k]), None) for k in sorted(keys) if k != "labels"]


def _check_tensor(path: Path, key: str | None, arr: np.ndarray, pre: PreprocessConfig) -> np.ndarray:
    want = (pre.num_frames, 3, pre.crop_size, pre.crop_size)
    where = f"{path}" + (f" (array {key!r})" if key else "")
    if arr.ndim == 4:
        arr = arr[None]
    if arr.ndim != 5 or tuple(arr.shape[1:]) != want:
        raise CalibrationError(
            f"{where}: clips have shape {tuple(arr.shape)}; expected (N, {', '.join(map(str, want))}) or "
            f"({', '.join(map(str, want))}) for the preprocessing contract (num_frames={pre.num_frames}, "
            f"crop_size={pre.crop_size}, layout (N, T, 3, H, W))"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise CalibrationError(
            f"{where}: dtype {arr.dtype}; expected float32 clips normalised as "
            f"(pixel/255 - mean)/std (layout (N, T, 3, H, W))"
        )
    return arr


def _from_tensors(
    spec: str, files: list[Path], pre: PreprocessConfig, n: int, seed: int, progress: bool
) -> CalibrationSet:
    entries: list[tuple[Path, str | None, np.ndarray, np.ndarray | None]] = []
    skipped: list[dict[str, str]] = []
    for f in files:
        try:
            arrays = _tensor_arrays(f)
        except Exception as e:  # noqa: BLE001 - numpy/zipfile raise many types for garbage files; skip like a bad video
            skipped.append({"file": f.name, "error": f"{type(e).__name__}: {e}"})
            _log(f"skipping unreadable {f} ({type(e).__name__}: {e})")
            continue
        for key, arr, lab in arrays:
            arr = _check_tensor(f, key, arr, pre)
            if lab is not None and lab.shape != (arr.shape[0],):
                raise CalibrationError(f"{f}: 'labels' has shape {lab.shape}; expected ({arr.shape[0]},), one per clip")
            entries.append((f, key, arr, lab))
    index = [(e, i) for e in range(len(entries)) for i in range(entries[e][2].shape[0])]
    take = len(index) if len(index) <= n else n
    chosen = np.sort(np.random.default_rng(seed).permutation(len(index))[:take]) if index else np.array([], int)
    all_labeled = bool(entries) and all(e[3] is not None for e in entries)
    clips, labels, selection = [], [], []
    with _progress(len(chosen), f"clips ({spec})", progress) as bar:
        for j in chosen:
            e, i = index[j]
            f, key, arr, lab = entries[e]
            clip = np.asarray(arr[i], np.float32)
            if not np.isfinite(clip).all():
                raise CalibrationError(
                    f"{f}" + (f" (array {key!r})" if key else "") + f": clip {i} has non-finite "
                    "values; expected finite normalised pixels"
                )
            READS["clips"] += 1
            clips.append(clip)
            if all_labeled:
                labels.append(int(lab[i]))
            selection.append({"file": f.name, **({"key": key} if key else {}), "index": int(i)})
            bar.update(1)
    return _finish(spec, "tensors", clips, labels if all_labeled else None, selection, skipped, pre, n, seed)


def load_calibration_set(
    spec: str | None, pre: PreprocessConfig, n: int, seed: int = 0, progress: bool = True
) -> CalibrationSet:
    """The ``n`` clips ``spec`` selects with ``seed`` (fewer when the source has fewer), with their record.

    ``spec``: a folder of videos or tensors, a video/.npy/.npz file, ``"synthetic[:SEED]"`` (the ``motion``
    task) or ``"synthetic-TASK[:SEED]"`` (None means ``"synthetic"``). Raises CalibrationError for bad specs,
    wrong tensor shapes and empty sets.
    """
    spec = spec or "synthetic"
    if n < 1:
        raise CalibrationError(f"calibration set {spec!r}: n = {n}; expected at least 1 clip")
    synthetic_spec = _parse_synthetic(spec, seed)
    if synthetic_spec is not None:
        from calibration.clips.synthetic import generate_dataset, get_task

        task, gen_seed = synthetic_spec
        tmp = Path(tempfile.mkdtemp(prefix="synthetic-calib-"))
        try:
            made = generate_dataset(tmp, n, gen_seed, progress=False, task=task)
            labels = {Path(p).name: int(lab) for p, lab in made}
            files = sorted(Path(p) for p, _ in made)
            return _from_videos(
                spec,
                files,
                pre,
                n,
                seed,
                labels,
                progress,
                "synthetic",
                display_root=tmp,
                classes=list(get_task(task).classes),
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    kind, files = _classify(spec)
    if kind == "videos":
        folder = Path(spec) if Path(spec).is_dir() else Path(spec).parent
        labels_by_name, classes = _read_labels_csv(folder)
        return _from_videos(spec, files, pre, n, seed, labels_by_name, progress, "videos", classes=classes)
    return _from_tensors(spec, files, pre, n, seed, progress)


def load_clips(spec: str | None, pre: PreprocessConfig, n: int, seed: int) -> np.ndarray:
    """``(N, T, 3, H, W)`` float32 clips (the contract ``export/bundle/build.py`` uses)."""
    return load_calibration_set(spec, pre, n, seed).clips
