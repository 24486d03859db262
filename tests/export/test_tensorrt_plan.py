"""TensorRT build planning without TensorRT: ``plan_build`` on tiny real ONNX models, ``plan_request`` and
``--plan-only`` for TensorRT 10.3 / 10.16 / 11.4, the attention choice, the manifest session schema and the
TensorRT/GPU detection."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from runtime.backends.onnxruntime_session import cpu_session_options
from tests.support.fake_tensorrt import CLASSES, CLIP, FakeCudart, install, make_fp32, make_models, opts

from calibration.graph.onnx_inspect import inspect_onnx
from export.tensorrt.plan import (
    TensorRTBuildError,
    TensorRTBuildOptions,
    parse_trt_version,
    plan_build,
    plan_request,
    tensorrt_attention,
)
from runtime.backends.tensorrt_session import TensorRTSession, validate_session
from runtime.errors import BundleError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("trt_models"))


def test_models_are_valid_and_run_in_onnxruntime(models):
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(1).standard_normal((3, *CLIP)).astype(np.float32)
    outs = {}
    for key in ("fp32", "fp16", "int8", "attention"):
        onnx.checker.check_model(str(models[key]), full_check=True)
        sess = ort.InferenceSession(str(models[key]), cpu_session_options(), providers=["CPUExecutionProvider"])
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
    assert plan.onnx["sha256"] == hashlib.sha256(models["fp32"].read_bytes()).hexdigest()
    assert plan.onnx["path"] == str(models["fp32"])
    assert plan.input["name"] == "video" and plan.input["dtype"] == "float32"
    assert plan.profile == {"input": "video", "min": (1, *CLIP), "opt": (2, *CLIP), "max": (4, *CLIP)}
    assert plan.strongly_typed is True
    assert list(plan.creation_flags) == ["STRONGLY_TYPED"]
    assert list(plan.builder_flags) == []
    assert list(plan.fp32_layer_types) == []
    assert plan.config["workspace_bytes"] == 4096 << 20
    assert plan.config["progress_monitor"] is True
    assert plan.version_tuple == (10, 3, 0) and plan.trt_version == "10.3.0"
    assert plan.attention == "decomposed" and plan.onnx_precision == "fp32"
    assert plan.session.to_dict() == {
        "strongly_typed": True,
        "builder_flags": [],
        "version_compatible": False,
        "hardware_compatibility": "none",
        "dla_core": None,
        "cuda_graph": False,
    }
    assert plan.outputs[0]["name"] == "logits"


def test_plan_fp32_trt11_has_no_flags(models):
    plan = plan_build(models["fp32"], opts(), trt_version="11.0.0")
    assert list(plan.creation_flags) == []  # STRONGLY_TYPED is deprecated and ignored in 11: always on
    assert list(plan.builder_flags) == []
    assert plan.strongly_typed is True


def test_trt11_refuses_builder_flags(models):
    with pytest.raises(TensorRTBuildError, match=r"TensorRT 11.0.0: TensorRT 11 removed the FP16/INT8 builder flags"):
        plan_build(models["fp32"], opts(precision="fp16", strongly_typed=False), trt_version="11.0.0")


def test_plan_fp16_strongly_typed(models):
    for version, flags in (("10.3.0", ["STRONGLY_TYPED"]), ("11.0.0", [])):
        plan = plan_build(models["fp16"], opts(precision="fp16"), trt_version=version)
        assert list(plan.creation_flags) == flags
        assert list(plan.builder_flags) == []  # precision comes from the ONNX
        assert plan.onnx["precision_detected"] == "fp16"
        assert not list(plan.warnings)


def test_plan_fp16_layernorm_in_fp16_warns(models):
    plan = plan_build(models["fp16_ln"], opts(precision="fp16"), trt_version="11.0.0")
    assert any("LayerNormalization" in w and "'norm'" in w for w in list(plan.warnings))


def test_plan_weak_fp16_on_trt10_pins_layernorm_and_softmax(models):
    plan = plan_build(models["fp32"], opts(precision="fp16", strongly_typed=False), trt_version="10.3.0")
    assert plan.strongly_typed is False
    assert list(plan.creation_flags) == []  # EXPLICIT_BATCH is deprecated and ignored in 10
    assert list(plan.builder_flags) == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert list(plan.fp32_layer_types) == ["NORMALIZATION", "SOFTMAX"]


def test_plan_int8(models):
    assert list(plan_build(models["int8"], opts(precision="int8"), trt_version="10.3.0").creation_flags) == [
        "STRONGLY_TYPED"
    ]
    weak = plan_build(models["int8"], opts(precision="int8", strongly_typed=False), trt_version="10.3.0")
    assert list(weak.builder_flags) == ["INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert list(weak.fp32_layer_types) == ["NORMALIZATION", "SOFTMAX"] and list(weak.creation_flags) == []
    p11 = plan_build(models["int8"], opts(precision="int8"), trt_version="11.0.0")
    assert list(p11.builder_flags) == [] and list(p11.creation_flags) == []
    assert p11.onnx["qdq_nodes"] == 3
    assert p11.onnx_precision == "int8-qdq-fp32" and p11.onnx["int8_form"] == "fp32"  # FP32 scales in this model
    assert any("int8_form 'fp16'" in w for w in p11.warnings)


def test_plan_old_trt_needs_explicit_batch(models):
    plan = plan_build(models["fp32"], opts(strongly_typed=False), trt_version="8.6.1")
    assert list(plan.creation_flags) == ["EXPLICIT_BATCH"]
    assert plan.config["progress_monitor"] is False
    with pytest.raises(TensorRTBuildError, match="strongly_typed=False"):
        plan_build(models["fp32"], opts(), trt_version="8.6.1")
    with pytest.raises(TensorRTBuildError, match="too old"):
        plan_build(models["fp32"], opts(), trt_version="8.5.3")


def test_plan_config_options(models, tmp_path):
    o = opts(
        hardware_compatibility="ampere_plus",
        version_compatible=True,
        builder_optimization_level=5,
        workspace_mib=512,
        timing_cache=str(tmp_path / "t.cache"),
        tf32=False,
    )
    plan = plan_build(models["fp32"], o, trt_version="10.3.0")
    assert plan.config["hardware_compatibility_level"] == "AMPERE_PLUS"
    assert "VERSION_COMPATIBLE" in list(plan.builder_flags)
    assert list(plan.clear_builder_flags) == ["TF32"]
    assert plan.config["builder_optimization_level"] == 5
    assert plan.config["workspace_bytes"] == 512 << 20
    assert plan.config["timing_cache"] == str(tmp_path / "t.cache")
    assert plan.options["batch"] == [1, 2, 4]


# ------------------------------------------------------------------------------ precision mismatch


@pytest.mark.parametrize(
    ("key", "precision", "strongly_typed", "needles"),
    [
        (
            "fp32",
            "fp16",
            True,
            ["fp32.onnx", "expected float16", "found only ['float32']", "'w1'", "strongly_typed=False"],
        ),
        ("fp16", "fp32", True, ["fp16.onnx", "'fp32' requested", "float16"]),
        ("fp16", "fp16", False, ["fp16.onnx", "weakly typed", "float16"]),
        ("fp32", "int8", True, ["fp32.onnx", "QuantizeLinear/DequantizeLinear", "no "]),
        ("int8", "fp32", True, ["int8.onnx", "3 QuantizeLinear/DequantizeLinear", "x_quant", "precision='int8'"]),
        ("int8", "fp16", True, ["int8.onnx", "precision='int8'"]),
    ],
)
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


def test_fp32_attention_operator_is_refused_from_10_14(models):
    # onnx-tensorrt's Attention importer makes a non-decomposable IAttention; TensorRT has no FP32 fused kernel
    for version in ("10.14.1", "11.4.0"):
        with pytest.raises(
            TensorRTBuildError,
            match=r"attention.onnx: node 'blocks.0.attn' .*non-decomposable "
            r"IAttention.*none for FP32.*'decomposed'",
        ):
            plan_build(models["attention"], opts(), trt_version=version)


def test_contrib_ops_refused(models):
    with pytest.raises(TensorRTBuildError, match=r"contrib.onnx.*com\.microsoft.*'fused_gelu' \(Gelu\)"):
        plan_build(models["contrib"], opts(), trt_version="10.14.1")


# -------------------------------------------------------------------------------------------- DLA


def test_dla_needs_fp16_or_int8(models):
    with pytest.raises(TensorRTBuildError, match="DLA runs only FP16 or INT8"):
        plan_build(models["fp32"], opts(dla_core=0), trt_version="10.3.0")


def test_dla_weak_fp16_on_trt10(models):
    plan = plan_build(
        models["fp32"], opts(precision="fp16", strongly_typed=False, dla_core=1, batch=(2, 2, 2)), trt_version="10.3.0"
    )
    assert plan.config["default_device_type"] == "DLA" and plan.config["dla_core"] == 1
    assert plan.config["static_batch"] is True and plan.profile["min"] == plan.profile["max"] == (2, *CLIP)
    assert list(plan.builder_flags) == ["FP16", "OBEY_PRECISION_CONSTRAINTS", "GPU_FALLBACK"]
    assert not list(plan.warnings)


def test_dla_rules(models):
    static = {"batch": (1, 1, 1)}
    with pytest.raises(TensorRTBuildError, match="strongly_typed=False"):
        plan_build(models["fp16"], opts(precision="fp16", dla_core=0, **static), trt_version="10.3.0")
    with pytest.raises(TensorRTBuildError, match="dla_core -1 invalid"):
        plan_build(models["fp16"], opts(precision="fp16", dla_core=-1, **static), trt_version="10.3.0")
    with pytest.raises(TensorRTBuildError, match="GPU engines only"):
        plan_build(
            models["fp32"],
            opts(precision="fp16", strongly_typed=False, dla_core=0, hardware_compatibility="ampere_plus", **static),
            trt_version="10.3.0",
        )
    plan = plan_build(
        models["fp32"], opts(precision="fp16", strongly_typed=False, dla_core=0, **static), trt_version="10.8.0"
    )
    assert any("10.7" in w for w in list(plan.warnings))
    plan = plan_build(models["fp16"], opts(precision="fp16", dla_core=0, **static), trt_version="11.0.0")
    assert list(plan.builder_flags) == ["GPU_FALLBACK"]
    assert any("DLA support in TensorRT 11" in w for w in list(plan.warnings))


# ------------------------------------------------------------------------------ shapes and options


def test_input_shape_mismatch_names_tensor(models):
    with pytest.raises(TensorRTBuildError) as e:
        plan_build(models["fp32"], opts(input_shape=(8, 3, 8, 8)), trt_version="10.3.0")
    msg = str(e.value)
    assert "input 'video' dim 1 is 2" in msg and "expected 8" in msg and "fp32.onnx" in msg
    with pytest.raises(TensorRTBuildError, match="input 'frames' not found"):
        plan_build(models["fp32"], opts(input_name="frames"), trt_version="10.3.0")
    plan = plan_build(models["fp32"], opts(input_shape=CLIP, input_name="video"), trt_version="10.3.0")
    assert plan.profile["max"] == (4, *CLIP)


def test_fixed_batch_onnx(models):
    with pytest.raises(TensorRTBuildError, match=r"fixed batch of 1.*expected a dynamic batch"):
        plan_build(models["fixed_batch"], opts(batch=(1, 2, 4)), trt_version="10.3.0")
    plan = plan_build(models["fixed_batch"], opts(batch=(1, 1, 1)), trt_version="10.3.0")
    assert plan.profile["min"] == plan.profile["max"] == (1, *CLIP)


def test_symbolic_dims_need_input_shape(models):
    with pytest.raises(TensorRTBuildError, match=r"dynamic dims \[3, 4\].*set input_shape"):
        plan_build(models["symbolic"], opts(), trt_version="10.3.0")
    plan = plan_build(models["symbolic"], opts(input_shape=(2, 3, 16, 16)), trt_version="10.3.0")
    assert plan.profile["opt"] == (2, 2, 3, 16, 16)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"batch": (4, 2, 8)}, "batch"),
        ({"batch": (0, 1, 2)}, "batch"),
        ({"precision": "bf16"}, "precision"),
        ({"hardware_compatibility": "hopper"}, "hardware_compatibility"),
        ({"builder_optimization_level": 6}, "builder_optimization_level"),
        ({"workspace_mib": 0}, "workspace_mib"),
        ({"input_shape": (2, 3, 0, 8)}, "input_shape"),
        ({"int8_form": "bf16"}, "int8_form"),
        ({"hardware_compatibility": "same_compute_capability"}, r"needs TensorRT >= 10\.9 .*got 10\.3\.0"),
        ({"precision": "fp16", "strongly_typed": False, "dla_core": 0, "cuda_graph": True}, "CUDA graphs"),
    ],
)
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
    onnx.save(
        model,
        str(out),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    plan = plan_build(out, opts(), trt_version="11.0.0")
    assert plan.onnx["external_data"] == ["ext.onnx.data"]
    assert plan.onnx["bytes"] < 4096  # the weights stayed in the data file


# ------------------------------------------------------------------------- without TensorRT here


# ---------------------------------------------------------------- plans without an ONNX, per version


@pytest.mark.parametrize(
    ("version", "precision", "attention", "onnx_precision", "creation"),
    [
        ("10.3", "fp32", "decomposed", "fp32", ["STRONGLY_TYPED"]),
        ("10.3", "fp16", "decomposed", "fp16", ["STRONGLY_TYPED"]),  # 10.3's parser has no Attention
        ("10.3", "int8", "decomposed", "int8-qdq-fp16", ["STRONGLY_TYPED"]),
        ("10.16", "fp32", "decomposed", "fp32", ["STRONGLY_TYPED"]),  # no FP32 fused attention kernel
        ("10.16", "fp16", "onnx", "fp16", ["STRONGLY_TYPED"]),
        ("10.16", "int8", "decomposed", "int8-qdq-fp16", ["STRONGLY_TYPED"]),  # INT8 MHA from Q/DQ'd matmuls
        ("11.4", "fp32", "decomposed", "fp32", []),
        ("11.4", "fp16", "onnx", "fp16", []),
        ("11.4", "int8", "decomposed", "int8-qdq-fp16", []),
    ],
)
def test_plan_request_per_version(version, precision, attention, onnx_precision, creation):
    plan = plan_request(TensorRTBuildOptions(precision=precision), version)
    assert plan.attention == attention == tensorrt_attention(precision, version)
    assert plan.onnx_precision == onnx_precision and plan.strongly_typed is True
    assert list(plan.creation_flags) == creation and list(plan.builder_flags) == []
    assert plan.onnx is None and plan.session.strongly_typed is True


def test_plan_request_builder_flags_fp16_on_10_3():
    plan = plan_request(
        TensorRTBuildOptions(precision="fp16", strongly_typed=False, dla_core=0, batch=(1, 1, 1)), "10.3"
    )
    assert plan.onnx_precision == "fp32" and plan.attention == "decomposed" and not plan.strongly_typed
    assert list(plan.builder_flags) == ["FP16", "OBEY_PRECISION_CONSTRAINTS", "GPU_FALLBACK"]
    assert list(plan.fp32_layer_types) == ["NORMALIZATION", "SOFTMAX"] and plan.config["default_device_type"] == "DLA"
    assert plan.session.dla_core == 0 and list(plan.session.builder_flags) == list(plan.builder_flags)
    with pytest.raises(TensorRTBuildError, match="attention 'onnx' with TensorRT 10.3"):
        plan_request(TensorRTBuildOptions(precision="fp16"), "10.3", attention="onnx")
    with pytest.raises(TensorRTBuildError, match="'ort'.*cannot parse"):
        plan_request(TensorRTBuildOptions(precision="fp16"), "10.16", attention="ort")


def _plan_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "export.bundle.build", "--backend", "tensorrt", "--plan-only", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_plan_only_cli(motion_model_path):
    """One subprocess per call is slow (torch import): the JSON paths are covered in-process below."""
    r = _plan_cli(
        "--model",
        str(motion_model_path),
        "--precision",
        "fp16",
        "--trt-version",
        "10.3",
        "--builder-flags",
        "--dla-core",
        "0",
        "--batch",
        "4:4:4",
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["attention"] == "decomposed" and d["onnx_precision"] == "fp32" and d["strongly_typed"] is False
    assert d["builder_flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS", "GPU_FALLBACK"]
    assert d["session"]["dla_core"] == 0 and d["profile"]["min"] == d["profile"]["max"] == [4, 8, 3, 64, 64]
    assert d["config"]["static_batch"] is True and d["clear_builder_flags"] == ["TF32"] and d["tf32"] is False
    r = _plan_cli("--model", str(motion_model_path), "--precision", "fp16", "--trt-version", "11.4", "--builder-flags")
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert "TensorRT 11 removed the FP16/INT8 builder flags" in r.stderr


@pytest.mark.parametrize("version", ["10.3", "10.16", "11.4"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_plan_only_json(motion_model_path, capsys, version, precision):
    from export.bundle.build import main

    assert (
        main(
            [
                "--model",
                str(motion_model_path),
                "--backend",
                "tensorrt",
                "--plan-only",
                "--trt-version",
                version,
                "--precision",
                precision,
            ]
        )
        == 0
    )
    d = json.loads(capsys.readouterr().out)
    for key in ("attention", "onnx_precision", "strongly_typed", "builder_flags", "session"):
        assert key in d, key
    assert d["attention"] == tensorrt_attention(precision, version)
    assert d["strongly_typed"] is True and d["builder_flags"] == []
    assert validate_session(d["session"]) == d["session"]
    assert d["tf32"] is False and d["clear_builder_flags"] == ["TF32"] and d["parity_tolerance"] is None  # strict FP32
    fused_form = precision == "fp16" and d["attention"] == "decomposed"
    assert (d["attention_softmax"] or "").startswith("fp16: ") is fused_form  # the fusable MatMul-Softmax-MatMul
    assert (d["attention_fallback"] is not None) is (d["attention"] == "onnx")


def test_plan_only_tf32_is_an_explicit_choice(motion_model_path, capsys):
    from export.bundle.build import main
    from export.tensorrt.plan import TF32_TOLERANCE

    assert (
        main(
            [
                "--model",
                str(motion_model_path),
                "--backend",
                "tensorrt",
                "--plan-only",
                "--trt-version",
                "10.3",
                "--tf32",
            ]
        )
        == 0
    )
    d = json.loads(capsys.readouterr().out)
    assert d["tf32"] is True and d["builder_flags"] == ["TF32"] and d["clear_builder_flags"] == []
    assert d["session"]["builder_flags"] == ["TF32"] and d["parity_tolerance"] == TF32_TOLERANCE


def test_plan_only_errors_exit_2(motion_model_path, capsys):
    from export.bundle.build import main

    cases = [
        (["--precision", "fp32", "--trt-version", "10.16", "--attention", "onnx"], "none for FP32"),
        (["--precision", "fp32", "--trt-version", "10.3", "--dla-core", "0"], "DLA runs only FP16 or INT8"),
        (["--precision", "fp16", "--trt-version", "10.3", "--dla-core", "0", "--batch", "2:2:2"], "--builder-flags"),
        (
            ["--precision", "fp16", "--trt-version", "10.3", "--dla-core", "0", "--builder-flags"],
            "DLA runs static shapes only (an optimization profile for DLA must have min = opt = max",
        ),
        (["--precision", "fp16", "--trt-version", "banana"], "'banana' not understood"),
    ]
    for args, needle in cases:
        assert main(["--model", str(motion_model_path), "--backend", "tensorrt", "--plan-only", *args]) == 2
        out = capsys.readouterr()
        assert out.out == "" and needle in out.err and len(out.err.strip().splitlines()) == 1, (args, out.err)
    assert main(["--model", str(motion_model_path), "--plan-only", "--trt-version", "10.3"]) == 2
    assert "--backend tensorrt" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the session schema


def test_session_round_trip_and_validation():
    s = TensorRTSession(strongly_typed=False, builder_flags=("FP16", "GPU_FALLBACK"), dla_core=1)
    assert TensorRTSession.from_dict(s.to_dict()) == s
    assert validate_session({}) == TensorRTSession().to_dict()
    bad = [
        ({"options": {}, "build": {}}, r"unknown keys \['build', 'options'\]"),  # the old builder's layout
        ({"version_compatible": "yes"}, r"session.version_compatible: expected true or false, got 'yes'"),
        ({"dla_core": -1}, r"session.dla_core: expected null or an integer >= 0, got -1"),
        ({"dla_core": True}, r"session.dla_core"),
        ({"hardware_compatibility": "hopper"}, r"session.hardware_compatibility: expected one of"),
        ({"builder_flags": "FP16"}, r"session.builder_flags: expected a list"),
        ({"builder_flags": ["FAST"]}, r"'FAST' is not a TensorRT BuilderFlag"),
        ({"dla_core": 0, "cuda_graph": True}, r"CUDA graphs capture GPU work only"),
        ([], r"session: expected a JSON object, got list"),
    ]
    for d, match in bad:
        with pytest.raises(BundleError, match=match):
            validate_session(d)


# --------------------------------------------------------------------------------------- detection


def test_detection_without_tensorrt_says_what_is_missing():
    from runtime.backends.tensorrt_detect import tensorrt_available

    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001
        ok, reason = tensorrt_available()
        assert ok is False and "tensorrt is not importable" in reason and "tensorrt-cu12" in reason
    else:
        pytest.skip("tensorrt imports here")


def test_detection_names_a_cuda_python_newer_than_the_driver(monkeypatch):
    import runtime.backends.tensorrt_detect as detect

    cuda = FakeCudart()
    install(monkeypatch, cuda, "10.3.0")
    ok, reason = detect.tensorrt_available()
    assert ok is True and "TensorRT 10.3.0" in reason and "driver CUDA 12.6" in reason
    monkeypatch.setattr(detect, "cuda_python_version", lambda: "13.0.1")
    ok, reason = detect.tensorrt_available()
    assert ok is False and "cuda-python 13.0.1 (a CUDA 13 runtime) cannot run on this driver's CUDA 12.6" in reason
    assert "cuda-python>=12.6,<13" in reason


def test_auto_backend_says_why_it_fell_back(monkeypatch):
    import runtime.backends.tensorrt_detect as detect
    from export.bundle.build import choose_backend

    monkeypatch.setattr(detect, "tensorrt_available", lambda: (False, "no CUDA GPU visible (cudaGetDeviceCount: x)"))
    backend, why = choose_backend("auto")
    assert backend in ("onnxruntime", "openvino") and "no CUDA GPU visible" in why  # a CPU backend (OpenVINO on x86)


def test_tf32_emulation_rounds_matmul_inputs_to_10_mantissa_bits():
    import torch

    from export.tensorrt.tf32_check import TF32Mode, to_tf32

    x = torch.tensor([1 + 2**-10, 1 + 2**-12, 1 + 3 * 2**-12, -2.5], dtype=torch.float32)
    assert to_tf32(x).tolist() == [1 + 2**-10, 1.0, 1 + 2**-10, -2.5]
    lin = torch.nn.Linear(4, 3)
    with torch.no_grad():
        want = torch.nn.functional.linear(to_tf32(x), to_tf32(lin.weight), lin.bias)
        with TF32Mode():
            got = lin(x)
        assert torch.equal(got, want) and not torch.equal(got, lin(x))
