"""ONNX export: numerics against PyTorch per attention mode, attention subgraphs, block outputs, uint8 input,
metadata, atomic writes and external data."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.onnx.attention import ATTENTION_MODES, DEFAULT_OPSET, MS_DOMAIN
from export.onnx.export import ExportError, block_output_name, export_onnx, main, read_metadata, summarize
from models import PRESETS, TimeSformer, TimeSformerConfig
from runtime.preprocess import PreprocessConfig, preprocess_frames

TOL = 1e-4  # max abs logit difference, float32
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # torch.export internals
KIND = {"onnx": "Attention", "ort": f"{MS_DOMAIN}.MultiHeadAttention", "decomposed": "MatMul-Softmax-MatMul"}
# Small models: every path of the real one at a fraction of the cost.
SMALL = dict(image_size=32, patch_size=8, num_frames=4, embed_dim=64, depth=2, num_heads=2, num_classes=5)


def _random_model(cfg: TimeSformerConfig, seed: int = 0) -> TimeSformer:
    """Random weights with the zero-initialised parts (time embedding, temporal_fc) perturbed so they matter."""
    torch.manual_seed(seed)
    net = TimeSformer(cfg).eval()
    with torch.no_grad():
        if hasattr(net, "time_embed"):
            net.time_embed.normal_(0, 0.02)
        for blk in net.blocks:
            if hasattr(blk, "temporal_fc"):
                blk.temporal_fc.weight.normal_(0, 0.02)
                blk.temporal_fc.bias.normal_(0, 0.02)
    return net


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _clip(
    batch: int, cfg: TimeSformerConfig, seed: int, frames: int | None = None, size: int | None = None
) -> torch.Tensor:
    t, s = frames or cfg.num_frames, size or cfg.image_size
    return torch.randn(batch, t, 3, s, s, generator=torch.Generator().manual_seed(seed))


def _max_diff(path: Path, net: TimeSformer, clip: torch.Tensor) -> float:
    out = _session(path).run(None, {"video": clip.numpy()})[0]
    with torch.no_grad():
        ref = net(clip).numpy()
    assert out.shape == ref.shape, f"{path}: logits shape {out.shape}, PyTorch {ref.shape}"
    return float(np.abs(out - ref).max())


def _with_block_outputs(path: Path, dst: Path) -> tuple[Path, list[str]]:
    """A copy of the model that also outputs every ``block_{i}_output`` (what the parity tool does)."""
    model = onnx.load(str(path))
    names = read_metadata(path)["block_outputs"]
    infos = {vi.name: vi for vi in model.graph.value_info}
    missing = [n for n in names if n not in infos]
    assert not missing, f"{path}: no value_info for {missing}"
    model.graph.output.extend(copy.deepcopy(infos[n]) for n in names)
    onnx.save(model, str(dst))
    return dst, names


def _attention_checks(summary: dict, mode: str, expected: dict[tuple, int]) -> None:
    """Every attention subgraph is of the mode's kind, with the expected (query shape -> count)."""
    kinds = {a["kind"] for a in summary["attention_subgraphs"]}
    assert kinds == {KIND[mode]}, f"attention kinds {kinds}, expected only {KIND[mode]}"
    shapes: dict[tuple, int] = {}
    for a in summary["attention_subgraphs"]:
        shapes[tuple(a["query_shape"])] = shapes.get(tuple(a["query_shape"]), 0) + 1
    assert shapes == expected
    ops = summary["op_counts"]
    if mode == "decomposed":
        assert "Attention" not in ops and f"{MS_DOMAIN}.MultiHeadAttention" not in ops
        assert ops["Softmax"] == sum(expected.values())
    else:
        assert "Softmax" not in ops, f"{mode}: a Softmax outside the fused attention op"
    assert summary["opset"]["ai.onnx"] == DEFAULT_OPSET[mode]


def _no_layout_ops_around_fused_attention(path: Path) -> None:
    """onnx/ort: the attention op reads the qkv Split directly and feeds the output projection directly."""
    g = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    attn = [n for n in g.node if n.op_type in ("Attention", "MultiHeadAttention")]
    assert attn
    for n in attn:
        assert [producer[i].op_type for i in n.input[:3]] == ["Split"] * 3, n.name
        assert [c.op_type for c in consumers[n.output[0]]] == ["MatMul"], n.name


# --------------------------------------------------------------------------- base 8x224, each mode exported once


@pytest.fixture(scope="module")
def base_net() -> TimeSformer:
    return _random_model(PRESETS["base"].config)


@pytest.fixture(scope="module")
def base_reference(base_net: TimeSformer) -> dict[int, tuple[torch.Tensor, np.ndarray]]:
    out = {}
    for batch in (1, 3):
        clip = _clip(batch, base_net.config, seed=batch)
        with torch.no_grad():
            out[batch] = (clip, base_net(clip).numpy())
    return out


