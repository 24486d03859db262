"""The wire format between camera gateways and the serving replicas: stdlib and numpy only.

One request carries one window of frames (or a batch of canonical clips) as raw bytes, never JSON lists
of numbers; its shape, dtype and options travel in headers::

    POST /v1/predict   Content-Type: application/octet-stream
                       X-Shape: N,H,W,3        (uint8, row-major; N >= the model's clip length)
                       X-Dtype: uint8          (optional; the only type accepted here)
                       X-Input: frames | clip  frames: raw frames, resized and cropped by the replica as
                                               Engine.predict does (default); clip: exactly T frames
                                               already resized and cropped to the model's crop size
                                               (only the /255, mean/std and layout change run remotely)
                       X-Channel-Order: RGB | BGR   order of the frames sent (default RGB)
                       X-Top-K: 5
    -> 200 {"top_k": [[label, probability], ...], "logits": [...], "server_ms": ..., "batch": n, "replica": id}

    POST /v1/infer     X-Shape: B,T,3,H,W  X-Dtype: float32 (or the engine's input dtype): canonical clips
    -> 200 {"logits": [[...], ...], "server_ms": ..., "batch": n, "replica": id}

    GET  /v1/health    -> 200 {"status": "ok", "replica": id, "actor": name, "namespace": ns, ...}
    GET  /v1/meta      -> 200 the bundle's input/output/preprocess/labels/batch range
    GET  /v1/metrics   -> 200 Prometheus text of the answering replica (runtime/serving/metrics.py)

Bad input is answered with a 4xx and ``{"error": message}`` naming the header or field, what was expected
and what came: 400 bad headers/shape/size, 404 unknown path, 405 wrong method, 413 body too large,
415 wrong content type. 5xx only for server faults (a replica that died mid-request: the client retries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np


__all__ = [
    "API_PREFIX",
    "CONTENT_TYPE",
    "MAX_BODY_BYTES",
    "HttpError",
    "DecodedRequest",
    "encode_array",
    "parse_shape",
    "decode_body",
]

API_PREFIX = "/v1"
CONTENT_TYPE = "application/octet-stream"
#: a window of 96 frames of 1080p is ~600 MB; refuse anything larger than this before reading it whole
MAX_BODY_BYTES = 256 << 20
_DTYPES = {"uint8": np.uint8, "float32": np.float32, "float16": np.float16}
#: X-Shape bounds: a rank and dimensions no request needs, checked before any product is formed (issue 28 #17)
MAX_RANK = 8
MAX_DIM = 2**31 - 1


class HttpError(Exception):
    """A request the server refuses: an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class DecodedRequest:
    array: np.ndarray
    kind: str  # "frames" | "clip" | "canonical"
    bgr: bool
    top_k: int


_OPTION_HEADERS = {"top_k": "X-Top-K", "input": "X-Input", "channel_order": "X-Channel-Order"}


def encode_array(x: np.ndarray, **options: object) -> tuple[bytes, dict[str, str]]:
    """``x`` -> (body, headers) for a request: raw C-order bytes plus ``X-Shape``/``X-Dtype``, and the
    options ``top_k``, ``input`` ("frames" | "clip") and ``channel_order`` ("RGB" | "BGR") as headers."""
    x = np.ascontiguousarray(x)
    headers = {"Content-Type": CONTENT_TYPE, "X-Shape": ",".join(map(str, x.shape)), "X-Dtype": str(x.dtype)}
    for k, v in options.items():
        if k not in _OPTION_HEADERS:
            raise TypeError(f"encode_array: unknown option {k!r}; expected one of {sorted(_OPTION_HEADERS)}")
        headers[_OPTION_HEADERS[k]] = str(v)
    return x.tobytes(), headers


def parse_shape(text: str | None) -> tuple[int, ...]:
    """``"8,64,64,3"`` -> ``(8, 64, 64, 3)``; HttpError 400 naming the header otherwise."""
    if not text:
        raise HttpError(
            400, "X-Shape: missing; expected the array's shape as comma-separated integers, e.g. '8,224,224,3'"
        )
    if len(text) > 20 * MAX_RANK:
        raise HttpError(400, f"X-Shape: expected at most {MAX_RANK} dimensions, got {len(text)} characters")
    parts = text.replace(" ", "").split(",")
    if len(parts) > MAX_RANK or not all(p.isdigit() and p.isascii() for p in parts):
        raise HttpError(
            400, f"X-Shape: expected comma-separated integers (at most {MAX_RANK}, each positive), got {text!r}"
        )
    shape = tuple(int(p) for p in parts)
    if any(not 0 < d <= MAX_DIM for d in shape):
        raise HttpError(400, f"X-Shape: expected dimensions in 1..{MAX_DIM}, got {text!r}")
    return shape


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # starlette's Headers are case-insensitive; a plain dict (tests, other servers) may not be
    v = headers.get(name)
    if v is None:
        v = headers.get(name.lower())
    return v


