"""INT8 without VNNI (issue 25): the numpy model of 16-bit saturating pair sums, checked against OpenVINO with
oneDNN capped to AVX2; 7-bit weights and float activation x activation matmuls that make the CPU INT8 form exact
on every ISA; the ISA detection and ONNX Runtime's switch. Expectations hold on any CPU: the capped OpenVINO run
takes the AVX2 path on AVX2-only, VNNI and AMX machines alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from calibration.precision.cpu_int8 import float_activation_matmuls, to_cpu_int8_form
from calibration.precision.overflow import narrow_weights
from calibration.precision.saturation import exact_matmul, matmul_loss, max_pair_sum, saturating_matmul
from runtime.cpu_isa import (
    CpuIsa,
    cpu_isa,
    onednn_cap_below_vnni,
    openvino_capabilities,
    openvino_int8_check,
    ort_int8_config,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_pair_sums_saturate_like_vpmaddubsw():
    a = np.array([[255, 255, 1, 1]], np.uint8)
    b = np.array([[127], [127], [3], [4]], np.int8)
    assert exact_matmul(a, b)[0, 0] == 255 * 127 * 2 + 7
    assert saturating_matmul(a, b)[0, 0] == 32767 + 7  # the first pair clips at int16, the second is exact
    # s8 activations run as u8 + 128 with 128 * sum(b) taken off afterwards (oneDNN)
    s = np.array([[127, 127]], np.int8)
    w = np.array([[127], [127]], np.int8)
    assert exact_matmul(s, w)[0, 0] == 127 * 127 * 2
    assert saturating_matmul(s, w)[0, 0] == 32767 - 128 * 254
    # an odd K is padded; a zero point is subtracted exactly
    a3 = np.array([[10, 20, 30]], np.uint8)
    b3 = np.array([[1], [2], [3]], np.int8)
    assert saturating_matmul(a3, b3, zero_point=5)[0, 0] == exact_matmul(a3, b3, zero_point=5)[0, 0] == 5 + 30 + 75


def test_seven_bit_weights_never_saturate():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 64)).astype(np.uint8)
    b8 = np.where(rng.random((64, 16)) < 0.5, 127, -128).astype(np.int8)
    loss = matmul_loss(a, b8)
    assert loss["max_pair_sum"] > 32767 and loss["changed_fraction"] > 0.5 and loss["relative_error"] > 0.1
    b7 = np.clip(b8 // 2, -64, 63).astype(np.int8)
    assert max_pair_sum(b7) <= 32767
    assert np.array_equal(saturating_matmul(a, b7), exact_matmul(a, b7))
    assert matmul_loss(a, b7)["relative_error"] == 0.0


def _qdq_matmul(wq: np.ndarray, ws: np.ndarray, x_scale: float, m: int):
    from onnx import TensorProto as T, helper as h, numpy_helper as nh

    k, n = wq.shape
    nodes = [
        h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        h.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        h.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
        h.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    g = h.make_graph(
        nodes,
        "qdq",
        [h.make_tensor_value_info("x", T.FLOAT, [m, k])],
        [h.make_tensor_value_info("y", T.FLOAT, [m, n])],
        [
            nh.from_array(np.array(x_scale, np.float32), "xs"),
            nh.from_array(np.array(0, np.int8), "xz"),
            nh.from_array(wq, "w"),
            nh.from_array(ws.astype(np.float32), "ws"),
            nh.from_array(np.zeros(n, np.int8), "wz"),
        ],
    )
    return h.make_model(g, opset_imports=[h.make_opsetid("", 19)])


def test_narrow_weights_rescales_per_channel():
    from onnx import numpy_helper

    rng = np.random.default_rng(1)
    wq = rng.integers(-127, 128, (48, 8)).astype(np.int8)
    wq[:, 3] //= 4  # a channel already within 7 bits keeps its values and scale
    wq[:, 5] = np.clip(wq[:, 5], -64, 64)  # as ONNX Runtime's reduce_range quantizes from float: +64 cannot saturate
    wq[0, 5] = 64
    ws = rng.uniform(0.01, 0.02, 8).astype(np.float32)
    model = _qdq_matmul(wq, ws, 0.05, 4)
    rec = narrow_weights(model)
    assert rec == {"weight_bits": 7, "tensors": 1, "max_abs": 64, "channels_requantized": 6}
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w7, s7 = init["w"].astype(np.int64), init["ws"]
    assert w7.min() >= -64 and w7.max() <= 64 and max_pair_sum(init["w"]) <= 32767
    for kept in (3, 5):
        assert np.array_equal(w7[:, kept], wq[:, kept]) and s7[kept] == ws[kept]
    assert np.abs(np.delete(w7, [3, 5], axis=1)).max() == 63  # the others re-quantized to [-64, 63]
    err = np.abs(w7 * s7 - wq.astype(np.float64) * ws)
    assert np.all(err <= 0.5 * s7 + 1e-7)  # one rounding at the new step: the weights are the same to 7 bits


def test_float_activation_matmuls_leave_weight_matmuls_quantized():
    from onnx import TensorProto as T, helper as h, numpy_helper as nh

    nodes = []
    for t in ("q", "k"):
        nodes += [
            h.make_node("QuantizeLinear", [t, "s", "z"], [f"{t}_q"]),
            h.make_node("DequantizeLinear", [f"{t}_q", "s", "z"], [f"{t}_d"]),
        ]
    nodes += [
        h.make_node("MatMul", ["q_d", "k_d"], ["attn"], name="qk"),
        h.make_node("DequantizeLinear", ["w", "s", "z"], ["w_d"]),
        h.make_node("MatMul", ["attn", "w_d"], ["y"]),
    ]
    g = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info(t, T.FLOAT, [4, 4]) for t in ("q", "k")],
        [h.make_tensor_value_info("y", T.FLOAT, [4, 4])],
        [
            nh.from_array(np.array(0.1, np.float32), "s"),
            nh.from_array(np.array(0, np.int8), "z"),
            nh.from_array(np.ones((4, 4), np.int8), "w"),
        ],
    )
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 19)])
    assert float_activation_matmuls(model) == ["qk"]
    qk = next(n for n in model.graph.node if n.name == "qk")
    assert list(qk.input) == ["q", "k"]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 0 and ops.count("DequantizeLinear") == 1  # only the weight's DQ is left
    rec = to_cpu_int8_form(model, "portable")
    assert rec["saturation_safe"] and rec["weight_bits"] == 7
    with pytest.raises(ValueError, match="cpu INT8 form 'avx'"):
        to_cpu_int8_form(model, "avx")


_CAPPED = r"""
import json, sys
import numpy as np, onnx, openvino as ov
core = ov.Core()
model = onnx.load(sys.argv[1])
x = np.load(sys.argv[2])
c = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
np.save(sys.argv[3], c({0: x})[0])
"""


def _openvino_capped(model, x: np.ndarray, tmp_path, cap: str | None) -> np.ndarray:
    import onnx

    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    if cap:
        env["ONEDNN_MAX_CPU_ISA"] = cap  # read by oneDNN at process start: a new process
    subprocess.run(
        [sys.executable, "-c", _CAPPED, str(tmp_path / "m.onnx"), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        check=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    return np.load(tmp_path / "y.npy")


@pytest.mark.skipif(not cpu_isa().avx2, reason="the AVX2 INT8 path needs an x86 CPU with AVX2")
def test_openvino_without_vnni_computes_the_saturating_model(tmp_path):
    """OpenVINO's CPU plugin with oneDNN capped to AVX2 (an AVX2-only CPU runs this path anyway) computes a Q/DQ
    MatMul exactly as :func:`saturating_matmul` says; after :func:`narrow_weights` it computes the exact product."""
    pytest.importorskip("openvino")
    from onnx import numpy_helper

    rng = np.random.default_rng(2)
    m, k, n = 16, 96, 24
    wq = rng.integers(-127, 128, (k, n)).astype(np.int8)
    ws = np.full(n, 0.01, np.float32)
    xq = np.clip(np.rint(rng.standard_normal((m, k)) * 50), -127, 127).astype(np.int8)
    x = xq.astype(np.float32) * np.float32(0.02)
    model = _qdq_matmul(wq, ws, 0.02, m)
    scale = np.float64(0.02) * ws.astype(np.float64)
    y = _openvino_capped(model, x, tmp_path, "AVX2")
    sat, exact = saturating_matmul(xq, wq) * scale, exact_matmul(xq, wq) * scale
    assert np.abs(sat - exact).max() > 1.0  # the model predicts a visible loss for these weights...
    np.testing.assert_allclose(y, sat, atol=1e-4)  # ...and the AVX2 kernels lose exactly that
    narrow_weights(model)
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scale7 = np.float64(0.02) * init["ws"].astype(np.float64)
    y7 = _openvino_capped(model, x, tmp_path, "AVX2")
    np.testing.assert_allclose(y7, exact_matmul(xq, init["w"]) * scale7, atol=1e-4)


def test_cpu_isa_and_the_onednn_cap(monkeypatch):
    assert onednn_cap_below_vnni("AVX2") and onednn_cap_below_vnni("avx512_core")
    assert not onednn_cap_below_vnni("AVX512_CORE_VNNI") and not onednn_cap_below_vnni(None)
    assert openvino_capabilities(["BF16", "FP32", "INT8"], "AVX2") == ["FP32", "INT8"]
    assert openvino_capabilities(["BF16", "FP32"], "") == ["BF16", "FP32"]
    isa = cpu_isa()
    assert isa.describe() and json.dumps(isa.to_dict())
    if isa.arch in ("x86_64", "amd64") and isa.int8_dot != "unknown":
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
        capped = cpu_isa()
        assert capped.onednn_pairs_saturate and "ONEDNN_MAX_CPU_ISA=AVX2" in capped.describe()
        assert capped.pairs_saturate == isa.pairs_saturate  # ONNX Runtime's MLAS ignores the cap


def _isa(saturate: bool) -> CpuIsa:
    dot = "vpmaddubsw" if saturate else "AVX-512 VNNI"
    return CpuIsa("x86_64", dot, dot, saturate, saturate, None, not saturate, True)


def test_onnxruntime_precise_int8_only_where_it_saturates():
    assert ort_int8_config("int8", _isa(True)) == {"session.x64quantprecision": "1"}
    assert ort_int8_config("int8", _isa(False)) == {} and ort_int8_config("fp32", _isa(True)) == {}


def test_onnxruntime_precise_int8_is_exact(tmp_path):
    """With ``session.x64quantprecision=1`` (what the backend sets on x86 without VNNI) ONNX Runtime's u8 x s8
    matmul is exact for operands that saturate 16-bit pair sums: on VNNI, AMX and ARM, and on AVX2 through its
    U8U8 kernels."""
    import onnxruntime as ort
    from onnx import TensorProto as T, helper as h, numpy_helper as nh

    rng = np.random.default_rng(3)
    w = np.where(rng.random((64, 8)) < 0.5, 127, -128).astype(np.int8)
    g = h.make_graph(
        [h.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "g",
        [h.make_tensor_value_info("a", T.UINT8, [4, 64])],
        [h.make_tensor_value_info("y", T.INT32, [4, 8])],
        [nh.from_array(w, "w")],
    )
    path = tmp_path / "mmi.onnx"
    path.write_bytes(h.make_model(g, opset_imports=[h.make_opsetid("", 13)]).SerializeToString())
    so = ort.SessionOptions()
    for k, v in ort_int8_config("int8", _isa(True)).items():
        so.add_session_config_entry(k, v)
    a = rng.integers(200, 256, (4, 64)).astype(np.uint8)
    got = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    assert np.array_equal(got, exact_matmul(a, w))
    assert not np.array_equal(saturating_matmul(a, w), exact_matmul(a, w))  # what U8S8 on AVX2 would give


def test_openvino_int8_load_check_warns_where_sums_saturate():
    old = {"precision": "int8", "build": {"openvino": {}}}
    with pytest.warns(RuntimeWarning, match=r"saturate on this CPU \(x86_64 AVX2 without VNNI"):
        rec = openvino_int8_check(old, CpuIsa("x86_64", "", "vpmaddubsw", True, True, None, False, True))
    assert rec["exact_here"] is False and rec["form"] is None
    portable = {"precision": "int8", "build": {"openvino": {"cpu_int8": {"form": "portable", "saturation_safe": True}}}}
    assert openvino_int8_check(portable, _isa(True))["exact_here"] is True
    assert openvino_int8_check(old, _isa(False))["exact_here"] is True
    assert openvino_int8_check({"precision": "fp32"}, _isa(True)) is None


def test_auto_backend_follows_the_isa():
    from runtime.cpu_isa import auto_cpu_backend

    backend, why = auto_cpu_backend("int8", True, _isa(True))
    assert backend == "onnxruntime" and "AVX2 without VNNI" in why and "session.x64quantprecision=1" in why
    for precision, isa in (("fp32", _isa(True)), ("int8", _isa(False)), (None, _isa(True))):
        backend, why = auto_cpu_backend(precision, True, isa)
        assert backend is None and why == f"this CPU is {isa.describe()}"


@pytest.mark.parametrize("saturate", [True, False])
def test_every_int8_session_outside_the_runtime_is_exact_where_sums_saturate(monkeypatch, tmp_path, saturate):
    """``cpu_session_options`` (used by the build checks, the benchmarks, the fake TensorRT and the tests) carries
    the exact-kernel switch exactly where MLAS's U8S8 sums saturate (the switch's exactness: the test above)."""
    import onnxruntime as ort

    import runtime.cpu_isa as cpu_isa_module
    from runtime.backends.onnxruntime_session import cpu_session_options

    monkeypatch.setattr(cpu_isa_module, "cpu_isa", lambda: _isa(saturate))
    so = cpu_session_options(threads=1, level="all", spinning=False)
    if saturate:
        assert so.get_session_config_entry("session.x64quantprecision") == "1"
    else:
        with pytest.raises(Exception, match="x64quantprecision"):
            so.get_session_config_entry("session.x64quantprecision")
    assert so.intra_op_num_threads == 1 and so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with pytest.raises(ValueError, match="level: expected one of"):
        cpu_session_options(level="fast")
