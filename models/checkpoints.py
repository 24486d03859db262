"""Checkpoint import and export: official ``.pyth``, Hugging Face ``transformers`` and our own safetensors.

Every loader infers the config from the weights where it can (frames from the time embedding,
resolution from the position embedding, classes from the head, attention type from the keys) and
loads strictly: a missing or unexpected key, or a shape that fits no config, raises
:class:`CheckpointError` naming the file and the key. So do NaN/Inf weights (naming the tensor), a
label list whose length is not the number of classes, and, for our safetensors, weights whose sha256
no longer matches the one recorded in the JSON sidecar.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from runtime.files import sha256_file, temp_path_beside, write_bytes_atomic, write_json_atomic
from runtime.preprocess import PreprocessConfig

from .config import LIMITS, TimeSformerConfig, check_field
from .timesformer import TimeSformer

OUR_FORMAT = "timesformer-deploy/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class CheckpointInfo:
    """Where a model came from and what it knows about its task."""

    path: str
    format: str
    sha256: str
    labels: list[str] | None = None
    preprocess: PreprocessConfig | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _write_atomic(path: Path, write) -> None:
    """``write(temp path)``, then rename the temp file onto ``path``."""
    tmp = str(temp_path_beside(path))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- config inference


def infer_config(
    state: Mapping[str, torch.Tensor], source: str, num_heads: int | None = None, **overrides: Any
) -> TimeSformerConfig:
    """Architecture from official-named weights; ``num_heads`` is not in the weights (default: width/64)."""

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"{source}: missing key {key!r}; not a TimeSformer state dict")
        return state[key]

    proj = need("patch_embed.proj.weight")
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        raise CheckpointError(f"{source}: patch_embed.proj.weight: expected (D, C, p, p), got {tuple(proj.shape)}")
    embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    pos = need("pos_embed")
    grid = math.isqrt(pos.shape[1] - 1)
    if pos.ndim != 3 or grid * grid != pos.shape[1] - 1 or pos.shape[2] != embed_dim:
        raise CheckpointError(f"{source}: pos_embed: expected (1, g*g+1, {embed_dim}), got {tuple(pos.shape)}")
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth == 0:
        raise CheckpointError(f"{source}: no 'blocks.N.' keys; not a TimeSformer state dict")
    if "blocks.0.temporal_fc.weight" in state:
        attention_type = "divided_space_time"
    elif "time_embed" in state:
        attention_type = "joint_space_time"
    else:
        attention_type = "space_only"
    num_frames = state["time_embed"].shape[1] if "time_embed" in state else overrides.pop("num_frames", 8)
    head = need("head.weight")
    fc1 = need("blocks.0.mlp.fc1.weight")
    cfg = dict(
        image_size=grid * patch,
        patch_size=patch,
        num_frames=int(num_frames),
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads or max(1, embed_dim // 64),
        mlp_ratio=fc1.shape[0] / embed_dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        num_classes=head.shape[0],
        attention_type=attention_type,
    )
    cfg.update(overrides)
    try:
        return TimeSformerConfig(**cfg)
    except ValueError as e:
        raise CheckpointError(f"{source}: weights fit no valid config: {e}") from e


def expected_shapes(cfg: TimeSformerConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of ``TimeSformer(cfg).state_dict()`` with its shape, computed from the config alone (nothing
    allocated; tests check it against the module)."""
    d, h, k = cfg.embed_dim, cfg.mlp_hidden, cfg.num_classes
    out: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.weight": (d, cfg.in_chans, cfg.patch_size, cfg.patch_size),
        "patch_embed.proj.bias": (d,),
        "cls_token": (1, 1, d),
        "pos_embed": (1, cfg.num_patches + 1, d),
    }
    if cfg.attention_type != "space_only":
        out["time_embed"] = (1, cfg.num_frames, d)

    def attention(prefix: str) -> None:
        out[f"{prefix}.qkv.weight"] = (3 * d, d)
        if cfg.qkv_bias:
            out[f"{prefix}.qkv.bias"] = (3 * d,)
        out[f"{prefix}.proj.weight"], out[f"{prefix}.proj.bias"] = (d, d), (d,)

    for i in range(cfg.depth):
        b = f"blocks.{i}"
        for norm in ("norm1", "norm2") + (("temporal_norm1",) if cfg.attention_type == "divided_space_time" else ()):
            out[f"{b}.{norm}.weight"], out[f"{b}.{norm}.bias"] = (d,), (d,)
        attention(f"{b}.attn")
        if cfg.attention_type == "divided_space_time":
            attention(f"{b}.temporal_attn")
            out[f"{b}.temporal_fc.weight"], out[f"{b}.temporal_fc.bias"] = (d, d), (d,)
        out[f"{b}.mlp.fc1.weight"], out[f"{b}.mlp.fc1.bias"] = (h, d), (h,)
        out[f"{b}.mlp.fc2.weight"], out[f"{b}.mlp.fc2.bias"] = (d, h), (d,)
    out["norm.weight"], out["norm.bias"] = (d,), (d,)
    out["head.weight"], out["head.bias"] = (k, d), (k,)
    return out


