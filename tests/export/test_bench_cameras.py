"""``make bench-cameras SOURCE=<video>``: cameras that loop a real video file, decode included, reported next to the
decoder's own limit. Correctness of the report only (no timing is asserted)."""

import json

import numpy as np
import pytest

from export.bench.decode import LoopingDecoder, scaled_size


@pytest.fixture(scope="module")
def small_video(tmp_path_factory):
    from calibration.clips.synthetic import render_clip, write_video

    rng = np.random.default_rng(0)
    frames = np.concatenate([render_clip(i, rng, 160, 120, num_frames=15) for i in range(2)])
    return write_video(tmp_path_factory.mktemp("video") / "cams.mp4", frames, fps=25, container="mp4")


def test_looping_decoder_restarts_at_the_end_and_resizes_with_the_scaler(small_video):
    d = LoopingDecoder(small_video, threads=1, size=scaled_size(160, 120, 64))
    frames = [next(d) for _ in range(75)]  # 30 frames in the file: the third pass
    d.close()
    assert d.loops == 2 and frames[0].shape == (64, 86, 3) and frames[0].dtype == np.uint8
    assert np.array_equal(frames[0], frames[30])  # the same frame on every pass
    assert scaled_size(1280, 720, 224) == (398, 224) and scaled_size(720, 1280, 64) == (64, 114)


def test_bench_cameras_source_reports_cameras_next_to_the_decode_limit(fp32_bundle, small_video, tmp_path, capsys):
    from export.bench import cameras

    out = tmp_path / "cams.json"
    assert (
        cameras.main(
            [
                "--engine",
                str(fp32_bundle),
                "--source",
                str(small_video),
                "--cameras",
                "2",
                "--seconds",
                "1.2",
                "--search-seconds",
                "0",
                "--decode-seconds",
                "0.3",
                "--pacers",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    for run in r["batched"] + r["unbatched"]:  # decoded frames account for every window as rendered ones do
        assert run["predictions"] + run["dropped"] == run["windows_due"] == run["windows_expected"] > 0
    d = r["decode"]
    assert d["video"]["width"] == 160 and d["video"]["height"] == 120
    assert [x["threads"] for x in d["decode_rates"]] == [1, 2, 0] and all(x["fps"] > 0 for x in d["decode_rates"])
    assert d["threads"] == max(d["decode_rates"], key=lambda x: x["fps"])["threads"]  # chosen by measurement
    costs = {str(c["size"]): c["cpu_ms_per_frame"] for c in d["output_costs"]}
    assert 0 < d["output_costs"][1]["mean_abs_diff_vs_full"] < 0.5  # another resize filter, the same picture
    assert set(costs) == {"full", "[86, 64]"}
    assert d["output_size"] == (None if costs["full"] <= costs["[86, 64]"] else [86, 64])
    assert d["decode_limit_cameras"] == pytest.approx(
        np.median([d["decode_limit_fps"], d["decode_limit_fps_after"]]) / 25
    )
    assert d["cameras_no_drops"] is None and d["goal_met"] is None  # no capacity search: nothing to hold to the goal
    assert "decode-only limit" in capsys.readouterr().out
    assert r["machine"]["key"] and r["frame_size"] is None
    assert cameras.main(["--engine", str(fp32_bundle), "--source", str(tmp_path / "none.mp4")]) == 2
