"""runtime.Engine on real bundles and real video files: parity with PyTorch, streaming, errors, threads, no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from runtime import BundleError, ClipStream, Engine, InputError, PreprocessConfig, preprocess_frames
from runtime.manifest import describe_files
from runtime.preprocess import sample_indices
from tests.support.concurrency import run_in_threads

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine(fp32_bundle):
    with Engine(fp32_bundle) as e:
        yield e


def _torch_logits(model, clip: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(clip))[None]).numpy()[0]


# --------------------------------------------------------------------------- preprocessing is the published one


def _torch_preprocess(frames: np.ndarray, cfg: PreprocessConfig, crop_index: int = 1) -> np.ndarray:
    """Reference: float resize of the short side (bilinear, align_corners=False), crop, normalise (torch)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    if h <= w:
        size = (cfg.short_side, int(np.floor(w * cfg.short_side / h)))
    else:
        size = (int(np.floor(h * cfg.short_side / w)), cfg.short_side)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    nh, nw = size
    top, left = (nh - cfg.crop_size) // 2, (nw - cfg.crop_size) // 2
    if cfg.num_crops == 3:
        if nh > nw:
            top = [0, top, nh - cfg.crop_size][crop_index]
        else:
            left = [0, left, nw - cfg.crop_size][crop_index]
    x = x[..., top : top + cfg.crop_size, left : left + cfg.crop_size] / 255.0
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return ((x - mean) / std).numpy()


@pytest.mark.parametrize("size", [(480, 640), (240, 320), (61, 97), (640, 360), (40, 50), (1, 300)])
@pytest.mark.parametrize("num_crops,crop_index", [(1, 1), (3, 0), (3, 2)])
def test_preprocess_matches_torch_interpolate(size, num_crops, crop_index):
    cfg = PreprocessConfig(
        num_frames=3,
        sampling_rate=2,
        short_side=56,
        crop_size=48,
        num_crops=num_crops,
        mean=(0.4, 0.45, 0.5),
        std=(0.2, 0.225, 0.25),
    )
    frames = np.random.default_rng(0).integers(0, 256, (3,) + size + (3,), dtype=np.uint8)
    ours = preprocess_frames(frames, cfg, crop_index=crop_index)
    ref = _torch_preprocess(frames, cfg, crop_index)
    assert ours.shape == ref.shape == (3, 3, 48, 48)
    assert np.abs(ours - ref).max() < 1e-5  # float32 rounding only
    # BGR frames flagged as such give the same tensor.
    bgr = preprocess_frames(np.ascontiguousarray(frames[..., ::-1]), cfg, bgr=True, crop_index=crop_index)
    assert np.array_equal(bgr, ours)


def test_sampling_pads_short_videos_by_repeating_frames():
    cfg = PreprocessConfig(num_frames=8, sampling_rate=4)
    idx = sample_indices(10, cfg)  # window of 29 frames from a 10-frame video
    assert idx[0] == 0 and idx[-1] == 9 and len(idx) == 8 and np.all(np.diff(idx) >= 0)
    assert len(set(idx.tolist())) < 8  # frames repeat
    full = sample_indices(100, cfg)
    assert np.all(np.diff(full) == 4)
    assert abs((full[0] + full[-1]) / 2 - 49.5) <= 1  # the window is centred in the video


# --------------------------------------------------------------------------- parity with the PyTorch reference


def test_predict_on_decoded_video_matches_pytorch(engine, motion_model, heldout_videos):
    from calibration.clips.video_reader import decode_frames, read_clip

    tol = engine.manifest["tolerance"]["max_abs_logit"]
    correct = 0
    for path, label in heldout_videos:
        frames = decode_frames(path)
        pred = engine.predict(frames)
        ref = _torch_logits(motion_model, read_clip(path, engine.preprocess))
        assert pred.index == int(np.argmax(ref)), f"{path.name}: engine {pred.index} vs PyTorch {np.argmax(ref)}"
        assert np.abs(pred.logits - ref).max() < tol
        assert pred.label == engine.labels[pred.index]
        assert abs(sum(p for _, p in engine.predict(frames, top_k=engine.num_classes).top_k) - 1.0) < 1e-6
        correct += pred.index == label
    assert correct / len(heldout_videos) >= 0.9  # the labels are right, not only equal to PyTorch's


