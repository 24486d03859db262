"""models.outliers: outlier versions of a checkpoint compute the same function and really carry outliers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import load_source
from models.outliers import add_outliers, ln_linear_pairs, main

MOTION = Path(__file__).resolve().parents[2] / "models" / "weights" / "motion_tiny.safetensors"


@pytest.fixture(scope="module")
def motion():
    net, labels, pre, _ = load_source(str(MOTION))
    return net.eval(), labels, pre


def _clips(net, n: int = 3, seed: int = 0) -> torch.Tensor:
    c = net.config
    return torch.randn(
        n, c.num_frames, c.in_chans, c.image_size, c.image_size, generator=torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize("scale,channels", [(10.0, 1), (40.0, 4), (100.0, 8)])
def test_outliers_preserve_the_function(motion, scale, channels):
    net, _, _ = motion
    out, rec = add_outliers(net, scale, channels, seed=3)
    x = _clips(net)
    with torch.no_grad():
        ref, got = net(x), out(x)
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-4
    # every LayerNorm that feeds a Linear got exactly `channels` outlier channels, and the original is untouched
    assert rec["layernorms"] == len(ln_linear_pairs(net)) == 3 * net.config.depth + 1
    assert all(len(v) == channels for v in rec["indices"].values())
    assert torch.equal(net.blocks[0].norm1.weight, load_source(str(MOTION))[0].blocks[0].norm1.weight)


def test_outlier_channels_are_scale_times_larger(motion):
    net, _, _ = motion
    out, rec = add_outliers(net, 40.0, 4, seed=1)
    captured = {}
    hook = out.blocks[1].norm2.register_forward_hook(lambda m, i, o: captured.setdefault("o", o.detach()))
    ref_cap = {}
    hook_ref = net.blocks[1].norm2.register_forward_hook(lambda m, i, o: ref_cap.setdefault("o", o.detach()))
    x = _clips(net, 1)
    with torch.no_grad():
        out(x), net(x)
    hook.remove(), hook_ref.remove()
    idx = rec["indices"]["blocks.1.norm2"]
    ratio = captured["o"][..., idx].abs().amax() / ref_cap["o"][..., idx].abs().amax()
    assert float(ratio) == pytest.approx(40.0, rel=1e-4)
    others = [j for j in range(net.config.embed_dim) if j not in idx]
    assert torch.allclose(captured["o"][..., others], ref_cap["o"][..., others], atol=1e-4)  # FP32 rounding upstream


def test_same_seed_same_channels_and_bad_arguments(motion):
    net, _, _ = motion
    assert add_outliers(net, 10, 2, seed=5)[1]["indices"] == add_outliers(net, 10, 2, seed=5)[1]["indices"]
    assert add_outliers(net, 10, 2, seed=5)[1]["indices"] != add_outliers(net, 10, 2, seed=6)[1]["indices"]
    with pytest.raises(ValueError, match="channels"):
        add_outliers(net, 10, 0)
    with pytest.raises(ValueError, match="scale"):
        add_outliers(net, -1, 2)


def test_cli_writes_a_loadable_exact_checkpoint(motion, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    assert main(["--model", str(MOTION), "--scale", "100", "--channels", "8", "--out", str(out)]) == 0
    assert "logits changed by" in capsys.readouterr().out
    net, _, _ = motion
    loaded, labels, _, _ = load_source(str(out))
    x = _clips(net, 2, seed=9)
    with torch.no_grad():
        ref, got = net(x), loaded(x)
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-4
    assert labels == motion[1]
    assert main(["--model", str(MOTION), "--channels", "0", "--out", str(out)]) == 2
