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
- Every answer is checked against the metadata read at start (issue 28 #7, #21): logits of the served bundle's
  shape (one row per clip, one column per label), finite; the answer's ``bundle_id`` the one the metadata named (a
  server redeployed with another bundle is refused, not believed). Top-k labels are computed here from the checked
  logits, as ``Engine.predict`` does. A malformed answer raises ``RemoteEngineError`` naming the field.
- ``timeout_s`` bounds each attempt as a whole (connect, send, headers and body together), not each socket read: a
  server that trickles its answer cannot hold a call longer (issue 28 #15).
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
import urllib.parse
from typing import Any, Sequence, TypeGuard

import numpy as np

from .engine import check_batch_memory
from .engine_api import EngineAPI
from .errors import InputError
from .manifest import MAX_BATCH, MAX_CLASSES, check_labels
from .prediction import Prediction, check_top_k, top_k
from .preprocess import PreprocessConfig, preprocess_frames, sample_indices
from .serving.protocol import API_PREFIX, encode_array
from .stream import ClipStream

__all__ = ["RemoteEngine", "RemoteEngineError"]

#: the largest answer read (logits of a full batch and the labels fit many times over)
MAX_ANSWER_BYTES = 64 << 20
_INPUT_DTYPES = ("float32", "float16", "uint8")


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


class RemoteEngineError(RuntimeError):
    """The server could not answer (unreachable, timed out, or failing) after every retry; says which and why."""


class RemoteEngine:
    """An HTTP client with ``runtime.Engine``'s public surface (:class:`runtime.engine_api.EngineAPI`). Thread-safe:
    each call is its own request."""

    def __init__(
        self, url: str, timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 0.2, fetch_meta: bool = True
    ) -> None:
        _check_url(url)
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s: expected a positive number of seconds, got {timeout_s!r}")
        if not _is_int(retries) or retries < 0:  # -1 made zero attempts ("no answer after 0 attempt(s)")
            raise ValueError(f"retries: expected an integer >= 0 (attempts after the first), got {retries!r}")
        if not (
            isinstance(backoff_s, (int, float))
            and not isinstance(backoff_s, bool)
            and math.isfinite(backoff_s)
            and backoff_s >= 0
        ):  # a negative or NaN one failed only at the first retry, inside time.sleep
            raise ValueError(f"backoff_s: expected a number of seconds >= 0, got {backoff_s!r}")
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
        where = f"{self.url}{API_PREFIX}/meta"

        def bad(field: str, expected: str) -> RemoteEngineError:
            return RemoteEngineError(f"{where}: {field}: expected {expected}, got {repr(m.get(field))[:80]}")

        if not isinstance(m, dict):
            raise RemoteEngineError(f"{where}: expected a JSON object, got {type(m).__name__}")
        try:
            pre = PreprocessConfig.from_dict(m.get("preprocess"))
        except (ValueError, TypeError) as e:
            raise RemoteEngineError(f"{where}: {e}") from None
        shape = (pre.num_frames, 3, pre.crop_size, pre.crop_size)
        if not isinstance(m.get("clip_shape"), list) or tuple(m["clip_shape"]) != shape:
            raise bad("clip_shape", f"{list(shape)} (from its preprocess)")
        br = m.get("batch_range")
        if (
            not isinstance(br, list)
            or len(br) != 2
            or not all(_is_int(v) for v in br)
            or not 1 <= br[0] <= br[1] <= MAX_BATCH
        ):
            raise bad("batch_range", f"[min, max] with 1 <= min <= max <= {MAX_BATCH}")
        n = m.get("num_classes")
        if not _is_int(n) or not 1 <= n <= MAX_CLASSES:
            raise bad("num_classes", f"an integer in 1..{MAX_CLASSES}")
        labels = m.get("labels")
        if labels is not None:
            try:
                labels = check_labels(labels, f"{where}: labels", n)
            except ValueError as e:
                raise RemoteEngineError(str(e)) from None
        if m.get("input_dtype") not in _INPUT_DTYPES:
            raise bad("input_dtype", f"one of {_INPUT_DTYPES}")
        inp = m.get("input")
        if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
            raise bad("input", "an object with a name")
        for field in ("precision", "bundle_id"):
            if not isinstance(m.get(field), str) or not m[field]:
                raise bad(field, "a non-empty string")
        spec = {"shape": [None, *shape], "dtype": m["input_dtype"], "batch": {"max": br[1]}}
        try:  # a clip (or batch) too large for this machine: a stream's ring and a batch are allocated here
            check_batch_memory({"input": spec}, f"{where}: the served bundle")
        except ValueError as e:
            raise RemoteEngineError(str(e)) from None
        self.meta = m
        self.preprocess = pre
        self.clip_shape: tuple[int, ...] = shape
        self.batch_range: tuple[int, int] = (int(br[0]), int(br[1]))
        self.labels: list[str] | None = labels
        self.num_classes = int(n)
        self.input_dtype = np.dtype(m["input_dtype"])
        self.input_name: str = inp["name"]
        self.precision: str = m["precision"]
        self.bundle_id: str = m["bundle_id"]

    def _logits(self, out: Any, rows: int, what: str) -> np.ndarray:
        """The ``logits`` of an answer, checked against the metadata: a JSON object from the bundle the metadata
        named, ``rows`` rows of ``num_classes`` finite numbers. Raises :class:`RemoteEngineError` naming the field."""
        where = f"{self.url}{API_PREFIX}/{what}"
        if not isinstance(out, dict):
            raise RemoteEngineError(f"{where}: expected a JSON object, got {type(out).__name__}")
        if self.meta and out.get("bundle_id") != self.bundle_id:
            raise RemoteEngineError(
                f"{where}: the answer comes from bundle {out.get('bundle_id')!r}, not "
                f"{self.bundle_id!r} whose metadata this client read: the server was redeployed "
                "with another bundle; create a new RemoteEngine"
            )
        try:
            raw = np.asarray(out.get("logits"))
            if raw.dtype.kind not in "iuf":  # strings, booleans (JSON true is not a number), None, ragged lists
                raise TypeError(raw.dtype)
            with np.errstate(over="ignore"):  # beyond float32: inf, refused below as non-finite
                logits = raw.astype(np.float32)
        except (TypeError, ValueError, OverflowError):
            raise RemoteEngineError(f"{where}: logits: expected numbers, got {str(out.get('logits'))[:80]}") from None
        classes = self.num_classes if self.meta else (logits.shape[-1] if logits.ndim == 2 else -1)
        if logits.shape != (rows, classes):
            raise RemoteEngineError(
                f"{where}: logits: expected shape {(rows, classes)} ({rows} clip(s) x the served "
                f"bundle's classes), got {logits.shape}"
            )
        if not np.isfinite(logits).all():
            raise RemoteEngineError(f"{where}: logits: expected finite values, got NaN/Inf")
        return logits

    def health(self) -> dict[str, Any]:
        """The health answer of whichever replica takes the call (replica id, actor name, engine settings)."""
        h = self._request("GET", "health")
        if not isinstance(h, dict):
            raise RemoteEngineError(f"{self.url}{API_PREFIX}/health: expected a JSON object, got {type(h).__name__}")
        return h

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "bundle": self.meta.get("bundle"),
            "precision": self.meta.get("precision"),
            "input": self.meta.get("input"),
            "backend": "remote",
        }

    def validate(self, x: np.ndarray) -> np.ndarray:
        """The local half of ``Engine.validate``: shape, batch range and dtype, before anything travels."""
        if not isinstance(x, np.ndarray):
            raise InputError(f"{self.input_name}: expected a numpy array, got {type(x).__name__}")
        if x.ndim != len(self.clip_shape) + 1 or tuple(x.shape[1:]) != self.clip_shape:
            raise InputError(
                f"{self.input_name}: expected shape (batch, {', '.join(map(str, self.clip_shape))}), "
                f"got {tuple(x.shape)}"
            )
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
        x = self.validate(x)
        body, headers = encode_array(x)
        out = self._request("POST", "infer", body, headers)
        return self._logits(out, len(x), "infer")

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

    def predict(
        self, frames: np.ndarray | Sequence[np.ndarray], bgr: bool = False, top_k: int = 5, input: str = "frames"
    ) -> Prediction:
        """Raw frames of one clip -> top-k labels, computed by a replica (``input="clip"``: frames already resized
        and cropped to the model's crop size)."""
        t0 = time.perf_counter()
        out = self.predict_json(frames, bgr=bgr, top_k=top_k, input=input)
        logits = np.asarray(out["logits"], np.float32)  # checked by predict_json
        return Prediction(self._top_k(logits, top_k), logits, (time.perf_counter() - t0) * 1e3)

    def predict_json(
        self, frames: np.ndarray | Sequence[np.ndarray], bgr: bool = False, top_k: int = 5, input: str = "frames"
    ) -> dict[str, Any]:
        """:meth:`predict`'s server answer: ``top_k``, ``logits``, ``server_ms``, ``batch`` (rows in the engine call
        that served it), ``replica`` and ``bundle_id``; its logits checked as :meth:`infer`'s, its ``top_k`` the
        labels those logits give."""
        if input not in ("frames", "clip"):
            raise ValueError(f"input: expected 'frames' or 'clip', got {input!r}")
        check_top_k(top_k)
        arr = self._sampled(frames)
        body, headers = encode_array(arr, top_k=top_k, input=input, channel_order="BGR" if bgr else "RGB")
        out = self._request("POST", "predict", body, headers)
        logits = self._logits({**out, "logits": [out.get("logits")]} if isinstance(out, dict) else out, 1, "predict")
        return {**out, "logits": logits[0].tolist(), "top_k": self._top_k(logits[0], top_k)}

    def stream(self, every: int | None = None, bgr: bool = False, top_k: int = 5) -> ClipStream:
        """A local streaming buffer whose windows are inferred remotely."""
        return ClipStream(self, every=every, bgr=bgr, top_k=top_k)

    def _top_k(self, logits: np.ndarray, k: int) -> list[tuple[str, float]]:
        return top_k(logits, self.labels, k)

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own connection."""

    def __enter__(self) -> "RemoteEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----------------------------------------------------------------- HTTP with retries
    def _request(
        self, method: str, endpoint: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        url = f"{self.url}{API_PREFIX}/{endpoint}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                with self._lock:
                    self.retried += 1
                time.sleep(self.backoff_s * (2 ** (attempt - 1)))
            try:
                status, data = self._attempt(method, url, body, headers or {})
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, malformed
                last = f"{type(e).__name__}: {e}"
                continue
            if 400 <= status < 500:  # the request itself is wrong: retrying cannot help
                raise InputError(f"{url}: {status} {_error_text(data)}")
            if status >= 500 or status < 200 or status >= 300:
                last = f"HTTP {status}: {_error_text(data).strip()[:300]}"
                continue
            try:
                return json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as e:
                last = f"the answer is not JSON ({e})"
        raise RemoteEngineError(f"{method} {url}: no answer after {self.retries + 1} attempt(s); last: {last}")

    def _attempt(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        """One HTTP exchange within ``timeout_s`` in all: a timer shuts the socket down at the deadline, so a server
        that trickles bytes cannot stretch the call (a per-read timeout would restart with every byte)."""
        u = urllib.parse.urlsplit(url)
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = cls(u.hostname or "", u.port, timeout=self.timeout_s)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(self.timeout_s, expire)
        timer.daemon = True
        timer.start()
        try:
            path = u.path + (f"?{u.query}" if u.query else "")
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read(MAX_ANSWER_BYTES + 1)
            if len(data) > MAX_ANSWER_BYTES:
                raise http.client.HTTPException(f"answer larger than {MAX_ANSWER_BYTES} bytes")
            return resp.status, data
        except (OSError, http.client.HTTPException) as e:
            if expired.is_set():
                raise TimeoutError(f"no complete answer within timeout_s={self.timeout_s:g} s") from e
            raise
        finally:
            timer.cancel()
            conn.close()
            if expired.is_set():  # the deadline passed while the answer was read: it is not trusted whole
                raise TimeoutError(f"no complete answer within timeout_s={self.timeout_s:g} s")


def _check_url(url: Any) -> None:
    """``http(s)://host[:port][/prefix]``, with a host and a valid port; ``ValueError`` naming ``url`` otherwise."""
    u = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    try:
        ok = u is not None and u.scheme in ("http", "https") and bool(u.hostname) and (u.port is None or u.port > 0)
    except ValueError:  # a port that is not a number or out of range
        ok = False
    if not ok:
        raise ValueError(f"url: expected http://host:port, got {url!r}")


def _error_text(data: bytes) -> str:
    """The ``error`` of a JSON error answer, else the answer's text."""
    text = data.decode(errors="replace")
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError):
        return text
    return str(msg.get("error", text)) if isinstance(msg, dict) else text


def _satisfies_engine_api(engine: RemoteEngine) -> EngineAPI:
    """Never called: mypy checks here that ``RemoteEngine`` has the :class:`runtime.engine_api.EngineAPI` surface."""
    return engine
