"""FP16 and INT8 ONNX (calibration/): accuracy on the trained motion model over held-out H.264 clips,
the graph structure TensorRT needs, FP16 overflow handling, and (slow) base 8x224 logit parity.

Everything runs in ONNX Runtime on the CPU against the FP32 PyTorch reference.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from calibration.precision.metrics import compare_logits
from export.tensorrt.plan import TensorRTBuildOptions, plan_build
from runtime.backends.onnxruntime_session import cpu_session_options

#: held-out clips for the accuracy bar: a seed neither training (0, <1000), conftest (4242) nor calibration uses
PRECISION_HELDOUT_SEED = 5151
HELDOUT_CLIPS = 200
CALIB = "synthetic:3131"
CALIB_CLIPS = 16


def _run(path: Path, clips: np.ndarray, batch: int = 8) -> np.ndarray:
    import onnxruntime as ort

    so = cpu_session_options()  # exact INT8 kernels on every CPU (issue 25)
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: clips[i : i + batch]})[0] for i in range(0, len(clips), batch)])


def _torch(net, clips: np.ndarray, batch: int = 8) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate(
            [net(torch.from_numpy(clips[i : i + batch])).numpy() for i in range(0, len(clips), batch)]
        )


# ----------------------------------------------------------------------------------- motion model


@pytest.fixture(scope="module")
def heldout(tmp_path_factory, motion_model):
    """200 freshly generated H.264 files, decoded through the reader: clips, labels and FP32 PyTorch logits."""
    from calibration.clips.calibset import load_calibration_set
    from calibration.clips.synthetic import generate_dataset

    d = tmp_path_factory.mktemp("precision_heldout")
    generate_dataset(d, HELDOUT_CLIPS, PRECISION_HELDOUT_SEED, progress=False)
    s = load_calibration_set(str(d), motion_model.preprocess, HELDOUT_CLIPS, 0, progress=False)
    assert len(s) == HELDOUT_CLIPS and s.labels is not None
    return s.clips, s.labels, _torch(motion_model, s.clips)


@pytest.fixture(scope="module")
def motion_onnx(tmp_path_factory, motion_model) -> dict[str, Path]:
    """The motion model's FP32 ONNX in the TensorRT form (decomposed attention) and ONNX Runtime's default form."""
    from export.onnx.attention import ORT_DEFAULT
    from export.onnx.export import export_onnx

    d = tmp_path_factory.mktemp("precision_onnx")
    return {
        target: export_onnx(
            motion_model,
            d / f"{target}.onnx",
            attention=mode,
            preprocess=motion_model.preprocess,
            labels=motion_model.labels,
            verbose=False,
        )
        for target, mode in (("tensorrt", "decomposed"), ("onnxruntime", ORT_DEFAULT))
    }


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("precision_cache")


@pytest.fixture(scope="module")
def built(motion_onnx, motion_model, cache_dir):
    """{(precision, target): (path, info)} built by the code path make engine uses."""
    from export.bundle.precision_step import precision_onnx

    out = {}
    for precision in ("int8", "fp16"):
        for target, fp32 in motion_onnx.items():
            out[(precision, target)] = precision_onnx(
                fp32,
                precision,
                target,
                CALIB,
                motion_model.preprocess,
                CALIB_CLIPS,
                "max",
                cache_dir,
                0,
                progress=False,
            )
    return out


@pytest.mark.parametrize("target", ["tensorrt", "onnxruntime"])
def test_int8_keeps_accuracy_on_heldout_clips(built, heldout, target):
    clips, labels, ref = heldout
    path, info = built[("int8", target)]
    m = compare_logits(ref, _run(path, clips), labels)
    assert m["top1_accuracy"] >= m["top1_accuracy_reference"] - 0.005, m
    assert m["top1_agreement"] >= 0.99, m
    assert info["n_clips"] == CALIB_CLIPS and info["set_sha256"] and info["skipped"] == 0
    assert info["form"] == ("qdq-fp16" if target == "tensorrt" else "dynamic")


@pytest.mark.parametrize("target", ["tensorrt", "onnxruntime"])
def test_fp16_agrees_on_heldout_clips(built, heldout, target):
    clips, labels, ref = heldout
    path, info = built[("fp16", target)]
    m = compare_logits(ref, _run(path, clips), labels)
    assert m["top1_agreement"] >= 0.995, m
    assert m["min_cosine"] >= 0.999, m


def test_tensorrt_int8_qdq_is_what_tensorrt_builds(built, motion_model):
    path, info = built[("int8", "tensorrt")]
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(n.domain in ("", "ai.onnx") for n in qdq)
    for n in qdq:  # symmetric int8: every zero point is an int8 zero
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), f"{n.name}: zero point {zp}"
    dq_out = {n.output[0]: n for n in qdq if n.op_type == "DequantizeLinear"}
    ops = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    batched = 0
    for n in ops:
        assert n.input[0] in dq_out and n.input[1] in dq_out, f"{n.name}: inputs not dequantized"
        w_dq = dq_out[n.input[1]]
        if w_dq.input[0] in inits:  # a weight: int8, per output channel
            w = inits[w_dq.input[0]]
            scale = inits[w_dq.input[1]]
            axis = {a.name: a.i for a in w_dq.attribute}.get("axis", 1)
            assert w.dtype == np.int8 and scale.size == w.shape[axis] > 1, f"{n.name}: weight not per-channel int8"
        else:
            batched += 1  # an attention matmul: both operands activations, both quantized
    cfg = motion_model.config
    assert batched == 2 * 2 * cfg.depth  # q·kᵀ and p·v of the temporal and the spatial attention of each block
    for n in model.graph.node:  # softmax, layer norm and the residual adds stay float
        if n.op_type in ("Softmax", "LayerNormalization", "Add"):
            assert not any(i in dq_out for i in n.input), f"{n.name} ({n.op_type}) reads a dequantized tensor"
    assert any(n.op_type == "Softmax" and n.output[0] in {q.input[0] for q in qdq} for n in model.graph.node), (
        "the softmax output should be quantized for INT8 fused attention"
    )
    # the INT8+FP16 form: every attention MatMul -> Softmax -> Q -> DQ -> MatMul with nothing in between
    assert info["form"] == "qdq-fp16"
    _assert_int8_fp16_form(model, attentions=2 * cfg.depth, fp32_softmax=0)
    for version in ("10.3.0", "11.0.0"):
        plan = plan_build(path, TensorRTBuildOptions(precision="int8"), trt_version=version)
        assert plan.onnx["precision_detected"] == "int8" and plan.strongly_typed
    assert info["target_check"]["qdq_nodes"] == len(qdq)
    assert (
        plan_build(path, TensorRTBuildOptions(precision="int8"), trt_version="10.3.0").onnx_precision == "int8-qdq-fp16"
    )


def _assert_int8_fp16_form(model: onnx.ModelProto, attentions: int, fp32_softmax: int) -> None:
    """What TensorRT's INT8 fused attention and a strongly typed INT8+FP16 build need of the Q/DQ ONNX:

    each quantized Softmax sits in ``DQ -> MatMul -> Softmax -> Q -> DQ -> MatMul`` with no Cast (no node at all)
    between the two matmuls, and runs in FP16; no Cast sits directly in front of a QuantizeLinear (an FP32 island
    feeds its Q with an FP32 scale, the DQ keeps the FP16 one); the DequantizeLinear outputs the INT8 matmuls read
    are FP16; LayerNormalization (and any Softmax whose output is not quantized) runs in FP32."""
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
    inits = {t.name: t for t in g.initializer}
    types.update({name: t.data_type for name, t in inits.items()})
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16

    def op(name: str) -> str | None:
        return producer[name].op_type if name in producer else None

    for q in (n for n in g.node if n.op_type == "QuantizeLinear"):
        assert op(q.input[0]) != "Cast", f"{q.name}: a Cast ({producer[q.input[0]].name}) in front of the Q"
        assert types[q.input[0]] == types[q.input[1]] in (FLOAT, FLOAT16), f"{q.name}: x and y_scale types differ"
        for dq in consumers[q.output[0]]:  # the same scale value on both sides of the int8 tensor
            assert dq.op_type == "DequantizeLinear" and inits[dq.input[1]].data_type == FLOAT16, dq.name
            assert np.array_equal(
                numpy_helper.to_array(inits[q.input[1]]).astype(np.float32),
                numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32),
            ), (q.name, dq.name)
    for n in g.node:
        if n.op_type in ("MatMul", "Gemm", "Conv") and op(n.input[0]) == "DequantizeLinear":
            assert types[n.input[0]] == types[n.input[1]] == FLOAT16, f"{n.name}: the DQ outputs it reads not FP16"
        if n.op_type == "LayerNormalization":
            assert types[n.input[0]] == types[n.output[0]] == inits[n.input[1]].data_type == FLOAT, n.name
    chains = kept = 0
    for sm in (n for n in g.node if n.op_type == "Softmax"):
        readers = consumers[sm.output[0]]
        if not any(r.op_type == "QuantizeLinear" for r in readers):
            assert types[sm.output[0]] == FLOAT, f"{sm.name}: an unquantized Softmax should stay FP32"
            kept += 1
            continue
        first = producer[sm.input[0]]
        assert first.op_type == "MatMul", f"{sm.name}: reads {first.op_type} ({first.name}), not the q·kᵀ MatMul"
        assert op(first.input[0]) == op(first.input[1]) == "DequantizeLinear", first.name
        assert [r.op_type for r in readers] == ["QuantizeLinear"], f"{sm.name}: the softmax output feeds {readers}"
        dqs = consumers[readers[0].output[0]]
        assert [d.op_type for d in dqs] == ["DequantizeLinear"], dqs
        second = consumers[dqs[0].output[0]]
        assert [m.op_type for m in second] == ["MatMul"] and second[0].input[0] == dqs[0].output[0], second
        assert types[first.output[0]] == types[sm.output[0]] == FLOAT16, f"{sm.name}: not FP16"
        chains += 1
    assert (chains, kept) == (attentions, fp32_softmax)


def test_tensorrt_int8_fp16_form_of_a_small_graph(tmp_path):
    """Two attentions after LayerNorms; the second's p·v MatMul kept float (``keep_float``): the first fuses
    (FP16 Softmax between the matmuls, no Cast), the second Softmax stays FP32, each LayerNorm feeds its Q directly;
    the result runs in ONNX Runtime and stays within the INT8 bar of the FP32 graph."""
    from onnx import TensorProto, helper

    from calibration.precision.int8 import quantize_int8
    from calibration.graph.onnx_inspect import inspect_onnx

    rng = np.random.default_rng(7)
    dim, tokens, classes = 16, 8, 4
    inits = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * scale, name)
        for name, shape, scale in [
            ("ln_s", (dim,), 1.0),
            ("ln_b", (dim,), 0.1),
            ("ln2_s", (dim,), 1.0),
            ("ln2_b", (dim,), 0.1),
            *[(f"w{i}", (dim, dim), dim**-0.5) for i in range(6)],
            ("wo", (tokens * dim, classes), 0.1),
        ]
    ]
    inits.append(numpy_helper.from_array(np.array([1, tokens * dim], np.int64), "flat"))

    def attention(x: str, ln: str, w: int, tag: str) -> list:
        return [
            helper.make_node("LayerNormalization", [x, f"{ln}_s", f"{ln}_b"], [f"{tag}_h"], axis=-1, name=f"{tag}_ln"),
            *[
                helper.make_node("MatMul", [f"{tag}_h", f"w{w + i}"], [f"{tag}_{t}"], name=f"{tag}_{t}_proj")
                for i, t in enumerate("qkv")
            ],
            helper.make_node("Transpose", [f"{tag}_k"], [f"{tag}_kt"], perm=[0, 2, 1], name=f"{tag}_kt"),
            helper.make_node("MatMul", [f"{tag}_q", f"{tag}_kt"], [f"{tag}_s"], name=f"{tag}_qk"),
            helper.make_node("Softmax", [f"{tag}_s"], [f"{tag}_p"], axis=-1, name=f"{tag}_softmax"),
            helper.make_node("MatMul", [f"{tag}_p", f"{tag}_v"], [f"{tag}_a"], name=f"{tag}_pv"),
        ]

    nodes = [
        *attention("video", "ln", 0, "a1"),
        helper.make_node("Add", ["a1_a", "video"], ["r1"], name="residual"),
        *attention("r1", "ln2", 3, "a2"),
        helper.make_node("Reshape", ["a2_a", "flat"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "wo"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_attentions",
        [helper.make_tensor_value_info("video", TensorProto.FLOAT, [1, tokens, dim])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        inits,
    )
    fp32 = tmp_path / "small.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    clips = rng.standard_normal((16, tokens, dim)).astype(np.float32)

    out = tmp_path / "small_int8.onnx"
    info = quantize_int8(
        fp32,
        out,
        "tensorrt",
        "max",
        lambda: clips,
        "small-set",
        tmp_path / "cache",
        smooth=None,
        keep_float=["a2_pv"],
        validate_clips=8,
        progress=False,
    )
    assert info["form"] == "qdq-fp16" and info["fp16_softmax"] == 1 and info["fp32_softmax"] == 1
    assert info["fp32_scale_q"] == 2  # both LayerNorms quantize their FP32 output directly
    model = onnx.load(str(out))
    _assert_int8_fp16_form(model, attentions=1, fp32_softmax=1)
    assert inspect_onnx(out)["int8_form"] == "fp16"
    assert info["validation"]["min_cosine"] >= 0.99, info["validation"]


def test_fp16_keeps_layernorm_and_softmax_fp32_and_passes_the_plan(built):
    from calibration.precision.fp16 import fp32_node_types

    for target in ("tensorrt", "onnxruntime"):
        path, info = built[("fp16", target)]
        model = onnx.load(str(path))
        counts = {op: sum(n.op_type == op for n in model.graph.node) for op in ("LayerNormalization", "Softmax")}
        fp32 = fp32_node_types(path)
        assert len(fp32.get("LayerNormalization", [])) == counts["LayerNormalization"] > 0
        assert len(fp32.get("Softmax", [])) == counts["Softmax"]
        assert counts["Softmax"] > 0 or target == "onnxruntime"  # the ORT form has fused attention, no Softmax
        inits = {t.name: t for t in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "LayerNormalization":  # the scale stays an FP32 weight, not an FP16 one cast back
                assert inits[n.input[1]].data_type == onnx.TensorProto.FLOAT
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
        assert model.graph.input[0].name == "video"
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
        assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["precision"] == "fp16" and "model_config" in meta  # the export's metadata travels along
    path, info = built[("fp16", "tensorrt")]
    plan = plan_build(path, TensorRTBuildOptions(precision="fp16", strongly_typed=True), trt_version="10.3.0")
    assert plan.onnx["precision_detected"] == "fp16" and not plan.warnings


def test_fp16_keeps_a_node_whose_activation_overflows(motion_model, heldout, tmp_path):
    """Scale block 1's MLP so that fc1's output exceeds 65504 (fc2 scaled back): measured, kept FP32, still right."""
    from calibration.clips.calibset import load_clips
    from calibration.precision.fp16 import FP16_MAX, convert_fp16
    from export.onnx.export import export_onnx

    net = copy.deepcopy(motion_model)
    clips = heldout[0][:16]
    mlp = net.blocks[1].mlp
    seen = []
    hook = mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(float(o.abs().max())))
    _torch(net, clips)
    hook.remove()
    scale = 4 * FP16_MAX / max(seen)  # fc1's output then peaks at 4x the largest FP16 value
    with torch.no_grad():
        mlp.fc1.weight.mul_(scale)
        mlp.fc1.bias.mul_(scale)
        mlp.fc2.weight.div_(scale)
    ref = _torch(net, clips)
    fp32 = export_onnx(net, tmp_path / "big.onnx", attention="decomposed", preprocess=net.preprocess, verbose=False)
    calib = load_clips(CALIB, net.preprocess, 8, 0)

    info = convert_fp16(fp32, tmp_path / "big_fp16.onnx", lambda: calib, validate_clips=0, progress=False)
    over = [k for k in info["kept_fp32"] if k["reason"] == "overflow"]
    assert over and max(float(k["max_abs"]) for k in over) > FP16_MAX  # really beyond FP16, measured on the clips
    model = onnx.load(str(tmp_path / "big_fp16.onnx"))
    fc1 = next(n for n in model.graph.node if n.op_type == "MatMul" and n.name in {k["node"] for k in over})
    w = {t.name: t for t in model.graph.initializer}[fc1.input[1]]
    assert w.data_type == onnx.TensorProto.FLOAT and tuple(w.dims) == (net.config.embed_dim, net.config.mlp_hidden)
    m = compare_logits(ref, _run(tmp_path / "big_fp16.onnx", clips))
    assert m["min_cosine"] >= 0.999 and m["top1_agreement"] == 1.0, m

    # Without the measurement (LayerNorm/Softmax only) the same node is converted to FP16: the measurement kept it.
    convert_fp16(fp32, tmp_path / "naive_fp16.onnx", None, validate_clips=0, progress=False)
    naive = onnx.load(str(tmp_path / "naive_fp16.onnx"))
    naive_fc1 = next(n for n in naive.graph.node if n.name == fc1.name)
    w16 = {t.name: t for t in naive.graph.initializer}[naive_fc1.input[1]]
    assert w16.data_type == onnx.TensorProto.FLOAT16


# ------------------------------------------------------------------------------------ base 8x224


@pytest.fixture(scope="module")
def base_models(tmp_path_factory):
    """Base 8x224 (random weights, temporal layers perturbed): FP32 exports, FP16 and both INT8 forms, 2 eval clips."""
    from export.bundle.precision_step import precision_onnx
    from calibration.clips.calibset import load_clips
    from export.onnx.attention import ORT_DEFAULT
    from models import load_source
    from export.onnx.export import export_onnx

    d = tmp_path_factory.mktemp("base")
    net, _, pre, _ = load_source("base", 0)
    net.eval()
    clips = load_clips("synthetic:77", pre, 2, 0)
    ref = _torch(net, clips, batch=1)
    trt = export_onnx(net, d / "trt.onnx", attention="decomposed", preprocess=pre, verbose=False)
    ortm = export_onnx(net, d / "ort.onnx", attention=ORT_DEFAULT, preprocess=pre, verbose=False)
    del net
    built = {
        "fp16": precision_onnx(
            trt, "fp16", "tensorrt", "synthetic", pre, 2, "max", d, 0, validate_clips=0, progress=False
        ),
        "int8-tensorrt": precision_onnx(
            trt, "int8", "tensorrt", "synthetic", pre, 2, "max", d, 0, validate_clips=0, progress=False
        ),
        "int8-onnxruntime": precision_onnx(
            ortm, "int8", "onnxruntime", "synthetic", pre, 2, "max", d, 0, validate_clips=1, progress=False
        ),
    }
    return clips, ref, built


@pytest.mark.slow
def test_base_fp16_logits_match_fp32(base_models):
    clips, ref, built = base_models
    path, info = built["fp16"]
    m = compare_logits(ref, _run(path, clips, batch=1))
    assert m["min_cosine"] >= 0.999, m
    assert info["kept_fp32_counts"]["always"] == 12 * 3 + 1 + 12 * 2  # 3 LayerNorms per block + final, 2 softmaxes


@pytest.mark.slow
@pytest.mark.parametrize("form", ["int8-tensorrt", "int8-onnxruntime"])
def test_base_int8_logits_match_fp32(base_models, form):
    clips, ref, built = base_models
    path, info = built[form]
    m = compare_logits(ref, _run(path, clips, batch=1))
    assert m["min_cosine"] >= 0.99, m


def test_top1_tolerance_is_held_on_decisive_clips():
    """A near tie in the reference flips under any rounding: it is reported, not failed; a decisive flip fails."""
    from calibration.precision.metrics import DECISIVE_MARGIN, check_tolerance, compare_logits

    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (10, 8))
    ref[:, 0] = ref.max(1) + 2.0  # class 0 leads clearly on every clip ...
    ref[9, 1] = ref[9, 0] - 0.05 * ref[9].std()  # ... but on the last clip class 1 is a near tie
    act = ref.copy()
    act[9, 1] = ref[9, 0] + 0.01  # the engine picks the runner-up of the near tie
    m = compare_logits(ref, act)
    assert m["top1_agreement"] == 0.9 and m["decisive_clips"] == 9 and m["top1_agreement_decisive"] == 1.0
    assert check_tolerance(m, "fp32", {"top1_agreement": 1.0}) == []
    act[3, 5] = ref[3, 0] + 1.0  # a flip where the reference was decisive
    m = compare_logits(ref, act)
    (failure,) = check_tolerance(m, "fp32", {"top1_agreement": 1.0})
    assert "on the 9 of 10 clips" in failure and f">= {DECISIVE_MARGIN:g} logit std" in failure
    flat = np.zeros((3, 8))  # no decisive clip: not judged, and said so by the count
    m = compare_logits(flat, flat)
    assert m["decisive_clips"] == 0 and m["top1_agreement_decisive"] is None
    assert check_tolerance(m, "fp32", {"top1_agreement": 1.0}) == []