def test_predict_accepts_bgr_and_lists(engine, heldout_videos):
    from calibration.clips.video_reader import decode_frames

    frames = decode_frames(heldout_videos[0][0])
    rgb = engine.predict(frames)
    bgr = engine.predict([np.ascontiguousarray(f[..., ::-1]) for f in frames], bgr=True)
    assert np.array_equal(rgb.logits, bgr.logits)
    assert [lbl for lbl, _ in rgb.top_k] == [lbl for lbl, _ in bgr.top_k]


def test_infer_batches_within_range(engine):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3,) + engine.clip_shape).astype(np.float32)
    batched = engine.infer(x)
    single = np.concatenate([engine.infer(x[i : i + 1]) for i in range(3)])
    assert batched.shape == (3, engine.num_classes)
    assert np.abs(batched - single).max() < 1e-4


def test_stream_matches_clip_inference_and_pytorch(engine, motion_model, heldout_videos):
    """Fed frame by frame from a video file, the stream predicts on exactly the clips the model expects."""
    from runtime.video_source import iter_frames

    path, _ = heldout_videos[3]
    frames = list(iter_frames(path))
    cfg = engine.preprocess
    stream = engine.stream(every=cfg.sampling_rate)
    seen = []
    for i, frame in enumerate(frames):
        pred = stream.push(frame)
        if pred is not None:
            seen.append((i, pred))
    window = cfg.window()
    assert [i for i, _ in seen] == list(range(window - 1, len(frames), cfg.sampling_rate))
    for i, pred in seen:
        clip_frames = np.stack(frames[i - window + 1 : i + 1 : cfg.sampling_rate])
        clip = preprocess_frames(clip_frames, cfg)
        assert np.abs(pred.logits - engine.infer(clip[None])[0]).max() < 1e-5
        assert pred.index == int(np.argmax(_torch_logits(motion_model, clip)))


def test_stream_hands_the_ring_to_the_engine_without_copying(fp32_bundle):
    engine = Engine(fp32_bundle)
    seen = []
    real = engine.backend.infer
    engine.backend.infer = lambda x: (seen.append(x), real(x))[1]
    stream = ClipStream(engine, every=engine.preprocess.sampling_rate)
    rng = np.random.default_rng(0)
    for _ in range(engine.preprocess.window() + 3 * engine.preprocess.sampling_rate):
        stream.push(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8))
    assert len(seen) == 4
    assert all(np.shares_memory(x, stream._ring) for x in seen)
    # Each sampled frame was preprocessed once: the ring holds it twice (slot j and j + T), no more.
    assert stream._sampled == engine.preprocess.num_frames + 3


def test_stream_rejects_bad_frames_and_restarts_on_resolution_change(engine):
    stream = engine.stream()
    with pytest.raises(InputError, match=r"expected \(H, W, 3\) uint8, got \(3, 72, 96\) uint8"):
        stream.push(np.zeros((3, 72, 96), np.uint8))
    stream.push(np.zeros((72, 96, 3), np.uint8))
    stream.push(np.zeros((96, 128, 3), np.uint8))
    assert stream.frames_seen == 1
    with pytest.raises(ValueError, match="multiple of the sampling rate"):
        engine.stream(every=engine.preprocess.sampling_rate + 1)


# --------------------------------------------------------------------------- errors that help


def test_input_errors_name_expected_and_actual(engine):
    t = engine.preprocess.num_frames
    c = engine.clip_shape
    with pytest.raises(InputError, match=rf"expected at least {t} frames .* got 3"):
        engine.predict(np.zeros((3, 72, 96, 3), np.uint8))
    with pytest.raises(InputError, match="expected dtype uint8 .* got float32"):
        engine.predict(np.zeros((t, 72, 96, 3), np.float32))
    with pytest.raises(InputError, match="channels first"):
        engine.predict(np.zeros((t, 3, 72, 96), np.uint8))
    with pytest.raises(InputError, match="one size"):
        engine.predict([np.zeros((72, 96, 3), np.uint8)] * (t - 1) + [np.zeros((70, 96, 3), np.uint8)])
    with pytest.raises(
        InputError, match=r"video: expected shape \(batch, 8, 3, 64, 64\) \[BTCHW\], got \(1, 8, 64, 64, 3\)"
    ):
        engine.infer(np.zeros((1, c[0], c[2], c[3], 3), np.float32))
    with pytest.raises(InputError, match="add the batch axis"):
        engine.infer(np.zeros(c, np.float32))
    with pytest.raises(InputError, match=r"batch 5 outside this engine's range 1\.\.4"):
        engine.infer(np.zeros((5,) + c, np.float32))
    with pytest.raises(InputError, match="expected dtype float32, got float64"):
        engine.infer(np.zeros((1,) + c, np.float64))


