"""TimeSformer configuration and the published presets."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from runtime.preprocess import PreprocessConfig

ATTENTION_TYPES = ("divided_space_time", "joint_space_time", "space_only")

#: type and range of every numeric field (far beyond any published TimeSformer): a checkpoint's config is
#: checked against these before a model is built, so a hostile ``depth: 10**9`` never allocates
LIMITS: dict[str, tuple[type, float, float]] = {
    "image_size": (int, 1, 4096),
    "patch_size": (int, 1, 512),
    "num_frames": (int, 1, 1024),
    "in_chans": (int, 1, 64),
    "embed_dim": (int, 1, 16384),
    "depth": (int, 1, 256),
    "num_heads": (int, 1, 1024),
    "num_classes": (int, 1, 100_000),
    "mlp_ratio": (float, 0.0, 64.0),
    "layer_norm_eps": (float, 0.0, 1.0),
    "drop_rate": (float, 0.0, 1.0),
    "attn_drop_rate": (float, 0.0, 1.0),
    "drop_path_rate": (float, 0.0, 1.0),
}


def check_field(name: str, value: Any, label: str | None = None) -> Any:
    """``value`` when it has the type and range :data:`LIMITS` gives ``name``; else ValueError naming ``label``
    (default ``name``: a Hugging Face config passes its own key), e.g. ``depth: expected an integer in 1..256``.
    Floats are in the open interval above ``lo`` (an epsilon, a ratio) and below ``hi`` for the drop rates."""
    kind, lo, hi = LIMITS[name]
    label = label or name
    text = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"{label}: expected an integer in {lo}..{hi}, got {text}")
        return value
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    upper_open = name.endswith("drop_rate") or name == "drop_path_rate"
    if ok:
        ok = (lo <= value if lo == 0.0 and upper_open else lo < value) and (value < hi if upper_open else value <= hi)
    if not ok:
        lo_text = "[0" if upper_open else f"({lo:g}"
        raise ValueError(f"{label}: expected a number in {lo_text}, {hi:g}{')' if upper_open else ']'}, got {text}")
    return float(value)


@dataclass(frozen=True)
class TimeSformerConfig:
    """Architecture of a TimeSformer (names follow the official ``vit.py``)."""

    image_size: int = 224
    patch_size: int = 16
    num_frames: int = 8
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    num_classes: int = 400
    attention_type: str = "divided_space_time"
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in LIMITS:
            check_field(name, getattr(self, name))
        if not isinstance(self.qkv_bias, bool):
            raise ValueError(f"qkv_bias: expected true or false, got {self.qkv_bias!r:.40}")
        if not isinstance(self.attention_type, str) or self.attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type: expected one of {ATTENTION_TYPES}, got {self.attention_type!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.mlp_hidden < 1:
            raise ValueError(f"mlp_ratio: {self.mlp_ratio} x embed_dim {self.embed_dim} leaves no MLP width")

    @property
    def grid(self) -> int:
        """Patches along one side of a frame."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per frame."""
        return self.grid * self.grid

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TimeSformerConfig":
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object of config fields, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"TimeSformerConfig: unknown keys {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "TimeSformerConfig":
        return replace(self, **changes)


@dataclass(frozen=True)
class Preset:
    """A published model: its architecture and its test-time preprocessing."""

    name: str
    config: TimeSformerConfig
    preprocess: PreprocessConfig
    description: str


def _base(**kw: Any) -> TimeSformerConfig:
    return TimeSformerConfig(**kw)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "base_8x224_k400",
            _base(num_classes=400),
            PreprocessConfig(8, 32, "dense", 224, 224),
            "TimeSformer (divided), 8x32, 224px, Kinetics-400",
        ),
        Preset(
            "base_8x224_k600",
            _base(num_classes=600),
            PreprocessConfig(8, 32, "dense", 224, 224),
            "TimeSformer (divided), 8x32, 224px, Kinetics-600",
        ),
        # The official SSv2 loader decodes JPEGs with cv2.imdecode and never converts them
        # (DATA.REVERSE_INPUT_CHANNEL defaults to False): these checkpoints were trained on BGR frames.
        Preset(
            "base_8x224_ssv2",
            _base(num_classes=174),
            PreprocessConfig(8, 1, "uniform", 224, 224, channel_order="BGR"),
            "TimeSformer (divided), 8 frames uniform, 224px, Something-Something-v2 (BGR input)",
        ),
        Preset(
            "hr_16x448_k400",
            _base(image_size=448, num_frames=16, num_classes=400),
            PreprocessConfig(16, 16, "dense", 448, 448),
            "TimeSformer-HR, 16x16, 448px, Kinetics-400",
        ),
        Preset(
            "l_96x224_k400",
            _base(num_frames=96, num_classes=400),
            PreprocessConfig(96, 4, "dense", 224, 224),
            "TimeSformer-L, 96x4, 224px, Kinetics-400",
        ),
        Preset(
            "base_8x224_k400_joint",
            _base(attention_type="joint_space_time"),
            PreprocessConfig(8, 32, "dense", 224, 224),
            "Joint space-time attention baseline",
        ),
        Preset(
            "base_8x224_k400_space",
            _base(attention_type="space_only"),
            PreprocessConfig(8, 32, "dense", 224, 224),
            "Space-only attention baseline",
        ),
        Preset(
            "tiny_8x64",
            TimeSformerConfig(
                image_size=64, patch_size=8, num_frames=8, embed_dim=192, depth=4, num_heads=3, num_classes=8
            ),
            PreprocessConfig(8, 2, "dense", 64, 64),
            "Tiny divided model for tests",
        ),
        Preset(
            "motion_8x64",
            TimeSformerConfig(
                image_size=64, patch_size=16, num_frames=8, embed_dim=192, depth=4, num_heads=3, num_classes=8
            ),
            PreprocessConfig(8, 2, "dense", 64, 64),
            "The committed motion model (make train-motion), 4x4 patches",
        ),
    ]
}
# Short aliases users type on the command line.
PRESETS["base"] = PRESETS["base_8x224_k400"]
PRESETS["hr"] = PRESETS["hr_16x448_k400"]
PRESETS["large"] = PRESETS["l_96x224_k400"]


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None
