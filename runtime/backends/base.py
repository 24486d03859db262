"""The interface every runtime backend implements (numpy in, numpy out)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np


class Backend(ABC):
    """One loaded engine on one device.

    ``infer`` takes the model input exactly as the manifest's ``input`` describes it (name, dtype,
    shape with the batch inside the bundle's range) and returns the logits as float32 numpy.
    """

    name: str = "base"
    #: whether one instance may be called from several threads at once
    thread_safe: bool = False

    def __init__(self, engine_path: Path, manifest: dict[str, Any], device: str = "cpu", **options: Any) -> None:
        self.engine_path = Path(engine_path)
        self.manifest = manifest
        self.device = device
        self.options = options

    @abstractmethod
    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one batch; ``x`` is already validated against the manifest."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device memory, streams and sessions."""

    def describe(self) -> dict[str, Any]:
        """Backend name, version and settings, for logs and benchmark reports."""
        return {"backend": self.name, "device": self.device}
