"""What ``make engine`` builds, decided once, before any work: :class:`BuildTarget`.

:func:`resolve_target` turns a :class:`~export.bundle.options.BuildRequest` into a frozen target: the backend
(``auto`` resolved, with the reason), the ONNX attention form, the precision step (which ONNX the engine is built
from, for which target, in which INT8 form), the TensorRT plan (TensorRT builds) and the output folder. Everything
the request cannot build is refused here, as :class:`BuildError`, before a model is loaded.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.options import PRECISIONS, Backend, Precision

from calibration.precision.metrics import TOLERANCES

from export.bundle.options import BACKEND_CHOICES, BuildRequest

__all__ = [
    "BuildError",
    "BuildTarget",
    "resolve_target",
    "choose_backend",
    "trt_options",
    "plan_only",
    "default_out",
    "OPENVINO_WHY",
]

#: why ``auto`` prefers OpenVINO to ONNX Runtime on x86 CPUs (``make bench-cpu``, base 8x224, batch 1, one run)
OPENVINO_WHY = (
    "faster than ONNX Runtime at every precision in make bench-cpu (base 8x224, 2-core AMD Zen 5, two "
    "runs, medians against ONNX Runtime FP32: OpenVINO FP32 0.87-0.88x, FP16 bundle in bf16 0.43-0.45x, "
    "INT8 Q/DQ 0.26-0.27x; ONNX Runtime INT8 0.38x)"
)


class BuildError(RuntimeError):
    """A build that cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class BuildTarget:
    """The build, resolved: every decision the steps act on."""

    precision: Precision
    backend: Backend
    backend_why: str
    #: the ONNX attention form exported (``export/onnx/forms.py``)
    attention: str
    #: the precision of the ONNX the engine is built from: FP32 when the backend converts it itself (TensorRT's
    #: builder-flag FP16, OpenVINO's FP16 hint) or for FP32; else the precision step converts it
    onnx_precision: Precision
    #: the precision step's target (``tensorrt``: the Q/DQ form that TensorRT and OpenVINO read), or None
    precision_target: str | None
    #: the INT8 Q/DQ form of a TensorRT-read INT8 ONNX (``qdq-fp16``/``qdq-fp32``), else None
    int8_form: str | None
    out: Path
    #: the parity tolerance against FP32 PyTorch (``calibration.precision.metrics.TOLERANCES``, or the TensorRT
    #: plan's own, e.g. TF32's), written into the manifest
    tolerance: dict[str, float]
    #: TensorRT builds: the installed version and its build plan (:func:`export.tensorrt.plan.plan_request`)
    trt_version: str | None = None
    trt_plan: Any = None
    #: OpenVINO INT8: the CPU INT8 form (:mod:`calibration.precision.cpu_int8`) and why (naming this CPU's ISA)
    cpu_int8_form: str | None = None
    cpu_int8_why: str | None = None

    @property
    def converts(self) -> bool:
        """Whether the precision step writes a converted ONNX (FP16 or INT8 Q/DQ)."""
        return self.onnx_precision != Precision.FP32

    def precision_note(self, calib: str | None) -> str:
        """The build log's line for the precision step."""
        if self.converts:
            return f"{self.precision}: calibrating on {calib or 'synthetic clips'}"
        if self.precision == Precision.FP16 and self.backend == Backend.TENSORRT:
            return "fp16 on the builder-flag path: the FP32 ONNX + BuilderFlag.FP16 (LayerNorm/Softmax FP32)"
        if self.precision == Precision.FP16:
            return (
                "fp16 on OpenVINO: the FP32 ONNX, run with INFERENCE_PRECISION_HINT bf16 (or f16) where the CPU "
                "has it (OpenVINO keeps its own FP32 islands)"
            )
        return "fp32: no calibration"

    def precision_kwargs(self) -> dict[str, Any]:
        """Extra arguments of the precision step (:func:`export.bundle.precision_step.precision_onnx`)."""
        kw: dict[str, Any] = {"form": self.int8_form} if self.int8_form else {}
        if self.cpu_int8_form == "portable":  # 7-bit weights quantized from float, not narrowed from 8 bits
            kw["int8_options"] = {"weight_bits": 7}
        return kw


