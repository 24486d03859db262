"""Bundles that prove themselves on the device they run on (issue 24): the reference set the build stores, ``python -m
runtime check`` (parity against it, blocks, latency, profile, fingerprint), and ``Engine(verify_on_device=...)``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime import BundleError, Engine
from runtime.__main__ import main as runtime_main
from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from runtime.manifest import describe_files, read_manifest
from runtime.reference import REFERENCE_JSON, REFERENCE_NPZ, load_reference, npz_bytes

FAST = ["--duration", "0", "--iterations", "2", "--warmup", "1", "--profile-iterations", "1"]


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def _rehash(bundle: Path) -> None:
    """Re-record every file's sha256 and size, as a build that wrote these files would have."""
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"] = describe_files(bundle, m["files"])
    (bundle / "manifest.json").write_text(json.dumps(m))


def _shift_logits(monkeypatch, delta: float) -> None:
    """A backend that computes something else: class 0's logit moved by ``delta``."""
    real = OnnxRuntimeBackend.infer

    def infer(self, x):
        out = real(self, x).copy()
        out[:, 0] += delta
        return out

    monkeypatch.setattr(OnnxRuntimeBackend, "infer", infer)


def test_the_bundle_stores_its_reference_set(fp32_bundle):
    """The build's parity clips (FP16, exact), FP32 PyTorch logits, the engine's, the tolerance and block samples,
    every file hashed in the manifest; the stored clips reproduce the stored logits through the engine."""
    m = read_manifest(fp32_bundle)
    for name in (REFERENCE_JSON, REFERENCE_NPZ):
        assert m["files"][name]["size"] == (fp32_bundle / name).stat().st_size
    assert m["build"]["reference"]["bytes"] == sum(m["files"][n]["size"] for n in (REFERENCE_JSON, REFERENCE_NPZ))
    ref = load_reference(fp32_bundle, m)
    assert ref.clips.dtype == np.float16 and ref.clips.shape == (4, 8, 3, 64, 64)  # parity_clips=4 in the fixture
    assert ref.logits.shape == (4, 8) and ref.tolerance == m["tolerance"] and ref.precision == "fp32"
    assert ref.block_names == [f"block_{i}_output" for i in range(4)] and ref.block_samples.shape[:2] == (4, 4)
    assert ref.block_threshold == pytest.approx(1e-3)
    with Engine(fp32_bundle, verify_on_device="never") as engine:
        out = engine.infer(ref.inputs(np.float32))
    assert np.abs(out - ref.logits).max() <= m["parity"]["max_abs_logit"] + 1e-6
    np.testing.assert_array_equal(out, ref.engine_logits)  # the same engine, the same machine, bit for bit


