"""``compsearch search http://HOST:PORT …``: the same query asked of a running ``compsearch
serve``, whose models and indexes are already loaded — the fast path from a shell.

Standard library only (urllib): the command imports no model library, no FAISS and no HTTP
client for this. The answer is the one result schema (:mod:`search.results`), so every
``--format`` prints it as for a local index.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from compsearch.mapping.errors import CompsearchError
from compsearch.search.query import Term
from compsearch.search.results import Result, SearchResults

RESULT_FIELDS = ("rank", "id", "key", "path", "score", "scores", "metadata")
TIMEOUT_S = 60.0


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _body(fields: dict[str, Any], image: Path | None) -> tuple[bytes, str]:
    """JSON, or a multipart form carrying the reference image file as ``image``."""
    if image is None:
        return json.dumps(fields).encode(), "application/json"
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items() if value is not None]
    try:
        data = image.read_bytes()
    except OSError as error:
        raise CompsearchError(f"cannot read the reference image {image} ({error.strerror})",
                              "give the path of an image file") from None
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{image.name}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def search_remote(url: str, *, text: str | None = None, image: Path | None = None, id: int | None = None,
                  property: str | None = None, weight: float = 1.0, terms: list[Term] | None = None, k: int = 20,
                  offset: int = 0,
                  where: str | None = None, threshold: float | None = None, token: str | None = None) -> SearchResults:
    """Ask the server at ``url`` (as ``compsearch serve`` printed it) one query."""
    if any(term.kind == "image" for term in terms or []):
        raise CompsearchError("a server takes reference images only as the main --image",
                              "give image terms to a local index, or use ids of indexed images (PROPERTY:id:N)")
    fields: dict[str, Any] = {"text": text, "id": id, "property": property, "k": k, "offset": offset, "where": where,
                              "threshold": threshold}
    if terms or weight != 1.0:
        if image is not None:
            raise CompsearchError("a server combines terms given as text or ids, not with an uploaded image",
                                  "query a local index for that combination")
        main = [] if text is None and id is None else [Term(property, text=text, id=id, weight=weight)]
        terms = terms or []
        fields = {"k": k, "offset": offset, "where": where, "threshold": threshold,
                  "terms": [{"property": t.property_name, "text": t.text, "id": t.id, "weight": t.weight}
                            for t in main + terms]}
    import urllib.error
    import urllib.request  # here: a query of a local index never loads it

    fields = {name: value for name, value in fields.items() if value is not None}
    body, content_type = _body(fields, image)
    request = urllib.request.Request(url.rstrip("/") + "/api/search", data=body, method="POST",
                                     headers={"content-type": content_type,
                                              **({"authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            said = json.loads(error.read())
        except ValueError:
            said = {}
        raise CompsearchError(f"the server answered {error.code}: {said.get('error') or error.reason}",
                              said.get("hint") or "check the query") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise CompsearchError(f"cannot reach {url} ({reason})",
                              "start `compsearch serve INDEX_DIR` there, or check the address and port") from None
    results = [Result(**{name: result[name] for name in RESULT_FIELDS}) for result in answer["results"]]
    return SearchResults(query=answer["query"], results=results, seconds=answer["seconds"])
