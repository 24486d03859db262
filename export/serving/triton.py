"""A Triton Inference Server model repository for an engine bundle: ``make triton ENGINE=<bundle> OUT=<dir>``.

``python -m export.serving.triton --engine <bundle> --out <dir> [--name N] [--instances N] [--kind auto|cpu|gpu]
[--queue-delay-us 500] [--clips N]`` writes::

    <dir>/<name>/config.pbtxt           the model configuration (below), written by protobuf's own text writer
    <dir>/<name>/labels.txt             the bundle's labels (the output's label_filename)
    <dir>/<name>/1/<engine file>        the engine (and any external-data file), copied after its sha256 is checked
    <dir>/<name>/warmup/reference_clip.bin   one preprocessed reference clip, raw little-endian (model_warmup)
    <dir>/<name>/perf_analyzer_input.json    the reference clips in perf_analyzer's ``--input-data`` JSON format
    <dir>/<name>/bundle_manifest.json   the bundle's manifest, for provenance (Triton ignores it)
    <dir>/<name>/export_manifest.json   what make triton wrote: every file's sha256 and size (see below)

The backend follows the bundle: a TensorRT plan runs on ``platform: "tensorrt_plan"`` (KIND_GPU); an ONNX
Runtime bundle on ``platform: "onnxruntime_onnx"`` (``intra_op_thread_count`` from the bundle's session); an
OpenVINO bundle on ``backend: "openvino"`` with ``default_model_filename: "model.onnx"`` (the bundle's own
OpenVINO file, Q/DQ INT8 included, which OpenVINO reads as it is) and its session's ``PERFORMANCE_HINT``,
``INFERENCE_NUM_THREADS`` and ``TARGET_DEVICE`` (parameters of Triton's OpenVINO backend README; that backend
has no parameter forcing f32, so on a BF16 CPU OpenVINO's default may run an FP32 bundle in bf16).

Batching follows the bundle's batch range: ``max_batch_size`` = its max (its opt for OpenVINO, whose Triton
backend pads every batch to max_batch_size: :func:`batch_plan`), dynamic batching with the opt batch as the
preferred size, and one instance when batches can form (the batcher fills it) or two on a GPU when the
engine takes batch 1 only (one copies while the other computes); CPU backends get one instance (a session
already uses every core). Warm-up runs the reference clip at batch 1, opt and max (each shape a TensorRT
profile or a CPU plugin prepares; OpenVINO: its one batch size). The reference clips are the bundle's own
(``reference.npz``, hash-checked) when it has them, else its parity clips made again (its build's calibration
source when it is synthetic or present here, else the synthetic clips; the parity seed); ``--clip-source``
overrides both.

Every name that goes into the configuration (model, tensors, files) must match a strict pattern, and the text
is written from a ``tritonclient.grpc.model_config_pb2.ModelConfig`` message by ``google.protobuf.text_format``
(so no string of the bundle can add a line); it is parsed back with Triton's schema and checked against the
manifest before anything is written. The model folder is assembled beside its final place and published in
one atomic step (``export.bundle.publish``); an existing ``<dir>/<name>`` is replaced only when it is a model
folder make triton wrote (its ``export_manifest.json`` lists every file with a matching hash) and never when
it is, holds or lies inside the source bundle (:func:`runtime.files.replace_problem`).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cli_args import ArgumentParser, user_errors
from runtime.errors import BundleError
from runtime.files import (
    FolderNotReplaceable,
    check_replaceable,
    folder_records,
    owned_folder_problem,
    sha256_file,
    write_text_atomic,
)
from runtime.manifest import read_manifest, verify_files

__all__ = [
    "TRITON_TYPES",
    "MODEL_MANIFEST",
    "serving_backend",
    "build_config",
    "make_config",
    "parse_config",
    "reference_clips",
    "batch_plan",
    "model_folder_problem",
    "write_repository",
    "main",
]

#: manifest dtype -> Triton data type
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int64": "TYPE_INT64"}
_NUMPY = {"float32": "<f4", "float16": "<f2", "uint8": "u1"}
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
#: a model (folder) name, a file name, a tensor name: what Triton and a file system accept, nothing to escape
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
TENSOR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,127}")
MODEL_MANIFEST = "export_manifest.json"
WRITER = "make triton"
WARMUP_FILE = "warmup/reference_clip.bin"
_NOT_MODEL_FILES = ("reference.json", "reference.npz")
PERF_FILE = "perf_analyzer_input.json"


def _name(value: Any, field: str, where: str, pattern: re.Pattern[str] = NAME_RE) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value) or value in (".", ".."):
        at = f"{where}: " if where else ""
        raise BundleError(
            f"{at}{field}: expected a name matching {pattern.pattern} (it goes into "
            f"config.pbtxt and the model folder), got {value!r:.80}"
        )
    return value


def serving_backend(manifest: dict[str, Any], where: str = "manifest.json") -> tuple[str, str, str]:
    """``(field, value, model file name)`` for the bundle's backend: ``("platform", "tensorrt_plan" |
    "onnxruntime_onnx", engine_file)`` or ``("backend", "openvino", "model.onnx")``."""
    backend, engine_file = manifest["backend"], manifest["engine_file"]
    if backend == "tensorrt":
        return "platform", "tensorrt_plan", engine_file
    if backend == "onnxruntime":
        return "platform", "onnxruntime_onnx", engine_file
    if backend == "openvino":
        if engine_file != "model.onnx":  # the OpenVINO backend reads model.xml, model.onnx, ... by these names
            raise BundleError(
                f"{where}: engine_file {engine_file!r}: Triton's OpenVINO backend reads an ONNX model "
                "as 1/model.onnx; rebuild the bundle with make engine BACKEND=openvino"
            )
        return "backend", "openvino", engine_file
    raise BundleError(f"{where}: backend {backend!r}: make triton knows tensorrt, onnxruntime and openvino")


def _kind(manifest: dict[str, Any], platform: str, kind: str) -> str:
    if kind == "auto":
        providers = (manifest.get("session") or {}).get("providers") or []
        kind = "gpu" if platform == "tensorrt_plan" or any(p in _GPU_PROVIDERS for p in providers) else "cpu"
    if kind not in ("cpu", "gpu"):
        raise ValueError(f"kind: expected auto, cpu or gpu, got {kind!r}")
    if platform == "tensorrt_plan" and kind == "cpu":
        raise ValueError("kind: a TensorRT plan runs only on a GPU (KIND_GPU); got cpu")
    if platform == "openvino" and kind == "gpu":
        raise ValueError(
            "kind: Triton's KIND_GPU is an NVIDIA GPU; an OpenVINO bundle runs KIND_CPU (its session's "
            "device goes to TARGET_DEVICE)"
        )
    return kind


def _parameters(manifest: dict[str, Any], value: str) -> dict[str, str]:
    """Backend parameters from the bundle's session (names as the Triton backends document them)."""
    session = manifest.get("session") or {}
    if value == "onnxruntime_onnx":
        threads = int(session.get("intra_op_num_threads") or 0)
        return {"intra_op_thread_count": str(threads)} if threads > 0 else {}
    if value == "openvino":
        params = {"PERFORMANCE_HINT": str(session.get("performance_hint", "LATENCY"))}
        if int(session.get("num_threads") or 0) > 0:
            params["INFERENCE_NUM_THREADS"] = str(int(session["num_threads"]))
        if str(session.get("device", "CPU")) != "CPU":
            params["TARGET_DEVICE"] = _name(session["device"], "session.device", "manifest")
        return params
    return {}


