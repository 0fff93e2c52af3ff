"""The remote client's own HTTP: addresses, chunked answers (a proxy may send them), and what
it says when the other end is not a compsearch server."""
from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from compsearch.mapping.errors import CompsearchError
from compsearch.search.remote import _address, ask_server

DOCUMENT = {"query": {"terms": []}, "results": [], "seconds": {"encode": 0.0, "search": 0.0, "total": 0.0}}


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:8000", ("http", "127.0.0.1", 8000, "")),
    ("http://127.0.0.1:8000/", ("http", "127.0.0.1", 8000, "")),
    ("https://search.example/compsearch/", ("https", "search.example", 443, "/compsearch")),
    ("http://[::1]:9000/x", ("http", "::1", 9000, "/x")),
    ("http://[::1]", ("http", "::1", 80, "")),
])
def test_addresses(url: str, expected: tuple) -> None:
    assert _address(url) == expected


@pytest.mark.parametrize("url", ["http://", "http://host:port", "http://h:1/?token=abc"])
def test_a_malformed_address_says_how_to_write_one(url: str) -> None:
    with pytest.raises(CompsearchError, match="is not a server address"):
        _address(url)


@contextmanager
def answering(reply: bytes) -> Iterator[str]:
    """A server on 127.0.0.1 that reads one request and sends ``reply`` as it is."""
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.request.recv(1 << 16)
            self.wfile.write(reply)

    with socketserver.TCPServer(("127.0.0.1", 0), Handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()


def chunked(body: bytes, size: int = 7) -> bytes:
    pieces = [body[start:start + size] for start in range(0, len(body), size)]
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def test_a_chunked_answer_reads_whole() -> None:
    body = json.dumps(DOCUMENT).encode()
    with answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body)) as url:
        assert ask_server(url, id=1) == DOCUMENT


@pytest.mark.parametrize(("reply", "said"), [
    (b"SSH-2.0-OpenSSH_9.6\r\n", "did not answer as a compsearch server"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", "did not answer as a compsearch server"),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot here.", "the server answered 404: Not Found"),
    (b"HTTP/1.1 400 Bad Request\r\n\r\n" + json.dumps({"error": "no column 'x'", "hint": "see info"}).encode(),
     "the server answered 400: no column 'x' — see info"),
])
def test_what_is_not_an_answer_says_so(reply: bytes, said: str) -> None:
    with answering(reply) as url, pytest.raises(CompsearchError) as raised:
        ask_server(url, id=1)
    assert said in str(raised.value)
