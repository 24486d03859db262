"""Decode speed of the clip reader on one core: ``python -m export.bench.reader``.

Writes a 320x240 H.264 test video (300 frames by default), then measures frames per second for
decode only (PyAV, one decoder thread, frames converted to RGB) and decode + preprocess (short side
224, centre crop, normalised, as :func:`runtime.preprocess.preprocess_frames` does), plus
:func:`calibration.clips.video_reader.read_clip` per clip. Prints a table and writes JSON
(default ``artifacts/bench/reader.json``). Target: at least 200 frames/s decode on one core.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

import numpy as np

from runtime.cli_args import ArgumentParser, user_errors
from runtime.files import write_json_atomic
from runtime.preprocess import PreprocessConfig, preprocess_frames

from export.bench.harness import machine, time_call
from calibration.clips.synthetic import render_clip, write_video
from calibration.clips.video_reader import decode_frames, read_clip, video_info

TARGET_FPS = 200.0


def make_test_video(path: Path, frames: int = 300, width: int = 320, height: int = 240, seed: int = 0) -> Path:
    """An H.264 (libx264, yuv420p) video of consecutive synthetic clips."""
    rng = np.random.default_rng(seed)
    parts = [render_clip(i % 8, rng, width=width, height=height, num_frames=30) for i in range(-(-frames // 30))]
    return write_video(path, np.concatenate(parts)[:frames], fps=30, container="mp4", crf=23)


def run(
    out_json: str | os.PathLike = "artifacts/bench/reader.json",
    frames: int = 300,
    repeats: int = 5,
    width: int = 320,
    height: int = 240,
) -> dict:
    """Measure and write the JSON report; returns it."""
    try:  # one core for the whole process, where the OS allows it
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        pinned = True
    except (AttributeError, OSError):
        pinned = False
    pre = PreprocessConfig(num_frames=8, sampling_rate=8, sampling="dense", short_side=224, crop_size=224)
    with tempfile.TemporaryDirectory() as tmp:
        video = make_test_video(Path(tmp) / "bench_320x240.mp4", frames, width, height)
        info = video_info(video)
        n = info["frames"]
        decode_t = time_call(lambda: decode_frames(video, threads=1), repeats)

        def decode_pre():
            all_frames = decode_frames(video, threads=1)
            for s in range(0, n - pre.num_frames + 1, pre.num_frames):
                preprocess_frames(all_frames[s : s + pre.num_frames], pre)

        pre_t = time_call(decode_pre, repeats)
        clip_t = time_call(lambda: read_clip(video, pre, clip_index=3, num_clips=4), repeats)
    rows = [
        {
            "what": "decode (H.264 -> RGB uint8), 1 thread",
            "frames": n,
            "median_s": statistics.median(decode_t),
            "fps": n / statistics.median(decode_t),
        },
        {
            "what": "decode + preprocess (224 crop, normalised)",
            "frames": n,
            "median_s": statistics.median(pre_t),
            "fps": n / statistics.median(pre_t),
        },
        {
            "what": "read_clip: 8x8 dense, last of 4 windows (seek)",
            "frames": pre.num_frames,
            "median_s": statistics.median(clip_t),
            "fps": None,
        },
    ]
    report = {
        "video": {
            "width": info["width"],
            "height": info["height"],
            "frames": n,
            "codec": info["codec"],
            "fps": info["fps"],
        },
        "repeats": repeats,
        "pinned_to_one_core": pinned,
        "machine": machine(),
        "target_decode_fps": TARGET_FPS,
        "results": rows,
        "meets_target": rows[0]["fps"] >= TARGET_FPS,
        "note": "timings on a shared machine are noisy; medians of the repeats",
    }
    write_json_atomic(out_json, report)
    return report


@user_errors("python -m export.bench.reader")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m export.bench.reader", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="artifacts/bench/reader.json")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    r = run(a.out, a.frames, a.repeats)
    v = r["video"]
    print(
        f"{v['width']}x{v['height']} {v['codec']}, {v['frames']} frames, one core"
        f"{' (pinned)' if r['pinned_to_one_core'] else ''}, median of {r['repeats']}"
    )
    print(f"{'what':<52} {'seconds':>9} {'frames/s':>9}")
    for row in r["results"]:
        fps = f"{row['fps']:.0f}" if row["fps"] else "-"
        print(f"{row['what']:<52} {row['median_s']:>9.4f} {fps:>9}")
    print(f"decode target {TARGET_FPS:.0f} frames/s: {'met' if r['meets_target'] else 'NOT met'}; wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
