"""The synthetic task registry: ``motion`` rendered exactly as before, ``motion16`` (slow/fast, distractor,
occluder) through real encoded files, and the committed motion16 model."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from calibration.clips import synthetic_hard
from calibration.clips.synthetic import (
    CLASSES,
    TASKS,
    dataset_task,
    generate_dataset,
    get_task,
    read_dataset,
    render_clip,
    task_of_metadata,
)

ROOT = Path(__file__).resolve().parents[2]
MOTION16 = ROOT / "models" / "weights" / "motion16.safetensors"
#: never used by models.train_motion (it trains on seed 0 and evaluates on seed 1)
FRESH_SEED = 777_016

# sha256 of render_clip(label, default_rng([0, i])) computed with calibration/clips/synthetic.py before tasks existed
# (a regression pin: the committed motion model and every cached "synthetic" set depend on these pixels)
MOTION_PINS = {
    (0, 0): "4d140d7b635fdbb20a0f3ef29f74977f613bc180dd58c2b1be26f76211553b4d",
    (3, 1): "ee928c8bff034e95241a07a2af02287058bfcdd7516884dfc4160c141a778a3a",
    (4, 2): "2be2fc4de688947625a44ca88fea22e10f6e8de180f7171587269a3ab9e84fc0",
    (7, 3): "8a9cb7e3836a1285c54acdca2da799c4f9bac2d7c54daa2bfe4cd40051b50343",
    (1, 4): "e2492dc3afaa46c3cc77095dc4783c1c4a5927b567cbdbdb879d8c88632b62cc",
    (6, 5): "1555bb9f806ac73b32d0d8c1b9b44eacfaf2b22a9a3a1d5bf8abce59d73f3a6a",
}
# generate_dataset(out, 10, seed=3, width=64, height=48, num_frames=6): labels.csv and classes.txt, before tasks
MOTION_DATASET_PINS = {
    "labels.csv": "b0812960d99f2eff95edd8db78d8c9e552f290eaa27466bb7ae88d074fce0dfc",
    "classes.txt": "94a64d814e14f8f4d06a27c2bafe57a53689425ca8cf92ac84225a7ef70b3df9",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------- motion, unchanged


def test_motion_rendering_is_byte_identical_to_before_tasks():
    for (label, i), digest in MOTION_PINS.items():
        assert _sha(render_clip(label, np.random.default_rng([0, i])).tobytes()) == digest, (label, i)
        assert _sha(TASKS["motion"].render(label, np.random.default_rng([0, i])).tobytes()) == digest
    small = render_clip(5, np.random.default_rng([7, 11]), 64, 48, 8)
    assert _sha(small.tobytes()) == "bf6a268a2b4a028d00331cc10a65006f31c023f767f089d48c9455061ab415ef"


def test_motion_dataset_files_are_unchanged(tmp_path):
    items = generate_dataset(tmp_path, 10, 3, 64, 48, 6, progress=False)
    for name, digest in MOTION_DATASET_PINS.items():
        assert _sha((tmp_path / name).read_bytes()) == digest, name
    assert (tmp_path / "task.txt").read_text() == "motion\n" and dataset_task(tmp_path) == "motion"
    (tmp_path / "task.txt").unlink()  # a folder written before tasks had names is the motion task
    assert read_dataset(tmp_path) == items and read_dataset(tmp_path, task="motion") == items


# ------------------------------------------------------------------------------------------------- motion16


def test_motion16_classes_and_registry():
    task = get_task("motion16")
    assert len(task.classes) == 16 == len(set(task.classes))
    assert task.classes == [f"{m}_{s}" for m in CLASSES for s in ("slow", "fast")]
    for perm in (task.hflip, task.vflip, task.reverse):
        assert sorted(perm) == list(range(16)) and [perm[perm[k]] for k in range(16)] == list(range(16))
    name = task.classes.index
    assert task.hflip[name("move_left_fast")] == name("move_right_fast")
    assert task.vflip[name("rotate_cw_slow")] == name("rotate_ccw_slow")
    assert task.reverse[name("grow_slow")] == name("shrink_slow")
    assert task.hflip[name("move_up_slow")] == name("move_up_slow")
    with pytest.raises(ValueError, match="motion, motion16"):
        get_task("motion17")


def test_motion16_speed_ranges_overlap_a_little():
    for k in range(0, 16, 2):
        (slo, shi), (flo, fhi) = synthetic_hard.speed_range(k), synthetic_hard.speed_range(k + 1)
        assert slo < flo < shi < fhi  # overlapping (not separable per clip) ...
        assert np.log(shi / flo) / np.log(shi / slo) < 0.15  # ... in a small part of each range


def test_motion16_render_shape_determinism_and_label_check():
    clip = synthetic_hard.render_clip(9, np.random.default_rng([4, 2]), width=80, height=64, num_frames=10)
    assert clip.shape == (10, 64, 80, 3) and clip.dtype == np.uint8 and clip.std() > 10
    np.testing.assert_array_equal(clip, synthetic_hard.render_clip(9, np.random.default_rng([4, 2]), 80, 64, 10))
    assert not np.array_equal(clip, synthetic_hard.render_clip(9, np.random.default_rng([4, 3]), 80, 64, 10))
    with pytest.raises(ValueError, match="label"):
        synthetic_hard.render_clip(16, np.random.default_rng(0))


def test_motion16_a_single_frame_cannot_tell_the_class():
    # all 16 classes draw the same scene and the motion is centred on the clip's middle: with an odd number of
    # frames the middle frame is the same picture for every class, slow or fast, bit for bit
    for seed in range(2):
        clips = [synthetic_hard.render_clip(k, np.random.default_rng([seed, 99]), 96, 72, 9) for k in range(16)]
        for k in range(1, 16):
            np.testing.assert_array_equal(clips[k][4], clips[0][4])
            assert not np.array_equal(clips[k][0], clips[0][0]), synthetic_hard.CLASSES[k]


def test_motion16_fast_clips_change_more_than_slow_ones():
    # over the same scenes, a fast clip's pixels change more from one frame to the next than a slow one's
    for k in range(0, 16, 2):
        diff = {}
        for label in (k, k + 1):
            clips = [
                synthetic_hard.render_clip(label, np.random.default_rng([55, s])).astype(np.int16) for s in range(6)
            ]
            diff[label] = np.mean([np.abs(np.diff(c, axis=0)).mean() for c in clips])
        assert diff[k + 1] > diff[k], (synthetic_hard.CLASSES[k], diff)


def test_motion16_dataset_round_trip_and_task_check(tmp_path):
    d = tmp_path / "m16"
    items = generate_dataset(d, 32, seed=4, width=64, height=48, num_frames=8, progress=False, task="motion16")
    assert Counter(lbl for _, lbl in items) == {k: 2 for k in range(16)}
    assert read_dataset(d) == items == read_dataset(d, task="motion16")
    assert (d / "task.txt").read_text() == "motion16\n"
    assert (d / "classes.txt").read_text().split() == synthetic_hard.CLASSES
    with pytest.raises(ValueError, match=r"task\.txt: expected clips of the synthetic task 'motion', found 'motion16'"):
        read_dataset(d, task="motion")
    # motion16 labels in a folder that says nothing about its task (the motion task): rejected, naming the file
    (d / "task.txt").unlink()
    with pytest.raises(
        ValueError,
        match=r"labels\.csv:2: label \d+ '\w+_(slow|fast)' is not a class of the task "
        r"'motion'",
    ):
        read_dataset(d)
    (d / "task.txt").write_text("motion99\n")
    with pytest.raises(ValueError, match=r"task\.txt: expected a synthetic task name"):
        read_dataset(d)


def test_cli_writes_a_motion16_dataset(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "calibration.clips.synthetic",
            str(tmp_path / "cli"),
            "--clips",
            "3",
            "--seed",
            "9",
            "--task",
            "motion16",
            "--width",
            "64",
            "--height",
            "48",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert dataset_task(tmp_path / "cli") == "motion16" and len(read_dataset(tmp_path / "cli")) == 3


# --------------------------------------------------------------------------------------------- the models


def test_train_motion16_smoke(tmp_path):
    import torch

    from models import load_checkpoint
    from models.train_motion import train

    torch.set_num_threads(2)
    meta = train(
        tmp_path / "m.safetensors",
        seed=3,
        clips=16,
        epochs=1,
        batch=8,
        heldout_clips=16,
        data_dir=str(tmp_path / "data"),
        progress=False,
        task="motion16",
        command="smoke",
    )
    model = load_checkpoint(tmp_path / "m.safetensors")
    assert model.labels == synthetic_hard.CLASSES and model.config.num_classes == 16
    assert meta["synthetic_task"] == "motion16" and meta["train_clips"] == 16 and meta["heldout_clips"] == 16
    assert np.array(meta["confusion"]).shape == (16, 16) and np.array(meta["confusion"]).sum() == 16
    assert meta["generator_sha256"] == get_task("motion16").source_hash()
    assert [p.name for p in (tmp_path / "data").iterdir() if p.is_dir()][0].startswith("motion16_")


def test_task_of_metadata():
    tiny = json.loads((ROOT / "models" / "weights" / "motion_tiny.json").read_text())["metadata"]
    assert "synthetic_task" not in tiny and task_of_metadata(tiny) == "motion"  # written before the key existed
    assert task_of_metadata({"synthetic_task": "motion16"}) == "motion16"
    assert task_of_metadata({"source": "kinetics"}) is None


def test_committed_motion16_model_and_recipe():
    from models import load_source

    if not MOTION16.is_file():
        pytest.fail(f"{MOTION16} is missing: it is committed (make train-motion TASK=motion16 rebuilds it)")
    net, labels, pre, _ = load_source(str(MOTION16))
    assert labels == synthetic_hard.CLASSES and net.config.num_classes == 16
    assert (net.config.embed_dim, net.config.depth, pre.num_frames, pre.crop_size) == (192, 4, 8, 64)
    meta = json.loads(MOTION16.with_suffix(".json").read_text())["metadata"]
    assert meta["synthetic_task"] == "motion16" and task_of_metadata(meta) == "motion16"
    assert meta["heldout_seed"] != meta["seed"] and meta["heldout_clips"] >= 800
    assert 0.85 <= meta["heldout_accuracy"] < 1.0  # high, and not 100 %: losses can show
    confusion = np.array(meta["confusion"])
    assert confusion.shape == (16, 16) and confusion.sum() == meta["heldout_clips"]
    assert meta["command"].startswith("python -m models.train_motion --task motion16")


def test_committed_motion16_model_on_fresh_files(tmp_path):
    import torch

    from calibration.clips.video_reader import read_clip
    from models import load_checkpoint

    torch.set_num_threads(2)
    model = load_checkpoint(MOTION16).eval()
    items = generate_dataset(tmp_path, 64, FRESH_SEED, progress=False, task="motion16")
    x = torch.from_numpy(np.stack([read_clip(p, model.preprocess) for p, _ in items]))
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    truth = np.array([lbl for _, lbl in items])
    assert (pred == truth).mean() >= 0.7  # ~0.9 expected; 64 clips is a small sample
    assert (pred // 2 == truth // 2).mean() >= 0.9  # the motion itself (ignoring speed) is almost always right


def test_the_generator_hash_follows_the_code_not_its_layout(tmp_path) -> None:
    """The committed model's recipe names its generator by a hash of the code's syntax tree, so a formatter run
    keeps the recorded hash valid while any change to what the code does breaks it."""
    from runtime.files import sha256_code

    src = (ROOT / "calibration" / "clips" / "synthetic_scene.py").read_text()
    (tmp_path / "a.py").write_text(src)
    (tmp_path / "b.py").write_text("# a comment\n\n" + src.replace("\n\n\n", "\n\n\n\n"))
    (tmp_path / "c.py").write_text(src.replace("import numpy as np", "import numpy as np\nX = 1", 1))
    assert sha256_code(tmp_path / "a.py") == sha256_code(tmp_path / "b.py")
    assert sha256_code(tmp_path / "a.py") != sha256_code(tmp_path / "c.py")
