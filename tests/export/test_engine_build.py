"""``make engine``: ONNX Runtime bundles of every precision, manifests, incremental and atomic builds."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.bundle import build as engine_build
from export.bundle.build import BuildError, BuildRequest, build_bundle, choose_backend
from runtime import Engine
from runtime.files import sha256_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory, motion_model_path):
    """fp16 and int8 bundles of the motion model (the fp32 one comes from conftest)."""
    base = tmp_path_factory.mktemp("engines")
    out = {}
    for precision in ("fp16", "int8"):
        req = BuildRequest(
            model=str(motion_model_path),
            precision=precision,
            backend="onnxruntime",
            out=str(base / precision),
            cache_dir=str(base / "cache"),
            calib_clips=16,
            parity_clips=8,
        )
        out[precision] = build_bundle(req)
    return out


def _check_manifest(bundle: Path, precision: str) -> dict:
    m = json.loads((bundle / "manifest.json").read_text())
    from runtime.manifest import SCHEMA_VERSION

    assert m["schema_version"] == SCHEMA_VERSION and m["precision"] == precision and m["backend"] == "onnxruntime"
    assert m["backend_version"]
    assert (bundle / m["engine_file"]).is_file()
    assert m["model_config"]["num_classes"] == 8 and m["model_config"]["attention_type"] == "divided_space_time"
    assert m["input"]["name"] == "video" and m["input"]["shape"][1:] == [8, 3, 64, 64]
    assert set(m["input"]["batch"]) == {"min", "opt", "max"}
    assert m["output"]["shape"] == [-1, 8]
    assert m["preprocess"]["num_frames"] == 8 and m["preprocess"]["crop_size"] == 64
    labels = (bundle / m["labels_file"]).read_text().split()
    assert len(labels) == 8 and len(set(labels)) == 8
    assert len(m["source"]["checkpoint_sha256"]) == 64 and len(m["source"]["onnx_sha256"]) == 64
    assert m["session"]["providers"] == ["CPUExecutionProvider"]
    assert m["build"]["date"] and m["build"]["seconds"] > 0
    assert m["parity"]["passed"] is True and m["parity"]["clips"] >= 4 and not m["parity"]["failures"]
    assert "allowed_failure" not in m["parity"]
    # every file but the manifest, with its size and sha256, and nothing else in the folder
    on_disk = sorted(p.name for p in bundle.iterdir() if p.name != "manifest.json")
    assert sorted(m["files"]) == on_disk and m["engine_file"] in m["files"] and m["labels_file"] in m["files"]
    for name, rec in m["files"].items():
        assert rec["size"] == (bundle / name).stat().st_size and rec["sha256"] == sha256_file(bundle / name)
    return m


def test_fp32_bundle_is_complete_and_passed_parity(fp32_bundle):
    m = _check_manifest(fp32_bundle, "fp32")
    assert m["calibration"] is None
    assert m["parity"]["max_abs_logit"] <= m["tolerance"]["max_abs_logit"]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_bundles(built, precision):
    m = _check_manifest(built[precision], precision)
    assert len(m["calibration"]["set_sha256"]) == 64
    assert m["parity"]["min_cosine"] >= m["tolerance"]["min_cosine"]
    assert m["parity"]["top1_agreement"] >= m["tolerance"]["top1_agreement"]
    import onnx

    model = onnx.load(str(built[precision] / m["engine_file"]))
    ops = {n.op_type for n in model.graph.node}
    speed = m["build"].get("speed_vs_fp32")
    assert (speed is not None) == (precision == "int8")  # issue 25: CPU INT8 timed against FP32 where it is built
    if speed is not None:
        from runtime.cpu_isa import cpu_isa

        assert speed["cpu"] == cpu_isa().describe() and speed["rounds"] == 3 and speed["int8_ms"] > 0
        assert (speed["ratio"] is None) == bool(speed["reason"])  # no ratio without agreeing rounds, and why
        if speed["ratio"] is not None:
            assert speed["ratio"] == pytest.approx(speed["int8_ms"] / speed["fp32_ms"], rel=0.01)
    if precision == "int8":
        assert ops & {
            "QuantizeLinear",
            "DynamicQuantizeLinear",
            "QLinearMatMul",
            "MatMulInteger",
            "DynamicQuantizeMatMul",
            "QGemm",
        }, f"no INT8 ops in {sorted(ops)}"
    else:
        inits = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
        assert inits, "an FP16 engine must hold FP16 weights"


def test_bundle_alone_is_enough(fp32_bundle, tmp_path):
    """The bundle directory is self-contained: moved elsewhere, it still runs."""
    import shutil

    moved = shutil.copytree(fp32_bundle, tmp_path / "elsewhere")
    x = np.random.default_rng(0).standard_normal((2, 8, 3, 64, 64)).astype(np.float32)
    assert np.array_equal(Engine(moved).infer(x), Engine(fp32_bundle).infer(x))


def test_auto_backend_says_why():
    backend, why = choose_backend("auto")
    assert backend in ("onnxruntime", "openvino") and "TensorRT not usable here" in why  # a CPU backend here
    with pytest.raises(BuildError, match=r"BACKEND=tensorrt, but .*BACKEND=onnxruntime"):
        choose_backend("tensorrt")
    with pytest.raises(BuildError, match="expected one of"):
        choose_backend("no_such_backend")


def test_rebuild_reuses_onnx_and_failed_build_leaves_nothing(motion_model_path, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO)  # progress lines are log records (runtime/log.py prints them for the CLIs)
    req = BuildRequest(
        model=str(motion_model_path),
        precision="fp32",
        backend="onnxruntime",
        out=str(tmp_path / "b"),
        cache_dir=str(tmp_path / "cache"),
        parity_clips=2,
    )
    build_bundle(req)
    assert "exporting ONNX" in caplog.text and "[engine] built" in caplog.text
    caplog.clear()
    build_bundle(req)
    assert "[export] reusing" in caplog.text
    before = (tmp_path / "b" / "manifest.json").read_text()

    def boom(*a, **k):
        raise RuntimeError("injected failure during parity")

    monkeypatch.setattr(engine_build, "run_parity", boom)
    with pytest.raises(RuntimeError, match="injected"):
        build_bundle(BuildRequest(**{**req.__dict__, "out": str(tmp_path / "new")}))
    assert not (tmp_path / "new").exists()
    with pytest.raises(RuntimeError, match="injected"):
        build_bundle(req)  # a failed rebuild keeps the previous bundle as it was
    assert (tmp_path / "b" / "manifest.json").read_text() == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


def test_parity_failure_fails_loudly_unless_allowed(motion_model_path, tmp_path, monkeypatch):
    from calibration.precision import metrics

    monkeypatch.setitem(metrics.TOLERANCES, "fp32", {"max_abs_logit": 0.0})
    req = BuildRequest(
        model=str(motion_model_path),
        precision="fp32",
        backend="onnxruntime",
        out=str(tmp_path / "b"),
        cache_dir=str(tmp_path / "cache"),
        parity_clips=2,
    )
    with pytest.raises(BuildError, match="parity check failed for fp32: max_abs_logit"):
        build_bundle(req)
    assert not (tmp_path / "b").exists()
    req.allow_parity_failure = True
    m = json.loads((build_bundle(req) / "manifest.json").read_text())
    assert m["parity"]["passed"] is False and m["parity"]["failures"] and m["parity"]["allowed_failure"] is True


def test_make_engine_cli(motion_model_path, tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.bundle.build",
            "--model",
            str(motion_model_path),
            "--precision",
            "fp32",
            "--backend",
            "auto",
            "--out",
            str(tmp_path / "cli"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--parity-clips",
            "2",
            "--batch",
            "1:2:3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert "(auto: TensorRT not usable here" in res.stderr
    assert "built" in res.stderr and " s:" in res.stderr
    m = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert m["input"]["batch"] == {"min": 1, "opt": 2, "max": 3}
    bad = subprocess.run(
        [sys.executable, "-m", "export.bundle.build", "--model", "no_such_model", "--out", str(tmp_path / "x")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "neither a preset" in bad.stderr and not (tmp_path / "x").exists()


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["folder", "file", "symlink", "bundle_with_extra_file"])
def test_out_that_is_not_our_bundle_is_refused_and_left_alone(kind, fp32_bundle, tmp_path):
    """OUT=<a folder of the user's>, a file or a symlink: refused before any work, nothing deleted or renamed."""
    import shutil

    out = tmp_path / "out"
    if kind == "folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        (out / "sub").mkdir()
        (out / "sub" / "photo.jpg").write_bytes(b"\xff\xd8")
    elif kind == "file":
        out.write_text("my file")
    elif kind == "symlink":
        target = shutil.copytree(fp32_bundle, tmp_path / "real")
        out.symlink_to(target)
    else:  # one of our bundles, but someone put a file of their own in it
        shutil.copytree(fp32_bundle, out)
        (out / "notes.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    snapshot = _tree(out.resolve()) if out.is_dir() else out.read_bytes()
    req = BuildRequest(
        model="no_such_model_the_out_check_comes_first",
        precision="fp32",
        backend="onnxruntime",
        out=str(out),
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(BuildError, match=r"OUT=.*(not an engine bundle|is a file|is a symlink)"):
        build_bundle(req)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (_tree(out.resolve()) if out.is_dir() else out.read_bytes()) == snapshot
    assert out.is_symlink() == (kind == "symlink")


def test_rebuild_replaces_our_bundle_and_an_empty_folder(motion_model_path, tmp_path):
    """OUT may be an empty folder or one of our bundles; the published bundle's folder is readable as the umask
    allows."""
    import os
    import stat

    empty = tmp_path / "empty"
    empty.mkdir()
    req = BuildRequest(
        model=str(motion_model_path),
        precision="fp32",
        backend="onnxruntime",
        out=str(empty),
        cache_dir=str(tmp_path / "cache"),
        parity_clips=2,
    )
    old_umask = os.umask(0o022)
    try:
        build_bundle(req)
        first = json.loads((empty / "manifest.json").read_text())
        build_bundle(req)  # replaces our own bundle
    finally:
        os.umask(old_umask)
    second = json.loads((empty / "manifest.json").read_text())
    assert first["build"]["date"] <= second["build"]["date"] and second["files"] == first["files"]
    assert stat.S_IMODE(empty.stat().st_mode) == 0o755  # not mkdtemp's 0700: another user's service can read it
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in empty.iterdir())
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    x = np.random.default_rng(0).standard_normal((1, 8, 3, 64, 64)).astype(np.float32)
    assert Engine(empty).infer(x).shape == (1, 8)


def test_stale_temporaries_of_dead_builds_are_removed(tmp_path):
    """Staging/old folders whose process is gone are removed; a live process's are kept; an old bundle left
    by a build killed between the fallback's two renames is put back."""
    import subprocess as sp

    from export.bundle.publish import clean_stale

    dead = sp.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    out = tmp_path / "b"
    (tmp_path / f".b.build-{dead_pid}-abcd1234").mkdir()
    (tmp_path / f".b.build-{dead_pid}-abcd1234" / "model.onnx").write_bytes(b"x")
    live = tmp_path / f".b.build-{os.getpid()}-00ff00ff"
    live.mkdir()
    old = tmp_path / f".b.old-{dead_pid}-12345678"
    old.mkdir()
    (old / "model.onnx").write_bytes(b"engine")
    (old / "manifest.json").write_text(
        json.dumps({"schema_version": 2, "backend": "onnxruntime", "engine_file": "model.onnx"})
    )
    mine = tmp_path / ".b.notes"  # not ours by name: never touched
    mine.write_text("keep")
    done = clean_stale(out)
    assert any("restored" in d for d in done)
    assert (out / "model.onnx").read_bytes() == b"engine"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["b", live.name, mine.name])


