"""Calibration sets (real H.264 files through the reader, synthetic specs, .npy/.npz tensors) and the
precision build's caches (a warm cache reads no clip, counted by ``calibration.clips.calibset.READS``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.clips.calibset import READS, CalibrationError, load_calibration_set, load_clips, selection_key
from models import get_preset

PRE = get_preset("tiny_8x64").preprocess
CLIP_SHAPE = (PRE.num_frames, 3, PRE.crop_size, PRE.crop_size)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    """Six real H.264 clips with labels.csv, plus one corrupt .mp4 and one truncated copy of a real file."""
    from calibration.clips.synthetic import generate_dataset

    d = tmp_path_factory.mktemp("calib_videos")
    generate_dataset(d, 6, seed=31, progress=False)
    (d / "broken.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return d


def test_folder_set_reads_real_videos_records_selection_and_skips_unreadable(video_dir):
    from calibration.clips.synthetic import read_dataset
    from calibration.clips.video_reader import read_clip

    s = load_calibration_set(str(video_dir), PRE, 7, seed=1, progress=False)
    # 7 files for 7 clips: one (centre) clip per file, the corrupt file skipped and named, 6 clips left
    assert s.clips.shape == (6,) + CLIP_SHAPE and s.clips.dtype == np.float32
    assert [k["file"] for k in s.skipped] == ["broken.mp4"]
    assert "broken.mp4" not in [e["file"] for e in s.selection]
    truth = {p.name: lab for p, lab in read_dataset(video_dir)}
    assert s.labels is not None and list(s.labels) == [truth[e["file"]] for e in s.selection]
    # the clips are what the reader decodes for the recorded file and offset
    e = s.selection[2]
    np.testing.assert_array_equal(s.clips[2], read_clip(video_dir / e["file"], PRE, e["clip_index"], e["num_clips"]))
    # fixed: same spec, n and seed -> same selection and sha256; another seed -> another selection
    again = load_calibration_set(str(video_dir), PRE, 7, seed=1, progress=False)
    assert again.sha256 == s.sha256 and again.selection == s.selection
    other = load_calibration_set(str(video_dir), PRE, 3, seed=2, progress=False)
    assert other.sha256 != s.sha256 and len(other) == 3


def test_more_clips_than_files_takes_several_offsets_per_file(tmp_path):
    from calibration.clips.synthetic import generate_dataset

    generate_dataset(tmp_path, 2, seed=5, progress=False)
    s = load_calibration_set(str(tmp_path), PRE, 4, seed=0, progress=False)
    assert len(s) == 4
    by_file: dict[str, list[int]] = {}
    for e, _clip in zip(s.selection, s.clips):
        assert e["num_clips"] == 2
        by_file.setdefault(e["file"], []).append(e["clip_index"])
    assert sorted(sorted(v) for v in by_file.values()) == [[0, 1], [0, 1]]
    first = [i for i, e in enumerate(s.selection) if e["file"] == s.selection[0]["file"]]
    assert not np.array_equal(s.clips[first[0]], s.clips[first[1]])  # different windows of one video


def test_only_unreadable_files_is_an_error_naming_them(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"not a video at all")
    (tmp_path / "b.avi").write_bytes(b"")
    with pytest.raises(CalibrationError) as e:
        load_calibration_set(str(tmp_path), PRE, 4, seed=0, progress=False)
    msg = str(e.value)
    assert "empty" in msg and "a.mp4" in msg and "b.avi" in msg


def test_wrong_tensor_shape_names_file_expected_and_actual(tmp_path):
    bad = tmp_path / "clips.npy"
    np.save(bad, np.zeros((2, 8, 3, 32, 32), np.float32))
    with pytest.raises(CalibrationError) as e:
        load_calibration_set(str(bad), PRE, 2, seed=0, progress=False)
    msg = str(e.value)
    assert str(bad) in msg and "(2, 8, 3, 32, 32)" in msg and "(N, 8, 3, 64, 64)" in msg
    np.save(bad, np.zeros((2, 8, 3, 64, 64), np.int32))
    with pytest.raises(CalibrationError, match="dtype int32"):
        load_calibration_set(str(bad), PRE, 2, seed=0, progress=False)


def test_tensor_sets_npz_with_labels_and_npy_folder(tmp_path):
    rng = np.random.default_rng(3)
    clips = rng.standard_normal((5,) + CLIP_SHAPE).astype(np.float32)
    np.savez(tmp_path / "set.npz", clips=clips, labels=np.arange(5))
    s = load_calibration_set(str(tmp_path / "set.npz"), PRE, 3, seed=4, progress=False)
    assert len(s) == 3 and s.source == "tensors"
    for e, clip, lab in zip(s.selection, s.clips, s.labels):
        np.testing.assert_array_equal(clip, clips[e["index"]])
        assert lab == e["index"]
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "a.npy", clips[:2])
    np.save(folder / "b.npy", clips[2])  # one clip without the batch axis
    (folder / "c.npy").write_bytes(b"\x93NUMPY garbage")
    t = load_calibration_set(str(folder), PRE, 10, seed=0, progress=False)
    assert len(t) == 3 and t.labels is None and [k["file"] for k in t.skipped] == ["c.npy"]
    np.testing.assert_array_equal(np.sort(t.clips.ravel()), np.sort(clips[:3].ravel()))


def test_synthetic_spec_and_load_clips_contract():
    clips = load_clips("synthetic:3", PRE, 8, 0)
    assert clips.shape == (8,) + CLIP_SHAPE and clips.dtype == np.float32 and np.isfinite(clips).all()
    s = load_calibration_set("synthetic:3", PRE, 8, 0, progress=False)
    assert s.source == "synthetic" and sorted(s.labels.tolist()) == list(range(8))  # balanced classes
    assert load_calibration_set("synthetic", PRE, 8, 3, progress=False).selection != s.selection  # seed 3 order
    with pytest.raises(CalibrationError, match="integer SEED"):
        load_calibration_set("synthetic:x", PRE, 2, 0)
    with pytest.raises(CalibrationError, match="no such file or folder"):
        load_calibration_set("/nonexistent/clips", PRE, 2, 0)


def test_selection_key_changes_with_the_files_not_with_reading(tmp_path):
    from calibration.clips.synthetic import generate_dataset

    generate_dataset(tmp_path, 2, seed=8, progress=False)
    before = dict(READS)
    k1 = selection_key(str(tmp_path), PRE, 2, 0)
    assert dict(READS) == before  # computing the key reads no clip
    assert selection_key(str(tmp_path), PRE, 2, 1) != k1
    generate_dataset(tmp_path / "x", 1, seed=9, progress=False)
    (tmp_path / "x" / "clip_00000.mp4").rename(tmp_path / "extra.mp4")
    assert selection_key(str(tmp_path), PRE, 2, 0) != k1


def test_synthetic_task_specs_name_the_task_and_key_by_it(tmp_path):
    from calibration.clips.synthetic import CLASSES, TASKS, generate_dataset

    s = load_calibration_set("synthetic-motion16:5", PRE, 16, 0, progress=False)
    assert s.source == "synthetic" and s.clips.shape == (16,) + CLIP_SHAPE
    assert sorted(s.labels.tolist()) == list(range(16)) and s.classes == TASKS["motion16"].classes
    assert load_calibration_set("synthetic:5", PRE, 2, 0, progress=False).classes == CLASSES
    key = selection_key("synthetic:5", PRE, 4, 0)
    assert selection_key("synthetic-motion:5", PRE, 4, 0) == key  # the same set, spelled out
    others = {selection_key(spec, PRE, 4, 0) for spec in ("synthetic-motion16:5", "synthetic-motion16:6")}
    assert len(others) == 2 and key not in others
    assert selection_key("synthetic-motion16", PRE, 4, 6) == selection_key("synthetic-motion16:6", PRE, 4, 6)
    with pytest.raises(CalibrationError, match=r"unknown synthetic task 'motion17'.*one of motion, motion16"):
        load_calibration_set("synthetic-motion17:1", PRE, 2, 0)
    with pytest.raises(CalibrationError, match=r"synthetic-TASK\[:SEED\]' with an integer SEED, got 'x'"):
        selection_key("synthetic-motion16:x", PRE, 2, 0)
    # a folder written by the generator for motion16: its labels and class names come with the clips
    generate_dataset(tmp_path / "m16", 4, seed=2, width=64, height=48, num_frames=20, progress=False, task="motion16")
    f = load_calibration_set(str(tmp_path / "m16"), PRE, 4, 0, progress=False)
    assert f.labels is not None and f.classes == TASKS["motion16"].classes


# ------------------------------------------------------------------------------- precision build caches


@pytest.fixture(scope="module")
def tiny_decomposed(tmp_path_factory) -> Path:
    from models import load_source
    from export.onnx.export import export_onnx

    net, _, pre, _ = load_source("tiny_8x64", 0)
    return export_onnx(
        net, tmp_path_factory.mktemp("tiny") / "tiny.onnx", attention="decomposed", preprocess=pre, verbose=False
    )


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_precision_build_is_cached_and_a_warm_cache_reads_no_clip(tiny_decomposed, tmp_path, precision):
    from export.bundle.precision_step import precision_onnx

    cache = tmp_path / "cache"
    args = (tiny_decomposed, precision, "tensorrt", "synthetic:11", PRE, 6, "max", cache, 0)
    sets = READS["sets"]
    out, info = precision_onnx(*args, validate_clips=0, progress=False)
    assert READS["sets"] == sets + 1 and not info["reused"] and info["n_clips"] == 6 and info["set_sha256"]
    detail_cache = "calibration_cache" if precision == "int8" else "stats_cache"
    assert info["detail"][detail_cache] == "miss"

    out2, info2 = precision_onnx(*args, validate_clips=0, progress=False)  # same inputs: the result is reused
    assert out2 == out and info2["reused"] and READS["sets"] == sets + 1

    # Without the result, the cached ranges / statistics are reused: still no clip read.
    out.unlink()
    out3, info3 = precision_onnx(*args, validate_clips=0, progress=False)
    assert READS["sets"] == sets + 1 and not info3["reused"] and info3["detail"][detail_cache] == "hit"
    assert info3["set_sha256"] == info["set_sha256"]
    record = json.loads(next((cache / "calibsets").glob("*.json")).read_text())
    assert record["sha256"] == info["set_sha256"] and len(record["selection"]) == 6

    # Another calibration method (INT8) or set is a different result and reads the clips again.
    other = precision_onnx(
        tiny_decomposed,
        precision,
        "tensorrt",
        "synthetic:12",
        PRE,
        6,
        "max",
        cache,
        0,
        validate_clips=0,
        progress=False,
    )[0]
    assert other != out and READS["sets"] == sets + 2


def test_calibration_methods_give_tensorrt_qdq_with_their_own_ranges(tiny_decomposed, tmp_path, monkeypatch):
    """max, entropy and percentile all calibrate on the clips, give symmetric int8 Q/DQ, and differ in ranges."""
    import onnx
    from onnx import numpy_helper

    from calibration.precision import int8
    from export.bundle.precision_step import precision_onnx

    # A coarser entropy histogram (512 bins, not 2048) keeps ONNX Runtime's Python KL search short here.
    monkeypatch.setitem(int8.CALIBRATOR_OPTIONS, "entropy", {"num_bins": 512, "num_quantized_bins": 128})

    scales = {}
    for method in ("max", "entropy", "percentile"):
        out, info = precision_onnx(
            tiny_decomposed,
            "int8",
            "tensorrt",
            "synthetic:13",
            PRE,
            4,
            method,
            tmp_path,
            0,
            validate_clips=2,
            progress=False,
        )
        assert info["method"] == method and info["calibrated"] and info["target_check"]["precision_detected"] == "int8"
        assert info["detail"]["validation"]["min_cosine"] > 0.95
        model = onnx.load(str(out))
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        acts = {}
        for n in model.graph.node:
            if n.op_type == "QuantizeLinear":  # activations only (weights are stored quantized)
                assert not inits[n.input[2]].any() and inits[n.input[2]].dtype == np.int8
                acts[n.input[0]] = float(inits[n.input[1]])
        scales[method] = acts
    assert scales["max"].keys() == scales["entropy"].keys() == scales["percentile"].keys()
    for other in ("entropy", "percentile"):
        assert any(abs(scales[other][k] - scales["max"][k]) > 1e-3 * scales["max"][k] for k in scales["max"])
    # max is the widest range: the other methods clip outliers
    assert all(scales["percentile"][k] <= scales["max"][k] * (1 + 1e-5) for k in scales["max"])


def test_first_jump_block():
    from export.bench.precision_report import first_jump_block, largest_step_block

    assert first_jump_block([1e-3, 1.1e-3, 1.2e-3], floor=1e-2) is None  # steady noise below the floor
    assert first_jump_block([1e-3, 1.2e-3, 0.3, 0.31], floor=1e-2) == 2  # block 2 breaks
    assert first_jump_block([0.2, 0.21, 0.22], floor=5e-2) == 0  # broken from the start
    assert largest_step_block([1e-3, 1.2e-3, 0.3, 0.31]) == 2 and largest_step_block([0.0, 0.0]) is None


def test_precision_report_on_real_clips(tmp_path):
    from export.bench.precision_report import precision_report, write_report

    rep = precision_report(
        "tiny_8x64",
        clips="synthetic:21",
        n_clips=4,
        precisions=("fp32", "int8"),
        targets=("tensorrt",),
        calib="synthetic:22",
        calib_clips=4,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    rows = {(r["precision"], r["target"]): r for r in rep["rows"]}
    assert set(rows) == {("fp32", "tensorrt"), ("int8", "tensorrt")}
    fp32, int8 = rows[("fp32", "tensorrt")], rows[("int8", "tensorrt")]
    depth = rep["model_config"]["depth"]
    assert len(fp32["blocks"]) == len(int8["blocks"]) == depth
    assert fp32["max_abs_logit"] < 1e-3 and fp32["blocks"][-1]["mean_rel_error"] < 1e-5
    assert fp32["first_jump_block"] is None
    assert int8["blocks"][-1]["mean_rel_error"] > 10 * fp32["blocks"][-1]["mean_rel_error"]  # int8 really differs
    assert int8["form"] == "qdq-fp16" and rep["clips"]["n_clips"] == 4 and not rep["labels"]  # preset: no names
    js, md = write_report(rep, tmp_path / "out")
    assert json.loads(js.read_text())["rows"][1]["precision"] == "int8"
    assert "| int8 | tensorrt | qdq-fp16 |" in md.read_text()
    from runtime.cpu_isa import cpu_isa  # issue 25: the report names the ISA and the calibration source

    assert rep["isa"]["int8_dot"] == cpu_isa().int8_dot and rep["calibration"]["source"]["kind"] == "synthetic"
    assert f"INT8 measured on: {cpu_isa().describe()}; calibration source: synthetic generator" in md.read_text()
