"""Hostile checkpoint configs (issue 28, findings 13 and 18): every field is checked for type and range, and the
config against the file's tensors (depth, keys, shapes, parameter count), before any model is built; errors are
one line naming the file and the field, and ``make engine`` exits 2 with that line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import CheckpointError, TimeSformer, TimeSformerConfig, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TINY = TimeSformerConfig(image_size=32, patch_size=16, num_frames=4, embed_dim=48, depth=2, num_heads=2, num_classes=5)


@pytest.fixture
def ours(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(TimeSformer(TINY), tmp_path / "m.safetensors", labels=list("abcde"))


def _hf_dir(tmp_path: Path) -> Path:
    """A Hugging Face checkpoint folder of a small model (transformers' own writer)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.TimesformerConfig(
        image_size=32,
        patch_size=16,
        num_frames=4,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=192,
        num_labels=5,
    )
    torch.manual_seed(0)
    transformers.TimesformerForVideoClassification(cfg).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("depth", 10**9, r"m\.json: config: depth: expected an integer in 1\.\.256, got 1000000000"),
        ("depth", "4", r"m\.json: config: depth: expected an integer in 1\.\.256, got '4'"),
        ("embed_dim", 0, r"m\.json: config: embed_dim: expected an integer in 1\.\.16384, got 0"),
        ("image_size", 1_600_000, r"m\.json: config: image_size: expected an integer in 1\.\.4096"),
        ("mlp_ratio", float("inf"), r"m\.json: config: mlp_ratio: expected a number"),
        (
            "depth",
            200,
            r"m\.safetensors: depth: the config says 200 blocks, the weights hold 2 \(blocks\.0\.\.blocks\.1\)",
        ),
        (
            "image_size",
            4096,
            r"m\.safetensors: key 'pos_embed': expected shape \(1, 65537, 48\), got \(1, 5, 48\) \(set "
            r"by the config's image_size / patch_size; the config describes [\d,]+ parameters",
        ),
        ("num_frames", 1000, r"key 'time_embed'.*set by the config's num_frames"),
    ],
)
def test_sidecar_config_is_checked_before_the_model_is_built(ours, field, value, message, monkeypatch):
    side_path = ours.with_suffix(".json")
    side = json.loads(side_path.read_text())
    side["config"][field] = value
    side_path.write_text(json.dumps(side))
    built = []
    monkeypatch.setattr("models.checkpoints.TimeSformer", lambda cfg: built.append(cfg))  # must never be reached
    with pytest.raises(CheckpointError, match=message) as e:
        load_checkpoint(ours)
    assert "\n" not in str(e.value) and not built


def test_sidecar_sha256_of_the_wrong_type_is_named(ours):
    side_path = ours.with_suffix(".json")
    side = json.loads(side_path.read_text())
    side["sha256"] = 12345
    side_path.write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match=r"m\.json: sha256: expected 64 lowercase hex digits, got 12345"):
        load_checkpoint(ours)


@pytest.mark.parametrize(
    "edit,message",
    [
        ({"num_hidden_layers": 10**9}, r"config\.json: num_hidden_layers: expected an integer in 1\.\.256"),
        ({"hidden_size": 0}, r"config\.json: hidden_size: expected an integer in 1\.\.16384, got 0"),
        ({"image_size": 1_600_000}, r"config\.json: image_size: expected an integer in 1\.\.4096"),
        ({"intermediate_size": -1}, r"config\.json: intermediate_size: expected an integer"),
        ({"num_attention_heads": 7}, r"config\.json: embed_dim 48 is not divisible by num_heads 7"),
        (
            {"num_frames": 16},
            r"key 'time_embed': expected shape \(1, 16, 48\), got \(1, 4, 48\) \(set by the config's "
            r"num_frames",
        ),
        ([1, 2], r"config\.json: expected a JSON object of config fields, got list"),
    ],
)
def test_hugging_face_config_is_checked_before_the_model_is_built(tmp_path, edit, message, monkeypatch):
    hf = _hf_dir(tmp_path)
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, **edit} if isinstance(edit, dict) else edit))
    built = []
    monkeypatch.setattr("models.checkpoints.TimeSformer", lambda cfg: built.append(cfg))
    with pytest.raises(CheckpointError, match=message) as e:
        load_checkpoint(hf)
    assert "\n" not in str(e.value) and not built


def test_the_intact_checkpoints_still_load(ours, tmp_path):
    assert load_checkpoint(ours).config == TINY
    assert load_checkpoint(_hf_dir(tmp_path)).config.depth == 2


@pytest.mark.parametrize(
    "cfg",
    [
        TINY,
        TINY.replace(qkv_bias=False),
        TINY.replace(attention_type="joint_space_time"),
        TINY.replace(attention_type="space_only", mlp_ratio=2.5),
    ],
)
def test_expected_shapes_are_the_modules(cfg):
    from models.checkpoints import expected_shapes

    assert expected_shapes(cfg) == {k: tuple(v.shape) for k, v in TimeSformer(cfg).state_dict().items()}


def test_make_engine_refuses_a_hostile_config_in_one_line(ours, tmp_path):
    """Finding 18 through the command line: exit 2, one line naming the file and the field, nothing built."""
    side_path = ours.with_suffix(".json")
    side = json.loads(side_path.read_text())
    side["config"]["num_heads"] = 0
    side_path.write_text(json.dumps(side))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.bundle.build",
            "--model",
            str(ours),
            "--backend",
            "onnxruntime",
            "--out",
            str(tmp_path / "out"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr and "m.json: config: num_heads: expected an integer in 1..1024, got 0" in last
    assert not (tmp_path / "out").exists()
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
