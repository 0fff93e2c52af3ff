"""Listening: a socket bound before the app starts (so ``--port 0`` can say which port it
got), and uvicorn serving the app on it until interrupted."""
from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI

from compsearch.mapping.errors import CompsearchError


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
        uvicorn.Server(uvicorn.Config(app, log_level=log_level)).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down cleanly, then re-raises Ctrl-C: that is the way out
        pass
