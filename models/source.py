"""``MODEL=...`` on the command line -> a model: a preset name (random weights) or a checkpoint path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.files import sha256_json
from runtime.preprocess import PreprocessConfig

from .checkpoints import load_checkpoint
from .config import PRESETS
from .timesformer import TimeSformer

__all__ = ["SourceError", "load_source", "model_task"]


class SourceError(ValueError):
    """``MODEL`` names neither a preset nor an existing checkpoint."""


def load_source(model: str, seed: int = 0) -> tuple[TimeSformer, list[str] | None, PreprocessConfig, dict[str, Any]]:
    """A preset name (random weights, temporal layers perturbed) or a checkpoint path ->
    ``(model in eval mode, labels or None, preprocessing, {"checkpoint", "checkpoint_sha256"})``."""
    import torch

    if model in PRESETS:
        preset = PRESETS[model]
        torch.manual_seed(seed)
        net = TimeSformer(preset.config).eval()
        with torch.no_grad():  # random weights: make the zero-initialised temporal layers matter
            for blk in net.blocks:
                if hasattr(blk, "temporal_fc"):
                    blk.temporal_fc.weight.normal_(0, 0.02)
        source = {
            "checkpoint": f"preset:{model} (random weights, seed {seed})",
            "checkpoint_sha256": sha256_json("preset", model, seed),
        }
        return net, None, preset.preprocess, source
    path = Path(model)
    if not path.exists():
        raise SourceError(f"MODEL={model!r}: neither a preset ({', '.join(sorted(PRESETS))}) nor an existing path")
    net = load_checkpoint(path)
    pre = net.preprocess
    if pre is None:
        c = net.config
        pre = PreprocessConfig(num_frames=c.num_frames, short_side=c.image_size, crop_size=c.image_size)
    return net, net.labels, pre, {"checkpoint": str(path), "checkpoint_sha256": net.checkpoint.sha256}


def model_task(net: TimeSformer) -> str | None:
    """The synthetic task a checkpoint was trained on (from its metadata), or None (a preset, a real checkpoint)."""
    from calibration.clips.synthetic import task_of_metadata

    return task_of_metadata(getattr(getattr(net, "checkpoint", None), "metadata", None) or {})
