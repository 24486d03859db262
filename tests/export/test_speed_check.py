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