# --------------------------------------------------------------- one table, one resolved target, one manifest type


def test_options_table_drives_the_cli_and_the_makefile(capsys):
    """BuildRequest's fields are the table: the CLI parses to its defaults with its choices, and the Makefile's
    defaults and listed choices are the table's."""
    from export.bundle.options import BACKEND_CHOICES, OPTIONS, add_arguments, main, request_from_args, show
    from export.onnx.forms import ATTENTION_CHOICES
    from runtime.cli_args import ArgumentParser
    from runtime.options import BACKENDS, PRECISIONS

    ap = ArgumentParser(prog="t")
    add_arguments(ap)
    assert request_from_args(ap.parse_args([])) == BuildRequest()
    assert request_from_args(ap.parse_args(["--builder-flags", "--batch", "4"])).strongly_typed is False
    by = {o.name: o for o in OPTIONS}
    assert by["precision"].choices == PRECISIONS and by["backend"].choices == BACKEND_CHOICES == ("auto", *BACKENDS)
    assert by["attention"].choices == ATTENTION_CHOICES
    makefile = (ROOT / "Makefile").read_text()
    rows = {m[1]: (m[2].strip(), m[3]) for m in re.finditer(r"^([A-Z_]+) \?=([^#\n]*)#([^\n]*)$", makefile, re.M)}
    for o in OPTIONS:
        if not o.make:
            continue
        default, comment = rows[o.make]
        assert default in ("", show(o.default)), f"Makefile {o.make} ?= {default!r}; the table has {o.default!r}"
        if o.choices:
            assert {c.strip() for c in comment.split("|")} == set(o.choices), f"Makefile {o.make}: {comment!r}"
    assert main(["--make-help"]) == 0
    assert "PRECISION=fp32" in capsys.readouterr().out


