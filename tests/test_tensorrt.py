"""TensorRT builder and backend.

Without TensorRT (this CI): everything up to the TensorRT call — ``plan_build`` on small real ONNX
models (FP32, FP16, Q/DQ INT8, opset-23 Attention) for TensorRT 10.3 / 10.14 / 11.0, the error paths,
the backend's compatibility check and cuda-python error helper.
With TensorRT and a GPU (``-m "tensorrt or gpu"``): a tiny engine built and run through
``TensorRTBackend``, compared with ONNX Runtime.
"""
from __future__ import annotations

import ast
import ctypes
import enum
import hashlib
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.tensorrt_build import (
    TensorRTBuildError,
    TensorRTBuildOptions,
    build_engine,
    inspect_onnx,
    parse_trt_version,
    plan_build,
    tensorrt_available,
)
from runtime.backends.tensorrt_backend import (
    CudaError,
    TensorRTBackend,
    TensorRTBackendError,
    check_plan_compatibility,
    cuda_call,
    cuda_check,
)

CLIP = (2, 3, 8, 8)  # (frames, 3, H, W)
FEAT = int(np.prod(CLIP))
HIDDEN, CLASSES = 16, 5


def _trt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - the stub packages raise OSError too
        return False
    return True


# ------------------------------------------------------------------------------------- tiny models

def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def _save(graph: onnx.GraphProto, path: Path, opset: int = 17, extra_opsets=()) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def _io(batch="N", clip=CLIP, elem=TensorProto.FLOAT):
    x = helper.make_tensor_value_info("video", elem, [batch, *clip])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, CLASSES])
    return x, y


def _weights(rng: np.random.Generator, dtype=np.float32):
    return {
        "w1": (rng.standard_normal((FEAT, HIDDEN)) * 0.05).astype(dtype),
        "b1": (rng.standard_normal(HIDDEN) * 0.1).astype(dtype),
        "ln_s": np.ones(HIDDEN, np.float32),
        "ln_b": np.zeros(HIDDEN, np.float32),
        "w2": (rng.standard_normal((HIDDEN, CLASSES)) * 0.3).astype(dtype),
        "b2": (rng.standard_normal(CLASSES) * 0.1).astype(dtype),
    }


