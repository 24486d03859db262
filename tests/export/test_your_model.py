"""Your model, your labels, your clips (issue 26): no silent default between a real checkpoint and an engine.

Every case builds from real files: an official-format ``.pyth`` written by ``models.save_official``, a Hugging Face
folder written by ``transformers``' ``save_pretrained`` with a ``preprocessor_config.json``, and an ONNX export.
Refusals are one line on stderr, exit 2, naming the option to set. Models are tiny (one block, 32 px, 2 frames).
"""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export.bundle.build import main
from models import TimeSformer, TimeSformerConfig, save_official
from models.task_inputs import LABELS_DIR, RANDOM_MARK
from runtime import Engine

ROOT = Path(__file__).resolve().parents[2]
#: a tiny divided TimeSformer with the Kinetics-400 head
K400_TINY = TimeSformerConfig(
    image_size=32, patch_size=16, num_frames=2, embed_dim=48, depth=1, num_heads=2, num_classes=400
)


def _build(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m export.bundle.build`` in-process: (exit status, stdout, the last stderr line)."""
    rc = main(list(args))
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    return rc, out, lines[-1] if lines else ""


def _common(tmp_path: Path, name: str, backend: str = "onnxruntime") -> list[str]:
    return [
        "--backend",
        backend,
        "--out",
        str(tmp_path / name),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--parity-clips",
        "2",
        "--calib-clips",
        "4",
    ]


@pytest.fixture(scope="module")
def k400_pyth(tmp_path_factory) -> Path:
    """An official-format checkpoint (``model_state`` with ``model.`` keys) of a 400-class model."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("official") / "tiny_k400.pyth"
    save_official(TimeSformer(K400_TINY).eval(), path)
    return path


def _frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ no silent stand-ins


def test_a_preset_without_weights_is_refused(tmp_path, capsys):
    rc, _, err = _build(capsys, "--model", "tiny_8x64", *_common(tmp_path, "o"))
    assert rc == 2 and err.startswith("make engine: MODEL=tiny_8x64 is a preset") and "RANDOM_WEIGHTS=1" in err
    assert not (tmp_path / "o").exists()


def test_random_weights_say_so_in_manifest_labels_and_predictions(tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    rc, out, _ = _build(capsys, "--model", "tiny_8x64", "--random-weights", *_common(tmp_path, "o"))
    assert rc == 0, out
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["provenance"]["weights"] == "random" and m["build"]["request"]["random_weights"] is True
    labels = (tmp_path / "o" / "labels.txt").read_text().splitlines()
    assert len(labels) == 8 and all(label.endswith(RANDOM_MARK) for label in labels)
    assert "RANDOM WEIGHTS" in caplog.text  # the build's summary line
    with Engine(tmp_path / "o") as engine:
        p = engine.predict(_frames(8, 64, 80))
        assert p.metadata["random_weights"] is True and "random weights" in p.metadata["warning"]
        assert p.label.endswith(RANDOM_MARK)


def test_a_trained_checkpoint_has_no_random_weights_metadata(fp32_bundle):
    m = json.loads((fp32_bundle / "manifest.json").read_text())
    assert m["provenance"]["weights"] == "checkpoint"
    with Engine(fp32_bundle) as engine:
        assert engine.predict(_frames(8, 64, 80)).metadata == {}


def test_int8_of_a_real_checkpoint_needs_calib(tmp_path, capsys, k400_pyth):
    rc, _, err = _build(capsys, "--model", str(k400_pyth), "--precision", "int8", *_common(tmp_path, "o"))
    assert rc == 2 and err.startswith("make engine: PRECISION=int8 needs CALIB=") and "CALIB=synthetic" in err
    assert not (tmp_path / "o").exists()


def test_int8_on_synthetic_clips_when_asked_is_recorded(tmp_path, capsys, k400_pyth, caplog):
    caplog.set_level("INFO")
    rc, out, err = _build(
        capsys,
        "--model",
        str(k400_pyth),
        "--precision",
        "int8",
        "--calib",
        "synthetic",
        "--allow-parity-failure",
        *_common(tmp_path, "o"),
    )
    assert rc == 0, err
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert any(
        n.startswith("INT8 calibrated on synthetic clips (synthetic, asked for explicitly)")
        for n in m["provenance"]["notes"]
    )
    assert "INT8 calibrated on synthetic clips" in caplog.text.splitlines()[-1]


def _run_build(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "export.bundle.build", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )


def test_fp16_on_a_cpu_without_fp16_arithmetic_is_refused_or_recorded(tmp_path, motion_model_path):
    """``ONEDNN_MAX_CPU_ISA=AVX2`` takes BF16/FP16 from OpenVINO's CPU plugin, as on an AVX2-only CPU."""
    pytest.importorskip("openvino")
    env = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    args = ["--model", str(motion_model_path), "--precision", "fp16", *_common(tmp_path, "o", "openvino")]
    r = _run_build(*args, env=env)
    last = r.stderr.strip().splitlines()[-1]
    assert (
        r.returncode == 2
        and last.startswith("make engine: PRECISION=fp16: this CPU")
        and "ALLOW_PRECISION_FALLBACK=1" in last
    ), r.stderr[-2000:]
    r = _run_build(*args, "--allow-precision-fallback", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert any(n.startswith("precision fallback: fp16 asked for, runs f32") for n in m["provenance"]["notes"])
    summary = [ln for ln in r.stderr.splitlines() if "[engine] built" in ln]
    assert summary and "precision fallback" in summary[0]


# ------------------------------------------------------------------------------------------ labels and preprocessing


def test_the_official_k400_checkpoint_predicts_kinetics_names(tmp_path, capsys, k400_pyth, caplog):
    caplog.set_level("INFO")
    rc, out, _ = _build(capsys, "--model", str(k400_pyth), *_common(tmp_path, "o"))
    assert rc == 0, out
    k400 = (LABELS_DIR / "kinetics400.txt").read_text().splitlines()
    assert len(k400) == 400 and k400[0] == "abseiling" and k400[-1] == "zumba"
    assert (tmp_path / "o" / "labels.txt").read_text().splitlines() == k400
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["provenance"]["labels"].startswith(
        "Kinetics-400 (models/labels/kinetics400.txt, chosen by the head's 400 classes)"
    )
    assert "Kinetics-400" in m["provenance"]["preprocess"]  # the protocol of the label set at the model's size
    assert sum("[engine] labels: 400 from Kinetics-400" in ln for ln in caplog.text.splitlines()) == 1
    with Engine(tmp_path / "o") as engine:
        p = engine.predict(_frames(2, 40, 48), top_k=3)
        assert all(name in k400 for name, _ in p.top_k) and p.metadata == {}


def test_published_label_lists_have_their_counts():
    from models.task_inputs import PUBLISHED_LABELS, published_labels

    for n, (name, _) in PUBLISHED_LABELS.items():
        labels, said = published_labels(n)
        assert len(labels) == len(set(labels)) == n and name in said
    assert published_labels(174)[0][0] == "Approaching something with your camera"
    assert published_labels(600)[0][1] == "acting in play"
    assert published_labels(8) is None


def test_labels_and_preprocess_override_the_checkpoint(tmp_path, capsys, k400_pyth):
    names = [f"my action {i}" for i in range(400)]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "pre.json").write_text(
        json.dumps(
            {
                "sampling_rate": 4,
                "short_side": 36,
                "mean": [0.5, 0.4, 0.3],
                "std": [0.2, 0.25, 0.3],
                "channel_order": "BGR",
            }
        )
    )
    rc, out, _ = _build(
        capsys,
        "--model",
        str(k400_pyth),
        "--labels",
        str(tmp_path / "labels.txt"),
        "--preprocess",
        str(tmp_path / "pre.json"),
        *_common(tmp_path, "o"),
    )
    assert rc == 0, out
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert (tmp_path / "o" / "labels.txt").read_text().splitlines() == names
    pre = m["preprocess"]
    assert (
        pre["sampling_rate"],
        pre["short_side"],
        pre["crop_size"],
        pre["mean"],
        pre["std"],
        pre["channel_order"],
    ) == (4, 36, 32, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3], "BGR")
    assert m["provenance"]["labels"] == f"LABELS={tmp_path / 'labels.txt'}"
    assert m["provenance"]["preprocess"] == (
        f"PREPROCESS={tmp_path / 'pre.json'} (other fields, crop_size, num_crops, "
        "num_frames, sampling: the Kinetics-400 protocol at the model's size (2 "
        "frames dense, rate 128: 256 source frames; mean 0.45, std 0.225))"
    )


def test_a_preset_name_is_a_preprocess(tmp_path, capsys):
    """PREPROCESS=<preset> takes that preset's preprocessing (here on a random-weights model of the same size)."""
    rc, out, _ = _build(
        capsys, "--model", "tiny_8x64", "--random-weights", "--preprocess", "motion_8x64", *_common(tmp_path, "o")
    )
    assert rc == 0, out
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["provenance"]["preprocess"] == "PREPROCESS=motion_8x64 (the preset's)"


@pytest.mark.parametrize(
    "what,content,message",
    [
        ("labels", "a\nb\n", r"make engine: LABELS=.*labels\.txt: 2 labels, but the model's head has 400 classes"),
        (
            "preprocess",
            '{"crop_size": 16, "short_side": 16}',
            r"make engine: PREPROCESS=.*pre\.json: 2 frames, crop 16, but the model takes 2 frames of 32x32",
        ),
        (
            "preprocess",
            '{"std": [0, 1, 1]}',
            r"make engine: PREPROCESS=.*pre\.json: preprocess\.std: expected 3 numbers .*",
        ),
        ("preprocess", "tiny_8x6", r"make engine: PREPROCESS=tiny_8x6: neither a preset .* nor a JSON file"),
    ],
)
def test_bad_labels_or_preprocess_is_one_line_naming_the_option(tmp_path, capsys, k400_pyth, what, content, message):
    import re

    value = content
    if what == "labels" or content.startswith("{"):
        value = str(tmp_path / ("labels.txt" if what == "labels" else "pre.json"))
        Path(value).write_text(content)
    rc, _, err = _build(capsys, "--model", str(k400_pyth), f"--{what}", value, *_common(tmp_path, "o"))
    assert rc == 2 and re.fullmatch(message, err), err


# ------------------------------------------------------------------------------------------ Hugging Face folders

#: a VideoMAE image processor's settings, unlike ours in every field the bundle takes
HF_PREPROCESSOR = {
    "image_processor_type": "VideoMAEImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 40},
    "resample": 2,
    "do_center_crop": True,
    "crop_size": {"height": 32, "width": 32},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.TimesformerConfig(
        image_size=32,
        patch_size=16,
        num_frames=2,
        hidden_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=96,
        num_labels=5,
        id2label={i: f"hf action {i}" for i in range(5)},
        label2id={f"hf action {i}": i for i in range(5)},
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "tiny-timesformer"
    transformers.TimesformerForVideoClassification(cfg).eval().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(HF_PREPROCESSOR))
    return folder


def test_an_hf_bundle_preprocesses_as_its_preprocessor_config_says(tmp_path, capsys, hf_folder):
    transformers = pytest.importorskip("transformers")
    rc, out, _ = _build(capsys, "--model", str(hf_folder), *_common(tmp_path, "o"))
    assert rc == 0, out
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    pre = m["preprocess"]
    assert (pre["short_side"], pre["crop_size"]) == (40, 32)
    assert np.allclose(pre["mean"], HF_PREPROCESSOR["image_mean"]) and np.allclose(
        pre["std"], HF_PREPROCESSOR["image_std"]
    )
    assert m["provenance"]["preprocess"].startswith(str(hf_folder / "preprocessor_config.json"))
    assert m["provenance"]["labels"] == f"{hf_folder}/config.json id2label"
    # The same raw frames through the bundle and through transformers' own processor and model.
    frames = _frames(2, 40, 56, seed=3)  # short side already 40: both resizes are the identity; crops differ
    processor = transformers.AutoImageProcessor.from_pretrained(hf_folder)
    pixel_values = processor(list(frames), return_tensors="pt")["pixel_values"]
    assert tuple(pixel_values.shape) == (1, 2, 3, 32, 32)
    model = transformers.TimesformerForVideoClassification.from_pretrained(hf_folder).eval()
    with torch.no_grad():
        want = model(pixel_values=pixel_values).logits[0].numpy()
    with Engine(tmp_path / "o") as engine:
        p = engine.predict(frames, top_k=5)
    np.testing.assert_allclose(p.logits, want, atol=1e-4, rtol=1e-4)
    assert p.label == f"hf action {int(np.argmax(want))}"


# ------------------------------------------------------------------------------------------ in from ONNX


class _OfficialLayout(torch.nn.Module):
    """The official TimeSformer's input, (batch, 3, frames, H, W), in front of our model."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 2, 1, 3, 4))


@pytest.fixture(scope="module")
def official_onnx(tmp_path_factory, k400_pyth) -> Path:
    """A third-party-style ONNX export: official layout, other tensor names, no metadata of ours."""
    from models import load_checkpoint

    net = load_checkpoint(k400_pyth).eval()
    path = tmp_path_factory.mktemp("onnx") / "official.onnx"
    torch.onnx.export(
        _OfficialLayout(net),
        (torch.zeros(1, 3, 2, 32, 32),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
        opset_version=17,
        dynamo=False,
    )
    return path


@pytest.fixture(scope="module")
def kinetics_pre(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pre") / "kinetics_tiny.json"
    path.write_text(json.dumps({"num_frames": 2, "sampling_rate": 4, "short_side": 32, "crop_size": 32}))
    return path


@pytest.mark.parametrize(
    "backend,precision",
    [
        ("onnxruntime", "fp32"),
        ("onnxruntime", "fp16"),
        ("onnxruntime", "int8"),
        ("openvino", "fp32"),
        ("openvino", "fp16"),
        ("openvino", "int8"),
    ],
)
def test_an_official_layout_onnx_builds_every_cpu_backend_and_precision(
    tmp_path, capsys, official_onnx, kinetics_pre, k400_pyth, backend, precision
):
    if backend == "openvino":
        pytest.importorskip("openvino")
    extra = ["--calib", "synthetic"] if precision == "int8" else []
    rc, out, err = _build(
        capsys,
        "--model",
        str(official_onnx),
        "--preprocess",
        str(kinetics_pre),
        "--precision",
        precision,
        *extra,
        "--allow-precision-fallback",
        *_common(tmp_path, "o", backend),
    )
    assert rc == 0, err
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    prov = m["provenance"]
    assert prov["weights"] == "onnx" and prov["reference"].startswith("ONNX Runtime FP32 of the given ONNX file")
    assert any(n.startswith("input layout: the official (batch, 3, frames, H, W)") for n in prov["notes"])
    assert m["input"]["name"] == "video" and m["input"]["shape"] == [-1, 2, 3, 32, 32]
    assert m["source"]["onnx_input_layout"] == "BCTHW" and m["parity"]["passed"]
    ref = json.loads((tmp_path / "o" / "reference.json").read_text())
    assert ref["reference"].startswith("ONNX Runtime FP32 of the given ONNX file")
    # The bundle computes the PyTorch model on our layout: the Transpose in front undoes the official one.
    from models import load_checkpoint
    from runtime.preprocess import preprocess_frames

    net = load_checkpoint(k400_pyth).eval()
    frames = _frames(2, 32, 40, seed=5)
    with Engine(tmp_path / "o") as engine:
        p = engine.predict(frames, top_k=1)
        clip = preprocess_frames(frames, engine.preprocess)
    with torch.no_grad():
        want = net(torch.from_numpy(clip[None]))[0].numpy()
    cos = float(np.dot(p.logits, want) / np.linalg.norm(p.logits) / np.linalg.norm(want))
    assert cos > (0.9999 if precision == "fp32" else 0.99), cos
    assert p.label in (LABELS_DIR / "kinetics400.txt").read_text().splitlines()


def test_an_onnx_without_preprocessing_is_refused(tmp_path, capsys, official_onnx):
    rc, _, err = _build(capsys, "--model", str(official_onnx), *_common(tmp_path, "o"))
    assert rc == 2 and err.startswith(f"make engine: MODEL={official_onnx} carries no preprocessing: set PREPROCESS=")


def test_int8_of_an_onnx_needs_calib(tmp_path, capsys, official_onnx, kinetics_pre):
    rc, _, err = _build(
        capsys,
        "--model",
        str(official_onnx),
        "--preprocess",
        str(kinetics_pre),
        "--precision",
        "int8",
        *_common(tmp_path, "o"),
    )
    assert rc == 2 and err.startswith("make engine: PRECISION=int8 needs CALIB=")


def test_an_onnx_of_ours_brings_its_labels_and_preprocessing(tmp_path, capsys, k400_pyth):
    """``make onnx`` writes labels and preprocessing into the file: the bundle takes them, layout ours."""
    from export.onnx.export import main as onnx_main

    onnx_path = tmp_path / "ours.onnx"
    assert onnx_main(["--model", str(k400_pyth), "--out", str(onnx_path)]) == 0
    rc, out, err = _build(capsys, "--model", str(onnx_path), *_common(tmp_path, "o"))
    assert rc == 0, err
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["source"]["onnx_input_layout"] == "BTCHW"
    assert m["provenance"]["preprocess"] == f"{onnx_path} (its metadata)"
    assert (tmp_path / "o" / "labels.txt").read_text().splitlines()[0] == "abseiling"


@pytest.mark.parametrize("rank_bad", ["batch", "channels"])
def test_an_onnx_with_another_input_is_refused_naming_it(tmp_path, capsys, kinetics_pre, rank_bad):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(4))
    shape = (1, 2, 4, 32, 32) if rank_bad == "channels" else (1, 2, 3, 32, 32)
    net(torch.zeros(shape))
    path = tmp_path / "other.onnx"
    axes = {"x": {0: "b"}} if rank_bad == "channels" else None
    torch.onnx.export(net, (torch.zeros(shape),), str(path), input_names=["x"], dynamic_axes=axes, dynamo=False)
    rc, _, err = _build(capsys, "--model", str(path), "--preprocess", str(kinetics_pre), *_common(tmp_path, "o"))
    want = "has a fixed batch of 1" if rank_bad == "batch" else "no axis of 3 channels"
    assert rc == 2 and err.startswith(f"make engine: MODEL={path}: input 'x'") and want in err, err


def test_plan_only_reads_an_onnx_clip_shape(capsys, official_onnx):
    assert (
        main(
            [
                "--model",
                str(official_onnx),
                "--backend",
                "tensorrt",
                "--plan-only",
                "--trt-version",
                "10.3",
                "--precision",
                "fp16",
            ]
        )
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert plan["profile"]["opt"] == [1, 2, 3, 32, 32]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_an_onnx_builds_a_tensorrt_bundle_on_the_fakes(tmp_path, monkeypatch, official_onnx, kinetics_pre, precision):
    """The TensorRT path (fake TensorRT and cuda-python, tests/support/fake_tensorrt.py): the given ONNX, its
    official layout transposed, parity against ONNX Runtime FP32."""
    pytest.importorskip("onnxruntime")
    from tests.support.fake_tensorrt import FakeCudart, install

    from export.bundle.build import BuildRequest, build_bundle

    install(monkeypatch, FakeCudart(), "10.3.0")
    req = BuildRequest(
        model=str(official_onnx),
        preprocess=str(kinetics_pre),
        precision=precision,
        backend="tensorrt",
        calib="synthetic",
        out=str(tmp_path / "o"),
        cache_dir=str(tmp_path / "cache"),
        parity_clips=2,
        calib_clips=4,
    )
    m = json.loads((build_bundle(req) / "manifest.json").read_text())
    assert m["backend"] == "tensorrt" and m["parity"]["passed"] and m["provenance"]["weights"] == "onnx"


# ------------------------------------------------------------------------------------------ the record


def test_provenance_is_validated_with_the_manifest(fp32_bundle):
    from runtime.errors import BundleError
    from runtime.manifest import Manifest, validate_manifest

    m = json.loads((fp32_bundle / "manifest.json").read_text())
    assert Manifest.from_dict(m).provenance.weights == "checkpoint"
    for bad, field in (
        ({**m["provenance"], "weights": "maybe"}, "provenance.weights"),
        ({**m["provenance"], "notes": "one"}, "provenance.notes"),
        ({**m["provenance"], "labelz": "x"}, "unknown keys ['labelz']"),
    ):
        with pytest.raises(BundleError, match=re.escape(field)):
            validate_manifest({**m, "provenance": bad})


def test_the_documented_calibration_methods_are_the_accepted_ones():
    """docs/int8.md lists --calib-method's choices (issue 26: the README once listed one it refused)."""
    from export.bundle.options import OPTIONS

    from calibration.precision.int8 import METHODS

    text = (ROOT / "docs" / "int8.md").read_text()
    listed = re.search(r"`--calib-method` of\s+`python -m export.bundle.build`: (.*?) \(the choices", text, re.S).group(
        1
    )
    assert (
        set(re.findall(r"`(\w+)`", listed))
        == set(METHODS)
        == set(next(o for o in OPTIONS if o.name == "calib_method").choices)
    )


def test_make_parity_of_an_onnx_bundle_uses_onnx_runtime(tmp_path, capsys, official_onnx, kinetics_pre):
    """``make parity`` (export.bundle.parity) on a bundle built from an ONNX file: ONNX Runtime on that file is the
    FP32 reference (there is no PyTorch model), and the report says so."""
    from export.bundle.parity import check_bundle, markdown

    rc, _, err = _build(
        capsys,
        "--model",
        str(official_onnx),
        "--preprocess",
        str(kinetics_pre),
        "--precision",
        "fp16",
        *_common(tmp_path, "o"),
    )
    assert rc == 0, err
    report = check_bundle(tmp_path / "o", n=2, blocks="always")
    assert report["passed"] and report["reference"] == str(official_onnx)
    assert report["blocks"]["note"].startswith("the reference is ONNX Runtime")
    assert "reference: ONNX Runtime FP32" in markdown(report)