@pytest.fixture(scope="module", params=ATTENTION_MODES)
def base_export(request, base_net: TimeSformer, tmp_path_factory) -> tuple[str, Path]:
    mode = request.param
    path = export_onnx(
        base_net, tmp_path_factory.mktemp(f"base-{mode}") / f"base-{mode}.onnx", attention=mode, verbose=False
    )
    return mode, path


@pytest.mark.slow
def test_base_matches_pytorch_batch_1_and_3(base_export, base_reference) -> None:
    mode, path = base_export
    sess = _session(path)
    for batch, (clip, ref) in base_reference.items():
        out = sess.run(None, {"video": clip.numpy()})[0]
        assert out.shape == (batch, 400)
        diff = float(np.abs(out - ref).max())
        assert diff < TOL, f"{mode}, batch {batch}: max |dlogit| {diff:.2e} >= {TOL}"


@pytest.mark.slow
def test_base_attention_subgraphs(base_export) -> None:
    mode, path = base_export
    s = summarize(path)
    # 12 temporal attentions over (batch*patches, frames, width), 12 spatial over (batch*frames, patches+1, width)
    _attention_checks(s, mode, {("196*batch", 8, 768): 12, ("8*batch", 197, 768): 12})
    assert [v["name"] for v in s["inputs"]] == ["video"] and s["inputs"][0]["shape"] == ["batch", 8, 3, 224, 224]
    assert [v["name"] for v in s["outputs"]] == ["logits"] and s["outputs"][0]["shape"] == ["batch", 400]
    if mode != "decomposed":
        _no_layout_ops_around_fused_attention(path)
    onnx.checker.check_model(str(path), full_check=True)


@pytest.mark.slow
def test_base_weights_at_other_frames_and_resolution(base_net: TimeSformer, tmp_path: Path) -> None:
    """Base weights exported at 4 frames, 160 px: the embeddings are resized as the model does at run time."""
    path = export_onnx(
        base_net, tmp_path / "base-4x160.onnx", attention="decomposed", frames=4, image_size=160, verbose=False
    )
    s = summarize(path)
    _attention_checks(s, "decomposed", {("100*batch", 4, 768): 12, ("4*batch", 101, 768): 12})
    meta = read_metadata(path)
    assert (meta["model_config"]["num_frames"], meta["model_config"]["image_size"]) == (4, 160)
    assert (meta["preprocess"]["num_frames"], meta["preprocess"]["crop_size"]) == (4, 160)
    diff = _max_diff(path, base_net, _clip(2, base_net.config, seed=5, frames=4, size=160))
    assert diff < TOL


# --------------------------------------------------------------------------- small models, every mode


@pytest.fixture(scope="module")
def small_net() -> TimeSformer:
    return _random_model(TimeSformerConfig(**SMALL), seed=1)


@pytest.fixture(scope="module", params=ATTENTION_MODES)
def small_export(request, small_net: TimeSformer, tmp_path_factory) -> tuple[str, Path]:
    mode = request.param
    before = {k: v.clone() for k, v in small_net.state_dict().items()}
    path = export_onnx(
        small_net, tmp_path_factory.mktemp(f"small-{mode}") / "small.onnx", attention=mode, verbose=False
    )
    # The caller's model is untouched (no folded scale, no marker attention).
    after = small_net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {m.impl for m in small_net.modules() if hasattr(m, "impl")} == {"sdpa"}
    return mode, path


def test_exported_bytes_do_not_name_source_lines(small_export) -> None:
    """torch records a Python stack trace (file:line) on every node; the export drops it, so moving code (a
    formatter run, an added line) does not change the ONNX bytes, the cache keys or the bundles."""
    _, path = small_export
    model = onnx.load(str(path), load_external_data=False)
    keys = {p.key for n in model.graph.node for p in n.metadata_props}
    assert "pkg.torch.onnx.stack_trace" not in keys
    assert "pkg.torch.onnx.name_scopes" in keys  # the rest of the node metadata stays for debugging


def test_small_matches_pytorch_and_block_outputs(small_export, small_net: TimeSformer, tmp_path: Path) -> None:
    mode, path = small_export
    assert [o.name for o in onnx.load(str(path), load_external_data=False).graph.output] == ["logits"]
    exposed, names = _with_block_outputs(path, tmp_path / "with_blocks.onnx")
    assert names == [block_output_name(i) for i in range(small_net.config.depth)]
    sess = _session(exposed)
    for batch in (1, 3):
        clip = _clip(batch, small_net.config, seed=10 + batch)
        outs = sess.run(None, {"video": clip.numpy()})
        with torch.no_grad():
            logits, blocks = small_net.forward_with_blocks(clip)
        assert float(np.abs(outs[0] - logits.numpy()).max()) < TOL
        for name, got, want in zip(names, outs[1:], blocks):
            assert got.shape == tuple(want.shape), name
            assert float(np.abs(got - want.numpy()).max()) < TOL, f"{mode}: {name} differs"


