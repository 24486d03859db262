"""``python -m models.bench_model``: parameters, GMACs and eager CPU latency of the reference model per preset.

Random weights (latency does not depend on them); batch 1; FP32 eager and, for comparison, bf16 autocast.
Prints a Markdown table and writes ``artifacts/bench/model.json``.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from runtime.cli_args import ArgumentParser
from runtime.files import write_json_atomic

from runtime.cli_args import user_errors

from .config import get_preset
from .flops import count_flops, count_params
from .timesformer import TimeSformer


def time_forward(net: TimeSformer, x: torch.Tensor, iters: int, bf16: bool = False) -> list[float]:
    """Seconds per forward pass (one warm-up pass first)."""
    samples = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        net(x)
        for _ in range(iters):
            t = time.perf_counter()
            net(x)
            samples.append(time.perf_counter() - t)
    return samples


@user_errors("python -m models.bench_model", (KeyError,))
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m models.bench_model", description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="base,base_8x224_k400_joint,base_8x224_k400_space")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--out", default="artifacts/bench/model.json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    print("| preset | attention | params | GMACs/clip | FP32 eager p50 (s) | bf16 autocast p50 (s) |")
    print("|---|---|---|---|---|---|")
    for name in a.presets.split(","):
        cfg = get_preset(name).config
        torch.manual_seed(0)
        net = TimeSformer(cfg).eval()
        x = torch.randn(1, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
        fp32 = float(np.median(time_forward(net, x, a.iters)))
        bf16 = None if a.no_bf16 else float(np.median(time_forward(net, x, a.iters, bf16=True)))
        row = {
            "preset": name,
            "attention": cfg.attention_type,
            "params": count_params(cfg),
            "gmacs": count_flops(cfg)["gmacs"],
            "fp32_p50_s": fp32,
            "bf16_p50_s": bf16,
            "threads": torch.get_num_threads(),
        }
        rows.append(row)
        print(
            f"| {name} | {cfg.attention_type} | {row['params']:,} | {row['gmacs']:.1f} | {fp32:.3f} | "
            f"{'-' if bf16 is None else f'{bf16:.3f}'} |",
            flush=True,
        )
    write_json_atomic(a.out, {"rows": rows, "torch": torch.__version__, "cores": os.cpu_count()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
