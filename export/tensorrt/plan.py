"""What TensorRT will be asked to build, decided without TensorRT (pure Python; ``onnx`` only with an ONNX file).

* :func:`plan_request` — from the options and a TensorRT version alone: the attention form to export, the
  ONNX precision to hand over, typing mode, creation/builder flags, layers pinned to FP32, config and the
  manifest ``session``. Used by ``python -m export.bundle.build --plan-only`` on a workstation.
* :func:`plan_build` — the same, checked against a real ONNX file (precision, Q/DQ, Attention nodes,
  contrib ops, input shapes) plus the optimisation profile: exactly what ``export.tensorrt.build``
  hands to TensorRT.

Both return a frozen :class:`TensorRTPlan` and raise :class:`TensorRTBuildError` for a combination that
cannot build, naming the file, tensor, expected and actual values.

Rules, by TensorRT version (read from TensorRT's Python binding sources and onnx-tensorrt):

=============================  ==========================================================================
``EXPLICIT_BATCH``             creation flag before 10 only (ignored from 10.0)
``STRONGLY_TYPED``             opt-in creation flag in 10; always on (flag ignored) in 11
``BuilderFlag.FP16/INT8``      10 only (removed in 11), not with ``STRONGLY_TYPED``: the "builder-flag path"
precision constraints          ``OBEY_PRECISION_CONSTRAINTS``, ``ILayer.precision``, ``set_output_type``: 10 only
ONNX ``Attention``             parsed from 10.14 into an ``IAttention`` that is not decomposable (the importer
                               reads ``TRT_decomposable``, default 0: onnx/onnx-tensorrt
                               builtin_op_importers.cpp, Attention importer), so it needs a fused kernel, and
                               there is none for FP32: FP32 engines get the ``decomposed`` form
``SAME_COMPUTE_CAPABILITY``    hardware-compatibility level from 10.9 (``AMPERE_PLUS`` from 8.6)
``BuilderFlag.TF32``           set by default by TensorRT (Ampere, Hopper, Orin: FP32 matmuls in TF32). Cleared
                               here unless ``tf32=True``: FP32 means strict FP32; TF32 is a choice of its own
                               with its own parity tolerance (:data:`TF32_TOLERANCE`)
DLA profiles                   min = opt = max (NvInfer.h, ``IOptimizationProfile``: DLA has no dynamic
                               shapes): a DLA plan needs a static batch, refused here otherwise
FP16 attention, decomposed     ``MatMul -> Softmax -> MatMul`` with FP16 matmuls fuses into TensorRT's fused
                               MHA only with nothing between the nodes; the FP16 ONNX keeps Softmax FP32
                               between two Casts, so the builder gets it rewritten (``export.tensorrt.
                               fp16_attention``): the attention Softmax in FP16, no Cast (``attention_softmax``)
ONNX ``Attention``, no kernel  a non-decomposable ``IAttention`` without a fused kernel (GPU, shape,
                               hardware-compatibility mode) fails the build: rebuilt once with
                               ``IAttention.decomposable = True`` (TensorRT's multi-kernel form), recorded
=============================  ==========================================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration.graph.onnx_inspect import OnnxInspectError, check_precision, inspect_onnx
from runtime.backends.tensorrt_session import TensorRTSession
from runtime.options import PRECISIONS
from runtime.versions import VersionError, parse_version

__all__ = [
    "PRECISIONS",
    "INT8_FORMS",
    "HARDWARE_COMPATIBILITY",
    "FP32_PINNED_LAYER_TYPES",
    "ATTENTION_MIN_TRT",
    "TF32_TOLERANCE",
    "TensorRTBuildError",
    "TensorRTBuildOptions",
    "TensorRTPlan",
    "tensorrt_attention",
    "plan_request",
    "plan_build",
    "parse_trt_version",
]

INT8_FORMS = ("fp16", "fp32")
HARDWARE_COMPATIBILITY = {
    "none": "NONE",
    "ampere_plus": "AMPERE_PLUS",
    "same_compute_capability": "SAME_COMPUTE_CAPABILITY",
}
#: the first TensorRT with each hardware-compatibility level
HARDWARE_COMPATIBILITY_MIN_TRT = {"ampere_plus": (8, 6), "same_compute_capability": (10, 9)}
#: TensorRT layer types pinned to FP32 on the builder-flag path (LayerNorm and Softmax)
FP32_PINNED_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX")
#: the first TensorRT whose ONNX parser reads the opset-23 ``Attention`` operator
ATTENTION_MIN_TRT = (10, 14)
#: the oldest TensorRT this builder drives (named-tensor API, ``execute_async_v3``)
MIN_TRT = (8, 6)
#: NVIDIA documents 10.7 as the last TensorRT 10 release with DLA
DLA_LAST_TRT10 = (10, 7)
#: parity tolerance of an FP32 engine built with TF32 allowed (``tf32=True``), against FP32 PyTorch. TF32 rounds
#: matmul/convolution inputs to a 10-bit mantissa; emulated on the CPU (``python -m export.tensorrt.tf32_check``,
#: 2026-12-04): motion_tiny max |dlogit| 2.0e-3, motion16 1.6e-2 (64 held-out clips each), base with random weights
#: 1.4e-3 (8 clips); min cosine >= 0.999992 and top-1 agreement 1.0 in all three. FP32's max |dlogit| 1e-3 cannot
#: hold under TF32, so TF32 gets a cosine bar and an absolute one 3x above the largest seen.
TF32_TOLERANCE = {"max_abs_logit": 5e-2, "min_cosine": 0.9999, "top1_agreement": 0.99}


class TensorRTBuildError(RuntimeError):
    """A build that cannot work, or a TensorRT call that failed; the message names file, tensor, values."""


def parse_trt_version(version: str) -> tuple[int, int, int]:
    """``"10.3.0.26"`` -> ``(10, 3, 0)``; raises TensorRTBuildError naming the string otherwise."""
    try:
        return parse_version(version)
    except VersionError as e:
        raise TensorRTBuildError(
            f"TensorRT version {version!r} not understood; expected e.g. '10.3' or '10.3.0'"
        ) from e


@dataclass
class TensorRTBuildOptions:
    """What to build; see the module docstring for how each option maps onto TensorRT."""

    precision: str = "fp32"
    #: strongly typed network (precision taken from the ONNX). TensorRT 11 always builds strongly typed.
    strongly_typed: bool = True
    #: (min, opt, max) batch of the optimisation profile
    batch: tuple[int, int, int] = (1, 1, 8)
    #: ONNX input to profile; None: the model's only input
    input_name: str | None = None
    #: per-clip input shape without the batch, e.g. (frames, 3, H, W); None: read from the ONNX
    input_shape: tuple[int, ...] | None = None
    workspace_mib: int = 4096
    #: timing cache file, loaded when present and saved (atomically) after the build
    timing_cache: str | None = None
    #: DLA core to build for (fp16/int8 only; unsupported layers fall back to the GPU)
    dla_core: int | None = None
    #: "none" | "ampere_plus" | "same_compute_capability"
    hardware_compatibility: str = "none"
    #: plan runs on later TensorRT versions too (the runtime must allow engine host code)
    version_compatible: bool = False
    #: 0..5 (TensorRT's default is 3); None leaves TensorRT's default
    builder_optimization_level: int | None = None
    #: TF32 matmuls for FP32 math (TensorRT's default on Ampere+). False (here the default): strict FP32,
    #: BuilderFlag.TF32 cleared; True: set, and the bundle's parity is held to TF32_TOLERANCE
    tf32: bool = False
    #: a non-decomposable IAttention without a fused kernel: rebuild with IAttention.decomposable = True
    attention_fallback: bool = True
    verbose: bool = False
    #: INT8 only, the Q/DQ ONNX form: "fp16" (FP16 scales and activations between the INT8 matmuls, LayerNorm and
    #: Softmax FP32: the fast GPU form) or "fp32" (everything around the INT8 matmuls FP32)
    int8_form: str = "fp16"
    #: runtime default recorded in the session: capture execute_async_v3 in a CUDA graph per batch size
    cuda_graph: bool = False

    def validate(self) -> None:
        """Check the options on their own (no ONNX, no TensorRT); raises TensorRTBuildError."""
        if self.precision not in PRECISIONS:
            raise TensorRTBuildError(f"precision {self.precision!r} not supported; expected one of {PRECISIONS}")
        b = tuple(self.batch)
        if len(b) != 3 or not all(isinstance(v, int) and v >= 1 for v in b) or not b[0] <= b[1] <= b[2]:
            raise TensorRTBuildError(
                f"batch {self.batch!r} invalid; expected (min, opt, max) integers with 1 <= min <= opt <= max"
            )
        if self.input_shape is not None and not all(isinstance(v, int) and v >= 1 for v in self.input_shape):
            raise TensorRTBuildError(
                f"input_shape {self.input_shape!r} invalid; expected positive integers "
                "(frames, 3, H, W) without the batch"
            )
        if not isinstance(self.workspace_mib, int) or self.workspace_mib < 1:
            raise TensorRTBuildError(f"workspace_mib {self.workspace_mib!r} invalid; expected an integer >= 1")
        if self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise TensorRTBuildError(
                f"hardware_compatibility {self.hardware_compatibility!r} not supported; "
                f"expected one of {tuple(HARDWARE_COMPATIBILITY)}"
            )
        lvl = self.builder_optimization_level
        if lvl is not None and (not isinstance(lvl, int) or not 0 <= lvl <= 5):
            raise TensorRTBuildError(f"builder_optimization_level {lvl!r} invalid; expected 0..5 or None")
        if self.int8_form not in INT8_FORMS:
            raise TensorRTBuildError(f"int8_form {self.int8_form!r} not supported; expected one of {INT8_FORMS}")
        if self.dla_core is not None:
            if self.cuda_graph:
                raise TensorRTBuildError("cuda_graph with dla_core: CUDA graphs capture GPU work only; drop one")
            if not isinstance(self.dla_core, int) or self.dla_core < 0:
                raise TensorRTBuildError(f"dla_core {self.dla_core!r} invalid; expected None or an integer >= 0")
            if self.precision == "fp32":
                raise TensorRTBuildError(
                    "dla_core is set but precision is 'fp32'; DLA runs only FP16 or INT8 "
                    "(use precision='fp16' or 'int8', or dla_core=None)"
                )
            if self.hardware_compatibility != "none":
                raise TensorRTBuildError(
                    f"dla_core is set with hardware_compatibility="
                    f"{self.hardware_compatibility!r}; hardware compatibility applies to "
                    "GPU engines only (use 'none')"
                )
            if not b[0] == b[1] == b[2]:
                raise TensorRTBuildError(
                    f"dla_core={self.dla_core} with batch {tuple(b)}: DLA runs static shapes only (an optimization "
                    f"profile for DLA must have min = opt = max, NvInfer.h); pass a static batch, e.g. --batch "
                    f"{b[1]}:{b[1]}:{b[1]} (BATCH={b[1]}:{b[1]}:{b[1]})"
                )
        if not isinstance(self.tf32, bool):
            raise TensorRTBuildError(f"tf32 {self.tf32!r} invalid; expected true or false")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["batch"] = list(self.batch)
        d["input_shape"] = None if self.input_shape is None else list(self.input_shape)
        return d


def _resolve_profile(info: dict[str, Any], options: TensorRTBuildOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    path = info["path"]
    inputs = info["inputs"]
    if not inputs:
        raise TensorRTBuildError(f"{path}: the ONNX graph has no inputs")
    names = [i["name"] for i in inputs]
    if len(inputs) > 1:
        raise TensorRTBuildError(
            f"{path}: the ONNX has several inputs {names}; this builder profiles a single video input"
        )
    inp = inputs[0]
    if options.input_name is not None and options.input_name != inp["name"]:
        raise TensorRTBuildError(f"{path}: input '{options.input_name}' not found; the ONNX input is '{inp['name']}'")
    onnx_shape = inp["shape"]
    name = inp["name"]
    if len(onnx_shape) < 2:
        raise TensorRTBuildError(f"{path}: input '{name}' has shape {onnx_shape}; expected (batch, frames, 3, H, W)")
    onnx_clip = onnx_shape[1:]
    if options.input_shape is not None:
        want = tuple(options.input_shape)
        if len(want) != len(onnx_clip):
            raise TensorRTBuildError(
                f"{path}: input '{name}' has shape {onnx_shape} (rank {len(onnx_shape)}); "
                f"expected rank {len(want) + 1} for input_shape {want} plus the batch"
            )
        for axis, (w, o) in enumerate(zip(want, onnx_clip), start=1):
            if isinstance(o, int) and o != w:
                raise TensorRTBuildError(
                    f"{path}: input '{name}' dim {axis} is {o} in the ONNX (shape "
                    f"{onnx_shape}); expected {w} from input_shape {want}"
                )
        clip = want
    else:
        dynamic = [axis for axis, o in enumerate(onnx_clip, start=1) if not isinstance(o, int)]
        if dynamic:
            raise TensorRTBuildError(
                f"{path}: input '{name}' has dynamic dims {dynamic} besides the batch (shape "
                f"{onnx_shape}); set input_shape, e.g. (frames, 3, H, W)"
            )
        clip = tuple(int(o) for o in onnx_clip)
    bmin, bopt, bmax = (int(v) for v in options.batch)
    b0 = onnx_shape[0]
    if isinstance(b0, int) and not bmin == bopt == bmax == b0:
        raise TensorRTBuildError(
            f"{path}: input '{name}' has a fixed batch of {b0} (shape {onnx_shape}); expected a "
            f"dynamic batch dim for the profile batch {tuple(options.batch)}. Re-export with a "
            f"dynamic batch, or set batch=({b0}, {b0}, {b0})."
        )
    profile = {"input": name, "min": (bmin, *clip), "opt": (bopt, *clip), "max": (bmax, *clip)}
    return inp, profile


@dataclass(frozen=True)
class TensorRTPlan:
    """What TensorRT ``trt_version`` is asked for. ``onnx``/``input``/``outputs``/``profile`` are None for a plan
    made without an ONNX file (:func:`plan_request`)."""

    trt_version: str
    precision: str
    #: the attention form the ONNX must have: "decomposed" (MatMul/Softmax/MatMul) or "onnx" (Attention op)
    attention: str
    #: the ONNX handed to TensorRT: "fp32", "fp16", "int8-qdq-fp16" or "int8-qdq-fp32"
    onnx_precision: str
    strongly_typed: bool
    creation_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    clear_builder_flags: tuple[str, ...]
    fp32_layer_types: tuple[str, ...]
    config: dict[str, Any]
    session: TensorRTSession
    options: dict[str, Any]
    warnings: tuple[str, ...] = ()
    #: TF32 allowed for FP32 math (BuilderFlag.TF32 set); False: strict FP32 (the flag cleared)
    tf32: bool = False
    #: the parity tolerance the bundle is held to when not its precision's own (TF32: TF32_TOLERANCE)
    parity_tolerance: dict[str, float] | None = None
    #: FP16 decomposed attention: how the Softmax between the two FP16 matmuls is handed to TensorRT
    attention_softmax: str | None = None
    #: the ONNX Attention operator: what happens when TensorRT has no fused kernel for it
    attention_fallback: str | None = None
    onnx: dict[str, Any] | None = None
    input: dict[str, Any] | None = None
    outputs: tuple[dict[str, Any], ...] | None = None
    profile: dict[str, Any] | None = None

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        return parse_trt_version(self.trt_version)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: tuples become lists, the session its manifest dict."""

        def plain(v: Any) -> Any:
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["session"] = self.session.to_dict()
        return plain(d)


