"""``runtime.Engine``: load an engine bundle and turn raw frames into labels.

Needs numpy and one backend package (onnxruntime, or tensorrt + cuda-python); never torch.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import BundleError, InputError
from .manifest import read_labels, read_manifest
from .prediction import Prediction, top_k
from .preprocess import PreprocessConfig, preprocess_frames, sample_indices
from .stream import ClipStream

_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}


def _open_backend(bundle: Path, manifest: dict[str, Any], device: str, options: dict[str, Any]):
    engine_path = bundle / manifest["engine_file"]
    backend = manifest["backend"]
    if backend == "onnxruntime":
        from .backends.onnxruntime_backend import OnnxRuntimeBackend
        return OnnxRuntimeBackend(engine_path, manifest, device="cpu" if device == "auto" else device, **options)
    if backend == "tensorrt":
        from .backends.tensorrt_backend import TensorRTBackend
        return TensorRTBackend(engine_path, manifest, device="cuda:0" if device == "auto" else device, **options)
    raise BundleError(f"{bundle / 'manifest.json'}: backend: expected 'onnxruntime' or 'tensorrt', got {backend!r}")


class Engine:
    """One loaded engine bundle.

    Thread safety: an ``Engine`` may be shared by several threads. Backends whose inference is
    thread-safe (ONNX Runtime) run concurrently; others (TensorRT: one execution context and one
    stream) are serialised by a lock, so calls never interleave on the device.
    """

    def __init__(self, bundle_dir: str | Path, device: str = "auto", **backend_options: Any) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = read_manifest(self.bundle_dir)
        self.labels = read_labels(self.bundle_dir, self.manifest)
        m = self.manifest
        try:
            self.preprocess = PreprocessConfig.from_dict(m["preprocess"])
            spec = m["input"]
            self.input_name: str = spec["name"]
            self.input_dtype = np.dtype(_DTYPES[spec["dtype"]])
            self.input_layout: str = spec.get("layout", "BTCHW")
            self.clip_shape: tuple[int, ...] = tuple(int(d) for d in spec["shape"][1:])
            self.batch_range: tuple[int, int] = (int(spec["batch"]["min"]), int(spec["batch"]["max"]))
            self.num_classes = int(m["output"]["shape"][-1])
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{self.bundle_dir / 'manifest.json'}: malformed input/output/preprocess entry ({e!r})") from e
        if self.input_layout != "BTCHW":
            raise BundleError(f"{self.bundle_dir / 'manifest.json'}: input layout {self.input_layout!r} not supported "
                              "by this runtime; expected 'BTCHW'")
        self.precision = m["precision"]
        self.backend = _open_backend(self.bundle_dir, m, device, backend_options)
        self._lock = None if self.backend.thread_safe else threading.Lock()

    # ----------------------------------------------------------------- tensors in, logits out
    def validate(self, x: np.ndarray) -> np.ndarray:
        """Check a canonical batch against the engine; returns it in the engine's dtype, contiguous."""
        if not isinstance(x, np.ndarray):
            raise InputError(f"{self.input_name}: expected a numpy array, got {type(x).__name__}")
        if x.ndim == len(self.clip_shape):
            raise InputError(f"{self.input_name}: expected (batch, {', '.join(map(str, self.clip_shape))}), got "
                             f"{tuple(x.shape)}: add the batch axis (x[None])")
        if x.ndim != len(self.clip_shape) + 1 or tuple(x.shape[1:]) != self.clip_shape:
            raise InputError(f"{self.input_name}: expected shape (batch, {', '.join(map(str, self.clip_shape))}) "
                             f"[{self.input_layout}], got {tuple(x.shape)}")
        lo, hi = self.batch_range
        if not lo <= x.shape[0] <= hi:
            raise InputError(f"{self.input_name}: batch {x.shape[0]} outside this engine's range {lo}..{hi} "
                             "(rebuild with a larger BATCH=min:opt:max, or split the batch)")
        if x.dtype != self.input_dtype:
            if self.input_dtype == np.float16 and x.dtype == np.float32:
                x = x.astype(np.float16)
            else:
                raise InputError(f"{self.input_name}: expected dtype {self.input_dtype}, got {x.dtype}")
        return np.ascontiguousarray(x)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Canonical preprocessed batch ``(B, T, 3, H, W)`` -> logits ``(B, classes)`` float32."""
        x = self.validate(x)
        if self._lock is None:
            return self.backend.infer(x)
        with self._lock:
            return self.backend.infer(x)

    # ----------------------------------------------------------------- raw frames in, labels out
    def clip_from_frames(self, frames: np.ndarray | Sequence[np.ndarray], bgr: bool = False) -> np.ndarray:
        """Raw ``(N, H, W, 3)`` uint8 frames -> one canonical clip ``(T, 3, crop, crop)``.

        ``N == num_frames``: the frames are the clip. More frames: they are a decoded stretch of video,
        sampled as the model was trained (dense stride or uniform, see the manifest's preprocessing).
        """
        cfg = self.preprocess
        if isinstance(frames, np.ndarray):
            arr = frames
        else:
            frames = list(frames)
            if not frames:
                raise InputError("frames: expected at least one frame, got none")
            shapes = {np.shape(f) for f in frames}
            if len(shapes) > 1:
                raise InputError(f"frames: all frames must have one size, got {sorted(shapes)}")
            arr = np.stack([np.asarray(f) for f in frames])
        if arr.ndim != 4 or arr.shape[-1] != 3:
            hint = " (channels first? frames must be H x W x 3)" if arr.ndim == 4 and arr.shape[1] == 3 else ""
            raise InputError(f"frames: expected (N, H, W, 3) uint8, got shape {tuple(arr.shape)}{hint}")
        if arr.dtype != np.uint8:
            raise InputError(f"frames: expected dtype uint8 (0..255), got {arr.dtype}")
        n = arr.shape[0]
        if n != cfg.num_frames:
            if n < cfg.num_frames:
                raise InputError(f"frames: expected at least {cfg.num_frames} frames (the model's clip length), got {n}")
            arr = arr[sample_indices(n, cfg)]
        return preprocess_frames(arr, cfg, bgr=bgr)

    def _top_k(self, logits: np.ndarray, k: int) -> list[tuple[str, float]]:
        return top_k(logits, self.labels, k)

    def predict(self, frames: np.ndarray | Sequence[np.ndarray], bgr: bool = False, top_k: int = 5) -> Prediction:
        """Raw frames of one clip (RGB uint8, or BGR as OpenCV gives them with ``bgr=True``) -> top-k labels."""
        t0 = time.perf_counter()
        clip = self.clip_from_frames(frames, bgr=bgr)
        logits = self.infer(clip[None])[0]
        return Prediction(self._top_k(logits, top_k), logits, (time.perf_counter() - t0) * 1e3)

    def stream(self, every: int | None = None, bgr: bool = False, top_k: int = 5) -> ClipStream:
        """A streaming clip buffer for a live camera: push frames, get a prediction every ``every`` frames."""
        return ClipStream(self, every=every, bgr=bgr, top_k=top_k)

    # ----------------------------------------------------------------- housekeeping
    def describe(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle_dir), "precision": self.precision, "input": self.manifest["input"],
                **self.backend.describe()}

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
