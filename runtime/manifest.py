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
symlink, opened with ``O_NOFOLLOW`` relative to the bundle directory's descriptor, so nothing outside the
bundle is ever opened), size and SHA-256. For a 100 MB engine file here (AMD Zen 5, 2 shared cores, page
cache warm, medians of 5 interleaved rounds) reading it takes ~100 ms and hashing it ~105 ms more (about 1.1 ms
per MB; 130 ms for 100 MiB already in memory on a quiet machine); ``Engine(bundle, verify=False)`` skips the
hash (not the names, types and sizes).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import stat
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import BundleError
from .files import sha256_stream
from .options import BACKENDS, PRECISIONS
from .preprocess import MAX_INT, PreprocessConfig

__all__ = ["BundleError", "SCHEMA_VERSION", "MANIFEST_NAME", "BACKENDS", "PRECISIONS", "Manifest", "Provenance",
           "InputSpec",
           "OutputSpec", "BatchRange", "validate_manifest",
           "read_manifest", "read_labels", "describe_files", "verify_files", "check_file_name", "check_labels",
           "BundleFiles", "MAX_BATCH", "MAX_CLASSES", "MAX_LABEL_BYTES", "MAX_SESSION_THREADS"]

SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"
INPUT_DTYPES = ("float32", "float16", "uint8")
OUTPUT_DTYPES = ("float32", "float16")
LAYOUTS = ("BTCHW",)
#: the largest manifest the runtime reads (a manifest is a few kB; this bounds a hostile one)
MAX_MANIFEST_BYTES = 16 << 20
_HEX = frozenset("0123456789abcdef")
#: sanity bounds checked with the manifest (issue 28): a larger value is a corrupt or hostile bundle, not a model.
#: The machine's own limits (memory for a batch, CPU threads) are checked when the Engine loads.
MAX_BATCH = 4096
MAX_CLASSES = 1 << 20
MAX_LABEL_BYTES = 1024  # one label, UTF-8
MAX_LABELS_FILE_BYTES = 16 << 20
MAX_SESSION_THREADS = 256
#: characters a label may not hold: control and format characters, line and paragraph separators (a label is one
#: line of labels.txt, of a Triton config and of a terminal)
_BAD_LABEL_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


# ----------------------------------------------------------------------------------------- small checks

