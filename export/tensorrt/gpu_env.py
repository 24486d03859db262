"""``make gpu-check``'s first step: make the virtual environment able to run TensorRT on this host, or say why not.

Runs with the system Python and the standard library only (``python3 export/tensorrt/gpu_env.py``), before the
virtual environment exists or has TensorRT. It decides, prints which, and does it:

* **no NVIDIA GPU** (no ``nvidia-smi`` that lists a GPU, and not a Jetson): exit 2 naming what is missing;
* **Jetson** (``/etc/nv_tegra_release``): TensorRT comes with JetPack for the system Python and is not on PyPI
  for Jetson, so the venv is made (or switched) to see the system site packages, and the check is that
  ``import tensorrt`` works from the system Python (exit 2 naming ``apt install nvidia-jetpack`` otherwise);
  the ``jetson`` extra installs cuda-python for CUDA 12 (JetPack 6) in the venv;
* **x86/SBSA with a driver**: the driver's CUDA major (``nvidia-smi``'s "CUDA Version: 12.4") picks the extra,
  ``tensorrt-cu12`` or ``tensorrt-cu13``, each pinning the matching cuda-python (pyproject.toml).

Then ``pip install -e ./runtime -e '.[cpu,dev,<extra>]'`` in the venv, and the venv's stamp is touched so that the
other make targets do not reinstall. ``--dry-run`` prints the decision and the commands without running them.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[2]
#: the pyproject extra per driver CUDA major
EXTRA_FOR_CUDA = {12: "tensorrt-cu12", 13: "tensorrt-cu13"}
#: the pyproject extra on Jetson: cuda-python for CUDA 12 only (TensorRT comes from JetPack, never pip)
JETSON_EXTRA = "jetson"


class Missing(Exception):
    """This host cannot run the check; the message says what is missing."""


def driver_cuda_major(nvidia_smi: str | None) -> int:
    """The driver's CUDA major from ``nvidia-smi``'s banner; raises :class:`Missing` naming what failed."""
    if nvidia_smi is None:
        raise Missing("no NVIDIA driver: nvidia-smi is not on PATH (install the NVIDIA driver, or run on a GPU host)")
    try:
        r = subprocess.run([nvidia_smi], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Missing(f"nvidia-smi could not run ({type(e).__name__}: {e})") from e
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise Missing(f"no NVIDIA GPU usable: nvidia-smi exited {r.returncode} ({tail[0]})")
    m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", r.stdout)
    if not m:
        raise Missing("nvidia-smi printed no 'CUDA Version: X.Y' (driver too old for TensorRT 10?)")
    return int(m.group(1))


def system_tensorrt(system_python: str) -> str:
    """The system Python's TensorRT version (JetPack); raises :class:`Missing` when it does not import."""
    try:
        r = subprocess.run(
            [system_python, "-c", "import tensorrt; print(tensorrt.__version__)"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except OSError as e:
        raise Missing(f"Jetson, but {system_python} cannot run ({e})") from e
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise Missing(
            f"Jetson, but TensorRT does not import from {system_python} ({last}): install JetPack's "
            "TensorRT (sudo apt install nvidia-jetpack)"
        )
    return r.stdout.strip()


def decide(nvidia_smi: str | None, tegra_release: Path, system_python: str) -> dict:
    """What to install: {"kind": "jetson"|"pypi", "system_site_packages", "extras", "why"}; raises :class:`Missing`."""
    if tegra_release.is_file():
        version = system_tensorrt(system_python)
        return {
            "kind": "jetson",
            "system_site_packages": True,
            "extras": f"cpu,dev,{JETSON_EXTRA}",
            "why": f"Jetson ({tegra_release}): JetPack's TensorRT {version} from the system Python (venv with "
            f"system site packages), pip extra {JETSON_EXTRA} (cuda-python for CUDA 12)",
        }
    major = driver_cuda_major(nvidia_smi)
    extra = EXTRA_FOR_CUDA.get(major)
    if extra is None:
        raise Missing(
            f"the driver's CUDA {major} has no TensorRT extra here (known: "
            f"{', '.join(f'CUDA {k}: {v}' for k, v in EXTRA_FOR_CUDA.items())})"
        )
    return {
        "kind": "pypi",
        "system_site_packages": False,
        "extras": f"cpu,dev,{extra}",
        "why": f"driver CUDA {major}: pip extra {extra} (TensorRT wheels and the matching cuda-python)",
    }


def _enable_system_site_packages(venv_dir: Path) -> bool:
    """Switch an existing venv to see the system site packages; True when it changed."""
    cfg = venv_dir / "pyvenv.cfg"
    text = cfg.read_text()
    new = re.sub(r"(?m)^include-system-site-packages\s*=\s*false\s*$", "include-system-site-packages = true", text)
    if new != text:
        cfg.write_text(new)
    return new != text


def commands(plan: dict, venv_dir: Path) -> list[list[str]]:
    py = str(venv_dir / "bin" / "python")
    return [[py, "-m", "pip", "install", "-q", "-e", str(ROOT / "runtime"), "-e", f"{ROOT}[{plan['extras']}]"]]


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line and exit 2 (runtime.cli_args' policy; this script runs before the venv exists)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    ap = _OneLineParser(prog="export/tensorrt/gpu_env.py", description=__doc__.split("\n")[0])
    ap.add_argument("--venv", default=str(ROOT / ".venv"))
    ap.add_argument("--stamp", default=None, help="the venv's stamp file to touch after installing")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--tegra-release", default="/etc/nv_tegra_release")
    ap.add_argument("--system-python", default="/usr/bin/python3")
    a = ap.parse_args(argv)
    try:
        plan = decide(shutil.which("nvidia-smi"), Path(a.tegra_release), a.system_python)
    except Missing as e:
        print(f"make gpu-check: missing: {e}", file=sys.stderr)
        return 2
    venv_dir = Path(a.venv)
    print(f"make gpu-check: {plan['why']}", flush=True)
    cmds = commands(plan, venv_dir)
    if a.dry_run:
        for c in cmds:
            print("would run: " + " ".join(c))
        return 0
    try:
        return _install(plan, venv_dir, cmds, a.stamp)
    except OSError as e:  # an unwritable venv or stamp, a full disk: one line, not a traceback
        print(f"make gpu-check: {e}", file=sys.stderr)
        return 2


def _install(plan: dict, venv_dir: Path, cmds: list[list[str]], stamp: str | None) -> int:
    if not (venv_dir / "bin" / "python").exists():
        venv.EnvBuilder(with_pip=True, system_site_packages=plan["system_site_packages"]).create(venv_dir)
    elif plan["system_site_packages"] and _enable_system_site_packages(venv_dir):
        print(f"make gpu-check: {venv_dir} now sees the system site packages (JetPack's TensorRT)")
    for c in cmds:
        r = subprocess.run(c)
        if r.returncode != 0:
            print(f"make gpu-check: {' '.join(c)} failed with exit code {r.returncode}", file=sys.stderr)
            return 2
    if stamp:
        Path(stamp).touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
