"""``make onnx``: a TimeSformer -> one ONNX file with attention as an explicit subgraph.

The graph (see :mod:`export.onnx.attention` for the three attention forms)::

    video  (batch, frames, 3, H, W) float32, normalised    -- or, with uint8_input:
    frames (batch, frames, H, W, 3) uint8 RGB at the model size (normalisation, layout change and, for a model
           that expects BGR, the channel swap in the graph)
      -> ... block_0_output ... block_{depth-1}_output (intermediate tensors, names kept on purpose)
      -> logits (batch, classes) float32

Each block's output tensor is named ``block_{i}_output`` so that a parity tool can expose them as
extra outputs and find the first block where an engine diverges from PyTorch. Everything a consumer
needs to use the file alone (model config, preprocessing contract, labels, source checkpoint and its
SHA-256, attention mode, opset, input layout, exporter versions, block output names) is stored in
``metadata_props`` and read back by :func:`read_metadata`.

The write is atomic: the model (and its external data file, for models over 2 GB) goes to a temporary
directory beside the target, is checked there (``onnx.checker`` with ``full_check``, which includes
strict shape inference) and only then renamed into place; a failure leaves no file behind.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from importlib import metadata as _importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from runtime.cli_args import ArgumentParser

from runtime.cli_args import user_errors

from export.onnx.attention import (
    ATTENTION_CHOICES,
    DEFAULT_OPSET,
    EXPORT_IMPL,
    MIN_OPSET,
    MS_DOMAIN,
    fold_query_scale,
    resolve_attention,
    translation_table,
)

if TYPE_CHECKING:  # heavy imports stay lazy so that `--help` and read_metadata are fast
    import onnx_ir as ir
    import torch

    from models import TimeSformer
    from runtime.preprocess import PreprocessConfig

#: the format tag written to ``metadata_props["format"]``
METADATA_FORMAT = "timesformer-onnx/1"
#: models whose initializers exceed this many bytes are saved with their weights in one external data file
#: (protobuf cannot serialise a message over 2 GiB; the margin leaves room for the graph itself)
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2
#: metadata keys whose values are JSON (the rest are plain strings)
_JSON_KEYS = ("model_config", "preprocess", "labels", "input", "output", "exporter", "block_outputs", "opset")
#: the opset the PyTorch exporter writes natively; lower ones are reached by :func:`_downgrade_opset`
_EXPORTER_MIN_OPSET = 18


class ExportError(RuntimeError):
    """An export that cannot be done or did not produce a valid model; nothing was written."""


def _log(msg: str, verbose: bool) -> None:
    if verbose:
        logging.getLogger(__name__).info(msg)


def block_output_name(i: int) -> str:
    """The name of block ``i``'s output tensor in the exported graph."""
    return f"block_{i}_output"


# --------------------------------------------------------------------------- the module that is traced


def _export_copy(net: "TimeSformer", mode: str, frames: int | None, image_size: int | None) -> "TimeSformer":
    """A deep copy ready to trace: eval mode, marker attention, scale folded (decomposed), embeddings
    resized when the export runs at another clip length or resolution (as the model does at run time)."""
    import torch

    model = copy.deepcopy(net).eval()
    cfg = net.config
    frames = frames or cfg.num_frames
    image_size = image_size or cfg.image_size
    if (frames, image_size) != (cfg.num_frames, cfg.image_size):
        if image_size % cfg.patch_size:
            raise ExportError(f"image_size {image_size} is not a multiple of the patch size {cfg.patch_size}")
        grid = image_size // cfg.patch_size
        with torch.no_grad():
            model.pos_embed = torch.nn.Parameter(net._pos_embed_for(grid, grid).detach().clone())
            if hasattr(net, "time_embed"):
                model.time_embed = torch.nn.Parameter(net._time_embed_for(frames).detach().clone())
        model.config = cfg.replace(num_frames=frames, image_size=image_size)
    if mode == "decomposed":
        fold_query_scale(model)  # no scaling Mul between the matmuls
    model.norm = _class_token_norm(model.norm)
    model.set_attention_impl(EXPORT_IMPL)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _class_token_norm(norm: "torch.nn.Module") -> "torch.nn.Module":
    """The final LayerNorm applied to the class token only (the model reads row 0 of its output).

    LayerNorm is per token, so the logits are unchanged; the graph normalises one token instead of all of
    them, and the last block's output stays a tensor of its own: ONNX Runtime would otherwise fuse the
    residual ``Add`` that produces ``block_{depth-1}_output`` into a ``SkipLayerNormalization`` with
    the final norm, and the name would vanish from its optimised model.
    """
    import torch

    class ClassTokenNorm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = norm

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(x[:, :1])  # (B, 1, D): the caller's [:, 0] gives (B, D) as before

    return ClassTokenNorm()


