"""Analytic parameter and FLOP counts of a TimeSformer config (one clip, one view)."""

from __future__ import annotations

from .config import TimeSformerConfig


def count_params(cfg: TimeSformerConfig) -> int:
    """Trainable parameters, computed from the config alone (equals ``sum(p.numel())`` of the model)."""
    d, h, p = cfg.embed_dim, cfg.mlp_hidden, cfg.patch_size
    attn = d * 3 * d + (3 * d if cfg.qkv_bias else 0) + d * d + d
    block = 2 * 2 * d + attn + (d * h + h) + (h * d + d)
    if cfg.attention_type == "divided_space_time":
        block += 2 * d + attn + d * d + d
    total = cfg.in_chans * p * p * d + d + d + (cfg.num_patches + 1) * d + cfg.depth * block + 2 * d
    total += d * cfg.num_classes + cfg.num_classes
    if cfg.attention_type != "space_only":
        total += cfg.num_frames * d
    return total


def count_flops(cfg: TimeSformerConfig, frames: int | None = None, image_size: int | None = None) -> dict[str, float]:
    """Multiply-accumulates of matmuls and convolutions (the usual convention), by part, for one clip.

    FLOPs are reported as 2 x MACs. Norms, softmax and GELU are left out (under 1% of the total).
    """
    t = frames or cfg.num_frames
    n = ((image_size or cfg.image_size) // cfg.patch_size) ** 2
    d, h = cfg.embed_dim, cfg.mlp_hidden
    macs = {"patch_embed": t * n * cfg.in_chans * cfg.patch_size**2 * d}
    per_block: dict[str, float] = {}

    def attention(tokens: int, seqs: int, seq: int) -> float:
        return tokens * 4 * d * d + seqs * 2 * seq * seq * d  # qkv + proj, QK^T + AV

    if cfg.attention_type == "divided_space_time":
        per_block["temporal_attention"] = attention(n * t, n, t) + n * t * d * d  # + temporal_fc
        per_block["spatial_attention"] = attention(t * (n + 1), t, n + 1)
        tokens = n * t + 1
    elif cfg.attention_type == "joint_space_time":
        per_block["joint_attention"] = attention(n * t + 1, 1, n * t + 1)
        tokens = n * t + 1
    else:
        per_block["spatial_attention"] = attention(t * (n + 1), t, n + 1)
        tokens = t * (n + 1)
    per_block["mlp"] = tokens * 2 * d * h
    for k, v in per_block.items():
        macs[k] = v * cfg.depth
    macs["head"] = d * cfg.num_classes
    total = sum(macs.values())
    return {
        "macs": total,
        "flops": 2 * total,
        "gmacs": total / 1e9,
        "gflops": 2 * total / 1e9,
        "by_part_gmacs": {k: v / 1e9 for k, v in macs.items()},
    }