def choose_backend(requested: str, precision: str | None = None) -> tuple[str, str]:
    """The backend to build for, and why (``auto``: by this CPU's INT8 instructions too, runtime/cpu_isa.py)."""
    if requested not in BACKEND_CHOICES:
        raise BuildError(f"BACKEND={requested!r}: expected one of {BACKEND_CHOICES}")
    from runtime.backends.tensorrt_detect import tensorrt_available

    ok, reason = tensorrt_available()
    if requested == Backend.ONNXRUNTIME:
        return Backend.ONNXRUNTIME, "asked for"
    if requested == Backend.OPENVINO:
        ov_ok, ov_reason = _openvino_available()
        if not ov_ok:
            raise BuildError(
                f"BACKEND=openvino, but {ov_reason}: pip install -e './runtime[openvino]' (or "
                "pip install 'openvino>=2025.0'), or use BACKEND=onnxruntime."
            )
        return Backend.OPENVINO, f"asked for; {ov_reason}"
    if requested == Backend.TENSORRT:
        if not ok:
            raise BuildError(
                f"BACKEND=tensorrt, but {reason}. Install TensorRT on a machine with an NVIDIA GPU "
                "(pip install '.[tensorrt]'; JetPack ships it on Jetson) or use BACKEND=onnxruntime."
            )
        return Backend.TENSORRT, "asked for"
    if ok:
        return Backend.TENSORRT, f"auto: {reason}"
    ov_ok, ov_reason = _openvino_available()
    from runtime.cpu_isa import auto_cpu_backend  # issue 25

    isa_choice, isa_why = auto_cpu_backend(precision, ov_ok)
    if isa_choice == "onnxruntime":
        return Backend.ONNXRUNTIME, f"auto: TensorRT not usable here ({reason}); {isa_why}"
    if ov_ok and platform.machine().lower() in ("x86_64", "amd64"):
        return Backend.OPENVINO, (f"auto: TensorRT not usable here ({reason}); {isa_why}; {ov_reason}: {OPENVINO_WHY}")
    return Backend.ONNXRUNTIME, (
        f"auto: TensorRT not usable here ({reason}); ONNX Runtime on the CPU{'' if ov_ok else f' ({ov_reason})'}"
    )


def _openvino_available() -> tuple[bool, str]:
    from runtime.backends.openvino_backend import openvino_available

    return openvino_available()


def _check_precision(precision: str) -> Precision:
    if precision not in PRECISIONS:
        raise BuildError(f"PRECISION={precision!r}: expected one of {PRECISIONS}")
    return Precision(precision)


def resolve_target(req: BuildRequest, log: Any = None) -> BuildTarget:
    """Every decision of the build, from ``req`` alone (TensorRT and OpenVINO are probed, nothing is loaded or
    written); ``log`` (a callable) gets the backend line as soon as it is chosen. Raises :class:`BuildError`."""
    from export.onnx.attention import resolve_attention

    precision = _check_precision(req.precision)
    name, why = choose_backend(req.backend, req.precision)
    backend = Backend(name)
    if log is not None:
        log(f"[engine] backend: {backend} ({why})")
    trt_version = plan = None
    if backend == Backend.TENSORRT:
        from runtime.backends.tensorrt_detect import import_tensorrt

        trt_version = str(import_tensorrt().__version__)  # checked available above
        plan = _plan_request(req, trt_version)  # refuses what this TensorRT cannot build, before any work
    # OpenVINO reads the ``Attention`` operator (the ONNX Runtime form) for FP32/FP16 and takes TensorRT's Q/DQ
    # file, with TensorRT's form, for INT8: one calibrated file for both
    qdq_reader = backend == Backend.TENSORRT or (backend == Backend.OPENVINO and precision == Precision.INT8)
    try:
        attention = resolve_attention(
            req.attention,
            (Backend.TENSORRT if qdq_reader else Backend.ONNXRUNTIME).value,
            trt_version,
            precision=precision.value,
            strongly_typed=req.strongly_typed,
        )
    except ValueError as e:
        raise BuildError(str(e)) from e
    backend_converts_fp16 = precision == Precision.FP16 and (
        backend == Backend.OPENVINO or (backend == Backend.TENSORRT and not req.strongly_typed)
    )
    onnx_precision = Precision.FP32 if backend_converts_fp16 else precision
    int8_form = cpu_form = cpu_why = None
    if onnx_precision == Precision.INT8 and backend in (Backend.TENSORRT, Backend.OPENVINO):
        # FP16 between the matmuls strongly typed (unless asked for FP32); FP32 on the builder-flag path
        int8_form = f"qdq-{req.int8_form if req.strongly_typed else 'fp32'}"
    if onnx_precision == Precision.INT8 and backend == Backend.OPENVINO:
        from calibration.precision.cpu_int8 import choose_cpu_int8_form

        try:
            cpu_form, cpu_why = choose_cpu_int8_form()
        except ValueError as e:
            raise BuildError(str(e)) from e
    return BuildTarget(
        precision=precision,
        backend=backend,
        backend_why=why,
        attention=attention,
        onnx_precision=onnx_precision,
        precision_target=(Backend.TENSORRT.value if backend == Backend.OPENVINO else backend.value)
        if onnx_precision != Precision.FP32
        else None,
        int8_form=int8_form,
        out=default_out(req, backend),
        tolerance=getattr(plan, "parity_tolerance", None) or TOLERANCES[precision],
        trt_version=trt_version,
        trt_plan=plan,
        cpu_int8_form=cpu_form,
        cpu_int8_why=cpu_why,
    )