def tensorrt_attention(precision: str, trt_version: str | tuple[int, ...] | None, strongly_typed: bool = True) -> str:
    """The attention form TensorRT ``trt_version`` builds for ``precision``.

    ``onnx`` (the ``Attention`` operator) only where the parser reads it (>= 10.14) *and* a fused kernel exists
    for the type it gets: the importer makes a non-decomposable ``IAttention`` and TensorRT has no FP32 fused
    attention, so FP32 (and the builder-flag path, whose network is FP32 before the FP16 flag) gets
    ``decomposed``; INT8 gets ``decomposed`` too, since its INT8 fused attention comes from Q/DQ around the
    two matmuls of the plain pattern (the Q/DQ quantizer leaves an ``Attention`` op unquantized). FP16
    strongly typed on >= 10.14 gets ``onnx``. Unknown versions get ``decomposed`` (parsed by every TensorRT).
    """
    if trt_version is None:
        return "decomposed"
    v = parse_version(trt_version) if not isinstance(trt_version, tuple) else parse_version(trt_version)
    if v[:2] < ATTENTION_MIN_TRT or precision != "fp16" or not strongly_typed:
        return "decomposed"
    return "onnx"


def _onnx_precision(options: "TensorRTBuildOptions", strongly_typed: bool) -> str:
    if options.precision == "fp32":
        return "fp32"
    if options.precision == "fp16":
        return "fp16" if strongly_typed else "fp32"
    return f"int8-qdq-{options.int8_form if strongly_typed else 'fp32'}"