#: the config fields that set a tensor's shape, for the error message
_SHAPE_FIELDS = {
    "patch_embed.proj.weight": "embed_dim, in_chans, patch_size",
    "pos_embed": "image_size / patch_size",
    "time_embed": "num_frames",
    "head.weight": "num_classes",
    "head.bias": "num_classes",
    "mlp.fc1.weight": "mlp_ratio (intermediate_size)",
    "mlp.fc1.bias": "mlp_ratio (intermediate_size)",
    "mlp.fc2.weight": "mlp_ratio (intermediate_size)",
}


def _fields_of(key: str) -> str:
    for suffix, fields in _SHAPE_FIELDS.items():
        if key == suffix or key.endswith("." + suffix):
            return f"set by the config's {fields}; "
    return "set by the config's embed_dim; " if key.endswith(("weight", "bias", "token")) else ""


def check_fits(state: Mapping[str, torch.Tensor], cfg: TimeSformerConfig, source: str) -> None:
    """CheckpointError, naming the config field, when the (validated) config does not describe these weights:
    its depth, its keys, every tensor's shape and so its parameter count (from the config alone) against the
    file's. Runs before any model is built: a config that would allocate more than the file holds never does."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if len(blocks) != cfg.depth:
        raise CheckpointError(
            f"{source}: depth: the config says {cfg.depth} blocks, the weights hold {len(blocks)}"
            + (f" (blocks.{min(blocks)}..blocks.{max(blocks)})" if blocks else "")
        )
    expected = expected_shapes(cfg)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        raise CheckpointError(f"{source}: does not match the {cfg.attention_type} model: " + "; ".join(parts))
    want = sum(math.prod(s) for s in expected.values())
    got = sum(int(state[k].numel()) for k in expected)
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise CheckpointError(
                f"{source}: key {k!r}: expected shape {shape}, got {tuple(state[k].shape)} "
                f"({_fields_of(k)}the config describes {want:,} parameters, the file holds {got:,})"
            )


def build_from_state(state: Mapping[str, torch.Tensor], cfg: TimeSformerConfig, source: str) -> TimeSformer:
    """A model with exactly these weights; any missing, unexpected or mis-shaped key is an error, found from
    the config alone before anything is allocated (:func:`check_fits`)."""
    check_fits(state, cfg, source)
    model = TimeSformer(cfg)
    check_finite(state, source)
    model.load_state_dict({k: state[k].to(torch.float32) for k in model.state_dict()}, strict=True)
    return model.eval()


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """CheckpointError naming the first tensor with NaN or Inf values (a corrupt or diverged checkpoint)."""
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise CheckpointError(
                f"{source}: tensor {k!r} has {bad} NaN/Inf value(s) of {v.numel()}; expected "
                "finite weights (a corrupt file or a diverged training run)"
            )


def check_labels(labels: list[str] | None, num_classes: int, source: str) -> None:
    """CheckpointError when a label list does not have one name per class."""
    if labels is None:
        return
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise CheckpointError(
            f"{source}: labels: expected a list of {num_classes} strings, got {type(labels).__name__}"
        )
    if len(labels) != num_classes:
        raise CheckpointError(f"{source}: labels: {len(labels)} names, but the model's head has {num_classes} classes")


# --------------------------------------------------------------------------- official (.pyth)


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def load_official(
    path: str | os.PathLike, num_heads: int | None = None, **overrides: Any
) -> tuple[TimeSformer, CheckpointInfo]:
    """An official ``facebookresearch/TimeSformer`` checkpoint (``.pyth``/``.pth``) or a bare state dict."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and "model_state" in obj:
        state = obj["model_state"]
    elif isinstance(obj, dict) and "state_dict" in obj:
        state = obj["state_dict"]
    else:
        state = obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict with 'model_state' or a state dict of tensors")
    state = _strip_prefixes(state)
    cfg = infer_config(state, str(path), num_heads=num_heads, **overrides)
    model = build_from_state(state, cfg, str(path))
    return model, CheckpointInfo(str(path), "official", sha256_file(path))


