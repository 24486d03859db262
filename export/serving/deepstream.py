"""DeepStream configs for an engine bundle: ``make deepstream ENGINE=<bundle> [OUT=<dir>]``.

``python -m export.serving.deepstream --engine <bundle> --out <dir> [--onnx FILE] [--source-size WxH] [--sources N]
[--batch N] [--stride N] [--threshold P] [--cache DIR]`` writes::

    <dir>/config_preprocess.txt   nvdspreprocess: sequence batching (libnvds_custom_sequence_preprocess.so)
    <dir>/config_infer.txt        nvinfer: a classifier fed by that tensor (input-tensor-from-meta=1)
    <dir>/model_ncthw.onnx        the bundle's ONNX with an (N, C, T, H, W) input and a softmax output ``probs``
                                  (onnx-file: nvinfer builds its TensorRT engine on the device, once)
    <dir>/labels.txt              the labels on one line, separated by ';' (nvinfer's classifier label file)
    <dir>/deepstream_manifest.json  what was written: the input layout and shapes, every file's sha256

Why a new ONNX: DeepStream's sequence library writes its tensor as NCDHW only (``sequence_image_process.cpp``:
"this is for NCSHW(NCDHW) order only"), while bundles take ``(B, T, 3, H, W)``; :func:`export.onnx.layout.ncthw_input`
puts one Transpose at the input, and the logits are the bundle's. A TensorRT bundle's plan takes ``(B, T, 3, H, W)``
and cannot be fed that tensor, so a TensorRT bundle goes through its engine ONNX as well (``--onnx``, or found by its
sha256 in make engine's cache) and nvinfer builds the plan on the device; an ONNX Runtime bundle's own file holds
ONNX Runtime-only operators (``com.microsoft``), so its engine ONNX is used the same way; an OpenVINO bundle's file
is plain ONNX and is used as it is.

The model's preprocessing maps onto nvdspreprocess as follows: T frames every ``sampling_rate`` source frames
(``subsample`` = sampling_rate - 1), a new window every ``stride`` sampled frames (default T/2, as the hub);
``(pixel - 255 mean) / (255 std)`` as ``channel-mean-offsets`` and ``channel-scale-factors``; RGB or BGR as
``network-color-format``. The short-side resize and centre crop become, with ``--source-size WxH``, one ROI per
source (the centre square the crop takes, in source pixels) scaled to crop x crop; without it the whole frame is
scaled to crop x crop (aspect not kept: a warning says so).

Every key written is one the plugins document (:data:`PREPROCESS_KEYS`, :data:`INFER_KEYS`), every value matches
:data:`VALUE_RE` (no newline, ``[``, ``#`` or ``=`` can come from a tensor name, a file name or a label), the text is
parsed back as a key file and its shapes checked against the manifest before anything is published. The folder is
replaced only when it is one make deepstream wrote (its manifest lists every file with a matching hash; a folder
where nvinfer has since cached a built engine is not, and is left to you) and never when it is, holds or lies inside
an input (:func:`runtime.files.replace_problem`, the rule make triton follows).
"""

from __future__ import annotations

import configparser
import json
import re
import sys
from pathlib import Path
from typing import Any

from runtime.cli_args import ArgumentParser, user_errors
from runtime.errors import BundleError
from runtime.files import FolderNotReplaceable, check_replaceable, folder_records, owned_folder_problem, sha256_file
from runtime.manifest import read_labels, read_manifest, verify_files
from runtime.preprocess import PreprocessConfig

__all__ = [
    "PREPROCESS_KEYS",
    "INFER_KEYS",
    "GROUP_KEYS",
    "USER_KEYS",
    "MANIFEST",
    "VALUE_RE",
    "DeepStreamPlan",
    "plan",
    "render",
    "parse_configs",
    "check_configs",
    "write_folder",
    "main",
]

