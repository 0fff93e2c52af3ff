"""The HTTP API: translates requests into the search layer's calls and its results into JSON.

No logic of its own beyond the translation: queries go to :meth:`SearchIndex.search`,
files come from :class:`~search.server.files.CollectionFiles`, thumbnails from
:class:`~search.server.thumbnails.ThumbnailCache`.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import PIL.Image
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.images import decode_image
from compsearch.search import SearchIndex, Term
from compsearch.search.browse import DEFAULT_ORDER, browse
from compsearch.search.errors import QueryError
from compsearch.search.explain import explain_match
from compsearch.search.query import check_threshold
from compsearch.search.server.files import CollectionFiles, ImageNotServedError, parse_id
from compsearch.search.server.paths import shown_path, without_paths
from compsearch.search.server.thumbnails import ThumbnailCache

MAX_TEXT_CHARS = 1000  # CLIP reads 77 tokens; longer texts are a mistake or an attack
MAX_TERMS = 16
IMMUTABLE = "private, max-age=31536000, immutable"
REVALIDATE = "private, no-cache"
VERSION_CHARS = 16  # of the sha256 in a file URL's ?v=, which makes the URL change with the file
Body = TypeVar("Body", bound=BaseModel)


class UnsupportedContentError(CompsearchError):
    """A search request that is neither JSON nor a multipart upload (415)."""


class QueriesUnavailableError(CompsearchError):
    """A query of a kind (image, text) whose model this server could not load (503)."""


@dataclass
class ServerState:
    """What every request reads; built by :func:`search.server.app.create_app`, again each time
    the index changes (:mod:`search.server.follow`)."""

    index: SearchIndex
    files: CollectionFiles
    thumbnails: ThumbnailCache
    info: dict[str, Any]
    max_upload_bytes: int
    max_pixels: int
    unavailable: dict[str, str]  # query kind ("image", "text") → why its model did not load
    show_paths: bool  # absolute server paths in results, else relative to the collection root

    def require(self, kind: str, what: str | None = None) -> None:
        """Refuse a query of ``kind`` (or ``what`` needs its model) whose model is not loaded, saying why."""
        if kind in self.unavailable:
            raise QueriesUnavailableError(f"{what or kind + ' queries'} unavailable on this server: "
                                          f"{self.unavailable[kind]}",
                                          "query by id here, or restart the server with the model's weights")

    def shown(self, payload: dict[str, Any], request: Request) -> dict[str, Any]:
        """A results payload as clients see it: each result's path (relative unless
        ``show_paths``) and its file URLs."""
        for result in payload["results"]:
            if not self.show_paths:
                result["path"] = shown_path(result["path"], self.files.roots)
            result.update(file_urls(request, self, result["id"]))
        return payload


def state(request: Request) -> ServerState:
    return request.app.state.compsearch.current()


class TermBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    property: str | None = None
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    id: int | None = None
    weight: float = 1.0


class SearchBody(BaseModel):
    """A query: one of ``text`` / ``id`` (or an uploaded ``image``), or ``terms`` to combine."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    id: int | None = None
    property: str | None = None
    k: int = 20
    offset: int = 0
    where: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    threshold: float | None = None
    terms: list[TermBody] | None = Field(None, max_length=MAX_TERMS)


class ExplainBody(BaseModel):
    """Why result ``id`` matched a query on ``property``: the query is ``text``, ``query_id``
    (an indexed image) or an uploaded ``image`` (multipart)."""

    model_config = ConfigDict(extra="forbid")
    id: int
    property: str | None = None
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    query_id: int | None = None


router = APIRouter()

_SEARCH_SCHEMA = SearchBody.model_json_schema(ref_template="#/components/schemas/{model}")
# For the OpenAPI document's components (the search and explain endpoints read their bodies
# themselves, so FastAPI does not collect these on its own).
SCHEMAS = {**_SEARCH_SCHEMA.pop("$defs", {}), "SearchBody": _SEARCH_SCHEMA,
           "ExplainBody": ExplainBody.model_json_schema(ref_template="#/components/schemas/{model}")}