@pytest.mark.parametrize("level", ["ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"])
def test_block_outputs_survive_onnxruntime_optimisation(small_export, level: str, tmp_path: Path) -> None:
    """Engine bundles ship ONNX Runtime's optimised model: its fusions must not swallow a block output."""
    mode, path = small_export
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    produced = {o for n in onnx.load(str(tmp_path / "optimised.onnx")).graph.node for o in n.output}
    missing = [n for n in read_metadata(path)["block_outputs"] if n not in produced]
    assert not missing, f"{mode}: ONNX Runtime's {level} graph lost {missing}"


def test_small_attention_subgraphs(small_export) -> None:
    mode, path = small_export
    # 4 frames of 4x4 patches, width 64, depth 2
    _attention_checks(summarize(path), mode, {("16*batch", 4, 64): 2, ("4*batch", 17, 64): 2})


@pytest.mark.parametrize("mode", ATTENTION_MODES)
@pytest.mark.parametrize(
    "attention_type, expected",
    [
        ("joint_space_time", {("batch", 65, 64): 2}),  # one attention over all 4*16 patches + class token
        ("space_only", {("4*batch", 17, 64): 2}),  # each frame on its own
    ],
)
def test_joint_and_space_only(mode: str, attention_type: str, expected: dict, tmp_path: Path) -> None:
    net = _random_model(TimeSformerConfig(**SMALL, attention_type=attention_type), seed=2)
    path = export_onnx(net, tmp_path / "m.onnx", attention=mode, verbose=False)
    _attention_checks(summarize(path), mode, expected)
    for batch in (1, 3):
        assert _max_diff(path, net, _clip(batch, net.config, seed=batch)) < TOL


@pytest.mark.parametrize("mode", ATTENTION_MODES)
def test_other_frames_and_resolution(mode: str, small_net: TimeSformer, tmp_path: Path) -> None:
    path = export_onnx(small_net, tmp_path / "m.onnx", attention=mode, frames=6, image_size=48, verbose=False)
    _attention_checks(summarize(path), mode, {("36*batch", 6, 64): 2, ("6*batch", 37, 64): 2})
    assert _max_diff(path, small_net, _clip(2, small_net.config, seed=3, frames=6, size=48)) < TOL


# --------------------------------------------------------------------------- uint8 input, metadata, batch


