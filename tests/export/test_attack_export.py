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
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "export/tensorrt/gpu_env.py"),
            "--tegra-release",
            str(tmp_path / "no-tegra"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


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


# ------------------------------------------------------------------------------ benchmarks' options


def _fail(*args, **kwargs):
    pytest.fail("the benchmark ran")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--iters", "0"], "--iters: expected 1..100000, got 0"),  # before: a report of no timings, exit 0
        (["--threads", "99999"], "--threads: expected 0.."),  # before: handed to torch.set_num_threads as it came
        (["--tolerance", "nan"], "--tolerance: expected a positive number"),
        (["--rounds", "0"], "--rounds: expected 1..1000, got 0"),
        (["--out", "BUNDLE"], "is inside the input folder"),  # before: bench.json/.md/.png written into the bundle
        (["--out", "BUNDLE/reports"], "is inside the input folder"),
    ],
)
def test_bench_engine_options_are_checked_before_it_runs(fp32_bundle, monkeypatch, capsys, argv, message):
    from export.bench import engine as bench_engine

    monkeypatch.setattr(bench_engine, "bench_bundle", _fail)
    argv = [a.replace("BUNDLE", str(fp32_bundle)) for a in argv]
    assert bench_engine.main(["--engine", str(fp32_bundle), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in fp32_bundle.iterdir() if p.name.startswith(("bench", "reports"))) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seconds", "nan"], "--fps and --seconds: expected positive numbers"),  # before: int(nan) deep inside
        (["--seconds", "inf"], "--fps and --seconds: expected positive numbers"),  # before: an OverflowError traceback
        (["--max-wait-ms", "nan"], "--max-wait-ms: expected a finite number >= 0"),  # before: a TypeError traceback
        (["--decode-seconds", "0"], "--decode-seconds: expected a finite number > 0"),
        (["--source", "DIR"], "not a plain file (a folder, FIFO or device)"),  # before: "no such file" for a folder
        (["--out", "BUNDLE/cameras.json"], "is inside the input folder"),
        (
            ["--fps", "5", "--seconds", "1"],
            "5 frames per camera, fewer than one clip window of this engine (15 frames)",
        ),
    ],
)
def test_bench_cameras_options_are_checked_before_it_runs(fp32_bundle, tmp_path, monkeypatch, capsys, argv, message):
    # the short run (5 frames a camera, no window) was a TypeError traceback formatting a p50 of None
    from export.bench import cameras

    monkeypatch.setattr(cameras, "run_cameras", _fail)
    argv = [a.replace("BUNDLE", str(fp32_bundle)).replace("DIR", str(tmp_path)) for a in argv]
    assert cameras.main(["--engine", str(fp32_bundle), "--cameras", "2", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads", "99999"], "--threads: expected 0.."),  # before: torch crashed the process (SIGSEGV)
        (["--gemm-n", "100000000"], "--gemm-n: expected 1..8192"),  # before: a traceback from torch's allocator
        (["--rounds", "0"], "--rounds: expected 1..1000, got 0"),  # before: 0 quietly meant the default
        (["--eval-clips", "0"], "--eval-clips: expected 1..10000, got 0"),
        (["--seed", "-5"], "--seed: expected 0..4294967295, got -5"),  # before: "expected non-negative integer"
    ],
)
def test_bench_cpu_options_are_checked_before_it_runs(monkeypatch, capsys, argv, message):
    from export.bench import cpu

    monkeypatch.setattr(cpu, "run_bench", _fail)
    assert cpu.main(["--quick", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