def plan_request(options: "TensorRTBuildOptions", trt_version: str, attention: str = "auto") -> TensorRTPlan:
    """The plan for TensorRT ``trt_version`` from the options alone (no ONNX, no TensorRT)."""
    options.validate()
    version = str(trt_version)
    major, minor, _ = parse_trt_version(version)
    vtuple = (major, minor)
    if vtuple < MIN_TRT:
        raise TensorRTBuildError(
            f"TensorRT {version} is too old; this builder needs TensorRT >= "
            f"{MIN_TRT[0]}.{MIN_TRT[1]} (named-tensor API)"
        )
    warnings: list[str] = []
    strongly_typed = bool(options.strongly_typed)
    _check_typing(version, major, strongly_typed)
    attention = _resolve_attention(options, version, strongly_typed, attention)

    # Builder.html (NetworkDefinitionCreationFlag): EXPLICIT_BATCH is ignored from 10.0; STRONGLY_TYPED is opt-in
    # in 10 and always on in 11, where the FP16/INT8/OBEY_PRECISION_CONSTRAINTS builder flags are gone.
    creation_flags: list[str] = []
    if major < 10:
        creation_flags.append("EXPLICIT_BATCH")
    if strongly_typed and major < 11:
        creation_flags.append("STRONGLY_TYPED")
    builder_flags, clear_flags, fp32_layer_types = _flags(options, version, strongly_typed, warnings)
    hw = options.hardware_compatibility
    config = _builder_config(options, version)
    session = TensorRTSession(
        strongly_typed=strongly_typed,
        builder_flags=tuple(builder_flags),
        version_compatible=bool(options.version_compatible),
        hardware_compatibility=hw,
        dla_core=options.dla_core,
        cuda_graph=bool(options.cuda_graph),
    )
    return TensorRTPlan(
        trt_version=version,
        precision=options.precision,
        attention=attention,
        onnx_precision=_onnx_precision(options, strongly_typed),
        strongly_typed=strongly_typed,
        creation_flags=tuple(creation_flags),
        builder_flags=tuple(builder_flags),
        clear_builder_flags=tuple(clear_flags),
        fp32_layer_types=tuple(fp32_layer_types),
        config=config,
        session=session,
        options=options.to_dict(),
        warnings=tuple(warnings),
        tf32=bool(options.tf32),
        parity_tolerance=dict(TF32_TOLERANCE) if options.tf32 and options.precision == "fp32" else None,
        attention_softmax=_attention_softmax(options, attention, strongly_typed),
        attention_fallback=_attention_fallback(options, attention),
    )


