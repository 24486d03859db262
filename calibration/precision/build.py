"""The precision step of ``make engine``: FP32 ONNX -> FP16 or INT8 ONNX, cached by the hash of its inputs.

Two cache levels under ``cache_dir``:

* the result: ``{precision}-{target}-{key}.onnx`` with ``.json`` beside it (the info dict), where
  ``key`` hashes the FP32 model's SHA-256, precision, target, method, options and the calibration
  selection key (:func:`calibration.clips.calibset.selection_key`: names, sizes and times of the clip files,
  never their content); a hit returns at once and reads no clip;
* the calibration: ``calibsets/{selection key}.json`` records the set's SHA-256 and selection, and
  ``calib/`` holds the INT8 activation ranges and FP16 activation statistics keyed by model SHA-256 +
  set SHA-256 (+ method + target); a changed option (e.g. another INT8 form or FP16 threshold) reuses
  them without reading the clips again.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.files import sha256_file, sha256_json, temp_path_beside, write_json_atomic
from runtime.options import PRECISIONS as ALL_PRECISIONS, Precision
from runtime.preprocess import PreprocessConfig
from runtime.backends.onnxruntime_session import cpu_session_options

from calibration.clips.calibset import CalibrationSet, load_calibration_set, selection_key
from calibration.clips.widen import WIDEN_VERSION, widen_clips, widen_record

__all__ = ["precision_onnx", "PrecisionBuildError", "PRECISIONS", "TARGETS", "BUILD_VERSION"]

#: the precisions this step converts to (FP32 needs no conversion)
PRECISIONS = tuple(p for p in ALL_PRECISIONS if p != Precision.FP32)
TARGETS = ("tensorrt", "onnxruntime")
#: bumped when the conversion changes in a way that invalidates cached precision models
BUILD_VERSION = 3  # 2: dynamic INT8 with per-channel weights, footage calibration widened; 3: every one widened


class PrecisionBuildError(RuntimeError):
    """A precision build that cannot go on; the message says what and why."""


def _log(msg: str) -> None:
    print(f"[precision] {msg}", file=sys.stderr, flush=True)


class _LazySet:
    """The calibration set, loaded on first use; its SHA-256 from the selection record when known."""

    def __init__(self, spec: str | None, pre: PreprocessConfig, n: int, seed: int, cache_dir: Path, progress: bool):
        self.spec, self.pre, self.n, self.seed, self.progress = spec or "synthetic", pre, n, seed, progress
        self.key = selection_key(self.spec, pre, n, seed)
        self.record_path = cache_dir / "calibsets" / f"{self.key[:24]}.json"
        self.record: dict[str, Any] | None = None
        if self.record_path.is_file():
            try:
                self.record = json.loads(self.record_path.read_text())
            except json.JSONDecodeError:
                self.record = None
        self.set: CalibrationSet | None = None

    def clips(self) -> np.ndarray:
        if self.set is None:
            self.set = load_calibration_set(self.spec, self.pre, self.n, self.seed, progress=self.progress)
            info = self.set.info()
            if self.record is not None and self.record.get("sha256") != info["sha256"]:
                _log(
                    f"warning: the clips of {self.spec!r} changed content (sha256 {self.record.get('sha256')[:12]} -> "
                    f"{info['sha256'][:12]}) without a change in names, sizes or times"
                )
            self.record = {**info, "selection_key": self.key}
            write_json_atomic(self.record_path, self.record)
        return self.set.clips

    def sha256(self) -> str:
        if self.record is None:
            self.clips()
        assert self.record is not None
        return self.record["sha256"]

    def summary(self) -> dict[str, Any]:
        r = self.record or {}
        return {
            "calib": self.spec,
            "set_sha256": r.get("sha256"),
            "n_clips": r.get("n_clips"),
            "requested_clips": self.n,
            "seed": self.seed,
            "skipped": len(r.get("skipped", [])),
            "skipped_files": [s["file"] for s in r.get("skipped", [])],
            "selection_key": self.key,
            "source": r.get("source"),
        }


def _ort_check(path: Path) -> None:
    import onnxruntime as ort

    so = cpu_session_options()
    try:
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise PrecisionBuildError(
            f"{path}: ONNX Runtime CPU cannot load the converted model ({type(e).__name__}: {e})"
        ) from e


def _stamp_metadata(path: Path, fp32_onnx: Path, precision: str, info: dict[str, Any]) -> None:
    """Copy the FP32 export's metadata (config, labels, preprocessing) and add precision + calibration."""
    import onnx

    src = onnx.load(str(fp32_onnx), load_external_data=False)
    model = onnx.load(str(path))
    props = {p.key: p.value for p in src.metadata_props}
    props.update({p.key: p.value for p in model.metadata_props if p.key not in props})
    props["precision"] = precision
    props["calibration"] = json.dumps(
        {k: info.get(k) for k in ("target", "form", "method", "set_sha256", "n_clips", "calib")}, default=str
    )
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    tmp = temp_path_beside(path, ".onnx")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_request(fp32_onnx: Path, precision: str, target: str, method: str) -> None:
    """Raise :class:`PrecisionBuildError` for an unknown precision, target or method, or a missing FP32 ONNX."""
    from calibration.precision import int8 as int8_mod

    if precision not in PRECISIONS:
        raise PrecisionBuildError(f"precision {precision!r}: expected one of {PRECISIONS} (fp32 needs no conversion)")
    if target not in TARGETS:
        raise PrecisionBuildError(f"target {target!r}: expected one of {TARGETS}")
    if method not in int8_mod.METHODS:
        raise PrecisionBuildError(f"calibration method {method!r}: expected one of {int8_mod.METHODS}")
    if not fp32_onnx.is_file():
        raise PrecisionBuildError(f"{fp32_onnx}: FP32 ONNX not found")


