"""Calibration clips widened beyond their cameras (calibration.clips.widen) and where the INT8 build uses them."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.preprocess import PreprocessConfig

from calibration.clips.widen import widen_clips, widen_record


def _pre() -> PreprocessConfig:
    return PreprocessConfig(num_frames=2, crop_size=8, short_side=8, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))


def test_widened_clips_keep_the_originals_and_stay_in_the_pixel_range():
    pre = _pre()
    mean = np.asarray(pre.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(3, 1, 1)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0.3, 0.5, (16, 2, 3, 8, 8)).astype(np.float32)  # a dim, low-contrast camera
    clips = (pixels - mean) / std
    out = widen_clips(clips, pre, seed=3)
    assert out.dtype == np.float32 and out.shape == (16 + 16 + 2,) + clips.shape[1:]
    np.testing.assert_array_equal(out[:16], clips)
    back = out * std + mean  # in 0..1 again: every variant is a picture a camera could send
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5
    assert np.ptp(back[16:32]) > np.ptp(pixels) and np.ptp(back[32:]) > 0.95  # wider: exposure, sensor, noise
    np.testing.assert_array_equal(out, widen_clips(clips, pre, seed=3))  # deterministic for a seed
    assert not np.array_equal(out[16:], widen_clips(clips, pre, seed=4)[16:])
    assert widen_record(16)["noise_clips"] == 2 and widen_record(64)["noise_clips"] == 8


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 4, 8, 8)])
def test_widen_refuses_what_is_not_clips(shape):
    with pytest.raises(ValueError, match=r"expected \(N, T, 3, H, W\)"):
        widen_clips(np.zeros(shape, np.float32), _pre())


def test_the_int8_build_widens_every_calibration_source(tmp_path, monkeypatch):
    """precision_onnx hands quantize_int8 the widened clips (and SmoothQuant alpha 0.7) for saved clips and for the
    synthetic generator alike; ``widen=False`` turns it off; an alpha asked for is kept; the ranges are keyed
    apart."""
    from calibration.precision import build, int8

    seen = []

    def fake_quantize(fp32, out, target, method, get_clips, set_sha, cache_dir, **kw):
        seen.append({"n": len(get_clips()), "sha": set_sha() if callable(set_sha) else set_sha, **kw})
        out.write_bytes(b"x")
        return {"form": "dynamic", "calibration_cache": None}

    monkeypatch.setattr(int8, "quantize_int8", fake_quantize)
    monkeypatch.setattr(build, "_record_result", lambda out, *a, **k: {"seconds": 0.0})
    pre = PreprocessConfig(num_frames=2, crop_size=8, short_side=8)
    np.save(tmp_path / "clips.npy", np.zeros((4, 2, 3, 8, 8), np.float32))
    fp32 = tmp_path / "m.onnx"
    fp32.write_bytes(b"onnx")
    tensors = str(tmp_path / "clips.npy")
    for calib, widen, options in ((tensors, None, None), (tensors, False, None), (None, None, None), (None, None, 0.5)):
        build.precision_onnx(
            fp32, "int8", "onnxruntime", calib, pre, 4, "max", tmp_path / "c", 0, widen=widen,
            int8_options=None if options is None else {"smooth": options},
        )  # fmt: skip
    widened, plain, synthetic, asked = seen
    assert widened["n"] == 4 + 4 + 2 and widened["smooth"] == 0.7
    assert synthetic["n"] == 4 + 4 + 2 and synthetic["smooth"] == 0.7
    assert plain["n"] == 4 and "smooth" not in plain and asked["smooth"] == 0.5
    assert widened["sha"] != plain["sha"]  # cached ranges of one are never read for the other
