"""A bundle's reference set: the evidence a device checks itself against, and the comparison.

Written by ``export/bundle/reference.py`` at build time (after parity), listed in the manifest's ``files`` with
its SHA-256 and size like every other file, and read here, always hash-checked (a tampered reference is refused
whatever ``verify`` says). Two files:

* ``reference.json``: ``schema``, ``precision``, ``tolerance`` (the build's, per precision), ``clips`` (count,
  shape, dtype, where they came from), ``blocks`` (block tensor names, samples per block, the relative-L2
  threshold of a diverged block) and ``arrays`` (name -> dtype and shape of every array below);
* ``reference.npz`` (``np.savez_compressed``'s layout, fixed timestamps; see :func:`npz_bytes`):
  ``clips`` (N, T, 3, H, W) float16: the build's parity clips, rounded to FP16 *before* the reference ran, so
  FP16 storage is exact; ``logits`` (N, classes) float32: FP32 PyTorch; ``engine_logits``: the same engine on
  the build machine; and, where the engine's graph names its blocks, ``block_index`` (K,) int64 (flat positions
  sampled in one clip's block output: the class token's row and a fixed random sample), ``block_samples``
  (N, depth, K) float32 and ``block_norm`` (N, depth) float32 (L2 norm of the whole block output).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleError
from .manifest import BundleFiles

__all__ = [
    "DECISIVE_MARGIN",
    "decisive_rows",
    "top1_on_decisive",
    "REFERENCE_JSON",
    "REFERENCE_NPZ",
    "REFERENCE_SCHEMA",
    "ReferenceSet",
    "has_reference",
    "load_reference",
    "npz_bytes",
    "compare_logits",
    "tolerance_failures",
]

REFERENCE_JSON = "reference.json"
REFERENCE_NPZ = "reference.npz"
REFERENCE_SCHEMA = 1
MAX_REFERENCE_JSON = 1 << 20
_ARRAYS = {
    "clips": ("float16", "float32", "uint8"),
    "logits": ("float32",),
    "engine_logits": ("float32",),
    "block_index": ("int64",),
    "block_samples": ("float32",),
    "block_norm": ("float32",),
}


@dataclass
class ReferenceSet:
    """The stored reference of one bundle (arrays validated against the manifest and ``reference.json``)."""

    clips: np.ndarray
    logits: np.ndarray
    tolerance: dict[str, float]
    precision: str
    meta: dict[str, Any]
    engine_logits: np.ndarray | None = None
    block_names: list[str] = field(default_factory=list)
    block_index: np.ndarray | None = None
    block_samples: np.ndarray | None = None
    block_norm: np.ndarray | None = None
    block_threshold: float | None = None

    def inputs(self, dtype: np.dtype) -> np.ndarray:
        """The clips as the engine takes them (FP16 storage widens to FP32 exactly)."""
        return np.ascontiguousarray(self.clips.astype(dtype, copy=False))


def has_reference(manifest: dict[str, Any]) -> bool:
    """Whether the bundle lists a reference set (bundles built before it existed do not)."""
    files = manifest.get("files") or {}
    return REFERENCE_JSON in files and REFERENCE_NPZ in files


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``np.savez_compressed``'s layout (``np.load`` reads it) with fixed member timestamps, so the same arrays give
    the same bytes; deflate level 1: base 8x224's clips take 11.0 MB in 2.9 s, level 6 10.5 MB in 9.1 s here."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            zf.writestr(info, member.getvalue(), compresslevel=1)  # a ZipInfo ignores the ZipFile's level
    return buf.getvalue()


def load_reference(bundle_dir: str | Path, manifest: dict[str, Any]) -> ReferenceSet:
    """Read and check the reference set of a validated manifest; :class:`BundleError` names the file and field."""
    if not has_reference(manifest):
        raise BundleError(
            f"{Path(bundle_dir) / 'manifest.json'}: files lists no {REFERENCE_JSON}/{REFERENCE_NPZ}: "
            "the bundle was built before bundles carried their reference set; rebuild it (make engine), "
            "or compare against PyTorch with make parity on a machine with torch"
        )
    files = manifest["files"]
    with BundleFiles(bundle_dir) as bf:  # always hash-checked: the reference decides what "correct" means
        raw_json = bf.read(
            REFERENCE_JSON, files[REFERENCE_JSON]["size"], files[REFERENCE_JSON]["sha256"], limit=MAX_REFERENCE_JSON
        )
        raw_npz = bf.read(REFERENCE_NPZ, files[REFERENCE_NPZ]["size"], files[REFERENCE_NPZ]["sha256"])
    where = Path(bundle_dir) / REFERENCE_JSON
    try:
        meta = json.loads(raw_json.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BundleError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("schema") != REFERENCE_SCHEMA:
        got = meta.get("schema") if isinstance(meta, dict) else meta
        raise BundleError(f"{where}: schema: expected {REFERENCE_SCHEMA}, got {got!r}")
    arrays = _read_npz(raw_npz, Path(bundle_dir) / REFERENCE_NPZ, meta)
    return _assemble(meta, arrays, manifest, where)


def _read_npz(raw: bytes, where: Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    declared = meta.get("arrays")
    if not isinstance(declared, dict):
        raise BundleError(f"{where.with_name(REFERENCE_JSON)}: arrays: expected an object name -> dtype, shape")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise BundleError(f"{where}: not a readable .npz ({type(e).__name__}: {e})") from e
    if sorted(arrays) != sorted(declared):
        raise BundleError(f"{where}: holds {sorted(arrays)}, {REFERENCE_JSON} declares {sorted(declared)}")
    for name, a in arrays.items():
        spec = declared[name]
        allowed = _ARRAYS.get(name)
        if allowed is None:
            raise BundleError(f"{where}: unknown array {name!r}; expected some of {sorted(_ARRAYS)}")
        if (
            str(a.dtype) not in allowed
            or not isinstance(spec, dict)
            or spec.get("dtype") != str(a.dtype)
            or spec.get("shape") != list(a.shape)
        ):
            raise BundleError(
                f"{where}: {name}: {a.dtype} {list(a.shape)}, {REFERENCE_JSON} declares {spec!r} "
                f"(allowed dtypes {allowed})"
            )
    return arrays


def _assemble(
    meta: dict[str, Any], arrays: dict[str, np.ndarray], manifest: dict[str, Any], where: Path
) -> ReferenceSet:
    for name in ("clips", "logits"):
        if name not in arrays:
            raise BundleError(f"{where}: arrays: {name!r} missing")
    clips, logits = arrays["clips"], arrays["logits"]
    clip_shape = list(manifest["input"]["shape"][1:])
    classes = manifest["output"]["shape"][-1]
    n = len(clips)
    if list(clips.shape[1:]) != clip_shape or n < 1:
        raise BundleError(f"{where}: clips: shape {list(clips.shape)}, the engine takes (N, {clip_shape})")
    for name in ("logits", "engine_logits"):
        if name in arrays and list(arrays[name].shape) != [n, classes]:
            raise BundleError(f"{where}: {name}: shape {list(arrays[name].shape)}, expected [{n}, {classes}]")
    if not all(np.isfinite(a).all() for k, a in arrays.items() if a.dtype.kind == "f"):
        raise BundleError(f"{where}: arrays hold NaN/Inf")
    tolerance = meta.get("tolerance")
    if (
        not isinstance(tolerance, dict)
        or not tolerance
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in tolerance.values())
    ):
        raise BundleError(f"{where}: tolerance: expected an object of numbers, got {tolerance!r}")
    ref = ReferenceSet(
        clips=clips,
        logits=logits,
        tolerance={k: float(v) for k, v in tolerance.items()},
        precision=str(meta.get("precision", manifest["precision"])),
        meta=meta,
        engine_logits=arrays.get("engine_logits"),
    )
    blocks = meta.get("blocks") or {}
    if "block_samples" in arrays:
        names, index = blocks.get("names"), arrays.get("block_index")
        samples, norm = arrays["block_samples"], arrays.get("block_norm")
        if (
            not isinstance(names, list)
            or index is None
            or norm is None
            or samples.shape != (n, len(names), len(index))
            or norm.shape != (n, len(names))
        ):
            raise BundleError(
                f"{where}: blocks: names, block_index, block_samples and block_norm disagree "
                f"({len(names) if isinstance(names, list) else names!r} names, samples "
                f"{list(samples.shape)}, norms {None if norm is None else list(norm.shape)})"
            )
        ref.block_names, ref.block_index, ref.block_samples, ref.block_norm = names, index, samples, norm
        ref.block_threshold = float(blocks.get("threshold_rel_l2", 0.0))
    return ref


# ---------------------------------------------------------------------------------------------- comparison


#: a clip's reference decides its top-1 when its top logit leads the runner-up by at least this many standard
#: deviations of the clip's reference logits; a near tie flips under any rounding, so top-1 tolerances (the
#: build's parity and this check alike) are held on the decisive clips only, and both agreements are reported
DECISIVE_MARGIN = 0.5


def decisive_rows(reference: np.ndarray) -> np.ndarray:
    """Which rows of ``reference`` logits lead by at least :data:`DECISIVE_MARGIN` of their standard deviation
    (every row of single-class logits)."""
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    if ref.shape[1] < 2:
        return np.ones(len(ref), bool)
    top2 = np.sort(ref, axis=1)[:, -2:]
    out: np.ndarray = (top2[:, 1] - top2[:, 0]) >= DECISIVE_MARGIN * np.maximum(ref.std(axis=1), 1e-30)
    return out


def top1_on_decisive(metrics: dict[str, Any], limit: float) -> str | None:
    """The top-1 failure text when ``metrics``' agreement on decisive clips is below ``limit``, else None (also
    when no clip is decisive: not judged)."""
    value = metrics.get("top1_agreement_decisive")
    if value is None or value >= limit:
        return None
    return (
        f"top1_agreement = {value:.6g} on the {metrics['decisive_clips']} of {metrics['clips']} clips whose "
        f"reference leads by >= {DECISIVE_MARGIN:g} logit std, needs >= {limit:g}"
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out: np.ndarray = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return out


def compare_logits(reference: np.ndarray, actual: np.ndarray) -> dict[str, Any]:
    """The build's parity metrics (``calibration.precision.metrics.compare_logits``: max/mean |dlogit|, cosine,
    top-1/top-5 agreement) plus ``per_clip`` rows."""
    if reference.shape != actual.shape:
        raise ValueError(f"logits: reference shape {reference.shape} != engine shape {actual.shape}")
    ref, act = reference.astype(np.float64), actual.astype(np.float64)
    k = min(5, ref.shape[1])
    top_ref, top_act = np.argsort(-ref, axis=1)[:, :k], np.argsort(-act, axis=1)[:, :k]
    cos, diff = _cosine(ref, act), np.abs(ref - act)
    overlap = [len(set(a) & set(b)) / k for a, b in zip(top_ref, top_act)]
    decisive = decisive_rows(ref)
    rows = [
        {
            "clip": i,
            "max_abs_logit": float(diff[i].max()),
            "cosine": float(cos[i]),
            "top1_reference": int(top_ref[i, 0]),
            "top1": int(top_act[i, 0]),
            "top1_agrees": bool(top_ref[i, 0] == top_act[i, 0]),
            "decisive": bool(decisive[i]),
            "top5_overlap": float(overlap[i]),
        }
        for i in range(len(ref))
    ]
    same = top_ref[:, 0] == top_act[:, 0]
    return {
        "clips": int(len(ref)),
        "max_abs_logit": float(diff.max()),
        "mean_abs_logit": float(diff.mean()),
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "top1_agreement": float(same.mean()),
        "decisive_clips": int(decisive.sum()),
        "top1_agreement_decisive": float(same[decisive].mean()) if decisive.any() else None,
        "top5_agreement": float(np.mean(overlap)),
        "per_clip": rows,
    }


def tolerance_failures(metrics: dict[str, Any], tolerance: dict[str, float]) -> list[str]:
    """The entries of ``tolerance`` that ``metrics`` breaks, as ``"key = value, needs <= limit"`` (the build's
    rule: ``max_*`` keys are upper bounds, the rest lower bounds)."""
    failures = []
    for key, limit in tolerance.items():
        if key == "top1_agreement" and "decisive_clips" in metrics:
            failure = top1_on_decisive(metrics, limit)
            failures += [failure] if failure else []
            continue
        if key not in metrics:
            raise BundleError(
                f"{REFERENCE_JSON}: tolerance key {key!r} is not a parity metric "
                f"({sorted(k for k in metrics if k != 'per_clip')})"
            )
        value = metrics[key]
        upper = key.startswith("max_")
        if not (value <= limit if upper else value >= limit):
            failures.append(f"{key} = {value:.6g}, needs {'<=' if upper else '>='} {limit:g}")
    return failures


def clip_failures(row: dict[str, Any], tolerance: dict[str, float]) -> list[str]:
    """What one clip's row breaks: its max |dlogit| or cosine against the bound, or a top-1 flip."""
    out = []
    if "max_abs_logit" in tolerance and row["max_abs_logit"] > tolerance["max_abs_logit"]:
        out.append(f"max |dlogit| {row['max_abs_logit']:.3g} > {tolerance['max_abs_logit']:g}")
    if "min_cosine" in tolerance and row["cosine"] < tolerance["min_cosine"]:
        out.append(f"cosine {row['cosine']:.6f} < {tolerance['min_cosine']:g}")
    if not row["top1_agrees"] and row.get("decisive", True):
        out.append(f"top-1 {row['top1']} vs reference {row['top1_reference']}")
    return out


