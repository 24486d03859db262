"""The one rule for "a folder we may replace" (issue 28, findings 3 and 24): ``make engine`` replaces OUT only when
it is absent, empty or one of our bundles whose manifest passes the runtime's full validation and whose ``files``
table matches every file; never the current folder, never an input (checkpoint, calibration set, cache) or a
folder holding or inside one; refused before any work, nothing of the user's touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from export.bundle.build import BuildError, BuildRequest, build_bundle
from export.bundle.publish import PublishError, check_out

ROOT = Path(__file__).resolve().parents[2]


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _refused_before_any_work(out: Path, tmp_path: Path, match: str, **kw) -> None:
    req = BuildRequest(
        model="no_such_model_the_out_check_comes_first",
        precision="fp32",
        backend="onnxruntime",
        out=str(out),
        cache_dir=str(tmp_path / "cache"),
        **kw,
    )
    with pytest.raises(BuildError, match=match):
        build_bundle(req)


def test_a_manifest_without_a_files_table_is_not_our_bundle(tmp_path):
    """Finding 3: schema_version, backend and engine_file but no files table: refused, the user's file kept."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(
        json.dumps({"schema_version": 2, "backend": "onnxruntime", "engine_file": "model.onnx"})
    )
    (out / "model.onnx").write_bytes(b"not an engine")
    (out / "thesis.pdf").write_bytes(b"%PDF- a user's file")
    before = _tree(out)
    with pytest.raises(PublishError, match=r"not an engine bundle \(its manifest.json does not validate"):
        check_out(out)
    _refused_before_any_work(out, tmp_path, r"OUT=.*not an engine bundle")
    assert _tree(out) == before


def test_our_bundle_only_while_every_file_matches_its_manifest(fp32_bundle, tmp_path):
    out = shutil.copytree(fp32_bundle, tmp_path / "b")
    assert check_out(out) == out  # ours: may be replaced
    manifest = json.loads((out / "manifest.json").read_text())
    labels = out / manifest["labels_file"]
    text = labels.read_bytes()
    labels.write_bytes(text[:-2] + b"X\n")  # same size, other bytes: a user edited it since the build
    with pytest.raises(PublishError, match=r"labels.txt.* differs from its manifest.json \(sha256\)"):
        check_out(out)
    labels.write_bytes(text)
    (out / "sub").mkdir()
    (out / "sub" / "notes.txt").write_text("mine")
    with pytest.raises(PublishError, match=r"'sub/notes.txt', which its manifest.json does not list"):
        check_out(out)
    shutil.rmtree(out / "sub")
    (out / manifest["engine_file"]).unlink()
    with pytest.raises(PublishError, match=r"is missing"):
        check_out(out)


def test_out_is_never_an_input_or_around_one(motion_model_path, tmp_path):
    """The cache, the calibration set and the checkpoint: OUT may not be one, hold one or lie inside one."""
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "clip.npy").write_bytes(b"")
    for out, kw, what in [
        (tmp_path / "work", {"cache_dir": str(tmp_path / "work" / "cache")}, "holds the input"),
        (tmp_path / "cache" / "b", {}, "lies inside the input"),
        (calib, {"calib": str(calib)}, "is the input"),
        (calib / "b", {"calib": str(calib)}, "lies inside the input"),
    ]:
        cache = kw.pop("cache_dir", str(tmp_path / "cache"))
        req = BuildRequest(
            model="no_such_model_the_out_check_comes_first",
            precision="fp32",
            backend="onnxruntime",
            out=str(out),
            cache_dir=cache,
            **kw,
        )
        with pytest.raises(BuildError, match=f"OUT={out}: {what}"):
            build_bundle(req)
    assert not (tmp_path / "work").exists() and not (tmp_path / "cache").exists()
    assert sorted(p.name for p in calib.iterdir()) == ["clip.npy"]
    from runtime.files import replace_problem

    assert "is the input" in replace_problem(
        motion_model_path, lambda p: None, "an engine bundle", inputs=[motion_model_path]
    )


def test_out_dot_in_an_empty_folder_is_refused_before_the_build(motion_model_path, tmp_path):
    """Finding 24: ``make engine OUT=.`` in an empty folder: refused at once, the cache never lands there."""
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.bundle.build",
            "--model",
            str(motion_model_path),
            "--precision",
            "fp32",
            "--backend",
            "onnxruntime",
            "--out",
            ".",
        ],
        cwd=empty,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "OUT=.: is (or holds) the current folder" in r.stderr, r.stderr[-2000:]
    assert list(empty.iterdir()) == []  # no cache, no staging folder: nothing was built


def test_home_and_root_are_never_out(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(PublishError, match="your home folder"):
        check_out(home)
    with pytest.raises(PublishError, match=r"OUT=/: is \(or holds\) (the current folder|the file system root)"):
        check_out("/")
