"""A bundle's labels and preprocessing: given (``LABELS=``, ``PREPROCESS=``) or inferred, and always said where from.

Order of precedence, per item (issue 26):

- labels: ``LABELS=<file>`` > the checkpoint's own (our sidecar, a Hugging Face ``id2label``) > the published list
  with the head's class count (Kinetics-400, Kinetics-600, Something-Something-v2, shipped in ``models/labels/``) >
  ``class_0..class_N-1`` placeholders (stated as such).
- preprocessing: ``PREPROCESS=<preset | JSON file>`` (fields of :class:`runtime.preprocess.PreprocessConfig` laid
  over the inferred ones, or a Hugging Face ``preprocessor_config.json``) > the checkpoint's own (our sidecar, the
  ``preprocessor_config.json`` of a Hugging Face folder) > the preset with the same architecture and classes > the
  published protocol of the label set (Kinetics: dense, 256 source frames per clip; SSv2: uniform, BGR) > defaults.

:func:`resolve_task_inputs` returns the choice with a record of where each part came from, which the build prints
once and writes into the manifest's ``provenance``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runtime.preprocess import PreprocessConfig

from .config import PRESETS, TimeSformerConfig

__all__ = [
    "LABELS_DIR",
    "PUBLISHED_LABELS",
    "TaskInputError",
    "TaskInputs",
    "published_labels",
    "read_labels_file",
    "read_preprocess",
    "hf_preprocess",
    "resolve_task_inputs",
    "RANDOM_MARK",
]

LABELS_DIR = Path(__file__).parent / "labels"
#: class count -> (dataset, file in models/labels/): the label lists of the published checkpoints, in their index
#: order (alphabetical, as the official TimeSformer/SlowFast and Hugging Face checkpoints number them)
PUBLISHED_LABELS: dict[int, tuple[str, str]] = {
    400: ("Kinetics-400", "kinetics400.txt"),
    600: ("Kinetics-600", "kinetics600.txt"),
    174: ("Something-Something-v2", "something-something-v2.txt"),
}
#: appended to every label of a bundle built from random weights
RANDOM_MARK = " [random weights]"
#: Hugging Face image processors' ``resample`` (PIL numbering) -> name; the runtime resizes bilinear
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


class TaskInputError(ValueError):
    """A label file or preprocessing spec that cannot be used; the message names the option and the file."""


@dataclass(frozen=True)
class TaskInputs:
    """The labels and preprocessing a bundle gets, and where each came from."""

    labels: list[str]
    preprocess: PreprocessConfig
    labels_from: str
    preprocess_from: str
    notes: tuple[str, ...] = field(default=())

    def line(self) -> str:
        """The build's one line about them."""
        p = self.preprocess
        mean = ",".join(f"{x:g}" for x in p.mean)
        std = ",".join(f"{x:g}" for x in p.std)
        pre = (
            f"{p.num_frames} frames {p.sampling} (rate {p.sampling_rate}), short side {p.short_side}, crop "
            f"{p.crop_size} x{p.num_crops}, mean {mean}, std {std}, {p.channel_order}"
        )
        notes = "".join(f"; {n}" for n in self.notes)
        return (
            f"[engine] labels: {len(self.labels)} from {self.labels_from}; preprocessing: {pre} from "
            f"{self.preprocess_from}{notes}"
        )

    def record(self) -> dict[str, Any]:
        """What the manifest's ``provenance`` says about them."""
        return {"labels": self.labels_from, "preprocess": self.preprocess_from, "notes": list(self.notes)}


# ----------------------------------------------------------------------------------------------- labels


def read_labels_file(path: str | Path, num_classes: int, option: str = "LABELS") -> list[str]:
    """One label per line (blank trailing lines ignored), a JSON list, or a JSON ``{index: name}`` (``id2label``)."""
    p = Path(path)
    where = f"{option}={path}"
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TaskInputError(f"{where}: cannot read the label file ({type(e).__name__}: {e})") from e
    if p.suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise TaskInputError(f"{where}: not valid JSON ({e})") from e
        obj = obj.get("id2label", obj) if isinstance(obj, dict) else obj
        if isinstance(obj, dict):
            try:
                by_index = {int(k): str(v) for k, v in obj.items()}
            except (TypeError, ValueError) as e:
                raise TaskInputError(f"{where}: expected {{index: name}}, got keys {list(obj)[:3]}") from e
            if sorted(by_index) != list(range(len(by_index))):
                raise TaskInputError(f"{where}: indices are not 0..{len(by_index) - 1}")
            obj = [by_index[i] for i in range(len(by_index))]
        if not isinstance(obj, list) or not all(isinstance(x, str) for x in obj):
            raise TaskInputError(f"{where}: expected a JSON list of names or {{index: name}}")
        labels = obj
    else:
        labels = text.splitlines()
        while labels and not labels[-1].strip():
            labels.pop()
    if len(labels) != num_classes:
        raise TaskInputError(f"{where}: {len(labels)} labels, but the model's head has {num_classes} classes")
    return labels


