"""An ``(N, C, T, H, W)`` input for a ``(B, T, 3, H, W)`` model: one Transpose at the graph input.

DeepStream's sequence preprocessing (``libnvds_custom_sequence_preprocess.so``, nvdspreprocess) hands the model
its clips as NCDHW, channels before frames, the layout of 3-D CNNs and of the official TimeSformer; our bundles
take the ``transformers`` layout ``(B, T, 3, H, W)``. :func:`ncthw_input` renames the model's input, adds a new
input of the transposed shape and a ``Transpose(perm=[0, 2, 1, 3, 4])`` that feeds the old name: the rest of
the graph, its weights, Q/DQ nodes and outputs are untouched (the logits are exactly the same numbers, one
transposed copy of the clip earlier). TensorRT folds such an input transpose into its first reformat.
"""

from __future__ import annotations

import copy
import json
from typing import Any

__all__ = ["LAYOUTS", "ncthw_input", "input_layout"]

LAYOUTS = ("BTCHW", "NCTHW")
#: the metadata key (``export.onnx.export``'s ``metadata_props``) and the value recorded for the new layout
_PERM = [0, 2, 1, 3, 4]


def input_layout(model: Any) -> str:
    """``"NCTHW"`` when ``model``'s only input is fed by the Transpose :func:`ncthw_input` adds, else ``"BTCHW"``."""
    if len(model.graph.input) != 1:
        return "BTCHW"
    name = model.graph.input[0].name
    for node in model.graph.node:
        if node.op_type == "Transpose" and list(node.input) == [name] and node.name == "input_layout_ncthw":
            return "NCTHW"
    return "BTCHW"


def ncthw_input(model: Any) -> Any:
    """A copy of ``model`` (an ``onnx.ModelProto`` whose one input is ``(B, T, 3, H, W)``) taking ``(B, 3, T, H, W)``
    under the same input name; ``ValueError`` naming the input when it is not a 5-D tensor with 3 channels at axis 2.
    The ``input`` entry of ``metadata_props`` (when present) records ``"layout": "NCTHW"`` and the new shape."""
    import onnx
    from onnx import helper

    if len(model.graph.input) != 1:
        raise ValueError(f"ncthw_input: expected a model with one input, got {[i.name for i in model.graph.input]}")
    if input_layout(model) == "NCTHW":
        raise ValueError(f"ncthw_input: input {model.graph.input[0].name!r} is already NCTHW")
    out = copy.deepcopy(model)
    old = out.graph.input[0]
    dims = old.type.tensor_type.shape.dim
    if len(dims) != 5 or dims[2].dim_value != 3:
        shape = [d.dim_value or d.dim_param or "?" for d in dims]
        raise ValueError(f"ncthw_input: input {old.name!r}: expected (batch, frames, 3, H, W), got {shape}")
    name = old.name
    inner = f"{name}_btchw"
    for node in out.graph.node:  # every consumer of the input now reads the transposed tensor
        for i, x in enumerate(node.input):
            if x == name:
                node.input[i] = inner
    new = onnx.ValueInfoProto()
    new.CopyFrom(old)
    new_dims = new.type.tensor_type.shape.dim
    for i, src in enumerate(_PERM):
        new_dims[i].CopyFrom(dims[src])
    out.graph.input.remove(old)
    out.graph.input.insert(0, new)
    out.graph.node.insert(0, helper.make_node("Transpose", [name], [inner], name="input_layout_ncthw", perm=_PERM))
    for prop in out.metadata_props:
        if prop.key == "input":
            try:
                meta = json.loads(prop.value)
            except json.JSONDecodeError:
                continue
            if isinstance(meta, dict):
                meta["layout"] = "NCTHW"
                if isinstance(meta.get("shape"), list) and len(meta["shape"]) == 5:
                    meta["shape"] = [meta["shape"][i] for i in _PERM]
                prop.value = json.dumps(meta)
    onnx.checker.check_model(out)
    return out
