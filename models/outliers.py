"""Function-preserving activation outliers for any checkpoint, to test INT8 against what trained transformers carry.

Trained transformers have a few activation channels tens of times larger than the rest at the inputs of the
Linear layers that follow a LayerNorm; it is why plain post-training INT8 of ViTs loses accuracy. The committed
motion model has none, so :func:`add_outliers` makes them: for every LayerNorm that feeds a Linear
(``temporal_norm1 -> temporal_attn.qkv``, ``norm1 -> attn.qkv``, ``norm2 -> mlp.fc1``, ``norm -> head``) it
multiplies ``channels`` channels of the LayerNorm's weight and bias by ``scale`` and divides the matching input
columns of the Linear by ``scale``. ``Linear(LN(x))`` is unchanged up to FP32 rounding (the LayerNorm output of
those channels is ``scale`` times larger, the weights that read them ``scale`` times smaller), so the FP32 logits
agree to ~1e-6 relative while the activations now carry outliers of ``scale`` times their usual size.

CLI: ``python -m models.outliers --model models/weights/motion_tiny.safetensors --scale 40 --channels 4
--out artifacts/outliers/motion_s40_c4.safetensors`` (weights saved as float32: float16 storage would round the
divided columns differently from the scaled ones and break the exactness).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runtime.cli_args import ArgumentParser

from runtime.cli_args import user_errors

from .timesformer import TimeSformer

__all__ = ["ln_linear_pairs", "add_outliers", "outlier_grid", "SCALES", "CHANNEL_COUNTS", "main"]

#: the range the INT8 bar is measured over (issue 15): outlier scale S and channels per LayerNorm
SCALES = (10.0, 40.0, 100.0)
CHANNEL_COUNTS = (1, 4, 8)


def ln_linear_pairs(net: TimeSformer) -> list[tuple[str, nn.LayerNorm, str, nn.Linear]]:
    """Every (LayerNorm, the Linear it feeds, and nothing else) of the model, with their parameter names."""
    pairs: list[tuple[str, nn.LayerNorm, str, nn.Linear]] = []
    for i, blk in enumerate(net.blocks):
        p = f"blocks.{i}."
        if hasattr(blk, "temporal_norm1"):
            pairs.append((p + "temporal_norm1", blk.temporal_norm1, p + "temporal_attn.qkv", blk.temporal_attn.qkv))
        pairs.append((p + "norm1", blk.norm1, p + "attn.qkv", blk.attn.qkv))
        pairs.append((p + "norm2", blk.norm2, p + "mlp.fc1", blk.mlp.fc1))
    pairs.append(("norm", net.norm, "head", net.head))
    return pairs


def add_outliers(
    net: TimeSformer, scale: float, channels: int, seed: int = 0, inplace: bool = False
) -> tuple[TimeSformer, dict[str, Any]]:
    """``net`` with ``channels`` outlier channels of size ``scale`` after every LayerNorm that feeds a Linear.

    The channels are drawn per LayerNorm with ``seed`` (the same seed gives the same channels). Returns the model
    (a copy unless ``inplace``) and a record: scale, channels, seed and the channel indices per LayerNorm.
    """
    if not scale > 0:
        raise ValueError(f"scale: expected a positive factor, got {scale}")
    d = net.config.embed_dim
    if not 1 <= channels <= d:
        raise ValueError(f"channels: expected 1..{d} (the width of the LayerNorms), got {channels}")
    out = net if inplace else copy.deepcopy(net)
    gen = torch.Generator().manual_seed(seed)
    picked: dict[str, list[int]] = {}
    with torch.no_grad():
        for ln_name, ln, _lin_name, lin in ln_linear_pairs(out):
            idx = torch.randperm(d, generator=gen)[:channels].sort().values
            ln.weight[idx] *= scale
            ln.bias[idx] *= scale
            lin.weight[:, idx] /= scale  # Linear weight is (out, in): columns are the input channels
            picked[ln_name] = idx.tolist()
    return out, {
        "scale": float(scale),
        "channels": int(channels),
        "seed": int(seed),
        "layernorms": len(picked),
        "indices": picked,
    }


def outlier_grid(
    scales: tuple[float, ...] = SCALES, channel_counts: tuple[int, ...] = CHANNEL_COUNTS
) -> list[tuple[float, int]]:
    """The (scale, channels) combinations the INT8 bar is measured on."""
    return [(float(s), int(c)) for s in scales for c in channel_counts]


@user_errors("python -m models.outliers")
def main(argv: list[str] | None = None) -> int:
    from .checkpoints import save_checkpoint
    from .source import SourceError, load_source, model_task

    ap = ArgumentParser(prog="python -m models.outliers", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/weights/motion_tiny.safetensors", help="checkpoint path or preset")
    ap.add_argument("--scale", type=float, default=40.0, help="outlier factor S (default 40)")
    ap.add_argument("--channels", type=int, default=4, help="outlier channels per LayerNorm (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output .safetensors (a JSON sidecar is written beside it)")
    a = ap.parse_args(argv)
    try:
        net, labels, pre, source = load_source(a.model)
        out, rec = add_outliers(net, a.scale, a.channels, a.seed)
    except (SourceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    x = torch.randn(
        2,
        net.config.num_frames,
        net.config.in_chans,
        net.config.image_size,
        net.config.image_size,
        generator=torch.Generator().manual_seed(a.seed),
    )
    with torch.no_grad():
        ref, got = net(x), out(x)
    rel = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    meta = {"outliers": rec, "source": source, "max_rel_logit_change": rel}
    task = model_task(net)
    if task:  # the same function, so the same task: its clips stay the right ones to calibrate and evaluate on
        meta["synthetic_task"] = task
    path = save_checkpoint(out, Path(a.out), labels, pre, metadata=meta)
    print(
        f"wrote {path}: S={a.scale:g}, {a.channels} channels x {rec['layernorms']} LayerNorms, "
        f"logits changed by {rel:.2e} relative"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
