"""``python -m runtime check`` in a fresh virtual environment with only the runtime installed (issue 24): first
``./runtime[openvino]`` (OpenVINO FP32/FP16/INT8 bundles; no ONNX Runtime), then ``./runtime[cpu]`` added (ONNX
Runtime FP32/INT8 bundles); ``make parity`` and ``make bench`` take that path when there is no torch.

One venv, two installs (pip is slow here); needs the package index or pip's cache (what ``make setup`` fetched).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--duration", "0", "--iterations", "2", "--warmup", "1", "--profile-iterations", "1"]

pytestmark = pytest.mark.slow  # four bundle builds and two pip installs: minutes on 2 cores


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, motion_model_path, fp32_bundle) -> dict[str, Path]:
    pytest.importorskip("openvino", reason="openvino is not installed (pip install -e './runtime[openvino]')")
    from export.bundle.build import BuildRequest, build_bundle

    base = tmp_path_factory.mktemp("check-bundles")
    out = {"onnxruntime-fp32": fp32_bundle}
    for backend, precision in (
        ("onnxruntime", "int8"),
        ("openvino", "fp32"),
        ("openvino", "fp16"),
        ("openvino", "int8"),
    ):
        req = BuildRequest(
            model=str(motion_model_path),
            precision=precision,
            backend=backend,
            out=str(base / f"{backend}-{precision}"),
            cache_dir=str(base / "cache"),
            calib_clips=8,
            parity_clips=4,
            batch=(1, 2, 4),
            allow_precision_fallback=True,
        )  # fp16: f32 on AVX2-only
        out[f"{backend}-{precision}"] = build_bundle(req)
    return out


def _pip(py: Path, spec: str) -> None:
    res = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", spec],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if res.returncode != 0 and "Could not find a version" in res.stderr + res.stdout:
        pytest.skip(f"no package index or cache for the runtime's dependencies: {res.stderr.strip()[-300:]}")
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> tuple[Path, Path]:
    """A venv and the runtime's source copy (pip's build folders stay out of the checkout)."""
    env_dir = tmp_path_factory.mktemp("check-venv") / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    src = shutil.copytree(
        ROOT / "runtime",
        env_dir.parent / "runtime",
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    return env_dir / "bin" / "python", Path(src)


def _check(py: Path, bundle: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(py), "-m", "runtime", "check", str(bundle), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=env,
    )


def _assert_passed(res: subprocess.CompletedProcess, report: Path, backend: str, precision: str) -> None:
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    for words in (
        f"{backend} {precision}",
        "parity vs stored FP32 PyTorch on 4 clips: PASSED",
        "latency batch 1 x1",
        "p99",
        "clips/s",
        "device: ",
        "profile (",
    ):
        assert words in res.stdout, res.stdout
    r = json.loads(report.read_text())
    assert r["passed"] is True and r["engine"]["backend"] == backend and r["latency"]["runs"]
    assert r["device"]["packages"].get("torch") is None and r["device"]["cpu"]["isa"]


def test_check_runs_with_only_the_runtime_installed(bare_venv, bundles, tmp_path):
    py, src = bare_venv
    _pip(py, f"{src}[openvino]")
    probe = subprocess.run(
        [
            str(py),
            "-c",
            "import importlib.util as u; print([m for m in ('torch', 'onnxruntime', "
            "'psutil', 'onnx') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr
    for precision in ("fp32", "fp16", "int8"):
        out = tmp_path / f"ov-{precision}.json"
        res = _check(py, bundles[f"openvino-{precision}"], tmp_path, "--out", str(out), *FAST)
        _assert_passed(res, out, "openvino", precision)
    res = _check(py, bundles["onnxruntime-fp32"], tmp_path, *FAST)  # no ONNX Runtime yet: one line, exit 2
    assert res.returncode == 2 and "needs onnxruntime" in res.stderr and "Traceback" not in res.stderr, res.stderr

    _pip(py, f"{src}[cpu]")
    for precision in ("fp32", "int8"):
        out = tmp_path / f"ort-{precision}.json"
        res = _check(py, bundles[f"onnxruntime-{precision}"], tmp_path, "--out", str(out), *FAST)
        _assert_passed(res, out, "onnxruntime", precision)

    # make parity / make bench without torch (no project venv in this folder): the same check, and they say so
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    make = ["make", "-s", "-f", str(ROOT / "Makefile"), f"PYTHON={py}", f"ENGINE={bundles['onnxruntime-int8']}"]
    res = subprocess.run([*make, "parity"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0 and "no torch in" in res.stderr and "PASSED" in res.stdout, res.stdout + res.stderr
    assert "latency" not in res.stdout
    res = subprocess.run(
        [*make, "bench", "BATCHES=1,2", f"OUT={tmp_path / 'bench'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0 and "no torch in" in res.stderr, res.stdout + res.stderr
    runs = json.loads((tmp_path / "bench" / "check.json").read_text())["latency"]["runs"]
    assert [r["batch"] for r in runs if r["concurrency"] == 1] == [1, 2]