def _typename(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _fail(where: str, field: str, expected: str, got: Any) -> BundleError:
    text = repr(got)
    if len(text) > 80:
        text = text[:77] + "..."
    return BundleError(f"{where}: {field}: expected {expected}, got {text}")


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


#: the names a bundle may give its files: a strict pattern, so a name can go into generated configs unescaped
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def check_file_name(name: Any, where: str = "bundle", field: str = "file name") -> str:
    """A plain file name inside the bundle: no directory part, not absolute, not ``.``/``..``; returns it."""
    if not isinstance(name, str) or not name:
        raise _fail(where, field, "a plain file name inside the bundle", name)
    if not _FILE_NAME.fullmatch(name) or len(name) > 255 or name == MANIFEST_NAME:
        raise _fail(where, field, f"a plain file name inside the bundle (letters, digits, '_', '.', '+', '-'; "
                                  f"no '/', no '..', no quotes, spaces or control characters; not {MANIFEST_NAME})",
                    name)
    return name


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
        return {"name": self.name, "dtype": self.dtype, "layout": self.layout, "shape": list(self.shape),
                "batch": self.batch.to_dict()}


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
        return {"weights": self.weights, "labels": self.labels, "preprocess": self.preprocess,
                "reference": self.reference, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST_NAME) -> "Provenance":
        d = _obj(where, "provenance", d)
        unknown = sorted(set(d) - {"weights", "labels", "preprocess", "reference", "notes"})
        if unknown:
            raise BundleError(f"{where}: provenance: unknown keys {unknown}")
        notes = d.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise _fail(where, "provenance.notes", "a list of strings", notes)
        return cls(_str(where, "provenance.weights", d.get("weights"), WEIGHTS_KINDS),
                   _str(where, "provenance.labels", d.get("labels")),
                   _str(where, "provenance.preprocess", d.get("preprocess")),
                   _str(where, "provenance.reference", d.get("reference", "PyTorch FP32")), tuple(notes))


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
        kw.update(input=InputSpec(inp["name"], inp["dtype"], tuple(inp["shape"]), BatchRange(**inp["batch"]),
                                  inp["layout"]),
                  output=OutputSpec(outp["name"], outp.get("dtype", "float32"), tuple(outp["shape"])),
                  preprocess=PreprocessConfig.from_dict(m["preprocess"]),
                  provenance=Provenance.from_dict(m["provenance"]) if m.get("provenance") is not None else None)
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
        raise BundleError(f"{where}: unknown keys {unknown}; schema {SCHEMA_VERSION} has "
                          f"{sorted(_REQUIRED + _OPTIONAL)}")
    missing = [k for k in _REQUIRED if k not in m and not (k == "parity" and not require_parity)]
    if missing:
        why = (": the bundle was never checked against its reference (an interrupted build?); rebuild it"
               if missing == ["parity"] else "")
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
            raise _fail(where, f"files[{labels_file!r}].size", f"at most {cap} bytes ({classes} labels of at most "
                        f"{MAX_LABEL_BYTES} bytes)", files[labels_file]["size"])
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
        raise BundleError(f"{where}: input.shape: expected [-1, {', '.join(map(str, want))}] (preprocess.num_frames, "
                          f"3 channels, preprocess.crop_size), got {shape}")
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
    for key in ("image_size", "patch_size", "num_frames", "in_chans", "embed_dim", "depth", "num_heads",
                "num_classes"):
        if key in cfg:
            _int(where, f"model_config.{key}", cfg[key])
    if "attention_type" in cfg:
        _str(where, "model_config.attention_type", cfg["attention_type"])
    # the runtime relies on these through input/output; a disagreement means a hand-edited manifest
    shape = inp["shape"]
    for key, want, other in (("num_classes", classes, "output.shape[1]"), ("num_frames", shape[1], "input.shape[1]"),
                             ("in_chans", 3, "3 channels"), ("image_size", shape[3], "input.shape[3]")):
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
            raise _fail(where, f"session.{key}", f"an integer in 0..{MAX_SESSION_THREADS} (0: the backend's "
                        "default; the runtime uses at most the CPUs it has)", v)
    return out


def _validate_parity(where: str, parity: Any, required: bool) -> dict[str, Any] | None:
    if parity is None:
        if not required:
            return None
        raise BundleError(f"{where}: parity: expected the build's parity result (an object with 'passed'), got null: "
                          "the bundle was never checked against its reference (an interrupted build?); rebuild it")
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
        raise BundleError(f"{where}: parity.passed is false (failures: {'; '.join(failures) or 'not recorded'}) and "
                          "the build did not allow it (allowed_failure); refusing a bundle that failed its parity check")
    return checked


# ---------------------------------------------------------------------------------------- reading files

class BundleFiles:
    """The bundle directory, opened once: every later open is relative to this descriptor.

    Files are opened with ``O_NOFOLLOW`` (a symlink is refused, wherever it points) and ``O_NONBLOCK`` (a FIFO
    cannot hang the load), must be regular files, and are read through the same descriptor their size was
    checked on. Holding the directory's descriptor also pins the bundle: if its path is swapped for another
    version while the engine loads (an atomic re-publish), every file still comes from the same version.
    """

    def __init__(self, bundle_dir: str | os.PathLike) -> None:
        self.path = Path(bundle_dir)
        self._dir_fd: int | None = None
        if not self.path.is_dir():
            raise BundleError(f"{self.path}: not a bundle directory (it does not exist or is not a directory)")
        if os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY"):
            try:
                self._dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as e:
                raise BundleError(f"{self.path}: cannot open the bundle directory ({e.strerror})") from e

    def close(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def __enter__(self) -> "BundleFiles":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _open(self, name: str) -> tuple[int, os.stat_result]:
        if name != MANIFEST_NAME:
            check_file_name(name, str(self.path / MANIFEST_NAME))
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        full = self.path / name
        try:
            if not hasattr(os, "O_NOFOLLOW") and full.is_symlink():  # platforms without O_NOFOLLOW
                raise OSError(40, "is a symbolic link")
            fd = os.open(name, flags, dir_fd=self._dir_fd) if self._dir_fd is not None else os.open(full, flags)
        except FileNotFoundError as e:
            raise BundleError(f"{full}: missing from the bundle") from e
        except OSError as e:
            if os.path.islink(full):
                raise BundleError(f"{full}: is a symbolic link; a bundle holds its own files, not links "
                                  f"(to {os.readlink(full)!r})") from e
            raise BundleError(f"{full}: cannot open ({e.strerror or e})") from e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise BundleError(f"{full}: not a regular file")
        return fd, st

    def read(self, name: str, size: int | None = None, sha256: str | None = None, limit: int | None = None) -> bytes:
        """The bytes of one file; checked against ``size`` and ``sha256`` when given (the bytes returned are the
        bytes hashed: nothing can change between the check and the use)."""
        fd, st = self._open(name)
        full = self.path / name
        try:
            if size is not None and st.st_size != size:
                raise BundleError(f"{full}: {st.st_size} bytes, but the manifest's files[{name!r}].size is {size}: "
                                  "the file was changed or truncated after the build")
            if limit is not None and st.st_size > limit:
                raise BundleError(f"{full}: {st.st_size} bytes; expected at most {limit}")
            chunks, left = [], st.st_size
            with open(fd, "rb", buffering=0, closefd=False) as f:
                # one read into one buffer in the usual case (no copy); the kernel may return less (2 GB per call)
                while left > 0:
                    block = f.read(left)
                    if not block:
                        break
                    chunks.append(block)
                    left -= len(block)
                if f.read(1):
                    left = -1
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        finally:
            os.close(fd)
        if left != 0:
            raise BundleError(f"{full}: changed size while being read (another process writing it?)")
        digest = hashlib.sha256(data).hexdigest() if sha256 is not None else None
        if digest != sha256:
            raise BundleError(f"{full}: sha256 {digest} differs from the manifest's "
                              f"files[{name!r}].sha256 {sha256}: the file was replaced or edited after the build")
        return data

    def check(self, name: str, size: int, sha256: str | None) -> None:
        """Check one file's size (and hash, streamed) without keeping its bytes."""
        fd, st = self._open(name)
        full = self.path / name
        try:
            if st.st_size != size:
                raise BundleError(f"{full}: {st.st_size} bytes, but the manifest's files[{name!r}].size is {size}: "
                                  "the file was changed or truncated after the build")
            if sha256 is None:
                return
            with open(fd, "rb", closefd=False) as f:
                digest, _ = sha256_stream(f, 1 << 24)
        finally:
            os.close(fd)
        if digest != sha256:
            raise BundleError(f"{full}: sha256 {digest} differs from the manifest's files[{name!r}].sha256 "
                              f"{sha256}: the file was replaced or edited after the build")

    def manifest(self, require_parity: bool = True) -> dict[str, Any]:
        """Read and validate ``manifest.json``."""
        path = self.path / MANIFEST_NAME
        raw = self.read(MANIFEST_NAME, limit=MAX_MANIFEST_BYTES)
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
        return files.manifest(require_parity)


def check_labels(labels: Any, where: str | os.PathLike = "labels", classes: int | None = None) -> list[str]:
    """Class labels as a bundle may hold them: strings of at most ``MAX_LABEL_BYTES`` bytes (UTF-8) with no control or
    format character and no line or paragraph separator (U+2028, U+2029, U+0085), ``classes`` of them when given.

    Raises :class:`BundleError` naming ``where``, the label's index and the character (issue 28 #23): the builder
    calls it before building, the runtime when it reads ``labels.txt``."""
    if not isinstance(labels, (list, tuple)):
        raise BundleError(f"{where}: expected a list of label strings, got {_typename(labels)}")
    if classes is not None and len(labels) != classes:
        raise BundleError(f"{where}: {len(labels)} labels, but the engine outputs {classes} classes")
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise BundleError(f"{where}: label {i}: expected a string, got {_typename(label)}")
        if len(label.encode("utf-8", "surrogatepass")) > MAX_LABEL_BYTES:
            raise BundleError(f"{where}: label {i}: longer than {MAX_LABEL_BYTES} bytes ({label[:40]!r}...)")
        for ch in label:
            if unicodedata.category(ch) in _BAD_LABEL_CATEGORIES:
                raise BundleError(f"{where}: label {i} {label[:60]!r}: holds U+{ord(ch):04X} "
                                  f"({unicodedata.name(ch, unicodedata.category(ch))}); a label is one line of "
                                  "printable text")
    return list(labels)


def parse_labels(data: bytes, manifest: dict[str, Any], where: str | os.PathLike) -> list[str]:
    """Labels from the bytes of a labels file: one per ``\n``-terminated line, as many as the engine has classes,
    each checked by :func:`check_labels`. The count is compared before the text is split (a hostile file costs
    no memory beyond its bounded bytes)."""
    n = manifest["output"]["shape"][-1]
    if len(data) > min(MAX_LABELS_FILE_BYTES, n * (MAX_LABEL_BYTES + 2)):
        raise BundleError(f"{where}: {len(data)} bytes, more than {n} labels of at most {MAX_LABEL_BYTES} bytes")
    lines = data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)
    if lines != n:
        raise BundleError(f"{where}: {lines} labels, but the engine outputs {n} classes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BundleError(f"{where}: not UTF-8 text ({e})") from e
    if text.endswith("\n"):
        text = text[:-1]
    labels = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")] if n else []
    return check_labels(labels, where, n)


def read_labels(bundle_dir: str | os.PathLike, manifest: dict[str, Any], verify: bool = True) -> list[str] | None:
    """Labels listed in a validated manifest (checked against ``files``), or None when it has none."""
    name = manifest.get("labels_file")
    if not name:
        return None
    entry = manifest["files"][name]
    with BundleFiles(bundle_dir) as files:
        data = files.read(name, entry["size"], entry["sha256"] if verify else None)
    return parse_labels(data, manifest, Path(bundle_dir) / name)


def verify_files(bundle_dir: str | os.PathLike, manifest: dict[str, Any], hashes: bool = True) -> None:
    """Check every file the manifest lists: a regular file inside the bundle (no symlink), its size and, with
    ``hashes``, its SHA-256. ``manifest`` must be validated (:func:`validate_manifest`)."""
    with BundleFiles(bundle_dir) as files:
        for name, entry in manifest["files"].items():
            files.check(name, entry["size"], entry["sha256"] if hashes else None)


def describe_files(bundle_dir: str | os.PathLike, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The manifest's ``files`` entry for ``names`` (plain names of regular files in ``bundle_dir``):
    ``{name: {"sha256": hex, "size": bytes}}``, sorted by name. For the builder."""
    out: dict[str, dict[str, Any]] = {}
    with BundleFiles(bundle_dir) as files:
        for name in sorted(set(names)):
            data_fd, st = files._open(check_file_name(name, str(bundle_dir)))
            try:
                with open(data_fd, "rb", closefd=False) as f:
                    digest, size = sha256_stream(f, 1 << 24)
            finally:
                os.close(data_fd)
            out[name] = {"sha256": digest, "size": size}
    return out
