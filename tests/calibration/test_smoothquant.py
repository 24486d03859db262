"""SmoothQuant on the ONNX graph (calibration.precision.smoothquant), MSE clipping (calibration.precision.clipping) and
the INT8 hooks:
exact in FP32, and what makes INT8 of a model with activation outliers meet the cosine bar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.precision.clipping import mse_threshold
from calibration.precision.int8 import quantize_int8
from calibration.precision.int8_search import choose_keep_float, node_macs, run_logits
from calibration.precision.metrics import compare_logits
from calibration.precision.smoothquant import find_smooth_groups, smooth_onnx

MOTION = Path(__file__).resolve().parents[2] / "models" / "weights" / "motion_tiny.safetensors"


@pytest.fixture(scope="module")
def outlier_motion(tmp_path_factory):
    """The S=40, 4-channel outlier version of the motion model as ONNX ('onnx' attention), with clips."""
    from calibration.clips.calibset import load_calibration_set
    from export.onnx.export import export_onnx
    from models import load_source
    from models.outliers import add_outliers

    net, labels, pre, _ = load_source(str(MOTION))
    out, _ = add_outliers(net, 40.0, 4, seed=0)
    path = tmp_path_factory.mktemp("sq") / "motion_s40_c4.onnx"
    export_onnx(out, path, attention="onnx", labels=labels, preprocess=pre, verbose=False)
    calib = load_calibration_set("synthetic", pre, 8, 0, progress=False).clips
    held_out = load_calibration_set("synthetic:4242", pre, 24, 0, progress=False).clips  # never calibrated on
    return path, calib, held_out


def test_smoothing_is_exact_in_fp32(outlier_motion, tmp_path):
    path, calib, held_out = outlier_motion
    info = smooth_onnx(path, tmp_path / "s.onnx", calib, alpha=0.5)
    # 3 LayerNorms per block (temporal, spatial, MLP) and the final norm before the head (through the class Gather)
    assert info["layernorms_smoothed"] == 3 * 4 + 1
    ref, got = run_logits(path, held_out), run_logits(tmp_path / "s.onnx", held_out)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
    # the outliers really moved into the weights: each LayerNorm's max/median activation ratio falls
    assert all(g["outlier_ratio_after"] < g["outlier_ratio_before"] / 4 for g in info["groups"])


def test_int8_with_smoothing_meets_the_bar_where_plain_int8_does_not(outlier_motion, tmp_path):
    path, calib, held_out = outlier_motion
    ref = run_logits(path, held_out)
    results = {}
    for smooth in (None, 0.5):
        out = tmp_path / f"int8-{smooth}.onnx"
        info = quantize_int8(
            path,
            out,
            "onnxruntime",
            "max",
            lambda: calib,
            "set-a",
            tmp_path / "cache",
            form="dynamic",
            validate_clips=0,
            progress=False,
            smooth=smooth,
        )
        assert (info["smoothquant"] is None) == (smooth is None)
        results[smooth] = compare_logits(ref, run_logits(out, held_out))
    plain, smoothed = results[None], results[0.5]
    assert not (plain["mean_cosine"] >= 0.999 and plain["min_cosine"] >= 0.99), plain
    assert smoothed["mean_cosine"] >= 0.999 and smoothed["min_cosine"] >= 0.99, smoothed
    assert smoothed["top1_agreement"] == 1.0


def _toy_graph(tmp: Path) -> Path:
    """Two LayerNorms sharing one scale initializer (as an exporter dedupes them); the first feeds a MatMul, the
    second a Gather of token 0 then a Gemm with transB; a third LayerNorm also feeds an Add (not smoothable)."""
    rng = np.random.default_rng(0)
    d = 6
    gamma = numpy_helper.from_array(np.ones(d, np.float32), "gamma")
    beta = numpy_helper.from_array(rng.normal(size=d).astype(np.float32), "beta")
    w1 = numpy_helper.from_array(rng.normal(size=(d, 5)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(3, d)).astype(np.float32), "w2")  # Gemm transB: (out, in)
    w3 = numpy_helper.from_array(rng.normal(size=(d, 4)).astype(np.float32), "w3")
    idx = numpy_helper.from_array(np.array(0, np.int64), "idx")
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["l1"], name="ln1", axis=-1),
        helper.make_node("MatMul", ["l1", "w1"], ["y1"], name="mm1"),
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["l2"], name="ln2", axis=-1),
        helper.make_node("Gather", ["l2", "idx"], ["g"], name="gather", axis=1),
        helper.make_node("Gemm", ["g", "w2"], ["y2"], name="gemm", transB=1),
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["l3"], name="ln3", axis=-1),
        helper.make_node("MatMul", ["l3", "w3"], ["y3"], name="mm3"),
        helper.make_node("Add", ["l3", "x"], ["y4"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, d])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y1", "y2", "y3", "y4")],
        [gamma, beta, w1, w2, w3, idx],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp / "toy.onnx"
    onnx.save(model, str(path))
    return path


def test_groups_shared_initializers_gather_and_gemm(tmp_path):
    import onnxruntime as ort

    path = _toy_graph(tmp_path)
    groups = {g.layernorm: g for g in find_smooth_groups(onnx.load(str(path)))}
    assert set(groups) == {"ln1", "ln2"}  # ln3 also feeds an Add: its scale cannot fold
    assert groups["ln2"].weights == [("gemm", "w2", 1)]
    x = np.random.default_rng(1).normal(size=(5, 4, 6)).astype(np.float32)
    info = smooth_onnx(path, tmp_path / "s.onnx", x, alpha=0.5)
    assert info["layernorms_smoothed"] == 2
    s0 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    s1 = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    for i in range(len(x)):
        for a, b in zip(s0.run(None, {"x": x[i : i + 1]}), s1.run(None, {"x": x[i : i + 1]})):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    smoothed = onnx.load(str(tmp_path / "s.onnx"))
    ln3 = next(n for n in smoothed.graph.node if n.name == "ln3")
    assert ln3.input[1] == "gamma"  # the shared scale was copied for ln1/ln2, never changed under ln3
    gamma = next(t for t in smoothed.graph.initializer if t.name == "gamma")
    assert np.array_equal(numpy_helper.to_array(gamma), np.ones(6, np.float32))


def test_mse_threshold_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_t(3, size=100_000))  # heavy tail: the max is far beyond the bulk
    hist, edges = np.histogram(x, bins=2048, range=(0, x.max()))
    t, err = mse_threshold(hist, edges)

    def sample_err(th: float) -> float:  # the same error model on the samples themselves
        return float(np.where(x <= th, (2 * th / 254) ** 2 / 12, (x - th) ** 2).mean())

    brute = min((sample_err(th), th) for th in np.linspace(1.0, x.max(), 300))
    assert t < 0.8 * x.max()  # it clips
    assert err == pytest.approx(brute[0], rel=0.02) and t == pytest.approx(brute[1], rel=0.05)
    assert err < sample_err(x.max())


def test_keep_float_respects_the_budget():
    sens = {
        "nodes": [
            {"node": "big", "mac_share": 0.2, "error": 1e-3},
            {"node": "a", "mac_share": 0.02, "error": 8e-4},
            {"node": "b", "mac_share": 0.02, "error": 5e-4},
            {"node": "c", "mac_share": 0.02, "error": 1e-5},
        ]
    }
    chosen = choose_keep_float(sens, budget=0.05, max_nodes=4, min_share=0.25)
    assert chosen["keep_float"] == ["a", "b"]  # big is over budget; c carries under 25% of the worst error
    assert chosen["mac_share_kept_float"] == pytest.approx(0.04)


def test_node_macs_from_a_real_run(outlier_motion):
    path, calib, _ = outlier_motion
    macs = node_macs(path, calib[:1])
    # 64 px / 16 = 16 patches x 8 frames = 128 tokens, D = 192. Per block: temporal qkv + proj + temporal_fc on the
    # 128 patch tokens (5 D^2), spatial qkv + proj on 8 x 17 tokens (4 D^2), MLP on 129 tokens (8 D^2); plus the
    # patch conv (128 patches x D x 3*16*16) and the head (D x 8 classes, one token)
    d = 192
    expected = 4 * (128 * 5 + 136 * 4 + 129 * 8) * d * d + 128 * d * 3 * 16 * 16 + d * 8
    assert sum(macs.values()) == expected


def test_clipping_search_builds_each_method_and_keeps_the_best(outlier_motion, tmp_path):
    from calibration.precision.int8_search import search_clipping

    path, calib, held_out = outlier_motion
    res = search_clipping(
        path, "onnxruntime", calib, held_out[:8], "set-b", tmp_path / "cache", form="qdq", methods=("max", "mse")
    )
    assert [r["method"] for r in res["results"]] == ["max", "mse"]
    best = max(res["results"], key=lambda r: (r["mean_cosine"], r["min_cosine"]))
    assert res["best"] == best["method"]
    # the two methods wrote different ranges: mse clipped at least one tensor below its max
    import json

    files = {p.name.split("-")[-3]: json.loads(p.read_text()) for p in (tmp_path / "cache" / "calib").glob("*.json")}
    assert set(files) >= {"max", "mse"} and files["max"] != files["mse"]
