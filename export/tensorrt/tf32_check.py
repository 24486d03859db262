"""How far TF32 moves a model's logits, emulated on the CPU: the measurement behind ``plan.TF32_TOLERANCE``.

TensorRT's ``BuilderFlag.TF32`` (on by default on Ampere, Hopper and Orin) runs FP32 matmuls and convolutions with
inputs rounded to TF32's 10-bit mantissa and FP32 accumulation. :class:`TF32Mode` does the same to PyTorch's
linear, matmul, convolution and attention calls (round to nearest on the mantissa bits), so that
``python -m export.tensorrt.tf32_check --model M`` compares a model with and without it on held-out clips.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["to_tf32", "TF32Mode", "measure"]


def to_tf32(x: Any) -> Any:
    """``x`` rounded to TF32 (10 mantissa bits) when it is an FP32 tensor; anything else unchanged."""
    if not torch.is_tensor(x) or x.dtype != torch.float32:
        return x
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


_WEIGHTED = {F.linear, F.conv1d, F.conv2d, F.conv3d}
_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.einsum}


class TF32Mode(TorchFunctionMode):
    """Inside it, every matmul/convolution/attention input is rounded to TF32 first."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            scale = kwargs.get("scale") or q.shape[-1] ** -0.5
            p = torch.softmax(to_tf32(q) @ to_tf32(k).transpose(-2, -1) * scale, -1)
            return to_tf32(p) @ to_tf32(v)
        if func in _WEIGHTED:
            args = (to_tf32(args[0]), to_tf32(args[1]), *args[2:])
        elif func in _MATMULS:
            args = tuple(to_tf32(a) for a in args)
        return func(*args, **kwargs)


def measure(model: str, n: int = 64, seed: int = 1234) -> dict[str, Any]:
    """FP32 vs emulated TF32 logits of ``model`` on ``n`` synthetic held-out clips."""
    from calibration.clips.calibset import load_clips, synthetic_spec
    from calibration.precision.metrics import compare_logits
    from models import load_source, model_task

    net, _, pre, _ = load_source(model, 0)
    clips = load_clips(synthetic_spec(model_task(net)), pre, n=n, seed=seed)
    with torch.no_grad():
        ref = np.concatenate([net(torch.from_numpy(clips[i : i + 8])).numpy() for i in range(0, n, 8)])
        with TF32Mode():
            tf32 = np.concatenate([net(torch.from_numpy(clips[i : i + 8])).numpy() for i in range(0, n, 8)])
    m = compare_logits(ref, tf32)
    return {
        "model": model,
        "clips": n,
        "max_abs_logit_reference": float(np.abs(ref).max()),
        **{k: m[k] for k in ("max_abs_logit", "mean_abs_logit", "min_cosine", "top1_agreement")},
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/weights/motion_tiny.safetensors")
    ap.add_argument("--n", type=int, default=64)
    a = ap.parse_args()
    print(json.dumps(measure(a.model, a.n), indent=2))