def _traced_module(model: "TimeSformer", uint8_input: bool, preprocess: "PreprocessConfig") -> "torch.nn.Module":
    """Wraps ``model`` so that it returns ``(logits, *block_outputs)`` (and, for uint8 input, normalises)."""
    import numpy as np
    import torch

    class WithBlocks(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model
            if uint8_input:
                # The same float32 constants as runtime.preprocess.normalize: x * 1/(255 std) - mean/std.
                std = np.asarray(preprocess.std, np.float32)
                scale = (1.0 / (255.0 * std)).astype(np.float32)
                shift = (np.asarray(preprocess.mean, np.float32) / std).astype(np.float32)
                self.register_buffer("scale", torch.from_numpy(scale).reshape(1, 1, 3, 1, 1))
                self.register_buffer("shift", torch.from_numpy(shift).reshape(1, 1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if uint8_input:  # (B, T, H, W, 3) uint8 -> (B, T, 3, H, W) float32; transpose the bytes, then cast
                x = x.permute(0, 1, 4, 2, 3)
                if preprocess.model_bgr:  # the input is RGB; mean/std are in the model's (BGR) order
                    x = x[:, :, [2, 1, 0]]
                x = x.to(torch.float32) * self.scale - self.shift
            logits, blocks = self.net.forward_with_blocks(x)
            return (logits, *blocks)

    return WithBlocks().eval()


# --------------------------------------------------------------------------- graph post-processing


def _downgrade_opset(model: "ir.Model", target: int) -> None:
    """Rewrite an opset-18 graph to ``target`` (< 18) in place.

    The exporter writes opset 18 at the lowest and the ONNX version converter fails on its graphs
    (shared ``axes`` initializers; no adapter for ``Split``), so the two op changes 17 -> 18 that the
    model uses are undone here: reductions take ``axes`` as an attribute again and ``Split`` drops
    ``num_outputs`` (opset 13-17 split evenly into as many parts as it has outputs). Any other op whose
    schema changed in between raises :class:`ExportError`.
    """
    import onnx
    import onnx_ir as ir

    reductions = {
        "ReduceMean",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
    }
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in reductions and len(node.inputs) > 1:
            axes = node.inputs[1]
            if axes is None:
                continue
            const = ir.convenience.get_const_tensor(axes)
            if const is None:
                raise ExportError(
                    f"opset {target}: node {node.name!r} ({node.op_type}) has non-constant axes "
                    f"{axes.name!r}; cannot move them to an attribute"
                )
            axes_list = [int(a) for a in const.numpy().reshape(-1)]
            if not axes_list:
                raise ExportError(f"opset {target}: node {node.name!r} ({node.op_type}) has empty axes")
            node.attributes["axes"] = ir.AttrInt64s("axes", axes_list)
            node.attributes.pop("noop_with_empty_axes", None)  # opset 18 only; moot with explicit axes
            node.resize_inputs(1)
        elif node.op_type == "Split" and "num_outputs" in node.attributes:
            n = node.attributes["num_outputs"].as_int()
            axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
            shape = node.inputs[0].shape
            dim = shape[axis] if shape is not None else None
            if len(node.outputs) != n or not isinstance(dim, int) or dim % n:
                raise ExportError(
                    f"opset {target}: Split {node.name!r} into {n} uneven or unknown parts "
                    f"(axis {axis} of shape {shape}) has no opset-{target} form"
                )
            del node.attributes["num_outputs"]
        else:
            new = onnx.defs.get_schema(node.op_type, _EXPORTER_MIN_OPSET, "").since_version
            old = onnx.defs.get_schema(node.op_type, target, "").since_version
            if new != old:
                raise ExportError(
                    f"opset {target}: {node.op_type} (node {node.name!r}) changed in opset {new}; "
                    f"export at opset {new} or later"
                )
        node.version = None
    model.opset_imports[""] = target
    model.graph.opset_imports[""] = target


def _drop_source_locations(model: "ir.Model") -> None:
    """Remove the Python stack trace torch records on every node: it names source lines, so the same model would
    export different bytes after an edit that moves code (the other node metadata, scopes and names, stays)."""
    import onnx_ir as ir

    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)


def _finish_graph(model: "ir.Model", depth: int, opset: int) -> None:
    """Keep only ``logits`` as a graph output (the block outputs stay as named intermediates), downgrade
    the opset when asked and check that every block output is still there."""
    import onnx_ir.passes.common as common

    g = model.graph
    names = [block_output_name(i) for i in range(depth)]
    outputs = list(g.outputs)
    if [v.name for v in outputs] != ["logits", *names]:
        raise ExportError(
            f"exported graph outputs {[v.name for v in outputs]}: expected logits and {names[0]}..{names[-1]}"
        )
    for v in outputs[1:]:
        if v.producer() is None:
            raise ExportError(f"{v.name}: the exporter made it a graph input or constant, not a computed tensor")
    g.outputs[:] = outputs[:1]
    common.RemoveUnusedNodesPass()(model)
    if opset < _EXPORTER_MIN_OPSET:
        _downgrade_opset(model, opset)
    present = {v.name for node in g for v in node.outputs}
    missing = [n for n in names if n not in present]
    if missing:
        raise ExportError(f"block outputs {missing} did not survive the graph clean-up")


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "onnx", "onnxscript", "onnx-ir", "timesformer-deploy"):
        try:
            out[dist] = _importlib_metadata.version(dist)
        except _importlib_metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _initializer_bytes(model: "ir.Model") -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def _write_checked(model: "ir.Model", path: Path, external: bool, verbose: bool) -> None:
    """Save into a temporary directory beside ``path``, check there, then rename into place."""
    import onnx
    import onnx_ir as ir

    data_name = path.name + ".data"
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        t0 = time.perf_counter()
        ir.save(model, tmp, external_data=data_name if external else None)
        _log(
            f"[onnx]   wrote {_mib(tmp.stat().st_size)}"
            + (f" + {_mib((tmpdir / data_name).stat().st_size)} external data ({data_name})" if external else "")
            + f" in {time.perf_counter() - t0:.1f} s; checking (onnx.checker full_check + shape inference)",
            verbose,
        )
        try:
            # The path-based checker reads external data itself and has no 2 GB limit.
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as e:  # onnx raises ValidationError, InferenceError and others
            raise ExportError(f"{path}: the exported model fails the ONNX checker ({type(e).__name__}: {e})") from e
        if external:
            os.replace(tmpdir / data_name, path.parent / data_name)
        os.replace(tmp, path)
        if not external and (path.parent / data_name).exists():
            (path.parent / data_name).unlink()  # a stale weight file from an earlier external-data export
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# --------------------------------------------------------------------------- export


def _check_target(path: Path, mode: str, opset: int, batch: int | None) -> None:
    """Refuse arguments the export cannot honour, and an output directory it cannot write, before tracing."""
    if opset < MIN_OPSET[mode]:
        raise ValueError(f"opset {opset}: attention mode {mode!r} needs opset >= {MIN_OPSET[mode]}")
    if batch is not None and batch < 1:
        raise ValueError(f"batch: expected a positive size or None (dynamic), got {batch}")
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: the output file must end in .onnx")
    if path.is_dir():
        raise ExportError(f"{path}: is a directory; expected a file path ending in .onnx")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"{path}: cannot create the output directory {path.parent} ({e})") from e
    if not os.access(path.parent, os.W_OK):
        raise ExportError(f"{path}: the output directory {path.parent} is not writable")


