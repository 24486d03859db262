"""``BodyGuard``: an ASGI middleware for Serve's HTTP proxy that bounds every request's body in time and size.

Serve's proxy hands a request to a replica as soon as its headers arrive and streams the body after it; the request
holds one of the replica's ``max_ongoing_requests`` slots all that time. Sixteen clients that send headers and then
stall took every slot and blocked every other client, and a ``Transfer-Encoding: chunked`` body was buffered whole
before its size was checked (issue 28 #8, #9). This middleware runs in the proxy, in front of Serve's router:

* a declared ``Content-Length`` over the limit is refused (413) before a byte of the body is read;
* the body is read here, counting bytes whatever the encoding: past ``max_body_bytes`` the request is refused (413)
  and reading stops;
* the whole body must arrive within ``body_timeout_s`` of the headers (one deadline, not per read): a client that
  stalls or trickles gets 408;
* only a complete body goes on to a replica, so stalled clients hold a proxy connection, never a replica slot.

Refusals close the connection (``Connection: close``) and answer ``{"error": ...}`` as the replicas do.

Ray Serve 2.60 no longer takes ``HTTPOptions.middlewares``; it installs the proxy's middlewares from the function
named by ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` (read when the proxy process starts). :func:`install` sets it
to :func:`proxy_middlewares`, with the limits in ``TIMESFORMER_SERVE_MAX_BODY_BYTES`` and
``TIMESFORMER_SERVE_BODY_TIMEOUT_S``, before a local Ray starts (its processes inherit the environment). A cluster
joined through ``RAY_ADDRESS`` must have been started with these variables for its proxies to carry the guard; the
replicas bound the body again after reading it in any case.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Awaitable, Callable

from .protocol import MAX_BODY_BYTES

__all__ = ["BodyGuard", "BODY_TIMEOUT_S", "install", "proxy_middlewares"]

CALLBACK_VAR = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
MAX_BODY_VAR = "TIMESFORMER_SERVE_MAX_BODY_BYTES"
TIMEOUT_VAR = "TIMESFORMER_SERVE_BODY_TIMEOUT_S"

#: the default time a client has to send its whole body once its headers arrived
BODY_TIMEOUT_S = 30.0

Message = dict[str, Any]


class BodyGuard:
    """Pure ASGI middleware: ``Middleware(BodyGuard, max_body_bytes=..., body_timeout_s=...)``."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        max_body_bytes: int = MAX_BODY_BYTES,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        if max_body_bytes < 1 or not body_timeout_s > 0:
            raise ValueError(
                f"BodyGuard: expected max_body_bytes >= 1 and body_timeout_s > 0, got {max_body_bytes}, "
                f"{body_timeout_s}"
            )
        self.app, self.max_body_bytes, self.body_timeout_s = app, int(max_body_bytes), float(body_timeout_s)

    async def __call__(
        self, scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", []) if k.lower() == b"content-length"), None)
        if declared is not None:
            text = declared.decode("latin-1").strip()
            if not text.isdigit():
                await _refuse(send, 400, f"Content-Length: expected a byte count, got {text[:40]!r}")
                return
            if int(text) > self.max_body_bytes:
                await _refuse(send, 413, f"Content-Length: {text} bytes is over the {self.max_body_bytes}-byte limit")
                return
        body = await self._read_body(receive, send)
        if body is None:
            return
        replay: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive_again() -> Message:
            if replay:
                return replay.pop()
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, receive_again, send)

    async def _read_body(
        self, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> bytes | None:
        """The whole body, or None once a refusal was sent (or the client left)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        chunks: list[bytes] = []
        size = 0
        while True:
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), left)
            except asyncio.TimeoutError:
                await _refuse(
                    send,
                    408,
                    f"body: {size} bytes arrived in {self.body_timeout_s:g} s, the request did "
                    "not complete; send the whole body without pausing",
                )
                return None
            if message["type"] == "http.disconnect":
                return None
            if message["type"] != "http.request":
                continue
            part = message.get("body", b"")
            size += len(part)
            if size > self.max_body_bytes:
                await _refuse(
                    send,
                    413,
                    f"body: over the {self.max_body_bytes}-byte limit (whatever the transfer "
                    "encoding); send fewer or smaller frames",
                )
                return None
            if part:
                chunks.append(part)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _refuse(send: Callable[[Message], Awaitable[None]], status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def install(max_body_bytes: int, body_timeout_s: float) -> None:
    """Have every Serve proxy started from this process's environment from now on run :class:`BodyGuard`."""
    os.environ[CALLBACK_VAR] = f"{__name__}.proxy_middlewares"
    os.environ[MAX_BODY_VAR] = str(int(max_body_bytes))
    os.environ[TIMEOUT_VAR] = repr(float(body_timeout_s))


def proxy_middlewares() -> list[Any]:
    """Serve's proxy callback: the :class:`BodyGuard` with the limits :func:`install` recorded."""
    from starlette.middleware import Middleware

    return [
        Middleware(
            BodyGuard,
            max_body_bytes=int(os.environ.get(MAX_BODY_VAR, MAX_BODY_BYTES)),
            body_timeout_s=float(os.environ.get(TIMEOUT_VAR, BODY_TIMEOUT_S)),
        )
    ]
