"""The reference TimeSformer (Bertasius et al., ICML 2021), faithful to the official ``vit.py``.

Input: ``(batch, frames, 3, H, W)`` float32, normalised (the project's canonical layout; the
official code takes ``(batch, 3, frames, H, W)``). Tokens after the embeddings are ordered as in
the official model: the class token, then patch-major, time-minor. Parameter names equal the
official ones without the ``model.`` prefix, so official state dicts load as they are.

The attention arithmetic is pluggable per module (``Attention.impl``): ``sdpa`` uses
``scaled_dot_product_attention``; ``decomposed`` writes MatMul -> Softmax -> MatMul; the export
step registers further forms in :data:`ATTENTION_IMPLS`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import TimeSformerConfig

# An attention implementation maps q, k, v of shape (batch, seq, width) to (batch, seq, width).
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, float, float], torch.Tensor]


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, s, d = x.shape
    return x.reshape(b, s, num_heads, d // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float, dropout_p: float = 0.0
) -> torch.Tensor:
    """Multi-head attention through ``scaled_dot_product_attention``."""
    out = F.scaled_dot_product_attention(
        _split_heads(q, num_heads),
        _split_heads(k, num_heads),
        _split_heads(v, num_heads),
        dropout_p=dropout_p,
        scale=scale,
    )
    return _merge_heads(out)


def decomposed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float, dropout_p: float = 0.0
) -> torch.Tensor:
    """MatMul -> Softmax -> MatMul with the scale applied to q first (nothing between the matmuls)."""
    qh = _split_heads(q * scale, num_heads)
    kt = _split_heads(k, num_heads).transpose(-2, -1)
    attn = torch.matmul(qh, kt).softmax(dim=-1)
    if dropout_p:
        attn = F.dropout(attn, dropout_p)
    return _merge_heads(torch.matmul(attn, _split_heads(v, num_heads)))


ATTENTION_IMPLS: dict[str, AttentionFn] = {"sdpa": sdpa_attention, "decomposed": decomposed_attention}


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (official ``Attention``)."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.impl = "sdpa"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        fn = ATTENTION_IMPLS[self.impl]
        out = fn(q, k, v, self.num_heads, self.scale, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth per sample (training only)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """One TimeSformer block: (temporal attention,) spatial or joint attention, MLP."""

    def __init__(self, cfg: TimeSformerConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        d, eps = cfg.embed_dim, cfg.layer_norm_eps
        self.attention_type = cfg.attention_type
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.attn = Attention(d, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
        if self.attention_type == "divided_space_time":
            self.temporal_norm1 = nn.LayerNorm(d, eps=eps)
            self.temporal_attn = Attention(d, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
            self.temporal_fc = nn.Linear(d, d)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = Mlp(d, cfg.mlp_hidden, cfg.drop_rate)

    def forward(self, x: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        if self.attention_type != "divided_space_time":
            x = x + self.drop_path(self.attn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        b, t = batch, frames
        d = x.shape[-1]
        n = (x.shape[1] - 1) // t
        cls = x[:, :1]
        xt = x[:, 1:]
        # Temporal attention: each patch over the T frames; tokens are patch-major, so a plain reshape.
        res_t = self.drop_path(self.temporal_attn(self.temporal_norm1(xt.reshape(b * n, t, d))))
        xt = xt + self.temporal_fc(res_t.reshape(b, n * t, d))
        # Spatial attention: the patches of one frame plus the class token repeated per frame.
        xs = xt.reshape(b, n, t, d).transpose(1, 2).reshape(b * t, n, d)
        xs = torch.cat((cls.expand(b, t, d).reshape(b * t, 1, d), xs), dim=1)
        res_s = self.drop_path(self.attn(self.norm1(xs)))
        cls_res = res_s[:, 0].reshape(b, t, d).mean(dim=1, keepdim=True)
        res_s = res_s[:, 1:].reshape(b, t, n, d).transpose(1, 2).reshape(b, n * t, d)
        x = torch.cat((cls, xt), dim=1) + torch.cat((cls_res, res_s), dim=1)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: TimeSformerConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(B*T, 3, H, W)`` -> tokens ``(B*T, h*w, D)`` and the patch grid width."""
        x = self.proj(x)
        w = x.shape[-1]
        return x.flatten(2).transpose(1, 2), w