def published_labels(num_classes: int) -> tuple[list[str], str] | None:
    """The published label list with ``num_classes`` names and a description of it, or None."""
    if num_classes not in PUBLISHED_LABELS:
        return None
    name, file = PUBLISHED_LABELS[num_classes]
    path = LABELS_DIR / file
    labels = read_labels_file(path, num_classes, option="models/labels")
    return labels, f"{name} (models/labels/{file}, chosen by the head's {num_classes} classes)"


# ----------------------------------------------------------------------------------------------- preprocessing


def _size_of(v: Any, key: str, where: str) -> int:
    """A Hugging Face size field: an int, ``{"shortest_edge": n}`` or a square ``{"height": n, "width": n}``."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, dict) and "shortest_edge" in v:
        return int(v["shortest_edge"])
    if isinstance(v, dict) and "height" in v and v.get("height") == v.get("width"):
        return int(v["height"])
    raise TaskInputError(
        f"{where}: {key}: expected an integer, {{'shortest_edge': n}} or a square "
        f"{{'height': n, 'width': n}}, got {v!r:.80} (the runtime resizes the short side and crops "
        "a square; set PREPROCESS=<JSON file> to describe it)"
    )


def hf_preprocess(d: dict[str, Any], base: PreprocessConfig, where: str) -> tuple[PreprocessConfig, list[str]]:
    """A Hugging Face image processor's settings (VideoMAE/TimeSformer ``preprocessor_config.json``) over ``base``
    (frames and sampling are not in it); the notes say what the runtime does differently."""
    notes: list[str] = []
    kw: dict[str, Any] = {}
    if d.get("do_resize", True) and "size" in d:
        kw["short_side"] = _size_of(d["size"], "size", where)
    if d.get("do_center_crop", True) and "crop_size" in d:
        kw["crop_size"] = _size_of(d["crop_size"], "crop_size", where)
    elif "short_side" in kw:
        kw["crop_size"] = kw["short_side"]
    scale = float(d.get("rescale_factor", 1 / 255)) if d.get("do_rescale", True) else 1.0
    mean, std = (
        (d.get("image_mean", [0.0] * 3), d.get("image_std", [1.0] * 3))
        if d.get("do_normalize", True)
        else ([0.0] * 3, [1.0] * 3)
    )
    k = 255.0 * scale  # x = (p * scale - m) / s = (p / 255 - m / k) / (s / k)
    kw["mean"] = [float(m) / k for m in mean]
    kw["std"] = [float(s) / k for s in std]
    kw["channel_order"] = "RGB"  # Hugging Face image processors take (and give) RGB frames
    if base.channel_order != "RGB":
        notes.append(
            f"channel order RGB as {where}'s image processor takes it (not the {base.channel_order} of "
            "the inferred protocol)"
        )
    resample = d.get("resample", 2)
    if resample != 2:
        notes.append(
            f"{where} asks for {_PIL_RESAMPLE.get(resample, resample)} resampling; the runtime resizes bilinear"
        )
    try:
        return replace(base, **kw), notes
    except ValueError as e:
        raise TaskInputError(f"{where}: {e}") from e


def read_preprocess(
    spec: str, base: PreprocessConfig, option: str = "PREPROCESS", base_from: str = ""
) -> tuple[PreprocessConfig, str, list[str]]:
    """``PREPROCESS=``: a preset name (its preprocessing) or a JSON file: fields of
    :class:`~runtime.preprocess.PreprocessConfig` laid over ``base``, or a Hugging Face ``preprocessor_config.json``."""
    if spec in PRESETS:
        return PRESETS[spec].preprocess, f"{option}={spec} (the preset's)", []
    p = Path(spec)
    where = f"{option}={spec}"
    if not p.is_file():
        raise TaskInputError(f"{where}: neither a preset ({', '.join(sorted(PRESETS))}) nor a JSON file")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TaskInputError(f"{where}: not a readable JSON file ({e})") from e
    if not isinstance(d, dict):
        raise TaskInputError(f"{where}: expected a JSON object, got {type(d).__name__}")
    if {"image_mean", "image_std", "do_normalize", "image_processor_type", "size", "rescale_factor"} & set(d):
        pre, notes = hf_preprocess(d, base, where)
        return pre, f"{where} (Hugging Face image processor; frames and sampling: {base_from or 'defaults'})", notes
    missing = sorted(set(base.to_dict()) - set(d))
    said = f"{where} (other fields, {', '.join(missing)}: {base_from or 'defaults'})" if missing else where
    try:
        return PreprocessConfig.from_dict({**base.to_dict(), **d}), said, []
    except (TypeError, ValueError) as e:
        raise TaskInputError(f"{where}: {e}") from e


def _preset_like(cfg: TimeSformerConfig) -> str | None:
    """The preset with this architecture's frames, size, attention and classes (its published preprocessing)."""
    keys = ("num_frames", "image_size", "attention_type", "num_classes", "embed_dim", "depth", "patch_size")
    for name, preset in PRESETS.items():
        if all(getattr(preset.config, k) == getattr(cfg, k, None) for k in keys) and preset.name == name:
            return name
    return None


