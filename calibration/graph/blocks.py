"""Where a network diverges: the ONNX graph's ``block_{i}_output`` tensors against the reference's, block by block.

The one block-divergence routine of the project (``make parity``'s per-block report and the precision report use
it): :func:`block_output_names` finds the blocks, :class:`BlockRunner` runs an ONNX file in ONNX Runtime (CPU) with
each block's output as an extra float32 graph output (a Cast added per block, so FP16 graphs work too),
:class:`BlockErrors` accumulates per-block relative L2 error, cosine and max |difference| over clips, and
:func:`divergence` names the first block past the precision's threshold, the first block whose error jumps, and the
blocks with the largest jump and step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime.backends.onnxruntime_session import cpu_session_options

__all__ = [
    "BLOCK_THRESHOLD",
    "JUMP_FLOOR",
    "JUMP_FACTOR",
    "block_output_names",
    "BlockRunner",
    "BlockErrors",
    "first_jump_block",
    "largest_step_block",
    "divergence",
    "block_errors",
]

#: relative L2 error of a block's output tokens above which that block counts as diverged, per precision
BLOCK_THRESHOLD = {"fp32": 1e-3, "fp16": 3e-2, "int8": 0.25}
#: relative block error below which a block is never called a jump (the precision's normal noise level)
JUMP_FLOOR = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}
#: a block jumps when its error is at least this many times the previous block's
JUMP_FACTOR = 2.0


def block_output_names(model: Any) -> list[str]:
    """The ``block_{i}_output`` tensors of an ONNX graph (a path or an ``onnx.ModelProto``), in block order."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    produced = {o for n in model.graph.node for o in n.output}
    names, i = [], 0
    while f"block_{i}_output" in produced:
        names.append(f"block_{i}_output")
        i += 1
    return names


class BlockRunner:
    """An ONNX Runtime CPU session of ``onnx_path`` returning ``(logits, [block outputs])`` per call, the blocks as
    float32 whatever the graph's precision. ``depth``: expect exactly that many blocks (else all that exist)."""

    def __init__(self, onnx_path: str | os.PathLike, depth: int | None = None, threads: int | None = None) -> None:
        import onnx
        import onnxruntime as ort
        from onnx import helper

        model = onnx.load(str(onnx_path))
        names = block_output_names(model)
        if depth is not None and len(names) < depth or not names:
            want = f"block_0_output..block_{depth - 1}_output" if depth else "block_{i}_output tensors"
            raise ValueError(
                f"{onnx_path}: expected {want}, found {len(names)} block outputs (export with "
                "export.onnx.export.export_onnx)"
            )
        names = names[:depth] if depth is not None else names
        self.blocks = []
        for t in names:
            out = f"{t}__f32"
            model.graph.node.append(helper.make_node("Cast", [t], [out], to=onnx.TensorProto.FLOAT, name=f"{t}__cast"))
            model.graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
            self.blocks.append(out)
        so = cpu_session_options(threads)
        self.session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.outputs = [self.session.get_outputs()[0].name] + self.blocks

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        res = self.session.run(self.outputs, {self.input_name: np.ascontiguousarray(x, self.input_dtype)})
        return np.asarray(res[0], np.float32), res[1:]


