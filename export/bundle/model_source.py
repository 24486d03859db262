"""Step 1 of ``make engine``: the model, its labels and preprocessing, and no silent stand-in (issue 26).

- A preset is an architecture without weights: refused unless ``RANDOM_WEIGHTS=1``, and then the bundle says so in
  its manifest (``provenance.weights: random``), its labels and every prediction's metadata.
- Labels and preprocessing come from ``LABELS=``/``PREPROCESS=`` or are inferred (:mod:`models.task_inputs`); what
  was inferred, and from where, is printed once and recorded in ``provenance``.
- INT8 of a model that was not trained on a synthetic task needs ``CALIB=`` (the user's footage): calibrating it on
  synthetic moving shapes is asked for explicitly (``CALIB=synthetic``) and recorded.
- An ``.onnx`` file is a model too (:mod:`export.bundle.onnx_source`): its FP32 reference is ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from runtime.options import Precision

from export.bundle.options import BuildRequest
from export.bundle.target import BuildError

__all__ = ["LoadedModel", "load_model", "check_calibration", "precision_fallback"]


@dataclass(frozen=True)
class LoadedModel:
    """Step 1's result: the reference model and what the bundle takes from it."""

    net: Any  # models.TimeSformer, or export.bundle.onnx_source.OnnxReference
    labels: list[str]
    pre: Any  # runtime.preprocess.PreprocessConfig
    source: dict[str, Any]
    calib: str | None  # the calibration (and parity) clips: CALIB, or the model's own synthetic task
    #: runtime.manifest.Provenance's fields, less the notes the build adds later
    provenance: dict[str, Any] = field(default_factory=dict)
    #: a ready FP32 ONNX (MODEL=model.onnx) instead of our export
    onnx: Path | None = None


def load_model(req: BuildRequest, log: Callable[[str], None]) -> LoadedModel:
    """The model ``req.model`` names with its labels and preprocessing; :class:`BuildError` (one line, naming the
    option to set) for a preset without ``RANDOM_WEIGHTS=1``, a bad ``LABELS``/``PREPROCESS``, or INT8 without
    ``CALIB`` for a model not trained on a synthetic task."""
    from models import PRESETS, SourceError, load_source, model_task
    from models.task_inputs import TaskInputError, resolve_task_inputs

    random = req.model in PRESETS
    if random and not req.random_weights:
        raise BuildError(
            f"MODEL={req.model} is a preset: an architecture without trained weights, so its bundle "
            "would predict noise. Pass a checkpoint (.pyth, Hugging Face folder, .safetensors or "
            ".onnx), or set RANDOM_WEIGHTS=1 (--random-weights) to build from random weights anyway"
        )
    try:
        net, own_labels, own_pre, source = load_source(req.model, req.seed)
    except SourceError as e:
        raise BuildError(str(e)) from e
    info = getattr(net, "checkpoint", None)
    kind = "preset" if random else info.format
    # a preset's published preprocessing, our sidecar's; not load_source's stand-in default for other checkpoints
    own = own_pre if kind == "preset" else getattr(net, "preprocess", None) if kind == "ours" else None
    try:
        inputs = resolve_task_inputs(
            net.config,
            own_labels=own_labels,
            own_labels_from=_own_labels_from(kind, req.model),
            own_preprocess=own,
            own_preprocess_from=f"the preset {req.model}" if kind == "preset" else f"{req.model} (its sidecar JSON)",
            hf_preprocessor=Path(req.model) / "preprocessor_config.json" if kind == "huggingface" else None,
            labels=req.labels,
            preprocess=req.preprocess if req.preprocess else None,
            random_weights=random,
        )
    except TaskInputError as e:
        raise BuildError(str(e)) from e
    log(inputs.line())
    task = model_task(net)
    calib, calib_note = check_calibration(req, trained_on=task, random_weights=random)
    provenance = {"weights": "random" if random else "checkpoint", **inputs.record()}
    if calib_note:
        provenance["notes"] = [*provenance["notes"], calib_note]
    return LoadedModel(net, inputs.labels, inputs.preprocess, source, calib, provenance)


def _own_labels_from(kind: str, model: str) -> str:
    return {"ours": f"{model} (its sidecar JSON)", "huggingface": f"{model}/config.json id2label"}.get(kind, "")


def check_calibration(
    req: BuildRequest, trained_on: str | None, random_weights: bool = False
) -> tuple[str | None, str | None]:
    """The calibration (and parity) clips of the build, and the provenance note when they are an explicit stand-in.

    INT8 calibrates on ``CALIB``; without it only a model trained on a synthetic task (it calibrates on that task)
    or a random-weights preset builds. ``CALIB=synthetic`` for another model is accepted as asked for and noted."""
    from calibration.clips.calibset import synthetic_spec

    calib = req.calib or synthetic_spec(trained_on)
    if req.precision == Precision.INT8 and not req.calib and trained_on is None and not random_weights:
        raise BuildError(
            f"PRECISION=int8 needs CALIB=<folder of your video or saved .npy/.npz clips>: {req.model} was "
            "not trained on the synthetic task, and INT8 calibrated on synthetic clips loses accuracy on "
            "real footage (min cosine 0.82 measured); CALIB=synthetic calibrates on them anyway "
            "(recorded in the manifest)"
        )
    note = None
    if req.precision == Precision.INT8 and req.calib and req.calib.startswith("synthetic") and trained_on is None:
        note = (
            f"INT8 calibrated on synthetic clips ({req.calib}, asked for explicitly), not on footage of the "
            "model's task"
        )
    return calib, note


def precision_fallback(req: BuildRequest, backend: str) -> str | None:
    """A CPU ``fp16`` bundle on a CPU without FP16/BF16 arithmetic (OpenVINO would run it in f32): BuildError naming
    ``ALLOW_PRECISION_FALLBACK``, or, with it, the note recorded in the manifest and the build summary."""
    if req.precision != Precision.FP16 or backend != "openvino":
        return None
    from runtime.backends.openvino_backend import import_openvino
    from runtime.cpu_isa import cpu_isa, openvino_capabilities

    caps = openvino_capabilities(list(import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")))
    if "BF16" in caps or "FP16" in caps:
        return None
    why = (
        f"this CPU ({cpu_isa().describe()}; OpenVINO capabilities {', '.join(caps) or 'none'}) has no FP16/BF16 "
        "arithmetic, so OpenVINO runs the fp16 bundle in f32"
    )
    if not req.allow_precision_fallback:
        raise BuildError(
            f"PRECISION=fp16: {why}. Build PRECISION=fp32 here, build on the target CPU, or set "
            "ALLOW_PRECISION_FALLBACK=1 (--allow-precision-fallback) to publish it with the fallback "
            "recorded"
        )
    return f"precision fallback: fp16 asked for, runs f32 on the build CPU: {why} (ALLOW_PRECISION_FALLBACK=1)"