def _export_preprocess(preprocess: "PreprocessConfig | None", cfg: Any, verbose: bool) -> "PreprocessConfig":
    """The preprocessing contract at the export's clip length and crop size (the model's own when none is given)."""
    from runtime.preprocess import PreprocessConfig

    if preprocess is None:
        preprocess = PreprocessConfig(num_frames=cfg.num_frames, short_side=cfg.image_size, crop_size=cfg.image_size)
    if (preprocess.num_frames, preprocess.crop_size) != (cfg.num_frames, cfg.image_size):
        short = round(preprocess.short_side * cfg.image_size / preprocess.crop_size)
        _log(
            f"[onnx] preprocessing contract adapted to the export size: {preprocess.num_frames} -> "
            f"{cfg.num_frames} frames, crop {preprocess.crop_size} -> {cfg.image_size}, short side {short}",
            verbose,
        )
        preprocess = dataclasses.replace(
            preprocess, num_frames=cfg.num_frames, crop_size=cfg.image_size, short_side=short
        )
    return preprocess


def _example_input(uint8_input: bool, t: int, s: int, batch: int | None) -> tuple[str, str, str, "torch.Tensor"]:
    """Input name, layout, dtype and the example tensor to trace with."""
    import torch

    if uint8_input:
        input_name, layout, dtype, example = "frames", "BTHWC", "uint8", torch.zeros((1, t, s, s, 3), dtype=torch.uint8)
    else:
        input_name, layout, dtype, example = "video", "BTCHW", "float32", torch.zeros((1, t, 3, s, s))
    # Trace with batch 2 when the axis is dynamic: sizes 0 and 1 get specialised by torch.export.
    example = example.expand((batch or 2,) + tuple(example.shape[1:])).contiguous()
    return input_name, layout, dtype, example


