"""``make engine``: checkpoint -> precision-specific ONNX -> engine bundle (TensorRT plan or ONNX Runtime model).

A bundle directory holds the engine, ``manifest.json`` (see ``runtime/manifest.py``) and ``labels.txt``.
The build is incremental (the ONNX export and the calibration are cached by the hashes of their inputs)
and atomic (the bundle is assembled in a temporary directory and renamed into place), and it ends
with a parity check against the PyTorch reference whose summary goes into the manifest.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.files import sha256_file, write_json_atomic
from runtime.manifest import SCHEMA_VERSION

from calibration.metrics import TOLERANCES, check_tolerance, compare_logits

PRECISIONS = ("fp32", "fp16", "int8")
BACKENDS = ("auto", "tensorrt", "onnxruntime")


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
    strongly_typed: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def choose_backend(requested: str) -> tuple[str, str]:
    """The backend to build for, and why."""
    if requested not in BACKENDS:
        raise BuildError(f"BACKEND={requested!r}: expected one of {BACKENDS}")
    from .tensorrt_build import tensorrt_available

    ok, reason = tensorrt_available()
    if requested == "onnxruntime":
        return "onnxruntime", "asked for"
    if requested == "tensorrt":
        if not ok:
            raise BuildError(f"BACKEND=tensorrt, but {reason}. Install TensorRT on a machine with an NVIDIA GPU "
                             "(pip install '.[tensorrt]'; JetPack ships it on Jetson) or use BACKEND=onnxruntime.")
        return "tensorrt", "asked for"
    if ok:
        return "tensorrt", f"auto: {reason}"
    return "onnxruntime", f"auto: TensorRT not usable here ({reason}); ONNX Runtime on the CPU"


def build_bundle(req: BuildRequest) -> Path:
    """Build the bundle ``req`` describes; returns its directory."""
    from models import load_source

    from .attention import resolve_attention
    from .fp32_cache import cached_fp32_onnx

    t_start = time.perf_counter()
    if req.precision not in PRECISIONS:
        raise BuildError(f"PRECISION={req.precision!r}: expected one of {PRECISIONS}")
    backend, why = choose_backend(req.backend)
    _log(f"[engine] backend: {backend} ({why})")
    trt_version = None
    if backend == "tensorrt":
        import tensorrt as trt  # noqa: F401 - checked available above
        trt_version = trt.__version__
    attention = resolve_attention(req.attention, backend, trt_version)

    _log(f"[engine] 1/5 loading {req.model}")
    net, labels, pre, source = load_source(req.model, req.seed)
    cfg = net.config
    if labels is None:
        labels = [f"class_{i}" for i in range(cfg.num_classes)]
    cache = Path(req.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)

    # 2. FP32 ONNX, cached by the source and the export settings.
    _log("[engine] 2/5 FP32 ONNX")
    fp32_onnx = cached_fp32_onnx(net, labels, pre, source, attention, cache)

    # 3. Precision: calibration clips, FP16 conversion or INT8 Q/DQ (cached inside calibration/).
    calibration_info = None
    engine_onnx = fp32_onnx
    if req.precision != "fp32":
        from .precision_step import precision_onnx

        _log(f"[engine] 3/5 {req.precision}: calibrating on {req.calib or 'synthetic clips'}")
        engine_onnx, calibration_info = precision_onnx(
            fp32_onnx, req.precision, target=backend, calib=req.calib, preprocess=pre, n_clips=req.calib_clips,
            method=req.calib_method, cache_dir=cache, seed=req.seed)
    else:
        _log("[engine] 3/5 fp32: no calibration")

    out = Path(req.out or f"engines/{Path(req.model).stem}-{req.precision}-{backend}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _log(f"[engine] 4/5 building the {backend} engine")
        clip_shape = [cfg.num_frames, cfg.in_chans, cfg.image_size, cfg.image_size]
        if backend == "tensorrt":
            engine_file, backend_version, session = _build_tensorrt(engine_onnx, tmp, req, clip_shape)
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
        (tmp / "labels.txt").write_text("\n".join(labels) + "\n")
        write_json_atomic(tmp / "manifest.json", manifest)

        _log(f"[engine] 5/5 parity against PyTorch on {req.parity_clips} clips")
        parity = run_parity(net, tmp, pre, req.parity_clips, req.seed, req.calib)
        failures = check_tolerance(parity, req.precision)
        parity["passed"] = not failures
        parity["failures"] = failures
        manifest["parity"] = parity
        manifest["build"]["seconds"] = round(time.perf_counter() - t_start, 2)
        write_json_atomic(tmp / "manifest.json", manifest)
        if failures and not req.allow_parity_failure:
            raise BuildError(f"parity check failed for {req.precision}: {'; '.join(failures)} "
                             "(ALLOW_PARITY_FAILURE=1 keeps the bundle anyway)")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
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


def _build_tensorrt(onnx_path: Path, out: Path, req: BuildRequest, clip_shape: list[int]
                    ) -> tuple[str, str, dict[str, Any]]:
    from .tensorrt_build import TensorRTBuildOptions, build_engine

    options = TensorRTBuildOptions(precision=req.precision, strongly_typed=req.strongly_typed, batch=tuple(req.batch),
                                   input_name="video", input_shape=tuple(clip_shape), workspace_mib=req.workspace_mib,
                                   timing_cache=req.timing_cache or str(Path(req.cache_dir) / "trt_timing.cache"),
                                   dla_core=req.dla_core, hardware_compatibility=req.hardware_compatibility,
                                   version_compatible=req.version_compatible)
    info = build_engine(onnx_path, out / "model.plan", options)
    session = {"options": options.to_dict(), "build": {k: v for k, v in info.items() if k != "plan_path"}}
    return "model.plan", str(info.get("trt_version") or info.get("tensorrt_version")), session


def parity_clips(pre, n: int, seed: int, calib: str | None, image_size: int) -> np.ndarray:
    """Canonical clips for the parity check: real decoded video when a folder is given, else synthetic clips."""
    from calibration.calibset import load_clips

    return load_clips(calib or "synthetic", pre, n=n, seed=seed + 1000)


def run_parity(net, bundle: Path, pre, n: int, seed: int, calib: str | None) -> dict[str, Any]:
    """The built engine (through ``runtime.Engine``) against the PyTorch reference."""
    import torch

    from runtime import Engine

    clips = parity_clips(pre, n, seed, calib, net.config.image_size)
    with torch.no_grad():
        ref = np.concatenate([net(torch.from_numpy(clips[i:i + 1])).numpy() for i in range(len(clips))])
    with Engine(bundle) as engine:
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.engine_build", description="Build an engine bundle.")
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
                    help="TensorRT 10 only: FP32 ONNX + FP16 builder flag instead of a strongly typed network")
    a = ap.parse_args(argv)
    req = BuildRequest(model=a.model, precision=a.precision, backend=a.backend, out=a.out, calib=a.calib,
                       calib_clips=a.calib_clips, calib_method=a.calib_method, batch=a.batch, attention=a.attention,
                       parity_clips=a.parity_clips, allow_parity_failure=a.allow_parity_failure, threads=a.threads,
                       cache_dir=a.cache_dir, workspace_mib=a.workspace_mib, dla_core=a.dla_core,
                       hardware_compatibility=a.hardware_compatibility, version_compatible=a.version_compatible,
                       timing_cache=a.timing_cache, strongly_typed=not a.builder_flags)
    from models import SourceError

    try:
        out = build_bundle(req)
    except (BuildError, SourceError) as e:
        print(f"make engine: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
