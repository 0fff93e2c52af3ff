"""``compsearch search http://HOST:PORT …``: the same query asked of a running ``compsearch
serve``, whose models and indexes are already loaded — the fast path from a shell.

The answer is the one result document (:meth:`SearchResults.to_json`). The request goes over
a plain socket (HTTP/1.1, one request per connection, ``ssl`` only for https): urllib and
http.client take ~20 ms to import (they pull in the email package), more than the query
itself, and this path is held to 50 ms from the shell. Nothing here imports ``typing``,
``pathlib`` or ``dataclasses`` for the same reason."""
from __future__ import annotations

import json
import os
import socket

from compsearch.mapping.errors import CompsearchError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from compsearch.search.query import Term
    from compsearch.search.results import SearchResults
    from compsearch.search.term_syntax import TermParts

TIMEOUT_S = 60.0
TRY_AGAIN = "start `compsearch serve INDEX_DIR` there, or check the address and port"


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _body(fields: dict, image: str | None) -> tuple[bytes, str]:
    """JSON, or a multipart form carrying the reference image file as ``image``."""
    if image is None:
        return json.dumps(fields).encode(), "application/json"
    boundary = os.urandom(16).hex()
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    try:
        with open(image, "rb") as file:
            data = file.read()
    except OSError as error:
        raise CompsearchError(f"cannot read the reference image {image} ({error.strerror})",
                              "give the path of an image file") from None
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                 f'filename="{os.path.basename(image)}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
                 + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _address(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path prefix)`` of ``http[s]://HOST[:PORT][/PREFIX]``."""
    scheme, _, rest = url.partition("://")
    authority, _, prefix = rest.partition("/")
    host, _, port = authority.rpartition(":") if not authority.endswith("]") else (authority, "", "")
    if not host or not port:  # no port given (or a bare [IPv6] address)
        host, port = authority, ("443" if scheme == "https" else "80")
    host = host.strip("[]")
    if not host or not port.isdigit() or "?" in prefix:
        raise CompsearchError(f"{url} is not a server address", "give it as http://HOST:PORT, as `compsearch serve` "
                              "printed it (the token goes in --token or COMPSEARCH_TOKEN)")
    return scheme, host, int(port), ("/" + prefix).rstrip("/")


def _unchunk(payload: bytes) -> bytes:
    """A ``Transfer-Encoding: chunked`` body (a proxy in front of the server may send one)."""
    body, position = [], 0
    while True:
        end = payload.index(b"\r\n", position)
        size = int(payload[position:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(body)
        body.append(payload[end + 2:end + 2 + size])
        position = end + 2 + size + 2


def _post(url: str, target: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
    """POST ``body`` to ``target`` under ``url``: the status, its reason and the response body."""
    scheme, host, port, prefix = _address(url)
    authority = f"[{host}]" if ":" in host else host
    lines = [f"POST {prefix}{target} HTTP/1.1", f"Host: {authority}:{port}", "Connection: close",
             f"Content-Length: {len(body)}", *(f"{name}: {value}" for name, value in headers.items())]
    try:
        connection = socket.create_connection((host, port), timeout=TIMEOUT_S)
        if scheme == "https":
            import ssl  # here: a plain-http query never loads it

            connection = ssl.create_default_context().wrap_socket(connection, server_hostname=host)
        with connection:
            connection.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
            reply = b"".join(iter(lambda: connection.recv(1 << 16), b""))
    except OSError as error:
        raise CompsearchError(f"cannot reach {url} ({error.strerror or error})", TRY_AGAIN) from None
    head, _, payload = reply.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    try:
        _, status, reason = (status_line.split(" ", 2) + [""])[:3]
        fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
        if fields.get("transfer-encoding", "").lower() == "chunked":
            payload = _unchunk(payload)
        return int(status), reason, payload
    except ValueError:
        raise CompsearchError(f"{url} did not answer as a compsearch server", TRY_AGAIN) from None


def ask_server(url: str, *, text: str | None = None, image: str | None = None, id: int | None = None,
               property: str | None = None, weight: float = 1.0, terms: list[TermParts] | None = None, k: int = 20,
               offset: int = 0, where: str | None = None, threshold: float | None = None,
               token: str | None = None) -> dict:
    """Ask the server at ``url`` (as ``compsearch serve`` printed it) one query: the result
    document it answers. ``terms``: more terms, as :func:`.term_syntax.read_term` reads them."""
    terms = terms or []
    if any(kind == "image" for _, kind, _, _ in terms):
        raise CompsearchError("a server takes reference images only as the main --image",
                              "give image terms to a local index, or use ids of indexed images (PROPERTY:id:N)")
    fields = {"text": text, "id": id, "property": property, "k": k, "offset": offset, "where": where,
              "threshold": threshold}
    if terms or weight != 1.0:
        if image is not None:
            raise CompsearchError("a server combines terms given as text or ids, not with an uploaded image",
                                  "query a local index for that combination")
        main = ([{"property": property, "text": text, "id": id, "weight": weight}]
                if text is not None or id is not None else [])
        fields = {"k": k, "offset": offset, "where": where, "threshold": threshold,
                  "terms": main + [{"property": name, kind: value, "weight": weight}
                                   for name, kind, value, weight in terms]}
    body, content_type = _body({name: value for name, value in fields.items() if value is not None}, image)
    status, reason, payload = _post(url, "/api/search", body, {
        "Content-Type": content_type, **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        answer = json.loads(payload)
    except ValueError:
        answer = None
    answer = answer if isinstance(answer, dict) else {}
    if status != 200:
        raise CompsearchError(f"the server answered {status}: {answer.get('error') or reason}",
                              answer.get("hint") or "check the query")
    if "results" not in answer:
        raise CompsearchError(f"{url} did not answer as a compsearch server", TRY_AGAIN)
    return answer


def search_remote(url: str, *, terms: list[Term] | None = None, **query: object) -> SearchResults:
    """:func:`ask_server` with :class:`~.query.Term` terms, answering :class:`SearchResults`
    (the Python API's shapes)."""
    from compsearch.search.results import SearchResults

    return SearchResults.from_json(ask_server(url, terms=[term.parts for term in terms or []], **query))