def _fp16_thresholds(overflow: float | None, error: float | None) -> tuple[float, float]:
    """The FP16 overflow and error thresholds, None replaced by :mod:`calibration.precision.fp16`'s defaults."""
    from calibration.precision import fp16 as fp16_mod

    return (
        overflow if overflow is not None else fp16_mod.DEFAULT_OVERFLOW_THRESHOLD,
        error if error is not None else fp16_mod.DEFAULT_ERROR_THRESHOLD,
    )


def _convert_fp16(
    fp32_onnx: Path,
    out: Path,
    target: str,
    lazy: _LazySet,
    model_sha: str,
    cache_dir: Path,
    keep_io_types: bool,
    overflow: float,
    err: float,
    validate_clips: int,
    progress: bool,
) -> dict[str, Any]:
    """The FP16 conversion, its activation statistics cached by model and calibration-set SHA-256."""
    from calibration.precision import fp16 as fp16_mod

    def stats_path() -> Path:
        return cache_dir / "calib" / f"fp16stats-{model_sha[:16]}-{lazy.sha256()[:16]}.json"

    # Keyed by the set's SHA-256, which is known without reading clips once the selection is recorded.
    return fp16_mod.convert_fp16(
        fp32_onnx,
        out,
        lazy.clips,
        stats_cache=stats_path,
        keep_io_types=keep_io_types,
        overflow_threshold=overflow,
        error_threshold=err,
        validate_clips=validate_clips,
        progress=progress,
    )


def _record_result(
    out: Path,
    fp32_onnx: Path,
    precision: str,
    target: str,
    method: str,
    detail: dict[str, Any],
    lazy: _LazySet,
    model_sha: str,
    target_check: Callable[[Path, str], dict[str, Any]] | None,
    t0: float,
    info_path: Path,
) -> dict[str, Any]:
    """Check the converted ``out``, stamp its metadata and write its info record; on any failure remove ``out``."""
    try:
        info: dict[str, Any] = {
            "precision": precision,
            "target": target,
            "method": method if precision == "int8" else None,
            "form": detail.get("form"),
            "calibrated": detail.get("calibration_cache") is not None
            or detail.get("stats_cache") is not None
            or bool((detail.get("smoothquant") or {}).get("layernorms_smoothed")),
            **lazy.summary(),
            "fp32_onnx_sha256": model_sha,
            "onnx": str(out),
            "detail": detail,
        }
        if precision == "fp16":
            info["kept_fp32"] = detail["kept_fp32"]
            info["kept_fp32_counts"] = detail["kept_fp32_counts"]
        _ort_check(out)
        if target_check is not None:
            info["target_check"] = target_check(out, precision)
        _stamp_metadata(out, fp32_onnx, precision, info)
        info["seconds"] = round(time.perf_counter() - t0, 2)
        info["reused"] = False
        write_json_atomic(info_path, info)
    except BaseException:
        out.unlink(missing_ok=True)  # never leave a result without its record
        raise
    return info


#: SmoothQuant alpha for widened calibration (measured: :mod:`calibration.clips.widen`)
WIDENED_SMOOTH_ALPHA = 0.7