MANIFEST = "deepstream_manifest.json"
WRITER = "make deepstream"
MODEL_FILE = "model_ncthw.onnx"
SEQUENCE_LIB = "/opt/nvidia/deepstream/deepstream/lib/libnvds_custom_sequence_preprocess.so"
#: [property] keys of nvdspreprocess (Gst-nvdspreprocess File Configuration Specifications)
PREPROCESS_KEYS = frozenset(
    {
        "enable",
        "unique-id",
        "gpu-id",
        "process-on-frame",
        "target-unique-ids",
        "operate-on-gie-id",
        "operate-on-class-ids",
        "network-input-order",
        "network-input-shape",
        "network-color-format",
        "tensor-data-type",
        "tensor-name",
        "processing-width",
        "processing-height",
        "scaling-buf-pool-size",
        "tensor-buf-pool-size",
        "scaling-pool-memory-type",
        "scaling-pool-compute-hw",
        "scaling-filter",
        "maintain-aspect-ratio",
        "symmetric-padding",
        "custom-lib-path",
        "custom-tensor-preparation-function",
    }
)
#: [group-N] keys of nvdspreprocess (roi-params-src-<id> are checked by pattern)
GROUP_KEYS = frozenset(
    {
        "src-ids",
        "process-on-roi",
        "draw-roi",
        "roi-color",
        "custom-input-transformation-function",
        "operate-on-class-ids",
        "input-object-min-width",
        "input-object-min-height",
        "input-object-max-width",
        "input-object-max-height",
        "interval",
    }
)
#: [user-configs] keys of the sequence library (seq_process_common.h: CUSTOM_CONFIG_*)
USER_KEYS = frozenset({"subsample", "stride", "channel-scale-factors", "channel-mean-offsets"})
#: [property] keys of nvinfer (Gst-nvinfer File Configuration Specifications) used here and their neighbours
INFER_KEYS = frozenset(
    {
        "gpu-id",
        "onnx-file",
        "model-engine-file",
        "labelfile-path",
        "batch-size",
        "process-mode",
        "network-mode",
        "network-type",
        "gie-unique-id",
        "output-blob-names",
        "input-tensor-from-meta",
        "classifier-threshold",
        "classifier-async-mode",
        "output-tensor-meta",
        "interval",
        "infer-dims",
        "tensor-meta-pool-size",
        "workspace-size",
        "int8-calib-file",
        "operate-on-gie-id",
    }
)
#: what any value may hold: numbers, ';' lists, paths and names; never a newline, '[', ']', '#', '=' or a space
VALUE_RE = re.compile(r"[A-Za-z0-9_.:/;+-]{1,512}")
_ROI_KEY = re.compile(r"roi-params-src-(0|[1-9][0-9]{0,3})")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,127}")
_ORT_ONLY = ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul")
_NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}  # nvinfer: 0=FP32, 1=INT8, 2=FP16


class DeepStreamPlan(dict):
    """The two configs as ``{"config_preprocess.txt": {group: {key: value}}, "config_infer.txt": {...}}``, with
    ``notes`` (warnings for the user) and ``info`` (the shapes recorded in the manifest) as attributes."""

    notes: list[str]
    info: dict[str, Any]


def _value(v: Any, where: str) -> str:
    text = (
        ";".join(_value(x, where) for x in v)
        if isinstance(v, (list, tuple))
        else (repr(float(v)) if isinstance(v, float) else str(v))
    )
    if not VALUE_RE.fullmatch(text):
        raise BundleError(
            f"{where}: value {text!r:.80} would not stay one key-file value (allowed: {VALUE_RE.pattern}); rename it"
        )
    return text