def _request_body(schema: str, form_fields: dict[str, str]) -> dict[str, Any]:
    """A JSON body of ``schema``, or a multipart form: the ``image`` file and ``form_fields``."""
    return {"content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {"image": {"type": "string", "format": "binary"},
                           **{name: {"type": kind} for name, kind in form_fields.items()}},
        }},
    }}


SEARCH_REQUEST_BODY = _request_body("SearchBody", {"property": "string", "k": "integer", "offset": "integer",
                                                   "where": "string", "threshold": "number"})
EXPLAIN_REQUEST_BODY = _request_body("ExplainBody", {"id": "integer", "property": "string"})


@router.get("/api/health")
def health(server: ServerState = Depends(state)) -> dict[str, Any]:
    """Whether the server answers, and which kinds of query it can: id queries always, text
    and image queries when their models loaded (``unavailable`` says why not)."""
    return {"status": "ok", "images": server.info["images"], "properties": server.index.properties,
            "text_queries": server.index.has_text and "text" not in server.unavailable,
            "image_queries": "image" not in server.unavailable, "unavailable": server.unavailable,
            "max_upload_bytes": server.max_upload_bytes, "max_pixels": server.max_pixels}


@router.get("/api/info")
def info(server: ServerState = Depends(state)) -> dict[str, Any]:
    """The index's report (paths relative unless ``show_paths``); its ``columns`` are what
    ``where`` and ``order`` may name, with their Arrow types."""
    return server.info if server.show_paths else without_paths(server.info, server.files.roots)


async def _query(request: Request, body: type[Body]) -> tuple[Body, bytes | None]:
    """The ``body`` of a JSON request, or of a multipart form with an ``image`` file field."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type == "application/json":
        return body.model_validate_json(await request.body()), None
    if content_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise CompsearchError("a multipart search needs the reference image in a file field `image`",
                                      "send the image as `image`, with `property` and `k` as other fields")
            fields = {name: value for name, value in form.items() if name != "image"}
            return body.model_validate(fields), await upload.read()
    raise UnsupportedContentError(f"a search request of type {content_type or 'unknown'!r}",
                                  "send JSON (application/json) or a multipart/form-data upload")


def _search(server: ServerState, query: SearchBody, upload: bytes | None) -> dict[str, Any]:
    """The search layer's answer; an upload byte-identical to indexed files is said to be
    them (``identical``: their ids) and left out of its own results."""
    if query.text is not None or any(term.text is not None for term in query.terms or []):
        server.require("text")
    where, identical = query.where, []
    if upload is not None:
        server.require("image")
        identical = server.index.rows.ids_with_sha256(hashlib.sha256(upload).hexdigest())
        if identical:
            others = f"id not in ({', '.join(map(str, identical))})"
            where = others if where is None else f"{others} and ({where})"
    terms = [Term(term.property, text=term.text, id=term.id, weight=term.weight) for term in query.terms] \
        if query.terms is not None else None
    check_threshold(query.threshold)  # before the image is decoded: a bad query costs nothing
    image = None if upload is None else decode_image(upload, "the uploaded image", server.max_pixels)
    payload = server.index.search(text=query.text, image=image, id=query.id, property=query.property, k=query.k,
                                  threshold=query.threshold, terms=terms, offset=query.offset, where=where).to_json()
    payload["query"]["where"] = query.where
    payload["identical"] = identical
    return payload


def file_urls(request: Request, server: ServerState, image_id: int) -> dict[str, str | None]:
    """The result's image and thumbnail URLs; None for a file the server will not send (one
    outside the collection), which the page shows as such."""
    try:
        version = server.files.sha256(image_id)[:VERSION_CHARS]
    except ImageNotServedError:
        return {"image_url": None, "thumbnail_url": None}
    root = request.scope.get("root_path", "")
    return {"image_url": f"{root}/api/images/{image_id}?v={version}",
            "thumbnail_url": f"{root}/api/thumbnails/{image_id}?v={version}"}


@router.post("/api/search", openapi_extra={"requestBody": SEARCH_REQUEST_BODY})
async def search(request: Request, server: ServerState = Depends(state)) -> dict[str, Any]:
    """Results as :meth:`SearchResults.to_json` gives them, each with its image's URLs."""
    query, upload = await _query(request, SearchBody)
    return server.shown(await run_in_threadpool(_search, server, query, upload), request)


