"""The ``session`` entry of an ONNX Runtime bundle's manifest: one definition, written by the builder, read by the
backend and validated by ``runtime.manifest`` (:func:`validate_session`).

Fields (all optional; unknown keys are refused)::

    {"providers": ["CPUExecutionProvider"],  # what the bundle was optimised and checked with (informational:
                                             # the Engine's device picks the providers at load time)
     "graph_optimization_level": "all",      # disable_all | basic | extended | all: applied at load time
     "intra_op_num_threads": 0,              # 0: ONNX Runtime's default (one per core)
     "inter_op_num_threads": 1,
     "preoptimized": "extended"}             # the level already applied to model.onnx by the builder, or null
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from runtime.errors import BundleError

from .base import session_entries

__all__ = [
    "GRAPH_OPTIMIZATION_LEVELS",
    "MAX_THREADS",
    "ORT_LEVEL_NAMES",
    "OnnxRuntimeSession",
    "cpu_session_options",
    "validate_session",
]

GRAPH_OPTIMIZATION_LEVELS = ("disable_all", "basic", "extended", "all")
#: each level's name in ``onnxruntime.GraphOptimizationLevel``
ORT_LEVEL_NAMES = dict(
    zip(GRAPH_OPTIMIZATION_LEVELS, ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"))
)
#: a sanity bound: more threads than this is a corrupt value, not a machine
MAX_THREADS = 4096


@dataclass(frozen=True)
class OnnxRuntimeSession:
    """How the runtime opens the bundle's ONNX model in ONNX Runtime."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    graph_optimization_level: str = "all"
    intra_op_num_threads: int = 0
    inter_op_num_threads: int = 1
    preoptimized: str | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str = "session") -> "OnnxRuntimeSession":
        """Parse and validate; raises :class:`runtime.errors.BundleError` naming ``where.<field>``."""
        d = session_entries(cls, d, where)
        kw = {f.name: d.get(f.name, f.default) for f in fields(cls)}
        providers = kw["providers"]
        if (
            not isinstance(providers, (list, tuple))
            or not providers
            or not all(isinstance(p, str) and p.endswith("ExecutionProvider") for p in providers)
        ):
            raise BundleError(
                f"{where}.providers: expected a non-empty list of ONNX Runtime provider names "
                f"(e.g. ['CPUExecutionProvider']), got {providers!r}"
            )
        kw["providers"] = tuple(providers)
        for name in ("graph_optimization_level", "preoptimized"):
            v = kw[name]
            if not (v is None and name == "preoptimized") and (
                not isinstance(v, str) or v not in GRAPH_OPTIMIZATION_LEVELS
            ):
                raise BundleError(
                    f"{where}.{name}: expected one of {GRAPH_OPTIMIZATION_LEVELS}"
                    f"{' or null' if name == 'preoptimized' else ''}, got {v!r}"
                )
        for name in ("intra_op_num_threads", "inter_op_num_threads"):
            v = kw[name]
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_THREADS:
                raise BundleError(
                    f"{where}.{name}: expected an integer in 0..{MAX_THREADS} (0: the default), got {v!r}"
                )
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """The JSON written into the manifest."""
        d = asdict(self)
        d["providers"] = list(self.providers)
        return d


def validate_session(d: dict[str, Any], where: str = "session") -> dict[str, Any]:
    """Validate an ONNX Runtime manifest ``session``; returns it normalised (every field present)."""
    return OnnxRuntimeSession.from_dict(d, where).to_dict()


def cpu_session_options(threads: int | None = None, level: str | None = None, spinning: bool = True) -> Any:
    """Quiet ONNX Runtime ``SessionOptions`` whose integer kernels compute exactly on this CPU: ``session.
    x64quantprecision=1`` where MLAS's U8S8 pair sums saturate (x86 without VNNI; no effect on float graphs).

    For every session outside the runtime's own that may run an INT8 graph (build checks, benchmarks, the fake
    TensorRT, tests), so that their numbers do not depend on the CPU (issue 25). ``threads`` sets the intra-op
    threads (one inter-op thread); ``level`` is one of :data:`GRAPH_OPTIMIZATION_LEVELS` (ONNX Runtime's default
    when None); ``spinning=False`` stops idle workers from burning CPU time."""
    import onnxruntime as ort

    from ..cpu_isa import ort_int8_config

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if level is not None:
        if level not in GRAPH_OPTIMIZATION_LEVELS:
            raise ValueError(f"level: expected one of {GRAPH_OPTIMIZATION_LEVELS}, got {level!r}")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVEL_NAMES[level])
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for k, v in ort_int8_config("int8").items():
        so.add_session_config_entry(k, v)
    return so
