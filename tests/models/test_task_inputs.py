"""Labels and preprocessing given or inferred (models/task_inputs.py, issue 26), on the files a user brings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models import TimeSformerConfig
from models.task_inputs import TaskInputError, hf_preprocess, read_labels_file, read_preprocess, resolve_task_inputs
from runtime.preprocess import PreprocessConfig

K400 = TimeSformerConfig(
    image_size=32, patch_size=16, num_frames=2, embed_dim=48, depth=1, num_heads=2, num_classes=400
)
SSV2 = K400.replace(num_classes=174)


@pytest.mark.parametrize(
    "name,content",
    [
        ("l.txt", "a\nb\nc\n\n"),
        ("l.json", '["a", "b", "c"]'),
        ("l.json", '{"0": "a", "2": "c", "1": "b"}'),
        ("l.json", '{"id2label": {"0": "a", "1": "b", "2": "c"}}'),
    ],
)
def test_label_files_in_every_form(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    assert read_labels_file(tmp_path / name, 3) == ["a", "b", "c"]


def test_a_label_file_of_the_wrong_length_names_the_option(tmp_path):
    (tmp_path / "l.txt").write_text("a\nb\n")
    with pytest.raises(TaskInputError, match=r"^LABELS=.*l\.txt: 2 labels, but the model's head has 3 classes$"):
        read_labels_file(tmp_path / "l.txt", 3)


def test_hf_image_processor_fields_become_the_contract():
    base = PreprocessConfig(2, 4, "dense", 32, 32)
    pre, notes = hf_preprocess(
        {
            "size": {"shortest_edge": 40},
            "crop_size": {"height": 32, "width": 32},
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "resample": 3,
        },
        base,
        "p",
    )
    assert (pre.short_side, pre.crop_size, pre.mean, pre.std) == (40, 32, (0.5,) * 3, (0.5,) * 3)
    assert (pre.num_frames, pre.sampling_rate) == (2, 4) and notes == [
        "p asks for bicubic resampling; the runtime resizes bilinear"
    ]
    # no normalisation: pixels / 255 as they are; no rescale either: raw 0..255 values (std 1/255)
    pre, _ = hf_preprocess({"do_normalize": False, "size": 32}, base, "p")
    assert pre.mean == (0.0,) * 3 and pre.std == (1.0,) * 3
    pre, _ = hf_preprocess({"do_normalize": False, "do_rescale": False, "size": 32}, base, "p")
    assert np.allclose(pre.std, 1 / 255)
    with pytest.raises(TaskInputError, match=r"p: size: expected an integer, .*'shortest_edge'"):
        hf_preprocess({"size": {"height": 32, "width": 48}}, base, "p")


def test_what_is_inferred_and_from_where(tmp_path):
    k400 = resolve_task_inputs(K400)
    assert k400.labels[0] == "abseiling" and k400.labels_from.startswith("Kinetics-400 (models/labels/kinetics400.txt")
    assert (k400.preprocess.sampling, k400.preprocess.sampling_rate) == ("dense", 128)
    ssv2 = resolve_task_inputs(SSV2)
    assert ssv2.preprocess.channel_order == "BGR" and ssv2.preprocess.sampling == "uniform"
    other = resolve_task_inputs(K400.replace(num_classes=7))
    assert other.labels == [f"class_{i}" for i in range(7)] and "set LABELS=<file>" in other.labels_from
    assert "set PREPROCESS=" in other.preprocess_from
    (tmp_path / "p.json").write_text(json.dumps({"sampling_rate": 8}))
    given = resolve_task_inputs(K400, preprocess=str(tmp_path / "p.json"))
    assert given.preprocess.sampling_rate == 8 and given.preprocess_from.startswith(f"PREPROCESS={tmp_path / 'p.json'}")
    assert read_preprocess("base", PreprocessConfig())[0].short_side == 224
    random = resolve_task_inputs(K400, random_weights=True)
    assert random.labels[0] == "abseiling [random weights]" and random.notes[0].startswith("RANDOM WEIGHTS")


def test_transformers_placeholder_names_are_not_labels(tmp_path):
    """An HF folder whose id2label is transformers' LABEL_0.. default has no labels (the build then takes the
    published list by class count, or placeholders it says are placeholders)."""
    transformers = pytest.importorskip("transformers")
    import torch

    from models import load_checkpoint

    cfg = transformers.TimesformerConfig(
        image_size=32,
        patch_size=16,
        num_frames=2,
        hidden_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=96,
        num_labels=174,
    )
    torch.manual_seed(0)
    transformers.TimesformerForVideoClassification(cfg).save_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["id2label"]["0"] == "LABEL_0"
    assert load_checkpoint(tmp_path / "hf").labels is None
