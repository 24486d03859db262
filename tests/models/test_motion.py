"""The synthetic motion clips and the committed motion model, through real encoded files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from calibration.clips.synthetic import CLASSES, generate_dataset, read_dataset, render_clip, write_video
from calibration.clips.video_reader import decode_frames, read_clip, video_info

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "weights" / "motion_tiny.safetensors"
#: never used by models.train_motion (it trains on seed 0 and evaluates on seed 1)
FRESH_SEED = 777_001
PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7)]  # classes that differ only in the direction of time


@pytest.fixture(scope="module")
def model():
    from models import load_checkpoint

    torch.set_num_threads(2)
    if not MODEL.is_file():
        pytest.fail(f"{MODEL} is missing: it is committed to the repository (make train-motion rebuilds it)")
    return load_checkpoint(MODEL).eval()


@pytest.fixture(scope="module")
def fresh_clips(tmp_path_factory) -> list[tuple[Path, int]]:
    """48 held-out H.264 files (6 per class) from a seed the training never saw."""
    return generate_dataset(tmp_path_factory.mktemp("fresh"), 48, FRESH_SEED, progress=False)


def _predict(model, paths: list[Path]) -> np.ndarray:
    x = torch.from_numpy(np.stack([read_clip(p, model.preprocess) for p in paths]))
    with torch.no_grad():
        return model(x).argmax(1).numpy()


def test_classes_are_the_published_pairs():
    assert len(CLASSES) >= 8 and len(set(CLASSES)) == len(CLASSES)
    assert CLASSES[:8] == [
        "move_left",
        "move_right",
        "move_up",
        "move_down",
        "rotate_cw",
        "rotate_ccw",
        "grow",
        "shrink",
    ]


def test_render_clip_shape_and_label_check():
    clip = render_clip(4, np.random.default_rng(0), width=80, height=64, num_frames=10)
    assert clip.shape == (10, 64, 80, 3) and clip.dtype == np.uint8
    assert clip.std() > 10  # textured, not a flat picture
    with pytest.raises(ValueError, match="label"):
        render_clip(len(CLASSES), np.random.default_rng(0))


def test_a_single_frame_cannot_tell_a_pair_apart():
    # Every class draws the same scene; the pair differs only in the sign of the motion. With an odd number
    # of frames the middle frame is the same picture for both classes of a pair, bit for bit.
    for seed in range(3):
        for a, b in PAIRS:
            fa = render_clip(a, np.random.default_rng([seed, a]), num_frames=25)
            fb = render_clip(b, np.random.default_rng([seed, a]), num_frames=25)
            np.testing.assert_array_equal(fa[12], fb[12])
            assert not np.array_equal(fa[0], fb[0]) and not np.array_equal(fa[-1], fb[-1])


def test_every_clip_moves_within_the_model_window():
    # the model sees frames 4..18 of a 24-frame clip: the shape must change there by more than noise and shake
    for label in range(len(CLASSES)):
        for seed in range(6):
            c = render_clip(label, np.random.default_rng([123, label, seed])).astype(np.int16)
            changed = (np.abs(c[18] - c[4]).sum(-1) > 150).sum()
            assert changed >= 30, (CLASSES[label], seed, changed)


def test_generator_is_deterministic_and_seeds_differ(tmp_path):
    a = generate_dataset(tmp_path / "a", 8, seed=5, progress=False)
    b = generate_dataset(tmp_path / "b", 8, seed=5, progress=False)
    c = generate_dataset(tmp_path / "c", 8, seed=6, progress=False)
    assert [lbl for _, lbl in a] == [lbl for _, lbl in b]
    for (pa, _), (pb, _), (pc, _) in zip(a, b, c):
        fa = decode_frames(pa)
        np.testing.assert_array_equal(fa, decode_frames(pb))
        assert not np.array_equal(fa, decode_frames(pc))


def test_dataset_files_labels_and_balance(tmp_path):
    items = generate_dataset(tmp_path / "d", 24, seed=1, progress=False)
    assert Counter(lbl for _, lbl in items) == {k: 3 for k in range(8)}
    assert read_dataset(tmp_path / "d") == items
    assert (tmp_path / "d" / "classes.txt").read_text().split() == CLASSES
    rows = (tmp_path / "d" / "labels.csv").read_text().splitlines()
    assert rows[0] == "file,label_index,label_name" and len(rows) == 25
    name, idx, label = rows[1].split(",")
    assert CLASSES[int(idx)] == label and (tmp_path / "d" / name).is_file()
    info = video_info(items[0][0])
    assert (info["codec"], info["width"], info["height"], info["frames"]) == ("h264", 128, 96, 24)
    assert not list((tmp_path / "d").glob("*.tmp*")) and not list((tmp_path / "d").glob(".*"))


def test_other_containers(tmp_path):
    mkv = generate_dataset(tmp_path / "mkv", 2, seed=2, container="mkv", progress=False)
    avi = generate_dataset(tmp_path / "avi", 2, seed=2, container="avi", progress=False)
    assert mkv[0][0].suffix == ".mkv" and avi[0][0].suffix == ".avi"
    assert video_info(avi[0][0])["codec"] == "mpeg4"
    # the same clips, whatever the container: the lossy codecs differ only a little
    diff = np.abs(decode_frames(mkv[0][0]).astype(np.int16) - decode_frames(avi[0][0])).mean()
    assert diff < 8


def test_read_dataset_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"labels\.csv"):
        read_dataset(tmp_path)
    (tmp_path / "labels.csv").write_text("file,label_index,label_name\nclip.mp4,3,grow\n")
    with pytest.raises(ValueError, match=r"labels\.csv:2: label 3 'grow'"):
        read_dataset(tmp_path)
    (tmp_path / "labels.csv").write_text("file,label_index,label_name\nclip.mp4,3,move_down\n")
    with pytest.raises(FileNotFoundError, match=r"clip\.mp4 is missing"):
        read_dataset(tmp_path)


def test_cli_writes_a_dataset(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "calibration.clips.synthetic", str(tmp_path / "cli"), "--clips", "3", "--seed", "9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert len(read_dataset(tmp_path / "cli")) == 3


def test_committed_model_metadata(model):
    assert model.config.num_classes == len(CLASSES) and model.labels == CLASSES
    assert model.config.attention_type == "divided_space_time" and model.config.image_size == 64
    pre = model.preprocess
    assert (pre.num_frames, pre.sampling, pre.crop_size, pre.short_side) == (8, "dense", 64, 64)
    meta = json.loads(MODEL.with_suffix(".json").read_text())["metadata"]
    assert meta["heldout_seed"] != meta["seed"] and 0.0 <= meta["heldout_accuracy"] <= 1.0


def test_committed_model_meets_the_recorded_bar():
    meta = json.loads(MODEL.with_suffix(".json").read_text())["metadata"]
    assert meta["heldout_accuracy"] >= 0.95


def test_committed_model_on_fresh_heldout_files(model, fresh_clips):
    assert Counter(lbl for _, lbl in fresh_clips) == {k: 6 for k in range(8)}
    pred = _predict(model, [p for p, _ in fresh_clips])
    truth = np.array([lbl for _, lbl in fresh_clips])
    accuracy = float((pred == truth).mean())
    assert accuracy >= 0.95, (
        f"top-1 {accuracy:.3f} on {len(truth)} fresh clips; confusions: "
        f"{[(CLASSES[t], CLASSES[p]) for t, p in zip(truth, pred) if t != p]}"
    )


def test_model_needs_time_order(model, fresh_clips, tmp_path):
    # The same frames played backwards are the paired class: a model that looked at single frames could not flip.
    swap = {a: b for a, b in PAIRS} | {b: a for a, b in PAIRS}
    chosen = fresh_clips[:16]
    reversed_paths = []
    for i, (path, _) in enumerate(chosen):
        reversed_paths.append(write_video(tmp_path / f"rev_{i}.mp4", decode_frames(path)[::-1].copy()))
    pred = _predict(model, reversed_paths)
    flipped = np.mean([p == swap[lbl] for p, (_, lbl) in zip(pred, chosen)])
    assert flipped >= 0.9


def test_motion_init_makes_temporal_attention_look_at_neighbouring_frames():
    from models.config import get_preset
    from models.timesformer import TimeSformer
    from models.train_motion import init_for_motion

    torch.manual_seed(0)
    model = TimeSformer(get_preset("motion_8x64").config)
    init_for_motion(model)
    blk = model.blocks[0]
    clip = render_clip(0, np.random.default_rng(3), width=64, height=64, num_frames=8)
    frames = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        tokens, _ = model.patch_embed((frames - 0.45) / 0.225)
        x = (tokens + model.pos_embed[:, 1:]).transpose(0, 1) + model.time_embed  # (patches, frames, dim)
        q, k, _ = blk.temporal_attn.qkv(blk.temporal_norm1(x)).chunk(3, dim=-1)
    hd = model.config.embed_dim // model.config.num_heads
    for head, shift in enumerate((-1, 1, 0)):
        qh, kh = q[..., head * hd : (head + 1) * hd], k[..., head * hd : (head + 1) * hd]
        attn = (qh @ kh.transpose(1, 2) * hd**-0.5).softmax(-1).mean(0)  # (frames, frames), averaged over patches
        for f in range(8):
            if 0 <= f + shift < 8:
                assert attn[f].argmax() == f + shift and attn[f, f + shift] > 0.5, (head, f, attn[f])


def test_training_standardisation_folds_into_the_final_norm():
    from models.config import get_preset
    from models.timesformer import TimeSformer
    from models.train_motion import fold_standardisation, init_for_motion

    torch.manual_seed(0)
    cfg = get_preset("motion_8x64").config
    model = TimeSformer(cfg)
    init_for_motion(model)
    model.head = torch.nn.Sequential(torch.nn.BatchNorm1d(cfg.embed_dim, affine=False), model.head)
    model.train()
    with torch.no_grad():
        for _ in range(3):  # move the running statistics away from (0, 1)
            model(torch.randn(4, 8, 3, 64, 64) * 2 + 0.5)
    model.eval()
    folded = fold_standardisation(model, cfg)
    assert isinstance(folded.head, torch.nn.Linear)
    x = torch.randn(3, 8, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
