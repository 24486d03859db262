"""The FP16 attention form TensorRT fuses: ``MatMul(fp16) -> Softmax(fp16) -> MatMul(fp16)``, no Cast between.

``calibration.precision.fp16`` keeps every Softmax FP32, so the decomposed FP16 ONNX carries
``MatMul -> Cast(fp32) -> Softmax -> Cast(fp16) -> MatMul`` in each attention. TensorRT fuses attention built from
primitive layers only as the plain ``IMatrixMultiplyLayer -> ISoftMaxLayer -> IMatrixMultiplyLayer`` chain with
FP16/BF16 matmul inputs ("Fused Attention", method 2, TensorRT developer guide; facts.md); in a strongly typed
network the Casts are layers of their own and sit inside that chain. :func:`rewrite` removes them where, and only
where, both matmuls are FP16 (that is, the FP16 analysis found no overflow or large error at either matmul):

* the scores (the first matmul's output) are FP16 already, so an FP16 softmax reads the same values;
* the probabilities were rounded to FP16 by the second Cast already, so the second matmul reads the same type;
* what changes is the softmax's own arithmetic; TensorRT's fused kernels keep its running max and sum in FP32
  accumulators, and :func:`emulate_fp16_softmax` bounds the worst case (every softmax step rounded to FP16) on
  the CPU with ONNX Runtime.

A Softmax whose neighbours are not both FP16 MatMuls (the classifier's, an attention the analysis kept FP32)
stays as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

__all__ = ["find_attention_softmaxes", "rewrite", "rewrite_file", "emulate_fp16_softmax"]


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _cast_to(node: onnx.NodeProto | None) -> int | None:
    if node is None or node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def find_attention_softmaxes(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]]:
    """(cast_in, softmax, cast_out) triples with ``MatMul(fp16) -> Cast(fp32) -> Softmax -> Cast(fp16) -> MatMul``."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers = _consumers(g)
    types = _elem_types(model)
    found = []
    for sm in g.node:
        if sm.op_type != "Softmax":
            continue
        cast_in = producer.get(sm.input[0])
        users = consumers.get(sm.output[0], [])
        if _cast_to(cast_in) != TensorProto.FLOAT or len(users) != 1 or _cast_to(users[0]) != TensorProto.FLOAT16:
            continue
        mm1 = producer.get(cast_in.input[0])
        if mm1 is None or mm1.op_type != "MatMul" or types.get(mm1.output[0]) != TensorProto.FLOAT16:
            continue
        cast_out = users[0]
        after = consumers.get(cast_out.output[0], [])
        if not after or not all(n.op_type == "MatMul" for n in after):
            continue
        if len(consumers.get(cast_in.output[0], [])) != 1:
            continue  # the FP32 scores feed something else too: keep them
        found.append((cast_in, sm, cast_out))
    return found


def rewrite(model: onnx.ModelProto) -> list[str]:
    """Make each attention Softmax between two FP16 MatMuls FP16 with no Cast (in place); returns their names."""
    g = model.graph
    done = []
    for cast_in, sm, cast_out in find_attention_softmaxes(model):
        sm.input[0] = cast_in.input[0]
        for n in g.node:  # the second matmul now reads the softmax directly
            for i, name in enumerate(n.input):
                if name == cast_out.output[0]:
                    n.input[i] = sm.output[0]
        for o in g.output:
            if o.name == cast_out.output[0]:
                raise ValueError(f"softmax '{sm.name}': its Cast output '{o.name}' is a graph output")
        g.node.remove(cast_in)
        g.node.remove(cast_out)
        stale = {cast_in.output[0], cast_out.output[0], sm.output[0]}
        keep = [vi for vi in g.value_info if vi.name not in stale]
        del g.value_info[:]
        g.value_info.extend(keep)
        done.append(sm.name or sm.output[0])
    return done