def _explain(server: ServerState, body: ExplainBody, upload: bytes | None) -> dict[str, Any]:
    given = [body.text is not None, body.query_id is not None, upload is not None]
    if sum(given) != 1:
        raise QueryError("an explanation needs exactly one query: text, query_id or an uploaded image",
                         "send the query the result came from, with the result's `id`")
    server.require("image", "heatmaps need the image model, which is")
    if body.text is not None:
        server.require("text")

    def read(image_id: int) -> PIL.Image.Image:
        return decode_image(server.files.read(image_id).data, f"image {image_id}", server.max_pixels)

    query_image = None if body.text is not None else (
        decode_image(upload, "the uploaded image", server.max_pixels) if upload is not None else read(body.query_id))
    term = Term(body.property, text=body.text, image=query_image if upload is not None else None,
                id=body.query_id)
    return explain_match(server.index, body.property, body.id, read(body.id), term, query_image)


@router.post("/api/explain", openapi_extra={"requestBody": EXPLAIN_REQUEST_BODY})
async def explain(request: Request, server: ServerState = Depends(state)) -> dict[str, Any]:
    """Why result ``id`` matched: the token heatmaps of the property's components for the
    result (along the query's vector) and for the query image (along the result's vector),
    as grids and PNG overlays (base64)."""
    body, upload = await _query(request, ExplainBody)
    return await run_in_threadpool(_explain, server, body, upload)


@router.get("/api/browse")
def browse_collection(request: Request, offset: int = 0, limit: int = 60, where: str | None = None,
                      order: str = DEFAULT_ORDER, server: ServerState = Depends(state)) -> dict[str, Any]:
    """The collection a page at a time, without a query: the rows ``where`` keeps, ordered
    by a column (``-column``: descending) then id; results as a search's, without scores."""
    if where is not None and len(where) > MAX_TEXT_CHARS:
        raise QueryError(f"the filter is longer than {MAX_TEXT_CHARS} characters", "shorten it")
    return server.shown(browse(server.index.rows, limit, offset, where, order).to_json(), request)


def _etag_matches(request: Request, etag: str) -> bool:
    candidates = (tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(","))
    return any(tag in (etag, "*") for tag in candidates)


def _cached(request: Request, sha256: str, etag: str, make: Callable[[], Response]) -> Response:
    """304 when the client holds ``etag``, else ``make()``; cached for good when the URL
    names the content (``?v=``), else revalidated each time."""
    versioned = request.query_params.get("v") == sha256[:VERSION_CHARS]
    headers = {"etag": etag, "cache-control": IMMUTABLE if versioned else REVALIDATE}
    if _etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    response = make()
    response.headers.update(headers)
    return response


@router.get("/api/images/{image_id}")
def image(image_id: str, request: Request, server: ServerState = Depends(state)) -> Response:
    """The indexed file itself (its bytes verified against the index's sha256)."""
    found = server.files.read(parse_id(image_id))
    return _cached(request, found.sha256, f'"{found.sha256}"',
                   lambda: Response(found.data, media_type=found.media_type))


@router.get("/api/thumbnails/{image_id}")
def thumbnail(image_id: str, request: Request, server: ServerState = Depends(state)) -> Response:
    """A JPEG of at most the cache's size on each side, made on first request."""
    number = parse_id(image_id)
    sha256 = server.files.sha256(number)
    etag = f'"{sha256}-{server.thumbnails.size}"'
    return _cached(request, sha256, etag, lambda: FileResponse(
        server.thumbnails.get(sha256, lambda: server.files.read(number).data), media_type="image/jpeg"))