def _check_typing(version: str, major: int, strongly_typed: bool) -> None:
    """Raise when TensorRT ``version`` cannot build the network typing asked for (strongly typed or builder flags)."""
    if major >= 11 and not strongly_typed:
        raise TensorRTBuildError(
            f"builder flags (strongly_typed=False, --builder-flags) with TensorRT {version}: TensorRT 11 removed the "
            "FP16/INT8 builder flags and precision constraints; networks are always strongly typed. Drop "
            "--builder-flags (the precision then comes from the ONNX)"
        )
    if strongly_typed and major < 9:
        raise TensorRTBuildError(
            f"TensorRT {version} has no strongly typed networks (STRONGLY_TYPED arrived in 9); "
            "pass --builder-flags (strongly_typed=False)"
        )


def _resolve_attention(options: TensorRTBuildOptions, version: str, strongly_typed: bool, attention: str) -> str:
    """The attention form to build: ``auto`` resolved by :func:`tensorrt_attention`; ``onnx`` checked against
    the version and precision; ``ort`` and unknown forms refused."""
    major, minor, _ = parse_trt_version(version)
    vtuple = (major, minor)
    auto = tensorrt_attention(options.precision, version, strongly_typed)
    if attention == "auto":
        attention = auto
    elif attention == "onnx":
        if vtuple < ATTENTION_MIN_TRT:
            raise TensorRTBuildError(
                f"attention 'onnx' with TensorRT {version}: its ONNX parser reads the Attention operator from "
                f"{ATTENTION_MIN_TRT[0]}.{ATTENTION_MIN_TRT[1]}; use attention 'decomposed' (or 'auto')"
            )
        if auto != "onnx":
            raise TensorRTBuildError(
                f"attention 'onnx' with precision {options.precision!r}"
                f"{'' if strongly_typed else ' on the builder-flag path'}: TensorRT's ONNX parser makes a "
                "non-decomposable IAttention, which needs a fused kernel, and TensorRT has none for FP32 (and INT8 "
                f"fused attention needs Q/DQ around the decomposed matmuls); use attention {auto!r} (or 'auto')"
            )
    elif attention == "ort":
        raise TensorRTBuildError(
            "attention 'ort' (com.microsoft.MultiHeadAttention) is an ONNX Runtime contrib op "
            f"that TensorRT cannot parse; use {auto!r} (or 'auto')"
        )
    elif attention != "decomposed":
        raise TensorRTBuildError(f"attention {attention!r}: expected 'auto', 'decomposed' or 'onnx'")
    return attention


