"""Split every fused q/k/v projection of an ONNX model into three projections: exact, a pure re-layout.

TimeSformer's attention (like the official code) computes q, k and v with one ``Linear(d, 3d)``, which exports as
``MatMul -> Add(bias) -> Split(3)``. OpenVINO's CPU plugin runs that ``Split`` with a reference kernel, and for a
quantised model it cannot fold the per-channel dequantisation scale of the projection into the matmul across the
``Split`` (three separate ``Multiply`` nodes run instead). Three ``MatMul -> Add`` projections avoid both: measured on
base 8x224, batch 1, 2 threads here, the INT8 model ran 8 % faster and the FP16 bundle (bf16) 8 % faster, while ONNX
Runtime FP32 was unchanged within noise (``python -m export.bench.cpu`` records the bundles it times).

The rewrite slices the weight columns (and, for a Q/DQ weight, the int8 columns with their per-channel scales and
zero points) and the bias: every value the model computes is the same, the Q/DQ scales of the activations are not
touched, so an INT8 model stays the file it was calibrated as, laid out differently. Patterns it does not recognise
are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["split_qkv_projections"]


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _split_sizes(split: Any, inits: dict[str, Any], width: int) -> list[int] | None:
    """The output sizes of ``split`` (input, attribute or equal parts), or None if they cannot be known."""
    from onnx import numpy_helper

    n = len(split.output)
    if len(split.input) > 1 and split.input[1]:
        if split.input[1] not in inits:
            return None
        sizes = [int(s) for s in numpy_helper.to_array(inits[split.input[1]]).ravel()]
    elif _attr(split, "split") is not None:
        sizes = [int(s) for s in _attr(split, "split")]
    else:
        if width % n:
            return None
        sizes = [width // n] * n
    return sizes if len(sizes) == n and sum(sizes) == width and all(s > 0 for s in sizes) else None


class _Names:
    """Fresh names: never one an initializer, a node output or a node already has."""

    def __init__(self, g: Any) -> None:
        self.taken = {i.name for i in g.initializer} | {o for n in g.node for o in n.output} | {n.name for n in g.node}

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


@dataclass
class _Projection:
    """A fused ``MatMul(x, W) -> Add(b) -> Split`` found in the graph, with the arrays the rewrite slices."""

    add: Any
    matmul: Any
    dq: Any  # the weight's DequantizeLinear, or None for a float weight
    w: np.ndarray
    bias: np.ndarray
    sizes: list[int]
    scale: np.ndarray | None = None
    zero: np.ndarray | None = None
    per_channel: bool = False


class _Graph:
    """Who produces and who consumes each tensor, initializers by name, and known tensor ranks."""

    def __init__(self, g: Any) -> None:
        self.inits = {i.name: i for i in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.ranks = {
            vi.name: len(vi.type.tensor_type.shape.dim)
            for vi in list(g.value_info) + list(g.output)
            if vi.type.tensor_type.HasField("shape")
        }

    def single_use(self, tensor: str) -> bool:
        return len(self.consumers.get(tensor, [])) == 1


def _match(split: Any, gi: _Graph) -> _Projection | None:
    """The projection feeding ``split`` when it is one this pass can cut, else None."""
    from onnx import numpy_helper

    if split.op_type != "Split" or split.domain not in ("", "ai.onnx"):
        return None
    inits, producer = gi.inits, gi.producer
    add = producer.get(split.input[0])
    if add is None or add.op_type != "Add" or not gi.single_use(add.output[0]):
        return None
    mm_in = [i for i in add.input if i in producer and producer[i].op_type == "MatMul"]
    bias_in = [i for i in add.input if i in inits]
    if len(mm_in) != 1 or len(bias_in) != 1:
        return None
    matmul = producer[mm_in[0]]
    if not gi.single_use(matmul.output[0]):
        return None
    w_name = matmul.input[1]
    dq = producer.get(w_name)
    if dq is not None:  # a Q/DQ weight: DequantizeLinear(int8 W, scale[, zero point])
        if (
            dq.op_type != "DequantizeLinear"
            or dq.input[0] not in inits
            or dq.input[1] not in inits
            or (len(dq.input) > 2 and dq.input[2] and dq.input[2] not in inits)
            or not gi.single_use(dq.output[0])
        ):
            return None
        w = numpy_helper.to_array(inits[dq.input[0]])
    elif w_name in inits:
        w = numpy_helper.to_array(inits[w_name])
    else:
        return None
    bias = numpy_helper.to_array(inits[bias_in[0]])
    if w.ndim != 2 or bias.shape != (w.shape[1],):
        return None
    axis = int(_attr(split, "axis", 0))
    rank = gi.ranks.get(split.input[0])
    if not (axis == -1 or (rank is not None and axis == rank - 1)):
        return None
    sizes = _split_sizes(split, inits, w.shape[1])
    if sizes is None:
        return None
    found = _Projection(add, matmul, dq, w, bias, sizes)
    return found if dq is None or _match_dq(found, inits) else None


def _match_dq(p: _Projection, inits: dict[str, Any]) -> bool:
    """Fill in the Q/DQ weight's scale and zero point; False when their layout is not one this pass cuts."""
    from onnx import numpy_helper

    dq = p.dq
    scale = numpy_helper.to_array(inits[dq.input[1]])
    zero = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] else None
    if _attr(dq, "block_size", 0):  # blocked quantisation (opset 21): not a layout this pass cuts
        return False
    dq_axis = int(_attr(dq, "axis", 1))
    per_channel = scale.ndim == 1 and scale.size == p.w.shape[1] and dq_axis in (1, -1)
    if not (per_channel or scale.size == 1) or (zero is not None and zero.shape != scale.shape):
        return False
    p.scale, p.zero, p.per_channel = scale, zero, per_channel
    return True


