"""What the runtime's parts need from "an engine", as protocols (structural types, nothing to inherit).

``runtime.Engine`` (a local bundle) and ``runtime.remote.RemoteEngine`` (a served one) both satisfy
:class:`EngineAPI`; ``ClipStream`` needs only :class:`ClipEngine`, ``CameraHub`` :class:`BatchEngine`. Depending on
these instead of on ``runtime.engine`` keeps the import graph one-way: ``engine`` imports ``stream``, never back.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from .prediction import Prediction
from .preprocess import PreprocessConfig

__all__ = ["ClipEngine", "BatchEngine", "EngineAPI"]


class ClipEngine(Protocol):
    """Canonical clips in, logits out: what one camera's :class:`runtime.stream.ClipStream` uses."""

    @property
    def preprocess(self) -> PreprocessConfig:
        """How raw frames become the canonical clip (the bundle's preprocessing)."""
        ...

    @property
    def labels(self) -> list[str] | None:
        """Class names, one per logit, or None when the bundle has none."""
        ...

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Canonical batch ``(B, T, 3, H, W)`` -> logits ``(B, classes)`` float32."""
        ...


class BatchEngine(ClipEngine, Protocol):
    """A :class:`ClipEngine` whose batch range is known: what :class:`runtime.hub.CameraHub` batches into."""

    @property
    def clip_shape(self) -> tuple[int, ...]:
        """One canonical clip's shape ``(T, 3, H, W)``."""
        ...

    @property
    def batch_range(self) -> tuple[int, int]:
        """The smallest and largest batch ``infer`` accepts."""
        ...

    def close(self) -> None:
        """Release the engine's resources."""
        ...


class EngineAPI(BatchEngine, Protocol):
    """The whole public surface an application (or a serving replica) uses, local or remote."""

    @property
    def input_dtype(self) -> np.dtype[Any]:
        """The dtype ``infer`` takes (float32 or float16)."""
        ...

    @property
    def precision(self) -> str:
        """The bundle's precision (fp32, fp16 or int8)."""
        ...

    def clip_from_frames(self, frames: np.ndarray | Sequence[np.ndarray], bgr: bool = False) -> np.ndarray:
        """Raw ``(N, H, W, 3)`` uint8 frames -> one canonical clip ``(T, 3, crop, crop)``."""
        ...

    def predict(self, frames: np.ndarray | Sequence[np.ndarray], bgr: bool = False, top_k: int = 5) -> Prediction:
        """Raw frames of one clip -> top-k labels."""
        ...

    def describe(self) -> dict[str, Any]:
        """Where the engine is and how it runs (bundle or URL, precision, backend)."""
        ...
