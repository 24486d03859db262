"""The bundle's reference set, written from what ``make engine``'s parity step computes (see ``runtime/reference.py``
for the format and the reader).

:func:`reference_pass` is the parity step's PyTorch pass: it rounds the parity clips to FP16 (so that storing
them as FP16 is exact), runs the FP32 model one clip at a time and, when asked to keep them, reduces each block's
output to a few statistics on the fly (a fixed sample of its values and its norm: a base model's block outputs
are 58 MB per clip, the sample 150 kB). :func:`add_reference` writes ``reference.json`` and ``reference.npz``
into the staged bundle and lists them in the manifest's ``files``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.files import write_bytes_atomic, write_text_atomic
from runtime.manifest import describe_files
from runtime.reference import REFERENCE_JSON, REFERENCE_NPZ, REFERENCE_SCHEMA, npz_bytes

from export.bundle.parity import BLOCK_THRESHOLD
from export.onnx.export import block_output_name

__all__ = ["reference_pass", "add_reference", "SAMPLES_PER_BLOCK"]

#: values sampled from each block's output per clip (plus the class token's row)
SAMPLES_PER_BLOCK = 1024


def _sample_index(size: int, row: int, seed: int = 0) -> np.ndarray:
    """Flat positions in one clip's block output: the first ``row`` values (the class token) and a fixed sample."""
    rng = np.random.default_rng(seed)
    rest = rng.choice(np.arange(row, size), size=min(SAMPLES_PER_BLOCK, size - row), replace=False)
    return np.concatenate([np.arange(min(row, size)), np.sort(rest)]).astype(np.int64)


def reference_pass(net: Any, clips: np.ndarray, keep: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(clips rounded to FP16, FP32 logits)``, one clip at a time; with ``keep``, also stores there ``clips``,
    ``logits`` and the block statistics, for :func:`add_reference`."""
    import torch

    clips = np.ascontiguousarray(clips.astype(np.float16).astype(np.float32))
    logits, samples, norms, index = [], [], [], None
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(len(clips)):
            if keep is None or not hasattr(net, "forward_with_blocks"):  # ONNX Runtime's reference: no blocks
                logits.append(net(torch.from_numpy(clips[i : i + 1])).numpy())
                continue
            out, blocks = net.forward_with_blocks(torch.from_numpy(clips[i : i + 1]))
            logits.append(out.numpy())
            flat = [b.reshape(-1).numpy() for b in blocks]
            if index is None:
                index = _sample_index(flat[0].size, int(blocks[0].shape[-1]))
            samples.append(np.stack([f[index] for f in flat]).astype(np.float32))
            norms.append(np.array([np.linalg.norm(f.astype(np.float64)) for f in flat], np.float32))
    ref = np.concatenate(logits).astype(np.float32)
    if keep is not None and samples:
        keep.update(
            clips=clips,
            logits=ref,
            block_index=index,
            block_samples=np.stack(samples),
            block_norm=np.stack(norms),
            pass_seconds=time.perf_counter() - t0,
        )
    elif keep is not None:
        keep.update(clips=clips, logits=ref, pass_seconds=time.perf_counter() - t0)
    return clips, ref


def _reference_text(manifest: dict[str, Any]) -> str:
    """What the reference logits are: PyTorch's, or ONNX Runtime's for a bundle built from an ONNX file."""
    ref = (manifest.get("provenance") or {}).get("reference")
    if ref in (None, "PyTorch FP32"):
        return "FP32 PyTorch logits of the bundle's source checkpoint (manifest source), one clip at a time"
    return f"{ref}: its logits, one clip at a time"


def add_reference(bundle: Path, kept: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Write ``reference.json``/``reference.npz`` into the staged ``bundle`` from ``kept`` (filled by the parity
    step: :func:`reference_pass` and the engine's logits) and add them to ``manifest["files"]``; records their size
    and the seconds they took in ``manifest["build"]["reference"]`` (the files themselves hold no time stamp, so a
    rebuild writes the same bytes)."""
    t0 = time.perf_counter()
    arrays = {"clips": kept["clips"].astype(np.float16), "logits": kept["logits"]}
    if kept.get("engine_logits") is not None:
        arrays["engine_logits"] = np.asarray(kept["engine_logits"], np.float32)
    depth = 0
    if kept.get("block_samples") is not None:
        arrays.update(
            block_index=kept["block_index"], block_samples=kept["block_samples"], block_norm=kept["block_norm"]
        )
        depth = kept["block_samples"].shape[1]
    request = (manifest.get("build") or {}).get("request") or {}
    meta = {
        "schema": REFERENCE_SCHEMA,
        "precision": manifest["precision"],
        "tolerance": manifest["tolerance"],
        "reference": _reference_text(manifest),
        "clips": {
            "count": int(len(arrays["clips"])),
            "shape": list(arrays["clips"].shape[1:]),
            "dtype": "float16",
            "source": request.get("calib") or "synthetic",
            "seed": int(request.get("seed", 0)) + 1000,
            "note": "the build's parity clips, rounded to FP16 before the reference and the engine ran",
        },
        "blocks": {
            "names": [block_output_name(i) for i in range(depth)],
            "samples_per_block": int(len(arrays["block_index"])) if depth else 0,
            "threshold_rel_l2": BLOCK_THRESHOLD[manifest["precision"]],
            "sampling": "each clip's block output flattened; the class token's row and a fixed random sample "
            "(numpy default_rng(0)); block_norm is the L2 norm of the whole output",
        }
        if depth
        else None,
        "arrays": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in sorted(arrays.items())},
    }
    write_bytes_atomic(bundle / REFERENCE_NPZ, npz_bytes(arrays))
    write_text_atomic(bundle / REFERENCE_JSON, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    records = describe_files(bundle, [REFERENCE_JSON, REFERENCE_NPZ])
    manifest["files"] = dict(sorted({**manifest["files"], **records}.items()))
    manifest.setdefault("build", {})["reference"] = {
        "bytes": sum(r["size"] for r in records.values()),
        "seconds": round(time.perf_counter() - t0 + float(kept.get("pass_seconds", 0.0)), 3),
        "note": "seconds: the parity step's PyTorch pass (with block statistics) and writing the files",
    }
