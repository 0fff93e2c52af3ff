"""``create_app``: the ASGI app that serves one index directory (API + web page).

Everything slow happens here, once, before the first request: the index opens, its models
load, the file table is read. Requests then only read shared state, from as many threads as
the server runs (the search layer is thread-safe) — until the indexer changes the directory:
then it is opened anew once, with the same models (:mod:`.follow`).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from compsearch import search
from compsearch.indexer.build import compsearch_version
from compsearch.mapping.errors import CompsearchError, ImageReadError, warn
from compsearch.search.errors import UnknownImageError
from compsearch.search.server.files import CollectionFiles, ImageNotServedError, collection_roots, count_outside
from compsearch.search.server.follow import FollowedIndex
from compsearch.search.server.guards import (
    LOOPBACK_NAMES,
    BodyLimit,
    HostCheck,
    SecurityHeaders,
    TokenAuth,
    UploadTooLargeError,
    error_response,
)
from compsearch.search import SearchIndex
from compsearch.search.server.routes import (
    SCHEMAS,
    QueriesUnavailableError,
    ServerState,
    UnsupportedContentError,
    router,
)
from compsearch.search.server.thumbnails import DEFAULT_SIZE, ThumbnailCache

DEFAULT_MAX_UPLOAD_BYTES = 20 << 20
DEFAULT_MAX_PIXELS = 50_000_000  # a 50-megapixel photo decodes to 150 MB of RGB
STATIC = resources.files("compsearch.search.server") / "static"
# The first class an error is an instance of decides its status.
ERROR_STATUS: tuple[tuple[type[CompsearchError], int], ...] = (
    (UploadTooLargeError, 413),
    (ImageNotServedError, 404),
    (UnknownImageError, 404),
    (UnsupportedContentError, 415),
    (QueriesUnavailableError, 503),
    (ImageReadError, 422),
    (CompsearchError, 400),
)
log = logging.getLogger("compsearch.server")


def _validation_problem(errors: Sequence[dict]) -> str:
    """Pydantic's errors as one line: ``k: Input should be a valid integer; …``."""
    parts = []
    for error in errors[:5]:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{location}: {error['msg']}" if location else error["msg"])
    return "; ".join(parts)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CompsearchError)
    async def compsearch_error(request: Request, error: CompsearchError) -> JSONResponse:
        status = next(code for kind, code in ERROR_STATUS if isinstance(error, kind))
        return error_response(status, error.problem, error.hint)

    @app.exception_handler(RequestValidationError)
    @app.exception_handler(ValidationError)
    async def invalid_request(request: Request, error: RequestValidationError | ValidationError) -> JSONResponse:
        return error_response(422, f"invalid request: {_validation_problem(error.errors())}",
                              "search: text | id | terms, property, k, offset, where, threshold; explain: id, "
                              "property, text | query_id (see /api/openapi.json)")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), None, error.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, error: ClientDisconnect) -> Response:
        # Not the server's fault, and nobody is left to answer: one quiet line.
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error", "the server's log has the details")


def _with_search_schemas(app: FastAPI) -> None:
    """The OpenAPI document, with the schemas the search endpoint's body refers to."""
    def openapi() -> dict:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            document.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMAS)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi


def load_models(index: SearchIndex) -> dict[str, str]:
    """Load the index's models now; what fails to load (a weights file gone) leaves only its
    kind of query unavailable: ``{"image" | "text": why}``. Id queries need no model."""
    unavailable = {}
    if index.has_text:
        try:
            index.text_model  # noqa: B018 - loads
        except CompsearchError as error:
            unavailable["text"] = error.problem
    try:
        index.encoder  # noqa: B018 - loads
    except CompsearchError as error:
        unavailable["image"] = error.problem
    for kind, problem in unavailable.items():
        log.warning("%s queries are unavailable: %s", kind, problem)
    return unavailable


def create_app(
    index_dir: str | Path,
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    roots: Sequence[str | Path] | None = None,
    cache_dir: str | Path | None = None,
    allowed_hosts: Sequence[str] | None = LOOPBACK_NAMES,
    device: str = "cpu",
    thumbnail_size: int = DEFAULT_SIZE,
    show_paths: bool = False,
) -> FastAPI:
    """The app serving ``index_dir``.

    ``token``: required on every request when set. ``roots``: the folders files may be
    served from (default: the collection folders the manifest records, see
    :mod:`search.server.files`). ``cache_dir``: where thumbnails go (default
    ``$COMPSEARCH_CACHE/thumbnails``). ``allowed_hosts``: the host names requests may be
    addressed to (None: any, for a server bound to a public address). ``show_paths``: give
    clients the files' absolute paths (default: relative to their collection root).
    """
    thumbnails = ThumbnailCache(cache_dir, thumbnail_size)

    def serve(previous: SearchIndex | None) -> tuple[SearchIndex, ServerState]:
        """The index opened (anew, sharing ``previous``'s models, once it has changed) and what
        requests read of it."""
        index = search.open_index(index_dir, device=device) if previous is None else previous.reopened()
        index.warm(models=False)
        unavailable = load_models(index)
        served_roots = collection_roots(index_dir, roots)
        refused = count_outside(index_dir, served_roots)
        if refused:
            warn(f"{refused} indexed file(s) lie outside the collection folder(s) "
                 f"({', '.join(map(str, served_roots)) or 'the index records none'}) and will not be served",
                 "pass their folder with --root to serve them")
        files = CollectionFiles(index.record, served_roots)
        return index, ServerState(index, files, thumbnails, index.info(), max_upload_bytes, max_pixels, unavailable,
                                  show_paths)

    followed = FollowedIndex(Path(index_dir), serve)
    app = FastAPI(title="compsearch", version=compsearch_version(), docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json")  # no /docs: the Swagger page loads from a CDN
    app.state.compsearch = followed
    app.include_router(router)
    _with_search_schemas(app)
    _add_error_handlers(app)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    # Outermost last: headers on every answer, then the host, the token, the body size.
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes + (64 << 10))  # + multipart's headers and fields
    if token:
        app.add_middleware(TokenAuth, token=token)
    if allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed_hosts=allowed_hosts)
    app.add_middleware(SecurityHeaders)
    return app
