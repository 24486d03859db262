"""The input layout of an ONNX video classifier, checked and made ours (``MODEL=model.onnx``, issue 26).

Ours is ``(batch, frames, 3, H, W)``; the official TimeSformer's ``(batch, 3, frames, H, W)`` is accepted and gets a
``Transpose`` in front of the graph (:func:`normalise`), so the bundle's input is always ours, named ``video``, and its
output ``logits``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["OURS", "OFFICIAL", "OnnxLayoutError", "read_layout", "normalise", "onnx_clip_shape"]

OURS, OFFICIAL = "BTCHW", "BCTHW"
_OURS, _OFFICIAL = OURS, OFFICIAL


class OnnxLayoutError(ValueError):
    """An ONNX file whose input or output is not a video classifier's; the message names the tensor."""


def _dims(value_info: Any) -> list[int | str]:
    t = value_info.type.tensor_type
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def read_layout(model: Any, where: str) -> tuple[str, list[int | str], list[int | str]]:
    """(layout, input dims, output dims) of a one-input, one-output video classifier, else OnnxLayoutError."""
    import onnx

    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1 or len(g.output) != 1:
        raise OnnxLayoutError(
            f"{where}: expected one video input and one logits output, got inputs "
            f"{[i.name for i in inputs]} and outputs {[o.name for o in g.output]}"
        )
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise OnnxLayoutError(
            f"{where}: input {inputs[0].name!r}: expected float32 (an FP32 model), got "
            f"{onnx.helper.tensor_dtype_to_np_dtype(inputs[0].type.tensor_type.elem_type)}"
        )
    dims, out = _dims(inputs[0]), _dims(g.output[0])
    if len(dims) != 5 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise OnnxLayoutError(
            f"{where}: input {inputs[0].name!r}: expected (batch, frames, 3, H, W) (ours) or "
            f"(batch, 3, frames, H, W) (the official TimeSformer's) with fixed frames and size, got "
            f"{dims}"
        )
    if len(out) != 2 or not isinstance(out[1], int):
        raise OnnxLayoutError(f"{where}: output {g.output[0].name!r}: expected (batch, classes), got {out}")
    if dims[2] == 3 and dims[1] != 3:
        layout = _OURS
    elif dims[1] == 3:
        layout = _OFFICIAL  # (B, 3, T, H, W); with T == 3 as well the official layout is assumed (and recorded)
    else:
        raise OnnxLayoutError(f"{where}: input {inputs[0].name!r}: no axis of 3 channels at position 1 or 2 in {dims}")
    if dims[3] != dims[4]:
        raise OnnxLayoutError(f"{where}: input {inputs[0].name!r}: expected square frames, got {dims[3]}x{dims[4]}")
    if isinstance(dims[0], int):
        raise OnnxLayoutError(
            f"{where}: input {inputs[0].name!r} has a fixed batch of {dims[0]}: export it with a "
            "dynamic batch axis (torch.onnx.export(..., dynamic_axes or dynamic_shapes))"
        )
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
    new = onnx.helper.make_tensor_value_info(
        "video", onnx.TensorProto.FLOAT, [b.dim_param or "batch", t.dim_value, c.dim_value, h.dim_value, w.dim_value]
    )
    g.node.insert(
        0,
        onnx.helper.make_node(
            "Transpose", ["video"], [old], perm=[0, 2, 1, 3, 4], name="official_layout_BTCHW_to_BCTHW"
        ),
    )
    g.input.remove(inp)
    g.input.insert(0, new)
    return model


def onnx_clip_shape(path: str | Path) -> list[int]:
    """(frames, 3, H, W) of an ONNX video classifier (either layout), for ``--plan-only``."""
    import onnx

    layout, dims, _ = read_layout(onnx.load(str(path), load_external_data=False), f"MODEL={path}")
    t = dims[1] if layout == _OURS else dims[2]
    return [int(t), 3, int(dims[3]), int(dims[4])]