def decode_body(
    body: bytes,
    headers: Mapping[str, str],
    *,
    kind: str,
    clip_shape: tuple[int, ...],
    num_frames: int,
    crop_size: int,
    input_dtype: np.dtype,
    max_batch: int,
) -> DecodedRequest:
    """Check a request's headers and body against the engine and return the array (a view of ``body``).

    ``kind`` is "frames" for /predict (refined by ``X-Input``) and "canonical" for /infer. Every refusal is
    an :class:`HttpError` with a 4xx status whose message names the header and says what was expected.
    """
    ctype = (_header(headers, "Content-Type") or "").split(";")[0].strip()
    if ctype and ctype != CONTENT_TYPE:
        raise HttpError(415, f"Content-Type: expected {CONTENT_TYPE} (raw array bytes), got {ctype!r}")
    shape = parse_shape(_header(headers, "X-Shape"))
    top_k = 5
    top = _header(headers, "X-Top-K")
    if top is not None:
        try:
            top_k = int(top)
        except ValueError:
            raise HttpError(400, f"X-Top-K: expected a positive integer, got {top!r}") from None
        if top_k <= 0:
            raise HttpError(400, f"X-Top-K: expected a positive integer, got {top!r}")
    order = (_header(headers, "X-Channel-Order") or "RGB").upper()
    if order not in ("RGB", "BGR"):
        raise HttpError(400, f"X-Channel-Order: expected RGB or BGR, got {order!r}")
    bgr = order == "BGR"
    dtype_name = _header(headers, "X-Dtype") or ("uint8" if kind == "frames" else str(np.dtype(input_dtype)))
    if dtype_name not in _DTYPES:
        raise HttpError(400, f"X-Dtype: expected one of {sorted(_DTYPES)}, got {dtype_name!r}")
    dtype = np.dtype(_DTYPES[dtype_name])
    if kind == "frames":
        kind = (_header(headers, "X-Input") or "frames").lower()
        if kind not in ("frames", "clip"):
            raise HttpError(
                400, f"X-Input: expected 'frames' (raw frames) or 'clip' (resized and cropped), got {kind!r}"
            )
        if dtype != np.uint8:
            raise HttpError(
                400,
                f"X-Dtype: /predict takes uint8 frames (0..255), got {dtype_name}; send "
                "canonical float clips to /infer",
            )
        if len(shape) != 4 or shape[-1] != 3:
            raise HttpError(400, f"X-Shape: expected (N, H, W, 3) frames, got {shape}")
        if kind == "clip" and shape != (num_frames, crop_size, crop_size, 3):
            raise HttpError(
                400,
                f"X-Shape: X-Input 'clip' expects exactly ({num_frames}, {crop_size}, "
                f"{crop_size}, 3) (the model's frames and crop size), got {shape}",
            )
        if shape[0] < num_frames:
            raise HttpError(
                400, f"X-Shape: expected at least {num_frames} frames (the model's clip length), got {shape[0]}"
            )
    else:
        if dtype != np.dtype(input_dtype):
            raise HttpError(400, f"X-Dtype: expected {np.dtype(input_dtype)} (the engine's input), got {dtype_name}")
        if len(shape) != len(clip_shape) + 1 or shape[1:] != tuple(clip_shape):
            raise HttpError(400, f"X-Shape: expected (batch, {', '.join(map(str, clip_shape))}), got {shape}")
        if shape[0] > max_batch:
            raise HttpError(
                400, f"X-Shape: batch {shape[0]} larger than the engine's maximum {max_batch}; split the request"
            )
    expected = math.prod(shape) * dtype.itemsize  # Python integers: no int64 overflow
    if expected > MAX_BODY_BYTES:
        raise HttpError(
            413,
            f"X-Shape: {shape} {dtype_name} is {expected} bytes, over the {MAX_BODY_BYTES}-byte "
            "limit; send fewer or smaller frames",
        )
    if len(body) != expected:
        raise HttpError(400, f"body: X-Shape {shape} {dtype_name} needs {expected} bytes, got {len(body)}")
    return DecodedRequest(np.frombuffer(body, dtype).reshape(shape), kind, bgr, top_k)
