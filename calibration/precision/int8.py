"""INT8 by explicit quantization: the quantization is written into the ONNX, calibrated on real clips.

Two targets:

``tensorrt``
    Q/DQ (QuantizeLinear/DequantizeLinear) the way TensorRT's explicit quantization wants it: on the
    inputs of MatMul, Gemm and Conv only; weights per-channel symmetric int8; activations symmetric
    int8 with zero point 0; no bias quantization. In the ``decomposed`` attention form both inputs of
    the two batched matmuls get Q/DQ (before Q·Kᵀ, after the softmax, and, through the transpose and
    reshape that TensorRT moves Q/DQ across, after the second matmul), which is what TensorRT's INT8
    fused attention needs. Softmax, LayerNorm, GELU and the residual Adds stay float. Calibration
    (``max`` | ``entropy`` | ``percentile``) runs in ONNX Runtime on the CPU; the ranges are cached as
    JSON keyed by model, calibration set, method and target, so a rebuild does not touch the clips.
    ``engine="modelopt"`` uses NVIDIA ModelOpt instead when it is installed (optional, imported lazily).

``onnxruntime`` (CPU)
    The INT8 form ONNX Runtime runs fastest on this CPU while meeting the accuracy bar: see
    :data:`ORT_FORMS` and :data:`ORT_FORM_WHY` (measured with ``python -m export.bench.precision
    --all-forms``). The form is validated against the FP32 model on calibration clips; when it misses
    the bar the next form is tried.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.files import sha256_file, temp_path_beside, write_json_atomic

from calibration.graph.onnx_compare import validate_against_fp32

__all__ = [
    "METHODS",
    "TARGETS",
    "TRT_FORMS",
    "TRT_DEFAULT_FORM",
    "to_tensorrt_fp16_form",
    "ORT_FORMS",
    "ORT_DEFAULT_FORM",
    "ORT_FORM_WHY",
    "TRT_OP_TYPES",
    "QuantizationError",
    "ClipDataReader",
    "calibrate",
    "quantize_int8",
    "calibration_cache_path",
    "validate_against_fp32",
]

METHODS = ("max", "entropy", "percentile", "mse")  # mse: calibration.precision.clipping (issue 15)
TARGETS = ("tensorrt", "onnxruntime")
#: op types that get Q/DQ for TensorRT (everything else stays float)
TRT_OP_TYPES = ("MatMul", "Gemm", "Conv")
#: the ONNX Runtime CPU forms, fastest first (the order :func:`quantize_int8` tries them in)
ORT_FORMS = ("dynamic", "qoperator", "qdq")
ORT_DEFAULT_FORM = ORT_FORMS[0]
ORT_FORM_WHY = (
    "dynamic INT8 (MatMul/Gemm with per-channel int8 weights; activations quantized per call by "
    "DynamicQuantizeLinear, run as fused integer matmuls) is the fastest form in ONNX Runtime 1.32 on this CPU "
    "(AVX512-VNNI, 2 shared cores), base 8x224 batch 1, attention 'ort', median of 5 after warm-up: quiet machine "
    "FP32 1.44 s, dynamic 0.47 s (3.1x), static QOperator U8S8 0.59 s (2.4x), static QDQ U8S8 0.61 s (2.4x). "
    "Per-channel weights cost no measurable time over per-tensor (AMD Zen 4, 7 interleaved rounds: medians 0.881 "
    "vs 0.868 s, per-round ratios 0.70-1.12, too spread to claim one; FP32 2.24 s) and keep real footage: base "
    "0.9996 vs 0.9991 mean cosine, the motion model 0.9995 vs 0.93. It needs "
    "no calibration ranges, is validated on the calibration clips, and the static forms are the fallback. "
    "Re-measure with python -m export.bench.precision --all-forms."
)
#: dynamic INT8 with one weight scale per output channel: per-tensor weight scales lose what SmoothQuant (and any
#: uneven weight column) puts into a few columns. Motion model on real footage (calibrated on vtest.avi, 24 clips
#: of cup.mp4 and tree.avi, mean / min cosine vs FP32 PyTorch): per-tensor 0.926 / 0.828 unsmoothed and
#: 0.991 / 0.923 smoothed (alpha 0.5); per-channel 0.9995 / 0.9955 unsmoothed, 0.9997 / 0.9984 smoothed (alpha 0.7)
DYNAMIC_PER_CHANNEL = True
#: the accuracy bar a form must meet against FP32 on the validation clips (export/parity.py TOLERANCES["int8"])
VALIDATION_MIN_COSINE = 0.99
_ORT_METHOD = {
    "max": "MinMax",
    "entropy": "Entropy",
    "percentile": "Percentile",
    "mse": "MinMax",
}  # mse ranges are written as a MinMax cache (calibration.precision.clipping)


class QuantizationError(RuntimeError):
    """Quantization that cannot go on; the message names the file, tensor, expected and actual."""


def _log(msg: str) -> None:
    print(f"[int8] {msg}", file=sys.stderr, flush=True)


def _ort_quant():
    import onnxruntime.quantization as q

    return q


class ClipDataReader:
    """Feeds ``(N, T, 3, H, W)`` clips one at a time to ONNX Runtime's calibrators, with a progress bar."""

    def __init__(self, clips: np.ndarray, input_name: str = "video", progress: bool = True, desc: str = "calibrating"):
        from tqdm import tqdm

        self.clips = np.ascontiguousarray(clips, np.float32)
        self.input_name = input_name
        self._i = 0
        self._end = len(self.clips)
        self._bar = tqdm(
            total=len(self.clips), desc=desc, unit="clip", disable=not progress, file=sys.stderr, dynamic_ncols=True
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= self._end:
            self._bar.close()
            return None
        x = self.clips[self._i : self._i + 1]
        self._i += 1
        self._bar.update(1)
        return {self.input_name: x}

    def __iter__(self):
        while (item := self.get_next()) is not None:
            yield item

    def __len__(self) -> int:
        return len(self.clips)

    def rewind(self) -> None:
        self._i = 0

    def set_range(self, start_index: int, end_index: int) -> None:
        self._i, self._end = start_index, min(end_index, len(self.clips))


def calibration_cache_path(cache_dir: Path, model_sha256: str, set_sha256: str, method: str, target: str) -> Path:
    """Where the activation ranges of (model, calibration set, method, target) are kept (JSON)."""
    return Path(cache_dir) / "calib" / f"ranges-{model_sha256[:16]}-{set_sha256[:16]}-{method}-{target}.json"


def _input_name(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise QuantizationError(f"{path}: expected one graph input (the video), found {names}")
    return names[0]


def _check_tensorrt_qdq(path: Path) -> dict[str, Any]:
    """Zero points all 0, int8 only, Q/DQ in the ONNX domain: what TensorRT's explicit quantization accepts."""
    from calibration.graph.onnx_inspect import inspect_onnx

    info = inspect_onnx(path)
    if info["qdq_problems"]:
        raise QuantizationError(
            f"{path}: the Q/DQ model is not buildable by TensorRT:\n  - " + "\n  - ".join(info["qdq_problems"][:10])
        )
    if not info["qdq_nodes"]:
        raise QuantizationError(
            f"{path}: quantization inserted no QuantizeLinear/DequantizeLinear nodes; expected "
            f"Q/DQ on the inputs of {', '.join(TRT_OP_TYPES)}"
        )
    return {
        "qdq_nodes": len(info["qdq_nodes"]),
        "op_counts": {k: v for k, v in info["op_counts"].items() if k in _QDQ_COUNT_OPS},
    }


# ---- TensorRT INT8+FP16 form (issue 14, point 5) ----------------------------------------------------------------
#: the TensorRT Q/DQ forms: "qdq-fp16" (default) has FP16 scales, so that in a strongly typed build each
#: DequantizeLinear outputs FP16 and everything between the INT8 matmuls runs in FP16, with LayerNorm (and any
#: Softmax whose output is not quantized) kept FP32 as in calibration.precision.fp16; attention's quantized Softmax runs
#: in
#: FP16 so that MatMul -> Softmax -> Q has no Cast in it (TensorRT's INT8 fused attention); "qdq-fp32" keeps FP32
#: around the INT8 matmuls (a DequantizeLinear's output type follows its scale's type). "qdq"/"qdq-static"/None
#: mean the default.
TRT_FORMS = (None, "qdq", "qdq-static", "qdq-fp16", "qdq-fp32")
TRT_DEFAULT_FORM = "qdq-fp16"
#: QuantizeLinear/DequantizeLinear take FP16 scales from opset 19
_FP16_QDQ_OPSET = 19


def _toposort(graph: Any) -> None:
    """Order ``graph.node`` topologically (the FP16 converter appends its I/O casts at the end)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = [n for n in pending if not all(i in known for i in n.input)]
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise QuantizationError(f"cycle or missing input around node '{rest[0].name}' ({rest[0].op_type})")
        for n in ready:
            ordered.append(n)
            known.update(n.output)
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _quantized_softmaxes(graph: Any) -> tuple[list[str], list[str]]:
    """(names of the Softmax nodes whose output feeds a QuantizeLinear, names of the other Softmax nodes).

    Why a quantized Softmax runs in FP16 in this form (and not FP32 like every other Softmax):
    * its output is re-quantized to int8 right away (a step of at most 1/127 on its 0..1 range, against FP16's
      ~5e-4 relative rounding), so an FP32 softmax buys no accuracy there; its input, the q·kᵀ MatMul output, was
      FP16 already (FP16-scaled DQ inputs), so no new overflow either. Measured on the motion model in ONNX
      Runtime (200 held-out clips): the same cosine to FP32 as with the FP32 Softmax (min 0.99457, mean 0.99992);
    * TensorRT fuses ``DQ -> MatMul -> Softmax -> Q/DQ -> MatMul`` into its INT8 fused attention only when nothing
      sits between the nodes: an FP32 Softmax needs Cast(fp32) after q·kᵀ (whose FP16-scaled DQ inputs make it
      FP16) and Cast(fp16) before the Q, which break the fusion (facts.md, "TensorRT, ONNX and ONNX Runtime
      facts"). The alternative, FP32 Softmax feeding the Q with an FP32 scale, still needs the Cast after q·kᵀ.
    * ONNX Runtime's CPU provider (1.32) registers no float16 Softmax kernel, but it runs the node all the same:
      it expands Softmax's ONNX function body and its InsertCastTransformer computes that in FP32 between two
      casts (checked with ``optimized_model_filepath``): ONNX Runtime's validation computes it at FP32 precision.
    A Softmax whose output is not quantized (e.g. its p·v MatMul left in float by ``keep_float``) stays FP32.
    """
    quantizes = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    for i, n in enumerate(graph.node):  # node_block_list works by name: name the nameless softmaxes
        if n.op_type == "Softmax" and not n.name:
            n.name = f"Softmax__int8fp16_{i}"
    softmax = [n for n in graph.node if n.op_type == "Softmax"]
    return (
        [n.name for n in softmax if n.output[0] in quantizes],
        [n.name for n in softmax if n.output[0] not in quantizes],
    )


def _quantize_fp32_islands_directly(model: Any) -> int:
    """Rewire ``x(fp32) -> Cast(fp16) -> QuantizeLinear(fp16 scale)`` to ``x -> QuantizeLinear(fp32 scale)``.

    The FP16 converter leaves an FP32 island (a LayerNorm, or a Softmax kept FP32) joined to the Q of the next
    INT8 matmul through a Cast to FP16. QuantizeLinear's ``x`` and ``y_scale`` must share a type, while a
    DequantizeLinear's output type follows its ``x_scale``: so the Q gets an FP32 copy of the scale (the same
    FP16 value, so that Q and DQ still agree exactly) and its DQ keeps the FP16 one, and
    ``Q(fp32) -> int8 -> DQ(fp16 scale) -> fp16`` needs no Cast: TensorRT gets LayerNorm -> Q with no cast layer
    between, and the Q rounds the FP32 value itself (no FP16 rounding first). Returns the Q nodes rewired.
    """
    import onnx
    from onnx import numpy_helper

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in list(g.value_info) + list(g.input)
        if vi.type.HasField("tensor_type")
    }
    types.update({t.name: t.data_type for t in g.initializer})
    fp32_scales: dict[str, str] = {}
    rewired = 0
    for q in g.node:
        if q.op_type != "QuantizeLinear":
            continue
        cast = producer.get(q.input[0])
        if (
            cast is None
            or cast.op_type != "Cast"
            or types.get(cast.input[0]) != onnx.TensorProto.FLOAT
            or next((a.i for a in cast.attribute if a.name == "to"), None) != onnx.TensorProto.FLOAT16
        ):
            continue
        scale = inits.get(q.input[1])
        if scale is None or scale.data_type != onnx.TensorProto.FLOAT16:
            continue  # a computed scale: leave the Cast
        if scale.name not in fp32_scales:
            name = f"{scale.name}_fp32"
            g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(scale).astype(np.float32), name))
            fp32_scales[scale.name] = name
        q.input[0], q.input[1] = cast.input[0], fp32_scales[scale.name]
        rewired += 1
    # drop the casts nobody reads any more, and their value_info
    outputs = {o.name for o in g.output}
    used = {i for n in g.node for i in n.input} | outputs
    dead = [n for n in g.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
    for n in dead:
        g.node.remove(n)
    gone = {o for n in dead for o in n.output}
    keep = [vi for vi in g.value_info if vi.name not in gone]
    del g.value_info[:]
    g.value_info.extend(keep)
    return rewired


def _fp32_rest(
    path: Path, get_clips: Callable[[], np.ndarray] | None, cache: Path | None, progress: bool = False
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The float nodes the INT8+FP16 form keeps FP32 (:func:`fp32_rest_nodes`), from ``cache`` when a run with the
    same model, clips, method and keep-float list wrote it: a warm calibration cache then still reads no clip."""
    from calibration.precision.int8_fp16 import fp32_rest_nodes

    if get_clips is None:
        return [], []
    if cache is not None and cache.is_file():
        try:
            data = json.loads(cache.read_text())
            return list(data["kept"]), list(data["overflowing"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: measure again and replace it
    clips = get_clips()
    _log(f"FP16 analysis of the float rest on {len(clips)} clips (minutes for a large model)")
    kept, overflowing = fp32_rest_nodes(path, clips, progress)
    if cache is not None:
        write_json_atomic(cache, {"kept": kept, "overflowing": overflowing})
    return kept, overflowing


def to_tensorrt_fp16_form(
    path: Path,
    get_clips: Callable[[], np.ndarray] | None = None,
    rest_cache: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Rewrite the FP32-form Q/DQ ONNX at ``path`` in place into the INT8+FP16 form; returns what was done.

    LayerNorm, and each Softmax whose output is not quantized, stay FP32; a Softmax feeding a QuantizeLinear
    (attention's p) runs in FP16 so that ``MatMul -> Softmax -> Q`` has no Cast in it (see
    :func:`_quantized_softmaxes`), and an FP32 island feeds its Q directly (:func:`_quantize_fp32_islands_directly`).
    """
    import onnx
    from onnx import version_converter
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from calibration.precision.fp16 import ALWAYS_FP32_OPS, _name_nodes, _remove_cast_roundtrips
    from calibration.precision.int8_fp16 import guard_fp16_scales

    model = onnx.load(str(path))
    _name_nodes(model)  # the names fp32_rest_nodes decides by (issue 23: FP16 analysis of the float rest)
    kept, overflowing = _fp32_rest(path, get_clips, rest_cache, progress)
    raised = guard_fp16_scales(model)  # issue 23: no Q/DQ scale below FP16's smallest normal
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < _FP16_QDQ_OPSET:
        model = version_converter.convert_version(model, _FP16_QDQ_OPSET)
    fp16_softmax, fp32_softmax = _quantized_softmaxes(model.graph)
    # Softmax is blocked by node name (only the unquantized ones); every other always-FP32 op by type
    model = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=[op for op in ALWAYS_FP32_OPS if op != "Softmax"],
        node_block_list=fp32_softmax + [k["node"] for k in kept],
    )
    _remove_cast_roundtrips(model)
    direct_q = _quantize_fp32_islands_directly(model)
    _toposort(model.graph)
    onnx.checker.check_model(model, full_check=True)  # full: with strict shape and type inference
    tmp = temp_path_beside(path, ".onnx")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "form": "qdq-fp16",
        "opset": max(opset, _FP16_QDQ_OPSET),
        "fp32_ops": [op for op in ALWAYS_FP32_OPS if op != "Softmax" or fp32_softmax],
        "fp16_softmax": len(fp16_softmax),
        "fp32_softmax": len(fp32_softmax),
        "fp32_scale_q": direct_q,
        "between_matmuls": "float16 (FP16 Q/DQ scales)",
        "fp16_scales_raised": raised,
        "kept_fp32": kept if get_clips is not None else None,
        "int8_outputs_over_fp16": overflowing,
    }


# ---- end of the TensorRT INT8+FP16 form ---------------------------------------------------------------------------


# ---- Outlier-aware INT8 (issue 15): SmoothQuant before calibration, MSE clipping, MatMuls kept float ---------------
#: SmoothQuant's migration strength applied before every INT8 build (None: off). Exact in FP32 and free at run time
#: (the scales fold into the LayerNorms and the MatMul weights: calibration.precision.smoothquant); it is what lets the
#: per-call, per-tensor activation quantization of the dynamic form survive outlier channels.
SMOOTH_DEFAULT_ALPHA: float | None = 0.5
#: bumped when the outlier handling changes what an INT8 build produces (part of the precision cache key)
OUTLIER_HANDLING_VERSION = 2  # 2: FP16 Q/DQ scales raised to FP16's smallest normal, the float rest analysed (issue 23)


def outlier_defaults() -> dict[str, Any]:
    """The default outlier handling, for cache keys and build records."""
    return {"smooth": SMOOTH_DEFAULT_ALPHA, "keep_float": None, "version": OUTLIER_HANDLING_VERSION}


def _calibrate_mse_hook(fp32_onnx: Path, reader: Any, op_types: list[str], ranges: Path, symmetric: bool) -> None:
    from calibration.precision.clipping import calibrate_mse

    calibrate_mse(fp32_onnx, reader, op_types, ranges, symmetric)


def _smooth_hook(
    fp32_onnx: Path,
    model_sha: str,
    smooth: float | None | str,
    clips: Callable[[], np.ndarray],
    set_sha256: Callable[[], str] | str,
    cache_dir: Path,
) -> tuple[Path, dict[str, Any] | None]:
    """The SmoothQuant'ed FP32 model (cached by model, calibration set and alpha) and what was smoothed."""
    import json

    from runtime.files import write_json_atomic

    from calibration.precision.smoothquant import SmoothQuantError, smooth_onnx

    alpha = SMOOTH_DEFAULT_ALPHA if smooth == "default" else smooth
    if alpha is None:
        return fp32_onnx, None
    if isinstance(alpha, str) or not 0.0 <= float(alpha) <= 1.0:
        raise QuantizationError(f"smooth: expected a SmoothQuant alpha in 0..1, None or 'default'; got {smooth!r}")
    sha = set_sha256() if callable(set_sha256) else set_sha256
    path = Path(cache_dir) / "smooth" / f"smooth-{model_sha[:16]}-{sha[:16]}-a{float(alpha):.3f}.onnx"
    record = path.with_suffix(".json")
    if path.is_file() and record.is_file():
        info = json.loads(record.read_text())
        info["cache"] = "hit"
        return path, info
    try:
        info = smooth_onnx(fp32_onnx, path, clips(), float(alpha))
    except SmoothQuantError as e:
        _log(f"SmoothQuant skipped: {e}")
        return fp32_onnx, {"alpha": float(alpha), "skipped": str(e)}
    info["engine"] = "calibration.precision.smoothquant"
    write_json_atomic(record, info)
    _log(f"SmoothQuant (alpha {alpha}): {info['layernorms_smoothed']} LayerNorms, {info['matmuls_smoothed']} MatMuls")
    return path, {**info, "cache": "miss"}


# ---- end of outlier-aware INT8 ------------------------------------------------------------------------------------


_QDQ_COUNT_OPS = ("QuantizeLinear", "DequantizeLinear", "MatMul", "Gemm", "Conv", "Softmax", "LayerNormalization")


#: histogram settings per method (ONNX Runtime's quantize_static would use 128/128 bins for entropy, which is
#: no clipping at all; these follow TensorRT's entropy calibrator: 2048 bins folded into 128 quantized bins)
CALIBRATOR_OPTIONS: dict[str, dict[str, Any]] = {
    "max": {},
    "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.999},
}


def calibrate(
    fp32_onnx: Path,
    clips: np.ndarray,
    method: str,
    op_types: list[str],
    ranges: Path,
    symmetric: bool,
    progress: bool = True,
) -> None:
    """Run ``method`` calibration of the inputs of ``op_types`` on ``clips``; write the ranges JSON atomically."""
    q = _ort_quant()
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    reader = ClipDataReader(clips, _input_name(fp32_onnx), progress, desc=f"calibrating ({method})")
    if method == "mse":  # issue 15 hook: MSE clipping search (calibration.precision.clipping)
        _calibrate_mse_hook(fp32_onnx, reader, op_types, ranges, symmetric)
        return
    options = dict(CALIBRATOR_OPTIONS[method], symmetric=symmetric)
    _log(f"calibrating {fp32_onnx.name} on {len(clips)} clips ({method}) -> {ranges}")
    with tempfile.TemporaryDirectory(prefix="int8-calib-") as tmp:
        calibrator = create_calibrator(
            fp32_onnx,
            op_types,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=getattr(q.CalibrationMethod, _ORT_METHOD[method]),
            extra_options=options,
        )
        calibrator.collect_data(reader)
        tensors = calibrator.compute_data()
        del calibrator
    save_tensors_data(tensors, ranges)  # atomic (temporary file + rename)


def _quantize_tensorrt_ort(
    fp32_onnx: Path,
    out: Path,
    method: str,
    get_clips: Callable[[], np.ndarray],
    ranges: Path,
    progress: bool,
    exclude: list[str] | None = None,
    weight_bits: int = 8,
) -> dict[str, Any]:
    q = _ort_quant()
    hit = ranges.is_file()
    if not hit:
        calibrate(fp32_onnx, get_clips(), method, list(TRT_OP_TYPES), ranges, symmetric=True, progress=progress)
    else:
        _log(f"reusing the calibration ranges {ranges}")
    extra: dict[str, Any] = {
        "ActivationSymmetric": True,  # int8 activations, zero point 0
        "WeightSymmetric": True,
        "QuantizeBias": False,  # TensorRT fuses float biases itself
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1, "Gemm": 0, "Conv": 0},
        # Q/DQ on the inputs only: a quantized MatMul output would put the bias Add and residual in int8.
        "OpTypesToExcludeOutputQuantization": list(TRT_OP_TYPES),
        "DedicatedQDQPair": False,
        "AddQDQPairToWeight": False,
    }
    _log(f"writing the Q/DQ file ({weight_bits}-bit weights, onnxruntime.quantization)")
    tmp = temp_path_beside(out, ".onnx")
    try:
        q.quantize_static(
            str(fp32_onnx),
            str(tmp),
            None,
            quant_format=q.QuantFormat.QDQ,
            op_types_to_quantize=list(TRT_OP_TYPES),
            per_channel=True,
            activation_type=q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=getattr(q.CalibrationMethod, _ORT_METHOD[method]),
            extra_options=extra,
            calibration_cache_path=str(ranges),
            nodes_to_exclude=list(exclude or []),
            reduce_range=weight_bits == 7,  # weights only (activations keep 8 bits): [-64, 64] from float
        )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "engine": "onnxruntime.quantization",
        "form": "qdq-static",
        "calibration_cache": "hit" if hit else "miss",
        "ranges_file": str(ranges),
        "op_types": list(TRT_OP_TYPES),
        "weights": "int8 per-channel symmetric"
        + (", 7-bit range [-64, 64] quantized from float (reduce_range)" if weight_bits == 7 else ""),
        "weight_bits": weight_bits,
        "activations": "int8 per-tensor symmetric (zero point 0)",
        "bias": "float (not quantized)",
    }


def _quantize_tensorrt_modelopt(
    fp32_onnx: Path, out: Path, method: str, get_clips: Callable[[], np.ndarray]
) -> dict[str, Any]:
    try:
        from modelopt.onnx.quantization import quantize as mo_quantize
    except ImportError as e:
        raise QuantizationError(
            f"engine='modelopt' needs nvidia-modelopt[onnx] ({e}); it is optional: pip install "
            "'nvidia-modelopt[onnx]' (pulls CUDA PyTorch), or use the default engine"
        ) from e
    if method not in ("max", "entropy"):
        raise QuantizationError(f"engine='modelopt' calibrates with 'max' or 'entropy'; got {method!r}")
    clips = get_clips()
    tmp = temp_path_beside(out, ".onnx")
    try:
        mo_quantize(
            str(fp32_onnx),
            quantize_mode="int8",
            calibration_data={_input_name(fp32_onnx): clips},
            calibration_method=method,
            calibration_eps=["cpu"],
            output_path=str(tmp),
        )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"engine": "modelopt", "form": "qdq-static", "calibration_cache": None}


def _quantize_ort_form(
    fp32_onnx: Path,
    out: Path,
    form: str,
    method: str,
    get_clips: Callable[[], np.ndarray],
    ranges_path: Callable[[], Path],
    progress: bool,
    exclude: list[str] | None = None,
) -> dict[str, Any]:
    q = _ort_quant()
    tmp = temp_path_beside(out, ".onnx")
    try:
        if form == "dynamic":
            q.quantize_dynamic(
                str(fp32_onnx),
                str(tmp),
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=DYNAMIC_PER_CHANNEL,
                weight_type=q.QuantType.QInt8,
                nodes_to_exclude=list(exclude or []),
            )
            info: dict[str, Any] = {
                "calibration_cache": None,
                "op_types": ["MatMul", "Gemm"],
                "weights": "int8 per-channel" if DYNAMIC_PER_CHANNEL else "int8 per-tensor",
                "activations": "uint8, quantized at run time",
            }
        else:
            ranges = ranges_path()  # keyed by the set's sha256: only static forms need it
            hit = ranges.is_file()
            if not hit:
                calibrate(
                    fp32_onnx,
                    get_clips(),
                    method,
                    ["MatMul", "Gemm", "Conv"],
                    ranges,
                    symmetric=False,
                    progress=progress,
                )
            extra: dict[str, Any] = {"WeightSymmetric": True}
            q.quantize_static(
                str(fp32_onnx),
                str(tmp),
                None,
                quant_format=q.QuantFormat.QDQ if form == "qdq" else q.QuantFormat.QOperator,
                op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                per_channel=True,
                activation_type=q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                calibrate_method=getattr(q.CalibrationMethod, _ORT_METHOD[method]),
                extra_options=extra,
                calibration_cache_path=str(ranges),
                nodes_to_exclude=list(exclude or []),
            )
            info = {
                "calibration_cache": "hit" if hit else "miss",
                "ranges_file": str(ranges),
                "op_types": ["MatMul", "Gemm", "Conv"],
                "weights": "int8 per-channel symmetric",
                "activations": "uint8 per-tensor (calibrated)",
            }
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "engine": "onnxruntime.quantization",
        "form": {"dynamic": "dynamic", "qdq": "qdq-static", "qoperator": "qoperator-static"}[form],
        **info,
    }


def _quantize_for_tensorrt(
    fp32_onnx: Path,
    out: Path,
    form: str | None,
    engine: str,
    method: str,
    clips: Callable[[], np.ndarray],
    ranges_for: Callable[[str], Path],
    progress: bool,
    keep_float: list[str] | None,
    validate_clips: int,
    weight_bits: int = 8,
) -> dict[str, Any]:
    """The Q/DQ INT8 model TensorRT compiles (``form``: one of :data:`TRT_FORMS`), checked and validated."""
    if form not in TRT_FORMS:
        raise QuantizationError(
            f"target 'tensorrt' takes the Q/DQ forms {TRT_FORMS} (None: {TRT_DEFAULT_FORM!r}); got form {form!r}"
        )
    if engine == "modelopt":
        if weight_bits != 8:
            raise QuantizationError(f"engine='modelopt' writes 8-bit weights; got weight_bits={weight_bits}")
        info = _quantize_tensorrt_modelopt(fp32_onnx, out, method, clips)
    elif engine == "onnxruntime":
        info = _quantize_tensorrt_ort(
            fp32_onnx, out, method, clips, ranges_for("tensorrt"), progress, keep_float, weight_bits
        )
    else:
        raise QuantizationError(f"engine {engine!r}: expected 'onnxruntime' or 'modelopt'")
    if (form or TRT_DEFAULT_FORM) == "qdq-fp16":
        ranges = ranges_for("tensorrt")
        keep = hashlib.sha256(json.dumps(keep_float, sort_keys=True, default=str).encode()).hexdigest()[:12]
        rest = ranges.with_name(f"{ranges.stem}.fp16-rest-{keep}.json")
        info.update(to_tensorrt_fp16_form(out, clips, rest_cache=rest, progress=progress))
    else:
        info["form"] = "qdq-fp32"
    info.update(_check_tensorrt_qdq(out))
    info["validation"] = None
    if validate_clips:
        _log(f"validating the INT8 file against FP32 on {validate_clips} clips")
        metrics, _ = validate_against_fp32(fp32_onnx, out, clips()[:validate_clips])
        info["validation"] = metrics
    return info


def _quantize_for_onnxruntime(
    fp32_onnx: Path,
    out: Path,
    form: str | None,
    method: str,
    clips: Callable[[], np.ndarray],
    ranges_for: Callable[[str], Path],
    progress: bool,
    keep_float: list[str] | None,
    validate_clips: int,
) -> dict[str, Any]:
    """The ONNX Runtime INT8 model: ``form``, or the first of :data:`ORT_FORMS` that meets the bar."""
    if form is not None and form not in ORT_FORMS:
        raise QuantizationError(f"form {form!r}: expected one of {ORT_FORMS} (or None: fastest meeting the bar)")
    candidates = [form] if form else list(ORT_FORMS)
    tried: list[dict[str, Any]] = []
    reference = None
    info: dict[str, Any] = {}
    for i, f in enumerate(candidates):
        info = _quantize_ort_form(
            fp32_onnx, out, f, method, clips, lambda: ranges_for("onnxruntime-static"), progress, keep_float
        )
        if not validate_clips:
            info["validation"] = None
            break
        metrics, reference = validate_against_fp32(fp32_onnx, out, clips()[:validate_clips], reference)
        info["validation"] = metrics
        tried.append({"form": info["form"], "min_cosine": metrics["min_cosine"]})
        if metrics["min_cosine"] >= VALIDATION_MIN_COSINE or i == len(candidates) - 1:
            if metrics["min_cosine"] < VALIDATION_MIN_COSINE:
                _log(
                    f"warning: {info['form']} INT8 misses the bar (min cosine {metrics['min_cosine']:.5f} < "
                    f"{VALIDATION_MIN_COSINE}) and no other form is left"
                )
            break
        _log(
            f"{info['form']} INT8: min cosine {metrics['min_cosine']:.5f} < {VALIDATION_MIN_COSINE}; "
            f"trying {candidates[i + 1]}"
        )
    info["forms_tried"] = tried
    info["why"] = ORT_FORM_WHY if form is None else f"form {form!r} asked for"
    return info


def quantize_int8(
    fp32_onnx: str | os.PathLike,
    out: str | os.PathLike,
    target: str,
    method: str,
    get_clips: Callable[[], np.ndarray],
    set_sha256: Callable[[], str] | str,
    cache_dir: str | os.PathLike,
    form: str | None = None,
    engine: str = "onnxruntime",
    validate_clips: int = 4,
    progress: bool = True,
    smooth: float | None | str = "default",
    keep_float: list[str] | None = None,
    weight_bits: int = 8,
) -> dict[str, Any]:
    """Write the INT8 model of ``fp32_onnx`` for ``target`` to ``out`` (atomically); returns what was done.

    ``get_clips`` returns the calibration clips; it is called only when the clips are needed (a cold
    range cache, or validation), so a warm cache reads no video. ``set_sha256`` (or a callable giving
    it) keys the range cache. ``form`` (onnxruntime only): one of :data:`ORT_FORMS`, or None to take
    the fastest that meets the accuracy bar on ``validate_clips`` clips. ``smooth``: SmoothQuant alpha applied
    first ("default": :data:`SMOOTH_DEFAULT_ALPHA`; None: off); ``keep_float``: MatMul/Gemm node names left in
    float (from :func:`calibration.precision.int8_search.choose_keep_float`). ``weight_bits`` (``tensorrt``
    target): 8, or 7 for the ``portable`` CPU form (:mod:`calibration.precision.cpu_int8`): weights quantized from
    float into [-64, 64], whose 16-bit pair sums cannot saturate on x86 without VNNI.
    """
    fp32_onnx, out, cache_dir = Path(fp32_onnx), Path(out), Path(cache_dir)
    if target not in TARGETS:
        raise QuantizationError(f"target {target!r}: expected one of {TARGETS}")
    if method not in METHODS:
        raise QuantizationError(f"calibration method {method!r}: expected one of {METHODS}")
    if weight_bits not in (7, 8) or (weight_bits == 7 and target != "tensorrt"):
        raise QuantizationError(
            f"weight_bits {weight_bits!r}: expected 8, or 7 for the tensorrt target's Q/DQ file (the CPU portable "
            "form; ONNX Runtime's INT8 runs exact kernels instead)"
        )
    if not fp32_onnx.is_file():
        raise QuantizationError(f"{fp32_onnx}: FP32 ONNX not found")
    t0 = time.perf_counter()
    model_sha = sha256_file(fp32_onnx)
    clips_cache: dict[str, np.ndarray] = {}

    def clips() -> np.ndarray:
        if "c" not in clips_cache:
            clips_cache["c"] = np.asarray(get_clips(), np.float32)
        return clips_cache["c"]

    def ranges_for(t: str) -> Path:
        sha = set_sha256() if callable(set_sha256) else set_sha256
        return calibration_cache_path(cache_dir, model_sha, sha, method, t)

    # issue 15 hook: SmoothQuant folded into the FP32 model first (exact in FP32); ranges then key on the result
    fp32_onnx, smooth_info = _smooth_hook(fp32_onnx, model_sha, smooth, clips, set_sha256, cache_dir)
    model_sha = sha256_file(fp32_onnx) if smooth_info and not smooth_info.get("skipped") else model_sha

    if target == "tensorrt":
        info = _quantize_for_tensorrt(
            fp32_onnx, out, form, engine, method, clips, ranges_for, progress, keep_float, validate_clips, weight_bits
        )
    else:
        info = _quantize_for_onnxruntime(
            fp32_onnx, out, form, method, clips, ranges_for, progress, keep_float, validate_clips
        )
    info.update({"smoothquant": smooth_info, "kept_float": list(keep_float or [])})  # issue 15
    info.update(
        {
            "target": target,
            "method": method if info.get("calibration_cache") is not None else None,
            "seconds": round(time.perf_counter() - t0, 2),
            "clips_read": "c" in clips_cache,
        }
    )
    return info
