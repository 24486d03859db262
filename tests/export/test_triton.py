"""``make triton``: the model repository for a bundle parses with Triton's own config schema and says what the
bundle's manifest and its engine file say (names, types, dims, batch range, labels, the engine's bytes)."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.errors import BundleError
from runtime.files import sha256_file

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed (it is in the dev extra)")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from export.serving.triton import make_config, parse_config, write_repository  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_the_repository_parses_and_matches_the_manifest_and_the_engine(fp32_bundle: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    r = subprocess.run([sys.executable, "-m", "export.serving.triton", "--engine", str(fp32_bundle), "--out",
                        str(tmp_path / "repo"), "--name", "motion"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    model = tmp_path / "repo" / "motion"
    manifest = json.loads((fp32_bundle / "manifest.json").read_text())
    cfg = _parse(model / "config.pbtxt")
    inp, out = manifest["input"], manifest["output"]
    assert cfg.name == "motion" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == inp["batch"]["max"]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [inp["batch"]["opt"]]
    assert (cfg.input[0].name, list(cfg.input[0].dims)) == (inp["name"], inp["shape"][1:])
    assert (cfg.output[0].name, list(cfg.output[0].dims)) == (out["name"], out["shape"][1:])
    assert model_config_pb2.DataType.Name(cfg.input[0].data_type) == "TYPE_FP32"
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    engine = model / "1" / cfg.default_model_filename
    assert sha256_file(engine) == manifest["files"][manifest["engine_file"]]["sha256"]
    labels = (model / cfg.output[0].label_filename).read_text().splitlines()
    assert labels == (fp32_bundle / manifest["labels_file"]).read_text().splitlines()
    assert len(labels) == cfg.output[0].dims[0]
    # the engine file itself has the names and the per-item shapes the configuration declares
    sess = ort.InferenceSession(str(engine), providers=["CPUExecutionProvider"])
    i, o = sess.get_inputs()[0], sess.get_outputs()[0]
    assert (i.name, i.shape[1:], o.name, o.shape[1:]) == (cfg.input[0].name, list(cfg.input[0].dims),
                                                         cfg.output[0].name, list(cfg.output[0].dims))
    assert not isinstance(i.shape[0], int)  # a dynamic batch axis, as max_batch_size > 0 needs

    # writing again replaces the model folder whole and leaves no temporary folder behind
    write_repository(fp32_bundle, tmp_path / "repo", "motion", instances=3, queue_delay_us=100)
    cfg = _parse(model / "config.pbtxt")
    assert cfg.instance_group[0].count == 3 and cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["motion"]


def test_tensorrt_fp16_and_refusals(fp32_bundle: Path) -> None:
    manifest = json.loads((fp32_bundle / "manifest.json").read_text())
    trt = copy.deepcopy(manifest)
    trt.update(backend="tensorrt", engine_file="model.plan")
    trt["input"]["dtype"] = "float16"
    cfg = parse_config(make_config(trt, "motion_trt", instances=2))
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert model_config_pb2.DataType.Name(cfg.input[0].data_type) == "TYPE_FP16"
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert cfg.instance_group[0].count == 2
    with pytest.raises(ValueError, match="only on a GPU"):
        make_config(trt, "x", kind="cpu")
    high = copy.deepcopy(manifest)
    high["input"]["batch"]["min"] = 2
    with pytest.raises(BundleError, match="input.batch.min is 2"):
        make_config(high, "x")
    with pytest.raises(ValueError, match="does not parse as Triton's ModelConfig"):
        parse_config('name: "x"\nmax_batch_size: four\n')


def test_a_bad_bundle_is_refused_in_one_line(fp32_bundle: Path, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "export.serving.triton", "--engine", str(tmp_path / "missing"), "--out",
                        str(tmp_path / "repo")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "missing" in r.stderr, r.stderr
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())
    # a damaged engine is never published
    import shutil

    bad = tmp_path / "bad_bundle"
    shutil.copytree(fp32_bundle, bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx"):
        write_repository(bad, tmp_path / "repo2")
    assert not (tmp_path / "repo2" / "bad_bundle").exists()
