"""make deepstream: the nvdspreprocess/nvinfer configs parse as key files and match the manifest; the NCTHW ONNX
gives the bundle's logits; nothing of a label or name can add a line; inputs and foreign folders are never replaced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.serving import deepstream as ds


def _write(bundle: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "export.serving.deepstream",
            "--engine",
            str(bundle),
            "--out",
            str(out),
            "--cache",
            str(bundle.parent / "cache"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def ds_folder(fp32_bundle: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deepstream") / "motion"
    r = _write(fp32_bundle, out, "--source-size", "1280x720", "--sources", "2")
    assert r.returncode == 0, r.stderr
    return out


def test_configs_parse_and_match_the_manifest(ds_folder: Path, fp32_bundle: Path) -> None:
    manifest = json.loads((fp32_bundle / "manifest.json").read_text())
    pre, inp = manifest["preprocess"], manifest["input"]
    p = ds.parse_configs((ds_folder / "config_preprocess.txt").read_text(), "config_preprocess.txt")
    i = ds.parse_configs((ds_folder / "config_infer.txt").read_text(), "config_infer.txt")
    assert set(p) == {"property", "user-configs", "group-0"} and set(i) == {"property"}
    assert set(p["property"]) <= ds.PREPROCESS_KEYS and set(p["user-configs"]) <= ds.USER_KEYS
    assert set(i["property"]) <= ds.INFER_KEYS
    n, T, crop = inp["batch"]["max"], pre["num_frames"], pre["crop_size"]
    assert inp["shape"][1:] == [T, 3, crop, crop]  # the bundle: (B, T, 3, H, W)
    assert p["property"]["network-input-shape"] == f"{n};3;{T};{crop};{crop}"  # DeepStream: (N, C, T, H, W)
    assert p["property"]["network-input-order"] == "2" and p["property"]["tensor-name"] == inp["name"]
    assert int(p["user-configs"]["subsample"]) + 1 == pre["sampling_rate"]
    scale = [float(x) for x in p["user-configs"]["channel-scale-factors"].split(";")]
    offset = [float(x) for x in p["user-configs"]["channel-mean-offsets"].split(";")]
    pixel = np.array([0.0, 100.0, 255.0])  # (pixel - offset) * scale == (pixel / 255 - mean) / std
    for c in range(3):
        np.testing.assert_allclose(
            (pixel - offset[c]) * scale[c], (pixel / 255 - pre["mean"][c]) / pre["std"][c], rtol=1e-6, atol=1e-6
        )
    # 1280x720 -> short side to the model's size, centre crop: the centre 720x720 square when crop == short side
    side = round(crop * 720 / pre["short_side"])
    assert p["group-0"]["roi-params-src-1"] == f"{(1280 - side) // 2};{(720 - side) // 2};{side};{side}"
    assert i["property"]["input-tensor-from-meta"] == "1" and i["property"]["network-type"] == "1"
    assert i["property"]["batch-size"] == str(n) and i["property"]["onnx-file"] == ds.MODEL_FILE
    labels = (fp32_bundle / manifest["labels_file"]).read_text().split()
    assert (ds_folder / i["property"]["labelfile-path"]).read_text() == ";".join(labels) + "\n"
    own = json.loads((ds_folder / ds.MANIFEST).read_text())
    assert own["input"]["layout"] == "NCTHW" and own["input"]["shape"] == [-1, 3, T, crop, crop]


def test_ncthw_onnx_gives_the_bundles_logits(ds_folder: Path, fp32_bundle: Path) -> None:
    import onnxruntime as ort

    manifest = json.loads((fp32_bundle / "manifest.json").read_text())
    clip = np.random.default_rng(0).standard_normal((2, *manifest["input"]["shape"][1:])).astype(np.float32)
    ref = ort.InferenceSession(str(fp32_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    new = ort.InferenceSession(str(ds_folder / ds.MODEL_FILE), providers=["CPUExecutionProvider"])
    assert [tuple(x.shape[1:]) for x in new.get_inputs()] == [(3, *np.array(clip.shape)[[1, 3, 4]])]
    (want,) = ref.run(None, {"video": clip})
    logits, probs = new.run(["logits", "probs"], {"video": clip.transpose(0, 2, 1, 3, 4).copy()})
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)  # same weights; the bundle's file is ORT-optimised
    e = np.exp(want - want.max(1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), atol=1e-5)
    assert not np.allclose(
        new.run(["logits"], {"video": clip.transpose(0, 2, 1, 3, 4)[:, :, ::-1].copy()})[0], want, atol=1e-3
    )  # the frame axis matters: feeding it reversed changes the answer


def test_values_that_could_add_a_line_are_refused() -> None:
    for bad in ("a\nb", "x]\n[property", "v=1", "a b", "#c"):
        with pytest.raises(ValueError, match="one key-file value"):
            ds._value(bad, "config_infer.txt [property] tensor-name")
    assert ds._value([1, 2.5, "x"], "k") == "1;2.5;x"
    with pytest.raises(ValueError, match="does not parse"):
        ds.parse_configs("[property]\na=1\na=2\n", "x.txt")


def test_labels_with_the_separator_and_foreign_folders_are_refused(
    ds_folder: Path, fp32_bundle: Path, tmp_path: Path
) -> None:
    manifest = json.loads((fp32_bundle / "manifest.json").read_text())
    with pytest.raises(ValueError, match="splits its label file on ';'"):
        _bad_labels(fp32_bundle, manifest, tmp_path)
    r = _write(fp32_bundle, fp32_bundle)  # the bundle itself
    assert r.returncode == 2 and "input" in r.stderr and (fp32_bundle / "manifest.json").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = _write(fp32_bundle, mine)
    assert r.returncode == 2 and "not a folder written by make deepstream" in r.stderr, r.stderr
    assert (mine / "notes.txt").read_text() == "keep me"
    before = (ds_folder / "config_infer.txt").read_text()
    r = _write(fp32_bundle, ds_folder, "--source-size", "1280x720", "--sources", "2")  # our own: replaced
    assert r.returncode == 0, r.stderr
    assert (ds_folder / "config_infer.txt").read_text() == before
    (ds_folder / "model_ncthw.onnx_b4_gpu0_fp32.engine").write_bytes(b"built by nvinfer")
    r = _write(fp32_bundle, ds_folder)
    assert r.returncode == 2 and "does not list" in r.stderr  # a folder DeepStream has used is left to the user


def _bad_labels(bundle: Path, manifest: dict, tmp_path: Path) -> str:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    labels = (copy / manifest["labels_file"]).read_text().split("\n")
    labels[1] = "walk;run"
    (copy / manifest["labels_file"]).write_text("\n".join(labels))
    from runtime.files import sha256_file

    manifest["files"][manifest["labels_file"]] = {
        "sha256": sha256_file(copy / manifest["labels_file"]),
        "size": (copy / manifest["labels_file"]).stat().st_size,
    }
    return ds._labels_line(copy, manifest)


def test_a_tensorrt_bundle_goes_through_its_engine_onnx_found_by_sha256(fp32_bundle: Path, tmp_path: Path) -> None:
    manifest = {
        **json.loads((fp32_bundle / "manifest.json").read_text()),
        "backend": "tensorrt",
        "engine_file": "model.plan",
    }
    want = manifest["source"]["onnx_sha256"]
    found = ds._engine_onnx(fp32_bundle, manifest, None, str(fp32_bundle.parent / "cache"))
    from runtime.files import sha256_file

    assert sha256_file(found) == want  # the ONNX the plan was built from, not the plan (B, T, 3, H, W)
    with pytest.raises(ValueError, match=r"plan takes \(B, T, 3, H, W\).*pass --onnx"):
        ds._engine_onnx(fp32_bundle, manifest, None, str(tmp_path))
    other = tmp_path / "other.onnx"
    other.write_bytes(b"not the engine onnx")
    with pytest.raises(ValueError, match="not the ONNX this bundle was built from"):
        ds._engine_onnx(fp32_bundle, manifest, str(other), str(tmp_path))
    with pytest.raises(ValueError, match="ONNX Runtime-only|TensorRT cannot read"):
        ds._deepstream_onnx(fp32_bundle / "model.onnx", manifest)  # the ORT-optimised file: com.microsoft ops
