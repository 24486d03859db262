"""``runtime.Engine``: load an engine bundle and turn raw frames into labels.

Needs numpy and one backend package (onnxruntime, or tensorrt + cuda-python); never torch.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .backends.base import Backend
from .engine_api import EngineAPI
from .errors import BundleError, InputError
from .manifest import MANIFEST_NAME, BundleFiles, parse_labels, read_manifest_from, validate_manifest
from .prediction import Prediction, check_top_k, prediction_metadata, top_k
from .preprocess import PreprocessConfig, preprocess_frames, sample_indices
from .stream import ClipStream

_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}
#: the largest share of this machine's memory one batch of input may take (the hub holds a float32 copy as well,
#: the engine its activations): a bundle asking for more is refused at load, not killed mid-run (issue 28 #10)
MEMORY_SHARE = 0.25


class EngineClosedError(RuntimeError):
    """The Engine was closed (``close()``); calls made afterwards are refused with this, not a crash."""


def machine_memory_bytes() -> int | None:
    """This machine's physical memory (``sysconf``; no file is opened), or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_batch_memory(manifest: dict[str, Any], where: str | os.PathLike, memory: int | None = None) -> None:
    """Refuse a bundle whose largest input batch cannot fit this machine (``MEMORY_SHARE`` of its memory).

    One line naming ``input.batch.max``, the bytes it needs and what the machine has; ``BundleError``."""
    memory = machine_memory_bytes() if memory is None else memory
    if not memory:
        return
    spec = manifest["input"]
    per_clip = int(np.prod(spec["shape"][1:], dtype=np.int64)) * max(np.dtype(_DTYPES[spec["dtype"]]).itemsize, 4)
    hi = int(spec["batch"]["max"])
    need, limit = hi * per_clip, int(memory * MEMORY_SHARE)
    if need > limit:
        fits = max(0, limit // per_clip)
        fix = f"rebuild with BATCH=min:opt:max at most {fits}" if fits else "one clip is too large for this machine"
        raise BundleError(
            f"{where}: input.batch.max {hi}: a batch of {hi} clips {tuple(spec['shape'][1:])} needs "
            f"{need / 2**30:.2f} GiB of input, over {MEMORY_SHARE:.0%} of this machine's "
            f"{memory / 2**30:.1f} GiB; {fix}"
        )


def _open_backend(bundle: Path, manifest: dict[str, Any], device: str, options: dict[str, Any]) -> Backend:
    engine_path = bundle / manifest["engine_file"]
    backend = manifest["backend"]
    if backend == "onnxruntime":
        from .backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(engine_path, manifest, device="cpu" if device == "auto" else device, **options)
    if backend == "tensorrt":
        from .backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(engine_path, manifest, device="cuda:0" if device == "auto" else device, **options)
    if backend == "openvino":
        from .backends.openvino_backend import OpenVINOBackend

        return OpenVINOBackend(engine_path, manifest, device="cpu" if device == "auto" else device, **options)
    raise BundleError(
        f"{bundle / 'manifest.json'}: backend: expected 'onnxruntime', 'tensorrt' or 'openvino', got {backend!r}"
    )


class Engine:
    """One loaded engine bundle.

    Loading: the manifest is validated (:func:`runtime.manifest.validate_manifest`; a malformed field, a
    path leaving the bundle, a symlink or a bundle whose parity was never measured raises ``BundleError``
    naming the file and field), every file the manifest lists is checked (regular file, size, SHA-256),
    and the engine and labels are read once, through the bundle directory's descriptor, and used from
    those verified bytes (``Backend.engine_data()``): no file outside the bundle is opened, and a file
    swapped after the check is not used (a backend that re-opens ``engine_path`` instead, or an ONNX
    model with an external-data file, leaves that window open). ``verify=False`` skips the SHA-256 (about 1.1 ms per MB
    here: ~105 ms for a 100 MB
    plan), not the other checks.
    ``manifest=``: a manifest not yet written to the bundle (the builder's parity check before it
    publishes); validated the same way, except that ``parity`` may still be missing.
    ``verify_on_device``: ``"once"`` (default), ``"always"`` or ``"never"``: run the bundle's stored parity at
    load, once per device fingerprint with the verdict cached in the user's cache (``verify_cache``: a folder,
    or False for none); a device that computes something else raises ``DeviceMismatchError`` with the numbers.
    ``self.verification`` is the verdict (``runtime/verify.py``).

    Thread safety: every method may be called from several threads at once on one ``Engine``
    (``infer``, ``predict``, ``clip_from_frames``, ``stream``). Backends whose inference is thread-safe
    (ONNX Runtime) run concurrently; others (TensorRT: one execution context and one stream) are
    serialised by a lock, so calls never interleave on the device. A :class:`ClipStream` is per camera:
    one thread pushes its frames (a second thread pushing at the same time is refused with an error).
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        device: str = "auto",
        verify: bool = True,
        manifest: dict[str, Any] | None = None,
        verify_on_device: str = "once",
        verify_cache: str | Path | bool | None = None,
        **backend_options: Any,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.verify = verify
        with BundleFiles(self.bundle_dir) as files:
            if manifest is None:
                self.manifest = read_manifest_from(files)
            else:
                self.manifest = validate_manifest(manifest, self.bundle_dir / MANIFEST_NAME, require_parity=False)
            m = self.manifest
            check_batch_memory(m, self.bundle_dir / MANIFEST_NAME)
            engine_bytes = self.labels = None
            for name, entry in m["files"].items():
                digest = entry["sha256"] if verify else None
                if name == m["engine_file"]:
                    engine_bytes = files.read(name, entry["size"], digest)
                elif name == m.get("labels_file"):
                    where = self.bundle_dir / name
                    self.labels = parse_labels(files.read(name, entry["size"], digest), m, where)
                else:  # other files of the bundle (external weights): checked, not kept
                    files.check(name, entry["size"], digest)
        # Every field below was validated with the manifest.
        self.preprocess = PreprocessConfig.from_dict(m["preprocess"])
        #: every Prediction's metadata: a bundle of random weights says so in each (issue 26)
        self.prediction_metadata: dict[str, Any] = prediction_metadata(m)
        spec = m["input"]
        self.input_name: str = spec["name"]
        self.input_dtype = np.dtype(_DTYPES[spec["dtype"]])
        self.input_layout: str = spec["layout"]
        self.clip_shape: tuple[int, ...] = tuple(int(d) for d in spec["shape"][1:])
        self.batch_range: tuple[int, int] = (int(spec["batch"]["min"]), int(spec["batch"]["max"]))
        self.num_classes = int(m["output"]["shape"][-1])
        self.precision = m["precision"]
        self.backend = _open_backend(self.bundle_dir, m, device, {**backend_options, "engine_bytes": engine_bytes})
        self._lock = None if self.backend.thread_safe else threading.Lock()
        # calls in progress, so that close() waits for them instead of pulling the backend from under them (#20)
        self._calls = threading.Condition()
        self._active = 0
        self._closed = False
        lo_hi = [((0.0 - mu) / sd, (1.0 - mu) / sd) for mu, sd in zip(self.preprocess.mean, self.preprocess.std)]
        #: the values (pixel/255 - mean)/std can take; input far outside it is not a video (used in messages)
        self.canonical_range = (min(a for a, _ in lo_hi), max(b for _, b in lo_hi))
        # last, once the Engine is complete: the stored parity on this device (runtime/verify.py); a staged
        # manifest (the builder's) has no reference yet
        self.verification: dict[str, Any] = {"status": "skipped", "reason": "a staged manifest (the builder's)"}
        if manifest is None:
            from .verify import verify_on_load

            try:
                self.verification = verify_on_load(self, verify_on_device, verify_cache, device, backend_options)
            except BaseException:
                self.close()
                raise

    # ----------------------------------------------------------------- tensors in, logits out
    def validate(self, x: np.ndarray, check_finite: bool = True) -> np.ndarray:
        """Check a canonical batch against the engine; returns it in the engine's dtype, contiguous.

        Float input must be finite: NaN/Inf would come out as NaN probabilities. The check costs about
        0.08 ms for one 8x3x224x224 float32 clip here (1.5-3 ms for a batch of 8), against ~1 s of
        inference for base 8x224, so it stays on.
        """
        if not isinstance(x, np.ndarray):
            raise InputError(f"{self.input_name}: expected a numpy array, got {type(x).__name__}")
        if x.ndim == len(self.clip_shape):
            raise InputError(
                f"{self.input_name}: expected (batch, {', '.join(map(str, self.clip_shape))}), got "
                f"{tuple(x.shape)}: add the batch axis (x[None])"
            )
        if x.ndim != len(self.clip_shape) + 1 or tuple(x.shape[1:]) != self.clip_shape:
            raise InputError(
                f"{self.input_name}: expected shape (batch, {', '.join(map(str, self.clip_shape))}) "
                f"[{self.input_layout}], got {tuple(x.shape)}"
            )
        lo, hi = self.batch_range
        if not lo <= x.shape[0] <= hi:
            raise InputError(
                f"{self.input_name}: batch {x.shape[0]} outside this engine's range {lo}..{hi} "
                "(rebuild with a larger BATCH=min:opt:max, or split the batch)"
            )
        if x.dtype != self.input_dtype:
            if self.input_dtype == np.float16 and x.dtype == np.float32:
                if check_finite:
                    self._check_finite(x)
                with np.errstate(over="ignore"):
                    half = x.astype(np.float16)
                if check_finite and not np.isfinite(half).all():
                    raise InputError(
                        f"{self.input_name}: values beyond float16's range (+-65504) for this float16 "
                        f"engine; max |value| {float(np.abs(x).max()):g}"
                    )
                x = half
            else:
                raise InputError(f"{self.input_name}: expected dtype {self.input_dtype}, got {x.dtype}")
        elif check_finite:
            self._check_finite(x)
        return np.ascontiguousarray(x)

    def _check_finite(self, x: np.ndarray) -> None:
        if x.dtype.kind != "f" or np.isfinite(x).all():
            return
        bad = ~np.isfinite(x)
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            f"{self.input_name}: expected finite values, got {int(bad.sum())} NaN/Inf (first at index "
            f"{first}: {x[first]}); the canonical input is (pixel/255 - mean)/std"
        )

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Canonical preprocessed batch ``(B, T, 3, H, W)`` -> logits ``(B, classes)`` float32.

        Raises ``InputError`` for input that does not fit (shape, batch, dtype, NaN/Inf) and ``BundleError``
        when the engine returns non-finite logits for finite input (a broken engine).
        """
        return self._run(self.validate(x))

    def _run(self, x: np.ndarray) -> np.ndarray:
        with self._calls:
            if self._closed:
                raise EngineClosedError(f"{self.bundle_dir}: this Engine was closed; load the bundle again")
            self._active += 1
        try:
            out = self._infer_backend(x)
        finally:
            with self._calls:
                self._active -= 1
                if not self._active:
                    self._calls.notify_all()
        if not np.isfinite(out).all():
            lo, hi = self.canonical_range
            span = hi - lo
            if x.dtype.kind == "f" and (float(x.min()) < lo - span or float(x.max()) > hi + span):
                raise InputError(
                    f"{self.input_name}: values {float(x.min()):g}..{float(x.max()):g} are far outside "
                    f"the canonical range {lo:.3g}..{hi:.3g} ((pixel/255 - mean)/std) and made the "
                    "engine overflow (NaN/Inf logits)"
                )
            raise BundleError(
                f"{self.bundle_dir}: the engine returned non-finite logits (NaN/Inf) for finite input: "
                f"the engine {self.manifest['engine_file']} is broken, or its precision "
                f"({self.precision}) overflows on this input"
            )
        return out

    def _infer_backend(self, x: np.ndarray) -> np.ndarray:
        try:
            if self._lock is None:
                return self.backend.infer(x)
            with self._lock:
                return self.backend.infer(x)
        except (InputError, BundleError, EngineClosedError):
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise RuntimeError(
                f"{self.bundle_dir}: the {self.manifest['backend']} engine failed on input "
                f"{tuple(x.shape)} {x.dtype} ({type(e).__name__}: {first})"
            ) from e

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
                raise InputError(
                    f"frames: expected at least {cfg.num_frames} frames (the model's clip length), got {n}"
                )
            arr = arr[sample_indices(n, cfg)]
        return preprocess_frames(arr, cfg, bgr=bgr)

    def _top_k(self, logits: np.ndarray, k: int) -> list[tuple[str, float]]:
        return top_k(logits, self.labels, k)

    def predict(self, frames: np.ndarray | Sequence[np.ndarray], bgr: bool = False, top_k: int = 5) -> Prediction:
        """Raw frames of one clip (RGB uint8, or BGR as OpenCV gives them with ``bgr=True``) -> top-k labels.

        ``bgr`` says the order of the frames given; the manifest's ``preprocess.channel_order`` the order the
        model expects. The channels are flipped when the two differ.
        """
        t0 = time.perf_counter()
        check_top_k(top_k)
        clip = self.clip_from_frames(frames, bgr=bgr)
        # preprocessed uint8 frames are finite by construction (the manifest's mean/std are validated)
        logits = self._run(self.validate(clip[None], check_finite=False))[0]
        return Prediction(
            self._top_k(logits, top_k), logits, (time.perf_counter() - t0) * 1e3, dict(self.prediction_metadata)
        )

    def stream(self, every: int | None = None, bgr: bool = False, top_k: int = 5) -> ClipStream:
        """A streaming clip buffer for one live camera: push frames, get a prediction every ``every`` frames.

        One per camera (and per thread): the Engine behind it is shared, the stream's ring is not."""
        return ClipStream(self, every=every, bgr=bgr, top_k=top_k)

    # ----------------------------------------------------------------- housekeeping
    def describe(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle_dir),
            "precision": self.precision,
            "input": self.manifest["input"],
            **self.backend.describe(),
            "verification": self.verification,
        }

    def close(self) -> None:
        """Release the backend once the calls in progress have finished; later calls raise ``EngineClosedError``."""
        with self._calls:
            if self._closed:
                return
            self._closed = True
            while self._active:
                self._calls.wait()
        self.backend.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _satisfies_engine_api(engine: Engine) -> EngineAPI:
    """Never called: mypy checks here that ``Engine`` has the whole :class:`runtime.engine_api.EngineAPI` surface."""
    return engine
