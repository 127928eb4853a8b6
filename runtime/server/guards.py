"""ASGI middleware that refuses requests before any route sees them: API key (401), body size (413).

Pure ASGI rather than Starlette's BaseHTTPMiddleware: the routes must keep the real ``receive``
to notice a client that disconnects while its request waits for the model.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Open without a key: the page itself (it asks for the key) and the load balancer's probe.
OPEN_PATHS = {("GET", "/"), ("HEAD", "/"), ("GET", "/health"), ("HEAD", "/health")}


async def _reply(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((v for k, v in scope["headers"] if k.lower() == name), None)


class ApiKey:
    """Requests need ``Authorization: Bearer KEY`` (OpenAI clients) or HTTP Basic auth with KEY as
    the password, any user name (A1111 clients configured for ``--api-auth``)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self._key = app, key.encode()

    def _allowed(self, auth: bytes | None) -> bool:
        if auth is None:
            return False
        scheme, _, value = auth.strip().partition(b" ")
        value = value.strip()
        if scheme.lower() == b"bearer":
            return secrets.compare_digest(value, self._key)
        if scheme.lower() == b"basic":
            try:
                decoded = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            return secrets.compare_digest(decoded.partition(b":")[2], self._key)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if not self._allowed(_header(scope, b"authorization")):
            return await _reply(
                send,
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                [(b"www-authenticate", b'Bearer realm="sdlite"')],
            )
        await self.app(scope, receive, send)


class BodyLimit:
    """Bodies over ``limit`` bytes get 413: at once from Content-Length, else while reading.

    The body is read here in full (the routes read it in full anyway) so that a chunked upload
    without Content-Length is cut off at the limit instead of filling memory.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        too_big = f"request body larger than {self.limit} bytes (the server's --max-body-bytes)"
        length = _header(scope, b"content-length")
        if length is not None and not length.isdigit():
            return await _reply(
                send, 400, f"bad Content-Length header {length!r}", [(b"connection", b"close")]
            )
        if length is not None and int(length) > self.limit:
            return await _reply(send, 413, too_big, [(b"connection", b"close")])
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _reply(send, 413, too_big, [(b"connection", b"close")])
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: http.disconnect when the client goes away

        await self.app(scope, replay, send)
