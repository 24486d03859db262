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
      "source": {...} | null, "calibration": {...} | null, "tolerance": {...} | null,
      "build": {...} | null                 # informational: objects, not interpreted by the runtime
    }

Every check raises :class:`BundleError` naming the manifest file and the field, with what was expected and
what came; nothing else comes out of :func:`validate_manifest` or :func:`read_manifest`. Unknown top-level
keys are refused (a typo such as ``"labels_flie"`` would otherwise silently drop the labels).

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
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import BundleError
from .files import sha256_stream
from .preprocess import MAX_INT, PreprocessConfig

__all__ = ["BundleError", "SCHEMA_VERSION", "MANIFEST_NAME", "BACKENDS", "PRECISIONS", "validate_manifest",
           "read_manifest", "read_labels", "describe_files", "verify_files", "check_file_name", "BundleFiles"]

SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"
BACKENDS = ("onnxruntime", "tensorrt", "openvino")
PRECISIONS = ("fp32", "fp16", "int8")
INPUT_DTYPES = ("float32", "float16", "uint8")
OUTPUT_DTYPES = ("float32", "float16")
LAYOUTS = ("BTCHW",)
#: the largest manifest the runtime reads (a manifest is a few kB; this bounds a hostile one)
MAX_MANIFEST_BYTES = 16 << 20
_REQUIRED = ("schema_version", "backend", "engine_file", "files", "precision", "model_config", "input", "output",
             "preprocess", "parity")
_OPTIONAL = ("backend_version", "labels_file", "session", "source", "calibration", "tolerance", "build")
_HEX = frozenset("0123456789abcdef")


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


def check_file_name(name: Any, where: str = "bundle", field: str = "file name") -> str:
    """A plain file name inside the bundle: no directory part, not absolute, not ``.``/``..``; returns it."""
    if not isinstance(name, str) or not name:
        raise _fail(where, field, "a plain file name inside the bundle", name)
    if (name in (".", "..") or "/" in name or "\\" in name or "\0" in name or os.path.isabs(name)
            or len(name.encode("utf-8", "surrogatepass")) > 255 or name == MANIFEST_NAME):
        raise _fail(where, field, f"a plain file name inside the bundle (no '/', no '..', not absolute, not "
                                  f"{MANIFEST_NAME})", name)
    return name


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
        raise BundleError(f"{where}: unknown keys {unknown}; schema {SCHEMA_VERSION} has {sorted(_REQUIRED + _OPTIONAL)}")
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
    v = list(v)
    first = v[0]
    if first != -1 or isinstance(first, bool):
        _int(where, f"{field}[0]", first)  # a fixed batch dimension is allowed; -1 is dynamic
    for i, dim in enumerate(v[1:], 1):
        _int(where, f"{field}[{i}]", dim)
    return v


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
    lo = _int(where, "input.batch.min", batch.get("min"))
    opt = _int(where, "input.batch.opt", batch.get("opt", lo))
    hi = _int(where, "input.batch.max", batch.get("max"))
    if not lo <= opt <= hi:
        raise _fail(where, "input.batch", "1 <= min <= opt <= max", {"min": lo, "opt": opt, "max": hi})
    if shape[0] != -1 and not lo == hi == shape[0]:
        raise BundleError(f"{where}: input.shape[0]: a fixed batch {shape[0]} but input.batch is {lo}..{hi}")
    outp = _obj(where, "output", outp)
    _str(where, "output.name", outp.get("name"))
    _str(where, "output.dtype", outp.get("dtype", "float32"), OUTPUT_DTYPES)
    oshape = _shape(where, "output.shape", outp.get("shape"), 2)
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
        return module.validate_session(dict(session))
    except BundleError as e:
        raise BundleError(f"{where}: {e}") from e
    except Exception as e:  # noqa: BLE001 - a malformed value must surface as a BundleError, whatever the schema code did
        raise BundleError(f"{where}: session: invalid for {backend} ({type(e).__name__}: {e})") from e


def _validate_parity(where: str, parity: Any, required: bool) -> dict[str, Any] | None:
    if parity is None:
        if not required:
            return None
        raise BundleError(f"{where}: parity: expected the build's parity result (an object with 'passed'), got null: "
                          "the bundle was never checked against its reference (an interrupted build?); rebuild it")
    parity = _obj(where, "parity", parity)
    passed = parity.get("passed")
    if not isinstance(passed, bool):
        raise _fail(where, "parity.passed", "true or false", passed)
    allowed = parity.get("allowed_failure", False)
    if not isinstance(allowed, bool):
        raise _fail(where, "parity.allowed_failure", "true or false", allowed)
    failures = parity.get("failures", [])
    if not isinstance(failures, list) or not all(isinstance(f, str) for f in failures):
        raise _fail(where, "parity.failures", "a list of strings", failures)
    for key in ("max_abs_logit", "mean_abs_logit", "min_cosine", "mean_cosine", "top1_agreement", "top5_agreement"):
        v = parity.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise _fail(where, f"parity.{key}", "a number", v)
    if not passed and not allowed:
        raise BundleError(f"{where}: parity.passed is false (failures: {'; '.join(failures) or 'not recorded'}) and "
                          "the build did not allow it (allowed_failure); refusing a bundle that failed its parity check")
    return parity


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


def parse_labels(data: bytes, manifest: dict[str, Any], where: str | os.PathLike) -> list[str]:
    """Labels from the bytes of a labels file: one per line, as many as the engine has classes."""
    try:
        labels = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise BundleError(f"{where}: not UTF-8 text ({e})") from e
    n = manifest["output"]["shape"][-1]
    if len(labels) != n:
        raise BundleError(f"{where}: {len(labels)} labels, but the engine outputs {n} classes")
    return labels


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
