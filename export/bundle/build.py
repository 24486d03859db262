"""``make engine``: checkpoint -> precision-specific ONNX -> engine bundle (TensorRT plan or ONNX Runtime model).

A bundle directory holds the engine, ``manifest.json`` (see ``runtime/manifest.py``) and ``labels.txt``.
The build is incremental (the ONNX export and the calibration are cached by the hashes of their inputs)
and ends with a parity check against the PyTorch reference whose summary goes into the manifest. ``OUT``
may only be absent, an empty folder or one of our bundles; the bundle is staged beside it, the manifest
(with the sha256 and size of every file) is written last, after parity, and publishing is one atomic
step (see ``export/bundle/publish.py``): a build killed at any point leaves the old bundle or the new,
verified one.

The options and their defaults are :class:`~export.bundle.options.BuildRequest`'s table; every decision (backend,
attention form, ONNX precision, INT8 form, TensorRT plan, OUT) is made up front by
:func:`~export.bundle.target.resolve_target`; :func:`build_bundle` runs the five steps on that target.
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.cli_args import ArgumentParser, user_errors
from runtime.files import sha256_file, write_bytes_atomic, write_json_atomic, write_text_atomic
from runtime.manifest import MANIFEST_NAME, BatchRange, InputSpec, Manifest, OutputSpec, Provenance
from runtime.options import Backend, Precision

from calibration.precision.metrics import check_tolerance, compare_logits

from export.bundle.model_source import LoadedModel as _Model
from export.bundle.model_source import load_model, precision_fallback
from export.bundle.options import BuildRequest, add_arguments, request_from_args
from export.bundle.publish import PublishError, check_out, clean_stale, file_records, kill_point, make_staging, publish
from export.bundle.target import (
    OPENVINO_WHY,
    BuildError,
    BuildTarget,
    choose_backend,
    default_out,
    plan_only,
    resolve_target,
    trt_options,
)

__all__ = [
    "BuildRequest",
    "BuildError",
    "BuildTarget",
    "build_bundle",
    "choose_backend",
    "resolve_target",
    "plan_only",
    "default_out",
    "run_parity",
    "parity_clips",
    "candidate_engine",
    "OPENVINO_WHY",
    "main",
]

log = logging.getLogger(__name__)


def build_bundle(req: BuildRequest) -> Path:
    """Build the bundle ``req`` describes; returns its directory."""
    t_start = time.perf_counter()
    target = resolve_target(req, log=log.info)
    fallback = precision_fallback(req, target.backend)  # issue 26: refused, or recorded, before any work
    _prepare_out(req, target.out)
    model = _load_model(req)
    if fallback:
        model = replace(model, provenance={**model.provenance, "notes": [*model.provenance.get("notes", []), fallback]})
    cache = Path(req.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    fp32_onnx = _fp32_onnx(model, target, cache)
    engine_onnx, calibration = _precision_step(req, target, model, fp32_onnx, cache)
    tmp = make_staging(target.out)
    try:
        manifest = _build_engine(req, target, model, fp32_onnx, engine_onnx, calibration, tmp)
        kill_point("after_engine")
        manifest = _parity_step(req, target, model, tmp, manifest, t_start)
        manifest = _speed_step(req, target, model, tmp, manifest, cache)
        write_json_atomic(tmp / MANIFEST_NAME, manifest.to_dict())
        _load_as_an_app_would(tmp)
        kill_point("after_manifest")
        publish(tmp, target.out)
    except PublishError as e:
        raise BuildError(str(e)) from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    parity = manifest.parity or {}
    log.info(
        f"[engine] built {target.out} in {time.perf_counter() - t_start:.1f} s: {target.backend} "
        f"{target.precision}, parity {'passed' if parity['passed'] else 'FAILED'} (max |dlogit| "
        f"{parity['max_abs_logit']:.2e}, min cosine {parity['min_cosine']:.6f}, top-1 agreement "
        f"{parity['top1_agreement']:.3f}{_summary_notes(manifest)})"
    )
    return target.out


def _speed_step(
    req: BuildRequest, target: BuildTarget, model: _Model, tmp: Path, manifest: Manifest, cache: Path
) -> Manifest:
    """CPU INT8 only: the staged bundle against ONNX Runtime FP32 on this CPU (export/bundle/speed_check.py),
    recorded as ``build.speed_vs_fp32``; a warning where INT8 is not faster here."""
    if target.precision != Precision.INT8 or target.backend not in (Backend.ONNXRUNTIME, Backend.OPENVINO):
        return manifest
    from export.bundle.fp32_cache import cached_fp32_onnx
    from export.bundle.speed_check import speed_note, speed_vs_fp32
    from export.onnx.attention import resolve_attention

    log.info("[engine] INT8 against ONNX Runtime FP32 on this CPU")
    fp32 = model.onnx or cached_fp32_onnx(
        model.net,
        model.labels,
        model.pre,
        model.source,
        resolve_attention("auto", Backend.ONNXRUNTIME.value, None, precision=Precision.FP32.value),
        cache,
    )
    try:
        with candidate_engine(tmp, manifest.to_dict()) as engine:
            record = speed_vs_fp32(engine, fp32, req.threads or None)
    except (RuntimeError, OSError, MemoryError, ValueError) as e:  # informational: the bundle has passed parity
        log.warning("[engine] INT8 against ONNX Runtime FP32 not timed: %s: %s", type(e).__name__, e)
        return replace(
            manifest, build={**(manifest.build or {}), "speed_vs_fp32": {"error": f"{type(e).__name__}: {e}"}}
        )
    warn, line = speed_note(record, target.backend.value)
    (log.warning if warn else log.info)("[engine] %s", line)
    return replace(manifest, build={**(manifest.build or {}), "speed_vs_fp32": record})


def _prepare_out(req: BuildRequest, out: Path) -> None:
    """Before any work: OUT must be absent, an empty folder or one of our bundles, apart from the inputs;
    temporaries of dead builds beside it are removed."""
    try:
        check_out(
            out, [p for p in (req.model, req.calib, req.timing_cache) if p and Path(p).exists()] + [req.cache_dir]
        )
        clean_stale(out, log.info)
    except PublishError as e:
        raise BuildError(str(e)) from e


def _summary_notes(manifest: Manifest) -> str:
    """The summary line's part about explicit stand-ins: random weights, a precision fallback, the reference."""
    prov = manifest.provenance
    if prov is None:
        return ""
    parts = ["RANDOM WEIGHTS"] if prov.random_weights else []
    parts += [n for n in prov.notes if n.startswith(("precision fallback", "INT8 calibrated on synthetic"))]
    if prov.reference != "PyTorch FP32":
        parts.append(f"reference: {prov.reference}")
    return "".join(f"; {p}" for p in parts)