def default_out(req: BuildRequest, backend: str) -> Path:
    """``OUT``, or ``engines/<model>-<precision>-<backend>``."""
    return Path(req.out or f"engines/{Path(req.model).stem}-{req.precision}-{backend}")


def trt_options(req: BuildRequest, clip_shape: list[int] | None = None) -> Any:
    """The TensorRT build options of a request (:class:`export.tensorrt.plan.TensorRTBuildOptions`)."""
    from export.tensorrt.plan import TensorRTBuildOptions

    return TensorRTBuildOptions(
        precision=req.precision,
        strongly_typed=req.strongly_typed,
        batch=tuple(req.batch),
        input_name="video",
        input_shape=tuple(clip_shape) if clip_shape else None,
        workspace_mib=req.workspace_mib,
        timing_cache=req.timing_cache or str(Path(req.cache_dir) / "trt_timing.cache"),
        dla_core=req.dla_core,
        hardware_compatibility=req.hardware_compatibility,
        version_compatible=req.version_compatible,
        int8_form=req.int8_form,
        cuda_graph=req.cuda_graph,
        tf32=req.tf32,
    )


def _plan_request(req: BuildRequest, trt_version: str, clip_shape: list[int] | None = None) -> Any:
    """:func:`export.tensorrt.plan.plan_request` for ``req``; TensorRTBuildError becomes BuildError."""
    from export.tensorrt.plan import TensorRTBuildError, plan_request

    try:
        return plan_request(trt_options(req, clip_shape), trt_version, attention=req.attention)
    except TensorRTBuildError as e:
        raise BuildError(str(e)) from e


#: ``--plan-only``: what each ONNX precision of a plan hands to TensorRT
_ONNX_HANDED = {
    "fp32": "the FP32 ONNX",
    "fp16": "the FP16 ONNX (LayerNorm and nodes the FP16 analysis flags FP32); decomposed attention: its Softmax "
    "between two FP16 MatMuls handed over FP16 with no Cast, the MatMul-Softmax-MatMul TensorRT fuses (see "
    "attention_softmax)",
    "int8-qdq-fp16": "the Q/DQ ONNX, FP16 scales and activations between the INT8 matmuls (scales below FP16's "
    "smallest normal raised to it), LayerNorm, unquantized Softmax and nodes the FP16 analysis flags "
    "FP32; a re-quantized attention Softmax FP16 (INT8 fused attention)",
    "int8-qdq-fp32": "the Q/DQ ONNX, FP32 around the INT8 matmuls",
}


def plan_only(req: BuildRequest, trt_version: str) -> dict[str, Any]:
    """What ``--backend tensorrt`` would build with TensorRT ``trt_version``, without TensorRT or a GPU."""
    _check_precision(req.precision)
    clip_shape = _model_clip_shape(req.model)
    plan = _plan_request(req, trt_version, clip_shape)
    d = plan.to_dict()
    b = req.batch
    d["profile"] = {
        "input": "video",
        "min": [b[0], *clip_shape],
        "opt": [b[1], *clip_shape],
        "max": [b[2], *clip_shape],
    }
    d["model"] = req.model
    d["onnx_handed_to_tensorrt"] = _ONNX_HANDED[plan.onnx_precision]
    return d


def _model_clip_shape(model: str) -> list[int]:
    """(frames, 3, H, W) of a preset or checkpoint, read from its config (no weights for presets)."""
    from models import PRESETS

    if model in PRESETS:
        c = PRESETS[model].config
    elif model.endswith(".onnx") and Path(model).is_file():  # MODEL=model.onnx (export/bundle/onnx_source.py)
        from export.bundle.onnx_layout import OnnxLayoutError, onnx_clip_shape

        try:
            return onnx_clip_shape(model)
        except OnnxLayoutError as e:
            raise BuildError(str(e)) from e
    else:
        if not Path(model).exists():
            raise BuildError(f"MODEL={model!r}: neither a preset ({', '.join(sorted(PRESETS))}) nor an existing path")
        from models import load_checkpoint

        c = load_checkpoint(Path(model)).config
    return [c.num_frames, c.in_chans, c.image_size, c.image_size]
