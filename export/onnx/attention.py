"""Attention as explicit ONNX subgraphs: one marker op in PyTorch, one ONNX form per export mode.

During export every ``Attention`` module of the model calls :func:`export_mha` (the custom op
``timesformer_export::mha``): numerically the model's ``sdpa`` attention on q, k, v of shape
``(batch, seq, width)``. ``torch.onnx.export(dynamo=True)`` translates that op through
:func:`translation_table`, which writes the ONNX form of the chosen mode straight into the graph:

``onnx``
    the standard ``Attention`` operator (opset 23+), 3-D inputs with ``q_num_heads``/``kv_num_heads``:
    no head-split reshapes or transposes at all.
``ort``
    ONNX Runtime's fused ``com.microsoft.MultiHeadAttention`` (3-D q, k, v, ``num_heads``), CPU and CUDA.
``decomposed``
    ``MatMul -> Softmax -> MatMul`` with nothing between the matmuls (the pattern TensorRT fuses into
    its fused multi-head attention). The 1/sqrt(head_dim) scale is folded into the query rows of the
    qkv projection before export (:func:`fold_query_scale`), so the graph carries no scaling ``Mul``.
    Head split: ``Reshape(0, 0, heads, head_dim)`` with constant shapes (no ``Shape`` ops) and one
    ``Transpose`` per q, k (to ``(B, H, dh, S)``), v and the output.

Which mode to use where: :func:`default_attention`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from models.timesformer import ATTENTION_IMPLS, Attention, sdpa_attention

#: the attention forms and the ``--attention`` choices (the forms plus ``auto``, see :func:`default_attention`),
#: defined once in export/onnx/forms.py, which imports without torch (for the build's option table)
from export.onnx.forms import ATTENTION_CHOICES, ATTENTION_MODES

#: the opset each mode exports at by default (``onnx`` needs 23 for ``Attention``; 17 is what TensorRT 10.3 parses;
#: ``ort`` is for ONNX Runtime >= 1.23 only, and from opset 20 on GELU is one op that it fuses with its bias, which
#: it does not do for the opset-17 Erf form)
DEFAULT_OPSET = {"onnx": 23, "decomposed": 17, "ort": 23}
MIN_OPSET = {"onnx": 23, "decomposed": 17, "ort": 17}
#: the first TensorRT whose ONNX parser reads the standard ``Attention`` operator
TRT_ATTENTION_MIN = (10, 14)
#: the fastest mode in ONNX Runtime on the CPU (measured with ``python -m export.bench.onnx_forms``, base 8x224, batch
#: 1,
#: 2 threads, ONNX Runtime 1.32: the standard ``Attention`` op, which ONNX Runtime runs as one fused CPU kernel,
#: used the least CPU time; ``MultiHeadAttention`` was within noise, the unfused decomposed form 3-5 % slower)
ORT_DEFAULT = "onnx"
#: the impl name the export registers in ``models.timesformer.ATTENTION_IMPLS``
EXPORT_IMPL = "export_mha"
MS_DOMAIN = "com.microsoft"


@torch.library.custom_op("timesformer_export::mha", mutates_args=())
def _mha_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    return sdpa_attention(q, k, v, num_heads, scale)


@_mha_op.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    return torch.empty_like(q)


def export_mha(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float, dropout_p: float = 0.0
) -> torch.Tensor:
    """The marker attention (an ``ATTENTION_IMPLS`` entry): ``sdpa`` numerics, one node in the exported program."""
    if dropout_p:
        raise ValueError("export_mha: dropout is not exportable; put the model in eval mode")
    return torch.ops.timesformer_export.mha(q, k, v, int(num_heads), float(scale))


ATTENTION_IMPLS.setdefault(EXPORT_IMPL, export_mha)


def default_attention(
    backend: str = "onnxruntime",
    trt_version: str | tuple[int, ...] | None = None,
    precision: str = "fp32",
    strongly_typed: bool = True,
) -> str:
    """The attention mode to export for ``backend``.

    * ``onnxruntime`` (CPU or CUDA provider): :data:`ORT_DEFAULT` (the fastest here; see the bench).
    * ``tensorrt``: per precision and version, from what TensorRT's parser accepts and fuses
      (:func:`export.tensorrt.plan.tensorrt_attention`): ``onnx`` only for strongly typed FP16 on >= 10.14;
      ``decomposed`` for FP32 (no FP32 fused kernel for the parser's non-decomposable ``IAttention``), INT8
      (Q/DQ around the plain matmuls), the builder-flag path, TensorRT < 10.14 and unknown versions.
    """
    b = backend.lower().replace("-", "").replace("_", "")
    if b in ("onnxruntime", "ort", "cpu"):
        return ORT_DEFAULT
    if b in ("tensorrt", "trt"):
        from export.tensorrt.plan import tensorrt_attention

        return tensorrt_attention(precision, trt_version, strongly_typed)
    raise ValueError(f"backend: expected 'onnxruntime' or 'tensorrt', got {backend!r}")


def resolve_attention(
    attention: str,
    backend: str = "onnxruntime",
    trt_version: str | None = None,
    precision: str = "fp32",
    strongly_typed: bool = True,
) -> str:
    """``auto`` -> :func:`default_attention`; an explicit mode is checked against the choices."""
    if attention == "auto":
        return default_attention(backend, trt_version, precision, strongly_typed)
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention: expected one of {ATTENTION_CHOICES}, got {attention!r}")
    return attention


def fold_query_scale(model: torch.nn.Module) -> int:
    """Multiply the query rows of every ``Attention.qkv`` by the attention scale, in place; returns the count.

    Afterwards the modules must run with scale 1 (their ``scale`` attribute is set to 1.0).
    """
    n = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Attention) and m.scale != 1.0:
                d = m.qkv.out_features // 3
                m.qkv.weight[:d].mul_(m.scale)
                if m.qkv.bias is not None:
                    m.qkv.bias[:d].mul_(m.scale)
                m.scale = 1.0
                n += 1
    return n


# --------------------------------------------------------------------------- ONNX translations


def _ms_multi_head_attention() -> Any:
    """``com.microsoft.MultiHeadAttention`` (q, k, v only) as an onnxscript op.

    The ``onnx`` package knows no ``com.microsoft`` schemas, so the op carries a local schema (not
    registered globally) with the part of ONNX Runtime's signature the export uses.
    """
    import onnx.defs
    import onnxscript

    P, A = onnx.defs.OpSchema.FormalParameter, onnx.defs.OpSchema.Attribute
    schema = onnx.defs.OpSchema(
        "MultiHeadAttention",
        MS_DOMAIN,
        1,
        "ONNX Runtime contrib MultiHeadAttention, 3-D query/key/value (batch, seq, hidden)",
        inputs=[P("query", "T"), P("key", "T"), P("value", "T")],
        outputs=[P("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "")],
        attributes=[
            A("num_heads", onnx.defs.OpSchema.AttrType.INT, required=True),
            A("scale", onnx.defs.OpSchema.AttrType.FLOAT, required=False),
        ],
    )
    return onnxscript.values.Op(onnxscript.values.Opset(MS_DOMAIN, 1), "MultiHeadAttention", schema)


def _translation(mode: str, opset: int) -> Callable[..., Any]:
    import onnxscript
    from onnxscript import ir

    op = onnxscript.values.Opset("", opset)

    def _const(values: list[int]) -> Any:
        return op.Constant(value=ir.tensor(values, dtype=ir.DataType.INT64))

    def onnx_attention(q, k, v, num_heads: int, scale: float):
        # The op has three optional outputs (present key/value, qk): only Y is used; the exporter's
        # clean-up drops the unused ones so that no runtime materialises them.
        y, _, _, _ = op.Attention(q, k, v, q_num_heads=num_heads, kv_num_heads=num_heads, scale=scale)
        return y

    def ort_attention(q, k, v, num_heads: int, scale: float):
        return _ms_multi_head_attention()(q, k, v, num_heads=num_heads, scale=scale)

    def decomposed(q, k, v, num_heads: int, scale: float):
        if scale != 1.0:  # fold_query_scale() should have run; keep the graph correct anyway
            q = op.Mul(q, op.Constant(value=ir.tensor(scale, dtype=ir.DataType.FLOAT)))
        width = q.shape[-1] if q.shape is not None and isinstance(q.shape[-1], int) else None
        if width is None:
            raise ValueError("decomposed attention: the width of q must be static")
        heads = _const([0, 0, num_heads, width // num_heads])
        qh = op.Transpose(op.Reshape(q, heads), perm=[0, 2, 1, 3])
        kt = op.Transpose(op.Reshape(k, heads), perm=[0, 2, 3, 1])
        vh = op.Transpose(op.Reshape(v, heads), perm=[0, 2, 1, 3])
        probs = op.Softmax(op.MatMul(qh, kt), axis=-1)
        out = op.Transpose(op.MatMul(probs, vh), perm=[0, 2, 1, 3])
        return op.Reshape(out, _const([0, 0, width]))

    return {"onnx": onnx_attention, "ort": ort_attention, "decomposed": decomposed}[mode]


def translation_table(mode: str, opset: int) -> dict[Callable, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export``: the marker op -> the ONNX form of ``mode``."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode: expected one of {ATTENTION_MODES}, got {mode!r}")
    return {torch.ops.timesformer_export.mha.default: _translation(mode, opset)}