def _protocol(cfg: TimeSformerConfig) -> tuple[PreprocessConfig, str]:
    """The published test protocol of the label set with this class count, or the defaults, at this model's size."""
    t, size = cfg.num_frames, cfg.image_size
    dataset = PUBLISHED_LABELS.get(cfg.num_classes, ("", ""))[0]
    if dataset.startswith("Kinetics"):
        rate = max(1, 256 // t)
        return (
            PreprocessConfig(t, rate, "dense", size, size),
            f"the {dataset} protocol at the model's size ({t} frames dense, rate {rate}: 256 source frames; "
            "mean 0.45, std 0.225)",
        )
    if dataset:
        return (
            PreprocessConfig(t, 1, "uniform", size, size, channel_order="BGR"),
            f"the {dataset} protocol at the model's size (uniform frames, BGR as the official loader decodes)",
        )
    return (
        PreprocessConfig(num_frames=t, short_side=size, crop_size=size),
        f"defaults at the model's size ({t} frames, rate 32, mean 0.45, std 0.225, RGB): set PREPROCESS= if "
        "the model was trained otherwise",
    )


def _check_fits(pre: PreprocessConfig, cfg: TimeSformerConfig, where: str) -> None:
    if pre.num_frames != cfg.num_frames or pre.crop_size != cfg.image_size:
        raise TaskInputError(
            f"{where}: {pre.num_frames} frames, crop {pre.crop_size}, but the model takes "
            f"{cfg.num_frames} frames of {cfg.image_size}x{cfg.image_size}"
        )


# ----------------------------------------------------------------------------------------------- the choice


def _choose_labels(
    cfg: TimeSformerConfig, own: list[str] | None, own_from: str, labels: str | None
) -> tuple[list[str], str]:
    if labels:
        return read_labels_file(labels, cfg.num_classes), f"LABELS={labels}"
    if own is not None:
        return list(own), own_from
    published = published_labels(cfg.num_classes)
    if published is not None:
        return published
    return (
        [f"class_{i}" for i in range(cfg.num_classes)],
        f"placeholders class_0..class_{cfg.num_classes - 1} (no label list in the checkpoint and no published "
        f"list has {cfg.num_classes} classes: set LABELS=<file>)",
    )


def _choose_preprocess(
    cfg: TimeSformerConfig, own: PreprocessConfig | None, own_from: str, hf_config: Path | None
) -> tuple[PreprocessConfig, str, list[str]]:
    if own is not None:
        return own, own_from, []
    preset = _preset_like(cfg)
    base, base_from = (
        (PRESETS[preset].preprocess, f"the preset {preset} (same architecture and classes)")
        if preset
        else _protocol(cfg)
    )
    if hf_config is not None and hf_config.is_file():
        try:
            d = json.loads(hf_config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TaskInputError(f"{hf_config}: not a readable JSON file ({e})") from e
        if not isinstance(d, dict):
            raise TaskInputError(f"{hf_config}: expected a JSON object, got {type(d).__name__}")
        pre, notes = hf_preprocess(d, base, str(hf_config))
        return pre, f"{hf_config} (frames and sampling: {base_from})", notes
    return base, base_from, []


def resolve_task_inputs(
    cfg: TimeSformerConfig,
    *,
    own_labels: list[str] | None = None,
    own_labels_from: str = "",
    own_preprocess: PreprocessConfig | None = None,
    own_preprocess_from: str = "",
    hf_preprocessor: Path | None = None,
    labels: str | None = None,
    preprocess: str | None = None,
    random_weights: bool = False,
) -> TaskInputs:
    """The labels and preprocessing of a bundle of a model with ``cfg``: ``labels``/``preprocess`` (``LABELS=``,
    ``PREPROCESS=``) over the checkpoint's own over what its architecture implies. :class:`TaskInputError`."""
    names, labels_from = _choose_labels(cfg, own_labels, own_labels_from, labels)
    pre, pre_from, notes = _choose_preprocess(cfg, own_preprocess, own_preprocess_from, hf_preprocessor)
    if preprocess:
        pre, pre_from, more = read_preprocess(preprocess, pre, base_from=pre_from)
        notes = notes + more
    _check_fits(pre, cfg, f"PREPROCESS={preprocess}" if preprocess else pre_from)
    if random_weights:
        names = [n + RANDOM_MARK for n in names]
        notes = ["RANDOM WEIGHTS: the predictions mean nothing (every label says so)"] + notes
    return TaskInputs(names, pre, labels_from, pre_from, tuple(notes))