def save_official(model: TimeSformer, path: str | os.PathLike) -> None:
    """Write the official ``.pyth`` layout: ``{'model_state': {'model.<key>': tensor}, ...}``."""
    state = {f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    _write_atomic(Path(path), lambda tmp: torch.save({"epoch": 0, "model_state": state}, tmp))


# --------------------------------------------------------------------------- Hugging Face

_HF_RULES = [
    (r"^timesformer\.embeddings\.cls_token$", "cls_token"),
    (r"^timesformer\.embeddings\.position_embeddings$", "pos_embed"),
    (r"^timesformer\.embeddings\.time_embeddings$", "time_embed"),
    (r"^timesformer\.embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^timesformer\.encoder\.layer\.(\d+)\.attention\.attention\.qkv\.", r"blocks.\1.attn.qkv."),
    (r"^timesformer\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^timesformer\.encoder\.layer\.(\d+)\.temporal_attention\.attention\.qkv\.", r"blocks.\1.temporal_attn.qkv."),
    (r"^timesformer\.encoder\.layer\.(\d+)\.temporal_attention\.output\.dense\.", r"blocks.\1.temporal_attn.proj."),
    (r"^timesformer\.encoder\.layer\.(\d+)\.temporal_layernorm\.", r"blocks.\1.temporal_norm1."),
    (r"^timesformer\.encoder\.layer\.(\d+)\.temporal_dense\.", r"blocks.\1.temporal_fc."),
    (r"^timesformer\.encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^timesformer\.encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^timesformer\.encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^timesformer\.encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^timesformer\.layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]


#: Hugging Face config key -> our config field (checked with :func:`models.config.check_field`)
_HF_FIELDS = {
    "image_size": "image_size",
    "patch_size": "patch_size",
    "num_frames": "num_frames",
    "num_channels": "in_chans",
    "hidden_size": "embed_dim",
    "num_hidden_layers": "depth",
    "num_attention_heads": "num_heads",
    "layer_norm_eps": "layer_norm_eps",
}


def hf_to_official(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename ``transformers`` Timesformer keys to the official names."""
    out = {}
    for k, v in state.items():
        for pat, rep in _HF_RULES:
            new, n = re.subn(pat, rep, k)
            if n:
                out[new] = v
                break
        else:
            raise CheckpointError(f"{source}: key {k!r} is not part of a TimesformerForVideoClassification")
    return out


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors ({e})") from e


def _read_hf_weights(path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The weights of a Hugging Face directory: single or sharded safetensors, or ``pytorch_model.bin``."""
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors", _read_safetensors(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from e
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            if not (path / shard).is_file():
                raise CheckpointError(f"{index}: shard {shard!r} is missing from {path}")
            state.update(_read_safetensors(path / shard))
        return index, state
    if (path / "pytorch_model.bin").is_file():
        weights = path / "pytorch_model.bin"
        try:
            return weights, torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{weights}: cannot read ({type(e).__name__}: {e})") from e
    raise CheckpointError(
        f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin beside config.json"
    )


def load_hf(path: str | os.PathLike) -> tuple[TimeSformer, CheckpointInfo]:
    """A ``transformers`` checkpoint directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``)."""
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing; a Hugging Face checkpoint directory needs config.json")
    try:
        hf = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
    if not isinstance(hf, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object of config fields, got {type(hf).__name__}")
    try:  # every field before the weights are read or a model is built
        for hf_key, ours in _HF_FIELDS.items():
            if hf_key in hf:
                check_field(ours, hf[hf_key], hf_key)
        inter = hf.get("intermediate_size", 3072)
        if isinstance(inter, bool) or not isinstance(inter, int) or not 1 <= inter <= 64 * LIMITS["embed_dim"][2]:
            raise ValueError(
                f"intermediate_size: expected an integer in 1..{64 * LIMITS['embed_dim'][2]}, got {inter!r:.40}"
            )
        if not isinstance(hf.get("qkv_bias", True), bool):
            raise ValueError(f"qkv_bias: expected true or false, got {hf['qkv_bias']!r:.40}")
    except ValueError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from e
    if hf.get("model_type") not in (None, "timesformer"):
        raise CheckpointError(f"{cfg_path}: model_type: expected 'timesformer', got {hf.get('model_type')!r}")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{cfg_path}: hidden_act: expected 'gelu', got {hf['hidden_act']!r}")
    weights, state = _read_hf_weights(path)
    state = hf_to_official(state, str(weights))
    attention_type = hf.get("attention_type", "divided_space_time")
    # transformers' space_only returns one row of logits per frame; ours averages as the official model does.
    head = state.get("head.weight")
    if head is None or head.ndim != 2:
        raise CheckpointError(f"{weights}: no 2-D classifier.weight; not a TimesformerForVideoClassification")
    try:
        cfg = TimeSformerConfig(
            image_size=hf.get("image_size", 224),
            patch_size=hf.get("patch_size", 16),
            num_frames=hf.get("num_frames", 8),
            in_chans=hf.get("num_channels", 3),
            embed_dim=hf.get("hidden_size", 768),
            depth=hf.get("num_hidden_layers", 12),
            num_heads=hf.get("num_attention_heads", 12),
            mlp_ratio=hf.get("intermediate_size", 3072) / hf.get("hidden_size", 768),
            qkv_bias=hf.get("qkv_bias", True),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-6),
            num_classes=int(head.shape[0]),
            attention_type=attention_type,
        )
    except ValueError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from e
    model = build_from_state(state, cfg, str(weights))
    labels = None
    if "id2label" in hf:
        try:
            id2label = {int(k): str(v) for k, v in hf["id2label"].items()}
        except (AttributeError, TypeError, ValueError) as e:
            raise CheckpointError(f"{cfg_path}: id2label: expected {{index: name}}, got {hf['id2label']!r:.80}") from e
        placeholders = all(v == f"LABEL_{i}" for i, v in id2label.items())  # transformers' default, not labels
        if placeholders:  # LABEL_0..: no names given (make engine then takes the published list by class count)
            labels = None
        elif sorted(id2label) == list(range(cfg.num_classes)):
            labels = [id2label[i] for i in range(cfg.num_classes)]
        elif not placeholders:
            raise CheckpointError(
                f"{cfg_path}: id2label has {len(id2label)} labels (indices "
                f"{min(id2label, default=0)}..{max(id2label, default=-1)}), but the head in "
                f"{weights.name} has {cfg.num_classes} classes"
            )
    return model, CheckpointInfo(str(path), "huggingface", sha256_file(weights), labels=labels)


# --------------------------------------------------------------------------- ours (safetensors + json)


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def save_checkpoint(
    model: TimeSformer,
    path: str | os.PathLike,
    labels: list[str] | None = None,
    preprocess: PreprocessConfig | None = None,
    metadata: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``path`` (safetensors, official key names) and ``<stem>.json`` with config, labels, preprocessing.

    ``dtype`` (e.g. ``torch.float16``) stores the floating-point weights in that type (half the bytes);
    loading always builds a float32 model from them."""
    from safetensors.torch import save

    path = Path(path)
    cfg = model.config
    if labels is not None and len(labels) != cfg.num_classes:
        raise ValueError(f"labels: expected {cfg.num_classes} names, got {len(labels)}")
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating-point torch dtype, got {dtype}")
    state = {
        k: v.detach().cpu().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    header = {"format": OUR_FORMAT, "config": json.dumps(cfg.to_dict())}
    # Serialised in memory and written by our atomic writer: safetensors >= 0.8 writes files itself with mode
    # 0600, which a camera service running as another user could not read.
    write_bytes_atomic(path, save(state, metadata=header))
    side = {
        "format": OUR_FORMAT,
        "weights": path.name,
        "sha256": sha256_file(path),
        "config": cfg.to_dict(),
        "labels": labels,
        "preprocess": preprocess.to_dict() if preprocess else None,
        "metadata": metadata or {},
    }
    write_json_atomic(sidecar_path(path), side)
    return path


def load_ours(path: str | os.PathLike) -> tuple[TimeSformer, CheckpointInfo]:
    """A checkpoint written by :func:`save_checkpoint`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors ({e})") from e
    side_path = sidecar_path(path)
    side: dict[str, Any] = {}
    digest = sha256_file(path)
    if side_path.is_file():
        try:
            side = json.loads(side_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{side_path}: not valid JSON ({e})") from e
        if not isinstance(side, dict):
            raise CheckpointError(f"{side_path}: expected a JSON object, got {type(side).__name__}")
        recorded = side.get("sha256")
        if recorded is not None and not (isinstance(recorded, str) and re.fullmatch(r"[0-9a-f]{64}", recorded)):
            raise CheckpointError(f"{side_path}: sha256: expected 64 lowercase hex digits, got {recorded!r:.80}")
        if recorded is not None and recorded != digest:
            raise CheckpointError(
                f"{path}: sha256 {digest[:16]}... does not match {recorded[:16]}... recorded in "
                f"{side_path.name}: the weights file changed after it was saved (or the sidecar "
                "belongs to another file)"
            )
    try:
        if "config" in side:
            cfg = TimeSformerConfig.from_dict(side["config"])
        elif "config" in header:
            cfg = TimeSformerConfig.from_dict(json.loads(header["config"]))
        else:
            cfg = infer_config(state, str(path))
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{side_path if 'config' in side else path}: config: {e}") from e
    model = build_from_state(state, cfg, str(path))
    check_labels(side.get("labels"), cfg.num_classes, str(side_path))
    try:
        pre = PreprocessConfig.from_dict(side["preprocess"]) if side.get("preprocess") else None
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{side_path}: preprocess: {e}") from e
    return model, CheckpointInfo(
        str(path), "ours", digest, labels=side.get("labels"), preprocess=pre, metadata=side.get("metadata") or {}
    )


# --------------------------------------------------------------------------- dispatch


def load_checkpoint(path: str | os.PathLike, **kwargs: Any) -> TimeSformer:
    """Load any supported checkpoint; the model gets ``.checkpoint`` (:class:`CheckpointInfo`),
    ``.labels`` and ``.preprocess`` attributes."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        model, info = load_hf(path)
    elif path.suffix == ".safetensors":
        model, info = load_ours(path)
    elif path.suffix in (".pyth", ".pth", ".pt", ".bin", ".ckpt"):
        model, info = load_official(path, **kwargs)
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint type {path.suffix!r}; expected a .pyth/.pth (official), "
            ".safetensors (ours) or a Hugging Face directory"
        )
    model.checkpoint = info
    model.labels = info.labels
    model.preprocess = info.preprocess
    return model
