"""``export.onnx.qkv_split``: fused q/k/v projections split into three, exactly, in FP32 and Q/DQ INT8 models, and
patterns it must not touch left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.onnx.qkv_split import split_qkv_projections

PRE_SHAPE = (2, 8, 3, 64, 64)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # no graph optimisation: ONNX Runtime fuses Q/DQ differently around a Split, which would hide what the graph says
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _qdq_scales(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Scale of every activation QuantizeLinear, by the tensor it quantises."""
    inits = {i.name: i for i in model.graph.initializer}
    return {
        n.input[0]: numpy_helper.to_array(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"
    }


def _fused_qkv_splits(model: onnx.ModelProto) -> int:
    producer = {o: n for n in model.graph.node for o in n.output}
    return sum(
        1
        for n in model.graph.node
        if n.op_type == "Split" and producer.get(n.input[0]) is not None and producer[n.input[0]].op_type == "Add"
    )


@pytest.fixture(scope="module")
def motion_onnx(tmp_path_factory, motion_model_path):
    """The motion model's FP32 ONNX (decomposed attention, as TensorRT and OpenVINO INT8 get it) and its Q/DQ INT8
    files in both forms."""
    from export.onnx.export import export_onnx
    from export.bundle.precision_step import precision_onnx
    from models import load_source

    d = tmp_path_factory.mktemp("qkv_split")
    net, _, pre, _ = load_source(str(motion_model_path))
    fp32 = export_onnx(net, d / "fp32.onnx", attention="decomposed", preprocess=pre, verbose=False)
    out = {"fp32": fp32}
    for form in ("qdq-fp16", "qdq-fp32"):
        out[form] = precision_onnx(
            fp32,
            "int8",
            "tensorrt",
            "synthetic:31",
            pre,
            8,
            "max",
            d / "cache",
            0,
            form=form,
            validate_clips=0,
            progress=False,
        )[0]
    return out


@pytest.mark.parametrize("which", ["fp32", "qdq-fp16", "qdq-fp32"])
def test_split_is_exact_and_keeps_the_quantisation(motion_onnx, which):
    model = onnx.load(str(motion_onnx[which]))
    before = onnx.load(str(motion_onnx[which]))
    depth = 4  # the motion model: 4 blocks, each with temporal and spatial attention
    assert _fused_qkv_splits(model) == 2 * depth
    assert split_qkv_projections(model) == 2 * depth
    onnx.checker.check_model(model)
    assert _fused_qkv_splits(model) == 0
    assert (
        sum(n.op_type == "MatMul" for n in model.graph.node)
        == sum(n.op_type == "MatMul" for n in before.graph.node) + 2 * 2 * depth
    )
    # the activation Q/DQ (what calibration decided) is untouched: same tensors, same scales
    got, want = _qdq_scales(model), _qdq_scales(before)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    # every weight byte is still there, only re-cut: the total size of the initializers is the same
    size = lambda m: sum(numpy_helper.to_array(i).nbytes for i in m.graph.initializer)  # noqa: E731
    assert abs(size(model) - size(before)) <= 2 * depth * 3 * 8  # at most a few per-part scalars repeated
    x = np.random.default_rng(0).standard_normal(PRE_SHAPE).astype(np.float32)
    a, b = _run(before, {"video": x})[0], _run(model, {"video": x})[0]
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(a).max()), np.abs(a - b).max()
    assert split_qkv_projections(model) == 0  # idempotent: nothing left to split


def _graph(
    split_axis: int = -1, extra_matmul_use: bool = False, qdq: bool = False, sizes: list[int] | None = None
) -> onnx.ModelProto:
    """x (2, 5, 4) -> MatMul(W 4x6) -> Add(b) -> Split(3) -> three outputs; options break the pattern."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    inits = [numpy_helper.from_array(b, "b")]
    nodes = []
    if qdq:
        scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
        wq = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        inits += [
            numpy_helper.from_array(wq, "wq"),
            numpy_helper.from_array(scale, "ws"),
            numpy_helper.from_array(np.zeros(6, np.int8), "wz"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    nodes += [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y"])]
    parts = sizes or [2, 2, 2]
    out_shape = {-1: lambda p: [2, 5, p], 0: lambda p: [2 * p // 2, 5, 6], 1: lambda p: [2, p, 6]}[split_axis]
    outputs = [helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, out_shape(p)) for i, p in enumerate(parts)]
    if sizes is not None:
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        nodes.append(helper.make_node("Split", ["y", "sizes"], ["o0", "o1", "o2"], axis=split_axis))
    else:
        nodes.append(helper.make_node("Split", ["y"], ["o0", "o1", "o2"], axis=split_axis, num_outputs=3))
    if extra_matmul_use:
        nodes.append(helper.make_node("Relu", ["mm"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 5, 6]))
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 4])], outputs, inits
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("qdq", [False, True])
@pytest.mark.parametrize("sizes", [None, [1, 2, 3]])
def test_small_graphs_split_exactly(qdq, sizes):
    model = _graph(qdq=qdq, sizes=sizes)
    x = np.random.default_rng(2).standard_normal((2, 5, 4)).astype(np.float32)
    want = _run(model, {"x": x})
    assert split_qkv_projections(model) == 1
    onnx.checker.check_model(model)
    assert not any(n.op_type == "Split" for n in model.graph.node)
    got = _run(model, {"x": x})
    for a, b in zip(want, got):
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-6


@pytest.mark.parametrize("case", ["axis_0", "middle_axis", "matmul_used_twice"])
def test_patterns_it_must_not_touch(case):
    model = {
        "axis_0": lambda: _graph(split_axis=0),
        "middle_axis": lambda: _graph(split_axis=1),
        "matmul_used_twice": lambda: _graph(extra_matmul_use=True),
    }[case]()
    before = model.SerializeToString()
    assert split_qkv_projections(model) == 0
    assert model.SerializeToString() == before