def make_fp32(path: Path, batch="N", clip=CLIP, dims=None, seed=0) -> Path:
    """video (N,2,3,8,8) -> Flatten -> MatMul+Add -> LayerNorm -> Softmax -> MatMul+Add -> logits."""
    w = _weights(np.random.default_rng(seed))
    x, y = _io(batch, dims if dims is not None else clip)
    nodes = [
        helper.make_node("Flatten", ["video"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("LayerNormalization", ["h1", "ln_s", "ln_b"], ["h2"], axis=-1, name="norm"),
        helper.make_node("Softmax", ["h2"], ["h3"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["h3", "w2"], ["h4"], name="fc2"),
        helper.make_node("Add", ["h4", "b2"], ["logits"], name="fc2_bias"),
    ]
    graph = helper.make_graph(nodes, "tiny_fp32", [x], [y], [_init(k, v) for k, v in w.items()])
    return _save(graph, path)


def make_fp16(path: Path, ln_fp16: bool = False, seed=0) -> Path:
    """FP16 weights and matmuls, float32 I/O; LayerNorm/Softmax in FP32 unless ``ln_fp16``."""
    w = _weights(np.random.default_rng(seed), np.float16)
    if ln_fp16:
        w["ln_s"], w["ln_b"] = w["ln_s"].astype(np.float16), w["ln_b"].astype(np.float16)
    x, y = _io()
    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    nodes = [
        helper.make_node("Cast", ["video"], ["v16"], to=f16, name="to_fp16"),
        helper.make_node("Flatten", ["v16"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
    ]
    if ln_fp16:
        nodes += [helper.make_node("LayerNormalization", ["h1", "ln_s", "ln_b"], ["h2"], axis=-1, name="norm"),
                  helper.make_node("Softmax", ["h2"], ["h3"], axis=-1, name="softmax")]
    else:
        nodes += [helper.make_node("Cast", ["h1"], ["h1f"], to=f32, name="ln_in_fp32"),
                  helper.make_node("LayerNormalization", ["h1f", "ln_s", "ln_b"], ["h2"], axis=-1, name="norm"),
                  helper.make_node("Softmax", ["h2"], ["h2s"], axis=-1, name="softmax"),
                  helper.make_node("Cast", ["h2s"], ["h3"], to=f16, name="sm_out_fp16")]
    nodes += [helper.make_node("MatMul", ["h3", "w2"], ["h4"], name="fc2"),
              helper.make_node("Add", ["h4", "b2"], ["h5"], name="fc2_bias"),
              helper.make_node("Cast", ["h5"], ["logits"], to=f32, name="to_fp32")]
    graph = helper.make_graph(nodes, "tiny_fp16", [x], [y], [_init(k, v) for k, v in w.items()])
    return _save(graph, path)


def make_qdq(path: Path, zp_dtype=np.int8, zp_value: int = 0, seed=0) -> Path:
    """Symmetric INT8 Q/DQ on the input activation and the first weight (per-tensor)."""
    w = _weights(np.random.default_rng(seed))
    w1 = w.pop("w1")
    s_w = np.float32(np.abs(w1).max() / 127)
    inits = [_init(k, v) for k, v in w.items()] + [
        _init("w1_q", np.clip(np.round(w1 / s_w), -127, 127).astype(np.int8)),
        _init("w1_scale", np.array(s_w, np.float32)),
        _init("w1_zp", np.array(0, np.int8)),
        _init("x_scale", np.array(4.0 / 127, np.float32)),
        _init("x_zp", np.array(zp_value, zp_dtype)),
    ]
    x, y = _io()
    nodes = [
        helper.make_node("QuantizeLinear", ["video", "x_scale", "x_zp"], ["xq"], name="x_quant"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xdq"], name="x_dequant"),
        helper.make_node("DequantizeLinear", ["w1_q", "w1_scale", "w1_zp"], ["w1"], name="w1_dequant"),
        helper.make_node("Flatten", ["xdq"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("LayerNormalization", ["h1", "ln_s", "ln_b"], ["h2"], axis=-1, name="norm"),
        helper.make_node("Softmax", ["h2"], ["h3"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["h3", "w2"], ["h4"], name="fc2"),
        helper.make_node("Add", ["h4", "b2"], ["logits"], name="fc2_bias"),
    ]
    graph = helper.make_graph(nodes, "tiny_qdq", [x], [y], inits)
    return _save(graph, path, opset=19)


def make_attention(path: Path, seed=0) -> Path:
    """Opset 23: video -> Reshape (N, 2 heads, 24 tokens, 8) -> ONNX Attention -> Flatten -> MatMul -> logits."""
    rng = np.random.default_rng(seed)
    inits = [_init("qkv_shape", np.array([0, 2, 24, 8], np.int64)),
             _init("w", (rng.standard_normal((FEAT, CLASSES)) * 0.05).astype(np.float32))]
    x, y = _io()
    nodes = [
        helper.make_node("Reshape", ["video", "qkv_shape"], ["qkv"], name="to_heads"),
        helper.make_node("Attention", ["qkv", "qkv", "qkv"], ["att"], name="blocks.0.attn"),
        helper.make_node("Flatten", ["att"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "w"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(nodes, "tiny_attention", [x], [y], inits)
    return _save(graph, path, opset=23)


def make_contrib(path: Path) -> Path:
    x, y = _io()
    nodes = [helper.make_node("Flatten", ["video"], ["flat"], axis=1),
             helper.make_node("Gelu", ["flat"], ["g"], domain="com.microsoft", name="fused_gelu"),
             helper.make_node("MatMul", ["g", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny_contrib", [x], [y],
                              [_init("w", np.zeros((FEAT, CLASSES), np.float32))])
    return _save(graph, path, extra_opsets=[helper.make_opsetid("com.microsoft", 1)])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("trt_models")
    return {
        "fp32": make_fp32(d / "fp32.onnx"),
        "fp16": make_fp16(d / "fp16.onnx"),
        "fp16_ln": make_fp16(d / "fp16_ln.onnx", ln_fp16=True),
        "int8": make_qdq(d / "int8.onnx"),
        "int8_uint8": make_qdq(d / "int8_uint8.onnx", zp_dtype=np.uint8, zp_value=128),
        "int8_nonzero": make_qdq(d / "int8_nonzero.onnx", zp_value=3),
        "attention": make_attention(d / "attention.onnx"),
        "contrib": make_contrib(d / "contrib.onnx"),
        "fixed_batch": make_fp32(d / "fixed_batch.onnx", batch=1),
        "symbolic": make_fp32(d / "symbolic.onnx", dims=(2, 3, "H", "W")),
    }


def opts(**kw) -> TensorRTBuildOptions:
    kw.setdefault("batch", (1, 2, 4))
    return TensorRTBuildOptions(**kw)


# --------------------------------------------------------------------------- the models themselves

def test_models_are_valid_and_run_in_onnxruntime(models):
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(1).standard_normal((3, *CLIP)).astype(np.float32)
    outs = {}
    for key in ("fp32", "fp16", "int8", "attention"):
        onnx.checker.check_model(str(models[key]), full_check=True)
        sess = ort.InferenceSession(str(models[key]), providers=["CPUExecutionProvider"])
        outs[key] = sess.run(None, {"video": x})[0]
        assert outs[key].shape == (3, CLASSES) and outs[key].dtype == np.float32
    np.testing.assert_allclose(outs["fp16"], outs["fp32"], atol=3e-2)
    np.testing.assert_allclose(outs["int8"], outs["fp32"], atol=1e-1)


def test_inspect_onnx_detects_precision(models):
    assert inspect_onnx(models["fp32"])["precision_detected"] == "fp32"
    assert inspect_onnx(models["fp16"])["precision_detected"] == "fp16"
    info = inspect_onnx(models["int8"])
    assert info["precision_detected"] == "int8" and len(info["qdq_nodes"]) == 3 and not info["qdq_problems"]
    assert inspect_onnx(models["attention"])["attention_nodes"] == ["blocks.0.attn"]


# ------------------------------------------------------------------------------------- plan_build

def test_plan_fp32_trt10_strongly_typed(models):
    plan = plan_build(models["fp32"], opts(), trt_version="10.3.0")
    assert plan["onnx"]["sha256"] == hashlib.sha256(models["fp32"].read_bytes()).hexdigest()
    assert plan["onnx"]["path"] == str(models["fp32"])
    assert plan["input"]["name"] == "video" and plan["input"]["dtype"] == "float32"
    assert plan["profile"] == {"input": "video", "min": (1, *CLIP), "opt": (2, *CLIP), "max": (4, *CLIP)}
    assert plan["strongly_typed"] is True
    assert plan["creation_flags"] == ["STRONGLY_TYPED"]
    assert plan["builder_flags"] == []
    assert plan["fp32_layer_types"] == []
    assert plan["config"]["workspace_bytes"] == 4096 << 20
    assert plan["config"]["progress_monitor"] is True
    assert plan["tensorrt"] == {"version": "10.3.0", "major": 10, "minor": 3, "patch": 0}
    assert plan["outputs"][0]["name"] == "logits"


def test_plan_fp32_trt11_has_no_flags(models):
    plan = plan_build(models["fp32"], opts(), trt_version="11.0.0")
    assert plan["creation_flags"] == []  # STRONGLY_TYPED is deprecated and ignored in 11: always on
    assert plan["builder_flags"] == []
    assert plan["strongly_typed"] is True


def test_trt11_forces_strongly_typed(models):
    plan = plan_build(models["fp32"], opts(strongly_typed=False), trt_version="11.0.0")
    assert plan["strongly_typed"] is True
    assert any("always builds strongly typed" in w for w in plan["warnings"])


def test_plan_fp16_strongly_typed(models):
    for version, flags in (("10.3.0", ["STRONGLY_TYPED"]), ("11.0.0", [])):
        plan = plan_build(models["fp16"], opts(precision="fp16"), trt_version=version)
        assert plan["creation_flags"] == flags
        assert plan["builder_flags"] == []  # precision comes from the ONNX
        assert plan["onnx"]["precision_detected"] == "fp16"
        assert not plan["warnings"]


def test_plan_fp16_layernorm_in_fp16_warns(models):
    plan = plan_build(models["fp16_ln"], opts(precision="fp16"), trt_version="11.0.0")
    assert any("LayerNormalization" in w and "'norm'" in w for w in plan["warnings"])


def test_plan_weak_fp16_on_trt10_pins_layernorm_and_softmax(models):
    plan = plan_build(models["fp32"], opts(precision="fp16", strongly_typed=False), trt_version="10.3.0")
    assert plan["strongly_typed"] is False
    assert plan["creation_flags"] == []  # EXPLICIT_BATCH is deprecated and ignored in 10
    assert plan["builder_flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert plan["fp32_layer_types"] == ["NORMALIZATION", "SOFTMAX"]


def test_plan_int8(models):
    assert plan_build(models["int8"], opts(precision="int8"), trt_version="10.3.0")["creation_flags"] == [
        "STRONGLY_TYPED"]
    weak = plan_build(models["int8"], opts(precision="int8", strongly_typed=False), trt_version="10.3.0")
    assert weak["builder_flags"] == ["INT8"] and weak["creation_flags"] == []
    p11 = plan_build(models["int8"], opts(precision="int8"), trt_version="11.0.0")
    assert p11["builder_flags"] == [] and p11["creation_flags"] == []
    assert p11["onnx"]["qdq_nodes"] == 3


def test_plan_old_trt_needs_explicit_batch(models):
    plan = plan_build(models["fp32"], opts(strongly_typed=False), trt_version="8.6.1")
    assert plan["creation_flags"] == ["EXPLICIT_BATCH"]
    assert plan["config"]["progress_monitor"] is False
    with pytest.raises(TensorRTBuildError, match="strongly_typed=False"):
        plan_build(models["fp32"], opts(), trt_version="8.6.1")
    with pytest.raises(TensorRTBuildError, match="too old"):
        plan_build(models["fp32"], opts(), trt_version="8.5.3")


def test_plan_config_options(models, tmp_path):
    o = opts(hardware_compatibility="ampere_plus", version_compatible=True, builder_optimization_level=5,
             workspace_mib=512, timing_cache=str(tmp_path / "t.cache"), tf32=False)
    plan = plan_build(models["fp32"], o, trt_version="10.3.0")
    assert plan["config"]["hardware_compatibility_level"] == "AMPERE_PLUS"
    assert "VERSION_COMPATIBLE" in plan["builder_flags"]
    assert plan["clear_builder_flags"] == ["TF32"]
    assert plan["config"]["builder_optimization_level"] == 5
    assert plan["config"]["workspace_bytes"] == 512 << 20
    assert plan["config"]["timing_cache"] == str(tmp_path / "t.cache")
    assert plan["options"]["batch"] == [1, 2, 4]


# ------------------------------------------------------------------------------ precision mismatch

@pytest.mark.parametrize(("key", "precision", "strongly_typed", "needles"), [
    ("fp32", "fp16", True, ["fp32.onnx", "expected float16", "found only ['float32']", "'w1'",
                             "strongly_typed=False"]),
    ("fp16", "fp32", True, ["fp16.onnx", "'fp32' requested", "float16"]),
    ("fp16", "fp16", False, ["fp16.onnx", "weakly typed", "float16"]),
    ("fp32", "int8", True, ["fp32.onnx", "QuantizeLinear/DequantizeLinear", "no "]),
    ("int8", "fp32", True, ["int8.onnx", "3 QuantizeLinear/DequantizeLinear", "x_quant", "precision='int8'"]),
    ("int8", "fp16", True, ["int8.onnx", "precision='int8'"]),
])
def test_precision_mismatch_errors(models, key, precision, strongly_typed, needles):
    with pytest.raises(TensorRTBuildError) as e:
        plan_build(models[key], opts(precision=precision, strongly_typed=strongly_typed), trt_version="10.3.0")
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_int8_zero_point_errors(models):
    with pytest.raises(TensorRTBuildError, match=r"(?s)zero point 'x_zp' is uint8.*expected int8 with value 0"):
        plan_build(models["int8_uint8"], opts(precision="int8"), trt_version="10.3.0")
    with pytest.raises(TensorRTBuildError, match=r"(?s)int8_nonzero.onnx.*zero point 'x_zp'.*non-zero.*expected all 0"):
        plan_build(models["int8_nonzero"], opts(precision="int8"), trt_version="11.0.0")


# -------------------------------------------------------------------------------------- Attention

def test_attention_before_10_14_is_refused(models):
    with pytest.raises(TensorRTBuildError) as e:
        plan_build(models["attention"], opts(precision="fp32"), trt_version="10.3.0")
    msg = str(e.value)
    for needle in ("attention.onnx", "'blocks.0.attn'", "Attention", "10.3.0", "10.14", "ATTENTION=decomposed"):
        assert needle in msg, (needle, msg)


def test_attention_from_10_14(models):
    plan = plan_build(models["attention"], opts(), trt_version="10.14.1")
    assert plan["onnx"]["attention_nodes"] == 1
    assert any("no FP32 fused attention" in w for w in plan["warnings"])
    assert plan_build(models["attention"], opts(), trt_version="11.0.0")["creation_flags"] == []


def test_contrib_ops_refused(models):
    with pytest.raises(TensorRTBuildError, match=r"contrib.onnx.*com\.microsoft.*'fused_gelu' \(Gelu\)"):
        plan_build(models["contrib"], opts(), trt_version="10.14.1")


# -------------------------------------------------------------------------------------------- DLA

def test_dla_needs_fp16_or_int8(models):
    with pytest.raises(TensorRTBuildError, match="DLA runs only FP16 or INT8"):
        plan_build(models["fp32"], opts(dla_core=0), trt_version="10.3.0")


def test_dla_weak_fp16_on_trt10(models):
    plan = plan_build(models["fp32"], opts(precision="fp16", strongly_typed=False, dla_core=1), trt_version="10.3.0")
    assert plan["config"]["default_device_type"] == "DLA" and plan["config"]["dla_core"] == 1
    assert plan["builder_flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS", "GPU_FALLBACK"]
    assert not plan["warnings"]


def test_dla_rules(models):
    with pytest.raises(TensorRTBuildError, match="strongly_typed=False"):
        plan_build(models["fp16"], opts(precision="fp16", dla_core=0), trt_version="10.3.0")
    with pytest.raises(TensorRTBuildError, match="dla_core -1 invalid"):
        plan_build(models["fp16"], opts(precision="fp16", dla_core=-1), trt_version="10.3.0")
    with pytest.raises(TensorRTBuildError, match="GPU engines only"):
        plan_build(models["fp32"], opts(precision="fp16", strongly_typed=False, dla_core=0,
                                        hardware_compatibility="ampere_plus"), trt_version="10.3.0")
    plan = plan_build(models["fp32"], opts(precision="fp16", strongly_typed=False, dla_core=0), trt_version="10.8.0")
    assert any("10.7" in w for w in plan["warnings"])
    plan = plan_build(models["fp16"], opts(precision="fp16", dla_core=0), trt_version="11.0.0")
    assert plan["builder_flags"] == ["GPU_FALLBACK"]
    assert any("DLA support in TensorRT 11" in w for w in plan["warnings"])


# ------------------------------------------------------------------------------ shapes and options

def test_input_shape_mismatch_names_tensor(models):
    with pytest.raises(TensorRTBuildError) as e:
        plan_build(models["fp32"], opts(input_shape=(8, 3, 8, 8)), trt_version="10.3.0")
    msg = str(e.value)
    assert "input 'video' dim 1 is 2" in msg and "expected 8" in msg and "fp32.onnx" in msg
    with pytest.raises(TensorRTBuildError, match="input 'frames' not found"):
        plan_build(models["fp32"], opts(input_name="frames"), trt_version="10.3.0")
    plan = plan_build(models["fp32"], opts(input_shape=CLIP, input_name="video"), trt_version="10.3.0")
    assert plan["profile"]["max"] == (4, *CLIP)


def test_fixed_batch_onnx(models):
    with pytest.raises(TensorRTBuildError, match=r"fixed batch of 1.*expected a dynamic batch"):
        plan_build(models["fixed_batch"], opts(batch=(1, 2, 4)), trt_version="10.3.0")
    plan = plan_build(models["fixed_batch"], opts(batch=(1, 1, 1)), trt_version="10.3.0")
    assert plan["profile"]["min"] == plan["profile"]["max"] == (1, *CLIP)


def test_symbolic_dims_need_input_shape(models):
    with pytest.raises(TensorRTBuildError, match=r"dynamic dims \[3, 4\].*set input_shape"):
        plan_build(models["symbolic"], opts(), trt_version="10.3.0")
    plan = plan_build(models["symbolic"], opts(input_shape=(2, 3, 16, 16)), trt_version="10.3.0")
    assert plan["profile"]["opt"] == (2, 2, 3, 16, 16)


@pytest.mark.parametrize(("kw", "match"), [
    ({"batch": (4, 2, 8)}, "batch"),
    ({"batch": (0, 1, 2)}, "batch"),
    ({"precision": "bf16"}, "precision"),
    ({"hardware_compatibility": "hopper"}, "hardware_compatibility"),
    ({"builder_optimization_level": 6}, "builder_optimization_level"),
    ({"workspace_mib": 0}, "workspace_mib"),
    ({"input_shape": (2, 3, 0, 8)}, "input_shape"),
])
def test_option_validation(models, kw, match):
    with pytest.raises(TensorRTBuildError, match=match):
        plan_build(models["fp32"], opts(**kw), trt_version="10.3.0")


def test_versions_and_missing_files(models, tmp_path):
    assert parse_trt_version("10.3.0.26") == (10, 3, 0)
    assert parse_trt_version("11.0") == (11, 0, 0)
    with pytest.raises(TensorRTBuildError, match="not understood"):
        parse_trt_version("latest")
    with pytest.raises(TensorRTBuildError, match="missing.onnx: ONNX file not found"):
        plan_build(tmp_path / "missing.onnx", opts(), trt_version="10.3.0")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf \xff\xfe")
    with pytest.raises(TensorRTBuildError, match="bad.onnx: not a readable ONNX model"):
        plan_build(bad, opts(), trt_version="10.3.0")


def test_external_data_is_listed_and_not_loaded(tmp_path):
    src = make_fp32(tmp_path / "src.onnx")
    model = onnx.load(str(src))
    out = tmp_path / "ext.onnx"
    onnx.save(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data",
              size_threshold=0)
    plan = plan_build(out, opts(), trt_version="11.0.0")
    assert plan["onnx"]["external_data"] == ["ext.onnx.data"]
    assert plan["onnx"]["bytes"] < 4096  # the weights stayed in the data file


# ------------------------------------------------------------------------- without TensorRT here

@pytest.mark.skipif(_trt_importable(), reason="tensorrt is importable here: the missing-TensorRT path cannot run")
def test_build_engine_without_tensorrt_says_how_to_get_it(models, tmp_path):
    with pytest.raises(TensorRTBuildError) as e:
        build_engine(models["fp32"], tmp_path / "model.plan", opts())
    assert "pip install .[tensorrt]" in str(e.value) and "BACKEND=onnxruntime" in str(e.value)
    assert not (tmp_path / "model.plan").exists()
    ok, reason = tensorrt_available()
    assert ok is False and "tensorrt" in reason
    with pytest.raises(TensorRTBuildError, match="pass trt_version"):
        plan_build(models["fp32"], opts())


@pytest.mark.skipif(_trt_importable(), reason="tensorrt is importable here: the missing-TensorRT path cannot run")
def test_backend_without_tensorrt_says_how_to_get_it(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 16)
    with pytest.raises(TensorRTBackendError, match=r"pip install \.\[tensorrt\].*BACKEND=onnxruntime"):
        TensorRTBackend(plan, {"backend": "tensorrt", "backend_version": "10.3.0"})


def test_tensorrt_available_contract():
    ok, reason = tensorrt_available()
    assert isinstance(ok, bool) and isinstance(reason, str) and reason


# ------------------------------------------------------------------------------ backend, no GPU

def test_backend_imports_only_runtime_side():
    import runtime.backends.tensorrt_backend as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert not roots & {"torch", "models", "export", "onnx", "onnxruntime", "pycuda"}, roots
    assert TensorRTBackend.thread_safe is False and TensorRTBackend.name == "tensorrt"


def test_plan_compatibility_check(tmp_path):
    plan = tmp_path / "model.plan"
    check_plan_compatibility(plan, "10.3.0", "10.3.0.26")
    check_plan_compatibility(plan, "10.3.0", "10.3.1")  # same major.minor
    with pytest.raises(TensorRTBackendError) as e:
        check_plan_compatibility(plan, "10.3.0", "10.14.1")
    assert "model.plan" in str(e.value) and "10.3.0" in str(e.value) and "10.14.1" in str(e.value)
    check_plan_compatibility(plan, "10.3.0", "10.14.1", version_compatible=True)
    check_plan_compatibility(plan, "10.14.1", "11.0.0", version_compatible=True)  # 10 -> 11 documented
    with pytest.raises(TensorRTBackendError, match="same or a newer"):
        check_plan_compatibility(plan, "10.14.1", "10.3.0", version_compatible=True)
    with pytest.raises(TensorRTBackendError, match="same or a newer"):
        check_plan_compatibility(plan, "8.6.1", "11.0.0", version_compatible=True)
    check_plan_compatibility(plan, None, "10.3.0")  # unknown: left to deserialisation


class _Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


def test_cuda_check_helper():
    fake = SimpleNamespace(cudaGetErrorString=lambda err: (_Err.cudaSuccess, b"out of memory"),
                           cudaMalloc=lambda n: (_Err.cudaErrorMemoryAllocation, None))
    assert cuda_check(fake, "cudaMalloc", (_Err.cudaSuccess, 1234)) == 1234
    assert cuda_check(fake, "cudaStreamSynchronize", (_Err.cudaSuccess,)) is None
    assert cuda_check(fake, "cudaX", (_Err.cudaSuccess, 1, 2)) == (1, 2)
    with pytest.raises(CudaError, match=r"cudaMalloc failed: cudaErrorMemoryAllocation \(2\): out of memory"):
        cuda_call(fake, "cudaMalloc", 64)


def test_cuda_call_with_real_cuda_python_without_gpu():
    if importlib.util.find_spec("cuda") is None:
        pytest.skip("cuda-python not installed")
    from runtime.backends.tensorrt_backend import import_cudart

    cudart = import_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if int(err) == 0 and count:
        pytest.skip("a CUDA GPU is visible: the no-GPU error path cannot run")
    with pytest.raises(CudaError, match="cudaGetDeviceCount failed: cudaError"):
        cuda_call(cudart, "cudaGetDeviceCount")


# ---------------------------------------------------------------------- with TensorRT and a GPU

def _require_gpu_trt():
    if not _trt_importable():  # the stub/bindings-only wheels fail with OSError, which importorskip lets through
        pytest.skip("TensorRT not importable (pip install .[tensorrt] on an NVIDIA GPU host)")
    pytest.importorskip("tensorrt", reason="TensorRT not installed (pip install .[tensorrt] on an NVIDIA GPU host)")
    ok, reason = tensorrt_available()
    if not ok:
        pytest.skip(f"TensorRT/GPU unavailable: {reason}")


def _manifest(info: dict, precision: str, **session) -> dict:
    return {
        "schema_version": 1, "backend": "tensorrt", "backend_version": info["trt_version"],
        "engine_file": "model.plan", "precision": precision,
        "input": {"name": "video", "dtype": "float32", "layout": "BTCHW", "shape": [-1, *CLIP],
                  "batch": dict(zip(("min", "opt", "max"), (1, 2, 4)))},
        "output": {"name": "logits", "dtype": "float32", "shape": [-1, CLASSES]},
        "session": {"version_compatible": info["version_compatible"], **session},
    }


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"video": x})[0]


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_fp32_engine_matches_onnxruntime(models, tmp_path, cuda_graph):
    _require_gpu_trt()
    cache = tmp_path / "timing.cache"
    info = build_engine(models["fp32"], tmp_path / "model.plan", opts(tf32=False, timing_cache=str(cache)),
                        progress=False)
    assert info["plan_bytes"] > 0 and (tmp_path / "model.plan").is_file() and cache.is_file()
    assert info["timing_cache"]["saved"] is True
    backend = TensorRTBackend(tmp_path / "model.plan", _manifest(info, "fp32"), device="cuda", cuda_graph=cuda_graph)
    try:
        rng = np.random.default_rng(2)
        for batch in (1, 3, 4, 3, 1):
            x = rng.standard_normal((batch, *CLIP)).astype(np.float32)
            y = backend.infer(x)
            assert y.shape == (batch, CLASSES) and y.dtype == np.float32
            np.testing.assert_allclose(y, _ort(models["fp32"], x), rtol=1e-4, atol=1e-4)
        d = backend.describe()
        assert d["backend"] == "tensorrt" and d["batch_range"] == [1, 4]
        if cuda_graph:
            assert d["graphs_captured"] == [1, 3, 4]
        with pytest.raises(TensorRTBackendError, match="outside the plan's profile"):
            backend.infer(np.zeros((5, *CLIP), np.float32))
    finally:
        backend.close()
    backend.close()  # idempotent
    with pytest.raises(TensorRTBackendError, match="closed"):
        backend.infer(np.zeros((1, *CLIP), np.float32))


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_fp16_engine_matches_onnxruntime(models, tmp_path):
    _require_gpu_trt()
    info = build_engine(models["fp16"], tmp_path / "model.plan", opts(precision="fp16"), progress=False)
    assert info["strongly_typed"] is True
    backend = TensorRTBackend(tmp_path / "model.plan", _manifest(info, "fp16"))
    try:
        x = np.random.default_rng(3).standard_normal((2, *CLIP)).astype(np.float32)
        np.testing.assert_allclose(backend.infer(x), _ort(models["fp16"], x), atol=2e-2)
    finally:
        backend.close()


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_plan_from_other_trt_version_is_refused(models, tmp_path):
    _require_gpu_trt()
    info = build_engine(models["fp32"], tmp_path / "model.plan", opts(), progress=False)
    manifest = _manifest(info, "fp32")
    manifest["backend_version"] = "9.0.0"
    with pytest.raises(TensorRTBackendError, match=r"model\.plan: built with TensorRT 9\.0\.0"):
        TensorRTBackend(tmp_path / "model.plan", manifest)
    (tmp_path / "junk.plan").write_bytes(b"\0" * 64)
    with pytest.raises(TensorRTBackendError, match=r"junk\.plan: TensorRT .* could not deserialize"):
        TensorRTBackend(tmp_path / "junk.plan", _manifest(info, "fp32"))


# ------------------------------------------------- fakes: the TensorRT/cuda-python call sequence here
# A stand-in for the slice of the tensorrt and cuda-python APIs that the builder and backend use
# (as documented for TensorRT 10/11), with host memory for "device" memory and ONNX Runtime as the
# "engine". It checks the call sequence, flags, buffers and graph logic; not TensorRT itself.

class _FakeStream:
    def __init__(self, handle: int) -> None:
        self.handle, self.capture = handle, None

    def __int__(self) -> int:
        return self.handle


class _Handle:
    def __init__(self, payload) -> None:
        self.payload = payload


class FakeCudart:
    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):
        cudaStreamCaptureModeThreadLocal = 1

    cudaStreamNonBlocking = 1

    def __init__(self) -> None:
        self.host, self.device, self.streams = {}, {}, {}
        self.graphs, self.execs = set(), set()
        self.launches = 0

    def _ok(self, *values):
        return (self.cudaError_t.cudaSuccess, *values)

    def _alloc(self, table, n):
        buf = ctypes.create_string_buffer(n)
        table[ctypes.addressof(buf)] = buf
        return self._ok(ctypes.addressof(buf))

    def _free(self, table, ptr):
        return self._ok() if table.pop(ptr, None) is not None else (self.cudaError_t.cudaErrorInvalidValue,)

    def cudaMallocHost(self, n):
        return self._alloc(self.host, n)

    def cudaMalloc(self, n):
        return self._alloc(self.device, n)

    def cudaFreeHost(self, ptr):
        return self._free(self.host, ptr)

    def cudaFree(self, ptr):
        return self._free(self.device, ptr)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        assert isinstance(dst, int) and isinstance(src, int) and n > 0
        ctypes.memmove(dst, src, n)
        return self._ok()

    def cudaStreamCreateWithFlags(self, flags):
        s = _FakeStream(len(self.streams) + 100)
        self.streams[int(s)] = s
        return self._ok(s)

    def cudaStreamSynchronize(self, s):
        return self._ok()

    def cudaStreamDestroy(self, s):
        del self.streams[int(s)]
        return self._ok()

    def cudaSetDevice(self, d):
        return self._ok()

    def cudaGetDeviceProperties(self, d):
        return self._ok(SimpleNamespace(name=b"Fake GPU"))

    def cudaGetDeviceCount(self):
        return self._ok(1)

    def cudaStreamBeginCapture(self, s, mode):
        self.streams[int(s)].capture = []
        return self._ok()

    def cudaStreamEndCapture(self, s):
        g = _Handle(self.streams[int(s)].capture)
        self.streams[int(s)].capture = None
        self.graphs.add(g)
        return self._ok(g)

    def cudaGraphInstantiate(self, g, flags):
        e = _Handle(g.payload)
        self.execs.add(e)
        return self._ok(e)

    def cudaGraphLaunch(self, e, s):
        for work in e.payload:
            work()
        self.launches += 1
        return self._ok()

    def cudaGraphExecDestroy(self, e):
        self.execs.remove(e)
        return self._ok()

    def cudaGraphDestroy(self, g):
        self.graphs.remove(g)
        return self._ok()

    def cudaGetLastError(self):
        return self._ok()

    def cudaGetErrorString(self, err):
        return self._ok(b"fake error")


def _fake_tensorrt(cuda: FakeCudart, version: str = "10.3.0", fail_parse: bool = False):
    import json
    import types

    import onnxruntime as ort

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.builds = []
    trt.runtimes = []
    major = int(version.split(".")[0])

    def make_enum(name, members):
        return enum.IntEnum(name, {m: i for i, m in enumerate(members)})

    flags = ["GPU_FALLBACK", "VERSION_COMPATIBLE", "TF32", "REFIT"]
    if major < 11:
        flags += ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]
    trt.BuilderFlag = make_enum("BuilderFlag", flags)
    trt.NetworkDefinitionCreationFlag = make_enum(
        "NetworkDefinitionCreationFlag", ["STRONGLY_TYPED"] if major >= 11 else ["EXPLICIT_BATCH", "STRONGLY_TYPED"])
    trt.MemoryPoolType = make_enum("MemoryPoolType", ["WORKSPACE"])
    trt.LayerType = make_enum("LayerType", ["MATRIX_MULTIPLY", "NORMALIZATION", "SOFTMAX", "OTHER"])
    trt.DeviceType = make_enum("DeviceType", ["GPU", "DLA"])
    trt.HardwareCompatibilityLevel = make_enum("HardwareCompatibilityLevel",
                                               ["NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"])
    trt.TensorIOMode = make_enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.float32, trt.float16 = "float32", "float16"
    trt.nptype = lambda dt: {"float32": np.float32, "float16": np.float16}[dt]

    class Severity(enum.IntEnum):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity

    class Logger(ILogger):
        WARNING = Severity.WARNING

        def __init__(self, severity=Severity.WARNING):
            super().__init__()

        def log(self, severity, msg):
            pass

    class IProgressMonitor:
        def __init__(self):
            pass

    trt.ILogger, trt.Logger, trt.IProgressMonitor = ILogger, Logger, IProgressMonitor

    # -- builder side
    class Layer:
        def __init__(self, kind):
            self.type, self.precision, self.num_outputs, self.output_types = kind, None, 1, {}

        def set_output_type(self, i, dt):
            self.output_types[i] = dt

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.layers = flags, [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_layers = property(lambda self: len(self.layers))

        def get_input(self, i):
            return self.inputs[i]

        def get_layer(self, i):
            return self.layers[i]

    class ParserError:
        def desc(self):
            return "Unsupported operator"

        def node_name(self):
            return "fused_gelu"

        def node_operator(self):
            return "Gelu"

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):
            if fail_parse:
                self.num_errors = 1
                return False
            model = onnx.load(path)
            kinds = {"MatMul": "MATRIX_MULTIPLY", "LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX"}
            self.network.inputs = [SimpleNamespace(name=i.name) for i in model.graph.input]
            self.network.layers = [Layer(trt.LayerType[kinds.get(n.op_type, "OTHER")]) for n in model.graph.node]
            self.network.onnx_path = path
            return True

        def get_error(self, i):
            return ParserError()

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, mn, opt, mx):
            self.shapes[name] = (tuple(mn), tuple(opt), tuple(mx))

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+timed"

    class Config:
        def __init__(self):
            self.flags, self.cleared, self.pools, self.profiles = set(), set(), {}, []
            self.cache = None
            self.progress_monitor = None
            self.default_device_type = trt.DeviceType.GPU
            self.DLA_core = -1
            self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE
            self.builder_optimization_level = 3

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, f):
            self.flags.add(f)

        def clear_flag(self, f):
            self.cleared.add(f)

        def add_optimization_profile(self, p):
            self.profiles.append(p)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob):
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if config.progress_monitor is not None:
                config.progress_monitor.phase_start("Building engine", None, 2)
                config.progress_monitor.phase_start("Tactics", "Building engine", 3)
                for step in range(3):
                    assert config.progress_monitor.step_complete("Tactics", step) is True
                config.progress_monitor.phase_finish("Tactics")
                config.progress_monitor.step_complete("Building engine", 1)
                config.progress_monitor.phase_finish("Building engine")
            trt.builds.append(SimpleNamespace(network=network, config=config))
            (name, (mn, opt, mx)), = config.profiles[0].shapes.items()
            return b"FAKEPLAN\n" + json.dumps({"onnx": network.onnx_path, "input": name, "min": mn, "max": mx}).encode()

    trt.Builder, trt.OnnxParser = Builder, OnnxParser

    # -- runtime side
    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            ok = all(lo <= d <= hi for d, lo, hi in zip(shape, self.engine.pmin, self.engine.pmax))
            if ok:
                self.shapes[name] = tuple(shape)
            return ok

        def get_tensor_shape(self, name):
            return (self.shapes[self.engine.input][0], CLASSES)

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            assert isinstance(stream_handle, int)
            shape = self.shapes[self.engine.input]
            addresses = dict(self.addresses)

            def run():
                n = int(np.prod(shape))
                x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(addresses[self.engine.input]))
                y = self.engine.session.run(None, {self.engine.input: x.reshape(shape).copy()})[0]
                y = np.ascontiguousarray(y, np.float32)
                ctypes.memmove(addresses["logits"], y.ctypes.data, y.nbytes)

            stream = cuda.streams[stream_handle]
            if stream.capture is not None:
                stream.capture.append(run)  # captured, not executed
            else:
                run()
                self.engine.executions += 1
            return True

    class Engine:
        def __init__(self, meta):
            self.session = ort.InferenceSession(meta["onnx"], providers=["CPUExecutionProvider"])
            self.input, self.pmin, self.pmax = meta["input"], tuple(meta["min"]), tuple(meta["max"])
            self.contexts, self.executions = 0, 0
            self.num_io_tensors = 2

        def get_tensor_name(self, i):
            return [self.input, "logits"][i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == self.input else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_profile_shape(self, name, index):
            return self.pmin, self.pmin, self.pmax

        def create_execution_context(self):
            self.contexts += 1
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed, self.DLA_core = False, -1
            trt.runtimes.append(self)

        def deserialize_cuda_engine(self, blob):
            if not blob.startswith(b"FAKEPLAN\n"):
                return None
            self.engine = Engine(json.loads(blob.split(b"\n", 1)[1]))
            return self.engine

    trt.Runtime = Runtime
    return trt


@pytest.fixture
def fake_gpu(monkeypatch):
    """Install the fake tensorrt/cuda-python; returns a factory taking the TensorRT version to fake."""
    pytest.importorskip("onnxruntime")
    import export.tensorrt_build as tb
    import runtime.backends.tensorrt_backend as tbk

    cuda = FakeCudart()

    def install(version: str = "10.3.0", **kw):
        trt = _fake_tensorrt(cuda, version, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(tbk, "import_cudart", lambda: cuda)
        monkeypatch.setattr(tb, "_import_cudart", lambda: cuda)
        return trt, cuda

    return install


def test_fake_build_weak_fp16_trt10(models, tmp_path, fake_gpu):
    trt, _ = fake_gpu("10.3.0")
    cache = tmp_path / "cache" / "timing.cache"
    o = opts(precision="fp16", strongly_typed=False, timing_cache=str(cache), workspace_mib=256,
             builder_optimization_level=4, hardware_compatibility="ampere_plus", tf32=False)
    info = build_engine(models["fp32"], tmp_path / "out" / "model.plan", o, progress=True)
    b = trt.builds[-1]
    assert b.network.flags == 0  # weakly typed, and no EXPLICIT_BATCH on 10
    assert b.config.flags == {trt.BuilderFlag.FP16, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS}
    assert b.config.cleared == {trt.BuilderFlag.TF32}
    assert b.config.pools == {trt.MemoryPoolType.WORKSPACE: 256 << 20}
    assert b.config.hardware_compatibility_level == trt.HardwareCompatibilityLevel.AMPERE_PLUS
    assert b.config.builder_optimization_level == 4
    assert b.config.progress_monitor is not None
    assert b.config.profiles[0].shapes == {"video": ((1, *CLIP), (2, *CLIP), (4, *CLIP))}
    pinned = [layer for layer in b.network.layers if layer.precision == "float32"]
    assert [layer.type.name for layer in pinned] == ["NORMALIZATION", "SOFTMAX"]
    assert all(layer.output_types == {0: "float32"} for layer in pinned)
    assert info["fp32_pinned_layers"] == 2 and info["builder_flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    plan = tmp_path / "out" / "model.plan"
    assert info["plan_bytes"] == plan.stat().st_size
    assert info["plan_sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    assert sorted(p.name for p in plan.parent.iterdir()) == ["model.plan"]  # no temp files left
    assert cache.read_bytes() == b"+timed" and info["timing_cache"] == {"path": str(cache), "loaded": False,
                                                                        "saved": True}
    info2 = build_engine(models["fp32"], plan, o, progress=False)
    assert info2["timing_cache"]["loaded"] is True and cache.read_bytes() == b"+timed+timed"
    assert trt.builds[-1].config.progress_monitor is None


def test_fake_build_strongly_typed_trt10_and_trt11(models, tmp_path, fake_gpu):
    trt, _ = fake_gpu("10.14.1")
    build_engine(models["int8"], tmp_path / "a.plan", opts(precision="int8", version_compatible=True), progress=False)
    b = trt.builds[-1]
    assert b.network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert b.config.flags == {trt.BuilderFlag.VERSION_COMPATIBLE}
    assert not any(layer.precision for layer in b.network.layers)
    trt, _ = fake_gpu("11.0.0")  # no FP16/INT8/OBEY flags at all in this fake, as in TensorRT 11
    info = build_engine(models["fp16"], tmp_path / "b.plan", opts(precision="fp16"), progress=False)
    assert trt.builds[-1].network.flags == 0 and trt.builds[-1].config.flags == set()
    assert info["trt_version"] == "11.0.0" and info["creation_flags"] == []


def test_fake_build_dla(models, tmp_path, fake_gpu):
    trt, _ = fake_gpu("10.3.0")
    build_engine(models["fp32"], tmp_path / "m.plan", opts(precision="fp16", strongly_typed=False, dla_core=1),
                 progress=False)
    c = trt.builds[-1].config
    assert c.default_device_type == trt.DeviceType.DLA and c.DLA_core == 1
    assert trt.BuilderFlag.GPU_FALLBACK in c.flags
    trt.Builder.num_DLA_cores = 1  # the test double's device now reports one DLA core (Builder.num_DLA_cores)
    with pytest.raises(TensorRTBuildError, match=r"dla_core=1, but this device has 1 DLA core\(s\); expected 0\.\.0"):
        build_engine(models["fp32"], tmp_path / "m.plan", opts(precision="fp16", strongly_typed=False, dla_core=1),
                     progress=False)


def test_fake_build_unreadable_timing_cache_starts_empty(models, tmp_path, fake_gpu, monkeypatch):
    trt, _ = fake_gpu("10.3.0")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"corrupt")
    config_cls = type(trt.Builder(None).create_builder_config())
    real = config_cls.create_timing_cache
    # the test double returns no cache for an unreadable blob, as IBuilderConfig.create_timing_cache may
    monkeypatch.setattr(config_cls, "create_timing_cache",
                        lambda self, blob: None if blob == b"corrupt" else real(self, blob))
    info = build_engine(models["fp32"], tmp_path / "m.plan", opts(timing_cache=str(cache)), progress=False)
    assert info["timing_cache"] == {"path": str(cache), "loaded": False, "saved": True}
    assert any("timing cache unreadable" in w for w in info["warnings"]) and cache.read_bytes() == b"+timed"


def test_fake_build_parser_errors_are_listed(models, tmp_path, fake_gpu):
    fake_gpu("10.3.0", fail_parse=True)
    with pytest.raises(TensorRTBuildError, match=r"(?s)fp32.onnx: TensorRT 10.3.0's ONNX parser failed.*"
                                                 r"node 'fused_gelu' \(Gelu\): Unsupported operator"):
        build_engine(models["fp32"], tmp_path / "m.plan", opts(), progress=False)
    assert not (tmp_path / "m.plan").exists()


def test_fake_tensorrt_available(fake_gpu):
    fake_gpu("10.3.0")
    ok, reason = tensorrt_available()
    assert ok is True and "TensorRT 10.3.0" in reason and "1 CUDA device" in reason


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_fake_backend_runs_and_frees_everything(models, tmp_path, fake_gpu, cuda_graph):
    trt, cuda = fake_gpu("10.3.0")
    info = build_engine(models["fp32"], tmp_path / "model.plan", opts(), progress=False)
    manifest = _manifest(info, "fp32")
    backend = TensorRTBackend(tmp_path / "model.plan", manifest, device="cuda:0", cuda_graph=cuda_graph)
    engine = trt.runtimes[-1].engine
    assert trt.runtimes[-1].engine_host_code_allowed is False
    assert len(cuda.host) == len(cuda.device) == 2 and len(cuda.streams) == 1
    rng = np.random.default_rng(4)
    for batch in (3, 3, 1, 4, 3):
        x = rng.standard_normal((batch, *CLIP)).astype(np.float32)
        np.testing.assert_allclose(backend.infer(x), _ort(models["fp32"], x), rtol=1e-6, atol=1e-6)
    d = backend.describe()
    assert d["device_name"] == "Fake GPU" and d["built_with"] == "10.3.0" and d["batch_range"] == [1, 4]
    if cuda_graph:
        assert d["graphs_captured"] == [1, 3, 4]
        assert cuda.launches == 2  # the two repeat calls at batch 3 replayed the graph
        assert engine.contexts == 4  # the main one plus one per captured batch size
        assert engine.executions == 3  # warm-ups only
    else:
        assert cuda.launches == 0 and engine.executions == 5 and engine.contexts == 1
    with pytest.raises(TensorRTBackendError, match=r"shape \(2, 2, 3, 8, 9\) outside the plan's profile"):
        backend.infer(np.zeros((2, 2, 3, 8, 9), np.float32))
    backend.close()
    assert not cuda.host and not cuda.device and not cuda.streams and not cuda.graphs and not cuda.execs
    backend.close()


def test_fake_backend_version_checks(models, tmp_path, fake_gpu):
    trt, _ = fake_gpu("10.3.0")
    info = build_engine(models["fp32"], tmp_path / "model.plan", opts(), progress=False)
    manifest = _manifest(info, "fp32")
    manifest["backend_version"] = "10.14.1"
    with pytest.raises(TensorRTBackendError, match=r"model\.plan: built with TensorRT 10\.14\.1, but TensorRT "
                                                   r"10\.3\.0 is installed"):
        TensorRTBackend(tmp_path / "model.plan", manifest)
    manifest["backend_version"] = "10.1.0"
    manifest["session"]["version_compatible"] = True
    backend = TensorRTBackend(tmp_path / "model.plan", manifest)
    assert trt.runtimes[-1].engine_host_code_allowed is True
    backend.close()
    (tmp_path / "junk.plan").write_bytes(b"\0" * 64)
    with pytest.raises(TensorRTBackendError, match=r"junk\.plan: TensorRT 10\.3\.0 could not deserialize the plan "
                                                   r"\(built with TensorRT 10\.3\.0"):
        TensorRTBackend(tmp_path / "junk.plan", _manifest(info, "fp32"))
    manifest = _manifest(info, "fp32")
    manifest["input"]["name"] = "frames"
    with pytest.raises(TensorRTBackendError, match="manifest's input is 'frames', the plan's is 'video'"):
        TensorRTBackend(tmp_path / "model.plan", manifest)
    manifest = _manifest(info, "fp32")
    manifest["input"]["batch"]["max"] = 8
    with pytest.raises(TensorRTBackendError, match=r"batch range .* exceeds the plan's profile batch 1\.\.4"):
        TensorRTBackend(tmp_path / "model.plan", manifest)
    with pytest.raises(TensorRTBackendError, match="device 'cpu' not supported"):
        TensorRTBackend(tmp_path / "model.plan", _manifest(info, "fp32"), device="cpu")