def _cut(split: Any, p: _Projection, names: _Names) -> tuple[list[Any], list[Any]]:
    """The nodes and initializers of one ``[DequantizeLinear ->] MatMul -> Add`` per output of ``split``."""
    import onnx
    from onnx import numpy_helper

    fresh = names.fresh
    new_nodes: list[Any] = []
    new_inits: list[Any] = []
    start = 0
    for part, (out, size) in enumerate(zip(split.output, p.sizes)):
        cols = slice(start, start + size)
        start += size
        base = f"{p.matmul.name or 'qkv'}_part{part}"
        w_part = fresh(base + "_weight")
        b_part = fresh(base + "_bias")
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(p.w[:, cols]), w_part))
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(p.bias[cols]), b_part))
        weight_out = w_part
        if p.dq is not None:
            assert p.scale is not None  # _match_dq filled it in
            dq_in = [w_part]
            s_part = fresh(base + "_scale")
            new_inits.append(
                numpy_helper.from_array(
                    np.ascontiguousarray(p.scale[cols]) if p.per_channel else p.scale.copy(), s_part
                )
            )
            dq_in.append(s_part)
            if p.zero is not None:
                z_part = fresh(base + "_zero_point")
                new_inits.append(
                    numpy_helper.from_array(
                        np.ascontiguousarray(p.zero[cols]) if p.per_channel else p.zero.copy(), z_part
                    )
                )
                dq_in.append(z_part)
            weight_out = fresh(base + "_weight_dq")
            new_nodes.append(
                onnx.helper.make_node("DequantizeLinear", dq_in, [weight_out], name=fresh(base + "_dq"), axis=1)
            )
        mm_out = fresh(base + "_matmul")
        new_nodes.append(onnx.helper.make_node("MatMul", [p.matmul.input[0], weight_out], [mm_out], name=fresh(base)))
        new_nodes.append(onnx.helper.make_node("Add", [mm_out, b_part], [out], name=fresh(base + "_add")))
    return new_nodes, new_inits


def _replace_nodes(g: Any, replaced: dict[int, list[Any]], removed: set[int]) -> None:
    """Put the new projections in their Splits' places, drop the old nodes and what nothing uses any more."""
    # The new projections take the Split's place: its input (x) is produced before the old MatMul, so order holds.
    nodes = []
    for n in g.node:
        if id(n) in replaced:
            nodes.extend(replaced[id(n)])
        elif id(n) not in removed:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    present = used | {o for n in g.node for o in n.output}
    infos = [vi for vi in g.value_info if vi.name in present]
    del g.value_info[:]
    g.value_info.extend(infos)


def split_qkv_projections(model: Any) -> int:
    """Rewrite ``MatMul(x, W) -> Add(b) -> Split(last axis)`` into one ``MatMul -> Add`` per part, in place.

    ``W`` is an initializer, or ``DequantizeLinear`` of an int8 initializer quantised per output channel (axis 1)
    or per tensor. Returns how many projections were split. The graph stays topologically sorted.
    """
    g = model.graph
    gi = _Graph(g)
    names = _Names(g)
    count = 0
    replaced: dict[int, list[Any]] = {}  # id(Split node) -> the nodes that take its place
    removed: set[int] = set()
    for split in g.node:
        p = _match(split, gi)
        if p is None:
            continue
        new_nodes, new_inits = _cut(split, p, names)
        g.initializer.extend(new_inits)
        replaced[id(split)] = new_nodes
        removed.update({id(p.add), id(p.matmul)} | ({id(p.dq)} if p.dq is not None else set()))
        count += 1
    if not count:
        return 0
    _replace_nodes(g, replaced, removed)
    return count