class TimeSformer(nn.Module):
    """TimeSformer classifier: ``(B, T, 3, H, W)`` -> logits ``(B, num_classes)``."""

    def __init__(self, cfg: TimeSformerConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, d))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        if cfg.attention_type != "space_only":
            self.time_embed = nn.Parameter(torch.zeros(1, cfg.num_frames, d))
            self.time_drop = nn.Dropout(cfg.drop_rate)
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList(Block(cfg, dpr[i]) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(d, cfg.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation, including the zeroed ``temporal_fc`` of every block but the first."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.config.attention_type == "divided_space_time":
            for i, blk in enumerate(self.blocks):
                if i > 0:
                    nn.init.zeros_(blk.temporal_fc.weight)
                    nn.init.zeros_(blk.temporal_fc.bias)

    def set_attention_impl(self, impl: str) -> "TimeSformer":
        """Use ``impl`` (a key of :data:`ATTENTION_IMPLS`) for every attention call."""
        if impl not in ATTENTION_IMPLS:
            raise KeyError(f"unknown attention implementation {impl!r}; known: {sorted(ATTENTION_IMPLS)}")
        for m in self.modules():
            if isinstance(m, Attention):
                m.impl = impl
        return self

    def _pos_embed_for(self, grid_h: int, grid_w: int) -> torch.Tensor:
        pos = self.pos_embed
        if grid_h * grid_w + 1 == pos.shape[1]:
            return pos
        # As the official model: nearest resize of the patch grid, class position kept.
        p = int(math.isqrt(pos.shape[1] - 1))
        grid = pos[:, 1:].transpose(1, 2).reshape(1, pos.shape[2], p, p)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="nearest").flatten(2).transpose(1, 2)
        return torch.cat((pos[:, :1], grid), dim=1)

    def _time_embed_for(self, frames: int) -> torch.Tensor:
        te = self.time_embed
        if frames == te.shape[1]:
            return te
        return F.interpolate(te.transpose(1, 2), size=frames, mode="nearest").transpose(1, 2)

    def forward_features(
        self, video: torch.Tensor, return_blocks: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Class-token features ``(B, D)`` after the final norm (and, optionally, every block's output)."""
        if video.ndim != 5 or video.shape[2] != self.config.in_chans:
            raise ValueError(f"video: expected (batch, frames, {self.config.in_chans}, H, W), got {tuple(video.shape)}")
        b, t, c, h, w = video.shape
        x, grid_w = self.patch_embed(video.reshape(b * t, c, h, w))
        n, d = x.shape[1], x.shape[2]
        x = torch.cat((self.cls_token.expand(b * t, -1, -1), x), dim=1)
        x = self.pos_drop(x + self._pos_embed_for(n // grid_w, grid_w))
        if self.config.attention_type != "space_only":
            cls = x[:b, :1]  # identical for every frame: class token plus its position
            x = x[:, 1:].reshape(b, t, n, d).transpose(1, 2).reshape(b * n, t, d)
            x = self.time_drop(x + self._time_embed_for(t))
            x = torch.cat((cls, x.reshape(b, n * t, d)), dim=1)
        blocks = []
        for blk in self.blocks:
            x = blk(x, b, t)
            if return_blocks:
                blocks.append(x)
        if self.config.attention_type == "space_only":
            x = x.reshape(b, t, n + 1, d).mean(dim=1)
        x = self.norm(x)[:, 0]
        return (x, blocks) if return_blocks else x

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(video))

    def forward_with_blocks(self, video: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and each block's output tokens, for locating where two implementations diverge."""
        feats, blocks = self.forward_features(video, return_blocks=True)
        return self.head(feats), blocks