@pytest.mark.parametrize("mode, order", [("ort", "RGB"), ("decomposed", "RGB"), ("ort", "BGR")])
def test_uint8_input_matches_preprocess_and_float_model(
    mode: str, order: str, small_net: TimeSformer, tmp_path: Path
) -> None:
    """RGB frames in; the graph normalises (and swaps to BGR for a BGR model) exactly as runtime.preprocess does."""
    cfg = small_net.config
    pre = PreprocessConfig(
        num_frames=cfg.num_frames,
        short_side=cfg.image_size,
        crop_size=cfg.image_size,
        mean=(0.43, 0.45, 0.48),
        std=(0.22, 0.225, 0.23),
        channel_order=order,
    )
    path = export_onnx(small_net, tmp_path / "u8.onnx", attention=mode, uint8_input=True, preprocess=pre, verbose=False)
    s = summarize(path)
    assert s["inputs"] == [
        {"name": "frames", "dtype": "uint8", "shape": ["batch", cfg.num_frames, cfg.image_size, cfg.image_size, 3]}
    ]
    meta = read_metadata(path)
    assert meta["input"]["layout"] == "BTHWC" and meta["input"]["normalized_in_graph"] is True
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (3, cfg.num_frames, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    out = _session(path).run(None, {"frames": frames})[0]
    video = torch.from_numpy(np.stack([preprocess_frames(f, pre) for f in frames]))
    with torch.no_grad():
        ref = small_net(video).numpy()
        swapped = small_net(video.flip(2)).numpy()  # the other channel order: what a missing swap would give
    assert float(np.abs(out - ref).max()) < TOL
    assert float(np.abs(out - swapped).max()) > 100 * TOL


def test_metadata_round_trip(small_net: TimeSformer, tmp_path: Path) -> None:
    cfg = small_net.config
    labels = [f"label {i} ü" for i in range(cfg.num_classes)]
    pre = PreprocessConfig(num_frames=cfg.num_frames, sampling_rate=3, short_side=40, crop_size=cfg.image_size)
    path = export_onnx(
        small_net,
        tmp_path / "m.onnx",
        attention="onnx",
        labels=labels,
        preprocess=pre,
        source="ckpt/some.pyth",
        source_sha256="ab" * 32,
        verbose=False,
    )
    meta = read_metadata(path)
    assert TimeSformerConfig.from_dict(meta["model_config"]) == cfg
    assert PreprocessConfig.from_dict(meta["preprocess"]) == pre
    assert meta["labels"] == labels
    assert (meta["source"], meta["source_sha256"]) == ("ckpt/some.pyth", "ab" * 32)
    assert (meta["attention"], meta["opset"]) == ("onnx", 23)
    assert meta["input"] == {
        "name": "video",
        "layout": "BTCHW",
        "dtype": "float32",
        "shape": ["batch", cfg.num_frames, 3, cfg.image_size, cfg.image_size],
        "normalized_in_graph": False,
    }
    assert meta["exporter"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert set(meta["exporter"]) >= {"onnx", "onnxscript", "onnx-ir"}
    assert meta["block_outputs"] == [block_output_name(i) for i in range(cfg.depth)]
    # The same metadata is what ONNX Runtime shows to a consumer.
    assert _session(path).get_modelmeta().custom_metadata_map["attention"] == "onnx"


def test_labels_must_match_classes(small_net: TimeSformer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="labels: expected 5"):
        export_onnx(small_net, tmp_path / "m.onnx", labels=["a", "b"], verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_fixed_batch(small_net: TimeSformer, tmp_path: Path) -> None:
    path = export_onnx(small_net, tmp_path / "b2.onnx", attention="ort", batch=2, verbose=False)
    assert summarize(path)["inputs"][0]["shape"][0] == 2
    assert _max_diff(path, small_net, _clip(2, small_net.config, seed=8)) < TOL
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        _session(path).run(None, {"video": _clip(1, small_net.config, seed=8).numpy()})


# --------------------------------------------------------------------------- failures leave nothing behind


def test_invalid_attention_mode_writes_nothing(small_net: TimeSformer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="attention: expected one of"):
        export_onnx(small_net, tmp_path / "m.onnx", attention="flash", verbose=False)
    with pytest.raises(ValueError, match="needs opset >= 23"):
        export_onnx(small_net, tmp_path / "m.onnx", attention="onnx", opset=18, verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_path_writes_nothing(small_net: TimeSformer, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ExportError, match="cannot create the output directory"):
        export_onnx(small_net, blocker / "sub" / "m.onnx", verbose=False)
    with pytest.raises(ValueError, match="must end in .onnx"):
        export_onnx(small_net, tmp_path / "m.txt", verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_failure_mid_write_leaves_no_partial_file(small_net: TimeSformer, tmp_path: Path, monkeypatch) -> None:
    import onnx_ir

    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous export")
    real_save = onnx_ir.save

    def failing_save(model, path, **kw):
        Path(path).write_bytes(b"\x08\x07partial")  # half a model on disk, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_ir, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        export_onnx(small_net, target, verbose=False)
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]

    # A model that saves but fails the checker is not renamed into place either.
    monkeypatch.setattr(onnx_ir, "save", real_save)

    def failing_check(*a, **kw):
        raise onnx.checker.ValidationError("injected")

    monkeypatch.setattr(onnx.checker, "check_model", failing_check)
    with pytest.raises(ExportError, match="fails the ONNX checker.*injected"):
        export_onnx(small_net, target, verbose=False)
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_external_data(small_net: TimeSformer, tmp_path: Path) -> None:
    """The >2 GB path, made cheap by lowering the threshold: one data file beside the model."""
    path = export_onnx(
        small_net, tmp_path / "big.onnx", attention="decomposed", external_data_threshold=0, verbose=False
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    s = summarize(path)
    assert s["external_data"] == ["big.onnx.data"]
    assert s["external_data_bytes"] > s["file_bytes"]
    onnx.checker.check_model(str(path), full_check=True)
    assert _max_diff(path, small_net, _clip(2, small_net.config, seed=9)) < TOL
    # Re-exporting in one piece removes the stale data file.
    export_onnx(small_net, path, attention="decomposed", verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx"]
    assert summarize(path)["external_data"] == []


def test_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.onnx"
    assert main(["--model", "tiny_8x64", "--attention", "decomposed", "--out", str(out), "--seed", "3", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    meta = read_metadata(out)
    assert meta["source"] == "preset:tiny_8x64 (random weights, seed 3)"
    assert meta["attention"] == "decomposed" and meta["preprocess"]["sampling_rate"] == 2
    assert main(["--model", str(tmp_path / "missing.pyth"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "neither a preset" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
