"""``make engine``: checkpoint -> precision-specific ONNX -> engine bundle (TensorRT plan or ONNX Runtime model).

A bundle directory holds the engine, ``manifest.json`` (see ``runtime/manifest.py``) and ``labels.txt``.
The build is incremental (the ONNX export and the calibration are cached by the hashes of their inputs)
and ends with a parity check against the PyTorch reference whose summary goes into the manifest. ``OUT``
may only be absent, an empty folder or one of our bundles; the bundle is staged beside it, the manifest
(with the sha256 and size of every file) is written last, after parity, and publishing is one atomic
step (see ``export/bundle/publish.py``): a build killed at any point leaves the old bundle or the new,
verified one.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cli_args import ArgumentParser
from runtime.files import sha256_file, write_bytes_atomic, write_json_atomic, write_text_atomic
from runtime.manifest import SCHEMA_VERSION

from runtime.cli_args import user_errors
from calibration.precision.metrics import TOLERANCES, check_tolerance, compare_logits

from export.bundle.publish import PublishError, check_out, clean_stale, file_records, kill_point, make_staging, publish

PRECISIONS = ("fp32", "fp16", "int8")
BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino")
#: why ``auto`` prefers OpenVINO to ONNX Runtime on x86 CPUs (``make bench-cpu``, base 8x224, batch 1, one run)
OPENVINO_WHY = ("faster than ONNX Runtime at every precision in make bench-cpu (base 8x224, 2-core AMD Zen 5, two "
                "runs, medians against ONNX Runtime FP32: OpenVINO FP32 0.87-0.88x, FP16 bundle in bf16 0.43-0.45x, "
                "INT8 Q/DQ 0.26-0.27x; ONNX Runtime INT8 0.38x)")


class BuildError(RuntimeError):
    """A build that cannot go on; the message says why and what to do."""


@dataclass
class BuildRequest:
    """Everything ``make engine`` takes."""

    model: str = "models/weights/motion_tiny.safetensors"  # preset name or checkpoint path
    precision: str = "fp32"
    backend: str = "auto"
    out: str | None = None
    calib: str | None = None  # folder of videos, .npy/.npz tensors, or "synthetic"
    calib_clips: int = 32
    calib_method: str = "max"
    batch: tuple[int, int, int] = (1, 1, 8)
    attention: str = "auto"
    parity_clips: int = 8
    allow_parity_failure: bool = False
    cache_dir: str = "artifacts/cache"
    threads: int | None = None
    seed: int = 0
    # TensorRT only
    workspace_mib: int = 4096
    dla_core: int | None = None
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    timing_cache: str | None = None
    strongly_typed: bool = True  # False: TensorRT 10's builder-flag path (--builder-flags)
    int8_form: str = "fp16"  # TensorRT INT8 Q/DQ form: "fp16" (FP16 between the INT8 matmuls) or "fp32"
    cuda_graph: bool = False  # recorded in the session: the runtime captures CUDA graphs by default
    extra: dict[str, Any] = field(default_factory=dict)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def choose_backend(requested: str) -> tuple[str, str]:
    """The backend to build for, and why."""
    if requested not in BACKENDS:
        raise BuildError(f"BACKEND={requested!r}: expected one of {BACKENDS}")
    from runtime.backends.tensorrt_detect import tensorrt_available

    ok, reason = tensorrt_available()
    if requested == "onnxruntime":
        return "onnxruntime", "asked for"
    if requested == "openvino":
        ov_ok, ov_reason = _openvino_available()
        if not ov_ok:
            raise BuildError(f"BACKEND=openvino, but {ov_reason}: pip install -e './runtime[openvino]' (or "
                             "pip install 'openvino>=2025.0'), or use BACKEND=onnxruntime.")
        return "openvino", f"asked for; {ov_reason}"
    if requested == "tensorrt":
        if not ok:
            raise BuildError(f"BACKEND=tensorrt, but {reason}. Install TensorRT on a machine with an NVIDIA GPU "
                             "(pip install '.[tensorrt]'; JetPack ships it on Jetson) or use BACKEND=onnxruntime.")
        return "tensorrt", "asked for"
    if ok:
        return "tensorrt", f"auto: {reason}"
    ov_ok, ov_reason = _openvino_available()
    if ov_ok and platform.machine().lower() in ("x86_64", "amd64"):
        return "openvino", f"auto: TensorRT not usable here ({reason}); {ov_reason}: {OPENVINO_WHY}"
    return "onnxruntime", (f"auto: TensorRT not usable here ({reason}); ONNX Runtime on the CPU"
                           f"{'' if ov_ok else f' ({ov_reason})'}")


def _openvino_available() -> tuple[bool, str]:
    from runtime.backends.openvino_backend import openvino_available

    return openvino_available()


def build_bundle(req: BuildRequest) -> Path:
    """Build the bundle ``req`` describes; returns its directory."""
    from calibration.clips.calibset import synthetic_spec
    from models import load_source, model_task

    from export.onnx.attention import resolve_attention
    from export.bundle.fp32_cache import cached_fp32_onnx

    t_start = time.perf_counter()
    if req.precision not in PRECISIONS:
        raise BuildError(f"PRECISION={req.precision!r}: expected one of {PRECISIONS}")
    backend, why = choose_backend(req.backend)
    _log(f"[engine] backend: {backend} ({why})")
    trt_version = None
    if backend == "tensorrt":
        from runtime.backends.tensorrt_detect import import_tensorrt

        trt_version = str(import_tensorrt().__version__)  # checked available above
        _check_tensorrt_request(req, trt_version)  # refuses what this TensorRT cannot build, before any work
    try:
        attention = resolve_attention(req.attention, _attention_backend(backend, req.precision), trt_version,
                                      precision=req.precision, strongly_typed=req.strongly_typed)
    except ValueError as e:
        raise BuildError(str(e)) from e

    out = default_out(req, backend)
    try:  # before any work: OUT must be absent, an empty folder or one of our bundles
        check_out(out)
        clean_stale(out, _log)
    except PublishError as e:
        raise BuildError(str(e)) from e

    _log(f"[engine] 1/5 loading {req.model}")
    net, labels, pre, source = load_source(req.model, req.seed)
    cfg = net.config
    if labels is None:
        labels = [f"class_{i}" for i in range(cfg.num_classes)]
    calib = req.calib or synthetic_spec(model_task(net))  # a model trained on a synthetic task calibrates on it
    if calib:  # a missing or empty CALIB folder fails now, not after the export (it is read without decoding)
        from calibration.clips.calibset import selection_key

        selection_key(calib, pre, req.calib_clips, req.seed)
    cache = Path(req.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)

    # 2. FP32 ONNX, cached by the source and the export settings.
    _log("[engine] 2/5 FP32 ONNX")
    fp32_onnx = cached_fp32_onnx(net, labels, pre, source, attention, cache)
    kill_point("after_export")

    # 3. Precision: calibration clips, FP16 conversion or INT8 Q/DQ (cached inside calibration/).
    calibration_info = None
    engine_onnx = fp32_onnx
    if backend == "tensorrt" and req.precision == "fp16" and not req.strongly_typed:
        _log("[engine] 3/5 fp16 on the builder-flag path: the FP32 ONNX + BuilderFlag.FP16 (LayerNorm/Softmax FP32)")
    elif backend == "openvino" and req.precision == "fp16":
        _log("[engine] 3/5 fp16 on OpenVINO: the FP32 ONNX, run with INFERENCE_PRECISION_HINT bf16 (or f16) where "
             "the CPU has it (OpenVINO keeps its own FP32 islands)")
    elif req.precision != "fp32":
        from export.bundle.precision_step import precision_onnx

        _log(f"[engine] 3/5 {req.precision}: calibrating on {calib or 'synthetic clips'}")
        engine_onnx, calibration_info = precision_onnx(
            fp32_onnx, req.precision, target=_precision_target(backend), calib=calib, preprocess=pre,
            n_clips=req.calib_clips, method=req.calib_method, cache_dir=cache, seed=req.seed,
            **_tensorrt_int8_form(req, backend))
    else:
        _log("[engine] 3/5 fp32: no calibration")
    if backend == "openvino" and calibration_info is not None:
        calibration_info = {**calibration_info, "shared_with": ["tensorrt", "openvino"],
                            "note": "the TensorRT Q/DQ INT8 ONNX: one file, calibrated once, for every backend that "
                                    "reads Q/DQ (OpenVINO's copy has its q/k/v projections split: the same weights, "
                                    "scales and Q/DQ, laid out as three matmuls)"}

    tmp = make_staging(out)
    try:
        _log(f"[engine] 4/5 building the {backend} engine")
        clip_shape = [cfg.num_frames, cfg.in_chans, cfg.image_size, cfg.image_size]
        trt_build_info = ov_build_info = None
        if backend == "tensorrt":
            engine_file, backend_version, session, trt_build_info = _build_tensorrt(engine_onnx, tmp, req, clip_shape)
        elif backend == "openvino":
            engine_file, backend_version, session, ov_build_info = _build_openvino(engine_onnx, tmp, req)
        else:
            engine_file, backend_version, session = _build_onnxruntime(engine_onnx, tmp, req)
        input_dtype = _onnx_input_dtype(engine_onnx)
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "backend": backend,
            "backend_version": backend_version,
            "engine_file": engine_file,
            "precision": req.precision,
            "model_config": cfg.to_dict(),
            "input": {"name": "video", "dtype": input_dtype, "layout": "BTCHW", "shape": [-1] + clip_shape,
                      "batch": {"min": req.batch[0], "opt": req.batch[1], "max": req.batch[2]}},
            "output": {"name": "logits", "dtype": "float32", "shape": [-1, cfg.num_classes]},
            "preprocess": pre.to_dict(),
            "labels_file": "labels.txt",
            "session": session,
            "source": {**source, "onnx_sha256": sha256_file(engine_onnx), "fp32_onnx_sha256": sha256_file(fp32_onnx),
                       "attention": attention},
            "calibration": calibration_info,
            "parity": None,
            "tolerance": TOLERANCES[req.precision],
            "build": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      "host": platform.node(), "machine": platform.machine(), "seconds": None,
                      "request": {k: v for k, v in asdict(req).items() if k != "extra"}},
        }
        if trt_build_info is not None:
            manifest["build"]["tensorrt"] = trt_build_info
        if ov_build_info is not None:
            manifest["build"]["openvino"] = ov_build_info
        write_text_atomic(tmp / "labels.txt", "\n".join(labels) + "\n")
        # Every file but the manifest, hashed once the engine is written: the runtime checks them on load.
        manifest["files"] = file_records(tmp)
        kill_point("after_engine")

        # Parity runs on the staged files with the manifest in memory: manifest.json is written only after
        # it, so a staging folder is never a loadable bundle until it has passed (or ALLOW_PARITY_FAILURE).
        _log(f"[engine] 5/5 parity against PyTorch on {req.parity_clips} clips")
        parity = run_parity(net, tmp, pre, req.parity_clips, req.seed, calib, manifest=manifest)
        failures = check_tolerance(parity, req.precision)
        parity["passed"] = not failures
        parity["failures"] = failures
        if failures and not req.allow_parity_failure:
            raise BuildError(f"parity check failed for {req.precision}: {'; '.join(failures)} "
                             "(ALLOW_PARITY_FAILURE=1 keeps the bundle anyway)")
        if failures:
            parity["allowed_failure"] = True
        manifest["parity"] = parity
        manifest["build"]["seconds"] = round(time.perf_counter() - t_start, 2)
        if file_records(tmp) != manifest["files"]:  # nothing may change the files after they were hashed
            raise BuildError(f"{tmp}: the bundle's files changed during the parity check")
        write_json_atomic(tmp / "manifest.json", manifest)
        _load_as_an_app_would(tmp)
        kill_point("after_manifest")
        publish(tmp, out)
    except PublishError as e:
        raise BuildError(str(e)) from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t_start
    _log(f"[engine] built {out} in {seconds:.1f} s: {backend} {req.precision}, parity "
         f"{'passed' if parity['passed'] else 'FAILED'} (max |dlogit| {parity['max_abs_logit']:.2e}, "
         f"min cosine {parity['min_cosine']:.6f}, top-1 agreement {parity['top1_agreement']:.3f})")
    return out


def _onnx_input_dtype(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    elem = model.graph.input[0].type.tensor_type.elem_type
    return {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
            onnx.TensorProto.UINT8: "uint8"}[elem]


def _build_onnxruntime(onnx_path: Path, out: Path, req: BuildRequest) -> tuple[str, str, dict[str, Any]]:
    """Apply ONNX Runtime's graph optimisations ahead of time (faster session start) and record the session."""
    import onnxruntime as ort

    target = out / "model.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(target)
    so.log_severity_level = 3
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    if not target.is_file():
        raise BuildError(f"{onnx_path}: ONNX Runtime wrote no optimised model to {target}")
    # Extended-level fusions are provider-independent; layout-specific (level 'all') ones are left to load time.
    session = {"providers": ["CPUExecutionProvider"], "graph_optimization_level": "all",
               "intra_op_num_threads": req.threads or 0, "preoptimized": "extended"}
    return target.name, ort.__version__, session


