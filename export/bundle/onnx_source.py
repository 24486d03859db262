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
from export.bundle.options import BuildRequest
from export.bundle.target import BuildError

__all__ = ["OnnxReference", "OnnxConfig", "load_onnx_model", "onnx_clip_shape", "ONNX_REFERENCE"]

#: ``provenance.reference`` of an ONNX-file bundle
ONNX_REFERENCE = "ONNX Runtime FP32 of the given ONNX file (no PyTorch model)"
_OURS, _OFFICIAL = "BTCHW", "BCTHW"


class OnnxConfig:
    """What the build and the manifest's ``model_config`` need of a model, read from the ONNX shapes."""

    def __init__(self, num_frames: int, image_size: int, num_classes: int, in_chans: int = 3) -> None:
        self.num_frames, self.image_size, self.num_classes, self.in_chans = num_frames, image_size, num_classes, in_chans

    def to_dict(self) -> dict[str, Any]:
        return {"num_frames": self.num_frames, "image_size": self.image_size, "num_classes": self.num_classes,
                "in_chans": self.in_chans}


class OnnxReference:
    """The FP32 reference of an ONNX-file bundle: ONNX Runtime on the (layout-normalised) FP32 graph, called like the
    PyTorch model (a ``(batch, T, 3, H, W)`` tensor in, logits out)."""

    def __init__(self, path: Path, config: OnnxConfig) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.config = config

    def __call__(self, x: Any) -> Any:
        import torch

        out = self.session.run(["logits"], {"video": np.ascontiguousarray(x.numpy(), np.float32)})[0]
        return torch.from_numpy(np.asarray(out, np.float32))


def _dims(value_info: Any) -> list[int | str]:
    t = value_info.type.tensor_type
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def _layout(model: Any, where: str) -> tuple[str, list[int | str], list[int | str]]:
    """(layout, input dims, output dims) of a one-input, one-output video classifier; BuildError otherwise."""
    import onnx

    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1 or len(g.output) != 1:
        raise BuildError(f"{where}: expected one video input and one logits output, got inputs "
                         f"{[i.name for i in inputs]} and outputs {[o.name for o in g.output]}")
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise BuildError(f"{where}: input {inputs[0].name!r}: expected float32 (an FP32 model), got "
                         f"{onnx.helper.tensor_dtype_to_np_dtype(inputs[0].type.tensor_type.elem_type)}")
    dims, out = _dims(inputs[0]), _dims(g.output[0])
    if len(dims) != 5 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise BuildError(f"{where}: input {inputs[0].name!r}: expected (batch, frames, 3, H, W) (ours) or (batch, 3, "
                         f"frames, H, W) (the official TimeSformer's) with fixed frames and size, got {dims}")
    if len(out) != 2 or not isinstance(out[1], int):
        raise BuildError(f"{where}: output {g.output[0].name!r}: expected (batch, classes), got {out}")
    if dims[2] == 3 and dims[1] != 3:
        layout = _OURS
    elif dims[1] == 3:
        layout = _OFFICIAL  # (B, 3, T, H, W); with T == 3 as well the official layout is assumed (and recorded)
    else:
        raise BuildError(f"{where}: input {inputs[0].name!r}: no axis of 3 channels at position 1 or 2 in {dims}")
    if dims[3] != dims[4]:
        raise BuildError(f"{where}: input {inputs[0].name!r}: expected square frames, got {dims[3]}x{dims[4]}")
    if isinstance(dims[0], int):
        raise BuildError(f"{where}: input {inputs[0].name!r} has a fixed batch of {dims[0]}: export it with a "
                         "dynamic batch axis (torch.onnx.export(..., dynamic_axes or dynamic_shapes))")
    return layout, dims, out


def _rename(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]


def normalise(model: Any, layout: str) -> Any:
    """The graph with input ``video`` ``(batch, T, 3, H, W)`` and output ``logits``: the official layout gets a
    ``Transpose`` (perm 0,2,1,3,4) in front."""
    import onnx

    g = model.graph
    inits = {i.name for i in g.initializer}
    inp = next(i for i in g.input if i.name not in inits)
    old_out = g.output[0].name
    if old_out != "logits":
        _rename(g, old_out, "logits")
        g.output[0].name = "logits"
    if layout == _OURS:
        if inp.name != "video":
            _rename(g, inp.name, "video")
            inp.name = "video"
        return model
    dims = inp.type.tensor_type.shape.dim
    b, c, t, h, w = (dims[i] for i in range(5))
    old = inp.name if inp.name != "video" else "video_bcthw"
    if old != inp.name:
        _rename(g, inp.name, old)
    new = onnx.helper.make_tensor_value_info("video", onnx.TensorProto.FLOAT,
                                             [b.dim_param or "batch", t.dim_value, c.dim_value, h.dim_value,
                                              w.dim_value])
    g.node.insert(0, onnx.helper.make_node("Transpose", ["video"], [old], perm=[0, 2, 1, 3, 4],
                                           name="official_layout_BTCHW_to_BCTHW"))
    g.input.remove(inp)
    g.input.insert(0, new)
    return model


def onnx_clip_shape(path: str | Path) -> list[int]:
    """(frames, 3, H, W) of an ONNX video classifier (either layout), for ``--plan-only``."""
    import onnx

    layout, dims, _ = _layout(onnx.load(str(path), load_external_data=False), f"MODEL={path}")
    t = dims[1] if layout == _OURS else dims[2]
    return [int(t), 3, int(dims[3]), int(dims[4])]


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
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a foreign file
        raise BuildError(f"{where}: cannot read as ONNX ({type(e).__name__}: {e})") from e
    layout, dims, out = _layout(model, where)
    t = int(dims[1] if layout == _OURS else dims[2])
    cfg = OnnxConfig(t, int(dims[3]), int(out[1]))
    meta = _own_metadata(model)
    own_pre = None
    if meta.get("preprocess"):
        try:
            own_pre = PreprocessConfig.from_dict(meta["preprocess"])
        except (TypeError, ValueError):
            own_pre = None
    if own_pre is None and not req.preprocess:
        raise BuildError(f"{where} carries no preprocessing: set PREPROCESS=<preset name | JSON file> (frames, "
                         "sampling, short side, crop, mean, std, channel order the model was trained with)")
    try:
        inputs = resolve_task_inputs(cfg, own_labels=meta.get("labels") if isinstance(meta.get("labels"), list)
                                     else None, own_labels_from=f"{req.model} (its metadata)",
                                     own_preprocess=own_pre, own_preprocess_from=f"{req.model} (its metadata)",
                                     labels=req.labels, preprocess=req.preprocess)
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
    if layout == _OFFICIAL:
        notes.append(f"input layout: the official (batch, 3, frames, H, W) {dims}; a Transpose in front of the graph "
                     "makes the bundle's input (batch, frames, 3, H, W)")
    notes.append("attention form and graph: as in the given ONNX file (ATTENTION does not apply)")
    if calib_note:
        notes.append(calib_note)
    provenance = {"weights": "onnx", **inputs.record(), "notes": notes, "reference": ONNX_REFERENCE}
    source = {"checkpoint": str(path), "checkpoint_sha256": sha, "onnx_input_layout": layout}
    return LoadedModel(OnnxReference(dest, cfg), inputs.labels, inputs.preprocess, source, calib, provenance,
                       onnx=dest)