def batch_plan(manifest: dict[str, Any], value: str) -> tuple[int, list[int]]:
    """``(max_batch_size, warm-up batch sizes)`` from the bundle's batch range. Triton's OpenVINO backend answers
    a batch other than max_batch_size with an error unless ENABLE_BATCH_PADDING pads it (src/openvino.cc): an
    OpenVINO model gets the bundle's opt batch as its max (padding costs at most opt - 1 clips) and warms up there."""
    batch = manifest["input"]["batch"]
    opt, hi = int(batch.get("opt", batch["min"])), int(batch["max"])
    if value == "openvino":
        return opt, [opt]
    return hi, sorted({1, opt, hi})


def build_config(
    manifest: dict[str, Any],
    name: str,
    instances: int | None = None,
    kind: str = "auto",
    queue_delay_us: int = 500,
    where: str = "manifest.json",
    warmup_data: bool = True,
):
    """The ``ModelConfig`` message for a validated manifest (see the module docstring); ``warmup_data``: warm up
    on the reference clip in ``warmup/`` (else on random data)."""
    from tritonclient.grpc import model_config_pb2 as pb

    field, value, model_file = serving_backend(manifest, where)
    inp, out = manifest["input"], manifest["output"]
    _name(name, "name", "")
    _name(model_file, "engine_file", where)
    _name(inp["name"], "input.name", where, TENSOR_RE)
    _name(out["name"], "output.name", where, TENSOR_RE)
    labels = manifest.get("labels_file")
    if labels:
        _name(labels, "labels_file", where)
    batch = inp["batch"]
    lo, opt, hi = int(batch["min"]), int(batch.get("opt", batch["min"])), int(batch["max"])
    if lo != 1:  # Triton's dynamic batcher sends any batch from 1 up to max_batch_size
        raise BundleError(
            f"{where}: input.batch.min is {lo}; Triton sends batches from 1 up to max_batch_size, so the "
            "engine must accept batch 1 (rebuild with BATCH=1:opt:max)"
        )
    for key, spec in (("input", inp), ("output", out)):
        if spec["dtype"] not in TRITON_TYPES:
            raise BundleError(
                f"{where}: {key}.dtype {spec['dtype']!r} has no Triton type here; expected one of "
                f"{sorted(TRITON_TYPES)}"
            )
    kind = _kind(manifest, value, kind)
    if instances is None:
        instances = 2 if kind == "gpu" and hi == 1 else 1
    mbs, warm = batch_plan(manifest, value)
    if instances < 1:
        raise ValueError(f"instances: expected a positive count, got {instances}")
    if queue_delay_us < 0:
        raise ValueError(f"queue_delay_us: expected >= 0, got {queue_delay_us}")

    cfg = pb.ModelConfig(name=name, max_batch_size=mbs, default_model_filename=model_file)
    setattr(cfg, field, value)
    cfg.input.add(name=inp["name"], data_type=pb.DataType.Value(TRITON_TYPES[inp["dtype"]]), dims=inp["shape"][1:])
    o = cfg.output.add(name=out["name"], data_type=pb.DataType.Value(TRITON_TYPES[out["dtype"]]), dims=out["shape"][1:])
    if labels:
        o.label_filename = labels
    cfg.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    if 1 < opt <= mbs:
        cfg.dynamic_batching.preferred_batch_size.append(opt)
    cfg.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.Kind.Value(f"KIND_{kind.upper()}"))
    if value == "openvino":  # one stream per instance (the instances are the parallelism); see batch_plan
        cfg.parameters["NUM_STREAMS"].string_value = "1"
        cfg.parameters["ENABLE_BATCH_PADDING"].string_value = "YES"
    for key, val in _parameters(manifest, value).items():
        cfg.parameters[key].string_value = val
    data_file = WARMUP_FILE.split("/", 1)[1] if warmup_data else None
    for b in warm:
        w = cfg.model_warmup.add(
            name=f"reference_clip_batch_{b}" if data_file else f"random_batch_{b}", batch_size=b, count=1
        )
        wi = w.inputs[inp["name"]]
        wi.data_type = pb.DataType.Value(TRITON_TYPES[inp["dtype"]])
        wi.dims.extend(inp["shape"][1:])
        if data_file:
            wi.input_data_file = data_file
        else:
            wi.random_data = True
    return cfg


