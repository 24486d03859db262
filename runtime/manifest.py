"""The engine bundle's ``manifest.json``: the one definition of what ``runtime.Engine`` reads and trusts.

A bundle is a directory of plain files::

    bundle/
      manifest.json   # this schema; written last by the builder, after parity passed
      model.onnx      # the engine (model.plan for TensorRT)
      labels.txt      # one label per line, index order

Schema (version 2)::

    {
      "schema_version": 2,
      "backend": "onnxruntime" | "tensorrt" | "openvino",
      "backend_version": "1.32.0" | null,
      "engine_file": "model.onnx",          # a plain file name listed in "files"
      "labels_file": "labels.txt" | null,   # a plain file name listed in "files"
      "files": {"model.onnx": {"sha256": "<64 hex>", "size": 10742364}, ...},   # every file but manifest.json
      "precision": "fp32" | "fp16" | "int8",
      "model_config": {...},                # models.TimeSformerConfig.to_dict(); num_classes, num_frames,
                                            # image_size, in_chans checked against input/output
      "input":  {"name": "video", "dtype": "float32" | "float16" | "uint8", "layout": "BTCHW",
                 "shape": [-1, T, 3, crop, crop], "batch": {"min": 1, "opt": 1, "max": 8}},  # 1<=min<=opt<=max
      "output": {"name": "logits", "dtype": "float32" | "float16", "shape": [-1, classes]},
      "preprocess": {...},                  # runtime.preprocess.PreprocessConfig (validated there)
      "session": {...},                     # runtime/backends/<backend>_session.py: validate_session
      "parity": {"passed": true, ...},      # required; passed false only with "allowed_failure": true
      "provenance": {"weights": "checkpoint" | "random" | "onnx", "labels": "<where from>",
                     "preprocess": "<where from>", "reference": "PyTorch FP32" | "...", "notes": [...]} | null,
      "source": {...} | null, "calibration": {...} | null, "tolerance": {...} | null,
      "build": {...} | null                 # informational: objects, not interpreted by the runtime
    }

Every check raises :class:`BundleError` naming the manifest file and the field, with what was expected and
what came; nothing else comes out of :func:`validate_manifest` or :func:`read_manifest`. Unknown top-level
keys are refused (a typo such as ``"labels_flie"`` would otherwise silently drop the labels).

The top-level keys are the fields of :class:`Manifest` (a frozen type with ``to_dict``/``from_dict``, like the
``*_session.py`` types): the builder (``export/bundle/build.py``) writes ``Manifest(...).to_dict()``, and
``Manifest.from_dict``/``Manifest.read`` are this module's validation, typed. One schema, one place.

Files are checked by name (a plain name: no ``/``, no ``..``, not absolute), type (a regular file, not a
symlink, opened relative to the bundle directory's descriptor), size and SHA-256 by :mod:`runtime.bundle_files`,
whose names this module re-exports.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from .bundle_files import (
    MANIFEST_NAME,
    MAX_LABEL_BYTES,
    MAX_LABELS_FILE_BYTES,
    MAX_MANIFEST_BYTES,
    BundleFiles,
    check_file_name,
    check_labels,
    describe_files,
    parse_labels,
    read_labels,
    verify_files,
)
from .errors import BundleError
from .errors import field_error as _fail
from .options import BACKENDS, PRECISIONS
from .preprocess import MAX_INT, PreprocessConfig

__all__ = [
    "BundleError",
    "SCHEMA_VERSION",
    "MANIFEST_NAME",
    "BACKENDS",
    "PRECISIONS",
    "Manifest",
    "Provenance",
    "InputSpec",
    "OutputSpec",
    "BatchRange",
    "validate_manifest",
    "read_manifest",
    "read_manifest_from",
    "MAX_BATCH",
    "MAX_CLASSES",
    "MAX_SESSION_THREADS",
    # re-exported from runtime.bundle_files (reading and checking the bundle's files)
    "BundleFiles",
    "read_labels",
    "parse_labels",
    "describe_files",
    "verify_files",
    "check_file_name",
    "check_labels",
    "MAX_LABEL_BYTES",
    "MAX_LABELS_FILE_BYTES",
    "MAX_MANIFEST_BYTES",
]

SCHEMA_VERSION = 2
INPUT_DTYPES = ("float32", "float16", "uint8")
OUTPUT_DTYPES = ("float32", "float16")
LAYOUTS = ("BTCHW",)
_HEX = frozenset("0123456789abcdef")
#: sanity bounds checked with the manifest (issue 28): a larger value is a corrupt or hostile bundle, not a model.
#: The machine's own limits (memory for a batch, CPU threads) are checked when the Engine loads.
MAX_BATCH = 4096
MAX_CLASSES = 1 << 20
MAX_SESSION_THREADS = 256


# ----------------------------------------------------------------------------------------- small checks


def _obj(where: str, field: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(where, field, "a JSON object", v)
    return v


def _int(where: str, field: str, v: Any, lo: int = 1, hi: int = MAX_INT) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _fail(where, field, f"an integer in {lo}..{hi}", v)
    return v


def _str(where: str, field: str, v: Any, choices: Iterable[str] | None = None) -> str:
    if choices is not None:
        choices = tuple(choices)
        if not isinstance(v, str) or v not in choices:
            raise _fail(where, field, f"one of {choices}", v)
    elif not isinstance(v, str) or not v or len(v) > 1024:
        raise _fail(where, field, "a non-empty string", v)
    return v


# ----------------------------------------------------------------------------- the typed manifest (one schema)


def _required(default: Any = None) -> Any:
    """A top-level key every manifest has (``parity`` may be null only while the builder checks its candidate)."""
    return field(default=default, metadata={"required": True})


@dataclass(frozen=True)
class BatchRange:
    """``input.batch``: the batch sizes the engine takes (``1 <= min <= opt <= max``)."""

    min: int
    opt: int
    max: int

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class InputSpec:
    """``input``: the engine's video input, ``(batch, T, 3, crop, crop)``; ``shape[0]`` is -1 (dynamic)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    batch: BatchRange
    layout: str = "BTCHW"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "layout": self.layout,
            "shape": list(self.shape),
            "batch": self.batch.to_dict(),
        }


