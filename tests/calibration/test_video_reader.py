"""The clip reader on real encoded files: containers, seeking, variable frame rate, odd sizes, crops, padding,
errors."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from calibration.clips.synthetic import render_clip, write_video
from calibration.clips.video_reader import VideoReadError, decode_frames, read_clip, read_clips, video_info
from runtime.preprocess import PreprocessConfig, preprocess_frames, sample_indices

PRE = PreprocessConfig(num_frames=8, sampling_rate=2, sampling="dense", short_side=64, crop_size=64)


def coded_frames(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frames whose index can be read back from their colour after lossy coding (R, G levels 20 apart)."""
    i = np.arange(n)
    f = np.zeros((n, height, width, 3), np.uint8)
    f[..., 0] = (20 * (i % 12) + 10)[:, None, None]
    f[..., 1] = (20 * (i // 12) + 10)[:, None, None]
    f[..., 2] = 128
    return f


def frame_ids(frames: np.ndarray) -> list[int]:
    """Indices encoded by :func:`coded_frames`, read from the mean colour of each frame."""
    r = frames[..., 0].reshape(len(frames), -1).mean(1)
    g = frames[..., 1].reshape(len(frames), -1).mean(1)
    return [int(round((a - 10) / 20)) + 12 * int(round((b - 10) / 20)) for a, b in zip(r, g)]


def encode(
    path: Path,
    frames: np.ndarray,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rate: int = 15,
    pts_ms: list[int] | None = None,
    options: dict | None = None,
) -> Path:
    """Write frames with PyAV; ``pts_ms`` gives irregular presentation times (variable frame rate)."""
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=rate)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = pix_fmt
        s.thread_count = 1
        if options:
            s.options = options
        if pts_ms is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            if pts_ms is not None:
                vf.pts, vf.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(vf):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


@pytest.fixture(scope="module")
def clip24() -> np.ndarray:
    return render_clip(3, np.random.default_rng(11))


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """150 textured frames, a keyframe every 16 frames, B-frames on."""
    rng = np.random.default_rng(5)
    frames = np.concatenate([render_clip(i % 8, rng) for i in range(7)])[:150]
    path = encode(
        tmp_path_factory.mktemp("long") / "long.mp4",
        frames,
        options={"g": "16", "keyint_min": "16", "sc_threshold": "0", "bf": "2", "crf": "20"},
    )
    return path, frames


@pytest.mark.parametrize("container,codec", [("mp4", "h264"), ("mkv", "h264"), ("avi", "mpeg4")])
def test_containers_decode_to_the_rendered_frames(tmp_path, clip24, container, codec):
    path = write_video(tmp_path / f"c.{container}", clip24, fps=15, container=container)
    info = video_info(path)
    assert info["frames"] == 24 and info["codec"] == codec
    assert (info["width"], info["height"]) == (128, 96)
    assert info["fps"] == pytest.approx(15.0, rel=1e-3) and info["duration"] == pytest.approx(1.6, rel=1e-2)
    frames = decode_frames(path)
    assert frames.shape == (24, 96, 128, 3) and frames.dtype == np.uint8
    assert np.abs(frames.astype(np.int16) - clip24).mean() < 8  # lossy, but the same pictures
    x = read_clip(path, PRE)
    assert x.shape == (8, 3, 64, 64) and x.dtype == np.float32
    np.testing.assert_array_equal(x, preprocess_frames(frames[sample_indices(24, PRE)], PRE))


def test_seeking_gives_the_frames_of_a_full_decode(long_video):
    path, _ = long_video
    full = decode_frames(path)
    assert len(full) == 150 == video_info(path)["frames"]
    for start, count in [(0, 5), (37, 20), (48, 1), (130, 50)]:
        part = decode_frames(path, start, count)
        np.testing.assert_array_equal(part, full[start : start + count])
    pre = PreprocessConfig(num_frames=8, sampling_rate=4, sampling="dense", short_side=64, crop_size=64)
    for clip_index in range(4):
        idx = sample_indices(150, pre, clip_index, 4)
        np.testing.assert_array_equal(read_clip(path, pre, clip_index, 4), preprocess_frames(full[idx], pre))
    uniform = PreprocessConfig(num_frames=8, sampling_rate=1, sampling="uniform", short_side=64, crop_size=64)
    np.testing.assert_array_equal(
        read_clip(path, uniform), preprocess_frames(full[sample_indices(150, uniform)], uniform)
    )


def test_seeking_finds_frames_by_index(tmp_path):
    frames = coded_frames(120)
    path = encode(tmp_path / "coded.mp4", frames, options={"g": "10", "sc_threshold": "0", "crf": "10"})
    assert frame_ids(decode_frames(path)) == list(range(120))
    assert frame_ids(decode_frames(path, 73, 9)) == list(range(73, 82))
    with pytest.raises(VideoReadError, match="coded.mp4.*past the last frame"):
        decode_frames(path, 120)


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
def test_variable_frame_rate(tmp_path, suffix):
    n = 40
    gaps = np.random.default_rng(3).choice([20, 33, 50, 100, 250], size=n - 1)
    pts = [0] + np.cumsum(gaps).tolist()
    path = encode(tmp_path / f"vfr.{suffix}", coded_frames(n), pts_ms=pts, options={"crf": "10"})
    info = video_info(path)
    assert info["frames"] == n
    assert info["duration"] == pytest.approx(pts[-1] / 1000 * n / (n - 1), rel=0.02)
    assert frame_ids(decode_frames(path)) == list(range(n))  # every frame once, none duplicated or dropped
    assert frame_ids(decode_frames(path, 25, 6)) == list(range(25, 31))
    idx = sample_indices(n, PRE)
    clip = read_clip(path, PRE)
    expect = preprocess_frames(decode_frames(path)[idx], PRE)
    np.testing.assert_array_equal(clip, expect)


def test_odd_frame_sizes(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(10, 61, 97, 3), dtype=np.uint8)
    path = encode(tmp_path / "odd.mkv", frames, codec="ffv1", pix_fmt="bgr0")  # lossless RGB at odd sizes
    info = video_info(path)
    assert (info["width"], info["height"], info["frames"]) == (97, 61, 10)
    decoded = decode_frames(path)
    np.testing.assert_array_equal(decoded, frames)
    pre = PreprocessConfig(num_frames=4, sampling_rate=2, sampling="dense", short_side=40, crop_size=32)
    np.testing.assert_array_equal(read_clip(path, pre), preprocess_frames(frames[sample_indices(10, pre)], pre))
    tall = encode(
        tmp_path / "tall.mkv", np.ascontiguousarray(frames.transpose(0, 2, 1, 3)), codec="ffv1", pix_fmt="bgr0"
    )
    assert read_clip(tall, pre).shape == (4, 3, 32, 32)


def test_three_crops(tmp_path, clip24):
    path = write_video(tmp_path / "c.mp4", clip24)
    frames = decode_frames(path)[sample_indices(24, PRE)]
    pre3 = PreprocessConfig.from_dict({**PRE.to_dict(), "num_crops": 3})
    crops = [read_clip(path, pre3, crop_index=k) for k in range(3)]
    for k in range(3):
        np.testing.assert_array_equal(crops[k], preprocess_frames(frames, pre3, crop_index=k))
    assert not np.array_equal(crops[0], crops[2]) and not np.array_equal(crops[0], crops[1])
    # 128x96 -> 85x64: left crop starts at column 0, the right one at 21; the centre crop equals the single crop
    np.testing.assert_array_equal(crops[1], read_clip(path, PRE))
    with pytest.raises(ValueError, match="crop_index"):
        read_clip(path, pre3, crop_index=3)


def test_short_clip_is_padded_by_repeating_frames(tmp_path):
    path = encode(tmp_path / "short.mp4", coded_frames(5), options={"crf": "10"})
    idx = sample_indices(5, PRE)  # window of 15 frames over a 5-frame video
    assert idx.tolist() == [0, 2, 4, 4, 4, 4, 4, 4]
    clip = read_clip(path, PRE)
    frames = decode_frames(path)
    assert frame_ids(frames) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(clip, preprocess_frames(frames[idx], PRE))
    for t in range(3, 8):
        np.testing.assert_array_equal(clip[t], clip[2])  # the last frame, repeated
    assert not np.array_equal(clip[0], clip[1])


def _bad_files(tmp_path: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    files = {
        "empty": tmp_path / "empty.mp4",
        "truncated": tmp_path / "truncated.mp4",
        "garbage": tmp_path / "garbage.mp4",
        "text": tmp_path / "notes.txt",
        "audio": tmp_path / "tone.wav",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["text"].write_text("this is not a video\n" * 20)
    with av.open(str(files["audio"]), "w") as out:  # a valid file without a video stream
        s = out.add_stream("pcm_s16le", rate=8000)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode():
            out.mux(p)
    return files


def test_bad_files_raise_video_read_error_naming_the_file(tmp_path, clip24):
    good = write_video(tmp_path / "good.mp4", clip24)
    bad = _bad_files(tmp_path, good)
    expected = {
        "empty": "empty",
        "truncated": "not a readable video",
        "garbage": "not a readable video",
        "text": "not a readable video",
        "audio": "expected a video stream, found audio",
    }
    for kind, path in bad.items():
        for fn in (decode_frames, video_info, lambda p: read_clip(p, PRE)):
            with pytest.raises(VideoReadError) as e:
                fn(path)
            assert str(path) in str(e.value) and expected[kind] in str(e.value), (kind, str(e.value))
    with pytest.raises(VideoReadError, match="missing.mp4: no such file"):
        read_clip(tmp_path / "missing.mp4", PRE)
    assert issubclass(VideoReadError, ValueError)


def test_read_clips_skips_and_reports_bad_files(tmp_path, clip24):
    good = write_video(tmp_path / "good.mp4", clip24)
    bad = _bad_files(tmp_path, good)
    paths = [good, bad["text"], good, bad["empty"]]
    clips, errors = read_clips(paths, PRE, progress=False, on_error="skip")
    assert clips.shape == (2, 8, 3, 64, 64)
    np.testing.assert_array_equal(clips[0], read_clip(good, PRE))
    assert len(errors) == 2 and str(bad["text"]) in errors[0] and str(bad["empty"]) in errors[1]
    with pytest.raises(VideoReadError, match="notes.txt"):
        read_clips(paths, PRE, progress=False)


def test_a_late_dense_window_does_not_decode_the_whole_file(long_video):
    from calibration.clips import video_reader

    class Counting:  # wraps the container to count decoded frames
        def __init__(self, container):
            self._c, self.decoded = container, 0

        def decode(self, *args, **kwargs):
            for frame in self._c.decode(*args, **kwargs):
                self.decoded += 1
                yield frame

        def __getattr__(self, name):
            return getattr(self._c, name)

    path, _ = long_video
    with video_reader._Video(path) as v:
        v.container = Counting(v.container)
        got = v.frames(range(120, 135))  # keyframes every 16 frames: decoding starts at frame 112
        assert sorted(got) == list(range(120, 135))
        assert v.container.decoded <= 135 - 112 + 4  # a few more for B-frame reordering, never all 150
