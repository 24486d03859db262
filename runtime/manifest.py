"""The engine bundle's ``manifest.json``: everything ``runtime.Engine`` needs, and nothing else.

A bundle is a directory::

    bundle/
      manifest.json   # this schema
      model.onnx      # ONNX Runtime engine   (or model.plan for TensorRT)
      labels.txt      # one label per line, index order

Schema (version 1)::

    {
      "schema_version": 1,
      "backend": "onnxruntime" | "tensorrt",
      "backend_version": "1.32.0",
      "engine_file": "model.onnx",
      "precision": "fp32" | "fp16" | "int8",
      "model_config": {...},            # models.TimeSformerConfig.to_dict()
      "input":  {"name": "video", "dtype": "float32", "layout": "BTCHW",
                 "shape": [-1, 8, 3, 224, 224], "batch": {"min": 1, "opt": 1, "max": 8}},
      "output": {"name": "logits", "dtype": "float32", "shape": [-1, 400]},
      "preprocess": {...},              # runtime.preprocess.PreprocessConfig.to_dict()
      "labels_file": "labels.txt",
      "session": {...},                 # backend settings: providers, threads, DLA core, ...
      "source": {"checkpoint": "...", "checkpoint_sha256": "...", "onnx_sha256": "..."},
      "calibration": {"set_sha256": "...", "method": "..."} | null,
      "parity": {...} | null,           # summary of the build-time parity check
      "tolerance": {...},               # what parity must meet for this precision
      "build": {"date": "...", "seconds": 12.3, "host": "..."}
    }
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = ("schema_version", "backend", "engine_file", "precision", "model_config", "input", "output",
                 "preprocess")


class BundleError(ValueError):
    """A bundle that is missing, corrupt or of an unsupported schema."""


def _read_umask() -> int:
    umask = os.umask(0)  # the only portable way to read it; done once, at import, not while threads write files
    os.umask(umask)
    return umask


#: the permission bits ``open()`` gives a new file in this process (``mkstemp`` would give 0600)
PLAIN_FILE_MODE = 0o666 & ~_read_umask()


def temp_beside(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A new, empty temp file in ``path``'s folder (created if needed) with :data:`PLAIN_FILE_MODE`, for
    writing and then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.fchmod(fd, PLAIN_FILE_MODE)
    os.close(fd)
    return Path(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temp file beside ``path`` and rename it into place (readable as umask allows)."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        with open(tmp, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON to a temp file beside ``path`` and rename it into place."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(bundle_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``bundle_dir/manifest.json``; errors name the file and the key."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: not a bundle directory (it does not exist or is not a directory)")
    if not path.is_file():
        raise BundleError(f"{path}: missing; a bundle directory must hold {MANIFEST_NAME}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{path}: missing keys {missing}")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise BundleError(f"{path}: schema_version {manifest['schema_version']!r} not supported; expected {SCHEMA_VERSION}")
    engine = bundle_dir / manifest["engine_file"]
    if not engine.is_file():
        raise BundleError(f"{path}: engine_file {manifest['engine_file']!r} not found at {engine}")
    return manifest


def read_labels(bundle_dir: str | os.PathLike, manifest: dict[str, Any]) -> list[str] | None:
    """Labels listed in the bundle, or None when it has none."""
    name = manifest.get("labels_file")
    if not name:
        return None
    path = Path(bundle_dir) / name
    if not path.is_file():
        raise BundleError(f"{Path(bundle_dir) / MANIFEST_NAME}: labels_file {name!r} not found at {path}")
    labels = path.read_text().splitlines()
    n = manifest["output"]["shape"][-1]
    if len(labels) != n:
        raise BundleError(f"{path}: {len(labels)} labels, but the engine outputs {n} classes")
    return labels
