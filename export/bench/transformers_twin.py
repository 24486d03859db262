"""The ``transformers`` twin of a TimeSformer: the anchor the benchmarks hold our exports against.

One place builds it: a random-init ``TimesformerForVideoClassification`` of a given shape (its zero-initialised
temporal path perturbed so that it matters), the twin of one of our models (our weights renamed into it, checked
on a random clip), and the plain ``torch.onnx.export`` of it. Used by ``make bench-cpu`` and ``make bench-onnx``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["hf_config", "random_model", "random_checkpoint", "twin_checkpoint", "export_plain_onnx"]

#: the largest difference (max |dlogit|) between our model and its twin on a random clip
TWIN_TOLERANCE = 1e-3


def hf_config(c: Any) -> Any:
    """The ``transformers`` TimesformerConfig of one of our ``models`` configs."""
    import transformers

    return transformers.TimesformerConfig(
        image_size=c.image_size,
        patch_size=c.patch_size,
        num_channels=c.in_chans,
        num_frames=c.num_frames,
        hidden_size=c.embed_dim,
        num_hidden_layers=c.depth,
        num_attention_heads=c.num_heads,
        intermediate_size=int(c.embed_dim * c.mlp_ratio),
        layer_norm_eps=c.layer_norm_eps,
        qkv_bias=c.qkv_bias,
        attention_type=c.attention_type,
        num_labels=c.num_classes,
    )


def random_model(config: Any, seed: int) -> Any:
    """A random-init ``TimesformerForVideoClassification`` of ``config`` (a TimesformerConfig), in eval mode.

    ``transformers`` zero-initialises the time embedding and the temporal dense layers; they are perturbed (seed + 1)
    so that the temporal path matters."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.TimesformerForVideoClassification(config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "temporal_dense" in name or "time_embeddings" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def _save(model: Any, out: Path) -> Path:
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def random_checkpoint(preset: str, seed: int, cache: Path) -> Path:
    """A random-init ``transformers`` TimeSformer with the preset's shape, saved once under ``cache``."""
    from models import PRESETS

    out = Path(cache) / "bench_cpu" / f"hf-{preset}-seed{seed}"
    if (out / "config.json").is_file():
        return out
    return _save(random_model(hf_config(PRESETS[preset].config), seed), out)


def twin_checkpoint(net: Any, sha256: str, cache: Path) -> Path:
    """Our model's weights in a ``transformers`` model (saved once under ``cache``, keyed by ``sha256``)."""
    import torch
    import transformers

    from models.checkpoints import hf_to_official

    out = Path(cache) / "bench_cpu" / f"hf-twin-{sha256[:16]}"
    if (out / "config.json").is_file():
        return out
    hf = transformers.TimesformerForVideoClassification(hf_config(net.config)).eval()
    # hf_to_official renames keys; handing it the keys as values gives official name -> transformers name
    names = hf_to_official({k: k for k in hf.state_dict()}, "transformers TimeSformer")
    ours = net.state_dict()
    missing = sorted(set(names) - set(ours))
    if missing:
        raise ValueError(f"{net.config}: no transformers twin (our model lacks {missing[:3]})")
    hf.load_state_dict({hf_key: ours[official].detach().clone() for official, hf_key in names.items()}, strict=True)
    with torch.no_grad():
        x = torch.randn(
            (1, net.config.num_frames, 3, net.config.image_size, net.config.image_size),
            generator=torch.Generator().manual_seed(0),
        )
        diff = float((hf(pixel_values=x).logits - net(x)).abs().max())
    if diff > TWIN_TOLERANCE:
        raise ValueError(
            f"the transformers twin differs from our model by {diff:.2e} on a random clip "
            f"(expected at most {TWIN_TOLERANCE:g})"
        )
    return _save(hf, out)


def export_plain_onnx(hf: Any, path: Path, example: Any, opset: int) -> Path:
    """The plain export of the ``transformers`` model (``torch.onnx.export``, dynamo), dynamic batch as ours."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hf = hf

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.hf(pixel_values=pixel_values).logits

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.onnx")
    with torch.no_grad():
        program = torch.onnx.export(
            Logits().eval(),
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch", min=1, max=4096)}},
            verbose=False,
        )
    program.save(str(tmp))
    os.replace(tmp, path)
    return path
