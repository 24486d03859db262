"""File helpers shared by every layer: atomic writes and content hashes.

Nothing here changes process state: new files are created with mode 0o666 and the kernel applies the
process umask, as ``open()`` does, so there is no need to read (and briefly change) the umask.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_write", "atomic_output", "write_bytes_atomic", "write_text_atomic", "write_json_atomic", "temp_path_beside",
           "sha256_file", "sha256_stream", "sha256_json"]


def temp_path_beside(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A new, empty file beside ``path`` (its folder is created if needed), named ``.<name>.<random><suffix>``,
    with the permissions ``open()`` would give: for writing and then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path.parent}: could not create a unique temporary file beside {path.name}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", fsync: bool = True) -> Iterator[IO[Any]]:
    """``with atomic_write(p, "w") as f: f.write(...)``: readers see the old file or the whole new one.

    The data goes to a temporary file beside ``path``, is flushed (and fsynced) and renamed into place on
    success; on any exception, including KeyboardInterrupt, the temporary file is removed and ``path`` is
    left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode: expected 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = temp_path_beside(path)
    try:
        with open(tmp, mode, **({"newline": ""} if mode == "w" else {})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """``with atomic_output(p, ".onnx") as tmp: library.save(..., tmp)``: for writers that take a path.

    Yields a temporary path beside ``path`` (``suffix`` keeps writers that look at the extension happy),
    renamed onto ``path`` when the block succeeds and removed when it raises.
    """
    path = Path(path)
    tmp = temp_path_beside(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20, external_data: bool = False) -> str:
    """Hex SHA-256 of a file's bytes; with ``external_data``, an ONNX file's ``<name>.data`` (weights of
    models over 2 GB) is hashed after it when present."""
    h = hashlib.sha256()
    path = Path(path)
    paths = [path]
    if external_data and (data := path.with_name(path.name + ".data")).is_file():
        paths.append(data)
    for p in paths:
        with open(p, "rb") as f:
            sha256_stream(f, chunk, h)
    return h.hexdigest()


def sha256_stream(f: IO[bytes], chunk: int = 1 << 20, h: Any = None) -> tuple[str, int]:
    """Hex SHA-256 and byte count of what is left to read in the binary file object ``f`` (fed into ``h``
    when given, for hashing several files as one)."""
    h = hashlib.sha256() if h is None else h
    size = 0
    while block := f.read(chunk):
        h.update(block)
        size += len(block)
    return h.hexdigest(), size


def sha256_json(*parts: Any, length: int = 16) -> str:
    """A short content key: SHA-256 of ``parts`` as canonical JSON (sorted keys), first ``length`` hex digits."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:length]
