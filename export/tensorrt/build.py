"""Build TensorRT engines (plan files) with the TensorRT 10 / 11 Python API: builder, ONNX parser, config,
progress monitor, timing cache, and the atomic write of the plan.

What is built is decided first, without TensorRT, by :func:`export.tensorrt.plan.plan_build` (flags, profile,
pinned layers, session); :func:`build_engine` only carries that plan out. Notes on the API, from TensorRT's
binding sources:

* ``INetworkDefinition.get_layer`` returns the base ``ILayer``; type-specific attributes (e.g.
  ``INormalizationLayer.compute_precision``) need the layer cast to its class (``layer.__class__ = ...``).
* ``ILayer.precision`` / ``set_output_type`` exist on TensorRT 10 only (deprecated in 10.12, removed in 11);
  they are used only on the builder-flag path, which TensorRT 11 does not have.
* ``IBuilderConfig.set_timing_cache`` returns False for another TensorRT/GPU's cache (``ignore_mismatch=False``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from runtime.backends.tensorrt_detect import TensorRTUnavailable, import_tensorrt, tensorrt_available
from runtime.files import write_bytes_atomic

from export.tensorrt.plan import (
    TensorRTBuildError,
    TensorRTBuildOptions,
    TensorRTPlan,
    parse_trt_version,  # noqa: F401
    plan_build,
)

__all__ = ["TensorRTBuildError", "TensorRTBuildOptions", "build_engine", "tensorrt_available"]


def _import_tensorrt() -> Any:
    try:
        return import_tensorrt()
    except TensorRTUnavailable as e:
        raise TensorRTBuildError(str(e)) from e


def _make_logger(trt: Any, verbose: bool) -> Any:
    """An ILogger that prints WARNING+ (VERBOSE+ with verbose) and keeps the errors for our messages."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.threshold = int(trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING)

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            if int(severity) <= self.threshold:
                print(f"[TensorRT {getattr(severity, 'name', severity)}] {msg}", file=sys.stderr)

    return _Logger()


def _make_progress_monitor(trt: Any) -> Any | None:
    """An IProgressMonitor driving one tqdm bar per optimiser phase (TensorRT >= 10), or None."""
    if not hasattr(trt, "IProgressMonitor"):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None

    class _TqdmMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()  # TensorRT may call from several threads
            self._bars: dict[str, Any] = {}
            self._depth: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            try:
                with self._lock:
                    depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
                    self._depth[phase_name] = depth
                    self._bars[phase_name] = tqdm(
                        total=num_steps, desc=phase_name, position=depth, leave=depth == 0, dynamic_ncols=True
                    )
            except Exception:  # noqa: BLE001 - never let a progress bar break a build
                pass

        def step_complete(self, phase_name: str, step: int) -> bool:
            try:
                with self._lock:
                    bar = self._bars.get(phase_name)
                    if bar is not None and step + 1 > bar.n:
                        bar.update(step + 1 - bar.n)
            except Exception:  # noqa: BLE001
                pass
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            try:
                with self._lock:
                    bar = self._bars.pop(phase_name, None)
                    self._depth.pop(phase_name, None)
                    if bar is not None:
                        bar.close()
            except Exception:  # noqa: BLE001
                pass

        def close_all(self) -> None:
            with self._lock:
                for bar in self._bars.values():
                    bar.close()
                self._bars.clear()

    return _TqdmMonitor()


def _enum(trt: Any, enum_name: str, member: str, version: str, what: str) -> Any:
    enum = getattr(trt, enum_name, None)
    if enum is None or not hasattr(enum, member):
        raise TensorRTBuildError(f"TensorRT {version} has no {enum_name}.{member} ({what})")
    return getattr(enum, member)


def _parser_errors(parser: Any) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        parts = []
        node_name = err.node_name() if hasattr(err, "node_name") else ""
        node_op = err.node_operator() if hasattr(err, "node_operator") else ""
        if node_name or node_op:
            parts.append(f"node '{node_name}' ({node_op})")
        elif hasattr(err, "node") and err.node() >= 0:
            parts.append(f"node #{err.node()}")
        parts.append(err.desc() if hasattr(err, "desc") else str(err))
        out.append(": ".join(parts))
    return out


def _parse(trt: Any, builder: Any, plan: TensorRTPlan, onnx_file: Path, logger: Any, fail: Any) -> tuple[Any, Any]:
    """Network + parser (kept alive together) from ``onnx_file``; raises naming the parser's errors (``fail``
    names the ONNX the caller was given)."""
    version = plan.trt_version
    flags = 0
    for name in plan.creation_flags:
        flags |= 1 << int(_enum(trt, "NetworkDefinitionCreationFlag", name, version, "network creation flag"))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):  # from the file, so external data is found beside it
        errors = _parser_errors(parser)
        raise fail(
            f"TensorRT {version}'s ONNX parser failed ({len(errors)} errors):\n  - " + "\n  - ".join(errors[:20])
        )
    return network, parser


