"""``RemoteEngine(url)``: a served engine (``make serve``) behind the same surface as ``runtime.Engine``.

A camera app, the camera hub or a ``ClipStream`` moves from local to cluster inference by changing one
argument: ``Engine("engines/motion")`` -> ``RemoteEngine("http://serve-host:8000")``. Standard library
(urllib) and numpy only.

- ``predict(frames)`` sends the raw frames (sampled to the clip's frames here first, so only ``T`` frames
  travel); the replica preprocesses them exactly as ``Engine.predict`` does. ``predict(clip, input="clip")``
  sends frames already resized and cropped (4x fewer bytes than float32, none of the resize work remote).
- ``infer(x)`` sends canonical float clips; ``stream()`` is the local ``ClipStream``, preprocessing each frame
  here once and sending only the window.
- Failures: a 4xx (bad input) raises ``InputError`` with the server's message at once. A dropped connection,
  a timeout or a 5xx (a replica that died mid-request; Serve replaces it) is retried ``retries`` times with
  back-off, since inference is idempotent; after that ``RemoteEngineError`` says what happened, every time.
  A request is never dropped silently.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

import numpy as np

from .errors import InputError
from .prediction import Prediction, top_k
from .preprocess import PreprocessConfig, preprocess_frames, sample_indices
from .serving.protocol import API_PREFIX, encode_array
from .stream import ClipStream

__all__ = ["RemoteEngine", "RemoteEngineError"]


class RemoteEngineError(RuntimeError):
    """The server could not answer (unreachable, timed out, or failing) after every retry; says which and why."""


class RemoteEngine:
    """An HTTP client with ``runtime.Engine``'s public surface. Thread-safe: each call is its own request."""

    def __init__(self, url: str, timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 0.2,
                 fetch_meta: bool = True) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected http://host:port, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self._lock = threading.Lock()
        #: attempts that failed and were retried (a dead replica, a dropped connection), over this client's life
        self.retried = 0
        self.meta: dict[str, Any] = {}
        if fetch_meta:
            self._load_meta()

    # ----------------------------------------------------------------- what Engine exposes
    def _load_meta(self) -> None:
        m = self._request("GET", "meta")
        self.meta = m
        self.preprocess = PreprocessConfig.from_dict(m["preprocess"])
        self.clip_shape: tuple[int, ...] = tuple(m["clip_shape"])
        self.batch_range: tuple[int, int] = tuple(m["batch_range"])  # type: ignore[assignment]
        self.labels: list[str] | None = m["labels"]
        self.num_classes = int(m["num_classes"])
        self.input_dtype = np.dtype(m["input_dtype"])
        self.input_name: str = m["input"]["name"]
        self.precision: str = m["precision"]

    def health(self) -> dict[str, Any]:
        """The health answer of whichever replica takes the call (replica id, actor name, engine settings)."""
        return self._request("GET", "health")

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "bundle": self.meta.get("bundle"), "precision": self.meta.get("precision"),
                "input": self.meta.get("input"), "backend": "remote"}

    def validate(self, x: np.ndarray) -> np.ndarray:
        """The local half of ``Engine.validate``: shape, batch range and dtype, before anything travels."""
        if not isinstance(x, np.ndarray):
            raise InputError(f"{self.input_name}: expected a numpy array, got {type(x).__name__}")
        if x.ndim != len(self.clip_shape) + 1 or tuple(x.shape[1:]) != self.clip_shape:
            raise InputError(f"{self.input_name}: expected shape (batch, {', '.join(map(str, self.clip_shape))}), "
                             f"got {tuple(x.shape)}")
        lo, hi = self.batch_range
        if not lo <= x.shape[0] <= hi:
            raise InputError(f"{self.input_name}: batch {x.shape[0]} outside the served engine's range {lo}..{hi}")
        if x.dtype != self.input_dtype:
            if self.input_dtype == np.float16 and x.dtype == np.float32:
                x = x.astype(np.float16)
            else:
                raise InputError(f"{self.input_name}: expected dtype {self.input_dtype}, got {x.dtype}")
        return x

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Canonical ``(B, T, 3, H, W)`` -> logits ``(B, classes)`` float32, computed by a replica."""
        body, headers = encode_array(self.validate(x))
        out = self._request("POST", "infer", body, headers)
        return np.asarray(out["logits"], np.float32)

    def clip_from_frames(self, frames: np.ndarray | Sequence[np.ndarray], bgr: bool = False) -> np.ndarray:
        """The same canonical clip ``Engine.clip_from_frames`` makes, computed here (no network)."""
        arr = self._sampled(frames)
        return preprocess_frames(arr, self.preprocess, bgr=bgr)

    def _sampled(self, frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        arr = frames if isinstance(frames, np.ndarray) else np.stack([np.asarray(f) for f in frames])
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise InputError(f"frames: expected (N, H, W, 3) uint8, got shape {tuple(arr.shape)} {arr.dtype}")
        t = self.preprocess.num_frames
        if arr.shape[0] < t:
            raise InputError(f"frames: expected at least {t} frames (the model's clip length), got {arr.shape[0]}")
        return arr if arr.shape[0] == t else arr[sample_indices(arr.shape[0], self.preprocess)]

    def predict(self, frames: np.ndarray | Sequence[np.ndarray], bgr: bool = False, top_k: int = 5,
                input: str = "frames") -> Prediction:
        """Raw frames of one clip -> top-k labels, computed by a replica (``input="clip"``: frames already resized
        and cropped to the model's crop size)."""
        t0 = time.perf_counter()
        out = self.predict_json(frames, bgr=bgr, top_k=top_k, input=input)
        return Prediction([(str(a), float(p)) for a, p in out["top_k"]], np.asarray(out["logits"], np.float32),
                          (time.perf_counter() - t0) * 1e3)

    def predict_json(self, frames: np.ndarray | Sequence[np.ndarray], bgr: bool = False, top_k: int = 5,
                     input: str = "frames") -> dict[str, Any]:
        """:meth:`predict`'s server answer as it came: ``top_k``, ``logits``, ``server_ms``, ``batch`` (rows in the
        engine call that served it) and ``replica``."""
        if input not in ("frames", "clip"):
            raise ValueError(f"input: expected 'frames' or 'clip', got {input!r}")
        arr = self._sampled(frames)
        body, headers = encode_array(arr, top_k=top_k, input=input, channel_order="BGR" if bgr else "RGB")
        return self._request("POST", "predict", body, headers)

    def stream(self, every: int | None = None, bgr: bool = False, top_k: int = 5) -> ClipStream:
        """A local streaming buffer whose windows are inferred remotely."""
        return ClipStream(self, every=every, bgr=bgr, top_k=top_k)  # type: ignore[arg-type]

    def _top_k(self, logits: np.ndarray, k: int) -> list[tuple[str, float]]:
        return top_k(logits, self.labels, k)

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own connection."""

    def __enter__(self) -> "RemoteEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----------------------------------------------------------------- HTTP with retries
    def _request(self, method: str, endpoint: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> dict[str, Any]:
        url = f"{self.url}{API_PREFIX}/{endpoint}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                with self._lock:
                    self.retried += 1
                time.sleep(self.backoff_s * (2 ** (attempt - 1)))
            req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                text = e.read().decode(errors="replace")
                try:
                    msg = json.loads(text).get("error", text)
                except (json.JSONDecodeError, AttributeError):
                    msg = text
                if 400 <= e.code < 500:  # the request itself is wrong: retrying cannot help
                    raise InputError(f"{url}: {e.code} {msg}") from None
                last = f"HTTP {e.code}: {msg.strip()[:300]}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = f"{type(reason).__name__}: {reason}"
            except json.JSONDecodeError as e:
                last = f"the answer is not JSON ({e})"
        raise RemoteEngineError(f"{method} {url}: no answer after {self.retries + 1} attempt(s); last: {last}")