def _toposort(graph: onnx.GraphProto) -> None:
    """Order ``graph.node`` topologically, keeping the given order among ready nodes (ONNX Runtime's FP16 converter
    appends its I/O casts at the end, which ONNX's checker refuses)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise ValueError(f"cycle or missing input around node '{pending[0].name}' ({pending[0].op_type})")
        for n in ready:
            known.update(n.output)
        ordered += ready
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    del graph.node[:]
    graph.node.extend(ordered)


def rewrite_file(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """:func:`rewrite` ``src`` into ``dst`` (checked with ONNX's full checker); returns what was done."""
    model = onnx.load(str(src))
    _toposort(model.graph)
    names = rewrite(model)
    onnx.checker.check_model(model, full_check=True)
    large = model.ByteSize() > (1 << 31) - (64 << 20)
    onnx.save(
        model,
        str(dst),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=Path(dst).name + ".data" if large else None,
    )
    return {"fp16_softmax": len(names), "nodes": names[:4] + (["..."] if len(names) > 4 else [])}


def emulate_fp16_softmax(model: onnx.ModelProto, names: list[str]) -> int:
    """Replace the FP16 Softmax nodes ``names`` by max, subtract, exp, sum and divide, each computed in FP32 and its
    result rounded to FP16 (explicit Cast pairs), in place; returns the nodes replaced.

    A pessimistic stand-in for an FP16 softmax on the CPU (TensorRT's fused kernels keep max and sum in FP32).
    FP16 ops themselves would not do: ONNX Runtime's CPU provider runs a chain of FP16 ops it has no kernel for in
    FP32 and drops the casts between them (seen in its optimized model), so nothing would be rounded.
    """
    g = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        raise ValueError(f"opset {opset}: ReduceSum takes axes as an input from 13")
    by_name = {n.name: n for n in g.node}
    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    count = 0
    for name in names:
        sm = by_name[name]
        axis = next((a.i for a in sm.attribute if a.name == "axis"), -1)
        x, y, p = sm.input[0], sm.output[0], f"{name}__emu"
        axes = helper.make_tensor(f"{p}_axes", TensorProto.INT64, [1], [axis])
        g.initializer.append(axes)
        new: list[onnx.NodeProto] = [helper.make_node("Cast", [x], [f"{p}_x"], to=f32)]

        def step(op: str, inputs: list[str], out: str, new: list[onnx.NodeProto] = new, **kw: Any) -> None:
            new.extend(
                [
                    helper.make_node(op, inputs, [f"{out}_32"], **kw),
                    helper.make_node("Cast", [f"{out}_32"], [f"{out}_16"], to=f16),
                    helper.make_node("Cast", [f"{out}_16"], [out], to=f32),
                ]
            )

        if opset >= 18:
            step("ReduceMax", [f"{p}_x", axes.name], f"{p}_m", keepdims=1)
        else:
            step("ReduceMax", [f"{p}_x"], f"{p}_m", keepdims=1, axes=[axis])
        step("Sub", [f"{p}_x", f"{p}_m"], f"{p}_d")
        step("Exp", [f"{p}_d"], f"{p}_e")
        step("ReduceSum", [f"{p}_e", axes.name], f"{p}_s", keepdims=1)
        new += [
            helper.make_node("Div", [f"{p}_e", f"{p}_s"], [f"{p}_q"]),
            helper.make_node("Cast", [f"{p}_q"], [y], to=f16),
        ]
        idx = list(g.node).index(sm)
        g.node.remove(sm)
        for k, n in enumerate(new):
            g.node.insert(idx + k, n)
        count += 1
    return count


def measure(fp16_onnx: str | Path, model: str, n: int = 64, seed: int = 1234) -> dict[str, Any]:
    """Cosine against FP32 PyTorch on ``n`` synthetic held-out clips, in ONNX Runtime on the CPU, of: the FP16 ONNX
    as given (FP32 attention softmax), after :func:`rewrite`, and with the rewritten softmaxes emulated at FP16."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from calibration.clips.calibset import load_clips, synthetic_spec
    from calibration.precision.metrics import compare_logits
    from models import load_source, model_task

    net, _, pre, _ = load_source(model, 0)
    clips = load_clips(synthetic_spec(model_task(net)), pre, n=n, seed=seed)
    with torch.no_grad():
        ref = np.concatenate([net(torch.from_numpy(clips[i : i + 1])).numpy() for i in range(n)])
    original = onnx.load(str(fp16_onnx))
    rewritten = onnx.load(str(fp16_onnx))
    names = rewrite(rewritten)
    emulated = onnx.ModelProto()
    emulated.CopyFrom(rewritten)
    emulate_fp16_softmax(emulated, names)
    out: dict[str, Any] = {"model": model, "clips": n, "attention_softmaxes": len(names)}
    for label, m in (
        ("fp32_softmax", original),
        ("fp16_softmax_rewritten", rewritten),
        ("fp16_softmax_emulated", emulated),
    ):
        so = ort.SessionOptions()  # no graph rewrites: the emulation's Cast pairs stay where they are
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        y = np.concatenate([sess.run(None, {"video": clips[i : i + 8]})[0] for i in range(0, n, 8)])
        out[label] = {
            k: v
            for k, v in compare_logits(ref, y).items()
            if k in ("max_abs_logit", "min_cosine", "mean_cosine", "top1_agreement")
        }
    return out


if __name__ == "__main__":
    import argparse
    import json

    from export.bundle.options import DEFAULT_MODEL  # the build's option table

    ap = argparse.ArgumentParser(description="accuracy of the FP16 attention softmax (CPU, ONNX Runtime)")
    ap.add_argument("--fp16-onnx", required=True)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--n", type=int, default=64)
    a = ap.parse_args()
    print(json.dumps(measure(a.fp16_onnx, a.model, a.n), indent=2))