def make_config(
    manifest: dict[str, Any],
    name: str,
    instances: int | None = None,
    kind: str = "auto",
    queue_delay_us: int = 500,
    where: str = "manifest.json",
    warmup_data: bool = True,
) -> str:
    """The ``config.pbtxt`` text of :func:`build_config`, written by protobuf's text writer."""
    from google.protobuf import text_format

    cfg = build_config(manifest, name, instances, kind, queue_delay_us, where, warmup_data)
    head = (
        "# Triton model configuration written by `make triton` (export/serving/triton.py) from an engine "
        "bundle's manifest.json\n"
    )
    return head + text_format.MessageToString(cfg)


def parse_config(text: str):
    """Parse ``config.pbtxt`` text with Triton's own schema; ``ValueError`` with the parser's message otherwise."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise RuntimeError(
            f"Triton's model-config schema needs tritonclient[grpc] ({e}); pip install 'tritonclient[grpc]'"
        ) from e
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ValueError(f"config.pbtxt does not parse as Triton's ModelConfig: {e}") from e


def _check_parsed(cfg, manifest: dict[str, Any], name: str) -> None:
    """The parsed configuration says what the manifest says (backend, names, types, dims, batch): a guard on
    build_config and the text writer."""
    from tritonclient.grpc import model_config_pb2 as pb

    inp, out = manifest["input"], manifest["output"]
    field, value, model_file = serving_backend(manifest)
    got = (
        len(cfg.input),
        len(cfg.output),
        getattr(cfg, field),
        cfg.default_model_filename,
        cfg.name,
        cfg.max_batch_size,
        cfg.input[0].name,
        list(cfg.input[0].dims),
        pb.DataType.Name(cfg.input[0].data_type),
        cfg.output[0].name,
        list(cfg.output[0].dims),
        pb.DataType.Name(cfg.output[0].data_type),
    )
    want = (
        1,
        1,
        value,
        model_file,
        name,
        batch_plan(manifest, value)[0],
        inp["name"],
        list(inp["shape"][1:]),
        TRITON_TYPES[inp["dtype"]],
        out["name"],
        list(out["shape"][1:]),
        TRITON_TYPES[out["dtype"]],
    )
    if got != want:
        raise AssertionError(f"config.pbtxt parsed as {got}, expected {want}")  # a bug in build_config


# --------------------------------------------------------------------------- reference clips


def reference_clips(
    bundle: str | Path, manifest: dict[str, Any], n: int = 2, spec: str | None = None
) -> np.ndarray | None:
    """Up to ``n`` clips ``(n, T, 3, H, W)`` in the engine's input dtype (little-endian), or None when none can
    be made: the bundle's own reference clips (``reference.npz``, hash-checked) when it has them, else its build's
    parity clips made again (synthetic, or the build's calibration source when present here); ``spec`` (a folder
    of videos, a clip file or ``synthetic[-TASK][:SEED]``) overrides both."""
    from runtime.preprocess import PreprocessConfig

    dtype = np.dtype(_NUMPY[manifest["input"]["dtype"]]) if manifest["input"]["dtype"] in _NUMPY else None
    if dtype is None or n < 1:
        return None
    if spec is None:
        try:
            from runtime.reference import has_reference, load_reference
        except ImportError:  # a runtime without reference sets
            has_reference = None
        if has_reference is not None and has_reference(manifest):
            return load_reference(bundle, manifest).inputs(dtype)[:n]
    if dtype.kind != "f":  # parity clips are normalised floats; an integer input needs the bundle's own clips
        return None
    from calibration.clips.calibset import load_clips

    request = (manifest.get("build") or {}).get("request") or {}
    seed = request.get("seed", 0) if isinstance(request.get("seed", 0), int) else 0
    if spec is None:
        calib = request.get("calib")
        usable = isinstance(calib, str) and (calib.startswith("synthetic") or Path(calib).exists())
        spec = calib if usable else "synthetic"
    clips = load_clips(spec, PreprocessConfig.from_dict(manifest["preprocess"]), n=n, seed=seed + 1000)
    return np.ascontiguousarray(clips.astype(dtype))


def perf_input_json(manifest: dict[str, Any], clips: np.ndarray) -> str:
    """perf_analyzer's ``--input-data`` JSON: one batch-1 entry per clip, base64 of its little-endian bytes."""
    inp = manifest["input"]
    data = [{inp["name"]: {"b64": base64.b64encode(np.ascontiguousarray(c).tobytes()).decode("ascii")}} for c in clips]
    return json.dumps({"data": data}) + "\n"