def _roi(pre: PreprocessConfig, size: tuple[int, int] | None) -> list[int] | None:
    """The centre crop of a ``(W, H)`` source in source pixels, ``[left, top, width, height]``."""
    if size is None:
        return None
    w, h = size
    side = min(w, h, round(pre.crop_size * min(w, h) / pre.short_side))
    return [(w - side) // 2, (h - side) // 2, side, side]


def _batch_size(manifest: dict[str, Any], pre: PreprocessConfig, batch: int | None, where: str) -> int:
    """Check the manifest's names, input dtype, sampling and batch range for DeepStream; the batch-size to use."""
    inp, out = manifest["input"], manifest["output"]
    for field, name in (("input.name", inp["name"]), ("output.name", out["name"])):
        if not _NAME_RE.fullmatch(name):
            raise BundleError(f"{where}: {field} {name!r}: expected a name matching {_NAME_RE.pattern}")
    if inp["dtype"] != "float32":
        raise BundleError(
            f"{where}: input.dtype {inp['dtype']!r}: the sequence library writes float32 tensors "
            "(tensor-data-type=0); use a bundle with a float32 input"
        )
    if pre.sampling != "dense":
        raise BundleError(
            f"{where}: preprocess.sampling {pre.sampling!r}: a stream has no end to spread frames over; "
            "DeepStream's sequence batching samples densely"
        )
    lo, hi = int(inp["batch"]["min"]), int(inp["batch"]["max"])
    n = hi if batch is None else batch
    if not lo <= n <= hi or lo != 1:
        raise BundleError(
            f"{where}: input.batch {lo}..{hi}: nvinfer sends partial batches from 1 up to batch-size; "
            f"expected min 1 and --batch within it, got min {lo}, batch {n}"
        )
    return n


def _preprocess_config(
    pre: PreprocessConfig, tensor_name: str, shape: list[int], stride: int, group: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The nvdspreprocess config: sequence batching of ``shape`` (NCTHW) into ``tensor_name``."""
    crop = pre.crop_size
    mean = [round(255.0 * m, 6) for m in pre.mean]
    scale = [round(1.0 / (255.0 * s), 9) for s in pre.std]
    return {
        "property": {
            "enable": 1,
            "target-unique-ids": 1,
            "gpu-id": 0,
            "process-on-frame": 1,
            "network-input-order": 2,
            "network-input-shape": shape,
            "network-color-format": 1 if pre.channel_order == "BGR" else 0,
            "tensor-data-type": 0,
            "tensor-name": tensor_name,
            "processing-width": crop,
            "processing-height": crop,
            "scaling-buf-pool-size": 8,
            "tensor-buf-pool-size": 8,
            "scaling-pool-memory-type": 2,
            "scaling-pool-compute-hw": 1,
            "scaling-filter": 1,
            "maintain-aspect-ratio": 0,
            "symmetric-padding": 0,
            "custom-lib-path": SEQUENCE_LIB,
            "custom-tensor-preparation-function": "CustomSequenceTensorPreparation",
        },
        "user-configs": {
            "channel-scale-factors": scale,
            "channel-mean-offsets": mean,
            "stride": stride,
            "subsample": max(1, pre.sampling_rate) - 1,
        },
        "group-0": group,
    }


def _infer_config(n: int, mode: str, threshold: float) -> dict[str, dict[str, Any]]:
    """The nvinfer config: a classifier of batch ``n`` fed by the preprocess tensor, engine built in ``mode``."""
    engine_name = f"{MODEL_FILE}_b{n}_gpu0_{mode}.engine"  # nvinfer's own name for the engine it builds and caches
    return {
        "property": {
            "gpu-id": 0,
            "gie-unique-id": 1,
            "onnx-file": MODEL_FILE,
            "model-engine-file": engine_name,
            "labelfile-path": "labels.txt",
            "batch-size": n,
            "process-mode": 1,
            "network-mode": _NETWORK_MODE[mode],
            "network-type": 1,
            "input-tensor-from-meta": 1,
            "output-blob-names": "probs",
            "classifier-threshold": float(threshold),
            "output-tensor-meta": 1,
        }
    }


def plan(
    manifest: dict[str, Any],
    *,
    batch: int | None = None,
    stride: int | None = None,
    source_size: tuple[int, int] | None = None,
    sources: int = 1,
    threshold: float = 0.0,
    precision_mode: str | None = None,
    where: str = "manifest.json",
) -> DeepStreamPlan:
    """The nvdspreprocess and nvinfer configs for a validated manifest (see the module docstring)."""
    pre = PreprocessConfig.from_dict(manifest["preprocess"])
    inp, out = manifest["input"], manifest["output"]
    n = _batch_size(manifest, pre, batch, where)
    T, crop = pre.num_frames, pre.crop_size
    stride = max(1, T // 2) if stride is None else stride
    if not 1 <= stride <= T:
        raise ValueError(f"stride: expected 1..{T} sampled frames between windows, got {stride}")
    if sources < 1:
        raise ValueError(f"sources: expected at least 1, got {sources}")
    shape = [n, 3, T, crop, crop]
    notes = []
    if pre.num_crops != 1:
        notes.append(f"the model is evaluated on {pre.num_crops} spatial crops; DeepStream runs the centre crop only")
    roi = _roi(pre, source_size)
    if roi is None:
        notes.append(
            f"no --source-size: each frame is scaled whole to {crop}x{crop} (aspect not kept), unlike the "
            f"model's short-side {pre.short_side} resize and centre crop; pass --source-size WxH"
        )
    group: dict[str, Any] = {"src-ids": list(range(sources)) if roi else -1, "process-on-roi": int(bool(roi))}
    if roi:
        group.update({f"roi-params-src-{i}": roi for i in range(sources)})
    preprocess = _preprocess_config(pre, inp["name"], shape, stride, group)
    infer = _infer_config(n, precision_mode or manifest["precision"], threshold)
    result = DeepStreamPlan({"config_preprocess.txt": preprocess, "config_infer.txt": infer})
    result.notes = notes
    result.info = {
        "input": {"name": inp["name"], "layout": "NCTHW", "shape": [-1, 3, T, crop, crop], "batch": n},
        "output": {"name": "probs", "logits": out["name"], "shape": list(out["shape"])},
        "sampling_rate": pre.sampling_rate,
        "stride": stride,
        "roi": roi,
        "sources": sources,
    }
    return result


def render(groups: dict[str, dict[str, Any]], name: str) -> str:
    """Key-file text of one config (every key documented, every value checked against :data:`VALUE_RE`)."""
    lines = [f"# {name}: written by `{WRITER}` (export/serving/deepstream.py) from an engine bundle's manifest.json"]
    for group, keys in groups.items():
        allowed = {
            "property": INFER_KEYS if name == "config_infer.txt" else PREPROCESS_KEYS,
            "user-configs": USER_KEYS,
        }.get(group, GROUP_KEYS)
        lines += ["", f"[{group}]"]
        for key, v in keys.items():
            if key not in allowed and not (group.startswith("group-") and _ROI_KEY.fullmatch(key)):
                raise AssertionError(f"{name}: [{group}] {key}: not a documented key")  # a bug in plan()
            lines.append(f"{key}={_value(v, f'{name} [{group}] {key}')}")
    return "\n".join(lines) + "\n"


def parse_configs(text: str, name: str) -> dict[str, dict[str, str]]:
    """Parse key-file text the way DeepStream reads it (GLib's key file: ``[group]``, ``key=value``, ``#``
    comments; no duplicate group or key); ``ValueError`` naming the file otherwise."""
    cp = configparser.ConfigParser(
        interpolation=None,
        delimiters=("=",),
        comment_prefixes=("#",),
        inline_comment_prefixes=None,
        strict=True,
        empty_lines_in_values=False,
        default_section="\0no default section",
    )
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive in GLib
    try:
        cp.read_string(text, source=name)
    except configparser.Error as e:
        raise ValueError(f"{name}: does not parse as a key file: {e}") from e
    return {s: dict(cp[s]) for s in cp.sections()}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(";") if x != ""]


def check_configs(texts: dict[str, str], manifest: dict[str, Any], info: dict[str, Any]) -> None:
    """The parsed configs say what the manifest says: tensor names, ``N;3;T;crop;crop``, batch, sampling, labels."""
    pre = PreprocessConfig.from_dict(manifest["preprocess"])
    p = parse_configs(texts["config_preprocess.txt"], "config_preprocess.txt")
    i = parse_configs(texts["config_infer.txt"], "config_infer.txt")
    n = info["input"]["batch"]
    pp, ip = p["property"], i["property"]
    got = (
        pp["tensor-name"],
        _ints(pp["network-input-shape"]),
        pp["network-input-order"],
        int(p["user-configs"]["subsample"]) + 1,
        int(ip["batch-size"]),
        ip["input-tensor-from-meta"],
        ip["network-type"],
        int(pp["processing-width"]),
        int(pp["processing-height"]),
    )
    want = (
        manifest["input"]["name"],
        [n, 3, pre.num_frames, pre.crop_size, pre.crop_size],
        "2",
        max(1, pre.sampling_rate),
        n,
        "1",
        "1",
        pre.crop_size,
        pre.crop_size,
    )
    if got != want:
        raise AssertionError(f"DeepStream configs parsed as {got}, expected {want}")  # a bug in plan()/render()
    btchw = list(manifest["input"]["shape"][1:])
    if [btchw[1], btchw[0], *btchw[2:]] != _ints(p["property"]["network-input-shape"])[1:]:
        raise AssertionError(
            f"network-input-shape {p['property']['network-input-shape']} is not the manifest's input "
            f"{manifest['input']['shape']} transposed to NCTHW"
        )


# --------------------------------------------------------------------------- the ONNX DeepStream reads


def _engine_onnx(bundle: Path, manifest: dict[str, Any], onnx_path: str | None, cache: str) -> Path:
    """The ONNX to transpose: ``onnx_path``; an OpenVINO bundle's own file; else the engine ONNX the bundle was built
    from (``source.onnx_sha256``), found in ``cache``. Checked against the recorded sha256 when there is one."""
    want = (manifest.get("source") or {}).get("onnx_sha256")
    if onnx_path is None and manifest["backend"] == "openvino":
        return bundle / manifest["engine_file"]
    if onnx_path is not None:
        if want and sha256_file(onnx_path) != want:
            raise BundleError(
                f"--onnx {onnx_path}: sha256 differs from the bundle's source.onnx_sha256 {want[:16]}... "
                "(not the ONNX this bundle was built from)"
            )
        return Path(onnx_path)
    why = {
        "tensorrt": "its plan takes (B, T, 3, H, W), which DeepStream's sequence library cannot write",
        "onnxruntime": "its model.onnx holds ONNX Runtime-only operators that TensorRT cannot read",
    }
    for f in sorted(Path(cache).rglob("*.onnx")) if want and Path(cache).is_dir() else []:
        if sha256_file(f) == want:
            return f
    raise BundleError(
        f"{bundle}: the bundle is {manifest['backend']}: {why.get(manifest['backend'], '')}; its "
        "engine ONNX "
        f"(sha256 {str(want)[:16]}...) is not in {cache}: pass --onnx <file> (make engine's cache, or "
        "make onnx of the same model)"
    )


def _deepstream_onnx(src: Path, manifest: dict[str, Any]) -> Any:
    """``src`` with an NCTHW input and a softmax output ``probs`` (logits kept), checked for TensorRT-readable ops."""
    import onnx
    from onnx import helper

    from export.onnx.layout import ncthw_input

    model = onnx.load(str(src))
    bad = sorted(
        {
            f"{n.domain}.{n.op_type}" if n.domain else n.op_type
            for n in model.graph.node
            if n.domain not in ("", "ai.onnx") or n.op_type in _ORT_ONLY
        }
    )
    if bad:
        raise BundleError(
            f"{src}: holds operators TensorRT cannot read ({', '.join(bad)}); pass the bundle's engine ONNX with --onnx"
        )
    names = [i.name for i in model.graph.input]
    if names != [manifest["input"]["name"]] or [o.name for o in model.graph.output][:1] != [manifest["output"]["name"]]:
        raise BundleError(
            f"{src}: inputs {names}, outputs {[o.name for o in model.graph.output]}; the manifest says "
            f"{manifest['input']['name']!r} -> {manifest['output']['name']!r}"
        )
    model = ncthw_input(model)
    logits = manifest["output"]["name"]
    model.graph.node.append(helper.make_node("Softmax", [logits], ["probs"], name="deepstream_probs", axis=-1))
    model.graph.output.append(
        helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["batch", manifest["output"]["shape"][1]])
    )
    onnx.checker.check_model(model)
    return model


# --------------------------------------------------------------------------- the folder make deepstream owns

_MANIFEST_KEYS = {
    "schema_version",
    "writer",
    "bundle",
    "model_file",
    "input",
    "output",
    "sampling_rate",
    "stride",
    "roi",
    "sources",
    "notes",
    "files",
}


def _validate_own_manifest(data: Any, path: Path) -> None:
    """The full check of ``deepstream_manifest.json``; ValueError naming the field otherwise."""
    if not isinstance(data, dict) or data.get("schema_version") != 1 or data.get("writer") != WRITER:
        raise ValueError(f"{path}: expected schema_version 1 written by {WRITER!r}")
    unknown = sorted(set(data) - _MANIFEST_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}")
    if not isinstance(data.get("input"), dict) or data["input"].get("layout") != "NCTHW":
        raise ValueError(f"{path}: input.layout: expected 'NCTHW'")
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{path}: files: expected an object listing every file")
    for rel, entry in files.items():
        if not isinstance(rel, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", rel) or rel == MANIFEST:
            raise ValueError(f"{path}: files key {rel!r}: expected a plain file name")
        if (
            not isinstance(entry, dict)
            or set(entry) != {"sha256", "size"}
            or not re.fullmatch(r"[0-9a-f]{64}", str(entry["sha256"]))
            or isinstance(entry["size"], bool)
            or not isinstance(entry["size"], int)
            or entry["size"] < 0
        ):
            raise ValueError(f"{path}: files[{rel!r}]: expected {{sha256: 64 hex digits, size: bytes}}")


def folder_problem(folder: Path) -> str | None:
    """None when ``folder`` is one make deepstream wrote and nothing changed in it since, else why not."""
    return owned_folder_problem(folder, MANIFEST, _validate_own_manifest)


def _labels_line(bundle: Path, manifest: dict[str, Any]) -> str:
    """nvinfer's classifier label file: one line per output layer, its labels separated by ';'."""
    labels = read_labels(bundle, manifest) if manifest.get("labels_file") else []
    classes = int(manifest["output"]["shape"][1])
    labels = labels or [f"class_{i}" for i in range(classes)]
    for i, label in enumerate(labels):
        if ";" in label or not label.strip() or label != label.strip():
            raise BundleError(
                f"{bundle / str(manifest.get('labels_file'))}: label {i} {label!r}: nvinfer splits its "
                "label file on ';' (and labels may not be empty or padded); rename the label"
            )
    return ";".join(labels) + "\n"


def _check_target(final: Path, inputs: list[Path]) -> None:
    check_replaceable(final, folder_problem, "a folder written by make deepstream", inputs=inputs, what="OUT")


def write_folder(
    bundle: str | Path, out: str | Path, *, onnx_path: str | None = None, cache: str = "artifacts/cache", **options: Any
) -> tuple[Path, DeepStreamPlan]:
    """Write ``out`` (see the module docstring); ``options`` go to :func:`plan`. Returns the folder and the plan."""
    import onnx

    from export.bundle.publish import clean_stale, make_staging, publish

    bundle, final = Path(bundle), Path(out)
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    where = str(bundle / "manifest.json")
    src = _engine_onnx(bundle, manifest, onnx_path, cache)
    inputs = [bundle, src]
    _check_target(final, inputs)  # before any work: never an input, never a folder of the user's
    model = _deepstream_onnx(src, manifest)
    mode = manifest["precision"]
    if any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        mode = "int8"  # explicit Q/DQ: TensorRT needs INT8 enabled to keep them INT8
    elif mode == "int8":
        mode = "fp32"  # INT8 without Q/DQ would need a calibration table nvinfer does not have
    result = plan(manifest, precision_mode=mode, where=where, **options)
    texts = {name: render(groups, name) for name, groups in result.items()}
    check_configs(texts, manifest, result.info)  # validated before anything is written
    labels = _labels_line(bundle, manifest)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    tmp = make_staging(final)
    try:
        onnx.save(model, str(tmp / MODEL_FILE))
        (tmp / "labels.txt").write_text(labels)
        for name, text in texts.items():
            (tmp / name).write_text(text)
        own = {
            "schema_version": 1,
            "writer": WRITER,
            "bundle": {
                "path": str(bundle.resolve()),
                "manifest_sha256": sha256_file(bundle / "manifest.json"),
                "backend": manifest["backend"],
                "precision": manifest["precision"],
                "onnx": str(src),
            },
            "model_file": MODEL_FILE,
            **result.info,
            "notes": result.notes,
            "files": folder_records(tmp, exclude=(MANIFEST,)),
        }
        (tmp / MANIFEST).write_text(json.dumps(own, indent=2) + "\n")
        publish(tmp, final, check=lambda p: _check_target(p, inputs))
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return final, result


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})", text)
    if not m:
        raise ValueError(f"--source-size: expected WIDTHxHEIGHT in pixels (e.g. 1920x1080), got {text!r}")
    return int(m.group(1)), int(m.group(2))