class BlockErrors:
    """Per block over clips: mean relative L2 error, min cosine and max |difference| of the output tokens."""

    def __init__(self) -> None:
        self.rel: list[float] = []
        self.min_cos: list[float] = []
        self.max_abs: list[float] = []
        self.n = 0

    def add(self, reference: Sequence[np.ndarray], engine: Sequence[np.ndarray]) -> None:
        """One batch: the reference's and the engine's block outputs (each ``(clips, ...)``), clip by clip."""
        for i, (r, e) in enumerate(zip(reference, engine)):
            if np.shape(r) != np.shape(e):
                raise ValueError(f"block_{i}_output: reference shape {np.shape(r)} != engine shape {np.shape(e)}")
        if len(reference) != len(engine):
            raise ValueError(f"block outputs: reference has {len(reference)} blocks, engine {len(engine)}")
        if not self.rel:
            self.rel, self.min_cos, self.max_abs = (
                [0.0] * len(reference),
                [1.0] * len(reference),
                [0.0] * len(reference),
            )
        clips = None
        for i, (r, e) in enumerate(zip(reference, engine)):
            r, e = np.asarray(r), np.asarray(e)
            r64 = r.astype(np.float64).reshape(len(r), -1)
            e64 = e.astype(np.float64).reshape(len(e), -1)
            rn, en = np.linalg.norm(r64, axis=1), np.linalg.norm(e64, axis=1)
            self.rel[i] += float(np.sum(np.linalg.norm(r64 - e64, axis=1) / np.maximum(rn, 1e-30)))
            cos = np.einsum("ij,ij->i", r64, e64) / np.maximum(rn * en, 1e-30)
            self.min_cos[i] = min(self.min_cos[i], float(cos.min()))
            self.max_abs[i] = max(self.max_abs[i], float(np.abs(r64 - e64).max()))
            clips = len(r)
        self.n += clips or 0

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"block": i, "rel_l2": self.rel[i] / max(self.n, 1), "cosine": self.min_cos[i], "max_abs": self.max_abs[i]}
            for i in range(len(self.rel))
        ]


def first_jump_block(errors: Sequence[float], floor: float, factor: float = JUMP_FACTOR) -> int | None:
    """The first block whose relative error is at least ``floor`` and ``factor`` times the previous block's
    (the input of block 0 counts as error-free); None when the error never jumps."""
    prev = 0.0
    for i, e in enumerate(errors):
        if e >= floor and e >= factor * prev:
            return i
        prev = e
    return None


def largest_step_block(errors: Sequence[float]) -> int | None:
    """The block that adds the most error (None without any increase)."""
    steps = [e - (errors[i - 1] if i else 0.0) for i, e in enumerate(errors)]
    return int(np.argmax(steps)) if steps and max(steps) > 0 else None


def divergence(rows: list[dict[str, Any]], precision: str) -> dict[str, Any]:
    """Where the per-block errors (:meth:`BlockErrors.rows`) go wrong for ``precision``: the first block past its
    threshold, the first block whose error jumps, the block with the largest ratio to the previous one and the block
    that adds the most error."""
    errs = [r["rel_l2"] for r in rows]
    ratios = [errs[i] / max(errs[i - 1], 1e-12) for i in range(1, len(errs))]
    return {
        "threshold_rel_l2": BLOCK_THRESHOLD[precision],
        "first_diverging_block": next((r["block"] for r in rows if r["rel_l2"] > BLOCK_THRESHOLD[precision]), None),
        "first_jump_block": first_jump_block(errs, JUMP_FLOOR[precision]),
        "largest_jump_block": int(np.argmax(ratios) + 1) if ratios else 0,
        "largest_step_block": largest_step_block(errs),
        "blocks": rows,
    }


def block_errors(reference: Sequence[np.ndarray], engine: Sequence[np.ndarray], precision: str) -> dict[str, Any]:
    """Per-block errors of one set of block outputs (each ``(clips, ...)``) and :func:`divergence` of them."""
    acc = BlockErrors()
    acc.add(reference, engine)
    return divergence(acc.rows(), precision)


def run_blocks(
    onnx_path: str | Path, clips: np.ndarray, batch: int = 1, threads: int | None = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits and every block's output of ``onnx_path`` on ``clips`` (``batch`` clips per call)."""
    runner = BlockRunner(onnx_path, threads=threads)
    logits, blocks = [], [[] for _ in runner.blocks]
    for i in range(0, len(clips), batch):
        out, bl = runner(clips[i : i + batch])
        logits.append(out)
        for j, b in enumerate(bl):
            blocks[j].append(b)
    return np.concatenate(logits), [np.concatenate(b) for b in blocks]