def _pin_fp32_layers(trt: Any, network: Any, plan: TensorRTPlan) -> int:
    """The builder-flag path only (TensorRT 10): LayerNorm and Softmax stay FP32; returns the layers pinned."""
    if not plan.fp32_layer_types:
        return 0
    version = plan.trt_version
    pin_types = {_enum(trt, "LayerType", t, version, "layer type pinned to FP32") for t in plan.fp32_layer_types}
    norm_type = getattr(trt.LayerType, "NORMALIZATION", None)
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)  # the base ILayer
        if layer.type not in pin_types:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        if layer.type == norm_type and hasattr(trt, "INormalizationLayer"):
            layer.__class__ = trt.INormalizationLayer  # compute_precision lives on the subclass
            layer.compute_precision = trt.float32  # LayerNorm's accumulation type
        pinned += 1
    return pinned


def _configure(trt: Any, builder: Any, plan: TensorRTPlan, options: TensorRTBuildOptions, fail: Any) -> Any:
    """The builder config: memory pool, flags set and cleared (TF32), profile, DLA, compatibility level."""
    version = plan.trt_version
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.config["workspace_bytes"])
    for name in plan.builder_flags:
        config.set_flag(_enum(trt, "BuilderFlag", name, version, f"needed for precision {plan.precision!r}"))
    for name in plan.clear_builder_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    prof = plan.profile
    profile.set_shape(prof["input"], prof["min"], prof["opt"], prof["max"])
    if config.add_optimization_profile(profile) < 0:
        raise fail(f"TensorRT rejected the optimisation profile {prof}")
    if options.dla_core is not None:
        cores = getattr(builder, "num_DLA_cores", None)  # Builder.num_DLA_cores: DLA engines on this device
        if cores is not None and not 0 <= options.dla_core < int(cores):
            raise fail(
                f"dla_core={options.dla_core}, but this device has {int(cores)} DLA core(s); expected "
                f"0..{int(cores) - 1} (none: build for the GPU with dla_core=None)"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(options.dla_core)
    level = plan.config["hardware_compatibility_level"]
    if level != "NONE":
        config.hardware_compatibility_level = _enum(
            trt,
            "HardwareCompatibilityLevel",
            level,
            version,
            f"hardware_compatibility={options.hardware_compatibility!r}",
        )
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = int(options.builder_optimization_level)
    return config


def _timing_cache(config: Any, options: TensorRTBuildOptions, warnings: list[str], fail: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"path": options.timing_cache, "loaded": False, "saved": False}
    if not options.timing_cache:
        return info
    cache_path = Path(options.timing_cache)
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    # IBuilderConfig.create_timing_cache(bytes) gives no cache for an unreadable blob, and
    # set_timing_cache(cache, ignore_mismatch=False) returns False for another TensorRT/GPU's cache.
    cache = config.create_timing_cache(blob)
    if cache is None or not config.set_timing_cache(cache, False):
        warnings.append(f"{cache_path}: timing cache unreadable or made by another TensorRT/GPU; starting empty")
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, False):
            raise fail("could not create an empty timing cache")
    else:
        info["loaded"] = bool(blob)
    return info


def _attention_layers(trt: Any, network: Any) -> list[Any]:
    """The IAttention objects of the parsed network (through their boundary layers; TensorRT >= 10.14)."""
    kinds = {getattr(trt.LayerType, k) for k in ("ATTENTION_INPUT", "ATTENTION_OUTPUT") if hasattr(trt.LayerType, k)}
    boundary = getattr(trt, "IAttentionBoundaryLayer", None)
    found: list[Any] = []
    for i in range(network.num_layers if kinds and boundary is not None else 0):
        layer = network.get_layer(i)  # the base ILayer: cast to reach get_attention()
        if layer.type in kinds:
            layer.__class__ = boundary
            getter = getattr(layer, "get_attention", None)  # C++ getAttention(); the binding's spelling may vary
            att = getter() if callable(getter) else getattr(layer, "attention", None)
            if att is not None and all(att is not a for a in found):
                found.append(att)
    return found


def _build(builder: Any, network: Any, config: Any, monitor: Any) -> Any:
    try:
        return builder.build_serialized_network(network, config)
    finally:
        if monitor is not None:
            monitor.close_all()


