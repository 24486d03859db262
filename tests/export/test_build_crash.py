"""Crash consistency of ``make engine``: builds SIGKILLed at each named step leave OUT as the old bundle (bit for
bit) or the new one that ``runtime.Engine`` loads and verifies, never a loadable unverified bundle; the next
build removes the stale temporaries.

The builder kills itself (``os.kill(getpid(), SIGKILL)``) at the step ``TIMESFORMER_TEST_KILL_AT`` names:
``after_export`` (FP32 ONNX ready), ``after_engine`` (engine and labels staged, no manifest),
``after_manifest`` (manifest written after parity, not published), ``mid_publish`` (inside the atomic step).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from export.bundle.publish import KILL_ENV, KILL_STEPS, clean_stale
from runtime import Engine
from runtime.errors import BundleError

ROOT = Path(__file__).resolve().parents[2]


def _tree(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def _build(out: Path, cache: Path, model: Path, kill_at: str | None = None, **env: str) -> subprocess.CompletedProcess:
    e = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    e.pop(KILL_ENV, None)
    if kill_at:
        e[KILL_ENV] = kill_at
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "export.bundle.build",
            "--model",
            str(model),
            "--precision",
            "fp32",
            "--backend",
            "onnxruntime",
            "--out",
            str(out),
            "--cache-dir",
            str(cache),
            "--parity-clips",
            "2",
        ],
        cwd=ROOT,
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _temporaries(out: Path) -> list[Path]:
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _assert_verified(bundle: Path) -> None:
    """Engine loads it with every file's hash checked, and its build passed parity."""
    with Engine(bundle, verify=True) as engine:
        assert engine.manifest["parity"]["passed"] is True


@pytest.fixture(scope="module")
def old_bundle(tmp_path_factory, motion_model_path):
    base = tmp_path_factory.mktemp("crash")
    out, cache = base / "engines" / "b", base / "cache"
    res = _build(out, cache, motion_model_path)
    assert res.returncode == 0, res.stderr
    return out, cache


def test_killed_builds_leave_the_old_or_the_new_verified_bundle(old_bundle, motion_model_path):
    out, cache = old_bundle
    old = _tree(out)
    old_manifest = json.loads(old["manifest.json"])
    for step in KILL_STEPS:
        res = _build(out, cache, motion_model_path, kill_at=step)
        assert res.returncode == -signal.SIGKILL, (step, res.returncode, res.stderr[-2000:])
        now = _tree(out)
        if step == "mid_publish":  # killed inside the exchange: the new bundle is in place, the old one beside it
            assert any(_tree(t) == old for t in _temporaries(out)), "the exchanged-out old bundle"
            assert json.loads(now["manifest.json"])["build"]["date"] >= old_manifest["build"]["date"]
            _assert_verified(out)
            old = now
        else:
            assert now == old, f"{step}: OUT changed"
            _assert_verified(out)
        # What the killed build left beside OUT is never a loadable bundle that did not pass parity.
        for tmp in _temporaries(out):
            try:
                _assert_verified(tmp)
            except BundleError:
                pass
        if step in ("after_engine", "after_manifest", "mid_publish"):
            assert _temporaries(out), f"{step}: expected the killed build's staging folder"
    # The next build removes the stale temporaries of the killed ones and publishes normally.
    res = _build(out, cache, motion_model_path)
    assert res.returncode == 0, res.stderr
    assert "left by a killed build" in res.stderr
    assert _temporaries(out) == []
    _assert_verified(out)


def test_kill_between_the_fallback_renames_is_repaired(old_bundle, motion_model_path):
    """Without rename-exchange (other systems), a kill between the two renames leaves the old bundle beside
    OUT; the next build (clean_stale) puts it back first."""
    out, cache = old_bundle
    old = _tree(out)
    res = _build(out, cache, motion_model_path, kill_at="mid_publish", TIMESFORMER_PUBLISH_NO_EXCHANGE="1")
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert not out.exists()
    assert [p.name.split("-")[0] for p in _temporaries(out) if ".old-" in p.name] == [f".{out.name}.old"]
    done = clean_stale(out)
    assert any("restored" in d for d in done), done
    assert _tree(out) == old
    assert _temporaries(out) == []
    _assert_verified(out)