def _attention_backend(backend: str, precision: str) -> str:
    """The backend whose attention form a build uses: OpenVINO reads the ``Attention`` operator (the ONNX Runtime
    form) for FP32/FP16, and takes TensorRT's Q/DQ file, with TensorRT's form, for INT8."""
    if backend == "openvino":
        return "tensorrt" if precision == "int8" else "onnxruntime"
    return backend


def _precision_target(backend: str) -> str:
    """The precision step's target: OpenVINO INT8 is the TensorRT Q/DQ file (one calibrated file for both)."""
    return "tensorrt" if backend == "openvino" else backend


def _build_openvino(onnx_path: Path, out: Path, req: BuildRequest) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """Write the ONNX into the bundle (OpenVINO reads it, Q/DQ included) with its q/k/v projections split, and record
    the session; the parity step compiles it. FP32 runs with an explicit f32 hint (OpenVINO would pick bf16 on BF16
    CPUs), FP16 in bf16/f16."""
    from runtime.backends.openvino_backend import import_openvino
    from runtime.backends.openvino_session import OpenVINOSession

    import onnx

    from export.onnx.qkv_split import split_qkv_projections

    model = onnx.load(str(onnx_path), load_external_data=False)  # complete unless it has external data
    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer):
        raise BuildError(f"{onnx_path}: holds external data (over 2 GB); the OpenVINO bundle takes one ONNX file")
    split = split_qkv_projections(model)  # exact; faster on OpenVINO's CPU plugin (see export/onnx/qkv_split.py)
    target = out / "model.onnx"
    write_bytes_atomic(target, model.SerializeToString())
    # INT8: the float parts (softmax, norms, GELU, residuals) in bf16 too where the CPU has it: 0.28 s vs 0.60 s
    # with f32 on base 8x224 here, at the same cosine (0.9994) against FP32 PyTorch.
    hints = {"fp32": ["f32"], "fp16": ["bf16", "f16", "f32"], "int8": ["bf16", "f16", "f32"]}[req.precision]
    session = OpenVINOSession(inference_precision=tuple(hints), performance_hint="LATENCY",
                              num_threads=req.threads or 0, model_cache=True).to_dict()
    info = {"qkv_split": split, "rewrite": "export/onnx/qkv_split.py: fused q/k/v projections split into three "
            "(exact; weights, scales and activation Q/DQ unchanged)"}
    return target.name, str(import_openvino().__version__).split("-")[0], session, info


