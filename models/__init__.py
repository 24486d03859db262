"""The PyTorch reference TimeSformer, its presets, checkpoint import/export and cost model."""

from .checkpoints import (
    CheckpointError,
    CheckpointInfo,
    load_checkpoint,
    load_hf,
    load_official,
    save_checkpoint,
    save_official,
)
from .config import PRESETS, Preset, TimeSformerConfig, get_preset
from .flops import count_flops, count_params
from .source import SourceError, load_source, model_task
from .timesformer import ATTENTION_IMPLS, TimeSformer

__all__ = [
    "PRESETS",
    "Preset",
    "TimeSformerConfig",
    "get_preset",
    "ATTENTION_IMPLS",
    "TimeSformer",
    "CheckpointError",
    "CheckpointInfo",
    "load_checkpoint",
    "load_hf",
    "load_official",
    "save_checkpoint",
    "save_official",
    "count_flops",
    "count_params",
    "SourceError",
    "load_source",
    "model_task",
]
