"""``make parity``: engine vs PyTorch, the reports, and finding the first diverging block of a broken engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export.bundle.build import BuildRequest, build_bundle
from export.bundle.parity import block_errors, block_output_names, check_bundle, markdown

ROOT = Path(__file__).resolve().parents[2]
BROKEN_BLOCK = 2


@pytest.fixture(scope="module")
def broken_bundle(tmp_path_factory, motion_model_path):
    """An engine built from wrongly ordered weights: block 2's query and key projections swapped."""
    from models import load_checkpoint, save_checkpoint

    net = load_checkpoint(motion_model_path)
    d = net.config.embed_dim
    with torch.no_grad():
        for name in ("weight", "bias"):
            p = getattr(net.blocks[BROKEN_BLOCK].attn.qkv, name)
            q, k = p[:d].clone(), p[d : 2 * d].clone()
            p[:d], p[d : 2 * d] = k, q
    base = tmp_path_factory.mktemp("broken")
    ckpt = save_checkpoint(net, base / "broken.safetensors", labels=net.labels, preprocess=net.preprocess)
    req = BuildRequest(
        model=str(ckpt),
        precision="fp32",
        backend="onnxruntime",
        out=str(base / "bundle"),
        cache_dir=str(base / "cache"),
        parity_clips=2,
    )
    return build_bundle(req)


def test_good_engine_passes_with_reports(fp32_bundle, tmp_path):
    report = check_bundle(fp32_bundle, n=6, blocks="always")
    assert report["passed"] and report["metrics"]["clips"] == 6
    assert report["metrics"]["max_abs_logit"] < 1e-3
    b = report["blocks"]
    assert b["first_diverging_block"] is None and len(b["blocks"]) == 4
    assert all(row["rel_l2"] < 1e-4 for row in b["blocks"])
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.bundle.parity",
            "--engine",
            str(fp32_bundle),
            "--n",
            "4",
            "--out",
            str(tmp_path / "rep"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "PASSED" in res.stdout
    js = json.loads((tmp_path / "rep" / "parity.json").read_text())
    assert js["passed"] and (tmp_path / "rep" / "parity.md").read_text().startswith("# Parity")


def test_engine_onnx_keeps_named_block_outputs(fp32_bundle):
    assert block_output_names(fp32_bundle / "model.onnx") == [f"block_{i}_output" for i in range(4)]


def test_broken_engine_is_flagged_at_the_first_diverging_block(broken_bundle, motion_model_path, tmp_path):
    report = check_bundle(broken_bundle, n=6, model=str(motion_model_path))
    assert not report["passed"]
    assert any(f.startswith("max_abs_logit") for f in report["failures"])
    blocks = report["blocks"]
    assert blocks["first_diverging_block"] == BROKEN_BLOCK
    rows = blocks["blocks"]
    assert all(r["rel_l2"] < 1e-4 for r in rows[:BROKEN_BLOCK]) and rows[BROKEN_BLOCK]["rel_l2"] > 1e-2
    assert f"First diverging block: **{BROKEN_BLOCK}**" in markdown(report)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.bundle.parity",
            "--engine",
            str(broken_bundle),
            "--model",
            str(motion_model_path),
            "--n",
            "4",
            "--out",
            str(tmp_path / "rep"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1 and "FAILED" in res.stdout
    assert json.loads((tmp_path / "rep" / "parity.json").read_text())["blocks"]["first_diverging_block"] == BROKEN_BLOCK


def test_block_errors_locate_the_jump():
    import numpy as np

    rng = np.random.default_rng(0)
    ref = [rng.standard_normal((2, 5, 4)).astype(np.float32) for _ in range(4)]
    eng = [r + 1e-6 for r in ref[:2]] + [r + 0.5 for r in ref[2:]]
    out = block_errors(ref, eng, "fp16")
    assert out["first_diverging_block"] == 2 and out["largest_jump_block"] == 2
    with pytest.raises(ValueError, match="block_1_output: reference shape"):
        block_errors(ref, [ref[0], ref[1][:1]], "fp32")


def test_bgr_model_gets_bgr_clips_in_calibration_parity_onnx_and_manifest(motion_model_path, tmp_path):
    """A model whose preprocessing says BGR (like the SSv2 checkpoints) gets BGR clips from every path that
    decodes video (calibration sets, build-time parity, make parity), and its ONNX and manifest say so."""
    import dataclasses

    import numpy as np

    from calibration.clips.calibset import load_calibration_set
    from export.bundle.build import parity_clips
    from export.onnx.export import read_metadata
    from models import load_checkpoint, save_checkpoint

    net = load_checkpoint(motion_model_path)
    bgr = dataclasses.replace(net.preprocess, channel_order="BGR")
    # Decoded clips: the same video, channels swapped for the BGR model (frames are decoded as RGB).
    rgb_clips = parity_clips(net.preprocess, 2, 0, None, 64)
    bgr_clips = parity_clips(bgr, 2, 0, None, 64)
    assert not np.array_equal(rgb_clips, bgr_clips)
    assert np.array_equal(bgr_clips, rgb_clips[:, :, ::-1])
    cal = load_calibration_set("synthetic:5", bgr, 1, progress=False).clips
    assert np.array_equal(cal, load_calibration_set("synthetic:5", net.preprocess, 1, progress=False).clips[:, :, ::-1])
    # The bundle of a BGR checkpoint: manifest and ONNX metadata carry the order; parity passes on BGR clips.
    ckpt = save_checkpoint(net, tmp_path / "bgr.safetensors", labels=net.labels, preprocess=bgr)
    bundle = build_bundle(
        BuildRequest(
            model=str(ckpt),
            precision="fp32",
            backend="onnxruntime",
            out=str(tmp_path / "bundle"),
            cache_dir=str(tmp_path / "cache"),
            parity_clips=2,
        )
    )
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["preprocess"]["channel_order"] == "BGR"
    assert read_metadata(bundle / m["engine_file"])["preprocess"]["channel_order"] == "BGR"
    report = check_bundle(bundle, n=2, blocks="never")
    assert report["passed"]