def _trt_options(req: BuildRequest, clip_shape: list[int] | None = None) -> Any:
    """The TensorRT build options of a request."""
    from export.tensorrt.plan import TensorRTBuildOptions

    return TensorRTBuildOptions(
        precision=req.precision, strongly_typed=req.strongly_typed, batch=tuple(req.batch), input_name="video",
        input_shape=tuple(clip_shape) if clip_shape else None, workspace_mib=req.workspace_mib,
        timing_cache=req.timing_cache or str(Path(req.cache_dir) / "trt_timing.cache"), dla_core=req.dla_core,
        hardware_compatibility=req.hardware_compatibility, version_compatible=req.version_compatible,
        int8_form=req.int8_form, cuda_graph=req.cuda_graph)


def _check_tensorrt_request(req: BuildRequest, trt_version: str) -> Any:
    """:func:`export.tensorrt.plan.plan_request` for ``req``; TensorRTBuildError becomes BuildError."""
    from export.tensorrt.plan import TensorRTBuildError, plan_request

    try:
        return plan_request(_trt_options(req), trt_version, attention=req.attention)
    except TensorRTBuildError as e:
        raise BuildError(str(e)) from e


def _tensorrt_int8_form(req: BuildRequest, backend: str) -> dict[str, Any]:
    """The Q/DQ form for a TensorRT INT8 build: FP16 between the matmuls strongly typed (unless asked for
    FP32), FP32 on the builder-flag path (BuilderFlag.FP16 decides there)."""
    if backend not in ("tensorrt", "openvino") or req.precision != "int8":
        return {}
    return {"form": f"qdq-{req.int8_form if req.strongly_typed else 'fp32'}"}


