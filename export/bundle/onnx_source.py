"""``MODEL=model.onnx``: a bundle from an existing ONNX file, with ONNX Runtime as its FP32 reference (issue 26).

The file's one video input is checked: ours, ``(batch, frames, 3, H, W)``, is taken as it is; the official
TimeSformer's ``(batch, 3, frames, H, W)`` is accepted and recorded, and a ``Transpose`` in front of the graph
makes the bundle's input ours (the runtime's preprocessing is the same for every bundle). The input is renamed
``video`` and the output ``logits``; the batch axis must be dynamic. Labels and preprocessing come from
``LABELS=``/``PREPROCESS=`` or from this project's export metadata; a file without either preprocessing is refused
(``PREPROCESS=``). With no PyTorch model, parity compares the engine against ONNX Runtime running the given file in
FP32 (``provenance.reference`` says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.files import sha256_file, write_bytes_atomic

from export.bundle.model_source import LoadedModel, check_calibration
from export.bundle.onnx_layout import OFFICIAL, OURS, OnnxLayoutError, normalise, read_layout
from export.bundle.options import BuildRequest
from export.bundle.target import BuildError

__all__ = ["OnnxReference", "OnnxConfig", "load_onnx_model", "reference_from_file", "ONNX_REFERENCE"]

#: ``provenance.reference`` of an ONNX-file bundle
ONNX_REFERENCE = "ONNX Runtime FP32 of the given ONNX file (no PyTorch model)"


class OnnxConfig:
    """What the build and the manifest's ``model_config`` need of a model, read from the ONNX shapes."""

    def __init__(self, num_frames: int, image_size: int, num_classes: int, in_chans: int = 3) -> None:
        self.num_frames, self.image_size = num_frames, image_size
        self.num_classes, self.in_chans = num_classes, in_chans

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_frames": self.num_frames,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
        }


class OnnxReference:
    """The FP32 reference of an ONNX-file bundle: ONNX Runtime on the (layout-normalised) FP32 graph, called like the
    PyTorch model (a ``(batch, T, 3, H, W)`` tensor in, logits out)."""

    def __init__(self, model: Path | bytes, config: OnnxConfig) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(
            model if isinstance(model, bytes) else str(model), so, providers=["CPUExecutionProvider"]
        )
        self.config = config

    def __call__(self, x: Any) -> Any:
        import torch

        out = self.session.run(["logits"], {"video": np.ascontiguousarray(x.numpy(), np.float32)})[0]
        return torch.from_numpy(np.asarray(out, np.float32))


def _own_metadata(model: Any) -> dict[str, Any]:
    """This project's export metadata (labels, preprocessing), when the file is one of ours."""
    import json

    out = {}
    for p in model.metadata_props:
        if p.key in ("labels", "preprocess"):
            try:
                out[p.key] = json.loads(p.value)
            except json.JSONDecodeError:
                pass
    return out


def load_onnx_model(req: BuildRequest, log: Callable[[str], None]) -> LoadedModel:
    """``MODEL=model.onnx`` -> the normalised FP32 ONNX (in the cache), its ONNX Runtime reference, labels and
    preprocessing (``LABELS=``/``PREPROCESS=`` or the file's own metadata) and the calibration clips."""
    import onnx

    from models.task_inputs import TaskInputError, resolve_task_inputs
    from runtime.preprocess import PreprocessConfig

    path = Path(req.model)
    where = f"MODEL={req.model}"
    if not path.is_file():
        raise BuildError(f"{where}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf raises several types for a foreign file
        raise BuildError(f"{where}: cannot read as ONNX ({type(e).__name__}: {e})") from e
    try:
        layout, dims, out = read_layout(model, where)
    except OnnxLayoutError as e:
        raise BuildError(str(e)) from e
    t = int(dims[1] if layout == OURS else dims[2])
    cfg = OnnxConfig(t, int(dims[3]), int(out[1]))
    meta = _own_metadata(model)
    own_pre = None
    if meta.get("preprocess"):
        try:
            own_pre = PreprocessConfig.from_dict(meta["preprocess"])
        except (TypeError, ValueError):
            own_pre = None
    if own_pre is None and not req.preprocess:
        raise BuildError(
            f"{where} carries no preprocessing: set PREPROCESS=<preset name | JSON file> (frames, "
            "sampling, short side, crop, mean, std, channel order the model was trained with)"
        )
    try:
        inputs = resolve_task_inputs(
            cfg,
            own_labels=meta.get("labels") if isinstance(meta.get("labels"), list) else None,
            own_labels_from=f"{req.model} (its metadata)",
            own_preprocess=own_pre,
            own_preprocess_from=f"{req.model} (its metadata)",
            labels=req.labels,
            preprocess=req.preprocess,
        )
    except TaskInputError as e:
        raise BuildError(str(e)) from e
    log(inputs.line())
    sha = sha256_file(path)
    dest = Path(req.cache_dir) / f"onnx-input-{sha[:16]}-{layout}.onnx"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.is_file():
        write_bytes_atomic(dest, normalise(model, layout).SerializeToString())
    calib, calib_note = check_calibration(req, trained_on=None)
    notes = [*inputs.notes]
    if layout == OFFICIAL:
        notes.append(
            f"input layout: the official (batch, 3, frames, H, W) {dims}; a Transpose in front of the graph "
            "makes the bundle's input (batch, frames, 3, H, W)"
        )
    notes.append("attention form and graph: as in the given ONNX file (ATTENTION does not apply)")
    if calib_note:
        notes.append(calib_note)
    provenance = {"weights": "onnx", **inputs.record(), "notes": notes, "reference": ONNX_REFERENCE}
    source = {"checkpoint": str(path), "checkpoint_sha256": sha, "onnx_input_layout": layout}
    return LoadedModel(OnnxReference(dest, cfg), inputs.labels, inputs.preprocess, source, calib, provenance, onnx=dest)


def reference_from_file(path: str | Path) -> OnnxReference:
    """The ONNX Runtime FP32 reference of the ONNX file a bundle was built from (``make parity`` on such a bundle):
    the file read again and normalised in memory, as the build did."""
    import onnx

    model = onnx.load(str(path))
    try:
        layout, dims, out = read_layout(model, f"MODEL={path}")
    except OnnxLayoutError as e:
        raise ValueError(str(e)) from e
    t = int(dims[1] if layout == OURS else dims[2])
    return OnnxReference(normalise(model, layout).SerializeToString(), OnnxConfig(t, int(dims[3]), int(out[1])))
