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

    ``engine_bytes``: the engine file's content, read and verified once by ``runtime.Engine`` (size and
    SHA-256 against the manifest). A backend should load from these bytes (:meth:`engine_data`) rather
    than open ``engine_path`` again, so a file swapped after the check is never used; ``engine_path`` is
    for messages and for engines that need a path (external data files).
    """

    name: str = "base"
    #: whether one instance may be called from several threads at once
    thread_safe: bool = False

    def __init__(
        self,
        engine_path: Path,
        manifest: dict[str, Any],
        device: str = "cpu",
        engine_bytes: bytes | None = None,
        **options: Any,
    ) -> None:
        self.engine_path = Path(engine_path)
        self.manifest = manifest
        self.device = device
        self.engine_bytes = engine_bytes
        self.options = options

    def engine_data(self) -> bytes:
        """The engine file's bytes: the verified copy when the Engine handed one over, else read from the path."""
        if self.engine_bytes is not None:
            return self.engine_bytes
        return self.engine_path.read_bytes()

    @abstractmethod
    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one batch; ``x`` is already validated against the manifest."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device memory, streams and sessions."""

    def describe(self) -> dict[str, Any]:
        """Backend name, version and settings, for logs and benchmark reports."""
        return {"backend": self.name, "device": self.device}


def session_entries(cls: type, d: Any, where: str) -> dict[str, Any]:
    """The manifest's ``session`` object ``d`` as a dict, checked against the dataclass ``cls``'s fields: a JSON
    object with no key that ``cls`` does not know. Raises :class:`runtime.errors.BundleError` naming ``where``."""
    from dataclasses import fields

    from runtime.errors import BundleError

    if not isinstance(d, dict):
        raise BundleError(f"{where}: expected a JSON object, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in set(d) - known)
    if unknown:
        raise BundleError(
            f"{where}: unknown keys {unknown}; expected only {sorted(known)} (a bundle written by "
            "another version of the builder? rebuild it)"
        )
    return dict(d)
