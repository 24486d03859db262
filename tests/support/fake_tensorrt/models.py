"""Tiny real ONNX models for the TensorRT tests: FP32, FP16, INT8 Q/DQ, the ONNX ``Attention`` operator, the
decomposed FP16 attention (Cast -> FP32 Softmax -> Cast between two FP16 MatMuls), a contrib op."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLIP = (2, 3, 8, 8)  # (frames, 3, H, W)
FEAT = int(np.prod(CLIP))
HIDDEN, CLASSES = 16, 5


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
        nodes += [
            helper.make_node("LayerNormalization", ["h1", "ln_s", "ln_b"], ["h2"], axis=-1, name="norm"),
            helper.make_node("Softmax", ["h2"], ["h3"], axis=-1, name="softmax"),
        ]
    else:
        nodes += [
            helper.make_node("Cast", ["h1"], ["h1f"], to=f32, name="ln_in_fp32"),
            helper.make_node("LayerNormalization", ["h1f", "ln_s", "ln_b"], ["h2"], axis=-1, name="norm"),
            helper.make_node("Softmax", ["h2"], ["h2s"], axis=-1, name="softmax"),
            helper.make_node("Cast", ["h2s"], ["h3"], to=f16, name="sm_out_fp16"),
        ]
    nodes += [
        helper.make_node("MatMul", ["h3", "w2"], ["h4"], name="fc2"),
        helper.make_node("Add", ["h4", "b2"], ["h5"], name="fc2_bias"),
        helper.make_node("Cast", ["h5"], ["logits"], to=f32, name="to_fp32"),
    ]
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
    inits = [
        _init("qkv_shape", np.array([0, 2, 24, 8], np.int64)),
        _init("w", (rng.standard_normal((FEAT, CLASSES)) * 0.05).astype(np.float32)),
    ]
    x, y = _io()
    nodes = [
        helper.make_node("Reshape", ["video", "qkv_shape"], ["qkv"], name="to_heads"),
        helper.make_node("Attention", ["qkv", "qkv", "qkv"], ["att"], name="blocks.0.attn"),
        helper.make_node("Flatten", ["att"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "w"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(nodes, "tiny_attention", [x], [y], inits)
    return _save(graph, path, opset=23)


def make_attention_fp16(path: Path, seed=0) -> Path:
    """Opset 23, FP16: video -> Cast(fp16) -> Reshape (N, 2 heads, 24 tokens, 8) -> Attention -> Flatten -> MatMul ->
    Cast(fp32) -> logits."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("qkv_shape", np.array([0, 2, 24, 8], np.int64)),
        _init("w", (rng.standard_normal((FEAT, CLASSES)) * 0.05).astype(np.float16)),
    ]
    x, y = _io()
    nodes = [
        helper.make_node("Cast", ["video"], ["v16"], to=TensorProto.FLOAT16, name="to_fp16"),
        helper.make_node("Reshape", ["v16", "qkv_shape"], ["qkv"], name="to_heads"),
        helper.make_node("Attention", ["qkv", "qkv", "qkv"], ["att"], name="blocks.0.attn"),
        helper.make_node("Flatten", ["att"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "w"], ["h"], name="head"),
        helper.make_node("Cast", ["h"], ["logits"], to=TensorProto.FLOAT, name="to_fp32"),
    ]
    graph = helper.make_graph(nodes, "tiny_attention_fp16", [x], [y], inits)
    return _save(graph, path, opset=23)


def make_decomposed_fp16(path: Path, seed=0) -> Path:
    """The FP16 decomposed attention as ``calibration.precision.fp16`` leaves it: q·kᵀ MatMul(fp16) -> Cast(fp32) ->
    Softmax -> Cast(fp16) -> MatMul(fp16) with v; then LayerNorm (FP32, between casts) -> Softmax -> head."""
    rng = np.random.default_rng(seed)
    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    inits = [
        _init("qkv_shape", np.array([0, 2, 24, 8], np.int64)),
        _init("w", (rng.standard_normal((FEAT, CLASSES)) * 0.05).astype(np.float16)),
        _init("ln_s", np.ones(CLASSES, np.float32)),
        _init("ln_b", np.zeros(CLASSES, np.float32)),
    ]
    x, y = _io()
    nodes = [
        helper.make_node("Cast", ["video"], ["v16"], to=f16, name="to_fp16"),
        helper.make_node("Reshape", ["v16", "qkv_shape"], ["q"], name="to_heads"),
        helper.make_node("Transpose", ["q"], ["kt"], perm=[0, 1, 3, 2], name="k_t"),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="attn.qk"),
        helper.make_node("Cast", ["scores"], ["scores32"], to=f32, name="attn.softmax_in_fp32"),
        helper.make_node("Softmax", ["scores32"], ["p32"], axis=-1, name="attn.softmax"),
        helper.make_node("Cast", ["p32"], ["p"], to=f16, name="attn.softmax_out_fp16"),
        helper.make_node("MatMul", ["p", "q"], ["att"], name="attn.pv"),
        helper.make_node("Flatten", ["att"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "w"], ["h"], name="head"),
        helper.make_node("Cast", ["h"], ["h32"], to=f32, name="head_fp32"),
        helper.make_node("LayerNormalization", ["h32", "ln_s", "ln_b"], ["n"], axis=-1, name="norm"),
        helper.make_node("Softmax", ["n"], ["s"], axis=-1, name="cls_softmax"),
        helper.make_node("Cast", ["s"], ["s16"], to=f16, name="cls_fp16"),
        helper.make_node("Cast", ["s16"], ["logits"], to=f32, name="out_fp32"),
    ]
    graph = helper.make_graph(nodes, "tiny_decomposed_fp16", [x], [y], inits)
    return _save(graph, path, opset=17)


def make_contrib(path: Path) -> Path:
    x, y = _io()
    nodes = [
        helper.make_node("Flatten", ["video"], ["flat"], axis=1),
        helper.make_node("Gelu", ["flat"], ["g"], domain="com.microsoft", name="fused_gelu"),
        helper.make_node("MatMul", ["g", "w"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "tiny_contrib", [x], [y], [_init("w", np.zeros((FEAT, CLASSES), np.float32))])
    return _save(graph, path, extra_opsets=[helper.make_opsetid("com.microsoft", 1)])


def make_models(d: Path) -> dict[str, Path]:
    """Every tiny model the TensorRT tests use, written under ``d``."""
    return {
        "fp32": make_fp32(d / "fp32.onnx"),
        "fp16": make_fp16(d / "fp16.onnx"),
        "fp16_ln": make_fp16(d / "fp16_ln.onnx", ln_fp16=True),
        "int8": make_qdq(d / "int8.onnx"),
        "int8_uint8": make_qdq(d / "int8_uint8.onnx", zp_dtype=np.uint8, zp_value=128),
        "int8_nonzero": make_qdq(d / "int8_nonzero.onnx", zp_value=3),
        "attention": make_attention(d / "attention.onnx"),
        "attention_fp16": make_attention_fp16(d / "attention_fp16.onnx"),
        "decomposed_fp16": make_decomposed_fp16(d / "decomposed_fp16.onnx"),
        "contrib": make_contrib(d / "contrib.onnx"),
        "fixed_batch": make_fp32(d / "fixed_batch.onnx", batch=1),
        "symbolic": make_fp32(d / "symbolic.onnx", dims=(2, 3, "H", "W")),
    }
