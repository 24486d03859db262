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
import stat
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

__all__ = [
    "atomic_write",
    "atomic_output",
    "write_bytes_atomic",
    "write_text_atomic",
    "write_json_atomic",
    "temp_path_beside",
    "check_report_file",
    "sha256_file",
    "sha256_code",
    "sha256_stream",
    "sha256_json",
    "FolderNotReplaceable",
    "folder_records",
    "owned_folder_problem",
    "replace_problem",
    "check_replaceable",
]


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
        with open(tmp, mode, newline="" if mode == "w" else None) as f:
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


def sha256_code(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a Python file's syntax tree (``ast.dump``, no line numbers): any change to the code changes it,
    a change of layout (formatting, blank lines, comments) does not."""
    import ast

    tree = ast.parse(Path(path).read_text(encoding="utf-8"), str(path))
    return hashlib.sha256(ast.dump(tree).encode("utf-8")).hexdigest()


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


def check_output_file(
    out: str | os.PathLike, inputs: "list[str | os.PathLike] | tuple[str | os.PathLike, ...]" = (), what: str = "--out"
) -> Path:
    """Refuse an output file that would destroy an input or cannot be written; returns ``out`` as a Path.

    Refused, with one line (``ValueError``) naming ``what``: a missing parent folder, an existing folder, and
    any path that is (or resolves through symlinks, or is hard-linked) to one of ``inputs``, and any path inside
    an input that is a folder (a bundle). Inputs that do not exist (camera indices, URLs) are ignored.
    """
    p = Path(out)
    parent = p.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {out}: the folder {parent} does not exist; create it first")
    if p.is_dir():
        raise ValueError(f"{what} {out}: is a folder; expected a file name")
    target = p.resolve()
    for src in inputs:
        s = Path(src)
        if not s.exists():
            continue
        if s.is_dir():  # a folder input (a bundle): nothing may be written into it
            if s.resolve() in target.parents:
                raise ValueError(f"{what} {out}: is inside the input folder {src}; write it elsewhere")
            continue
        same = s.resolve() == target
        if not same and p.exists():
            try:
                same = os.path.samefile(s, p)
            except OSError:
                same = False
        if same:
            raise ValueError(
                f"{what} {out}: is the input {src}; writing it would destroy the input (choose another file name)"
            )
    return p


def check_report_file(
    out: str | os.PathLike, inputs: "list[str | os.PathLike] | tuple[str | os.PathLike, ...]" = (), what: str = "--out"
) -> Path:
    """:func:`check_output_file` for a JSON report: the name ends in ``.json``, and an existing file is replaced only
    when it is a JSON object (an earlier report), never a video, a model or anything else the user keeps there."""
    p = check_output_file(out, inputs, what)
    if p.suffix.lower() != ".json":
        raise ValueError(f"{what} {out}: expected a file name ending in .json (the JSON report)")
    if p.exists() or p.is_symlink():
        try:
            if not stat.S_ISREG(os.stat(p).st_mode) or os.path.getsize(p) > 64 << 20:
                raise ValueError
            with open(p, "rb") as f:
                ok = isinstance(json.loads(f.read()), dict)
        except (OSError, ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            raise ValueError(f"{what} {out}: exists and is not a JSON report; remove it or choose another name")
    return p


# --------------------------------------------------------------------------- folders a writer may replace
# One rule for every writer that replaces a whole folder (``make engine``'s OUT, ``make triton``'s model folder,
# any future exporter): the folder is absent, empty, or provably the writer's own output: a manifest file that
# passes the writer's full validation and whose ``files`` table ({relative path: {"sha256", "size"}}) lists every
# other file in the folder, each present, a plain file, of that size and hash. Never a symlink, never the current
# folder or the home folder (or one holding them), never an input or a folder inside or around an input, never
# outside an explicit parent.


class FolderNotReplaceable(ValueError):
    """A folder a writer may not replace; the message names the folder and says why (one line)."""


#: the largest ownership manifest read (a manifest is a few kB; this bounds a hostile one)
MAX_OWNER_MANIFEST_BYTES = 16 << 20


def _listing(folder: Path) -> tuple[dict[str, os.stat_result], str | None]:
    """Every plain file under ``folder`` by relative POSIX path, or the first entry that is something else."""
    found: dict[str, os.stat_result] = {}
    stack = [folder]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                rel = Path(e.path).relative_to(folder).as_posix()
                if stat.S_ISDIR(st.st_mode):
                    stack.append(Path(e.path))
                elif stat.S_ISREG(st.st_mode):
                    found[rel] = st
                else:
                    return found, f"it holds {rel!r}, which is not a plain file or folder (a symlink, FIFO or device)"
    return found, None


def folder_records(folder: str | os.PathLike, exclude: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """The ``files`` table a writer records for its folder: ``{relative POSIX path: {"sha256", "size"}}`` of every
    plain file under ``folder`` but ``exclude``; ValueError when it holds anything else (a symlink, a FIFO)."""
    folder = Path(folder)
    present, odd = _listing(folder)
    if odd:
        raise ValueError(f"{folder}: {odd}")
    skip = set(exclude)
    return {
        rel: {"sha256": sha256_file(folder / rel), "size": st.st_size}
        for rel, st in sorted(present.items())
        if rel not in skip
    }


def owned_folder_problem(
    folder: str | os.PathLike, manifest_name: str, validate: "Callable[[Any, Path], Any]"
) -> str | None:
    """None when ``folder`` is a writer's own output (see above), else why not (one phrase).

    ``validate(data, manifest_path)`` is the writer's full schema check of the parsed manifest; it raises
    ``ValueError`` (or a subclass) when the manifest is not one of its own.
    """
    folder = Path(folder)
    path = folder / manifest_name
    try:
        st = path.lstat()
    except FileNotFoundError:
        return f"it holds no {manifest_name}"
    if not stat.S_ISREG(st.st_mode):
        return f"its {manifest_name} is not a plain file"
    if st.st_size > MAX_OWNER_MANIFEST_BYTES:
        return f"its {manifest_name} is {st.st_size} bytes (at most {MAX_OWNER_MANIFEST_BYTES})"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        validate(data, path)
    except (OSError, UnicodeDecodeError, RecursionError, ValueError) as e:  # JSONDecodeError is a ValueError
        text = str(e).replace("\n", " ")
        return f"its {manifest_name} does not validate ({text[:200]})"
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not files:
        return f"its {manifest_name} has no 'files' table"
    present, odd = _listing(folder)
    if odd:
        return odd
    for rel in sorted(set(present) - {manifest_name}):
        if rel not in files:
            return f"it holds {rel!r}, which its {manifest_name} does not list"
    for rel, entry in files.items():
        if not isinstance(entry, dict) or rel not in present:
            return f"{rel!r}, listed in its {manifest_name}, is missing"
        if present[rel].st_size != entry.get("size"):
            return f"{rel!r} is {present[rel].st_size} bytes, its {manifest_name} says {entry.get('size')!r}"
        if sha256_file(folder / rel) != entry.get("sha256"):
            return f"{rel!r} differs from its {manifest_name} (sha256)"
    return None


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies inside it (both resolved)."""
    return a == b or b in a.parents


def replace_problem(
    target: str | os.PathLike,
    owned: "Callable[[Path], str | None]",
    kind: str,
    inputs: "Iterable[str | os.PathLike]" = (),
    within: str | os.PathLike | None = None,
) -> str | None:
    """None when a writer may replace (or create) the folder ``target``, else why not (one phrase).

    ``owned(folder)`` says why an existing, non-empty folder is not the writer's own (None: it is); ``kind`` names
    what the writer makes ("an engine bundle"); ``inputs`` are what the writer reads (a bundle, a checkpoint, a
    cache): the target may not be one, hold one or lie inside one; ``within``: the target must lie inside it.
    """
    p = Path(target)
    if p.is_symlink():
        return "is a symlink; refusing to replace it (give the real folder, or a new path)"
    full = Path(os.path.abspath(p)).resolve()
    if within is not None and Path(within).resolve() not in full.parents:
        return f"is not inside {within}; refusing to write outside it"
    for keep, what in (
        (Path.cwd().resolve(), "the current folder"),
        (Path.home().resolve(), "your home folder"),
        (Path(full.anchor), "the file system root"),
    ):
        if _inside(keep, full):
            return f"is (or holds) {what} {keep}; refusing to replace it (choose a new folder)"
    for src in inputs:
        s = Path(os.path.abspath(src)).resolve()
        if _inside(full, s) or _inside(s, full):
            rel = "is" if s == full else ("holds" if full in s.parents else "lies inside")
            return f"{rel} the input {src}; refusing to replace it (choose a folder apart from the inputs)"
    if not p.exists():
        return None
    if not p.is_dir():
        return f"is a file, not {kind} folder; refusing to replace it (choose a new path)"
    if not any(p.iterdir()):
        return None
    why = owned(p)
    if why:
        return (
            f"an existing folder that is not {kind} ({why}); refusing to replace it: choose a new or empty "
            "folder, or remove it yourself"
        )
    return None


def check_replaceable(
    target: str | os.PathLike,
    owned: "Callable[[Path], str | None]",
    kind: str,
    inputs: "Iterable[str | os.PathLike]" = (),
    within: str | os.PathLike | None = None,
    what: str = "OUT",
) -> Path:
    """``target`` as a Path when :func:`replace_problem` finds nothing; :class:`FolderNotReplaceable` otherwise,
    whose message reads ``{what}={target}: {why}``."""
    why = replace_problem(target, owned, kind, inputs, within)
    if why:
        raise FolderNotReplaceable(f"{what}={target}: {why}")
    return Path(target)