def stored_parity(engine: Any, ref: ReferenceSet) -> dict[str, Any]:
    """Run the stored clips through ``engine`` (batches up to its maximum) and compare with the stored FP32 logits
    under the build's tolerance: ``passed``, ``failures``, ``metrics`` (with ``per_clip``, each row's own
    ``failures``), ``tolerance`` and, when the build's engine output is stored, ``vs_build_engine``."""
    x = ref.inputs(engine.input_dtype)
    lo, hi = engine.batch_range
    outs = []
    for i in range(0, len(x), hi):
        chunk = x[i : i + hi]
        n = len(chunk)
        if n < lo:  # a profile that starts above 1: pad with copies of the last clip
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], lo - n, axis=0)])
        outs.append(engine.infer(chunk)[:n])
    out = np.concatenate(outs)
    metrics = compare_logits(ref.logits, out)
    for row in metrics["per_clip"]:
        row["failures"] = clip_failures(row, ref.tolerance)
    failures = tolerance_failures(metrics, ref.tolerance)
    result: dict[str, Any] = {
        "passed": not failures,
        "failures": failures,
        "tolerance": ref.tolerance,
        "metrics": metrics,
        "clips": int(len(x)),
    }
    if ref.engine_logits is not None:
        same = compare_logits(ref.engine_logits, out)
        result["vs_build_engine"] = {k: same[k] for k in ("max_abs_logit", "min_cosine", "top1_agreement")}
    return result
