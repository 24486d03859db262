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

import json
import os
from pathlib import Path
from typing import Any

from .errors import BundleError

__all__ = ["BundleError", "SCHEMA_VERSION", "MANIFEST_NAME", "read_manifest", "read_labels"]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = ("schema_version", "backend", "engine_file", "precision", "model_config", "input", "output",
                 "preprocess")


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
