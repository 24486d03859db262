"""``pip install './runtime[cpu]'`` alone is enough to run a bundle: a fresh virtual environment without torch (or any
other part of this project) loads the demo's bundle and labels the demo's video.

Needs the package index or pip's cache for numpy, onnxruntime, PyAV and Pillow (what ``make setup`` fetched).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
import numpy as np
import av
from runtime import Engine

try:
    import torch  # noqa: F401
    torch_importable = True
except ImportError:
    torch_importable = False
mods = sorted(m for m in sys.modules if m.split(".")[0] in ("models", "export", "calibration", "torch", "onnx"))

bundle, video = sys.argv[1], sys.argv[2]
with av.open(video) as c:
    frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
engine = Engine(bundle)
pred = engine.predict(frames[:8])
stream = engine.stream(every=8)
labels = [p.label for f in frames if (p := stream.push(f)) is not None]
print(json.dumps({"torch_importable": torch_importable, "foreign_modules": mods, "first": pred.label,
                  "stream_labels": labels, "runtime_file": __import__("runtime").__file__}))
"""


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    env_dir = tmp_path_factory.mktemp("runtime-venv") / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # a copy, so pip's in-tree build folders land in the temp dir and not in the checkout
    src = shutil.copytree(
        ROOT / "runtime",
        env_dir.parent / "runtime",
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    res = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{src}[cpu,video]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode != 0 and "Could not find a version" in res.stderr + res.stdout:
        pytest.skip(f"no package index or cache for the runtime's dependencies: {res.stderr.strip()[-300:]}")
    assert res.returncode == 0, res.stderr[-3000:]
    return py


def test_runtime_installs_alone_and_labels_the_demo_video(runtime_venv: Path, fp32_bundle: Path, tmp_path: Path):
    from export.demo import write_demo_video

    video = tmp_path / "demo.mp4"
    segments = write_demo_video(video, seed=7)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    res = subprocess.run(
        [str(runtime_venv), "-c", SCRIPT, str(fp32_bundle), str(video)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["torch_importable"] is False
    assert out["foreign_modules"] == []
    assert str(runtime_venv.parents[1]) in out["runtime_file"]  # the installed copy, not the checkout
    assert out["first"] == segments[0][2]
    # the stream predicts every 8 frames once the window is full; most windows lie inside one segment
    assert len(out["stream_labels"]) >= len(segments) - 1
    true = {lab for _, _, lab in segments}
    assert set(out["stream_labels"]) <= true


def test_runtime_cli_in_the_bare_venv(runtime_venv: Path, fp32_bundle: Path, tmp_path: Path):
    from export.demo import write_demo_video

    video = tmp_path / "demo.mp4"
    write_demo_video(video, seed=3)
    res = subprocess.run(
        [str(runtime_venv), "-m", "runtime", str(fp32_bundle), str(video)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip(), "the CLI printed no prediction"


def test_runtime_import_leaves_process_state_alone():
    """Importing any runtime module calls no process-wide setter (umask, cwd, environment, signals, threads)."""
    code = """
import os, signal, sys, threading
import numpy  # numpy itself sets and unsets an environment variable while it loads: not ours to test
calls = []
def spy(name, real):
    def f(*a, **k):
        calls.append(name)
        return real(*a, **k)
    return f
for name in ("umask", "chdir", "putenv", "unsetenv", "setpgrp", "nice"):
    setattr(os, name, spy(name, getattr(os, name)))
signal.signal = spy("signal.signal", signal.signal)
threads, env = threading.active_count(), dict(os.environ)
import runtime, runtime.files, runtime.engine, runtime.stream, runtime.manifest, runtime.preprocess, runtime.__main__
import runtime.backends.onnxruntime_backend, runtime.video_source
assert calls == [], calls
assert threading.active_count() == threads and dict(os.environ) == env
print(sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "onnx", "models", "export", "calibration")))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


# ----------------------------------------------------------------- one ONNX Runtime per install (issue 27)
#: distributions that all install the ``onnxruntime`` module: two of them in one environment overwrite each other
ORT_DISTRIBUTIONS = {
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-qnn",
    "onnxruntime-training",
}
LOCAL_PROJECTS = {
    "timesformer-deploy": ROOT / "pyproject.toml",
    "timesformer-runtime": ROOT / "runtime" / "pyproject.toml",
}


def resolve_names(project: str, extras: set[str]) -> set[str]:
    """Every distribution ``pip install 'project[extras]'`` asks for, read from metadata: this repository's two
    pyproject files, then the installed packages' own requirements (what this environment knows of them)."""
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def requirements(name: str, wanted: set[str]) -> list[Requirement]:
        if name in LOCAL_PROJECTS:
            meta = tomllib.loads(LOCAL_PROJECTS[name].read_text())["project"]
            unknown = wanted - set(meta.get("optional-dependencies", {}))
            assert not unknown, f"{LOCAL_PROJECTS[name]}: no extra {sorted(unknown)}"
            texts = meta["dependencies"] + [r for e in sorted(wanted) for r in meta["optional-dependencies"][e]]
        else:
            try:
                texts = metadata.requires(name) or []
            except metadata.PackageNotFoundError:
                return []  # not installed here: only the name is known
        reqs = [Requirement(t) for t in texts]
        return [r for r in reqs if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in wanted | {""})]

    seen: dict[str, set[str]] = {}
    todo = [(canonicalize_name(project), set(extras))]
    while todo:
        name, wanted = todo.pop()
        if name in seen and wanted <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | wanted
        todo += [(canonicalize_name(r.name), set(r.extras)) for r in requirements(name, wanted)]
    return set(seen)


@pytest.mark.parametrize(
    "project, extras, expected",
    [
        ("timesformer-deploy", {"gpu"}, {"onnxruntime-gpu"}),
        ("timesformer-deploy", {"gpu", "dev"}, {"onnxruntime-gpu"}),
        ("timesformer-deploy", {"cpu", "dev"}, {"onnxruntime"}),  # make setup
        ("timesformer-deploy", {"cpu", "dev", "tensorrt-cu12"}, {"onnxruntime"}),  # make gpu-check on x86
        ("timesformer-runtime", {"gpu", "video", "serve"}, {"onnxruntime-gpu"}),
        ("timesformer-runtime", {"cpu", "video"}, {"onnxruntime"}),
        ("timesformer-runtime", {"openvino"}, set()),  # an OpenVINO bundle needs no ONNX Runtime
    ],
)
def test_each_install_has_at_most_one_onnx_runtime(project: str, extras: set[str], expected: set[str]) -> None:
    assert resolve_names(project, extras) & ORT_DISTRIBUTIONS == expected


def test_a_missing_onnx_runtime_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``pip install ./runtime`` without ``[cpu]`` or ``[gpu]`` has no ONNX Runtime: the error says which to add."""
    from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(RuntimeError, match=r"model\.onnx: this ONNX Runtime bundle needs onnxruntime.*runtime\[cpu\]"):
        OnnxRuntimeBackend(tmp_path / "model.onnx", {})
