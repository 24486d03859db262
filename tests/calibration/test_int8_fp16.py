"""The guards of the TensorRT INT8+FP16 Q/DQ form (issue 23, point 7): Q/DQ scales that FP16 cannot hold, and the
FP16 overflow/error analysis of the float rest, on tiny real Q/DQ models run in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.precision.int8 import to_tensorrt_fp16_form
from calibration.precision.int8_fp16 import FP16_MIN_NORMAL, fp32_rest_nodes, guard_fp16_scales

FEAT, OUT = 12, 4


def _qdq_model(path: Path, w_scale_factor: float = 1.0, gain: float = 1.0) -> Path:
    """x -> Q/DQ -> MatMul(DQ(w)) -> Add(bias) -> Mul(gain) -> Add(1) -> Mul(1/gain) -> y; the weight's scale is
    ``max|w| / 127`` with ``w`` multiplied by ``w_scale_factor`` (tiny factors make scales FP16 cannot hold)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((FEAT, OUT)) * w_scale_factor).astype(np.float32)
    s_w = (np.abs(w).max(axis=0) / 127).astype(np.float32)  # per output channel (axis 1)
    inits = [
        numpy_helper.from_array(np.clip(np.round(w / s_w), -127, 127).astype(np.int8), "w_q"),
        numpy_helper.from_array(s_w, "w_scale"),
        numpy_helper.from_array(np.zeros(OUT, np.int8), "w_zp"),
        numpy_helper.from_array(np.array(4.0 / 127, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
        numpy_helper.from_array(np.full(OUT, 0.5, np.float32), "bias"),
        numpy_helper.from_array(np.array(gain, np.float32), "gain"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(1.0 / gain, np.float32), "inv_gain"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="x_q"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xdq"], name="x_dq"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=1, name="w_dq"),
        helper.make_node("MatMul", ["xdq", "w"], ["h"], name="fc"),
        helper.make_node("Add", ["h", "bias"], ["hb"], name="fc_bias"),
        helper.make_node("Mul", ["hb", "gain"], ["big"], name="gain_mul"),
        helper.make_node("Add", ["big", "one"], ["big1"], name="plus_one"),
        helper.make_node("Mul", ["big1", "inv_gain"], ["y"], name="scale_down"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEAT])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", OUT])
    graph = helper.make_graph(nodes, "tiny_qdq_fp16", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    from runtime.backends.onnxruntime_session import cpu_session_options

    so = cpu_session_options()  # exact INT8 kernels on every CPU
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _scales(path: Path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))
    names = {n.input[1] for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer if t.name in names}


def test_scales_fp16_cannot_hold_are_raised_and_the_weights_requantized(tmp_path):
    src = _qdq_model(tmp_path / "tiny.onnx", w_scale_factor=1e-7)  # weight scales ~1e-9: FP16 rounds them to 0
    assert (np.float16(_scales(src)["w_scale"]) == 0).all()
    model = onnx.load(str(src))
    raised = guard_fp16_scales(model)
    assert [r["scale"] for r in raised] == ["w_scale"] and raised[0]["entries_raised"] == OUT
    assert raised[0]["fp16_would_be"].startswith("0 (refused")
    s = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert (s["w_scale"] == np.float32(FP16_MIN_NORMAL)).all() and s["x_scale"] == np.float32(4.0 / 127)
    assert (np.abs(s["w_q"]) <= 1).all()  # weights below one new step round to 0 or +-1: as small as before

    out = tmp_path / "fp16.onnx"
    out.write_bytes(src.read_bytes())
    info = to_tensorrt_fp16_form(out)
    scales = _scales(out)
    assert all((v > 0).all() for v in scales.values()), scales  # the parser's "scale must be positive"
    assert scales["w_scale"].dtype == np.float16  # the INT8+FP16 form: the DQ outputs FP16
    assert info["fp16_scales_raised"][0]["scale"] == "w_scale"
    x = np.random.default_rng(1).standard_normal((3, FEAT)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(src, x), atol=1e-2)  # the weights were ~0 and still are


def test_subnormal_scale_is_raised_and_normal_ones_are_kept(tmp_path):
    src = _qdq_model(tmp_path / "tiny.onnx", w_scale_factor=0.004)  # scales ~6e-5: subnormal in FP16 for some
    before = _scales(src)["w_scale"]
    model = onnx.load(str(src))
    raised = guard_fp16_scales(model)
    after = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}["w_scale"]
    low = before < FP16_MIN_NORMAL
    assert low.any() and raised[0]["fp16_would_be"] == "subnormal"
    assert (after[~low] == before[~low]).all() and (after[low] == np.float32(FP16_MIN_NORMAL)).all()
    assert not guard_fp16_scales(model)  # idempotent


def test_float_rest_is_analysed_and_an_overflowing_node_stays_fp32(tmp_path):
    src = _qdq_model(tmp_path / "tiny.onnx", gain=3e4)  # |gain * h| reaches FP16's range: the Mul must stay FP32
    clips = np.random.default_rng(2).standard_normal((4, FEAT)).astype(np.float32) * 3
    keep, int8_over = fp32_rest_nodes(src, clips)
    assert [k["node"] for k in keep] == ["gain_mul", "plus_one", "scale_down"] and keep[0]["reason"] == "overflow"
    assert int8_over == []  # the INT8 matmul's own output is small
    out = tmp_path / "fp16.onnx"
    out.write_bytes(src.read_bytes())
    info = to_tensorrt_fp16_form(out, lambda: clips)
    assert [k["node"] for k in info["kept_fp32"]] == ["gain_mul", "plus_one", "scale_down"]
    types = _node_types(out)
    assert types["fc_bias"] == TensorProto.FLOAT16  # FP16 up to the guard, FP32 from the overflowing node on
    assert types["gain_mul"] == types["plus_one"] == TensorProto.FLOAT
    y, ref = _run(out, clips), _run(src, clips)
    assert np.isfinite(y).all() and np.allclose(y, ref, rtol=2e-3)
    plain = tmp_path / "plain.onnx"  # the form without the analysis overflows to inf
    plain.write_bytes(src.read_bytes())
    to_tensorrt_fp16_form(plain)
    assert _node_types(plain)["gain_mul"] == TensorProto.FLOAT16
    assert keep[0]["max_abs"] > 65504  # what that FP16 Mul would overflow to inf on the GPU (ONNX Runtime's CPU
    # provider computes FP16 Mul in FP32, so the overflow cannot be shown by running it here)


def _node_types(path: Path) -> dict[str, int]:
    """Each node's output element type after shape inference."""
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(m.graph.value_info) + list(m.graph.output)}
    return {n.name: types.get(n.output[0]) for n in m.graph.node}


@pytest.mark.parametrize("factor", [1.0])
def test_normal_scales_are_left_alone(tmp_path, factor):
    src = _qdq_model(tmp_path / "tiny.onnx", w_scale_factor=factor)
    model = onnx.load(str(src))
    assert guard_fp16_scales(model) == []