def _builder_config(options: TensorRTBuildOptions, version: str) -> dict[str, Any]:
    """The builder-config settings of the plan; raises when the hardware compatibility level needs a newer TensorRT."""
    major, minor, _ = parse_trt_version(version)
    vtuple = (major, minor)
    hw = options.hardware_compatibility
    if hw != "none" and vtuple < HARDWARE_COMPATIBILITY_MIN_TRT[hw]:
        need = HARDWARE_COMPATIBILITY_MIN_TRT[hw]
        raise TensorRTBuildError(
            f"hardware_compatibility {hw!r} needs TensorRT >= {need[0]}.{need[1]} "
            f"(HardwareCompatibilityLevel.{HARDWARE_COMPATIBILITY[hw]}); got {version}"
        )
    return {
        "workspace_bytes": int(options.workspace_mib) << 20,
        "timing_cache": options.timing_cache,
        "default_device_type": "DLA" if options.dla_core is not None else "GPU",
        "dla_core": options.dla_core,
        "hardware_compatibility_level": HARDWARE_COMPATIBILITY[hw],
        "builder_optimization_level": options.builder_optimization_level,
        "progress_monitor": major >= 10,
        "static_batch": options.batch[0] == options.batch[1] == options.batch[2],
    }


def _flags(
    options: TensorRTBuildOptions, version: str, strongly_typed: bool, warnings: list[str]
) -> tuple[list[str], list[str], list[str]]:
    """(builder flags to set, builder flags to clear, layer types pinned to FP32) for ``options`` on ``version``."""
    major, minor, _ = parse_trt_version(version)
    vtuple = (major, minor)
    builder_flags: list[str] = []
    clear_flags: list[str] = []
    fp32_layer_types: list[str] = []
    if not strongly_typed:
        if options.precision == "fp16":
            builder_flags += ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
            fp32_layer_types = list(FP32_PINNED_LAYER_TYPES)
        elif options.precision == "int8":
            # explicit quantization on the weakly typed path: INT8 where the Q/DQ says, FP16 allowed elsewhere
            builder_flags += ["INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"]
            fp32_layer_types = list(FP32_PINNED_LAYER_TYPES)
            if options.int8_form != "fp32":
                warnings.append(
                    "builder-flag INT8 takes the FP32-form Q/DQ ONNX (FP16 comes from BuilderFlag.FP16); "
                    f"int8_form {options.int8_form!r} ignored"
                )
    if options.version_compatible:
        builder_flags.append("VERSION_COMPATIBLE")
    if options.dla_core is not None:
        builder_flags.append("GPU_FALLBACK")
        if strongly_typed and major < 11:
            raise TensorRTBuildError(
                f"dla_core={options.dla_core} with a strongly typed build on TensorRT {version}: DLA on TensorRT 10 "
                "needs the FP16/INT8 builder flags, which strongly typed networks forbid. Pass --builder-flags "
                "(strongly_typed=False: FP32 ONNX for fp16, Q/DQ ONNX for int8)."
            )
        if DLA_LAST_TRT10 < vtuple and major < 11:
            warnings.append(
                f"NVIDIA documents TensorRT {DLA_LAST_TRT10[0]}.{DLA_LAST_TRT10[1]} as the last 10.x "
                f"release with DLA; TensorRT {version} may not build for DLA"
            )
        if major >= 11:
            warnings.append(
                f"DLA support in TensorRT 11 depends on the release and platform (none in 11.0-11.3; "
                f"Jetson AGX Orin from 11.4.1 with JetPack 7.2.2); check TensorRT {version}'s notes"
            )
    if options.tf32:  # TensorRT sets TF32 by default; set it explicitly so that the plan and session say so
        builder_flags.append("TF32")
    else:  # FP32 = strict FP32
        clear_flags.append("TF32")
    return builder_flags, clear_flags, fp32_layer_types