def _build_tensorrt(onnx_path: Path, out: Path, req: BuildRequest, clip_shape: list[int]
                    ) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """Build ``model.plan``; returns the engine file, TensorRT version, manifest session and build record."""
    from export.tensorrt.build import TensorRTBuildError, build_engine

    try:
        info = build_engine(onnx_path, out / "model.plan", _trt_options(req, clip_shape))
    except TensorRTBuildError as e:
        raise BuildError(str(e)) from e
    session = info["session"]
    record = {k: v for k, v in info.items() if k not in ("plan_path", "session", "build_plan")}
    record["onnx_precision"] = info["build_plan"]["onnx_precision"]
    return "model.plan", str(info["trt_version"]), session, record


def plan_only(req: BuildRequest, trt_version: str) -> dict[str, Any]:
    """What ``--backend tensorrt`` would build with TensorRT ``trt_version``, without TensorRT or a GPU."""
    from export.tensorrt.plan import TensorRTBuildError, plan_request

    if req.precision not in PRECISIONS:
        raise BuildError(f"PRECISION={req.precision!r}: expected one of {PRECISIONS}")
    clip_shape = _model_clip_shape(req.model)
    try:
        plan = plan_request(_trt_options(req, clip_shape), trt_version, attention=req.attention)
    except TensorRTBuildError as e:
        raise BuildError(str(e)) from e
    d = plan.to_dict()
    b = req.batch
    d["profile"] = {"input": "video", "min": [b[0], *clip_shape], "opt": [b[1], *clip_shape],
                    "max": [b[2], *clip_shape]}
    d["model"] = req.model
    d["onnx_handed_to_tensorrt"] = {
        "fp32": "the FP32 ONNX", "fp16": "the FP16 ONNX (LayerNorm FP32; a softmax whose output is re-quantized runs FP16 so MatMul-Softmax-MatMul fuses)",
        "int8-qdq-fp16": "the Q/DQ ONNX, FP16 scales and activations between the INT8 matmuls, LayerNorm/Softmax FP32",
        "int8-qdq-fp32": "the Q/DQ ONNX, FP32 around the INT8 matmuls"}[plan.onnx_precision]
    return d


