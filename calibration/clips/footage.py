"""Real camera footage for INT8 calibration and evaluation, available offline: OpenCV's sample videos (issue 25).

Debian's ``opencv-doc`` package ships them (``debian/copyright``: ``Files: *`` of OpenCV, Apache-2.0 AND
BSD-3-Clause; Debian main, so DFSG-free): ``vtest.avi`` (a fixed street camera, pedestrians, 768x576, 79 s),
``box.mp4`` and ``cup.mp4`` (hand-held camera, 640x480 H.264), ``tree.avi`` (320x240). They are read where the
package put them (``/usr/share/doc/opencv-doc``), or from ``$TIMESFORMER_FOOTAGE``, or from ``artifacts/footage``,
where ``python -m calibration.clips.footage --install`` (``make footage``) extracts them from the package without
root (``apt-get download`` + ``dpkg-deb``). Tests that need them skip, naming that command, when they are absent.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from runtime.cli_args import ArgumentParser, user_errors

__all__ = ["PACKAGE", "VIDEOS", "DEFAULT_DEST", "find_footage", "install_footage", "INSTALL_HINT"]

PACKAGE = "opencv-doc"
#: file name -> its path inside the package (a ``.gz`` is decompressed on the way)
VIDEOS = {
    "vtest.avi": "usr/share/doc/opencv-doc/examples/data/vtest.avi",
    "tree.avi": "usr/share/doc/opencv-doc/examples/data/tree.avi",
    "box.mp4": "usr/share/doc/opencv-doc/opencv4/html/box.mp4.gz",
    "cup.mp4": "usr/share/doc/opencv-doc/opencv4/html/cup.mp4.gz",
}
DEFAULT_DEST = Path("artifacts/footage")
INSTALL_HINT = "make footage (python -m calibration.clips.footage --install: OpenCV's sample videos from opencv-doc)"


def _materialize(src_root: Path, dest: Path) -> Path | None:
    """The videos under ``src_root`` (a package tree) copied/decompressed into ``dest``; None if any is missing."""
    if not all((src_root / rel).is_file() for rel in VIDEOS.values()):
        return None
    dest.mkdir(parents=True, exist_ok=True)
    for name, rel in VIDEOS.items():
        out = dest / name
        if out.is_file():
            continue
        tmp = out.with_suffix(out.suffix + ".part")
        with (gzip.open if rel.endswith(".gz") else open)(src_root / rel, "rb") as f, open(tmp, "wb") as g:
            shutil.copyfileobj(f, g)
        os.replace(tmp, out)
    return dest


def find_footage(dest: str | os.PathLike = DEFAULT_DEST) -> Path | None:
    """A folder holding every file of :data:`VIDEOS`, or None: ``$TIMESFORMER_FOOTAGE``, ``dest``, or the installed
    package (decompressed into ``dest`` on first use)."""
    env = os.environ.get("TIMESFORMER_FOOTAGE")
    for d in ([Path(env)] if env else []) + [Path(dest)]:
        if all((d / n).is_file() for n in VIDEOS):
            return d
    try:
        return _materialize(Path("/"), Path(dest))
    except OSError:
        return None


def install_footage(dest: str | os.PathLike = DEFAULT_DEST) -> Path:
    """Download ``opencv-doc`` with apt (no root) and extract the videos into ``dest``; returns ``dest``."""
    found = find_footage(dest)
    if found is not None:
        return found
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise RuntimeError(
            f"no apt-get/dpkg-deb here: install the {PACKAGE} package's sample videos by hand into "
            f"{dest} ({', '.join(VIDEOS)}), or set TIMESFORMER_FOOTAGE to a folder holding them"
        )
    with tempfile.TemporaryDirectory(prefix="footage-") as tmp:
        r = subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        if r.returncode != 0 or not debs:
            raise RuntimeError(
                f"apt-get download {PACKAGE} failed ({(r.stderr or r.stdout).strip()[-300:]}); run "
                "apt-get update first, or set TIMESFORMER_FOOTAGE"
            )
        tree = Path(tmp) / "tree"
        tree.mkdir()
        tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(debs[0])], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)] + [f"./{p}" for p in VIDEOS.values()], input=tar, check=True)
        out = _materialize(tree, Path(dest))
    if out is None:
        raise RuntimeError(f"{debs[0].name}: does not hold {sorted(VIDEOS.values())}")
    return out


@user_errors("python -m calibration.clips.footage")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m calibration.clips.footage", description=__doc__.split("\n")[0])
    ap.add_argument("--install", action="store_true", help=f"fetch {PACKAGE} with apt-get download when absent")
    ap.add_argument("--dest", default=str(DEFAULT_DEST))
    a = ap.parse_args(argv)
    try:
        path = install_footage(a.dest) if a.install else find_footage(a.dest)
    except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
        print(f"python -m calibration.clips.footage: {e}", file=sys.stderr)
        return 2
    if path is None:
        print(f"python -m calibration.clips.footage: no footage here; {INSTALL_HINT}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
