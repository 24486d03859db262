"""A Triton Inference Server model repository for an engine bundle: ``make triton ENGINE=<bundle> OUT=<dir>``.

``python -m export.serving.triton --engine <bundle> --out <dir> [--name N] [--instances 1] [--kind auto|cpu|gpu]
[--queue-delay-us 500]`` writes::

    <dir>/<name>/config.pbtxt        platform tensorrt_plan | onnxruntime_onnx, max_batch_size = the bundle's
                                     maximum batch, dynamic batching (preferred size = the bundle's opt batch),
                                     input/output names, types and dims without the batch axis, instance group,
                                     default_model_filename, the output's label_filename
    <dir>/<name>/labels.txt          the bundle's labels (Triton's classification output reads them)
    <dir>/<name>/bundle_manifest.json  the bundle's manifest, for provenance (Triton ignores it)
    <dir>/<name>/1/<engine file>     the engine (and any external-data file), copied after its sha256 is checked

The configuration is parsed with Triton's own schema (``tritonclient.grpc.model_config_pb2.ModelConfig``) and
checked against the manifest before anything is written; the model folder is assembled beside its final
place and renamed into it, so a failure leaves the previous one as it was.
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from runtime.cli_args import ArgumentParser
from runtime.errors import BundleError
from runtime.files import sha256_file, write_text_atomic
from runtime.manifest import read_manifest, verify_files

from runtime.cli_args import user_errors

__all__ = ["TRITON_TYPES", "make_config", "parse_config", "write_repository", "main"]

#: manifest dtype -> Triton data type
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int64": "TYPE_INT64"}
_PLATFORMS = {"tensorrt": "tensorrt_plan", "onnxruntime": "onnxruntime_onnx"}
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def _platform(manifest: dict[str, Any], where: str) -> str:
    backend, engine_file = manifest["backend"], manifest["engine_file"]
    if backend in _PLATFORMS:
        return _PLATFORMS[backend]
    if engine_file.endswith(".onnx"):  # an OpenVINO bundle of an ONNX file: Triton runs the ONNX with ONNX Runtime
        return "onnxruntime_onnx"
    raise BundleError(f"{where}: backend {backend!r} with engine_file {engine_file!r}: Triton repositories are made "
                      "for tensorrt (model.plan) and ONNX engines; build the bundle with BACKEND=onnxruntime or tensorrt")


def _dims(shape: list[int]) -> str:
    return "[ " + ", ".join(str(int(d)) for d in shape) + " ]"


def make_config(manifest: dict[str, Any], name: str, instances: int = 1, kind: str = "auto",
                queue_delay_us: int = 500, where: str = "manifest.json") -> str:
    """The ``config.pbtxt`` text for a validated manifest (see the module docstring)."""
    platform = _platform(manifest, where)
    inp, out = manifest["input"], manifest["output"]
    batch = inp["batch"]
    lo, opt, hi = int(batch["min"]), int(batch.get("opt", batch["min"])), int(batch["max"])
    if lo != 1:
        # Triton's dynamic batcher sends any batch from 1 up to max_batch_size
        raise BundleError(f"{where}: input.batch.min is {lo}; Triton sends batches from 1 up to max_batch_size, so the "
                          "engine must accept batch 1 (rebuild with BATCH=1:opt:max)")
    for field, spec in (("input", inp), ("output", out)):
        if spec["dtype"] not in TRITON_TYPES:
            raise BundleError(f"{where}: {field}.dtype {spec['dtype']!r} has no Triton type here; expected one of "
                              f"{sorted(TRITON_TYPES)}")
    if kind == "auto":
        providers = (manifest.get("session") or {}).get("providers") or []
        gpu = platform == "tensorrt_plan" or any(p in _GPU_PROVIDERS for p in providers)
        kind = "gpu" if gpu else "cpu"
    if kind not in ("cpu", "gpu"):
        raise ValueError(f"kind: expected auto, cpu or gpu, got {kind!r}")
    if platform == "tensorrt_plan" and kind == "cpu":
        raise ValueError("kind: a TensorRT plan runs only on a GPU (KIND_GPU); got cpu")
    if instances < 1:
        raise ValueError(f"instances: expected a positive count, got {instances}")
    if queue_delay_us < 0:
        raise ValueError(f"queue_delay_us: expected >= 0, got {queue_delay_us}")
    labels = manifest.get("labels_file")
    lines = [
        f'# Triton model configuration for the engine bundle "{name}" ({manifest["precision"]}, {manifest["backend"]}),',
        "# written by `make triton` (export/serving/triton.py) from the bundle's manifest.json.",
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {hi}",
        f'default_model_filename: "{manifest["engine_file"]}"',
        "input [",
        "  {",
        f'    name: "{inp["name"]}"',
        f"    data_type: {TRITON_TYPES[inp['dtype']]}",
        f"    dims: {_dims(inp['shape'][1:])}",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{out["name"]}"',
        f"    data_type: {TRITON_TYPES[out['dtype']]}",
        f"    dims: {_dims(out['shape'][1:])}",
        *([f'    label_filename: "{labels}"'] if labels else []),
        "  }",
        "]",
        "dynamic_batching {",
        *([f"  preferred_batch_size: [ {opt} ]"] if 1 < opt <= hi else []),
        f"  max_queue_delay_microseconds: {queue_delay_us}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {instances}",
        f"    kind: KIND_{kind.upper()}",
        "  }",
        "]",
    ]
    threads = int((manifest.get("session") or {}).get("intra_op_num_threads") or 0)
    if platform == "onnxruntime_onnx" and threads > 0:  # the bundle's thread count, as Triton's ORT backend names it
        lines += ["parameters {", '  key: "intra_op_thread_count"', f'  value: {{ string_value: "{threads}" }}', "}"]
    return "\n".join(lines) + "\n"


def parse_config(text: str):
    """Parse ``config.pbtxt`` text with Triton's own schema; ``ValueError`` with the parser's message otherwise."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise RuntimeError(f"Triton's model-config schema needs tritonclient[grpc] ({e}); "
                           "pip install 'tritonclient[grpc]'") from e
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ValueError(f"config.pbtxt does not parse as Triton's ModelConfig: {e}") from e


