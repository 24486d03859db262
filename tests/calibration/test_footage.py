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
    """The TensorRT/OpenVINO Q/DQ file calibrated on vtest.avi (street camera), run as exact fake quantisation in
    ONNX Runtime and in the portable CPU form (7-bit weights, float q·kᵀ/p·v), on cup.mp4 and tree.avi (hand-held):
    measured mean cosine 0.9982 / min 0.987 (portable form: 0.9963 / 0.982, what 7-bit weights cost) against FP32
    PyTorch, where calibrating on the synthetic generator gives a lower min. Issue 25's bar (mean >= 0.999,
    min >= 0.99) is NOT met yet on real footage (best of max/percentile/entropy/mse x SmoothQuant off/0.5/0.8:
    mean 0.99875, min 0.9905); these bounds guard what is reached."""
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
    mins = {}
    for calib in (str(FOOTAGE / CALIB), None):  # None: the synthetic generator
        qdq, _ = precision_onnx(
            fp32, "int8", "tensorrt", calib, pre, 32, "max", tmp_path, 0, form="qdq-fp32", progress=False
        )
        cos = _cosines(run_logits(qdq, clips), ref)
        mins[calib] = float(cos.min())
        if calib is None:
            break
        assert cos.mean() >= 0.998 and cos.min() >= 0.98, (cos.mean(), cos.min())
        model = onnx.load(str(qdq))
        to_cpu_int8_form(model, "portable")
        portable = tmp_path / "portable.onnx"
        onnx.save(model, str(portable))
        cos_p = _cosines(run_logits(portable, clips), ref)
        assert cos_p.mean() >= 0.995 and cos_p.min() >= 0.975, (cos_p.mean(), cos_p.min())  # 7 bits cost here
    assert mins[str(FOOTAGE / CALIB)] > mins[None], mins  # real calibration generalises better to real footage