def _attention_softmax(options: TensorRTBuildOptions, attention: str, strongly_typed: bool) -> str | None:
    """What the plan says about the Softmax between the attention matmuls (FP16 decomposed forms only)."""
    if attention != "decomposed" or options.precision != "fp16":
        return None
    if strongly_typed:
        return (
            "fp16: the FP16 ONNX's Cast -> FP32 Softmax -> Cast between two FP16 MatMuls is rewritten to an FP16 "
            "Softmax with no Cast (export.tensorrt.fp16_attention), the plain MatMul -> Softmax -> MatMul that "
            "TensorRT's fused MHA matches; only where both matmuls are FP16 (the FP16 analysis kept them off "
            "the overflow list)"
        )
    return (
        "fp32: the builder-flag path pins every SOFTMAX layer to FP32 (OBEY_PRECISION_CONSTRAINTS), which puts "
        "reformats between the FP16 matmuls: TensorRT's fused MHA is not expected on this path"
    )


def _attention_fallback(options: TensorRTBuildOptions, attention: str) -> str | None:
    if attention != "onnx":
        return None
    if not options.attention_fallback:
        return "none: a missing fused attention kernel fails the build"
    return (
        "if TensorRT finds no fused kernel for the non-decomposable IAttention (GPU, shape or "
        "hardware-compatibility mode), the network is rebuilt once with IAttention.decomposable = True "
        "(TensorRT's multi-kernel form) and the build info records why"
    )