def _check_parsed(cfg, manifest: dict[str, Any], name: str) -> None:
    """The parsed configuration says what the manifest says (names, types, dims, batch): a guard on make_config."""
    from tritonclient.grpc import model_config_pb2 as pb

    inp, out = manifest["input"], manifest["output"]
    got = (cfg.name, cfg.max_batch_size, cfg.input[0].name, list(cfg.input[0].dims),
           pb.DataType.Name(cfg.input[0].data_type), cfg.output[0].name, list(cfg.output[0].dims),
           pb.DataType.Name(cfg.output[0].data_type))
    want = (name, int(inp["batch"]["max"]), inp["name"], list(inp["shape"][1:]), TRITON_TYPES[inp["dtype"]],
            out["name"], list(out["shape"][1:]), TRITON_TYPES[out["dtype"]])
    if got != want:
        raise AssertionError(f"config.pbtxt parsed as {got}, expected {want}")  # a bug in make_config


def write_repository(bundle: str | Path, out_dir: str | Path, name: str | None = None, instances: int = 1,
                     kind: str = "auto", queue_delay_us: int = 500) -> Path:
    """Write ``out_dir/<name>/`` (see the module docstring); returns that folder."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)  # sizes and sha256: never publish a damaged engine
    name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", bundle.resolve().name)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ValueError(f"name: expected letters, digits, '_', '.', '-' (a folder name Triton accepts), got {name!r}")
    text = make_config(manifest, name, instances, kind, queue_delay_us, where=str(bundle / "manifest.json"))
    cfg = parse_config(text)  # validated before anything is written
    _check_parsed(cfg, manifest, name)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    try:
        (tmp / "1").mkdir()
        labels = manifest.get("labels_file")
        for fname, entry in manifest["files"].items():
            dst = tmp / (fname if fname == labels else f"1/{fname}")
            shutil.copyfile(bundle / fname, dst)
            if sha256_file(dst) != entry["sha256"]:  # the copy is what the manifest describes
                raise BundleError(f"{bundle / fname}: changed while it was copied (sha256 differs from the manifest)")
        write_text_atomic(tmp / "bundle_manifest.json", json.dumps(manifest, indent=2) + "\n")
        write_text_atomic(tmp / "config.pbtxt", text)
        tmp.chmod(0o755)
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=out_dir))
            final.rename(old / name)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return final


@user_errors("make triton")
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m export.serving.triton", description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", required=True, help="engine bundle directory")
    p.add_argument("--out", required=True, help="the model repository folder (created; other models in it are kept)")
    p.add_argument("--name", default=None, help="model name (default: the bundle folder's name)")
    p.add_argument("--instances", type=int, default=1, help="model instances (instance_group count)")
    p.add_argument("--kind", default="auto", choices=("auto", "cpu", "gpu"),
                   help="instance kind; auto: GPU for TensorRT plans and CUDA sessions, CPU otherwise")
    p.add_argument("--queue-delay-us", type=int, default=500, help="dynamic batching: longest wait to fill a batch")
    a = p.parse_args(argv)
    try:
        path = write_repository(a.engine, a.out, a.name, a.instances, a.kind, a.queue_delay_us)
    except (BundleError, ValueError, RuntimeError, OSError) as e:
        print(f"make triton: {e}", file=sys.stderr)
        return 2
    cfg = parse_config((path / "config.pbtxt").read_text())
    print(f"wrote {path}: {cfg.platform}, max_batch_size {cfg.max_batch_size}, input {cfg.input[0].name} "
          f"{list(cfg.input[0].dims)}, output {cfg.output[0].name} {list(cfg.output[0].dims)}, "
          f"{cfg.instance_group[0].count} instance(s); start Triton with --model-repository={Path(a.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
