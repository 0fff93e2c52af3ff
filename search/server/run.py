"""Listening: a socket bound before the app starts (so ``--port 0`` can say which port it
got), and uvicorn serving the app on it until interrupted, with timeouts that keep a slow or
silent client from holding a connection for ever."""
from __future__ import annotations

import asyncio
import functools
import logging
import re
import socket

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from compsearch.mapping.errors import CompsearchError

HEADER_TIMEOUT_S = 10.0  # from connecting (or the last response) to a request's complete headers
KEEP_ALIVE_TIMEOUT_S = 5.0  # an idle kept-alive connection
MAX_HEADER_BYTES = 16 << 10  # h11's limit on an incomplete request head


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, which times out only idle kept-alive connections, plus a
    deadline for the request head: a client that connects and sends nothing, or a partial
    request line or headers (slowloris), is disconnected after ``header_timeout`` seconds."""

    def __init__(self, *args, header_timeout: float = HEADER_TIMEOUT_S, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.header_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self.header_deadline = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _head_too_slow(self) -> None:
        self.header_deadline = None
        if self.conn.their_state in (h11.IDLE, h11.ERROR) and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is complete: the app has the request
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class HideToken(logging.Filter):
    """Keeps the token out of uvicorn's access log: the page is opened once as ``/?token=…``,
    and a log line must not carry it to wherever logs go."""

    pattern = re.compile(r"(?<=token=)[^&\s]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.pattern.sub("…", value) if isinstance(value, str) else value
                                for value in record.args)
        return True


def server_config(app: FastAPI, log_level: str = "info", header_timeout: float = HEADER_TIMEOUT_S,
                  keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT_S) -> uvicorn.Config:
    """How ``app`` is served: the header deadline above, uvicorn's keep-alive timeout, h11's
    limit on the size of a request head, and no token in the access log."""
    config = uvicorn.Config(app, log_level=log_level, http=functools.partial(HeaderTimeoutProtocol,
                                                                             header_timeout=header_timeout),
                            timeout_keep_alive=keep_alive_timeout, h11_max_incomplete_event_size=MAX_HEADER_BYTES)
    access_log = logging.getLogger("uvicorn.access")  # configured by Config() just above
    if not any(isinstance(existing, HideToken) for existing in access_log.filters):
        access_log.addFilter(HideToken())
    return config


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port`` (port 0: any free one)."""
    try:
        address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(address[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address[4])
    except OSError as error:
        raise CompsearchError(f"cannot listen on {host}:{port} ({error})",
                              "pick another --port (0: any free one) or --host") from error
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(app: FastAPI, sock: socket.socket, log_level: str = "info") -> None:
    """Serve ``app`` on ``sock`` until Ctrl-C (or SIGTERM)."""
    try:
        uvicorn.Server(server_config(app, log_level)).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down cleanly, then re-raises Ctrl-C: that is the way out
        pass