def _installed_trt_version() -> str:
    from runtime.backends.tensorrt_detect import TensorRTUnavailable, import_tensorrt

    try:
        return str(import_tensorrt().__version__)
    except TensorRTUnavailable as e:
        raise TensorRTBuildError(f"{e}; or pass trt_version (e.g. '10.3.0') to plan a build for another machine") from e


def _plan_for_onnx(info: dict[str, Any], options: TensorRTBuildOptions, version: str) -> TensorRTPlan:
    """:func:`plan_request` with the attention form the inspected ONNX ``info`` holds; errors name its Attention
    node when it has one."""
    path = info["path"]
    attention_in_onnx = "onnx" if info["attention_nodes"] else "decomposed"
    vtuple = parse_trt_version(version)[:2]
    if info["attention_nodes"] and vtuple < ATTENTION_MIN_TRT:
        raise TensorRTBuildError(
            f"{path}: node '{info['attention_nodes'][0]}' ({len(info['attention_nodes'])} in all) is the ONNX "
            f"Attention operator (opset 23), which TensorRT {version} cannot parse: its ONNX parser reads "
            f"Attention since {ATTENTION_MIN_TRT[0]}.{ATTENTION_MIN_TRT[1]}. Re-export the ONNX with "
            "ATTENTION=decomposed (MatMul/Softmax/MatMul)."
        )
    try:
        return plan_request(options, version, attention=attention_in_onnx)
    except TensorRTBuildError as e:
        if info["attention_nodes"]:
            raise TensorRTBuildError(
                f"{path}: node '{info['attention_nodes'][0]}' ({len(info['attention_nodes'])} "
                f"ONNX Attention nodes): {e}"
            ) from e
        raise