# --------------------------------------------------------------------------- the folder make triton owns


def _validate_model_manifest(data: Any, path: Path) -> None:
    """The full check of ``export_manifest.json``: ValueError naming the field otherwise."""
    if not isinstance(data, dict) or data.get("schema_version") != 1 or data.get("writer") != WRITER:
        raise ValueError(f"{path}: expected schema_version 1 written by {WRITER!r}")
    unknown = sorted(set(data) - {"schema_version", "writer", "bundle", "files"})
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}")
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{path}: files: expected an object listing every file")
    for rel, entry in files.items():
        parts = rel.split("/") if isinstance(rel, str) else []
        if not parts or any(not NAME_RE.fullmatch(p) or p in (".", "..") for p in parts) or rel == MODEL_MANIFEST:
            raise ValueError(f"{path}: files key {rel!r}: expected a relative path of plain names")
        if (
            not isinstance(entry, dict)
            or set(entry) != {"sha256", "size"}
            or not isinstance(entry["sha256"], str)
            or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
            or isinstance(entry["size"], bool)
            or not isinstance(entry["size"], int)
            or entry["size"] < 0
        ):
            raise ValueError(f"{path}: files[{rel!r}]: expected {{sha256: 64 hex digits, size: bytes}}")


def model_folder_problem(folder: Path) -> str | None:
    """None when ``folder`` is a model folder make triton wrote and nothing changed in it since, else why not."""
    return owned_folder_problem(folder, MODEL_MANIFEST, _validate_model_manifest)


