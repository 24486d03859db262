"""The ``session`` entry of a TensorRT bundle's manifest: one definition, written by the builder, read by the backend.

``export/bundle/build.py`` writes ``TensorRTSession(...).to_dict()``; ``TensorRTBackend`` reads
``TensorRTSession.from_dict(manifest["session"])``; ``runtime.manifest`` calls :func:`validate_session` for
``backend == "tensorrt"``. Unknown keys are refused, so a builder and a backend can never silently disagree
on the layout (the old builder nested everything under ``options``/``build``; the backend read the top level).

Fields (all optional in the JSON; the defaults are a plain GPU engine)::

    {"strongly_typed": true,             # network built strongly typed (TensorRT 11: always)
     "builder_flags": ["FP16", ...],     # BuilderFlag names set at build time (informational)
     "version_compatible": false,        # plan built with VERSION_COMPATIBLE: the runtime must allow host code
     "hardware_compatibility": "none",   # none | ampere_plus | same_compute_capability
     "dla_core": null,                   # DLA core the plan was built for (the runtime's DLA_core), or null
     "cuda_graph": false}                # capture execute_async_v3 in a CUDA graph per batch size by default
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from runtime.errors import BundleError

from .base import session_entries

__all__ = ["HARDWARE_COMPATIBILITY_LEVELS", "TensorRTSession", "validate_session"]

HARDWARE_COMPATIBILITY_LEVELS = ("none", "ampere_plus", "same_compute_capability")
#: BuilderFlag names a bundle may record (TensorRT 10/11)
KNOWN_BUILDER_FLAGS = (
    "FP16",
    "BF16",
    "INT8",
    "FP8",
    "OBEY_PRECISION_CONSTRAINTS",
    "PREFER_PRECISION_CONSTRAINTS",
    "GPU_FALLBACK",
    "VERSION_COMPATIBLE",
    "EXCLUDE_LEAN_RUNTIME",
    "TF32",
    "REFIT",
    "STRIP_PLAN",
    "SPARSE_WEIGHTS",
)


@dataclass(frozen=True)
class TensorRTSession:
    """How a TensorRT plan was built and how the runtime should load it."""

    strongly_typed: bool = True
    builder_flags: tuple[str, ...] = ()
    version_compatible: bool = False
    hardware_compatibility: str = "none"
    dla_core: int | None = None
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "session") -> "TensorRTSession":
        """Parse and validate; raises :class:`runtime.errors.BundleError` naming ``where.<field>``, expected, got."""
        d = session_entries(cls, d, where)
        kw = dict(d)
        flags = kw.get("builder_flags", ())
        if not isinstance(flags, (list, tuple)):
            raise BundleError(f"{where}.builder_flags: expected a list of BuilderFlag names, got {flags!r}")
        kw["builder_flags"] = tuple(flags)
        return _build(cls, kw, where)

    def to_dict(self) -> dict[str, Any]:
        """The JSON written into the manifest."""
        d = asdict(self)
        d["builder_flags"] = list(self.builder_flags)
        return d


def _build(cls: type[TensorRTSession], kw: dict[str, Any], where: str) -> TensorRTSession:
    """Construct without ``__post_init__`` so that the errors name ``where`` (e.g. the manifest path)."""
    obj = object.__new__(cls)
    for f in fields(cls):
        object.__setattr__(obj, f.name, kw.get(f.name, f.default))
    _check(obj, where)
    return obj


def _check(s: TensorRTSession, where: str = "session") -> None:
    for name in ("strongly_typed", "version_compatible", "cuda_graph"):
        v = getattr(s, name)
        if not isinstance(v, bool):
            raise BundleError(f"{where}.{name}: expected true or false, got {v!r}")
    for flag in s.builder_flags:
        if flag not in KNOWN_BUILDER_FLAGS:
            raise BundleError(
                f"{where}.builder_flags: {flag!r} is not a TensorRT BuilderFlag; expected names from "
                f"{KNOWN_BUILDER_FLAGS}"
            )
    if s.hardware_compatibility not in HARDWARE_COMPATIBILITY_LEVELS:
        raise BundleError(
            f"{where}.hardware_compatibility: expected one of {HARDWARE_COMPATIBILITY_LEVELS}, got "
            f"{s.hardware_compatibility!r}"
        )
    core = s.dla_core
    if core is not None and (isinstance(core, bool) or not isinstance(core, int) or core < 0):
        raise BundleError(f"{where}.dla_core: expected null or an integer >= 0, got {core!r}")
    if core is not None and s.hardware_compatibility != "none":
        raise BundleError(
            f"{where}: dla_core {core} with hardware_compatibility {s.hardware_compatibility!r}; "
            "hardware compatibility applies to GPU engines only"
        )
    if core is not None and s.cuda_graph:
        raise BundleError(f"{where}: cuda_graph is true with dla_core {core}; CUDA graphs capture GPU work only")


def validate_session(d: dict[str, Any], where: str = "session") -> dict[str, Any]:
    """Validate a TensorRT manifest ``session``; returns it normalised (every field present)."""
    return TensorRTSession.from_dict(d, where).to_dict()