@dataclass(frozen=True)
class OutputSpec:
    """``output``: the logits, ``(batch, classes)``."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


#: ``provenance.weights``: trained weights from a checkpoint, random weights of a preset, or an ONNX file's
WEIGHTS_KINDS = ("checkpoint", "random", "onnx")


@dataclass(frozen=True)
class Provenance:
    """``provenance`` (issue 26): where the weights, labels and preprocessing came from and every explicit stand-in
    the build accepted (synthetic calibration, a precision this CPU cannot run, a non-PyTorch reference)."""

    weights: str
    labels: str
    preprocess: str
    reference: str = "PyTorch FP32"
    notes: tuple[str, ...] = ()

    @property
    def random_weights(self) -> bool:
        return self.weights == "random"

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "labels": self.labels,
            "preprocess": self.preprocess,
            "reference": self.reference,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST_NAME) -> "Provenance":
        d = _obj(where, "provenance", d)
        unknown = sorted(set(d) - {"weights", "labels", "preprocess", "reference", "notes"})
        if unknown:
            raise BundleError(f"{where}: provenance: unknown keys {unknown}")
        notes = d.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise _fail(where, "provenance.notes", "a list of strings", notes)
        return cls(
            _str(where, "provenance.weights", d.get("weights"), WEIGHTS_KINDS),
            _str(where, "provenance.labels", d.get("labels")),
            _str(where, "provenance.preprocess", d.get("preprocess")),
            _str(where, "provenance.reference", d.get("reference", "PyTorch FP32")),
            tuple(notes),
        )


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """``manifest.json``, typed: the builder writes :meth:`to_dict`, the runtime reads :meth:`from_dict` (which is
    :func:`validate_manifest`). Fields are in the order they are written; the informational objects (``source``,
    ``calibration``, ``tolerance``, ``build``, ``parity``'s metrics) stay JSON objects."""

    schema_version: int = _required(SCHEMA_VERSION)
    backend: str = _required()
    backend_version: str | None = None
    engine_file: str = _required()
    precision: str = _required()
    model_config: dict[str, Any] = _required()
    input: InputSpec = _required()
    output: OutputSpec = _required()
    preprocess: PreprocessConfig = _required()
    labels_file: str | None = None
    session: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    provenance: Provenance | None = None
    calibration: dict[str, Any] | None = None
    parity: dict[str, Any] | None = _required()
    tolerance: dict[str, Any] | None = None
    build: dict[str, Any] | None = None
    files: dict[str, dict[str, Any]] = _required()

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written as ``manifest.json`` (every key, in field order)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if hasattr(v, "to_dict") else str(v) if isinstance(v, Enum) else v
        return out

    @classmethod
    def from_dict(cls, d: Any, path: str | os.PathLike = MANIFEST_NAME, require_parity: bool = True) -> "Manifest":
        """Validate (:func:`validate_manifest`; :class:`BundleError` names ``path`` and the field) and type."""
        return cls._from_valid(validate_manifest(d, path, require_parity))

    @classmethod
    def read(cls, bundle_dir: str | os.PathLike, require_parity: bool = True) -> "Manifest":
        """``bundle_dir/manifest.json``, read and validated (:func:`read_manifest`)."""
        return cls._from_valid(read_manifest(bundle_dir, require_parity))

    @classmethod
    def _from_valid(cls, m: dict[str, Any]) -> "Manifest":
        inp, outp = m["input"], m["output"]
        kw: dict[str, Any] = {k: m.get(k) for k in _REQUIRED + _OPTIONAL}
        kw.update(
            input=InputSpec(inp["name"], inp["dtype"], tuple(inp["shape"]), BatchRange(**inp["batch"]), inp["layout"]),
            output=OutputSpec(outp["name"], outp.get("dtype", "float32"), tuple(outp["shape"])),
            preprocess=PreprocessConfig.from_dict(m["preprocess"]),
            provenance=Provenance.from_dict(m["provenance"]) if m.get("provenance") is not None else None,
        )
        return cls(**kw)


_REQUIRED = tuple(f.name for f in fields(Manifest) if f.metadata.get("required"))
_OPTIONAL = tuple(f.name for f in fields(Manifest) if not f.metadata.get("required"))


# ------------------------------------------------------------------------------------------ the manifest


def validate_manifest(d: Any, path: str | os.PathLike = MANIFEST_NAME, require_parity: bool = True) -> dict[str, Any]:
    """Check the type and range of every field of a schema-2 manifest; returns a normalised copy.

    ``path`` names the manifest in the errors. ``require_parity=False`` accepts a manifest whose ``parity`` is
    not measured yet (the builder's own check before it writes the manifest); a deployed bundle never needs it.
    Raises :class:`BundleError` only.
    """
    where = str(path)
    m = _obj(where, "manifest", d)
    version = m.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        hint = " (a bundle built before file hashes were recorded: rebuild it with make engine)" if version == 1 else ""
        raise _fail(where, "schema_version", f"{SCHEMA_VERSION}{hint}", version)
    unknown = sorted(str(k) for k in m if k not in _REQUIRED + _OPTIONAL)
    if unknown:
        raise BundleError(
            f"{where}: unknown keys {unknown}; schema {SCHEMA_VERSION} has {sorted(_REQUIRED + _OPTIONAL)}"
        )
    missing = [k for k in _REQUIRED if k not in m and not (k == "parity" and not require_parity)]
    if missing:
        why = (
            ": the bundle was never checked against its reference (an interrupted build?); rebuild it"
            if missing == ["parity"]
            else ""
        )
        raise BundleError(f"{where}: missing keys {missing}{why}")
    out: dict[str, Any] = dict(m)
    _str(where, "backend", m["backend"], BACKENDS)
    _str(where, "precision", m["precision"], PRECISIONS)
    if m.get("backend_version") is not None:
        _str(where, "backend_version", m["backend_version"])
    for key in ("source", "calibration", "tolerance", "build"):
        if m.get(key) is not None:
            _obj(where, key, m[key])
    if m.get("provenance") is not None:
        out["provenance"] = Provenance.from_dict(m["provenance"], where).to_dict()

    out["files"] = files = _validate_files(where, m["files"])
    engine_file = check_file_name(m["engine_file"], where, "engine_file")
    if engine_file not in files:
        raise BundleError(f"{where}: engine_file {engine_file!r} is not listed in files ({sorted(files)})")
    labels_file = m.get("labels_file")
    if labels_file is not None:
        check_file_name(labels_file, where, "labels_file")
        if labels_file not in files:
            raise BundleError(f"{where}: labels_file {labels_file!r} is not listed in files ({sorted(files)})")

    try:
        pre = PreprocessConfig.from_dict(m["preprocess"])
    except (ValueError, TypeError) as e:
        raise BundleError(f"{where}: {e}") from e
    out["preprocess"] = pre.to_dict()
    inp, classes = _validate_io(where, m["input"], m["output"], pre)
    out["input"] = inp
    _validate_model_config(where, m["model_config"], inp, classes)
    out["session"] = _validate_session(where, m["backend"], m.get("session"))
    if labels_file is not None:  # bounded before anything is read: a label is one short line
        cap = min(MAX_LABELS_FILE_BYTES, classes * (MAX_LABEL_BYTES + 2))
        if files[labels_file]["size"] > cap:
            raise _fail(
                where,
                f"files[{labels_file!r}].size",
                f"at most {cap} bytes ({classes} labels of at most {MAX_LABEL_BYTES} bytes)",
                files[labels_file]["size"],
            )
    if "parity" in m or require_parity:
        out["parity"] = _validate_parity(where, m.get("parity"), require_parity)
    return out


def _validate_files(where: str, files: Any) -> dict[str, dict[str, Any]]:
    files = _obj(where, "files", files)
    if not files:
        raise _fail(where, "files", "an object listing every file of the bundle", files)
    out = {}
    for name, entry in files.items():
        check_file_name(name, where, f"files key {name!r}")
        entry = _obj(where, f"files[{name!r}]", entry)
        extra = sorted(set(entry) - {"sha256", "size"})
        if extra:
            raise BundleError(f"{where}: files[{name!r}]: unknown keys {extra}; expected sha256 and size")
        digest = entry.get("sha256")
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
            raise _fail(where, f"files[{name!r}].sha256", "64 lowercase hex digits", digest)
        size = _int(where, f"files[{name!r}].size", entry.get("size"), 0, 2**63 - 1)
        out[name] = {"sha256": digest, "size": size}
    return out


def _shape(where: str, field: str, v: Any, rank: int) -> list[int]:
    if not isinstance(v, (list, tuple)) or len(v) != rank:  # tuples: a manifest built in memory (the builder)
        raise _fail(where, field, f"a list of {rank} dimensions", v)
    dims: list[int] = list(v)
    first = dims[0]
    if first != -1 or isinstance(first, bool):
        _int(where, f"{field}[0]", first)  # a fixed batch dimension is allowed; -1 is dynamic
    for i, dim in enumerate(dims[1:], 1):
        _int(where, f"{field}[{i}]", dim)
    return dims


def _validate_io(where: str, inp: Any, outp: Any, pre: PreprocessConfig) -> tuple[dict[str, Any], int]:
    inp = _obj(where, "input", inp)
    _str(where, "input.name", inp.get("name"))
    _str(where, "input.dtype", inp.get("dtype"), INPUT_DTYPES)
    layout = inp.get("layout", "BTCHW")
    _str(where, "input.layout", layout, LAYOUTS)
    shape = _shape(where, "input.shape", inp.get("shape"), 5)
    want = [pre.num_frames, 3, pre.crop_size, pre.crop_size]
    if shape[1:] != want:
        raise BundleError(
            f"{where}: input.shape: expected [-1, {', '.join(map(str, want))}] (preprocess.num_frames, "
            f"3 channels, preprocess.crop_size), got {shape}"
        )
    batch = _obj(where, "input.batch", inp.get("batch"))
    lo = _int(where, "input.batch.min", batch.get("min"), 1, MAX_BATCH)
    opt = _int(where, "input.batch.opt", batch.get("opt", lo), 1, MAX_BATCH)
    hi = _int(where, "input.batch.max", batch.get("max"), 1, MAX_BATCH)
    if not lo <= opt <= hi:
        raise _fail(where, "input.batch", "1 <= min <= opt <= max", {"min": lo, "opt": opt, "max": hi})
    if shape[0] != -1 and not lo == hi == shape[0]:
        raise BundleError(f"{where}: input.shape[0]: a fixed batch {shape[0]} but input.batch is {lo}..{hi}")
    outp = _obj(where, "output", outp)
    _str(where, "output.name", outp.get("name"))
    _str(where, "output.dtype", outp.get("dtype", "float32"), OUTPUT_DTYPES)
    oshape = _shape(where, "output.shape", outp.get("shape"), 2)
    _int(where, "output.shape[1]", oshape[1], 1, MAX_CLASSES)
    return {**inp, "shape": shape, "layout": layout, "batch": {"min": lo, "opt": opt, "max": hi}}, oshape[1]


def _validate_model_config(where: str, cfg: Any, inp: dict[str, Any], classes: int) -> None:
    cfg = _obj(where, "model_config", cfg)
    for key in ("image_size", "patch_size", "num_frames", "in_chans", "embed_dim", "depth", "num_heads", "num_classes"):
        if key in cfg:
            _int(where, f"model_config.{key}", cfg[key])
    if "attention_type" in cfg:
        _str(where, "model_config.attention_type", cfg["attention_type"])
    # the runtime relies on these through input/output; a disagreement means a hand-edited manifest
    shape = inp["shape"]
    for key, want, other in (
        ("num_classes", classes, "output.shape[1]"),
        ("num_frames", shape[1], "input.shape[1]"),
        ("in_chans", 3, "3 channels"),
        ("image_size", shape[3], "input.shape[3]"),
    ):
        if key not in cfg:
            raise BundleError(f"{where}: model_config.{key}: missing")
        if cfg[key] != want:
            raise BundleError(f"{where}: model_config.{key}: {cfg[key]!r} disagrees with {other} ({want})")


def _validate_session(where: str, backend: str, session: Any) -> dict[str, Any]:
    """The backend's own ``validate_session`` (``runtime/backends/<backend>_session.py``) when it exists."""
    session = {} if session is None else _obj(where, "session", session)
    try:
        module = importlib.import_module(f"runtime.backends.{backend}_session")
    except ModuleNotFoundError as e:
        if e.name != f"runtime.backends.{backend}_session":
            raise BundleError(f"{where}: session: cannot load the {backend} session schema ({e})") from e
        return dict(session)
    try:
        out: dict[str, Any] = module.validate_session(dict(session))
    except BundleError as e:
        raise BundleError(f"{where}: {e}") from e
    except Exception as e:
        raise BundleError(f"{where}: session: invalid for {backend} ({type(e).__name__}: {e})") from e
    for key in ("intra_op_num_threads", "inter_op_num_threads", "num_threads"):  # issue 28 #12
        v = out.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > MAX_SESSION_THREADS:
            raise _fail(
                where,
                f"session.{key}",
                f"an integer in 0..{MAX_SESSION_THREADS} (0: the backend's "
                "default; the runtime uses at most the CPUs it has)",
                v,
            )
    return out


def _validate_parity(where: str, parity: Any, required: bool) -> dict[str, Any] | None:
    if parity is None:
        if not required:
            return None
        raise BundleError(
            f"{where}: parity: expected the build's parity result (an object with 'passed'), got null: "
            "the bundle was never checked against its reference (an interrupted build?); rebuild it"
        )
    checked = _obj(where, "parity", parity)
    passed = checked.get("passed")
    if not isinstance(passed, bool):
        raise _fail(where, "parity.passed", "true or false", passed)
    allowed = checked.get("allowed_failure", False)
    if not isinstance(allowed, bool):
        raise _fail(where, "parity.allowed_failure", "true or false", allowed)
    failures = checked.get("failures", [])
    if not isinstance(failures, list) or not all(isinstance(f, str) for f in failures):
        raise _fail(where, "parity.failures", "a list of strings", failures)
    for key in ("max_abs_logit", "mean_abs_logit", "min_cosine", "mean_cosine", "top1_agreement", "top5_agreement"):
        v = checked.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise _fail(where, f"parity.{key}", "a number", v)
    if not passed and not allowed:
        raise BundleError(
            f"{where}: parity.passed is false (failures: {'; '.join(failures) or 'not recorded'}) and "
            "the build did not allow it (allowed_failure); refusing a bundle that failed its parity "
            "check"
        )
    return checked


# ---------------------------------------------------------------------------------------- reading the manifest


def read_manifest_from(files: BundleFiles, require_parity: bool = True) -> dict[str, Any]:
    """Read and validate ``manifest.json`` of a bundle opened as ``files``."""
    path = files.path / MANIFEST_NAME
    raw = files.read(MANIFEST_NAME, limit=MAX_MANIFEST_BYTES)
    try:
        d = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from e
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise BundleError(f"{path}: not valid JSON ({e})") from e
    return validate_manifest(d, path, require_parity)


def read_manifest(bundle_dir: str | os.PathLike, require_parity: bool = True) -> dict[str, Any]:
    """Read and validate ``bundle_dir/manifest.json`` (schema 2); :class:`BundleError` names the file and field."""
    with BundleFiles(bundle_dir) as files:
        return read_manifest_from(files, require_parity)
