"""``python -m export.bench.outliers``: INT8 of outlier versions of a model, per target, as each backend runs it."""

from __future__ import annotations

import json

import pytest

from runtime.backends.openvino_backend import openvino_available

from export.bench import outliers


def test_bad_targets_are_one_line_and_exit_2(capsys):
    assert outliers.main(["--targets", "tensorrt,tpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--targets" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(not openvino_available()[0], reason=openvino_available()[1])
def test_sweep_scores_each_target_as_it_runs(tmp_path, capsys):
    """One outlier model (S=10, 1 channel) and the model as it is: the ONNX Runtime form and the OpenVINO bundle's
    model in OpenVINO, in the CPU INT8 form this CPU takes, both on the bar; the report names the ISA."""
    from calibration.precision.cpu_int8 import choose_cpu_int8_form

    out = tmp_path / "o"
    argv = ["--scales", "10", "--channels", "1", "--n", "16", "--default-only", "--targets", "onnxruntime,openvino"]
    assert outliers.main(argv + ["--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    rep = json.loads((out / "outliers.json").read_text())
    rows = {(r["scale"], r["target"]): r for r in rep["rows"]}
    assert set(rows) == {(s, t) for s in (1.0, 10.0) for t in ("onnxruntime", "openvino")}
    form, _ = choose_cpu_int8_form()
    for r in rep["rows"]:
        assert r["smooth"] == 0.5 and r["meets_bar"], r  # the default build: SmoothQuant alpha 0.5
        if r["target"] == "openvino":
            assert r["form"] == f"tensorrt q/dq, cpu form {form}"
    md = (out / "outliers.md").read_text()
    assert capsys.readouterr().out.strip() == md.strip() and rep["isa"]["describe"] in md