def _widened(lazy: _LazySet, pre: PreprocessConfig, seed: int) -> tuple[Callable[[], np.ndarray], Callable[[], str]]:
    """The widened clips (made once, on first use) and the key their calibration ranges are cached under."""
    made: dict[str, np.ndarray] = {}

    def clips() -> np.ndarray:
        if "c" not in made:
            made["c"] = widen_clips(lazy.clips(), pre, seed)
        return made["c"]

    return clips, lambda: sha256_json(lazy.sha256(), "widened", WIDEN_VERSION, seed)


def precision_onnx(
    fp32_onnx: Path,
    precision: str,
    target: str,
    calib: str | None,
    preprocess: PreprocessConfig,
    n_clips: int,
    method: str,
    cache_dir: Path,
    seed: int,
    *,
    form: str | None = None,
    keep_io_types: bool = True,
    fp16_overflow_threshold: float | None = None,
    fp16_error_threshold: float | None = None,
    validate_clips: int = 4,
    progress: bool = True,
    target_check: Callable[[Path, str], dict[str, Any]] | None = None,
    int8_options: dict[str, Any] | None = None,
    widen: bool | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The ``precision`` ONNX of ``fp32_onnx`` for ``target`` (path in ``cache_dir``) and what was done.

    ``calib`` None means synthetic clips. ``method`` (INT8 calibration): max | entropy | percentile.
    ``form`` (INT8 for onnxruntime): see :data:`calibration.precision.int8.ORT_FORMS` (None: the fastest that
    meets the bar). The result is reused when its inputs are unchanged (no clip is read then).
    ``target_check(path, precision)``, when given, vets the result for its target (e.g. what TensorRT's parser
    and builder would accept); its answer is recorded as ``info["target_check"]``, and what it raises aborts.
    ``int8_options``: outlier handling passed to :func:`calibration.precision.int8.quantize_int8` (``smooth``,
    ``keep_float``). ``widen`` (INT8): calibrate on the clips widened by :func:`calibration.clips.widen.widen_clips`,
    with SmoothQuant alpha :data:`WIDENED_SMOOTH_ALPHA` unless ``int8_options`` sets one; None: on (footage, saved
    tensors and the synthetic generator alike: each is narrower than the cameras a bundle meets).
    """
    from calibration.precision import int8 as int8_mod

    fp32_onnx, cache_dir = Path(fp32_onnx), Path(cache_dir)
    _check_request(fp32_onnx, precision, target, method)
    t0 = time.perf_counter()
    cache_dir.mkdir(parents=True, exist_ok=True)
    model_sha = sha256_file(fp32_onnx, external_data=True)
    lazy = _LazySet(calib, preprocess, n_clips, seed, cache_dir, progress)
    overflow, err = _fp16_thresholds(fp16_overflow_threshold, fp16_error_threshold)
    int8_options = dict(int8_options or {})
    widen = precision == "int8" and (True if widen is None else widen)
    if widen:
        int8_options.setdefault("smooth", WIDENED_SMOOTH_ALPHA)
    options = (
        {
            "method": method,
            "form": form,
            "outliers": {**int8_mod.outlier_defaults(), **int8_options},
            **({"widen": WIDEN_VERSION} if widen else {}),
        }
        if precision == "int8"
        else {"keep_io_types": keep_io_types, "overflow": overflow, "error": err}
    )
    key = sha256_json(BUILD_VERSION, model_sha, precision, target, lazy.key, options, validate_clips)
    out = cache_dir / f"{precision}-{target}-{key}.onnx"
    info_path = out.with_suffix(".json")
    if out.is_file() and info_path.is_file():
        info = json.loads(info_path.read_text())
        info["reused"] = True
        _log(f"{precision} for {target}: reusing {out}")
        return out, info

    if precision == "int8":
        _log(f"int8 for {target}: {method} calibration on {lazy.spec}")
        get_clips, set_sha = (lazy.clips, lazy.sha256) if not widen else _widened(lazy, preprocess, seed)
        detail = int8_mod.quantize_int8(
            fp32_onnx,
            out,
            target,
            method,
            get_clips,
            set_sha,
            cache_dir,
            form=form,
            validate_clips=validate_clips,
            progress=progress,
            **int8_options,
        )
        detail["widened"] = widen_record(int((lazy.record or {}).get("n_clips") or 0)) if widen else None
    else:
        _log(f"fp16 for {target}: measuring activations on {lazy.spec}")
        detail = _convert_fp16(
            fp32_onnx, out, target, lazy, model_sha, cache_dir, keep_io_types, overflow, err, validate_clips, progress
        )
    info = _record_result(
        out, fp32_onnx, precision, target, method, detail, lazy, model_sha, target_check, t0, info_path
    )
    _log(f"{precision} for {target}: wrote {out} in {info['seconds']:.1f} s")
    return out, info