def _copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rehash(bundle: Path) -> None:
    """Record the bundle's current files in its manifest (as a builder would), so the test reaches later checks."""
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"] = describe_files(bundle, m["files"])
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_bundle_errors_name_the_file(fp32_bundle, tmp_path):
    with pytest.raises(BundleError, match="not a bundle directory"):
        Engine(tmp_path / "nowhere")
    b = _copy_bundle(fp32_bundle, tmp_path / "a")
    (b / "manifest.json").write_text("{ not json")
    with pytest.raises(BundleError, match=r"a/manifest.json: not valid JSON"):
        Engine(b)
    b = _copy_bundle(fp32_bundle, tmp_path / "b")
    (b / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"b/model.onnx: missing from the bundle"):
        Engine(b)
    b = _copy_bundle(fp32_bundle, tmp_path / "c")
    (b / "labels.txt").write_text("one\ntwo\n")
    _rehash(b)
    with pytest.raises(BundleError, match=r"labels.txt: 2 labels, but the engine outputs 8 classes"):
        Engine(b)
    b = _copy_bundle(fp32_bundle, tmp_path / "d")
    (b / "model.onnx").write_bytes(b"\x08\x07garbage" * 10)
    _rehash(b)
    with pytest.raises(RuntimeError, match=r"d/model.onnx: ONNX Runtime cannot load it"):
        Engine(b)
    b = _copy_bundle(fp32_bundle, tmp_path / "e")
    m = json.loads((b / "manifest.json").read_text())
    m["schema_version"] = 99
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"e/manifest.json: schema_version: expected 2, got 99"):
        Engine(b)
    with pytest.raises(ValueError, match="device: expected one of"):
        Engine(fp32_bundle, device="npu")


# --------------------------------------------------------------------------- threads


def test_one_engine_shared_by_threads(engine):
    """ONNX Runtime sessions are thread-safe: concurrent calls give the sequential results."""
    rng = np.random.default_rng(3)
    clips = rng.standard_normal((8, 1) + engine.clip_shape).astype(np.float32)
    expected = [engine.infer(c) for c in clips]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(3):
            results[i] = engine.infer(clips[i])

    errors = run_in_threads(work, 8)
    assert not errors
    for i in range(8):
        assert np.abs(results[i] - expected[i]).max() < 1e-5


def test_serialising_backends_take_the_lock(fp32_bundle):
    """A backend that is not thread-safe (TensorRT: one context, one stream) never runs two calls at once."""
    engine = Engine(fp32_bundle)
    engine.backend.thread_safe = False
    engine._lock = threading.Lock()
    active, peak = [0], [0]
    real = engine.backend.infer

    def guarded(x):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            return real(x)
        finally:
            active[0] -= 1

    engine.backend.infer = guarded
    x = np.zeros((1,) + engine.clip_shape, np.float32)
    threads = [threading.Thread(target=lambda: [engine.infer(x) for _ in range(3)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1


# --------------------------------------------------------------------------- what an app needs, and only that


def test_runtime_never_imports_torch_or_the_project(fp32_bundle, heldout_videos):
    code = f"""
import sys
import runtime
from runtime.video_source import iter_frames
e = runtime.Engine({str(fp32_bundle)!r})
frames = list(iter_frames({str(heldout_videos[0][0])!r}))
print(e.predict(frames).label)
s = e.stream()
for f in frames:
    s.push(f)
bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'models', 'export', 'calibration', 'transformers')]
assert not bad, bad
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in Engine(fp32_bundle).labels


def test_camera_app_cli_prints_and_writes_annotated_video(fp32_bundle, heldout_videos, tmp_path):
    from calibration.clips.video_reader import video_info

    src, _ = heldout_videos[5]
    out = tmp_path / "annotated.mp4"
    res = subprocess.run(
        [sys.executable, "-m", "runtime", str(fp32_bundle), str(src), "--top-k", "2", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("frame")]
    assert lines and all("ms)" in ln for ln in lines)
    labels = Engine(fp32_bundle).labels
    assert all(any(lbl in ln for lbl in labels) for ln in lines)
    info = video_info(src)
    assert video_info(out)["frames"] == info["frames"]
    bad = subprocess.run(
        [sys.executable, "-m", "runtime", str(fp32_bundle), str(tmp_path / "missing.mp4")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "missing.mp4" in bad.stderr