def build_engine(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    options: TensorRTBuildOptions | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build ``onnx_path`` into the TensorRT plan ``plan_path`` (written atomically); returns build info.

    Raises TensorRTBuildError when TensorRT is missing, the plan is refused (see :func:`plan_build`),
    the parser fails (its errors listed) or the builder returns no engine (TensorRT's errors listed).
    FP16 decomposed attention is handed over in TensorRT's fusable form (:mod:`export.tensorrt.fp16_attention`);
    an ONNX ``Attention`` without a fused kernel is rebuilt decomposable once (``options.attention_fallback``).
    """
    options = options or TensorRTBuildOptions()
    trt = _import_tensorrt()
    version = str(trt.__version__)
    plan = plan_build(onnx_path, options, trt_version=version)
    onnx_file, out = Path(onnx_path), Path(plan_path)
    logger = _make_logger(trt, options.verbose)

    def fail(msg: str) -> TensorRTBuildError:
        errs = logger.errors[-10:]
        return TensorRTBuildError(
            f"{onnx_file}: {msg}" + ("\nTensorRT errors:\n  - " + "\n  - ".join(errs) if errs else "")
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    rewritten: dict[str, Any] | None = None
    parse_file = onnx_file
    if plan.attention_softmax and plan.attention_softmax.startswith("fp16"):
        from export.tensorrt.fp16_attention import rewrite_file

        parse_file = out.with_name(f".{out.name}.fp16-attention.onnx")
        rewritten = rewrite_file(onnx_file, parse_file)
    try:
        builder = trt.Builder(logger)
        network, parser = _parse(trt, builder, plan, parse_file, logger, fail)
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        if plan.profile["input"] not in names:
            raise fail(f"the parsed network's inputs are {names}; expected '{plan.profile['input']}'")
        config = _configure(trt, builder, plan, options, fail)
        pinned = _pin_fp32_layers(trt, network, plan)
        warnings = list(plan.warnings)
        cache_info = _timing_cache(config, options, warnings, fail)
        # ProgressMonitor.html: the monitor must outlive the config/builder using it (both are locals here).
        monitor = _make_progress_monitor(trt) if progress and hasattr(config, "progress_monitor") else None
        if monitor is not None:
            config.progress_monitor = monitor
        t0 = time.perf_counter()
        serialized = _build(builder, network, config, monitor)
        fallback = None
        attentions = _attention_layers(trt, network) if serialized is None and options.attention_fallback else []
        if attentions and not all(a.decomposable for a in attentions):
            why = logger.errors[-3:]
            for a in attentions:
                a.decomposable = True
            fallback = {
                "decomposable_attentions": len(attentions),
                "why": why or ["no engine, no TensorRT error"],
                "what": "no fused kernel for the non-decomposable IAttention: rebuilt with "
                "IAttention.decomposable = True (TensorRT's multi-kernel form)",
            }
            warnings.append(
                f"fused attention unavailable ({'; '.join(fallback['why'])[:300]}); rebuilt with "
                f"{len(attentions)} decomposable IAttention(s)"
            )
            serialized = _build(builder, network, config, None)
        seconds = time.perf_counter() - t0
    finally:
        if parse_file != onnx_file:
            parse_file.unlink(missing_ok=True)
    if serialized is None:
        raise fail(
            f"TensorRT {version} failed to build the engine (precision {plan.precision}, flags "
            f"{plan.builder_flags}, profile {plan.profile})"
        )
    data = memoryview(serialized)
    write_bytes_atomic(out, data)
    if options.timing_cache:
        timing = config.get_timing_cache()
        if timing is not None:
            write_bytes_atomic(Path(options.timing_cache), memoryview(timing.serialize()))
            cache_info["saved"] = True
    return _info(plan, options, out, data, seconds, pinned, cache_info, warnings, rewritten, fallback)


def _info(
    plan: TensorRTPlan,
    options: TensorRTBuildOptions,
    out: Path,
    data: memoryview,
    seconds: float,
    pinned: int,
    cache_info: dict[str, Any],
    warnings: list[str],
    rewritten: dict[str, Any] | None,
    fallback: dict[str, Any] | None,
) -> dict[str, Any]:
    prof = plan.profile
    return {
        "trt_version": plan.trt_version,
        "seconds": round(seconds, 3),
        "plan_path": str(out),
        "plan_bytes": out.stat().st_size,
        "plan_sha256": hashlib.sha256(data).hexdigest(),
        "onnx_sha256": plan.onnx["sha256"],
        "precision": plan.precision,
        "strongly_typed": plan.strongly_typed,
        "creation_flags": list(plan.creation_flags),
        "builder_flags": list(plan.builder_flags),
        "cleared_builder_flags": list(plan.clear_builder_flags),
        "tf32": plan.tf32,
        "parity_tolerance": plan.parity_tolerance,
        "fp32_pinned_layers": pinned,
        "attention_softmax": rewritten,
        "attention_fallback": fallback,
        "profile": {k: list(v) if isinstance(v, tuple) else v for k, v in prof.items()},
        "input": plan.input,
        "outputs": list(plan.outputs or ()),
        "version_compatible": bool(options.version_compatible),
        "hardware_compatibility": options.hardware_compatibility,
        "dla_core": options.dla_core,
        "timing_cache": cache_info,
        "warnings": warnings,
        "session": plan.session.to_dict(),
        "build_plan": plan.to_dict(),
    }
