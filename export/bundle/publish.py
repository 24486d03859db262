"""Publishing an engine bundle: what ``OUT`` may be, how a build is staged, and the one atomic step.

Rules:

* ``OUT`` is replaced only when it is one of our bundles (its ``manifest.json`` passes the runtime's full
  validation and its ``files`` table lists every other file, each present with its size and sha256) or an
  empty folder, and never when it is, holds or lies inside the current folder, the home folder or an input
  of the build (the checkpoint, the calibration set, the cache): the one rule of
  :func:`runtime.files.replace_problem`, shared with ``make triton``. Anything else (a folder with other
  files, a file, a symlink) is refused with :class:`PublishError` before any work, and nothing of the
  user's is deleted or renamed.
* A build is assembled in a staging folder beside ``OUT``, ``.<name>.build-<pid>-<random>``, created
  with mode ``0o777 & ~umask`` (as ``mkdir`` does; ``tempfile.mkdtemp``'s 0700 would lock out a camera
  service running as another user). The builder writes ``manifest.json`` last, after parity passed,
  so a staging folder without a manifest is never a loadable bundle.
* Publishing is one atomic step. On Linux, ``renameat2(RENAME_EXCHANGE)`` swaps the staging folder and
  the old bundle: at every instant ``OUT`` is either the old bundle or the new one, and ``OUT`` stays a
  real directory (so ``cp -r``, ``rsync`` and ``scp`` ship it as it is; a symlink ``OUT ->
  .versions/<id>`` would be atomic too, but copies of it would ship a dangling link). Where the kernel
  or file system has no exchange (other systems, some network file systems), the fallback is two
  renames: the old bundle to ``.<name>.old-<pid>-<random>``, the new one to ``OUT``. A kill between
  them leaves ``OUT`` missing and the old bundle beside it; the next build (or
  :func:`clean_stale`) renames it back before anything else.
* Stale temporaries of killed builds (staging and old folders whose process id is no longer running)
  are removed by the next build for the same ``OUT``.

``TIMESFORMER_TEST_KILL_AT=<step>`` makes the builder SIGKILL itself at that step
(:func:`kill_point`), for the crash-consistency tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import secrets
import shutil
import signal
import stat
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from runtime.files import FolderNotReplaceable, check_replaceable, owned_folder_problem

__all__ = [
    "PublishError",
    "KILL_ENV",
    "KILL_STEPS",
    "kill_point",
    "check_out",
    "bundle_problem",
    "make_staging",
    "clean_stale",
    "file_records",
    "publish",
    "exchange_supported",
]

KILL_ENV = "TIMESFORMER_TEST_KILL_AT"
#: the named steps a test may kill a build at, in build order
KILL_STEPS = ("after_export", "after_engine", "after_manifest", "mid_publish")
MANIFEST = "manifest.json"


class PublishError(ValueError):
    """``OUT`` cannot be written or published; the message names the path and says why."""


def kill_point(step: str) -> None:
    """SIGKILL this process when ``$TIMESFORMER_TEST_KILL_AT`` names ``step`` (crash tests only)."""
    if os.environ.get(KILL_ENV) == step:
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------- what OUT may be


def _validate_bundle_manifest(data: Any, path: Path) -> None:
    from runtime.manifest import validate_manifest

    validate_manifest(data, path)  # the runtime's full schema 2 check, parity included


def bundle_problem(folder: Path) -> str | None:
    """None when ``folder`` is one of our bundles, else why it is not (one phrase): its ``manifest.json`` passes
    the runtime's full validation and its ``files`` table lists every other file, each present with its size
    and sha256 (:func:`runtime.files.owned_folder_problem`)."""
    return owned_folder_problem(folder, MANIFEST, _validate_bundle_manifest)


def check_out(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """``OUT`` as a Path when a build may publish there: absent, an empty folder or one of our bundles
    (:func:`bundle_problem`), not the current or home folder, apart from every path in ``inputs`` (the
    checkpoint, the calibration set, the cache: never one of them, inside one or holding one); raises
    :class:`PublishError` otherwise. Creates the parent folder."""
    try:
        check_replaceable(out, bundle_problem, "an engine bundle", inputs)
    except FolderNotReplaceable as e:
        raise PublishError(str(e)) from e
    out = Path(out)
    if out.name in ("", ".", ".."):  # "x/..": the real name, so the staging folder lands beside it
        out = Path(os.path.abspath(out))
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise PublishError(f"OUT={out}: its parent {parent} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PublishError(f"OUT={out}: cannot create the folder {parent} ({e.strerror or e})") from e
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PublishError(f"OUT={out}: the folder {parent} is not writable")
    return out


# --------------------------------------------------------------------------- staging and stale temporaries


def _stale_pattern(out: Path) -> re.Pattern[str]:
    return re.compile(r"^\." + re.escape(out.name) + r"\.(build|old)-(\d+)-[0-9a-f]+$")


def make_staging(out: Path) -> Path:
    """A new empty folder beside ``out``, mode ``0o777 & ~umask``, named for this process."""
    for _ in range(100):
        tmp = out.parent / f".{out.name}.build-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue
    raise PublishError(f"{out.parent}: could not create a unique staging folder for {out.name}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale(out: Path, log=None) -> list[str]:
    """Remove the staging and old folders of dead builds of ``out``; first, when ``out`` is missing and a
    dead build left the old bundle beside it (killed inside the two-rename fallback), put it back.
    Returns what was done, one line each."""
    done: list[str] = []
    if not out.parent.is_dir():
        return done
    pat = _stale_pattern(out)
    stale = []
    for entry in out.parent.iterdir():
        m = pat.match(entry.name)
        if m and not _alive(int(m.group(2))) and entry.is_dir() and not entry.is_symlink():
            stale.append((m.group(1), entry))
    if not os.path.lexists(out):
        # an .old- folder was OUT itself until the killed build renamed it: put it back, whatever it holds
        olds = sorted((e for kind, e in stale if kind == "old"), key=lambda e: e.stat().st_mtime, reverse=True)
        if olds:
            os.rename(olds[0], out)
            done.append(f"restored {out} from {olds[0].name} (a build was killed while publishing)")
            stale = [(k, e) for k, e in stale if e != olds[0]]
    for _, entry in stale:
        shutil.rmtree(entry, ignore_errors=True)
        done.append(f"removed {entry.name} (left by a killed build)")
    if log:
        for line in done:
            log(line)
    return done


def file_records(folder: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, dict[str, Any]]:
    """``{name: {"sha256", "size"}}`` of every file in ``folder`` but ``exclude``; anything but a plain
    file (a symlink, a folder) is an error: a bundle is plain files only."""
    from runtime.manifest import describe_files

    names = []
    for entry in sorted(folder.iterdir()):
        if entry.name in exclude:
            continue
        if not stat.S_ISREG(entry.lstat().st_mode):
            raise PublishError(f"{entry}: a bundle holds plain files only, found something else")
        names.append(entry.name)
    return describe_files(folder, names)


# --------------------------------------------------------------------------- the atomic step

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2: Any = None


def _libc_renameat2() -> Any:
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _renameat2 = fn
    return _renameat2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap ``a`` and ``b``; False when this system or file system cannot."""
    if os.environ.get("TIMESFORMER_PUBLISH_NO_EXCHANGE") == "1":  # tests of the fallback
        return False
    fn = _libc_renameat2()
    if not fn:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"renameat2(RENAME_EXCHANGE) {a} <-> {b}: {os.strerror(err)}")


def exchange_supported() -> bool:
    """Whether this platform has ``renameat2`` (the file system may still refuse it)."""
    return bool(_libc_renameat2())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish(staging: Path, out: Path, check: Callable[[Path], Any] | None = None) -> None:
    """Make the finished folder in ``staging`` the one at ``out`` in one atomic step (see the module
    docstring); the old one, if any, is removed afterwards. ``out`` is re-checked first with ``check``
    (default :func:`check_out`, the bundle rule; another writer passes its own, e.g. ``make triton``)."""
    (check or check_out)(out)  # it may have changed during the build
    _fsync_dir(staging)
    if not os.path.lexists(out):
        os.rename(staging, out)
        kill_point("mid_publish")
    elif _exchange(staging, out):
        # staging now holds the old bundle (or the old empty folder) under a name clean_stale knows
        kill_point("mid_publish")
        shutil.rmtree(staging, ignore_errors=True)
    else:
        old = staging.with_name(f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        os.rename(out, old)
        kill_point("mid_publish")
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(out.parent)