def _check_target(final: Path, out_dir: Path, bundle: Path) -> None:
    check_replaceable(
        final,
        model_folder_problem,
        "a model folder written by make triton",
        inputs=[bundle],
        within=out_dir,
        what="OUT/name",
    )


def _stage(tmp: Path, bundle: Path, manifest: dict[str, Any], text: str, clips: np.ndarray | None) -> None:
    """Write every file of the model folder into ``tmp``, then its export_manifest.json."""
    labels = manifest.get("labels_file")
    (tmp / "1").mkdir()
    for fname, entry in manifest["files"].items():
        if fname in _NOT_MODEL_FILES:  # the reference set: its clips became warmup/ and the perf_analyzer data
            continue
        dst = tmp / (fname if fname == labels else f"1/{_name(fname, 'files key', 'bundle')}")
        shutil.copyfile(bundle / fname, dst)
        if sha256_file(dst) != entry["sha256"]:  # the copy is what the manifest describes
            raise BundleError(f"{bundle / fname}: changed while it was copied (sha256 differs from the manifest)")
    if clips is not None:
        (tmp / "warmup").mkdir()
        (tmp / WARMUP_FILE).write_bytes(np.ascontiguousarray(clips[0]).tobytes())
        write_text_atomic(tmp / PERF_FILE, perf_input_json(manifest, clips))
    write_text_atomic(tmp / "bundle_manifest.json", json.dumps(manifest, indent=2) + "\n")
    write_text_atomic(tmp / "config.pbtxt", text)
    engine_sha = manifest["files"][manifest["engine_file"]]["sha256"]
    own = {
        "schema_version": 1,
        "writer": WRITER,
        "bundle": {"path": str(bundle.resolve()), "engine_sha256": engine_sha},
        "files": folder_records(tmp, exclude=(MODEL_MANIFEST,)),
    }
    write_text_atomic(tmp / MODEL_MANIFEST, json.dumps(own, indent=2) + "\n")


