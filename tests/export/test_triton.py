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
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export.serving.triton import make_config, parse_config, write_repository

ROOT = Path(__file__).resolve().parents[2]


def _parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_the_repository_parses_and_matches_the_manifest_and_the_engine(fp32_bundle: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.serving.triton",
            "--engine",
            str(fp32_bundle),
            "--out",
            str(tmp_path / "repo"),
            "--name",
            "motion",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
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
    assert (i.name, i.shape[1:], o.name, o.shape[1:]) == (
        cfg.input[0].name,
        list(cfg.input[0].dims),
        cfg.output[0].name,
        list(cfg.output[0].dims),
    )
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
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.serving.triton",
            "--engine",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "repo"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
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


# --------------------------------------------------------------------------- issue 27: the backend per bundle


def _derive(
    src: Path,
    dst: Path,
    backend: str,
    engine: str = "model.onnx",
    session: dict | None = None,
    batch: dict | None = None,
    labels_name: str | None = None,
    input_name: str | None = None,
) -> Path:
    """A copy of ``src`` whose manifest says another backend (engine renamed, files table re-hashed): what
    make engine writes for that backend, without building it."""
    import shutil

    from runtime.files import sha256_file
    from runtime.manifest import describe_files, validate_manifest

    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    if engine != m["engine_file"]:
        (dst / m["engine_file"]).rename(dst / engine)
    if labels_name is not None:
        (dst / m["labels_file"]).rename(dst / labels_name)
        m["labels_file"] = labels_name
    m.update(backend=backend, engine_file=engine, session=session or {})
    if batch is not None:
        m["input"]["batch"] = batch
    if input_name is not None:
        m["input"]["name"] = input_name
    names = [p.name for p in dst.iterdir() if p.name != "manifest.json"]
    if labels_name is None:
        m["files"] = describe_files(dst, names)
    else:  # a hostile name the runtime's own describe_files refuses: hash it by hand, as an attacker would
        m["files"] = {n: {"sha256": sha256_file(dst / n), "size": (dst / n).stat().st_size} for n in names}
    if labels_name is None and input_name is None:
        validate_manifest(m, dst / "manifest.json")  # the runtime accepts it
    (dst / "manifest.json").write_text(json.dumps(m, indent=2))
    return dst


@pytest.mark.parametrize(
    "backend,engine,session,field,value,kind",
    [
        ("onnxruntime", "model.onnx", {"intra_op_num_threads": 2}, "platform", "onnxruntime_onnx", "KIND_CPU"),
        ("tensorrt", "model.plan", {}, "platform", "tensorrt_plan", "KIND_GPU"),
        (
            "openvino",
            "model.onnx",
            {"performance_hint": "LATENCY", "num_threads": 2},
            "backend",
            "openvino",
            "KIND_CPU",
        ),
    ],
)
def test_each_backend_gets_its_triton_backend_warmup_and_perf_data(
    fp32_bundle, tmp_path, backend, engine, session, field, value, kind
):
    import base64

    import numpy as np

    bundle = _derive(fp32_bundle, tmp_path / f"b_{backend}", backend, engine, session)
    model = write_repository(bundle, tmp_path / "repo", name="m")
    cfg = _parse(model / "config.pbtxt")  # Triton's own schema
    other = {"platform": "backend", "backend": "platform"}[field]
    assert (getattr(cfg, field), getattr(cfg, other)) == (value, "")
    assert cfg.default_model_filename == engine and (model / "1" / engine).is_file()
    assert sorted(p.name for p in (model / "1").iterdir()) == [engine]  # only the engine in the version folder
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == kind
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    manifest = json.loads((bundle / "manifest.json").read_text())
    b = manifest["input"]["batch"]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [b["opt"]]
    if backend == "openvino":  # the parameters Triton's OpenVINO backend README documents
        assert params == {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": "2",
            "NUM_STREAMS": "1",
            "ENABLE_BATCH_PADDING": "YES",
        }
        # that backend refuses any batch but max_batch_size unless it pads: the opt batch bounds the padding
        assert cfg.max_batch_size == b["opt"] and [w.batch_size for w in cfg.model_warmup] == [b["opt"]]
    else:
        assert params == ({"intra_op_thread_count": "2"} if backend == "onnxruntime" else {})
        # warm-up: the reference clip at batch 1, opt and max, from warmup/ (raw little-endian, one clip)
        assert cfg.max_batch_size == b["max"]
        assert sorted(w.batch_size for w in cfg.model_warmup) == sorted({1, b["opt"], b["max"]})
    clip_shape = manifest["input"]["shape"][1:]
    raw = (model / "warmup" / "reference_clip.bin").read_bytes()
    for w in cfg.model_warmup:
        wi = w.inputs[manifest["input"]["name"]]
        assert wi.input_data_file == "reference_clip.bin" and list(wi.dims) == clip_shape
    assert len(raw) == int(np.prod(clip_shape)) * 4
    # perf_analyzer's --input-data JSON: batch-1 entries of base64 little-endian bytes; the first is the warm-up clip
    data = json.loads((model / "perf_analyzer_input.json").read_text())["data"]
    clips = [
        np.frombuffer(base64.b64decode(d[manifest["input"]["name"]]["b64"]), "<f4").reshape(clip_shape) for d in data
    ]
    assert len(clips) == 2 and clips[0].tobytes() == raw
    if backend == "onnxruntime":  # the data is the bundle's reference clips: the engine gives its stored logits
        from runtime import Engine
        from runtime.reference import load_reference

        ref = load_reference(bundle, manifest)
        with Engine(bundle) as e:
            got = e.infer(np.stack(clips))
        np.testing.assert_allclose(got, ref.engine_logits[:2], rtol=0, atol=1e-4)


def test_a_batch_1_plan_gets_two_gpu_instances(fp32_bundle, tmp_path):
    bundle = _derive(fp32_bundle, tmp_path / "b", "tensorrt", "model.plan", batch={"min": 1, "opt": 1, "max": 1})
    cfg = _parse(write_repository(bundle, tmp_path / "repo", name="m") / "config.pbtxt")
    assert cfg.max_batch_size == 1 and not cfg.dynamic_batching.preferred_batch_size
    assert cfg.instance_group[0].count == 2 and [w.batch_size for w in cfg.model_warmup] == [1]


# --------------------------------------------------------------------------- issue 28: data loss and injection


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_the_source_bundle_and_user_folders_are_never_replaced(fp32_bundle, tmp_path):
    """Finding 1: OUT=<the bundle's parent> (the model folder would be the bundle itself), OUT inside the
    bundle, and OUT=<a folder of the user's> with a same-named subfolder: refused, nothing changed."""
    import shutil

    from runtime import Engine

    engines = tmp_path / "engines"
    bundle = shutil.copytree(fp32_bundle, engines / "motion")
    before = _files(bundle)
    with pytest.raises(ValueError, match=r"is the input"):
        write_repository(bundle, engines)  # the default name is the bundle folder's: engines/motion
    with pytest.raises(ValueError, match=r"lies inside the input"):
        write_repository(bundle, bundle, name="x")
    assert _files(bundle) == before and sorted(p.name for p in engines.iterdir()) == ["motion"]
    Engine(bundle).close()  # still loads, hashes checked

    user = tmp_path / "mine"
    (user / "motion" / "sub").mkdir(parents=True)
    (user / "motion" / "notes.txt").write_text("keep me")
    (user / "motion" / "sub" / "photo.jpg").write_bytes(b"\xff\xd8")
    mine = _files(user)
    r = subprocess.run(
        [sys.executable, "-m", "export.serving.triton", "--engine", str(bundle), "--out", str(user)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not a model folder written by make triton" in r.stderr
    assert _files(user) == mine and sorted(p.name for p in user.iterdir()) == ["motion"]


def test_our_model_folder_is_replaced_only_while_it_is_ours(fp32_bundle, tmp_path):
    model = write_repository(fp32_bundle, tmp_path / "repo", name="m")
    own = json.loads((model / "export_manifest.json").read_text())
    assert set(own["files"]) == {p for p in _files(model) if p != "export_manifest.json"}
    write_repository(fp32_bundle, tmp_path / "repo", name="m", instances=2)  # ours: replaced
    (model / "notes.txt").write_text("added by someone")
    with pytest.raises(ValueError, match=r"notes.txt.*does not list"):
        write_repository(fp32_bundle, tmp_path / "repo", name="m")
    (model / "notes.txt").unlink()
    (model / "labels.txt").write_text("edited\n")
    with pytest.raises(ValueError, match=r"labels.txt"):
        write_repository(fp32_bundle, tmp_path / "repo", name="m")
    assert (model / "labels.txt").read_text() == "edited\n"
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["m"]  # no staging folder left


@pytest.mark.parametrize("what", ["labels_file", "input.name"])
def test_names_cannot_inject_config_lines(fp32_bundle, tmp_path, what):
    """Finding 4: a labels file (or tensor) name holding a quote and newlines loads in the runtime, but never
    reaches config.pbtxt: refused by the strict name pattern, before anything is written."""
    # closes the output block, adds a backend and a parameter, then opens an output the template's tail closes
    evil = (
        'labels.txt"\n  }\n]\nbackend: "python"\nparameters { key: "EXECUTION_ENV_PATH" value { string_value: '
        '"env.tar.gz" } }\noutput [\n  {\n    name: "extra'
    )
    kw = {"labels_name": evil} if what == "labels_file" else {"input_name": 'video"\n  dims: [ 1 ]\n#'}
    bundle = _derive(fp32_bundle, tmp_path / "b", "onnxruntime", **kw)
    # refused by the runtime's manifest check (a file name outside the strict pattern) or by the writer's own check
    with pytest.raises(BundleError, match=r"files key|labels_file" if what == "labels_file" else r"input\.name"):
        write_repository(bundle, tmp_path / "repo", name="m")
    assert not (tmp_path / "repo" / "m").exists()
    # the text itself comes from protobuf's writer: a hostile string stays one quoted, escaped value
    cfg = model_config_pb2.ModelConfig(name="m")
    cfg.output.add(name="logits", label_filename=evil)
    text = text_format.MessageToString(cfg)
    back = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert back.output[0].label_filename == evil and back.backend == "" and not back.parameters
