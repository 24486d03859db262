"""The FP32 ONNX of a model, exported once per (checkpoint, config, attention form) and cached.

``make engine``, the precision report and the precision benchmark share these files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from runtime.files import sha256_json

from export.onnx.export import export_onnx

__all__ = ["fp32_onnx_path", "cached_fp32_onnx"]

#: bumped when the export changes in a way that invalidates cached ONNX files
EXPORT_VERSION = "onnx-v1"
log = logging.getLogger(__name__)


def fp32_onnx_path(
    cache_dir: str | os.PathLike, source: dict[str, Any], config: dict[str, Any], attention: str, metadata: Any = None
) -> Path:
    """Where the FP32 ONNX of ``source`` (with this model config and attention form) is cached; ``metadata`` (the
    labels and preprocessing written into the file, which LABELS=/PREPROCESS= change) is part of the key."""
    key = sha256_json(
        source["checkpoint_sha256"], config, attention, EXPORT_VERSION, *([metadata] if metadata is not None else [])
    )
    return Path(cache_dir) / f"fp32-{key}.onnx"


def cached_fp32_onnx(
    net: Any,
    labels: list[str] | None,
    pre: Any,
    source: dict[str, Any],
    attention: str,
    cache_dir: str | os.PathLike,
    verbose: bool = True,
) -> Path:
    """The cached FP32 ONNX of ``net``, exported now when missing (atomically, so a killed export leaves none)."""
    path = fp32_onnx_path(
        cache_dir, source, net.config.to_dict(), attention, [labels, pre.to_dict() if pre is not None else None]
    )
    if path.is_file():
        if verbose:
            log.info("[export] reusing %s", path)
        return path
    if verbose:
        log.info("[export] exporting ONNX (attention=%s) -> %s", attention, path)
    export_onnx(
        net,
        path,
        attention=attention,
        labels=labels,
        preprocess=pre,
        source=source["checkpoint"],
        source_sha256=source["checkpoint_sha256"],
        verbose=verbose,
    )
    return path
