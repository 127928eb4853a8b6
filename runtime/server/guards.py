"""ASGI middleware that refuses requests before any route sees them: Host (400), cross-site (403),
API key (401), body size (413), slow body (408), content type (415).

Pure ASGI rather than Starlette's BaseHTTPMiddleware: the routes must keep the real ``receive``
to notice a client that disconnects while its request waits for the model.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Open without a key: the page itself (it asks for the key) and the load balancer's probe.
OPEN_PATHS = {("GET", "/"), ("HEAD", "/"), ("GET", "/health"), ("HEAD", "/health")}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
JSON = "application/json"


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


def _host_name(value: str) -> str:
    """``Host`` / ``Origin`` authority -> the name or address alone, lower case, without brackets."""
    value = value.strip().lower()
    if value.startswith("["):  # an IPv6 address: [::1]:7860
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def _is_loopback(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostCheck:
    """Refuse requests whose ``Host`` is not loopback or one of ``allowed`` (400).

    A server on a loopback address is reachable from any web page the user opens by DNS
    rebinding (a name that first resolves to the page's server, then to 127.0.0.1); the browser
    then sends that name as Host, which is how it is told apart from the user's own tools."""

    def __init__(self, app: ASGIApp, allowed: Collection[str] = ()) -> None:
        self.app = app
        self.allowed = {_host_name(h) for h in allowed}

    def allows(self, host: str) -> bool:
        name = _host_name(host)
        return _is_loopback(name) or name.rstrip(".") in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw = _header(scope, b"host")
        host = raw.decode("latin-1") if raw is not None else ""
        if not host or not self.allows(host):
            names = ", ".join([*LOOPBACK_NAMES, *sorted(self.allowed)])
            return await _reply(
                send, 400, f"Host header {host!r} is not allowed: this server answers to {names} "
                "(sdlite serve --allowed-host NAME adds names)",
            )  # fmt: skip
        await self.app(scope, receive, send)


class SameOrigin:
    """State-changing requests from a web page of another site get 403 (cross-site request forgery).

    Browsers say where a request comes from (``Origin``, ``Sec-Fetch-Site``); scripts and A1111
    clients send neither and pass.  The page served at / is same-origin and passes too."""

    def __init__(self, app: ASGIApp, allowed: Collection[str] = ()) -> None:
        self.app = app
        self.allowed = {_host_name(h) for h in allowed}

    def _cross_site(self, scope: Scope) -> bool:
        if (_header(scope, b"sec-fetch-site") or b"").lower() == b"cross-site":
            return True
        origin = _header(scope, b"origin")
        if origin is None:
            return False
        _, sep, authority = origin.decode("latin-1").partition("://")
        host = (_header(scope, b"host") or b"").decode("latin-1").strip().lower()
        if not sep:  # "null": a sandboxed frame, a file:// page
            return True
        return authority.lower() != host and _host_name(authority) not in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS and self._cross_site(scope):
            return await _reply(
                send, 403, "cross-site request refused: this server's pages may call it, others not"
            )
        await self.app(scope, receive, send)


# A body refused as too large is still read and dropped, up to this much past the limit: closing
# a connection with unread data resets it, and the client then often loses the 413 (the soak
# benchmark lost a third of them under load).  nginx's lingering close does the same.
DRAIN_BYTES = 64 * 2**20


async def _drain(receive: Receive, deadline: float, budget: int) -> None:
    """Read and drop the rest of a request body: at most ``budget`` bytes, until ``deadline``."""
    while budget > 0:
        try:
            message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
        except asyncio.TimeoutError:
            return
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class BodyLimit:
    """Bodies over ``limit`` bytes get 413: at once from Content-Length, else while reading; a body
    not received within ``timeout`` seconds gets 408; a body that is not JSON gets 415.

    The body is read here in full (the routes read it in full anyway) so that a chunked upload
    without Content-Length is cut off at the limit instead of filling memory, and so that a client
    trickling its body (slowloris) holds a connection for ``timeout`` seconds at most.
    """

    def __init__(self, app: ASGIApp, limit: int, timeout: float = 30.0) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def _read(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once an answer was sent (or the client went away)."""
        too_big = f"request body larger than {self.limit} bytes (the server's --max-body-bytes)"
        close = [(b"connection", b"close")]
        chunks, size = [], 0
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except asyncio.TimeoutError:
                slow = f"request body not received within {self.timeout:g} s (the server's --body-timeout)"
                await _reply(send, 408, slow, close)
                return None
            if message["type"] != "http.request":
                return None  # the client went away before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                if message.get("more_body", False):
                    await _drain(receive, deadline, DRAIN_BYTES)
                await _reply(send, 413, too_big, close)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

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
            if int(length) <= self.limit + DRAIN_BYTES:  # else the client may see a reset, not the 413
                await _drain(receive, time.monotonic() + self.timeout, int(length))
            return await _reply(send, 413, too_big, [(b"connection", b"close")])
        body = await self._read(receive, send)
        if body is None:
            return
        kind = (_header(scope, b"content-type") or b"").decode("latin-1").partition(";")[0].strip().lower()
        if (
            body
            and kind
            and kind != JSON
            and not (kind.startswith("application/") and kind.endswith("+json"))
        ):
            return await _reply(send, 415, f"Content-Type must be {JSON} (a JSON body), got {kind!r}")
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect when the client goes away

        await self.app(scope, replay, send)


def guard(
    app: ASGIApp,
    *,
    api_key: str | None,
    max_body_bytes: int,
    body_timeout: float,
    allowed_hosts: Collection[str] | None,
) -> ASGIApp:
    """``app`` behind every guard, outermost first: Host (when ``allowed_hosts`` is not None: the
    server is on loopback, or was given names), cross-site, API key, body."""
    guarded: ASGIApp = BodyLimit(app, max_body_bytes, body_timeout)
    if api_key is not None:
        guarded = ApiKey(guarded, api_key)
    guarded = SameOrigin(guarded, allowed_hosts or ())
    if allowed_hosts is not None:
        guarded = HostCheck(guarded, allowed_hosts)
    return guarded