def _trace(
    wrapper: "torch.nn.Module",
    example: "torch.Tensor",
    input_name: str,
    names: list[str],
    batch: int | None,
    mode: str,
    export_opset: int,
) -> Any:
    """``torch.onnx.export`` (dynamo) of the wrapper; the ONNX program, or ExportError naming the attention mode."""
    import torch

    dynamic = None if batch else {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}
    try:
        with torch.no_grad():
            return torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                opset_version=export_opset,
                input_names=[input_name],
                output_names=names,
                dynamic_shapes=dynamic,
                custom_translation_table=translation_table(mode, export_opset),
                verbose=False,
                optimize=True,
                external_data=False,
            )
    except Exception as e:
        raise ExportError(f"torch.onnx.export of the {mode} graph failed: {type(e).__name__}: {e}") from e


def _metadata(
    cfg: Any,
    preprocess: "PreprocessConfig",
    mode: str,
    opset: int,
    source: str | None,
    source_sha256: str | None,
    input_name: str,
    layout: str,
    dtype: str,
    uint8_input: bool,
    batch: int | None,
    labels: list[str] | None,
    block_outputs: list[str],
) -> dict[str, Any]:
    """What :func:`read_metadata` gives back: everything a consumer needs to use the file alone."""
    t, s = cfg.num_frames, cfg.image_size
    shape = [batch or "batch", t, s, s, 3] if uint8_input else [batch or "batch", t, 3, s, s]
    meta: dict[str, Any] = {
        "format": METADATA_FORMAT,
        "model_config": cfg.to_dict(),
        "preprocess": preprocess.to_dict(),
        "source": source or "",
        "source_sha256": source_sha256 or "",
        "attention": mode,
        "opset": opset,
        "input": {
            "name": input_name,
            "layout": layout,
            "dtype": dtype,
            "shape": shape,
            "normalized_in_graph": uint8_input,
        },
        "output": {"name": "logits", "dtype": "float32", "shape": [batch or "batch", cfg.num_classes]},
        "exporter": _versions(),
        "block_outputs": block_outputs,
    }
    if labels is not None:
        meta["labels"] = list(labels)
    return meta