@user_errors("make deepstream")
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m export.serving.deepstream", description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", required=True, help="engine bundle directory")
    p.add_argument("--out", default=None, help="the folder to write (default: artifacts/deepstream/<bundle name>)")
    p.add_argument(
        "--onnx",
        default=None,
        help="the bundle's engine ONNX (TensorRT and ONNX Runtime bundles; default: found by its sha256 in --cache)",
    )
    p.add_argument("--cache", default="artifacts/cache", help="make engine's cache, searched for the engine ONNX")
    p.add_argument(
        "--source-size",
        default=None,
        help="WIDTHxHEIGHT of the cameras: the model's resize and centre "
        "crop as a per-source ROI (default: whole frame, aspect lost)",
    )
    p.add_argument("--sources", type=int, default=1, help="with --source-size: the number of sources (src ids 0..N-1)")
    p.add_argument("--batch", type=int, default=None, help="clips per nvinfer call (default: the bundle's max batch)")
    p.add_argument("--stride", type=int, default=None, help="sampled frames between windows (default: T/2)")
    p.add_argument("--threshold", type=float, default=0.0, help="classifier-threshold on the softmax probability")
    try:
        a = p.parse_args(argv)
        size = _size(a.source_size) if a.source_size else None
        out = a.out or str(
            Path("artifacts/deepstream") / (re.sub(r"[^A-Za-z0-9_.-]", "_", Path(a.engine).resolve().name) or "model")
        )
        path, result = write_folder(
            a.engine,
            out,
            onnx_path=a.onnx,
            cache=a.cache,
            batch=a.batch,
            stride=a.stride,
            source_size=size,
            sources=a.sources,
            threshold=a.threshold,
        )
    except (BundleError, FolderNotReplaceable, ValueError, OSError) as e:
        print(f"make deepstream: {e}", file=sys.stderr)
        return 2
    for note in result.notes:
        print(f"make deepstream: note: {note}", file=sys.stderr)
    info = result.info
    print(
        f"wrote {path}: input {info['input']['name']} NCTHW {[info['input']['batch'], *info['input']['shape'][1:]]}, "
        f"{info['sampling_rate']}-frame sampling, a window every {info['stride']} sampled frames; run: "
        f"nvstreammux ! nvdspreprocess config-file={path}/config_preprocess.txt ! nvinfer "
        f"config-file-path={path}/config_infer.txt input-tensor-meta=1 (docs/deepstream.md)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