def _load_model(req: BuildRequest) -> _Model:
    """Step 1: the checkpoint, ONNX file or preset (RANDOM_WEIGHTS=1), its labels and preprocessing (given or
    inferred, export/bundle/model_source.py) and the calibration clips it calls for."""
    log.info("[engine] 1/5 loading %s", req.model)
    if req.model.endswith(".onnx"):  # MODEL=model.onnx: ONNX Runtime is the reference (export/bundle/onnx_source.py)
        from export.bundle.onnx_source import load_onnx_model

        model = load_onnx_model(req, log.info)
    else:
        model = load_model(req, log.info)
    try:  # one printable line per label (issue 28 #23): refused now, not at parity in the staging folder
        from runtime.manifest import check_labels

        check_labels(model.labels, f"{req.model}: labels", len(model.labels))
    except ValueError as e:
        raise BuildError(str(e)) from e
    if model.calib:  # a missing or empty CALIB folder fails now, not after the export (it is read without decoding)
        from calibration.clips.calibset import selection_key

        selection_key(model.calib, model.pre, req.calib_clips, req.seed)
    return model


def _fp32_onnx(model: _Model, target: BuildTarget, cache: Path) -> Path:
    """Step 2: the FP32 ONNX, cached by the source and the export settings."""
    from export.bundle.fp32_cache import cached_fp32_onnx

    log.info("[engine] 2/5 FP32 ONNX")
    if model.onnx is not None:  # MODEL=model.onnx: the given graph, its input checked (export/bundle/onnx_source.py)
        return model.onnx
    path = cached_fp32_onnx(model.net, model.labels, model.pre, model.source, target.attention, cache)
    kill_point("after_export")
    return path