def export_onnx(
    net: "TimeSformer",
    path: str | os.PathLike,
    attention: str = "ort",
    opset: int | None = None,
    labels: list[str] | None = None,
    preprocess: "PreprocessConfig | None" = None,
    source: str | None = None,
    source_sha256: str | None = None,
    uint8_input: bool = False,
    batch: int | None = None,
    verbose: bool = True,
    *,
    frames: int | None = None,
    image_size: int | None = None,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> Path:
    """Export ``net`` (left unchanged) to ``path``; returns the path.

    ``attention``: ``onnx`` | ``decomposed`` | ``ort`` | ``auto`` (ONNX Runtime's default, see
    :func:`export.onnx.attention.default_attention`); ``opset`` defaults per mode (:data:`DEFAULT_OPSET`).
    ``batch``: a fixed batch size, or None for a dynamic ``batch`` axis. ``frames``/``image_size``
    export at another clip length or resolution (embeddings resized as the model does at run time).
    Models whose weights exceed ``external_data_threshold`` bytes keep them in ``<path>.data``.
    """
    t_start = time.perf_counter()
    path = Path(path)
    mode = resolve_attention(attention, "onnxruntime")
    opset = DEFAULT_OPSET[mode] if opset is None else int(opset)
    _check_target(path, mode, opset, batch)

    model = _export_copy(net, mode, frames, image_size)
    cfg = model.config
    if labels is not None and len(labels) != cfg.num_classes:
        raise ValueError(f"labels: expected {cfg.num_classes} (the model's classes), got {len(labels)}")
    preprocess = _export_preprocess(preprocess, cfg, verbose)
    t, s = cfg.num_frames, cfg.image_size
    input_name, layout, dtype, example = _example_input(uint8_input, t, s, batch)
    export_opset = max(opset, _EXPORTER_MIN_OPSET)
    wrapper = _traced_module(model, uint8_input, preprocess)
    names = ["logits"] + [block_output_name(i) for i in range(cfg.depth)]

    _log(
        f"[onnx] 1/3 tracing {cfg.attention_type} {cfg.depth}x{cfg.embed_dim}, {t}x{s}, attention={mode}, "
        f"opset {opset}, batch {'dynamic' if batch is None else batch}, input {input_name} {layout} {dtype}",
        verbose,
    )
    t0 = time.perf_counter()
    program = _trace(wrapper, example, input_name, names, batch, mode, export_opset)
    onnx_model = program.model
    _log(f"[onnx]   traced in {time.perf_counter() - t0:.1f} s", verbose)

    _log(
        "[onnx] 2/3 naming block outputs, metadata"
        + (f", opset {export_opset} -> {opset}" if opset != export_opset else ""),
        verbose,
    )
    _finish_graph(onnx_model, cfg.depth, opset)
    _drop_source_locations(onnx_model)
    meta = _metadata(
        cfg,
        preprocess,
        mode,
        opset,
        source,
        source_sha256,
        input_name,
        layout,
        dtype,
        uint8_input,
        batch,
        labels,
        names[1:],
    )
    onnx_model.metadata_props.update({k: json.dumps(v) if k in _JSON_KEYS else str(v) for k, v in meta.items()})
    onnx_model.producer_name = "timesformer-deploy"
    onnx_model.graph.name = f"timesformer_{cfg.attention_type}_{mode}"

    weights = _initializer_bytes(onnx_model)
    external = weights > external_data_threshold
    _log(
        f"[onnx] 3/3 writing {path} ({_mib(weights)} of weights"
        + (f", over {_mib(external_data_threshold)}: external data in {path.name}.data)" if external else ")"),
        verbose,
    )
    _write_checked(onnx_model, path, external, verbose)
    del program, onnx_model
    if verbose:
        print_summary(summarize(path), file=sys.stderr)
        _log(f"[onnx] exported {path} in {time.perf_counter() - t_start:.1f} s", True)
    return path


# --------------------------------------------------------------------------- reading back


def _load_graph(path: str | os.PathLike) -> Any:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ValueError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The export's ``metadata_props``, JSON values decoded (``model_config``, ``preprocess``, ``labels``, ...)."""
    model = _load_graph(path)
    out: dict[str, Any] = {}
    for prop in model.metadata_props:
        if prop.key in _JSON_KEYS:
            try:
                out[prop.key] = json.loads(prop.value)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: metadata {prop.key!r} is not valid JSON ({e})") from e
        else:
            out[prop.key] = prop.value
    return out


def _dims(value_info: Any) -> list[int | str] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def _attention_subgraphs(graph: Any) -> Iterator[dict[str, Any]]:
    """Every attention in ``graph``: ``Attention`` ops, ``com.microsoft.MultiHeadAttention`` ops and
    ``MatMul -> Softmax -> MatMul`` chains (also with a scaling ``Mul``/``Div`` before the softmax, as
    other exporters write it), with the ``(batch, seq, width)`` shape of their query where known."""
    import onnx

    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = collections.defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    shapes = {vi.name: _dims(vi) for vi in list(graph.value_info) + list(graph.input) + list(graph.output)}
    dtypes = {
        vi.name: onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name
        for vi in list(graph.value_info) + list(graph.input) + list(graph.output)
        if vi.type.tensor_type.elem_type
    }

    def query_shape(name: str) -> list[int | str] | None:
        # decomposed: the query reaches the first MatMul through Transpose(Reshape(q (B, S, W)))
        node = producer.get(name)
        if node is not None and node.op_type == "Transpose":
            node = producer.get(node.input[0])
            if node is not None and node.op_type == "Reshape":
                return shapes.get(node.input[0])
        return shapes.get(name)

    for n in graph.node:
        if n.op_type == "Attention" and n.domain in ("", "ai.onnx"):
            yield {
                "kind": "Attention",
                "node": n.name,
                "query_shape": shapes.get(n.input[0]),
                "dtype": dtypes.get(n.input[0]),
            }
        elif n.op_type == "MultiHeadAttention" and n.domain == MS_DOMAIN:
            yield {
                "kind": f"{MS_DOMAIN}.MultiHeadAttention",
                "node": n.name,
                "query_shape": shapes.get(n.input[0]),
                "dtype": dtypes.get(n.input[0]),
            }
        elif n.op_type == "Softmax":
            first = producer.get(n.input[0])
            kind = "MatMul-Softmax-MatMul"
            if first is not None and first.op_type in ("Mul", "Div"):  # a scale between (not TensorRT's pattern)
                scaled = [producer.get(i) for i in first.input]
                first = next((p for p in scaled if p is not None and p.op_type == "MatMul"), None)
                kind = "MatMul-Scale-Softmax-MatMul"
            second = [c for c in consumers.get(n.output[0], []) if c.op_type == "MatMul" and c.input[0] == n.output[0]]
            if first is not None and first.op_type == "MatMul" and second:
                yield {
                    "kind": kind,
                    "node": n.name,
                    "query_shape": query_shape(first.input[0]),
                    "dtype": dtypes.get(first.input[0]),
                }


def summarize(path: str | os.PathLike) -> dict[str, Any]:
    """Node counts by op type, attention subgraphs by kind (with their query shapes), file sizes, opset, I/O."""
    path = Path(path)
    model = _load_graph(path)
    g = model.graph
    ops = collections.Counter(
        f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in g.node
    )
    attn = list(_attention_subgraphs(g))
    data_files = sorted({e.value for t in g.initializer for e in t.external_data if e.key == "location"})

    def io(vis: Any) -> list[dict[str, Any]]:
        import onnx

        return [
            {
                "name": v.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                "shape": _dims(v),
            }
            for v in vis
        ]

    init_names = {t.name for t in g.initializer}
    return {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "external_data": data_files,
        "external_data_bytes": sum((path.parent / f).stat().st_size for f in data_files),
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "ir_version": model.ir_version,
        "inputs": io([v for v in g.input if v.name not in init_names]),
        "outputs": io(g.output),
        "nodes": len(g.node),
        "op_counts": dict(ops.most_common()),
        "attention": dict(collections.Counter(a["kind"] for a in attn)),
        "attention_subgraphs": attn,
        "initializers": len(g.initializer),
        "metadata_keys": [p.key for p in model.metadata_props],
    }


def print_summary(summary: dict[str, Any], file: Any = None) -> None:
    """A short human-readable form of :func:`summarize`'s result."""
    file = file or sys.stdout
    p = lambda *a: print(*a, file=file)  # noqa: E731
    size = summary["file_bytes"] + summary["external_data_bytes"]
    p(
        f"[onnx] {summary['path']}: {_mib(size)}"
        + (f" (weights in {', '.join(summary['external_data'])})" if summary["external_data"] else "")
        + f", opset {summary['opset']}, {summary['nodes']} nodes"
    )
    for kind, key in (("inputs", "in "), ("outputs", "out")):
        for v in summary[kind]:
            p(f"[onnx]   {key} {v['name']}: {v['dtype']} {v['shape']}")
    by_shape = collections.Counter((a["kind"], str(a["query_shape"])) for a in summary["attention_subgraphs"])
    for (kind, shape), n in sorted(by_shape.items()):
        p(f"[onnx]   attention: {n} x {kind} over {shape}")
    ops = summary["op_counts"]
    p("[onnx]   ops: " + ", ".join(f"{k} {v}" for k, v in ops.items()))


# --------------------------------------------------------------------------- CLI


def _model_name(model: str) -> str:
    from models import PRESETS

    if model in PRESETS:
        return PRESETS[model].name
    return Path(model).stem if Path(model).suffix else Path(model).name


@user_errors("make onnx")
def _to_ncthw(path: Path) -> None:
    """Rewrite the exported file in place with an NCTHW input (:func:`export.onnx.layout.ncthw_input`)."""
    import onnx

    from export.onnx.layout import ncthw_input
    from runtime.files import atomic_output

    model = ncthw_input(onnx.load(str(path)))
    with atomic_output(path, ".onnx") as tmp:
        onnx.save(model, str(tmp))


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(
        prog="python -m export.onnx.export",
        description="Export a TimeSformer to ONNX with explicit attention subgraphs.",
    )
    ap.add_argument("--model", required=True, help="preset name (random weights) or checkpoint path")
    ap.add_argument(
        "--attention",
        default="auto",
        choices=ATTENTION_CHOICES,
        help="auto: the fastest form for ONNX Runtime (default)",
    )
    ap.add_argument("--opset", type=int, default=None, help=f"default per mode: {DEFAULT_OPSET}")
    ap.add_argument("--out", default=None, help="default artifacts/onnx/<name>-<attention>.onnx")
    ap.add_argument(
        "--uint8-input",
        action="store_true",
        help="input 'frames' (batch, frames, H, W, 3) uint8 RGB; normalisation in the graph",
    )
    ap.add_argument("--batch", type=int, default=None, help="fixed batch size (default: dynamic)")
    ap.add_argument("--frames", type=int, default=None, help="clip length to export at (default: the model's)")
    ap.add_argument("--image-size", type=int, default=None, help="resolution to export at (default: the model's)")
    ap.add_argument("--seed", type=int, default=0, help="seed for a preset's random weights")
    ap.add_argument(
        "--input-layout",
        default="BTCHW",
        choices=("BTCHW", "NCTHW"),
        help="NCTHW: (batch, 3, frames, H, W), as DeepStream's sequence preprocessing feeds it "
        "(a Transpose at the graph input, export/onnx/layout.py)",
    )
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)

    from models import SourceError, load_source

    mode = resolve_attention(a.attention, "onnxruntime")
    out = (
        Path(a.out)
        if a.out
        else Path("artifacts/onnx") / (f"{_model_name(a.model)}-{mode}{'-uint8' if a.uint8_input else ''}.onnx")
    )
    try:
        net, labels, pre, source = load_source(a.model, a.seed)
        export_onnx(
            net,
            out,
            attention=mode,
            opset=a.opset,
            labels=labels,
            preprocess=pre,
            source=source["checkpoint"],
            source_sha256=source["checkpoint_sha256"],
            uint8_input=a.uint8_input,
            batch=a.batch,
            verbose=not a.quiet,
            frames=a.frames,
            image_size=a.image_size,
        )
        if a.input_layout == "NCTHW":
            _to_ncthw(out)
    except (SourceError, ExportError, ValueError, OSError) as e:
        print(f"make onnx: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
