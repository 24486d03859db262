"""The build's INT8-against-FP32 verdict (export/bundle/speed_check.py): the line it logs and when it warns."""

from __future__ import annotations

from export.bundle.speed_check import speed_note

_RECORD = {"cpu": "x86_64 AVX2 without VNNI (vpmaddubsw)", "int8_ms": 4050.0, "fp32_ms": 3260.0, "reason": None}


def test_slower_int8_warns_naming_the_cpu_and_the_faster_choice():
    warn, line = speed_note({**_RECORD, "ratio": 1.242}, "openvino")
    assert warn and "1.24x the time of ONNX Runtime FP32" in line and _RECORD["cpu"] in line
    assert "PRECISION=fp32 BACKEND=onnxruntime is faster here" in line and "4050.0 ms against 3260.0 ms" in line


def test_faster_int8_is_reported_without_a_warning():
    warn, line = speed_note({**_RECORD, "int8_ms": 800.0, "ratio": 0.341}, "onnxruntime")
    assert not warn and "0.34x the time" in line and "faster here" not in line


def test_unsteady_rounds_claim_nothing():
    reason = "no ratio claimed: the INT8 bundle rounds disagree (the machine is busy or unsteady)"
    warn, line = speed_note({**_RECORD, "ratio": None, "reason": reason}, "openvino")
    assert not warn and reason in line and "x the time" not in line


def test_the_build_times_at_the_smallest_batch_and_survives_a_timing_that_cannot_run(
    motion_model_path, tmp_path, monkeypatch, caplog
):
    """A bundle whose smallest batch is 2 is timed at batch 2 (batch 1 is outside its range); a timing that raises
    is recorded as an error and warned about, and the bundle, whose parity passed, is still published."""
    import json
    import logging

    from export.bundle import speed_check
    from export.bundle.build import build_bundle
    from export.bundle.options import BuildRequest

    def req(out: str) -> BuildRequest:
        return BuildRequest(
            model=str(motion_model_path),
            precision="int8",
            backend="onnxruntime",
            out=str(tmp_path / out),
            cache_dir=str(tmp_path / "cache"),
            calib_clips=8,
            parity_clips=4,
            batch=(2, 2, 4),
        )

    m = json.loads((build_bundle(req("timed")) / "manifest.json").read_text())
    assert m["build"]["speed_vs_fp32"]["batch"] == 2 and m["build"]["speed_vs_fp32"]["int8_ms"] > 0

    def no_memory(*a, **k):
        raise MemoryError("cannot allocate the FP32 model")

    monkeypatch.setattr(speed_check, "speed_vs_fp32", no_memory)
    with caplog.at_level(logging.WARNING):
        out = build_bundle(req("untimed"))
    m = json.loads((out / "manifest.json").read_text())
    assert m["build"]["speed_vs_fp32"] == {"error": "MemoryError: cannot allocate the FP32 model"}
    assert m["parity"]["passed"] and "not timed: MemoryError" in caplog.text
