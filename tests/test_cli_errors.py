"""User errors on the command line: one line ``<prog>: <what went wrong>`` on stderr, exit status 2, never a
traceback, and nothing of the user's changed. Every case runs the real entry point in a subprocess; the
cases run concurrently (they spend their time importing torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cases(d: Path, bundle: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments after ``python -m``, a regular expression the error line must match)."""
    (d / "bad.safetensors").write_bytes(b"\x00garbage, not a safetensors file")
    (d / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (d / "empty_calib").mkdir()
    (d / "corrupt_bundle").mkdir()
    (d / "corrupt_bundle" / "manifest.json").write_text('{"schema_version": 2, "backend": ')
    (d / "mine").mkdir()
    (d / "mine" / "thesis.txt").write_text("do not delete")
    (d / "a_file").write_text("not a folder")
    m = str(ROOT / "models" / "weights" / "motion_tiny.safetensors")
    cache = str(d / "cache")
    eng = ["export.bundle.build", "--backend", "onnxruntime", "--cache-dir", cache]
    return {
        "parity_missing_bundle": (["export.bundle.parity", "--engine", str(d / "nope")], r"make parity: .*nope"),
        "parity_corrupt_bundle": (
            ["export.bundle.parity", "--engine", str(d / "corrupt_bundle")],
            r"make parity: .*manifest\.json: not valid JSON",
        ),
        "bench_missing_bundle": (["export.bench.engine", "--engine", str(d / "nope")], r"make bench: .*nope"),
        "bench_bad_batches": (
            ["export.bench.engine", "--engine", str(bundle), "--batch", "1,x"],
            r"make bench: --batch '1,x': expected comma-separated integers",
        ),
        "engine_bad_checkpoint": (
            eng + ["--model", str(d / "bad.safetensors"), "--out", str(d / "o1")],
            r"make engine: .*bad\.safetensors: cannot read safetensors",
        ),
        "engine_missing_model": (
            eng + ["--model", "no_such_model", "--out", str(d / "o2")],
            r"make engine: MODEL='no_such_model': neither a preset",
        ),
        "engine_empty_calib_folder": (
            eng + ["--model", m, "--precision", "int8", "--calib", str(d / "empty_calib"), "--out", str(d / "o3")],
            r"make engine: calibration set .*no video files",
        ),
        "engine_garbage_npz": (
            eng + ["--model", m, "--precision", "int8", "--calib", str(d / "junk.npz"), "--out", str(d / "o4")],
            r"make engine: calibration set .*junk\.npz.* unreadable",
        ),
        "engine_bad_attention": (
            eng + ["--model", m, "--attention", "fastest", "--out", str(d / "o5")],
            r"make engine: .*attention.*'fastest'",
        ),
        "engine_out_is_users_folder": (
            eng + ["--model", m, "--out", str(d / "mine")],
            r"make engine: OUT=.*mine: an existing folder that is not an engine bundle",
        ),
        "engine_out_under_a_file": (
            eng + ["--model", m, "--out", str(d / "a_file" / "b")],
            r"make engine: OUT=.*its parent .*a_file is a file",
        ),
        "onnx_bad_checkpoint": (
            ["export.onnx.export", "--model", str(d / "bad.safetensors"), "--out", str(d / "x.onnx")],
            r"make onnx: .*bad\.safetensors",
        ),
        "precision_report_missing_model": (
            ["export.bench.precision_report", "--model", "no_such_model", "--out", str(d / "rep")],
            r"precision_report: .*no_such_model",
        ),
        "demo_bad_checkpoint": (
            ["export.demo", "--model", str(d / "bad.safetensors"), "--out", str(d / "demo")],
            r"make demo: .*bad\.safetensors",
        ),
        "bench_model_unknown_preset": (
            ["models.bench_model", "--preset", "bogus"],
            r"bench_model: unknown preset 'bogus'",
        ),
        "synthetic_out_is_a_file": (
            ["calibration.clips.synthetic", str(d / "a_file"), "--clips", "1"],
            r"calibration\.clips\.synthetic: .*a_file",
        ),
        # usage errors: one line pointing to --help, not argparse's usage block
        "engine_unknown_option": (eng + ["--bogus"], r"make engine: unrecognized arguments: --bogus \(see .* --help\)"),
        "engine_not_an_int": (
            eng + ["--calib-clips", "many"],
            r"make engine: argument --calib-clips: invalid int value: 'many' \(see .* --help\)",
        ),
        "accuracy_bad_choice": (
            ["export.bench.accuracy", "--n", "x"],
            r"export\.bench\.accuracy: argument --n: invalid int",
        ),
        "runtime_missing_arguments": (
            ["runtime"],
            r"python -m runtime: the following arguments are required: "
            r"bundle, source \(see .* --help\)",
        ),
        "serving_missing_engine": (
            ["runtime.serving"],
            r"python -m runtime\.serving: the following arguments are "
            r"required: --engine",
        ),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory, fp32_bundle) -> dict[str, tuple[subprocess.CompletedProcess, str]]:
    d = tmp_path_factory.mktemp("cli")
    cases = _cases(d, fp32_bundle)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TIMESFORMER_DEBUG", None)

    def run(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )

    with ThreadPoolExecutor(4) as pool:
        done = dict(zip(cases, pool.map(run, [a for a, _ in cases.values()])))
    results = {name: (done[name], pattern) for name, (_, pattern) in cases.items()}
    results["_dir"] = d  # type: ignore[assignment]
    return results


CASES = [
    "parity_missing_bundle",
    "parity_corrupt_bundle",
    "bench_missing_bundle",
    "bench_bad_batches",
    "engine_bad_checkpoint",
    "engine_missing_model",
    "engine_empty_calib_folder",
    "engine_garbage_npz",
    "engine_bad_attention",
    "engine_out_is_users_folder",
    "engine_out_under_a_file",
    "onnx_bad_checkpoint",
    "precision_report_missing_model",
    "demo_bad_checkpoint",
    "bench_model_unknown_preset",
    "synthetic_out_is_a_file",
    "engine_unknown_option",
    "engine_not_an_int",
    "accuracy_bad_choice",
    "runtime_missing_arguments",
    "serving_missing_engine",
]


@pytest.mark.parametrize("case", CASES)
def test_user_error_is_one_line_and_exit_2(results, case):
    import re

    res, pattern = results[case]
    assert "Traceback" not in res.stderr and "usage:" not in res.stderr, res.stderr[-3000:]
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    last = res.stderr.strip().splitlines()[-1]
    assert re.search(pattern, last), last
    # Progress lines may come before it, but the error itself is one line.
    assert (
        "\n" not in last and len([ln for ln in res.stderr.splitlines() if ln.startswith(last.split(":")[0] + ":")]) == 1
    )


def test_nothing_of_the_users_was_touched(results):
    d = results["_dir"]
    assert (d / "mine" / "thesis.txt").read_text() == "do not delete" and sorted(
        p.name for p in (d / "mine").iterdir()
    ) == ["thesis.txt"]
    assert (d / "a_file").read_text() == "not a folder"
    assert not any((d / f"o{i}").exists() for i in range(1, 6))
    assert not [p.name for p in d.iterdir() if p.name.startswith(".")]


def test_garbage_npz_in_a_calibration_folder_is_skipped_and_reported(tmp_path):
    """Like an unreadable video: the good files are used, the garbage one is named in ``skipped``."""
    from calibration.clips.calibset import load_calibration_set
    from runtime.preprocess import PreprocessConfig

    pre = PreprocessConfig(num_frames=2, sampling_rate=1, short_side=8, crop_size=8)
    clips = np.random.default_rng(0).standard_normal((3, 2, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "a_good.npz", clips=clips)
    (tmp_path / "b_garbage.npz").write_bytes(b"PK\x03\x04" + os.urandom(64))
    (tmp_path / "c_pickle.npz").write_bytes(b"\x80\x04garbage pickle")
    cset = load_calibration_set(str(tmp_path), pre, n=3, progress=False)
    assert np.array_equal(cset.clips, clips)
    assert sorted(s["file"] for s in cset.skipped) == ["b_garbage.npz", "c_pickle.npz"]
    assert json.dumps(cset.info())  # the report of what was skipped is plain data
