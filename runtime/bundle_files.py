"""An engine bundle's files, read safely: the directory opened once, every file by a plain name, never through a
symlink, checked against the manifest's size and SHA-256; the labels file parsed and checked.

The schema of ``manifest.json`` and its validation are in :mod:`runtime.manifest`, which re-exports these names
(``from runtime.manifest import BundleFiles, read_labels, ...`` keeps working). For a 100 MB engine file here
(AMD Zen 5, 2 shared cores, page cache warm, medians of 5 interleaved rounds) reading it takes ~100 ms and hashing
it ~105 ms more; ``Engine(bundle, verify=False)`` skips the hash (not the names, types and sizes).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import BundleError
from .errors import field_error as _fail
from .errors import type_name as _typename
from .files import sha256_stream

__all__ = [
    "MANIFEST_NAME",
    "MAX_MANIFEST_BYTES",
    "MAX_LABEL_BYTES",
    "MAX_LABELS_FILE_BYTES",
    "BundleFiles",
    "check_file_name",
    "check_labels",
    "parse_labels",
    "read_labels",
    "verify_files",
    "describe_files",
]

MANIFEST_NAME = "manifest.json"
#: the largest manifest the runtime reads (a manifest is a few kB; this bounds a hostile one)
MAX_MANIFEST_BYTES = 16 << 20
MAX_LABEL_BYTES = 1024  # one label, UTF-8
MAX_LABELS_FILE_BYTES = 16 << 20
#: characters a label may not hold: control and format characters, line and paragraph separators (a label is one
#: line of labels.txt, of a Triton config and of a terminal)
_BAD_LABEL_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


#: the names a bundle may give its files: a strict pattern, so a name can go into generated configs unescaped
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def check_file_name(name: Any, where: str = "bundle", field: str = "file name") -> str:
    """A plain file name inside the bundle: no directory part, not absolute, not ``.``/``..``; returns it."""
    if not isinstance(name, str) or not name:
        raise _fail(where, field, "a plain file name inside the bundle", name)
    if not _FILE_NAME.fullmatch(name) or len(name) > 255 or name == MANIFEST_NAME:
        raise _fail(
            where,
            field,
            f"a plain file name inside the bundle (letters, digits, '_', '.', '+', '-'; "
            f"no '/', no '..', no quotes, spaces or control characters; not {MANIFEST_NAME})",
            name,
        )
    return name


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
                raise BundleError(
                    f"{full}: is a symbolic link; a bundle holds its own files, not links (to {os.readlink(full)!r})"
                ) from e
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
                raise BundleError(
                    f"{full}: {st.st_size} bytes, but the manifest's files[{name!r}].size is {size}: "
                    "the file was changed or truncated after the build"
                )
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
            raise BundleError(
                f"{full}: sha256 {digest} differs from the manifest's "
                f"files[{name!r}].sha256 {sha256}: the file was replaced or edited after the build"
            )
        return data

    def check(self, name: str, size: int, sha256: str | None) -> None:
        """Check one file's size (and hash, streamed) without keeping its bytes."""
        fd, st = self._open(name)
        full = self.path / name
        try:
            if st.st_size != size:
                raise BundleError(
                    f"{full}: {st.st_size} bytes, but the manifest's files[{name!r}].size is {size}: "
                    "the file was changed or truncated after the build"
                )
            if sha256 is None:
                return
            with open(fd, "rb", closefd=False) as f:
                digest, _ = sha256_stream(f, 1 << 24)
        finally:
            os.close(fd)
        if digest != sha256:
            raise BundleError(
                f"{full}: sha256 {digest} differs from the manifest's files[{name!r}].sha256 "
                f"{sha256}: the file was replaced or edited after the build"
            )


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
                raise BundleError(
                    f"{where}: label {i} {label[:60]!r}: holds U+{ord(ch):04X} "
                    f"({unicodedata.name(ch, unicodedata.category(ch))}); a label is one line of "
                    "printable text"
                )
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