def _model_clip_shape(model: str) -> list[int]:
    """(frames, 3, H, W) of a preset or checkpoint, read from its config (no weights for presets)."""
    from models import PRESETS

    if model in PRESETS:
        c = PRESETS[model].config
    else:
        if not Path(model).exists():
            raise BuildError(f"MODEL={model!r}: neither a preset ({', '.join(sorted(PRESETS))}) nor an existing path")
        from models import load_checkpoint

        c = load_checkpoint(Path(model)).config
    return [c.num_frames, c.in_chans, c.image_size, c.image_size]


def parity_clips(pre, n: int, seed: int, calib: str | None, image_size: int) -> np.ndarray:
    """Canonical clips for the parity check: real decoded video when a folder is given, else synthetic clips."""
    from calibration.clips.calibset import load_clips

    return load_clips(calib or "synthetic", pre, n=n, seed=seed + 1000)


def _load_as_an_app_would(bundle: Path) -> None:
    """Open the staged bundle exactly as an app will (manifest validation, file hashes); BuildError if refused."""
    from runtime import Engine
    from runtime.errors import BundleError

    try:
        Engine(bundle).close()
    except BundleError as e:
        raise BuildError(f"the runtime refuses the bundle just built: {e}") from e


def default_out(req: BuildRequest, backend: str) -> Path:
    """``OUT``, or ``engines/<model>-<precision>-<backend>``."""
    return Path(req.out or f"engines/{Path(req.model).stem}-{req.precision}-{backend}")


def candidate_engine(bundle: Path, manifest: dict[str, Any]):
    """``runtime.Engine`` on a staged bundle whose manifest is still in memory (not yet written, parity not
    yet known): the runtime validates it and verifies the files as it will for the published bundle."""
    from runtime import Engine

    return Engine(bundle, manifest=manifest)


