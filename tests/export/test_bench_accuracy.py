"""``export.bench.accuracy``: the accuracy rows and bars from real logits, one small end-to-end run on the motion model,
and its command-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from export.bench.accuracy import BARS, MIN_CLIPS_FOR_BARS, accuracy_row, markdown, run_bench, verdicts


def _logits(labels: np.ndarray, wrong: np.ndarray, classes: int = 5, seed: int = 0) -> np.ndarray:
    """Logits whose top-1 is the label, except on ``wrong`` clips (the next class)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(labels), classes)).astype(np.float32) * 0.1
    top = np.where(wrong, (labels + 1) % classes, labels)
    x[np.arange(len(labels)), top] += 5.0
    return x


def test_rows_count_lost_and_gained_clips():
    n = 1200
    labels = np.arange(n) % 5
    ref_wrong = np.zeros(n, bool)
    ref_wrong[:60] = True  # FP32: 95.0 %
    int8_wrong = ref_wrong.copy()
    int8_wrong[:3] = False  # gains 3 ...
    int8_wrong[100:107] = True  # ... and loses 7: 4 clips net = -0.333 points
    ref, q = _logits(labels, ref_wrong), _logits(labels, int8_wrong, seed=1)
    row = accuracy_row("x", ref, q, labels)
    assert row["reference_accuracy"] == pytest.approx(0.95) and row["accuracy"] == pytest.approx(1136 / 1200)
    assert (row["lost"], row["gained"]) == (7, 3)
    assert row["delta_points"] == pytest.approx(-400 / 1200)
    assert row["top1_agreement"] == pytest.approx((n - 10) / n)
    rows = [
        {**row, "precision": "int8"},
        {**row, "name": "y", "precision": "fp16"},
        {**row, "name": "z", "precision": "fp32"},
    ]
    v = {x["name"]: x for x in verdicts(rows)}
    assert v["x"]["met"] is True and v["x"]["bar"] == BARS["int8"]  # 0.33 <= 0.5
    assert v["y"]["met"] is False and v["y"]["bar"] == BARS["fp16"]  # 0.33 > 0.1
    assert "z" not in v  # FP32 has no bar of its own
    few = [{**row, "clips": MIN_CLIPS_FOR_BARS - 1, "precision": "int8"}]
    assert verdicts(few)[0]["met"] is None  # too few clips to judge


def test_small_run_on_the_motion_model(tmp_path, motion_model_path):
    rep = run_bench(
        str(motion_model_path),
        n=24,
        backends=("onnxruntime",),
        precisions=("fp32", "int8"),
        calib_clips=16,
        threads=2,
        batch=8,
        cache_dir=tmp_path / "cache",
        work_dir=tmp_path / "work",
    )
    assert rep["task"] == "motion" and rep["classes"] == 8 and rep["clips"]["n_clips"] == 24
    assert rep["calibration"]["spec"] == "synthetic:0" and rep["clips"]["spec"] == "synthetic:9000"
    names = [r["name"] for r in rep["rows"]]
    assert names == ["pytorch-fp32", "onnxruntime-fp32", "onnxruntime-int8", "tensorrt-onnx-int8"]
    ref = rep["rows"][0]
    assert ref["delta_points"] == 0 and ref["top1_agreement"] == 1.0
    for r in rep["rows"]:
        assert r["clips"] == 24 and r["reference_accuracy"] == ref["accuracy"]
        assert r["delta_points"] == pytest.approx(100 * (r["gained"] - r["lost"]) / 24)
    ort_fp32 = rep["rows"][1]
    assert ort_fp32["min_cosine"] > 0.99999 and ort_fp32["lost"] == ort_fp32["gained"] == 0
    assert rep["rows"][2]["mean_cosine"] > 0.99  # INT8, calibrated on the model's task
    assert all(v["met"] is None for v in rep["verdicts"])  # 24 clips: no verdict on the bars
    text = markdown(rep)
    assert "onnxruntime-int8" in text and "not judged" in text
    json.dumps(rep)  # the report is JSON as written


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "tiny_8x64", "--n", "2"], "has no class names"),
        (["--backends", "tensorrt"], "--backends: expected onnxruntime and/or openvino"),
        (["--precisions", "int4"], "--precisions: expected fp32, fp16 and/or int8"),
        (["--n", "0"], "--n: expected a positive number"),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, args, message):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.bench.accuracy",
            *args,
            "--out-dir",
            str(tmp_path / "o"),
            "--cache-dir",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("[accuracy]")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr
