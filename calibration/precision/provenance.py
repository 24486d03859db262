"""What a precision number was measured on and calibrated with, for reports (issue 25): the CPU's INT8 instruction
set (INT8 results differ between x86 with and without VNNI) and the kind of calibration clips (the synthetic
generator is not camera footage)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.cpu_isa import cpu_isa

__all__ = ["calibration_source", "measured_on", "provenance_line"]


def calibration_source(spec: str | None) -> dict[str, Any]:
    """``{"spec", "kind", "describe"}`` for a calibration spec (``synthetic[-TASK][:SEED]``, a video file or folder,
    or saved tensors); ``kind`` is ``synthetic``, ``video`` or ``tensors``."""
    from calibration.clips.calibset import TENSOR_EXTS, VIDEO_EXTS

    s = spec or "synthetic"
    if s.startswith("synthetic"):
        return {"spec": s, "kind": "synthetic", "describe": f"synthetic generator `{s}` (not camera footage)"}
    p = Path(s)
    if p.is_dir():
        videos = sorted(f.name for f in p.iterdir() if f.suffix.lower() in VIDEO_EXTS)
        tensors = [f for f in p.iterdir() if f.suffix.lower() in TENSOR_EXTS]
        if videos:
            return {
                "spec": s,
                "kind": "video",
                "files": videos,
                "describe": f"{len(videos)} video file(s) in `{s}` ({', '.join(videos[:4])}"
                f"{', ...' if len(videos) > 4 else ''})",
            }
        return {"spec": s, "kind": "tensors", "describe": f"{len(tensors)} tensor file(s) in `{s}`"}
    kind = "tensors" if p.suffix.lower() in TENSOR_EXTS else "video"
    return {"spec": s, "kind": kind, "describe": f"{kind} file `{s}`"}


def measured_on() -> dict[str, Any]:
    """This CPU's INT8 instruction set (:func:`runtime.cpu_isa.cpu_isa`), as a report records it."""
    return cpu_isa().to_dict()


def provenance_line(isa: dict[str, Any], calib: dict[str, Any]) -> str:
    """One markdown line: ``INT8 measured on <ISA>; calibration source: <what>.``"""
    return f"INT8 measured on: {isa.get('describe', '?')}; calibration source: {calib.get('describe', '?')}."
