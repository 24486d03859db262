"""Version strings of the backends (TensorRT, ONNX Runtime, OpenVINO, CUDA) as comparable tuples."""

from __future__ import annotations

import re

__all__ = ["parse_version", "VersionError"]

_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


class VersionError(ValueError):
    """A version string with no ``major.minor`` at its start."""


def parse_version(version: str | tuple[int, ...]) -> tuple[int, int, int]:
    """``"10.3.0.26"`` -> ``(10, 3, 0)``, ``"11.4"`` -> ``(11, 4, 0)``, ``"2026.4.0-1234"`` -> ``(2026, 4, 0)``;
    a tuple is padded or cut to three numbers. Raises :class:`VersionError` for anything else."""
    if isinstance(version, tuple):
        if not version or not all(isinstance(v, int) and v >= 0 for v in version):
            raise VersionError(f"version {version!r}: expected non-negative integers")
        return tuple((list(version) + [0, 0])[:3])  # type: ignore[return-value]
    m = _VERSION.match(str(version))
    if not m:
        raise VersionError(f"version {version!r} not understood; expected 'major.minor[.patch]', e.g. '10.3.0'")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
