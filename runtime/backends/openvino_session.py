"""The ``session`` entry of an OpenVINO bundle's manifest: one definition, written by the builder, read by the backend.

``export/bundle/build.py`` writes ``OpenVINOSession(...).to_dict()``; ``OpenVINOBackend`` reads
``OpenVINOSession.from_dict(manifest["session"])``; ``runtime.manifest`` calls :func:`validate_session` for
``backend == "openvino"``. Unknown keys are refused, so a builder and a backend cannot silently disagree.

Fields (all optional in the JSON; the defaults are an exact FP32 CPU engine)::

    {"device": "CPU",                       # OpenVINO device name
     "inference_precision": ["f32"],        # INFERENCE_PRECISION_HINT candidates, best first: the runtime takes
                                            # the first this CPU has (f32 always; bf16 needs "BF16" and f16 "FP16"
                                            # in OPTIMIZATION_CAPABILITIES). FP16 bundles: ["bf16", "f16", "f32"].
     "performance_hint": "LATENCY",         # LATENCY (one clip as fast as possible) | THROUGHPUT
     "num_threads": 0,                      # INFERENCE_NUM_THREADS; 0: OpenVINO's default (all cores)
     "model_cache": true}                   # keep the compiled model in a user cache folder (fast second start)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from runtime.errors import BundleError

from .base import session_entries

__all__ = [
    "INFERENCE_PRECISIONS",
    "PERFORMANCE_HINTS",
    "CAPABILITY",
    "OpenVINOSession",
    "choose_precision",
    "validate_session",
]

#: the INFERENCE_PRECISION_HINT values a bundle may ask for
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
#: the OPTIMIZATION_CAPABILITIES entry a CPU needs for each hint (f32 needs none)
CAPABILITY = {"f32": None, "bf16": "BF16", "f16": "FP16"}
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")


@dataclass(frozen=True)
class OpenVINOSession:
    """How an OpenVINO bundle should be compiled at load time."""

    device: str = "CPU"
    inference_precision: tuple[str, ...] = ("f32",)
    performance_hint: str = "LATENCY"
    num_threads: int = 0
    model_cache: bool = True

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "session") -> "OpenVINOSession":
        """Parse and validate; raises :class:`runtime.errors.BundleError` naming ``where.<field>``, expected, got."""
        d = session_entries(cls, d, where)
        kw = dict(d)
        hints = kw.get("inference_precision", ("f32",))
        if isinstance(hints, str):
            hints = [hints]
        if not isinstance(hints, (list, tuple)):
            raise BundleError(f"{where}.inference_precision: expected a list of {INFERENCE_PRECISIONS}, got {hints!r}")
        kw["inference_precision"] = tuple(hints)
        obj = object.__new__(cls)
        for f in fields(cls):
            object.__setattr__(obj, f.name, kw.get(f.name, f.default))
        _check(obj, where)
        return obj

    def to_dict(self) -> dict[str, Any]:
        """The JSON written into the manifest."""
        d = asdict(self)
        d["inference_precision"] = list(self.inference_precision)
        return d


def _check(s: OpenVINOSession, where: str = "session") -> None:
    if not isinstance(s.device, str) or not s.device:
        raise BundleError(f"{where}.device: expected an OpenVINO device name such as 'CPU', got {s.device!r}")
    if not s.inference_precision:
        raise BundleError(f"{where}.inference_precision: expected at least one of {INFERENCE_PRECISIONS}, got none")
    for h in s.inference_precision:
        if h not in INFERENCE_PRECISIONS:
            raise BundleError(f"{where}.inference_precision: {h!r} is not one of {INFERENCE_PRECISIONS}")
    if s.performance_hint not in PERFORMANCE_HINTS:
        raise BundleError(f"{where}.performance_hint: expected one of {PERFORMANCE_HINTS}, got {s.performance_hint!r}")
    n = s.num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise BundleError(f"{where}.num_threads: expected an integer >= 0 (0: OpenVINO's default), got {n!r}")
    if not isinstance(s.model_cache, bool):
        raise BundleError(f"{where}.model_cache: expected true or false, got {s.model_cache!r}")


def choose_precision(session: OpenVINOSession, capabilities: list[str] | tuple[str, ...]) -> str:
    """The first hint of ``session.inference_precision`` this device has (f32 always runs)."""
    for h in session.inference_precision:
        need = CAPABILITY[h]
        if need is None or need in capabilities:
            return h
    return "f32"


def validate_session(d: dict[str, Any], where: str = "session") -> dict[str, Any]:
    """Validate an OpenVINO manifest ``session``; returns it normalised (every field present)."""
    return OpenVINOSession.from_dict(d, where).to_dict()
