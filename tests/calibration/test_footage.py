"""Real camera footage (issue 25): OpenCV's sample videos from Debian's opencv-doc (``make footage``). INT8 of the
motion model calibrated on one real video holds on other real videos, as exact fake quantisation in ONNX Runtime
and as the OpenVINO bundle's CPU INT8 form on the AVX2-only path. Skips, naming the install command, without them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration.clips.footage import INSTALL_HINT, VIDEOS, find_footage, main

ROOT = Path(__file__).resolve().parents[2]
FOOTAGE = find_footage(ROOT / "artifacts" / "footage")
needs_footage = pytest.mark.skipif(FOOTAGE is None, reason=f"no real footage here: {INSTALL_HINT}")
#: calibrated on this video, evaluated on the others (decodable by calibration.clips.video_reader)
CALIB, HELD_OUT = "vtest.avi", ("cup.mp4", "tree.avi")
#: the portable CPU INT8 form with its 7-bit weights narrowed from the 8-bit file (one more rounding): measured
#: 0.9974-0.9980 / 0.982-0.987, short of the bar; quantized from float, as make engine builds it, it meets the bar
NARROWED_MEAN, NARROWED_MIN = 0.996, 0.975


def test_cli_finds_the_footage_or_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TIMESFORMER_FOOTAGE", raising=False)
    rc = main(["--dest", str(tmp_path / "f")])
    out, err = capsys.readouterr()
    if rc == 0:  # the package is installed system-wide: the videos were decompressed into --dest
        assert Path(out.strip()) == tmp_path / "f"
        assert all((tmp_path / "f" / n).stat().st_size > 100_000 for n in VIDEOS)
    else:
        assert rc == 2 and "make footage" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def real_clips():
    import torch

    from calibration.clips.calibset import load_calibration_set
    from models import load_source

    net, _, pre, _ = load_source(str(ROOT / "models" / "weights" / "motion_tiny.safetensors"))
    clips = np.concatenate([load_calibration_set(str(FOOTAGE / v), pre, 12, 0, progress=False).clips for v in HELD_OUT])
    with torch.no_grad():
        ref = net(torch.from_numpy(clips)).numpy()
    return pre, clips, ref


def _cosines(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (y * ref).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(ref, axis=1)


@needs_footage
def test_int8_calibrated_on_real_video_holds_on_other_real_videos(real_clips, tmp_path):
    """The TensorRT/OpenVINO Q/DQ file calibrated on vtest.avi (street camera) as ``make engine`` calibrates on
    footage (clips widened by calibration.clips.widen, SmoothQuant alpha 0.7), run as exact fake quantisation in
    ONNX Runtime and in the portable CPU form (7-bit weights, float q·kᵀ/p·v), on cup.mp4 and tree.avi (hand-held):
    issue 25's bar (mean cosine >= 0.999, min >= 0.99 against FP32 PyTorch) holds for the 8-bit file (measured
    0.9995 / 0.998 on 24 clips) and for the portable form as make engine builds it, 7-bit weights quantized from
    float (0.9993 / 0.998), not narrowed from the 8-bit file (which costs one more rounding). Calibrated on the
    synthetic generator (widened too) the 8-bit file meets it as well. Without widening, both miss it
    (0.9985 / 0.992 from vtest.avi; 0.9985 / 0.993 from the generator's 16 clips)."""
    import onnx

    from calibration.precision.cpu_int8 import to_cpu_int8_form
    from calibration.precision.int8_search import run_logits
    from export.bundle.fp32_cache import cached_fp32_onnx
    from export.bundle.precision_step import precision_onnx
    from export.onnx.attention import resolve_attention
    from models import load_source

    pre, clips, ref = real_clips
    net, labels, _, source = load_source(str(ROOT / "models" / "weights" / "motion_tiny.safetensors"))
    fp32 = cached_fp32_onnx(
        net, labels, pre, source, resolve_attention("auto", "tensorrt", None, precision="int8"), tmp_path, verbose=False
    )
    scores = {}
    for calib, widen in ((str(FOOTAGE / CALIB), None), (str(FOOTAGE / CALIB), False), (None, None), (None, False)):
        qdq, info = precision_onnx(
            fp32, "int8", "tensorrt", calib, pre, 32, "max", tmp_path, 0, form="qdq-fp32", progress=False, widen=widen
        )
        assert bool(info["detail"]["widened"]) == (widen is None), info["detail"]["widened"]
        cos = _cosines(run_logits(qdq, clips), ref)
        scores[(calib is not None, widen)] = (float(cos.mean()), float(cos.min()))
        if widen is False:
            continue
        assert info["detail"]["smoothquant"]["alpha"] == 0.7, info["detail"]["smoothquant"]
        assert cos.mean() >= 0.999 and cos.min() >= 0.99, (calib, cos.mean(), cos.min())
        if calib is None:
            continue
        seven, _ = precision_onnx(
            fp32, "int8", "tensorrt", calib, pre, 32, "max", tmp_path, 0, form="qdq-fp32", progress=False,
            int8_options={"weight_bits": 7},
        )  # fmt: skip
        for source, bar in ((qdq, (NARROWED_MEAN, NARROWED_MIN)), (seven, (0.999, 0.99))):
            model = onnx.load(str(source))
            rec = to_cpu_int8_form(model, "portable")
            assert rec["weights_7bit_from"] == ("float" if source == seven else "8-bit weights (narrowed)")
            portable = tmp_path / "portable.onnx"
            onnx.save(model, str(portable))
            cos_p = _cosines(run_logits(portable, clips), ref)
            assert cos_p.mean() >= bar[0] and cos_p.min() >= bar[1], (source.name, cos_p.mean(), cos_p.min())
    for real in (True, False):  # widening is what carries either calibration to other cameras
        widened, plain = scores[(real, None)], scores[(real, False)]
        assert widened[0] > plain[0] and widened[1] > plain[1], scores


@needs_footage
def test_onnxruntime_int8_on_real_footage(real_clips, tmp_path):
    """ONNX Runtime's dynamic INT8 (per-channel weights, SmoothQuant fitted on the widened vtest.avi clips), the
    form ``auto`` builds on every x86 without VNNI: issue 25's bar on cup.mp4 and tree.avi (measured 0.9997 / 0.998).
    ``run_logits`` runs it as the backend does, with the exact U8U8 kernels where U8S8 would saturate, so the same
    numbers hold on both kinds of CPU. Per-tensor weights (the earlier form) fell to a min of 0.92 here."""
    from calibration.precision.int8_search import run_logits
    from export.bundle.fp32_cache import cached_fp32_onnx
    from export.bundle.precision_step import precision_onnx
    from export.onnx.attention import resolve_attention
    from models import load_source

    pre, clips, ref = real_clips
    net, labels, _, source = load_source(str(ROOT / "models" / "weights" / "motion_tiny.safetensors"))
    fp32 = cached_fp32_onnx(
        net, labels, pre, source, resolve_attention("auto", "onnxruntime", None, precision="int8"), tmp_path, False
    )
    path, info = precision_onnx(
        fp32, "int8", "onnxruntime", str(FOOTAGE / CALIB), pre, 32, "max", tmp_path, 0, form="dynamic", progress=False
    )
    assert info["detail"]["weights"] == "int8 per-channel" and info["detail"]["widened"], info["detail"]
    cos = _cosines(run_logits(path, clips), ref)
    assert cos.mean() >= 0.999 and cos.min() >= 0.99, (cos.mean(), cos.min())


@needs_footage
def test_footage_720p_is_real_footage_as_a_720p_h264_stream(tmp_path, monkeypatch):
    """``make bench-cameras SOURCE=footage-720p``: vtest.avi's frames scaled to 1280x720 and encoded as H.264, made
    once; the frames are the street camera's (compared with the source's, scaled the same way)."""
    import av

    from export.bench.decode import footage_720p

    monkeypatch.setenv("TIMESFORMER_FOOTAGE", str(FOOTAGE))
    path = footage_720p(tmp_path / "f.mp4", seconds=1.0)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.width, s.height) == ("h264", 1280, 720)
        first = next(c.decode(s)).to_ndarray(format="rgb24")
    with av.open(str(FOOTAGE / "vtest.avi")) as c:
        src = next(c.decode(video=0)).to_ndarray(format="rgb24", width=1280, height=720, interpolation="BICUBIC")
    assert np.abs(first.astype(int) - src.astype(int)).mean() < 6  # the same picture, through one H.264 encode
    mtime = path.stat().st_mtime_ns
    assert footage_720p(path) == path and path.stat().st_mtime_ns == mtime  # made once