#: what the manifest's calibration record says when OpenVINO runs the TensorRT Q/DQ file
_SHARED_QDQ = {
    "shared_with": ["tensorrt", "openvino"],
    "note": "the TensorRT Q/DQ INT8 ONNX: one file, calibrated once, for every backend that reads Q/DQ "
    "(OpenVINO's copy has its q/k/v projections split: the same weights, scales and Q/DQ, laid "
    "out as three matmuls)",
}
_PORTABLE_QDQ = {
    "shared_with": ["openvino"],
    "note": "the TensorRT Q/DQ form with 7-bit weights quantized from float (the portable CPU INT8 form, "
    "calibration/precision/cpu_int8.py): the same activation ranges as the TensorRT file, its own weights",
}


def _precision_step(
    req: BuildRequest, target: BuildTarget, model: _Model, fp32_onnx: Path, cache: Path
) -> tuple[Path, dict[str, Any] | None]:
    """Step 3: the ONNX the engine is built from (FP16 conversion or INT8 Q/DQ, cached inside calibration/) and
    the calibration record, or the FP32 ONNX and None."""
    log.info("[engine] 3/5 %s", target.precision_note(model.calib))
    if not target.converts:
        return fp32_onnx, None
    from export.bundle.precision_step import precision_onnx

    engine_onnx, info = precision_onnx(
        fp32_onnx,
        target.precision.value,
        target=target.precision_target,
        calib=model.calib,
        preprocess=model.pre,
        n_clips=req.calib_clips,
        method=req.calib_method,
        cache_dir=cache,
        seed=req.seed,
        **target.precision_kwargs(),
    )
    if target.backend == Backend.OPENVINO and target.cpu_int8_form != "portable":
        info = {**info, **_SHARED_QDQ}
    elif target.backend == Backend.OPENVINO:
        info = {**info, **_PORTABLE_QDQ}
    return engine_onnx, info


def _build_engine(
    req: BuildRequest,
    target: BuildTarget,
    model: _Model,
    fp32_onnx: Path,
    engine_onnx: Path,
    calibration: dict[str, Any] | None,
    tmp: Path,
) -> Manifest:
    """Step 4: the engine and ``labels.txt`` in the staging folder, and the manifest (parity not yet known)."""
    log.info("[engine] 4/5 building the %s engine", target.backend)
    cfg = model.net.config
    clip_shape = [cfg.num_frames, cfg.in_chans, cfg.image_size, cfg.image_size]
    engine_file, backend_version, session, info = _ENGINE_BUILDERS[target.backend](
        engine_onnx, tmp, req, target, clip_shape
    )
    build: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "machine": platform.machine(),
        "seconds": None,
        "request": {k: v for k, v in asdict(req).items() if k != "extra"},
    }
    if info is not None:
        build[target.backend.value] = info
    write_text_atomic(tmp / "labels.txt", "\n".join(model.labels) + "\n")
    return Manifest(
        backend=target.backend.value,
        backend_version=backend_version,
        engine_file=engine_file,
        precision=target.precision.value,
        model_config=cfg.to_dict(),
        input=InputSpec("video", _onnx_input_dtype(engine_onnx), (-1, *clip_shape), BatchRange(*req.batch)),
        output=OutputSpec("logits", "float32", (-1, cfg.num_classes)),
        preprocess=model.pre,
        labels_file="labels.txt",
        session=session,
        provenance=_provenance(model),
        source={
            **model.source,
            "onnx_sha256": sha256_file(engine_onnx),
            "fp32_onnx_sha256": sha256_file(fp32_onnx),
            "attention": target.attention,
        },
        calibration=calibration,
        parity=None,
        tolerance=target.tolerance,
        build=build,
        # every file but the manifest, hashed once the engine is written: the runtime checks them on load
        files=file_records(tmp),
    )


def _parity_step(
    req: BuildRequest, target: BuildTarget, model: _Model, tmp: Path, manifest: Manifest, t_start: float
) -> Manifest:
    """Step 5: the staged engine against PyTorch, with the manifest in memory (``manifest.json`` is written only
    after it, so a staging folder is never a loadable bundle until it has passed, or ALLOW_PARITY_FAILURE); the
    manifest with the result, the build time and the reference set."""
    log.info(
        "[engine] 5/5 parity against %s on %s clips",
        model.provenance.get("reference", "PyTorch FP32"),
        req.parity_clips,
    )
    kept: dict[str, Any] = {}  # the parity clips and logits, for the bundle's reference set
    parity = run_parity(
        model.net, tmp, model.pre, req.parity_clips, req.seed, model.calib, manifest=manifest.to_dict(), keep=kept
    )
    failures = check_tolerance(parity, target.precision.value, target.tolerance)
    parity["passed"] = not failures
    parity["failures"] = failures
    if failures and not req.allow_parity_failure:
        raise BuildError(
            f"parity check failed for {target.precision}: {'; '.join(failures)} "
            "(ALLOW_PARITY_FAILURE=1 keeps the bundle anyway)"
        )
    if failures:
        parity["allowed_failure"] = True
    build = {**(manifest.build or {}), "seconds": round(time.perf_counter() - t_start, 2)}
    manifest = replace(manifest, parity=parity, build=build)
    if file_records(tmp) != manifest.files:  # nothing may change the files after they were hashed
        raise BuildError(f"{tmp}: the bundle's files changed during the parity check")
    return _with_reference(tmp, kept, manifest)