def test_check_reports_parity_blocks_latency_profile_and_device(fp32_bundle, tmp_path, capsys):
    out = tmp_path / "check.json"
    rc = runtime_main(
        [
            "check",
            str(fp32_bundle),
            "--out",
            str(out),
            "--blocks",
            "always",
            "--batch",
            "1,2",
            "--concurrency",
            "1,2",
            *FAST,
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    r = json.loads(out.read_text())
    p = r["parity"]
    assert r["passed"] is True and p["passed"] and not p["failures"] and p["clips"] == 4
    assert len(p["metrics"]["per_clip"]) == 4 and all(row["top1_agrees"] for row in p["metrics"]["per_clip"])
    assert p["metrics"]["max_abs_logit"] < 1e-3 and p["vs_build_engine"]["max_abs_logit"] == 0.0
    assert r["blocks"]["available"] and r["blocks"]["first_diverging_block"] is None
    assert [b["name"] for b in r["blocks"]["blocks"]] == [f"block_{i}_output" for i in range(4)]
    runs = [(x["batch"], x["concurrency"]) for x in r["latency"]["runs"]]
    assert runs == [(1, 1), (2, 1), (1, 2)]
    for x in r["latency"]["runs"]:
        assert x["iterations"] >= 2 and x["min_ms"] <= x["p50_ms"] <= x["p90_ms"] <= x["p99_ms"] <= x["max_ms"]
        assert x["throughput_clips_per_s"] > 0
    prof = r["profile"]
    assert prof["available"] and prof["top_nodes"] and {t["type"] for t in prof["by_type"]} & {"MatMul", "Attention"}
    assert r["device"]["cpu"]["isa"] and len(r["device"]["key"]) == 64
    for words in (
        "parity vs stored FP32 PyTorch on 4 clips: PASSED",
        "latency batch 1 x1 request: p50",
        "device: ",
        "blocks: first diverging block none",
        "profile (ONNX Runtime profiler",
    ):
        assert words in text, text


def test_a_backend_computing_something_else_fails_the_check_with_numbers(fp32_bundle, monkeypatch, capsys):
    _shift_logits(monkeypatch, 0.01)
    rc = runtime_main(["check", str(fp32_bundle), "--no-latency", "--no-profile"])
    text = capsys.readouterr().out
    assert rc == 1, text
    import re

    assert re.search(r"FAILED: max_abs_logit = 0\.0100\d*, needs <= 0\.001", text), text
    assert re.search(r"clip 0: max \|dlogit\| 0\.01 > 0\.001", text), text
    assert "blocks: first diverging block none" in text  # the blocks agree: the divergence is after them


def test_the_first_diverging_block_is_named(fp32_bundle, tmp_path, capsys):
    """An engine whose block 1 computes something else (its MLP bias moved): the check names block 1."""
    import onnx
    from onnx import numpy_helper

    bundle = _copy(fp32_bundle, tmp_path)
    model = onnx.load(str(bundle / "model.onnx"))
    init = next(i for i in model.graph.initializer if i.name == "net.blocks.1.mlp.fc2.bias")
    bias = numpy_helper.to_array(init)
    noise = np.random.default_rng(0).standard_normal(bias.shape).astype(np.float32)  # not uniform: LayerNorm
    init.CopyFrom(numpy_helper.from_array(bias + np.float32(0.2) * noise, init.name))  # would remove a shift
    onnx.save(model, str(bundle / "model.onnx"))
    _rehash(bundle)
    rc = runtime_main(["check", str(bundle), "--no-latency", "--no-profile", "--out", str(tmp_path / "r.json")])
    text = capsys.readouterr().out
    assert rc == 1 and "blocks: first diverging block 1 " in text, text
    rows = json.loads((tmp_path / "r.json").read_text())["blocks"]["blocks"]
    assert rows[0]["rel_l2"] < 1e-5 and rows[1]["rel_l2"] > 1e-3


def test_a_tampered_reference_is_refused_by_its_hash(fp32_bundle, tmp_path, capsys):
    """Logits edited to match a wrong engine: refused by the manifest's record of the file (its size, or its sha256
    where the compressed size happens to match), by the check (exit 2) and at load; a same-size edit by its sha256."""
    bundle = _copy(fp32_bundle, tmp_path)
    with np.load(bundle / REFERENCE_NPZ) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["logits"][:, 0] += 1.0
    (bundle / REFERENCE_NPZ).write_bytes(npz_bytes(arrays))
    rc = runtime_main(["check", str(bundle), "--no-latency", "--no-profile"])
    err = capsys.readouterr().err
    refused = ("reference.npz: sha256" in err and "differs from the manifest" in err) or (
        "files['reference.npz'].size" in err and "changed or truncated" in err
    )
    assert rc == 2 and refused, err
    data = bytearray((fp32_bundle / REFERENCE_NPZ).read_bytes())
    data[len(data) // 2] ^= 0xFF  # the same size, other bytes
    (bundle / REFERENCE_NPZ).write_bytes(bytes(data))
    assert runtime_main(["check", str(bundle), "--no-latency", "--no-profile"]) == 2
    err = capsys.readouterr().err
    assert "reference.npz: sha256" in err and "differs from the manifest" in err, err
    with pytest.raises(BundleError, match=r"reference\.npz: sha256 .* differs"):
        Engine(bundle)
    with pytest.raises(BundleError, match=r"reference\.npz: sha256 .* differs"):  # the engine's own hash check
        Engine(bundle, verify=False, verify_on_device="always")  # skipped: the reference is still checked


def test_check_user_errors_exit_2(fp32_bundle, tmp_path, capsys):
    assert runtime_main(["check", str(tmp_path / "nope")]) == 2
    assert runtime_main(["check", str(fp32_bundle), "--batch", "9", "--no-profile", *FAST]) == 2
    bundle = _copy(fp32_bundle, tmp_path)
    m = json.loads((bundle / "manifest.json").read_text())
    for name in (REFERENCE_JSON, REFERENCE_NPZ):  # a bundle built before the reference set existed
        del m["files"][name]
        (bundle / name).unlink()
    (bundle / "manifest.json").write_text(json.dumps(m))
    assert runtime_main(["check", str(bundle), "--no-latency", "--no-profile"]) == 2
    err = capsys.readouterr().err
    assert "nope: no such bundle directory" in err and "outside this engine's batch range 1..4" in err
    assert "lists no reference.json/reference.npz" in err
    assert Engine(bundle).verification["status"] == "unavailable"  # loads; says it cannot verify


def test_check_out_never_replaces_what_is_not_a_report(fp32_bundle, tmp_path, capsys):
    """``--out`` of the check is a JSON report: a video (or any non-report) of the user's is never replaced, and
    the refusal comes before any timing; an earlier report is replaced."""
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42 user's video")
    not_report = tmp_path / "notes.json"
    not_report.write_text("[1, 2, 3]")
    for out in (video, not_report, tmp_path / "missing" / "r.json", tmp_path):
        assert runtime_main(["check", str(fp32_bundle), "--out", str(out), *FAST]) == 2
    assert video.read_bytes().endswith(b"user's video") and not_report.read_text() == "[1, 2, 3]"
    err = capsys.readouterr().err
    assert "ending in .json" in err and "not a JSON report" in err
    report = tmp_path / "check.json"
    report.write_text('{"old": true}')
    assert runtime_main(["check", str(fp32_bundle), "--out", str(report), "--no-profile", *FAST]) == 0
    assert "parity" in json.loads(report.read_text())


def test_engine_verifies_once_per_device_and_caches_the_verdict(fp32_bundle, tmp_path, monkeypatch):
    import runtime.verify as verify

    monkeypatch.setenv("TIMESFORMER_CACHE", str(tmp_path / "cache"))
    calls = []
    real = verify.stored_parity
    monkeypatch.setattr(verify, "stored_parity", lambda *a: calls.append(1) or real(*a))
    with Engine(fp32_bundle) as e:
        v = e.verification
        assert v["status"] == "passed" and v["cached"] is False and v["metrics"]["max_abs_logit"] < 1e-3
        assert e.describe()["verification"] is v
    files = list((tmp_path / "cache" / "verified").glob("*.json"))
    assert [f.stem for f in files] == [v["key"]] and not list(fp32_bundle.glob("*verif*"))
    assert Engine(fp32_bundle).verification["cached"] is True and len(calls) == 1  # once per device
    assert Engine(fp32_bundle, verify_on_device="always").verification["cached"] is False and len(calls) == 2
    files[0].write_text('{"schema": 1, "key": "' + v["key"] + '", "verdict": {"status": "passed"}}')  # malformed
    assert Engine(fp32_bundle).verification["cached"] is False and len(calls) == 3  # ignored, run, replaced
    record = verify.fingerprint()
    monkeypatch.setattr(verify, "fingerprint", lambda: {**record, "key": "another device"})
    assert Engine(fp32_bundle).verification["cached"] is False and len(calls) == 4  # another device: again
    assert Engine(fp32_bundle, verify_on_device="never").verification["status"] == "skipped" and len(calls) == 4
    with pytest.raises(ValueError, match="verify_on_device: expected one of"):
        Engine(fp32_bundle, verify_on_device="sometimes")
    with pytest.raises(BundleError, match="inside the bundle"):
        Engine(fp32_bundle, verify_cache=fp32_bundle / "cache")


def test_a_device_that_computes_something_else_fails_loudly_at_load(fp32_bundle, tmp_path, monkeypatch):
    from runtime.verify import DeviceMismatchError

    monkeypatch.setenv("TIMESFORMER_CACHE", str(tmp_path / "cache"))
    _shift_logits(monkeypatch, 0.01)
    with pytest.raises(
        DeviceMismatchError,
        match=r"max_abs_logit = 0\.0100\d*, needs <= 0\.001 on the 4 stored "
        r"clips \(max \|dlogit\| 0\.01\d*, min cosine",
    ):
        Engine(fp32_bundle)
    with pytest.raises(DeviceMismatchError):  # a cached failure is not a pass: checked again
        Engine(fp32_bundle)


def test_hub_metrics_and_served_meta_carry_the_verdict(fp32_bundle):
    from runtime.hub import CameraHub
    from runtime.serving.app import _Replica

    with Engine(fp32_bundle) as engine:
        hub = CameraHub(engine, results=0)
        try:
            assert hub.metrics()["verification"]["status"] == "passed"
        finally:
            hub.close()
    replica = _Replica(str(fp32_bundle), "auto", 1)
    assert replica.meta()["verification"]["status"] == "passed"
    assert replica.engine.describe()["verification"]["status"] == "passed"  # /health spreads describe()


def test_check_on_a_tensorrt_bundle_through_the_fakes(motion_model_path, tmp_path, monkeypatch):
    """A TensorRT bundle (built and run on the fakes of tests/support/fake_tensorrt) carries its reference set, and the
    check runs its parity and latency; block outputs and the per-layer profile say they are not available there."""
    pytest.importorskip("onnxruntime")
    from export.bundle.build import BuildRequest, build_bundle
    from runtime.check import run_check, summary_lines
    from tests.support.fake_tensorrt import FakeCudart, install

    install(monkeypatch, FakeCudart(), "10.3.0")
    out = build_bundle(
        BuildRequest(
            model=str(motion_model_path),
            backend="tensorrt",
            out=str(tmp_path / "trt"),
            cache_dir=str(tmp_path / "cache"),
            parity_clips=2,
            batch=(1, 2, 4),
        )
    )
    assert {REFERENCE_JSON, REFERENCE_NPZ} <= set(read_manifest(out)["files"])
    r = run_check(out, blocks="always", batches=[1, 4], concurrency=[1, 2], warmup=1, iterations=2, duration=0)
    assert r["passed"] is True and r["engine"]["backend"] == "tensorrt" and r["parity"]["clips"] == 2
    assert [(x["batch"], x["concurrency"]) for x in r["latency"]["runs"]] == [(1, 1), (4, 1), (1, 2)]
    assert not r["blocks"]["available"] and "TensorRT plan" in r["blocks"]["note"]
    assert not r["profile"]["available"]
    text = "\n".join(summary_lines(r))
    assert "tensorrt fp32" in text and "blocks: not available" in text and "profile: not available" in text


def test_the_device_check_holds_top1_on_decisive_clips_only():
    """runtime.reference (the on-device check) and the build's parity share one rule: a top-1 flip on a near tie of
    the reference is reported per clip but fails nothing; a flip where the reference was decisive fails."""
    import numpy as np

    from runtime.reference import clip_failures, compare_logits, tolerance_failures

    from calibration.precision.metrics import compare_logits as build_compare

    ref = np.array([[3.0, 0.0, -1.0, 0.5], [1.0, 0.98, -1.0, -0.5]])  # clip 1: classes 0 and 1 nearly tied
    act = ref.copy()
    act[1, 1] = 1.02
    tol = {"min_cosine": 0.99, "top1_agreement": 0.9}
    m = compare_logits(ref, act)
    assert m["top1_agreement"] == 0.5 and m["decisive_clips"] == 1 and m["top1_agreement_decisive"] == 1.0
    assert tolerance_failures(m, tol) == [] and clip_failures(m["per_clip"][1], tol) == []
    assert not m["per_clip"][1]["decisive"] and not m["per_clip"][1]["top1_agrees"]
    b = build_compare(ref, act)
    assert (b["decisive_clips"], b["top1_agreement_decisive"]) == (1, 1.0)
    act[0, 3] = 3.5  # the decisive clip flips
    m = compare_logits(ref, act)
    assert "top1_agreement = 0 on the 1 of 2 clips" in tolerance_failures(m, tol)[-1]
    assert clip_failures(m["per_clip"][0], tol)[-1] == "top-1 3 vs reference 0"


@pytest.mark.parametrize("where", ["here", "elsewhere"])
def test_the_check_says_how_int8_compared_with_fp32_where_it_was_built(where):
    """A CPU INT8 bundle carries its build-time timing against ONNX Runtime FP32 (``build.speed_vs_fp32``); the
    check repeats it and says when this CPU is not the one it was measured on (issue 25)."""
    from runtime.check import summary_lines
    from runtime.cpu_isa import cpu_isa
    from runtime.device import fingerprint

    here = cpu_isa().describe()
    cpu = here if where == "here" else "x86_64 AVX2 without VNNI (vpmaddubsw)"
    speed = {"cpu": cpu, "ratio": 1.242, "int8_ms": 4050.0, "fp32_ms": 3260.0, "reason": None}
    built = {"backend": "openvino", "precision": "int8", "date": "d", "host": "h", "machine": "m"}
    report = {"bundle": "b", "built": {**built, "speed_vs_fp32": speed}, "device": fingerprint(), "cpu_isa": here}
    report.update(parity=None, blocks=None, latency=None, profile=None)
    line = next(x for x in summary_lines(report) if x.startswith("built on"))
    assert line.startswith(f"built on {cpu}: INT8 took 1.24x the time of ONNX Runtime FP32 there")
    assert line.endswith(f"; this CPU is {here}") is (where == "elsewhere")
    no_speed = {**report, "built": built}
    assert not [x for x in summary_lines(no_speed) if x.startswith("built on")]
    failed = {**report, "built": {**built, "speed_vs_fp32": {"error": "MemoryError: no room"}}}
    assert "INT8 against ONNX Runtime FP32 was not timed at the build: MemoryError: no room" in summary_lines(failed)