def write_repository(
    bundle: str | Path,
    out_dir: str | Path,
    name: str | None = None,
    instances: int | None = None,
    kind: str = "auto",
    queue_delay_us: int = 500,
    clips: int = 2,
    clip_spec: str | None = None,
) -> Path:
    """Write ``out_dir/<name>/`` (see the module docstring); returns that folder."""
    from export.bundle.publish import clean_stale, make_staging, publish

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)  # sizes and sha256: never publish a damaged engine
    name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", bundle.resolve().name).lstrip(".") or "model"
    _name(name, "--name", "")
    where = str(bundle / "manifest.json")
    build_config(manifest, name, instances, kind, queue_delay_us, where)  # refusals before any clip is made

    out_dir = Path(out_dir)
    final = out_dir / name
    _check_target(final, out_dir, bundle)  # before any work: never the bundle, never a folder of the user's
    data = reference_clips(bundle, manifest, clips, clip_spec)
    # no clips (--clips 0, or an integer input without a reference set): warm up on random data, no perf file
    text = make_config(manifest, name, instances, kind, queue_delay_us, where, data is not None)
    _check_parsed(parse_config(text), manifest, name)  # validated before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    tmp = make_staging(final)
    try:
        _stage(tmp, bundle, manifest, text, data)
        publish(tmp, final, check=lambda p: _check_target(p, out_dir, bundle))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@user_errors("make triton")
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m export.serving.triton", description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", required=True, help="engine bundle directory")
    p.add_argument("--out", required=True, help="the model repository folder (created; other models in it are kept)")
    p.add_argument("--name", default=None, help="model name (default: the bundle folder's name)")
    p.add_argument(
        "--instances",
        type=int,
        default=None,
        help="model instances (default: from the batch range: 1, or 2 on a GPU for a batch-1 engine)",
    )
    p.add_argument(
        "--kind",
        default="auto",
        choices=("auto", "cpu", "gpu"),
        help="instance kind; auto: GPU for TensorRT plans and CUDA sessions, CPU otherwise",
    )
    p.add_argument("--queue-delay-us", type=int, default=500, help="dynamic batching: longest wait to fill a batch")
    p.add_argument("--clips", type=int, default=2, help="reference clips for perf_analyzer (0: none, random warm-up)")
    p.add_argument(
        "--clip-source", default=None, help="where the reference clips come from (default: the bundle's parity clips)"
    )
    a = p.parse_args(argv)
    try:
        path = write_repository(a.engine, a.out, a.name, a.instances, a.kind, a.queue_delay_us, a.clips, a.clip_source)
    except (BundleError, FolderNotReplaceable, ValueError, RuntimeError, OSError) as e:
        print(f"make triton: {e}", file=sys.stderr)
        return 2
    cfg = parse_config((path / "config.pbtxt").read_text())
    how = cfg.platform or f"backend {cfg.backend}"
    opt = cfg.dynamic_batching.preferred_batch_size[0] if cfg.dynamic_batching.preferred_batch_size else 1
    perf = (
        f"; perf_analyzer -m {cfg.name} -b {opt} --input-data {path / PERF_FILE}" if (path / PERF_FILE).exists() else ""
    )
    print(
        f"wrote {path}: {how}, max_batch_size {cfg.max_batch_size}, input {cfg.input[0].name} "
        f"{list(cfg.input[0].dims)}, output {cfg.output[0].name} {list(cfg.output[0].dims)}, "
        f"{cfg.instance_group[0].count} instance(s), {len(cfg.model_warmup)} warm-up sample(s); start Triton with "
        f"--model-repository={Path(a.out).resolve()}{perf}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