def _provenance(model: _Model) -> Provenance | None:
    p = model.provenance
    if not p:
        return None
    return Provenance(
        weights=p["weights"],
        labels=p["labels"],
        preprocess=p["preprocess"],
        reference=p.get("reference", "PyTorch FP32"),
        notes=tuple(p.get("notes", ())),
    )


def _with_reference(tmp: Path, kept: dict[str, Any], manifest: Manifest) -> Manifest:
    """``reference.json``/``.npz`` written into the staged bundle (export/bundle/reference.py), listed in ``files``
    and recorded in ``build.reference``."""
    from export.bundle.reference import add_reference

    d = manifest.to_dict()
    add_reference(tmp, kept, d)
    return replace(manifest, files=d["files"], build=d["build"])


def _onnx_input_dtype(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    elem = model.graph.input[0].type.tensor_type.elem_type
    return {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.UINT8: "uint8"}[
        elem
    ]


# ------------------------------------------------------------------------- step 4, per backend
# Each returns (engine file name, backend version, manifest session, build record for manifest.build or None).


def _build_onnxruntime(
    onnx_path: Path, out: Path, req: BuildRequest, target: BuildTarget, clip_shape: list[int]
) -> tuple[str, str, dict[str, Any], None]:
    """Apply ONNX Runtime's graph optimisations ahead of time (faster session start) and record the session."""
    import onnxruntime as ort

    dest = out / "model.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(dest)
    so.log_severity_level = 3
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    if not dest.is_file():
        raise BuildError(f"{onnx_path}: ONNX Runtime wrote no optimised model to {dest}")
    # Extended-level fusions are provider-independent; layout-specific (level 'all') ones are left to load time.
    session = {
        "providers": ["CPUExecutionProvider"],
        "graph_optimization_level": "all",
        "intra_op_num_threads": req.threads or 0,
        "preoptimized": "extended",
    }
    return dest.name, ort.__version__, session, None


#: OpenVINO's inference-precision hints per bundle precision. INT8: the float parts (softmax, norms, GELU,
#: residuals) in bf16 too where the CPU has it: 0.28 s vs 0.60 s with f32 on base 8x224 here, at the same cosine
#: (0.9994) against FP32 PyTorch. FP32 runs with an explicit f32 hint (OpenVINO would pick bf16 on BF16 CPUs).
_OPENVINO_HINTS = {
    Precision.FP32: ("f32",),
    Precision.FP16: ("bf16", "f16", "f32"),
    Precision.INT8: ("bf16", "f16", "f32"),
}


def _build_openvino(
    onnx_path: Path, out: Path, req: BuildRequest, target: BuildTarget, clip_shape: list[int]
) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """Write the ONNX into the bundle (OpenVINO reads it, Q/DQ included) with its q/k/v projections split, and record
    the session; the parity step compiles it."""
    from runtime.backends.openvino_backend import import_openvino
    from runtime.backends.openvino_session import OpenVINOSession

    import onnx

    from export.onnx.qkv_split import split_qkv_projections

    model = onnx.load(str(onnx_path), load_external_data=False)  # complete unless it has external data
    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer):
        raise BuildError(f"{onnx_path}: holds external data (over 2 GB); the OpenVINO bundle takes one ONNX file")
    split = split_qkv_projections(model)  # exact; faster on OpenVINO's CPU plugin (see export/onnx/qkv_split.py)
    cpu_int8 = _cpu_int8_form(model, target)  # issue 25: the same numbers on AVX2-only, VNNI, AMX
    dest = out / "model.onnx"
    write_bytes_atomic(dest, model.SerializeToString())
    session = OpenVINOSession(
        inference_precision=_OPENVINO_HINTS[target.precision],
        performance_hint="LATENCY",
        num_threads=req.threads or 0,
        model_cache=True,
    ).to_dict()
    info = {
        "qkv_split": split,
        "rewrite": "export/onnx/qkv_split.py: fused q/k/v projections split into three "
        "(exact; weights, scales and activation Q/DQ unchanged)",
    }
    if cpu_int8 is not None:
        info["cpu_int8"] = cpu_int8
    return dest.name, str(import_openvino().__version__).split("-")[0], session, info