def run_parity(net, bundle: Path, pre, n: int, seed: int, calib: str | None,
               manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The built engine (through ``runtime.Engine``; with ``manifest``, the staged one) against the PyTorch
    reference, on clips in the model's channel order."""
    import torch

    from runtime import Engine

    clips = parity_clips(pre, n, seed, calib, net.config.image_size)
    with torch.no_grad():
        ref = np.concatenate([net(torch.from_numpy(clips[i:i + 1])).numpy() for i in range(len(clips))])
    with (candidate_engine(bundle, manifest) if manifest is not None else Engine(bundle)) as engine:
        hi = engine.batch_range[1]
        out = np.concatenate([engine.infer(clips[i:i + hi]) for i in range(0, len(clips), hi)])
    return compare_logits(ref, out)


def _parse_batch(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 1:
        parts = [1, parts[0], parts[0]]
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise argparse.ArgumentTypeError(f"BATCH={text!r}: expected min:opt:max with 1 <= min <= opt <= max")
    return parts[0], parts[1], parts[2]


@user_errors("make engine", (BuildError,))
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m export.bundle.build", description="Build an engine bundle.")
    ap.add_argument("--model", default=BuildRequest.model, help="preset name or checkpoint path")
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS)
    ap.add_argument("--backend", default="auto", choices=BACKENDS)
    ap.add_argument("--out", default=None)
    ap.add_argument("--calib", default=None, help="folder of videos, .npy/.npz clips, or 'synthetic'")
    ap.add_argument("--calib-clips", type=int, default=32)
    ap.add_argument("--calib-method", default="max", choices=("max", "entropy", "percentile"))
    ap.add_argument("--batch", type=_parse_batch, default=(1, 1, 8), help="min:opt:max")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--parity-clips", type=int, default=8)
    ap.add_argument("--allow-parity-failure", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache-dir", default="artifacts/cache")
    ap.add_argument("--workspace-mib", type=int, default=4096)
    ap.add_argument("--dla-core", type=int, default=None)
    ap.add_argument("--hardware-compatibility", default="none")
    ap.add_argument("--version-compatible", action="store_true")
    ap.add_argument("--timing-cache", default=None)
    ap.add_argument("--builder-flags", action="store_true",
                    help="TensorRT 10 only: FP32 ONNX + BuilderFlag.FP16 (or the Q/DQ ONNX + INT8/FP16 flags), "
                         "LayerNorm/Softmax pinned FP32, instead of a strongly typed network (DLA on TensorRT 10)")
    ap.add_argument("--int8-form", default="fp16", choices=("fp16", "fp32"),
                    help="TensorRT INT8 Q/DQ form: FP16 (default) or FP32 between the INT8 matmuls")
    ap.add_argument("--cuda-graph", action="store_true", help="TensorRT: the runtime captures CUDA graphs by default")
    ap.add_argument("--plan-only", action="store_true",
                    help="print what --backend tensorrt would build for --trt-version as JSON; build nothing")
    ap.add_argument("--trt-version", default=None, help="with --plan-only: the TensorRT to plan for, e.g. 10.3")
    a = ap.parse_args(argv)
    req = BuildRequest(model=a.model, precision=a.precision, backend=a.backend, out=a.out, calib=a.calib,
                       calib_clips=a.calib_clips, calib_method=a.calib_method, batch=a.batch, attention=a.attention,
                       parity_clips=a.parity_clips, allow_parity_failure=a.allow_parity_failure, threads=a.threads,
                       cache_dir=a.cache_dir, workspace_mib=a.workspace_mib, dla_core=a.dla_core,
                       hardware_compatibility=a.hardware_compatibility, version_compatible=a.version_compatible,
                       timing_cache=a.timing_cache, strongly_typed=not a.builder_flags, int8_form=a.int8_form,
                       cuda_graph=a.cuda_graph)
    from models import SourceError

    if a.plan_only:
        if a.backend != "tensorrt" or not a.trt_version:
            print("make engine: --plan-only plans a TensorRT build: pass --backend tensorrt and --trt-version X.Y "
                  f"(got --backend {a.backend}, --trt-version {a.trt_version})", file=sys.stderr)
            return 2
        try:
            plan = plan_only(req, a.trt_version)
        except (BuildError, SourceError) as e:
            print(f"make engine: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
        import json

        print(json.dumps(plan, indent=2))
        return 0
    if a.trt_version:
        print("make engine: --trt-version is for --plan-only (a build uses the installed TensorRT)", file=sys.stderr)
        return 2

    try:
        out = build_bundle(req)
    except (BuildError, SourceError) as e:
        print(f"make engine: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