def _onnx_summary(info: dict[str, Any]) -> dict[str, Any]:
    """What the plan records about the ONNX it builds from."""
    onnx_summary = {
        k: info[k]
        for k in (
            "path",
            "sha256",
            "bytes",
            "external_data",
            "opsets",
            "precision_detected",
            "float_initializers",
            "int8_form",
            "qdq_scale_types",
        )
    }
    onnx_summary |= {"qdq_nodes": len(info["qdq_nodes"]), "attention_nodes": len(info["attention_nodes"])}
    return onnx_summary


def plan_build(
    onnx_path: str | Path, options: "TensorRTBuildOptions | None" = None, trt_version: str | None = None
) -> TensorRTPlan:
    """The exact build TensorRT ``trt_version`` (None: the installed one) will be asked for ``onnx_path``.

    Raises TensorRTBuildError for any combination that cannot build (precision vs ONNX, Attention nodes
    TensorRT cannot parse or fuse, contrib ops, DLA rules, shapes).
    """
    options = options or TensorRTBuildOptions()
    version = trt_version if trt_version is not None else _installed_trt_version()
    try:
        info = inspect_onnx(onnx_path)
    except OnnxInspectError as e:
        raise TensorRTBuildError(str(e)) from e
    path = info["path"]
    vtuple = parse_trt_version(version)[:2]
    plan = _plan_for_onnx(info, options, version)
    warnings = list(plan.warnings)
    if info["contrib_nodes"]:
        raise TensorRTBuildError(
            f"{path}: ONNX Runtime contrib operators (domain com.microsoft), which TensorRT cannot parse: "
            f"{', '.join(info['contrib_nodes'][:5])}. Export without ONNX Runtime fusions for TensorRT."
        )
    if info["custom_attention_nodes"] and vtuple >= ATTENTION_MIN_TRT:
        warnings.append(
            f"{path}: nodes named Attention in a custom domain ({info['custom_attention_nodes'][0]}) "
            "may be taken by TensorRT's built-in Attention importer instead of their local function"
        )
    try:
        check_precision(info, plan.precision, plan.strongly_typed)
    except OnnxInspectError as e:
        raise TensorRTBuildError(str(e)) from e
    onnx_precision = plan.onnx_precision
    if plan.precision == "int8":
        form = info["int8_form"]
        onnx_precision = f"int8-qdq-{form}"
        if plan.strongly_typed and form != options.int8_form:
            warnings.append(
                f"{path}: the Q/DQ scales are {info['qdq_scale_types']} (form {form!r}), not the "
                f"requested int8_form {options.int8_form!r}; TensorRT runs between the INT8 matmuls in "
                "the scales' type"
            )
    ops = info["op_counts"]
    if plan.fp32_layer_types and not ops.get("LayerNormalization") and ops.get("ReduceMean"):
        warnings.append(
            f"{path}: no LayerNormalization nodes but ReduceMean ones: LayerNorm looks decomposed, and "
            "only NORMALIZATION layers are pinned to FP32; export at opset >= 17"
        )
    if info["fp16_layernorm_nodes"] and plan.precision in ("fp16", "int8"):
        warnings.append(
            f"{path}: {len(info['fp16_layernorm_nodes'])} LayerNormalization nodes have float16 scale "
            f"(e.g. '{info['fp16_layernorm_nodes'][0]}'); TensorRT runs them in FP16 in a strongly typed "
            "build, a known overflow source: keep LayerNorm and Softmax FP32 in the ONNX"
        )
    inp, profile = _resolve_profile(info, options)
    return dataclasses.replace(
        plan,
        onnx_precision=onnx_precision,
        warnings=tuple(warnings),
        onnx=_onnx_summary(info),
        input={"name": inp["name"], "dtype": inp["dtype"], "onnx_shape": inp["shape"]},
        outputs=tuple(info["outputs"]),
        profile=profile,
    )
