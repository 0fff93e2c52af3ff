"""ASGI middleware that stands between the network and the app: host check, token, body size,
security headers. Plain ASGI (not BaseHTTPMiddleware) so a refused request is answered
before its body is read, and an oversized body is cut off while it streams in."""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from compsearch.mapping.errors import CompsearchError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
TOKEN_COOKIE = "compsearch_token"
# An oversized body up to this many times the limit is read to its end before the 413 (see BodyLimit),
# for at most this long.
DRAIN_FACTOR = 4
DRAIN_SECONDS = 10.0
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",  # an image is never sniffed into HTML or script
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    # The page loads nothing from elsewhere; blob: for the preview of a picked reference image.
    "content-security-policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
}


class UploadTooLargeError(CompsearchError):
    """A request body over the server's limit (413)."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header: ``127.0.0.1:8000`` → ``127.0.0.1``, ``[::1]:80`` → ``::1``."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.partition(":")[0].lower()


def error_response(status: int, problem: str, hint: str | None, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape of the API: what went wrong, and what to do about it."""
    return JSONResponse({"error": problem, "hint": hint}, status, headers)


class HostCheck:
    """Answers only requests addressed to an allowed host name. A server bound to 127.0.0.1
    accepts only loopback names, so a web page that rebinds its own DNS name to 127.0.0.1
    (DNS rebinding) cannot read the collection through the visitor's browser."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.allowed = {name.lower().strip("[]") for name in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = host_name(Request(scope).headers.get("host", ""))
            if host not in self.allowed:
                response = error_response(400, f"this server does not answer requests for host {host!r}",
                                  f"address it as {' or '.join(sorted(self.allowed))}")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class TokenAuth:
    """Every request needs the token: ``Authorization: Bearer TOKEN``, or the cookie that
    opening ``/?token=TOKEN`` sets (an ``<img>`` cannot send a header). The cookie is
    HttpOnly and SameSite=Strict, so other sites can neither read it nor ride on it."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def _valid(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        bearer = credentials.strip() if scheme.lower() == "bearer" else None
        if self._valid(bearer) or self._valid(request.cookies.get(TOKEN_COOKIE)):
            return await self.app(scope, receive, send)
        root = scope.get("root_path", "") + "/"
        response: Response
        if scope["path"] == "/" and self._valid(request.query_params.get("token")):
            response = RedirectResponse(root, 303)  # drop the token from the address bar and history
            response.set_cookie(TOKEN_COOKIE, self.token.decode(), httponly=True, samesite="strict", path=root)
        elif scope["path"] == "/":
            response = HTMLResponse("<!doctype html><title>compsearch</title><p>This compsearch server needs its "
                                    "token: open <code>/?token=TOKEN</code> with the token it was started with.</p>",
                                    401)
        else:
            response = error_response(401, "missing or wrong token", "send the header `Authorization: Bearer TOKEN`",
                              {"www-authenticate": "Bearer"})
        await response(scope, receive, send)


class BodyLimit:
    """Refuses a request body over ``max_bytes`` (413): at once from its Content-Length, or,
    sent without one, as soon as the bytes received pass the limit (the endpoint reading it
    gets :class:`UploadTooLargeError`).

    Before refusing, the rest of a body up to :data:`DRAIN_FACTOR` times the limit is read and
    dropped (a lingering close, as nginx does): a server that closes its socket with request bytes
    still unread makes the kernel send a reset, which can destroy the 413 before the client reads
    it — one upload in ten over loopback. Larger bodies are cut off at once."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> UploadTooLargeError:
        return UploadTooLargeError(f"the request body is larger than {self.max_bytes} bytes",
                                   f"send an image of at most {self.max_bytes / (1 << 20):.0f} MB (downscale or "
                                   "re-encode it)")

    async def _drain(self, receive: Receive, received: int, more_body: bool) -> None:
        """Reads and drops the body's rest while it stays under the drain budget."""
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                while more_body and received <= self.max_bytes * DRAIN_FACTOR:
                    message = await receive()
                    received += len(message.get("body", b""))
                    more_body = message["type"] == "http.request" and message.get("more_body", False)
        except TimeoutError:
            pass  # a slow sender is cut off

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = Request(scope).headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:  # the server parses it
            if int(length) <= self.max_bytes * DRAIN_FACTOR:
                await self._drain(receive, 0, True)
            error = self._too_large()
            response = error_response(413, error.problem, error.hint, {"connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                await self._drain(receive, received, message.get("more_body", False))
                raise self._too_large()
            return message

        await self.app(scope, limited, send)


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + self.headers
            await send(message)

        await self.app(scope, receive, with_headers)