def test_enumerations_are_defined_once():
    """PRECISIONS and BACKENDS are literal tuples in runtime/options.py only; everyone else imports them."""
    import ast

    owners = []
    for layer in ("runtime", "calibration", "models", "export"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    names = {t.id for t in targets if isinstance(t, ast.Name)}
                    if names & {"PRECISIONS", "BACKENDS"} and isinstance(node.value, (ast.Tuple, ast.List)):
                        owners.append(str(path.relative_to(ROOT)))
    assert owners == [], owners  # runtime/options.py derives them from its Enums


class _FakeTensorRT:
    __version__ = "10.3.0"


@pytest.mark.parametrize(
    "precision, backend, typed, want",
    [
        ("fp32", "onnxruntime", True, ("onnx", "fp32", None, None)),
        ("int8", "onnxruntime", True, ("onnx", "int8", "onnxruntime", None)),
        ("fp16", "openvino", True, ("onnx", "fp32", None, None)),  # OpenVINO's FP16 hint on the FP32 ONNX
        ("int8", "openvino", True, ("decomposed", "int8", "tensorrt", "qdq-fp16")),  # TensorRT's Q/DQ file
        ("fp16", "tensorrt", True, ("decomposed", "fp16", "tensorrt", None)),  # 10.3: no Attention operator
        ("fp16", "tensorrt", False, ("decomposed", "fp32", None, None)),  # builder flags: FP32 ONNX + BuilderFlag.FP16
        ("int8", "tensorrt", True, ("decomposed", "int8", "tensorrt", "qdq-fp16")),
        ("int8", "tensorrt", False, ("decomposed", "int8", "tensorrt", "qdq-fp32")),
    ],
)
def test_build_target_is_resolved_once(monkeypatch, tmp_path, precision, backend, typed, want):
    from calibration.precision.metrics import TOLERANCES
    from export.bundle import target as target_mod
    from runtime.backends import tensorrt_detect

    monkeypatch.setattr(target_mod, "choose_backend", lambda requested, *_: (requested, "asked for"))
    monkeypatch.setattr(tensorrt_detect, "import_tensorrt", lambda: _FakeTensorRT)
    req = BuildRequest(precision=precision, backend=backend, strongly_typed=typed, out=str(tmp_path / "b"))
    t = target_mod.resolve_target(req)
    assert (t.attention, t.onnx_precision, t.precision_target, t.int8_form) == want
    assert t.backend == backend and t.precision == precision and t.out == tmp_path / "b"
    assert t.converts == (want[1] != "fp32") and t.tolerance == TOLERANCES[precision]
    assert (t.trt_plan is not None) == (backend == "tensorrt") and not (tmp_path / "b").exists()
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.backend = "onnxruntime"  # type: ignore[misc]


@pytest.mark.parametrize("form", ["portable", "vnni"])
def test_openvino_int8_target_takes_the_cpu_form_before_calibrating(monkeypatch, tmp_path, form):
    """The CPU INT8 form is decided with the target, so the portable form's 7-bit weights are quantized from float
    in the precision step (not narrowed from the 8-bit file afterwards); a bad override is refused before work."""
    from calibration.precision.cpu_int8 import FORM_ENV
    from export.bundle import target as target_mod

    monkeypatch.setattr(target_mod, "choose_backend", lambda requested, *_: (requested, "asked for"))
    monkeypatch.setenv(FORM_ENV, form)
    req = BuildRequest(precision="int8", backend="openvino", out=str(tmp_path / "b"))
    t = target_mod.resolve_target(req)
    assert t.cpu_int8_form == form and FORM_ENV in (t.cpu_int8_why or "")
    seven = {"int8_options": {"weight_bits": 7}} if form == "portable" else {}
    assert t.precision_kwargs() == {"form": "qdq-fp16", **seven}
    fp16 = target_mod.resolve_target(BuildRequest(precision="fp16", backend="openvino", out=str(tmp_path / "b")))
    assert fp16.cpu_int8_form is None and fp16.precision_kwargs() == {}
    monkeypatch.setenv(FORM_ENV, "avx")
    with pytest.raises(BuildError, match=f"{FORM_ENV}='avx': expected one of"):
        target_mod.resolve_target(req)
    assert not list(tmp_path.iterdir())


def test_build_target_refuses_before_any_work(tmp_path):
    from export.bundle.target import resolve_target

    with pytest.raises(BuildError, match=r"PRECISION='int4': expected one of \('fp32', 'fp16', 'int8'\)"):
        resolve_target(BuildRequest(precision="int4", out=str(tmp_path / "b")))
    with pytest.raises(BuildError, match="attention"):
        resolve_target(BuildRequest(attention="flash", backend="onnxruntime", out=str(tmp_path / "b")))
    assert not list(tmp_path.iterdir())


def test_bundle_functions_are_short():
    """build_bundle only orchestrates: no function of the bundle build is over 80 lines."""
    import ast

    long = []
    for name in ("build", "target", "options", "precision_step", "fp32_cache"):
        path = ROOT / "export" / "bundle" / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long


def test_manifest_is_written_by_the_type_the_runtime_reads(fp32_bundle):
    """One schema: the builder writes runtime.manifest.Manifest.to_dict(); the runtime reads it back as the same
    type (from_dict is the validation), every field in the written order."""
    from runtime.errors import BundleError
    from runtime.manifest import Manifest, read_manifest

    raw = json.loads((fp32_bundle / "manifest.json").read_text())
    m = Manifest.read(fp32_bundle)
    assert list(raw) == [f.name for f in dataclasses.fields(Manifest)]
    d = m.to_dict()
    assert list(d) == list(raw)
    assert {k: v for k, v in d.items() if k != "session"} == {k: v for k, v in raw.items() if k != "session"}
    assert d["session"] == read_manifest(fp32_bundle)["session"]  # the backend's schema fills in its defaults
    assert Manifest.from_dict(d) == m and m.input.batch.max == raw["input"]["batch"]["max"]
    with pytest.raises(BundleError, match=r"unknown keys \['labels_flie'\]"):
        Manifest.from_dict({**raw, "labels_flie": "labels.txt"})
    with pytest.raises(BundleError, match=r"missing keys \['files'\]"):
        Manifest.from_dict({k: v for k, v in raw.items() if k != "files"})
