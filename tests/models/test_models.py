"""The reference model: parity with transformers, official checkpoint round trip, resizing, errors, costs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from models import (
    PRESETS,
    CheckpointError,
    TimeSformer,
    TimeSformerConfig,
    count_flops,
    count_params,
    get_preset,
    load_checkpoint,
    save_checkpoint,
    save_official,
)
from runtime.preprocess import PreprocessConfig

transformers = pytest.importorskip("transformers", reason="transformers (the 'dev' extra) is the parity reference")


def _hf_model(attention_type: str, **kw) -> "transformers.TimesformerForVideoClassification":
    cfg = transformers.TimesformerConfig(attention_type=attention_type, **kw)
    torch.manual_seed(0)
    model = transformers.TimesformerForVideoClassification(cfg).eval()
    # transformers initialises the time embedding to zero and a trained model's temporal layers are far from
    # their initial values: perturb everything so that every path (temporal_dense too) changes the logits.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "temporal_dense" in name or "time_embeddings" in name or "layernorm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


SMALL_HF = dict(
    image_size=64,
    patch_size=16,
    num_frames=4,
    hidden_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=384,
    num_labels=7,
)


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time"])
@pytest.mark.parametrize("hf_kwargs", [SMALL_HF, dict(num_labels=400)], ids=["small", "base_8x224"])
def test_parity_with_transformers(tmp_path: Path, attention_type: str, hf_kwargs: dict) -> None:
    hf = _hf_model(attention_type, **hf_kwargs)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_checkpoint(tmp_path / "hf")
    assert ours.config.attention_type == attention_type
    assert ours.config.num_classes == hf.config.num_labels
    assert ours.checkpoint.format == "huggingface"
    cfg = ours.config
    for batch in (1, 3):
        x = torch.randn(
            batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(batch)
        )
        with torch.no_grad():
            ref = hf(pixel_values=x).logits
            out = ours(x)
        assert out.shape == (batch, cfg.num_classes)
        assert (out - ref).abs().max().item() < 1e-5
        # The temporal path really contributes: dropping temporal_fc changes the logits.
    if attention_type == "divided_space_time":
        with torch.no_grad():
            ours.blocks[1].temporal_fc.weight.zero_()
            ours.blocks[1].temporal_fc.bias.zero_()
            assert (ours(x) - ref).abs().max().item() > 1e-3


def test_hf_labels_and_pytorch_bin(tmp_path: Path) -> None:
    hf = _hf_model("divided_space_time", **SMALL_HF, id2label={i: f"action_{i}" for i in range(7)})
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    ours = load_checkpoint(tmp_path / "sharded")
    assert ours.labels == [f"action_{i}" for i in range(7)]
    # The older pytorch_model.bin layout.
    hf.config.save_pretrained(tmp_path / "bin")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    from_bin = load_checkpoint(tmp_path / "bin")
    x = torch.randn(1, 4, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(from_bin(x), ours(x))
        assert (ours(x) - hf(pixel_values=x).logits).abs().max() < 1e-5


def _small(attention_type: str = "divided_space_time", **kw) -> TimeSformer:
    torch.manual_seed(0)
    cfg = TimeSformerConfig(
        image_size=64,
        patch_size=16,
        num_frames=4,
        embed_dim=64,
        depth=2,
        num_heads=2,
        num_classes=5,
        attention_type=attention_type,
        **kw,
    )
    model = TimeSformer(cfg).eval()
    with torch.no_grad():
        for blk in model.blocks:
            if hasattr(blk, "temporal_fc"):
                blk.temporal_fc.weight.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time", "space_only"])
def test_official_pyth_round_trip(tmp_path: Path, attention_type: str) -> None:
    model = _small(attention_type)
    path = tmp_path / "ckpt.pyth"
    save_official(model, path)
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("model.") for k in raw["model_state"])
    # Space-only weights carry no time embedding: the clip length comes from the caller.
    extra = {"num_frames": 4} if attention_type == "space_only" else {}
    loaded = load_checkpoint(path, num_heads=2, **extra)
    assert loaded.config == model.config
    x = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_bare_and_module_prefixed_state_dicts(tmp_path: Path) -> None:
    model = _small()
    torch.save({f"module.model.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pth")
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    x = torch.randn(1, 4, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        for name in ("ddp.pth", "bare.pth"):
            assert torch.equal(load_checkpoint(tmp_path / name, num_heads=2)(x), ref)


def test_our_safetensors_round_trip(tmp_path: Path) -> None:
    model = _small()
    pre = PreprocessConfig(num_frames=4, sampling_rate=2, short_side=64, crop_size=64)
    save_checkpoint(model, tmp_path / "m.safetensors", labels=list("abcde"), preprocess=pre, metadata={"seed": 3})
    side = json.loads((tmp_path / "m.json").read_text())
    assert side["config"]["embed_dim"] == 64 and side["labels"] == list("abcde")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.labels == list("abcde") and loaded.preprocess == pre
    assert loaded.checkpoint.metadata == {"seed": 3}
    x = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
    umask = os.umask(0)
    os.umask(umask)
    for written in ("m.safetensors", "m.json"):  # readable as a plain open() would make them, not mkstemp's 0600
        assert (tmp_path / written).stat().st_mode & 0o777 == 0o666 & ~umask, written


def test_float16_weights_load_as_the_rounded_float32_model(tmp_path: Path) -> None:
    model = _small()
    full = save_checkpoint(model, tmp_path / "full.safetensors")
    half = save_checkpoint(model, tmp_path / "half.safetensors", dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for (name, p), q in zip(model.named_parameters(), loaded.parameters()):
        assert torch.equal(q, p.detach().half().float()), name
    with pytest.raises(ValueError, match="floating-point"):
        save_checkpoint(model, tmp_path / "bad.safetensors", dtype=torch.int8)


def test_resize_frames_and_resolution_keeps_class_path() -> None:
    model = _small()
    base_cls = model.pos_embed[:, :1].clone()
    x = torch.randn(1, 8, 3, 128, 128)  # twice the frames, twice the resolution
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 5) and torch.isfinite(out).all()
        # The on-the-fly resize equals a model built for the new size with nearest-resized embeddings.
        big = TimeSformer(model.config.replace(num_frames=8, image_size=128)).eval()
        state = model.state_dict()
        grid = state["pos_embed"][:, 1:].transpose(1, 2).reshape(1, 64, 4, 4)
        grid = torch.nn.functional.interpolate(grid, size=(8, 8), mode="nearest").flatten(2).transpose(1, 2)
        state["pos_embed"] = torch.cat((state["pos_embed"][:, :1], grid), 1)
        state["time_embed"] = state["time_embed"].repeat_interleave(2, dim=1)
        big.load_state_dict(state)
        assert torch.allclose(big(x), out, atol=1e-6)
        assert torch.equal(model.pos_embed[:, :1], base_cls)
        # The class token still reaches the logits.
        model.cls_token.add_(torch.randn_like(model.cls_token))
        assert (model(x) - out).abs().max() > 1e-3


@pytest.mark.slow
def test_base_resized_to_16_frames_and_448() -> None:
    model = TimeSformer(get_preset("base").config).eval()
    with torch.no_grad():
        out16 = model(torch.randn(1, 16, 3, 224, 224))
        out448 = model(torch.randn(1, 2, 3, 448, 448))
    assert out16.shape == out448.shape == (1, 400)
    assert torch.isfinite(out16).all() and torch.isfinite(out448).all()


def test_decomposed_attention_matches_sdpa() -> None:
    model = _small()
    x = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = model.set_attention_impl("decomposed")(x)
    assert (out - ref).abs().max() < 1e-5
    with pytest.raises(KeyError, match="unknown attention implementation"):
        model.set_attention_impl("nope")


def test_bad_checkpoints_name_file_and_key(tmp_path: Path) -> None:
    model = _small()
    save_official(model, tmp_path / "good.pyth")
    data = (tmp_path / "good.pyth").read_bytes()
    (tmp_path / "trunc.pyth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pyth"):
        load_checkpoint(tmp_path / "trunc.pyth")
    state = {k: v for k, v in model.state_dict().items() if k != "blocks.1.mlp.fc2.bias"}
    torch.save({"model_state": state}, tmp_path / "missing.pyth")
    with pytest.raises(CheckpointError, match=r"missing.pyth.*blocks\.1\.mlp\.fc2\.bias"):
        load_checkpoint(tmp_path / "missing.pyth", num_heads=2)
    state = model.state_dict()
    state["blocks.0.mlp.fc1.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(
        CheckpointError, match=r"shape.pth.*blocks\.0\.mlp\.fc1\.bias.*expected shape \(256,\), got \(3,\)"
    ):
        load_checkpoint(tmp_path / "shape.pth", num_heads=2)
    torch.save({"model_state": {"foo": torch.zeros(1)}}, tmp_path / "foreign.pyth")
    with pytest.raises(CheckpointError, match=r"foreign.pyth.*patch_embed\.proj\.weight"):
        load_checkpoint(tmp_path / "foreign.pyth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_checkpoint(tmp_path / "junk.safetensors")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path / "empty_dir")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pyth")


def test_counts_match_model_and_paper() -> None:
    for name in ("base", "base_8x224_k400_joint", "base_8x224_k400_space", "tiny_8x64"):
        cfg = get_preset(name).config
        assert count_params(cfg) == sum(p.numel() for p in TimeSformer(cfg).parameters())
    base = get_preset("base").config
    assert count_params(base) == 121_566_352  # the paper rounds this to 121.4M (without the head bias etc.)
    # The paper's "0.59 TFLOPs" for three views counts multiply-accumulates: 3 x 196 GMACs.
    assert abs(3 * count_flops(base)["gmacs"] / 1000 - 0.59) < 0.01
    assert count_flops(get_preset("hr").config)["gmacs"] > 8 * count_flops(base)["gmacs"]


def test_presets_are_consistent() -> None:
    for name, preset in PRESETS.items():
        assert preset.preprocess.num_frames == preset.config.num_frames, name
        assert preset.preprocess.crop_size == preset.config.image_size, name


def test_checkpoint_integrity_sidecar_hash_nan_weights_and_label_count(tmp_path: Path) -> None:
    """Our safetensors are checked against the sidecar's sha256; NaN/Inf weights (every format) and a label list
    of the wrong length are CheckpointErrors naming the file and the tensor or field."""
    from safetensors.torch import load_file, save_file

    model = _small()
    path = save_checkpoint(model, tmp_path / "m.safetensors", labels=list("abcde"))
    load_checkpoint(path)  # intact: loads
    # The weights file changed after it was saved (here: one head bias edited, same size).
    state = load_file(str(path))
    state["head.bias"] = state["head.bias"] + 1.0
    save_file(state, str(path), metadata={"format": "timesformer-deploy/1"})
    with pytest.raises(CheckpointError, match=r"m\.safetensors: sha256 .* does not match .* recorded in m\.json"):
        load_checkpoint(path)
    # NaN in one tensor, with a consistent sidecar: named; also through the official format.
    bad = _small()
    with torch.no_grad():
        bad.blocks[1].mlp.fc1.weight[3, 7] = float("nan")
        bad.head.bias[0] = float("inf")
    nan_path = save_checkpoint(bad, tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match=r"nan\.safetensors: tensor 'blocks\.1\.mlp\.fc1\.weight' has 1 NaN/Inf"):
        load_checkpoint(nan_path)
    save_official(bad, tmp_path / "nan.pyth")
    with pytest.raises(CheckpointError, match=r"nan\.pyth: tensor 'blocks\.1\.mlp\.fc1\.weight'"):
        load_checkpoint(tmp_path / "nan.pyth", num_heads=2)
    # A sidecar with 3 labels for a 5-class head.
    path = save_checkpoint(model, tmp_path / "lab.safetensors", labels=list("abcde"))
    side = json.loads((tmp_path / "lab.json").read_text())
    side["labels"] = ["a", "b", "c"]
    (tmp_path / "lab.json").write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match=r"lab\.json: labels: 3 names, but the model's head has 5 classes"):
        load_checkpoint(path)


def test_ssv2_preset_expects_bgr_and_others_rgb() -> None:
    """The official SSv2 checkpoints were trained on frames cv2.imdecode left in BGR (facts.md)."""
    assert get_preset("base_8x224_ssv2").preprocess.channel_order == "BGR"
    assert {p.preprocess.channel_order for n, p in PRESETS.items() if n != "base_8x224_ssv2"} == {"RGB"}