def _cpu_int8_form(model: Any, target: BuildTarget) -> dict[str, Any] | None:
    """INT8 only: the Q/DQ model rewritten into the target's CPU INT8 form (calibration/precision/cpu_int8.py), with
    this CPU's ISA recorded (runtime/cpu_isa.py); the runtime checks the record on load."""
    if target.precision != Precision.INT8:
        return None
    from calibration.precision.cpu_int8 import to_cpu_int8_form
    from runtime.cpu_isa import cpu_isa

    return {**to_cpu_int8_form(model, target.cpu_int8_form, target.cpu_int8_why), "built_on": cpu_isa().describe()}


def _build_tensorrt(
    onnx_path: Path, out: Path, req: BuildRequest, target: BuildTarget, clip_shape: list[int]
) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """Build ``model.plan``; the build record is TensorRT's build info without the plan path and session."""
    from export.tensorrt.build import TensorRTBuildError, build_engine

    try:
        info = build_engine(onnx_path, out / "model.plan", trt_options(req, clip_shape))
    except TensorRTBuildError as e:
        raise BuildError(str(e)) from e
    session = info["session"]
    record = {k: v for k, v in info.items() if k not in ("plan_path", "session", "build_plan")}
    record["onnx_precision"] = info["build_plan"]["onnx_precision"]
    return "model.plan", str(info["trt_version"]), session, record


_ENGINE_BUILDERS: dict[Backend, Callable[..., tuple[str, str, dict[str, Any], dict[str, Any] | None]]] = {
    Backend.ONNXRUNTIME: _build_onnxruntime,
    Backend.OPENVINO: _build_openvino,
    Backend.TENSORRT: _build_tensorrt,
}


# ------------------------------------------------------------------------- parity against PyTorch


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


def candidate_engine(bundle: Path, manifest: dict[str, Any]):
    """``runtime.Engine`` on a staged bundle whose manifest is still in memory (not yet written, parity not
    yet known): the runtime validates it and verifies the files as it will for the published bundle."""
    from runtime import Engine

    return Engine(bundle, manifest=manifest)


def run_parity(
    net,
    bundle: Path,
    pre,
    n: int,
    seed: int,
    calib: str | None,
    manifest: dict[str, Any] | None = None,
    keep: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The built engine (through ``runtime.Engine``; with ``manifest``, the staged one) against the PyTorch
    reference, on clips in the model's channel order; ``keep`` receives the clips and logits (reference set)."""
    from runtime import Engine

    from export.bundle.reference import reference_pass

    clips, ref = reference_pass(net, parity_clips(pre, n, seed, calib, net.config.image_size), keep)
    with candidate_engine(bundle, manifest) if manifest is not None else Engine(bundle) as engine:
        hi = engine.batch_range[1]
        out = np.concatenate([engine.infer(clips[i : i + hi]) for i in range(0, len(clips), hi)])
    if keep is not None:
        keep["engine_logits"] = out
    return compare_logits(ref, out)


# ------------------------------------------------------------------------- make engine


@user_errors("make engine", (BuildError,))
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m export.bundle.build", description="Build an engine bundle.")
    add_arguments(ap)  # every option of BuildRequest's table, with its default, choices and help
    ap.add_argument(
        "--plan-only",
        action="store_true",
        help="print what --backend tensorrt would build for --trt-version as JSON; build nothing",
    )
    ap.add_argument("--trt-version", default=None, help="with --plan-only: the TensorRT to plan for, e.g. 10.3")
    a = ap.parse_args(argv)
    req = request_from_args(a)
    from models import SourceError

    if a.plan_only:
        if a.backend != Backend.TENSORRT or not a.trt_version:
            print(
                "make engine: --plan-only plans a TensorRT build: pass --backend tensorrt and --trt-version X.Y "
                f"(got --backend {a.backend}, --trt-version {a.trt_version})",
                file=sys.stderr,
            )
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
