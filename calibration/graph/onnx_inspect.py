"""What a TensorRT build depends on, read from an ONNX file with ``onnx`` alone (no TensorRT, no GPU).

:func:`inspect_onnx` summarises inputs/outputs, the float types used, Q/DQ nodes (and the type of their
scales, which decides the type between the INT8 matmuls in a strongly typed build), ONNX ``Attention``
nodes and ONNX Runtime contrib ops; :func:`check_precision` says whether that ONNX can build as a given
precision. It lives in calibration/ because ``calibration.precision.int8`` checks its Q/DQ output with it;
``export.tensorrt.plan`` builds the TensorRT plan on top of it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.files import sha256_file

__all__ = ["OnnxInspectError", "LOW_FLOAT_TYPES", "inspect_onnx", "check_precision"]

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_ONNX_DOMAINS = ("", "ai.onnx")
LOW_FLOAT_TYPES = ("float16", "bfloat16")
_LOW_FLOAT_TYPES = LOW_FLOAT_TYPES


class OnnxInspectError(ValueError):
    """An ONNX file that is missing, unreadable, or cannot build as asked; the message names file and node."""


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        name = onnx.TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"onnx-type-{elem_type}"
    return {"float": "float32", "double": "float64"}.get(name, name)


def _is_float(dtype_name: str) -> bool:
    return dtype_name.startswith(("float", "bfloat"))


def _iter_graphs(graph: Any) -> Iterator[Any]:
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _iter_graphs(g)


def _node_label(node: Any, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def _tensor_values(tensor: Any, base_dir: Path) -> Any:
    import onnx
    from onnx import numpy_helper

    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        from onnx.external_data_helper import load_external_data_for_tensor

        tensor = onnx.TensorProto.FromString(tensor.SerializeToString())
        load_external_data_for_tensor(tensor, str(base_dir))
    return numpy_helper.to_array(tensor)


def _load_model(path: Path) -> Any:
    import onnx

    if not path.is_file():
        raise OnnxInspectError(f"{path}: ONNX file not found")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise OnnxInspectError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e


def _external_files(graph: Any) -> list[str]:
    import onnx

    return sorted(
        {
            kv.value
            for t in graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL
            for kv in t.external_data
            if kv.key == "location"
        }
    )


def _float_initializers(graph: Any) -> tuple[Counter[str], dict[str, str]]:
    """Count of float initializers per dtype, and one example name per dtype."""
    float_inits: Counter[str] = Counter()
    float_init_examples: dict[str, str] = {}
    for t in graph.initializer:
        name = _dtype_name(t.data_type)
        if _is_float(name):
            float_inits[name] += 1
            float_init_examples.setdefault(name, t.name)
    return float_inits, float_init_examples


def _io_entry(vi: Any) -> dict[str, Any]:
    tt = vi.type.tensor_type
    dims: list[int | str] = [
        int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?") for d in tt.shape.dim
    ]
    return {"name": vi.name, "dtype": _dtype_name(tt.elem_type), "shape": dims}


@dataclass
class _NodeScan:
    """What one pass over every node (subgraphs included) finds; ``typed`` maps float dtype -> an example "where"."""

    init_by_name: dict[str, Any]
    base_dir: Path
    typed: dict[str, str] = field(default_factory=dict)
    ops: Counter[str] = field(default_factory=Counter)
    qdq: list[str] = field(default_factory=list)
    qdq_scale_types: Counter[str] = field(default_factory=Counter)  # DQ scale dtypes: the type between INT8 matmuls
    attention: list[str] = field(default_factory=list)
    custom_attention: list[str] = field(default_factory=list)
    contrib: list[str] = field(default_factory=list)
    layernorm: list[str] = field(default_factory=list)
    zero_point_problems: list[str] = field(default_factory=list)
    constants: dict[str, Any] = field(default_factory=dict)

    def note(self, dtype_name: str, where: str) -> None:
        if _is_float(dtype_name):
            self.typed.setdefault(dtype_name, where)

    def walk(self, graph: Any) -> None:
        idx = 0
        for g in _iter_graphs(graph):
            for node in g.node:
                idx += 1
                self.visit(node, _node_label(node, idx))

    def visit(self, node: Any, label: str) -> None:
        import onnx

        self.ops[node.op_type] += 1
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    for out in node.output:
                        self.constants[out] = attr.t
                    self.note(_dtype_name(attr.t.data_type), f"Constant node '{label}'")
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to":
                    self.note(_dtype_name(attr.i), f"Cast node '{label}'")
        if node.domain == "com.microsoft":
            self.contrib.append(f"'{label}' ({node.op_type})")
        if node.op_type in _QDQ_OPS:
            self._visit_qdq(node, label)
        if node.op_type == "Attention":
            if node.domain in _ONNX_DOMAINS:
                self.attention.append(label)
            elif node.domain != "com.microsoft":
                self.custom_attention.append(f"'{label}' (domain {node.domain!r})")
        if node.op_type == "LayerNormalization" and len(node.input) > 1:
            scale = self.init_by_name.get(node.input[1])
            if scale is not None and _dtype_name(scale.data_type) in _LOW_FLOAT_TYPES:
                self.layernorm.append(label)

    def _visit_qdq(self, node: Any, label: str) -> None:
        self.qdq.append(label)
        if node.op_type == "DequantizeLinear" and len(node.input) > 1:
            scale = self.init_by_name.get(node.input[1], self.constants.get(node.input[1]))
            if scale is not None:
                self.qdq_scale_types[_dtype_name(scale.data_type)] += 1
        if node.domain not in _ONNX_DOMAINS:
            self.zero_point_problems.append(
                f"node '{label}' is {node.domain}.{node.op_type}; TensorRT reads only the ONNX-domain {node.op_type}"
            )
        if len(node.input) > 2 and node.input[2]:
            problem = self._zero_point_problem(label, node.input[2])
            if problem:
                self.zero_point_problems.append(problem)

    def _zero_point_problem(self, label: str, zp_name: str) -> str | None:
        zp = self.init_by_name.get(zp_name, self.constants.get(zp_name))
        if zp is None:
            return None
        dt = _dtype_name(zp.data_type)
        if dt == "uint8":
            return (
                f"node '{label}': zero point '{zp_name}' is uint8 (asymmetric); expected int8 "
                "with value 0 (TensorRT supports symmetric signed quantization only)"
            )
        values = _tensor_values(zp, self.base_dir)
        if values.size and bool((values != 0).any()):
            return (
                f"node '{label}': zero point '{zp_name}' ({dt}) has non-zero values "
                f"(max |zp| = {int(abs(values.astype('int64')).max())}); expected all 0 "
                "(TensorRT supports symmetric quantization only)"
            )
        return None


def _detected_precision(qdq: list[str], typed: dict[str, str]) -> str:
    has_low = {dt: where for dt, where in typed.items() if dt in _LOW_FLOAT_TYPES}
    if qdq:
        return "int8"
    if "float16" in has_low:
        return "fp16"
    if has_low:
        return "bf16"
    return "fp32"


def _int8_form(qdq: list[str], qdq_scale_types: Counter[str]) -> str | None:
    if not qdq:
        return None
    if qdq_scale_types.get("float16") and not qdq_scale_types.get("float32"):
        return "fp16"
    return "fp32" if not qdq_scale_types.get("float16") else "mixed"


def inspect_onnx(onnx_path: str | os.PathLike) -> dict[str, Any]:
    """Summarise what a TensorRT build depends on: I/O, float types, Q/DQ, attention and contrib ops.

    Weights are not loaded (external data stays on disk); only Q/DQ zero points are read.
    """
    path = Path(onnx_path)
    model = _load_model(path)
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    float_inits, float_init_examples = _float_initializers(graph)

    # every float type mentioned anywhere: I/O, value_info, Cast targets, Constant values
    scan = _NodeScan(init_by_name={t.name: t for t in graph.initializer}, base_dir=path.parent)
    for dt, example in float_init_examples.items():
        scan.note(dt, f"initializer '{example}'")
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.HasField("tensor_type"):
            scan.note(_dtype_name(vi.type.tensor_type.elem_type), f"tensor '{vi.name}'")
    scan.walk(graph)

    return {
        "path": str(path),
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "external_data": _external_files(graph),
        "opsets": {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        "inputs": [_io_entry(vi) for vi in graph.input if vi.name not in init_names],
        "outputs": [_io_entry(vi) for vi in graph.output],
        "float_initializers": dict(float_inits),
        "float_initializer_examples": float_init_examples,
        "float_types": scan.typed,
        "precision_detected": _detected_precision(scan.qdq, scan.typed),
        "qdq_nodes": scan.qdq,
        "qdq_problems": scan.zero_point_problems,
        "qdq_scale_types": dict(scan.qdq_scale_types),
        "int8_form": _int8_form(scan.qdq, scan.qdq_scale_types),
        "attention_nodes": scan.attention,
        "custom_attention_nodes": scan.custom_attention,
        "contrib_nodes": scan.contrib,
        "fp16_layernorm_nodes": scan.layernorm,
        "op_counts": dict(scan.ops),
    }


def check_precision(info: dict[str, Any], precision: str, strongly_typed: bool) -> None:
    """Raise :class:`OnnxInspectError` when the ONNX ``info`` describes cannot build as ``precision``: strongly
    typed, the ONNX carries the precision (FP16 tensors, Q/DQ); weakly typed FP16 wants the FP32 ONNX."""
    path = info["path"]
    qdq = info["qdq_nodes"]
    low = {dt: where for dt, where in info["float_types"].items() if dt in _LOW_FLOAT_TYPES}
    inits = info["float_initializers"]
    mode = "strongly typed" if strongly_typed else "weakly typed"
    if info["qdq_problems"]:
        raise OnnxInspectError(
            f"{path}: Q/DQ nodes TensorRT cannot build:\n  - " + "\n  - ".join(info["qdq_problems"][:10])
        )
    if precision == "fp32":
        if qdq:
            raise OnnxInspectError(
                f"{path}: precision 'fp32' requested, but the ONNX has {len(qdq)} QuantizeLinear/DequantizeLinear "
                f"nodes (e.g. '{qdq[0]}'); expected none. Build it with precision='int8', or use the FP32 ONNX."
            )
        if low:
            dt, where = next(iter(low.items()))
            raise OnnxInspectError(
                f"{path}: precision 'fp32' requested, but {where} is {dt}; expected float32 throughout "
                f"(float initializers: {inits}). Build it with precision='fp16', or use the FP32 ONNX."
            )
    elif precision == "fp16":
        if qdq:
            raise OnnxInspectError(
                f"{path}: precision 'fp16' requested, but the ONNX has {len(qdq)} QuantizeLinear/DequantizeLinear "
                f"nodes (e.g. '{qdq[0]}'); that is an INT8 model: build it with precision='int8'."
            )
        if strongly_typed and "float16" not in low:
            example = info["float_initializer_examples"].get("float32", "?")
            raise OnnxInspectError(
                f"{path}: precision 'fp16' requested with a strongly typed build, so the ONNX itself must be FP16: "
                f"expected float16 initializers/tensors, found only {sorted(info['float_types']) or ['none']} "
                f"(float initializers: {inits}, e.g. '{example}'). Export the FP16 ONNX, or on TensorRT 10 build "
                "the FP32 ONNX with strongly_typed=False."
            )
        if not strongly_typed and low:
            dt, where = next(iter(low.items()))
            raise OnnxInspectError(
                f"{path}: precision 'fp16' requested with a weakly typed build (BuilderFlag.FP16), which expects "
                f"the FP32 ONNX, but {where} is {dt}. Build an FP16 ONNX strongly typed (strongly_typed=True), "
                "or pass the FP32 ONNX."
            )
    elif precision == "int8":
        if not qdq:
            raise OnnxInspectError(
                f"{path}: precision 'int8' requested ({mode}), but the ONNX has no QuantizeLinear/DequantizeLinear "
                f"nodes; expected a Q/DQ (explicitly quantized) ONNX from the calibration step. TensorRT INT8 "
                f"calibrators are not used (removed in TensorRT 11). Float types found: {sorted(info['float_types'])}."
            )
