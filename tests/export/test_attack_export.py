"""Hostile but realistic use of the export-side entry points (fourth round): each test reproduces a case that broke."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _gpu_env(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``gpu_env.py`` as ``make gpu-check`` runs it, with a fake ``nvidia-smi`` reporting a CUDA 12 driver."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '| NVIDIA-SMI 580.65   Driver Version: 580.65   CUDA Version: 12.4 |'\n")
    smi.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, str(ROOT / "export/tensorrt/gpu_env.py"), "--tegra-release",
                           str(tmp_path / "no-tegra"), *args], capture_output=True, text=True, timeout=120, env=env)


def test_gpu_env_usage_errors_are_one_line(tmp_path):
    # before: argparse's usage block and "error: ..." (three lines)
    r = _gpu_env(tmp_path, "--dry-run", "--venv")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "argument --venv: expected one argument (see export/tensorrt/gpu_env.py --help)" in r.stderr


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc (a folder nothing can be made in)")
def test_gpu_env_a_venv_that_cannot_be_made_is_one_line(tmp_path):
    # before: a traceback from venv.EnvBuilder (exit 1) once the driver was found
    r = _gpu_env(tmp_path, "--venv", "/proc/no-venv-here")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "make gpu-check: " in r.stderr and "/proc/no-venv-here" in r.stderr
