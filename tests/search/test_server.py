"""The HTTP API through a real uvicorn server on 127.0.0.1: queries, files, and the safety cases
(each asserting its status code and that the server still answers afterwards)."""
from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

from compsearch import search
from compsearch.indexer.info import index_info
from compsearch.indexer.store import IndexStore
from compsearch.mapping import models
from compsearch.mapping.errors import CompsearchError
from compsearch.indexer.world import get_split
from compsearch.indexer.world.render import render_image
from compsearch.search.cli import cli
from compsearch.search.commands.fast_argv import parse
from compsearch.search.commands.search_options import SEARCH_OPTIONS
from compsearch.search.server.app import create_app
from compsearch.search.server.files import CollectionFiles, ImageNotServedError, collection_roots, count_outside
from compsearch.search.server.guards import is_loopback
from compsearch.search.server.paths import without_paths
from tests.search.conftest import ESCAPE_KEY, IMAGES, ServedIndex, running
from tests.test_cli import run_cli

THUMBNAIL_SIZE = 32
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("thumbnails")


@pytest.fixture(scope="module")
def base_url(served_index: ServedIndex, cache_dir: Path) -> Iterator[str]:
    with running(create_app(served_index.folder, cache_dir=cache_dir, thumbnail_size=THUMBNAIL_SIZE)) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def rows(served_index: ServedIndex) -> dict[str, dict]:
    """key → stored row (id, path, sha256, …)."""
    table = IndexStore(served_index.folder).read_table()
    return {row["key"]: row for row in table.to_pylist()}


@pytest.fixture(scope="module")
def library(served_index: ServedIndex) -> search.SearchIndex:
    """The search layer itself, for what the server must only translate."""
    return search.open_index(served_index.folder)


def still_serving(client: httpx.Client) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def raw_get(base_url: str, target: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A GET with ``target`` sent byte for byte (httpx would normalise ``..`` away)."""
    address = urlsplit(base_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.putrequest("GET", target, skip_host=headers is not None and "Host" in headers)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` × ``height`` pixels but holds one row: a decompression
    bomb's header, a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
            + chunk(b"IEND", b""))


def truncated_png() -> bytes:
    encoded = io.BytesIO()
    PIL.Image.effect_noise((64, 64), 60).save(encoded, "PNG")
    return encoded.getvalue()[: len(encoded.getvalue()) // 2]


# -- what the API answers ----------------------------------------------------------------------

def test_health_and_info(client: httpx.Client, served_index: ServedIndex) -> None:
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["images"] == IMAGES + 1  # the renders + the escape symlink
    assert health["properties"] == ["full", "colour", "shape"] and health["text_queries"] is True
    assert health["image_queries"] is True and health["unavailable"] == {}
    info = client.get("/api/info").json()
    columns = info["columns"]
    assert {"id", "key", "path", "sha256", "width", "height"} <= set(columns) and columns["width"].startswith("int")
    assert info == json.loads(json.dumps(without_paths(index_info(served_index.folder), [served_index.collection.resolve()])))
    document = client.get("/api/openapi.json").json()
    assert document["paths"]["/api/search"]["post"]["requestBody"]["content"].keys() \
        == {"application/json", "multipart/form-data"}
    references = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(document))
    assert "SearchBody" in references and set(references) <= set(document["components"]["schemas"])


def test_text_search_is_the_libraries_answer_with_file_urls(client: httpx.Client, library: search.SearchIndex) -> None:
    payload = client.post("/api/search", json={"text": "red", "property": "colour", "k": 8}).json()
    expected = library.search(text="red", property="colour", k=8).to_json()
    assert [r["id"] for r in payload["results"]] == [r["id"] for r in expected["results"]]
    assert [r["score"] for r in payload["results"]] == pytest.approx([r["score"] for r in expected["results"]])
    assert payload["query"] == expected["query"]
    scores = [r["score"] for r in payload["results"]]
    assert len(scores) == 8 and scores == sorted(scores, reverse=True)
    for result in payload["results"]:
        assert result["image_url"].startswith(f"/api/images/{result['id']}?v=")
        assert result["thumbnail_url"].startswith(f"/api/thumbnails/{result['id']}?v=")


def test_search_by_uploaded_image_finds_that_image_first(client: httpx.Client, served_index: ServedIndex,
                                                         rows: dict[str, dict]) -> None:
    key = "000007.png"
    copy = io.BytesIO()
    PIL.Image.open(served_index.collection / key).save(copy, "PNG", compress_level=1)  # same pixels, other bytes
    response = client.post("/api/search", files={"image": (key, copy.getvalue(), "image/png")},
                           data={"property": "full", "k": "3"})
    assert response.status_code == 200, response.text
    first = response.json()["results"][0]
    assert first["id"] == rows[key]["id"] and first["score"] == pytest.approx(1.0, abs=1e-2)
    assert response.json()["identical"] == []


def test_an_upload_identical_to_an_indexed_file_is_said_to_be_it(client: httpx.Client, served_index: ServedIndex,
                                                                 rows: dict[str, dict]) -> None:
    key = "000007.png"
    data = (served_index.collection / key).read_bytes()
    response = client.post("/api/search", files={"image": (key, data, "image/png")},
                           data={"property": "full", "k": "3", "where": "width == 64"})
    payload = response.json()
    assert response.status_code == 200 and payload["identical"] == [rows[key]["id"]]
    ids = [result["id"] for result in payload["results"]]
    assert len(ids) == 3 and rows[key]["id"] not in ids  # not its own first result
    assert payload["query"]["where"] == "width == 64"


def test_search_by_id_and_combined_terms(client: httpx.Client, library: search.SearchIndex,
                                         rows: dict[str, dict]) -> None:
    image_id = rows["000011.png"]["id"]
    results = client.post("/api/search", json={"id": image_id, "property": "shape", "k": 4}).json()["results"]
    assert results[0]["id"] == image_id and results[0]["score"] == pytest.approx(1.0, abs=1e-2)
    terms = [{"property": "colour", "text": "blue"}, {"property": "shape", "id": image_id, "weight": 0.5}]
    payload = client.post("/api/search", json={"terms": terms, "k": 5}).json()
    expected = library.search(terms=[search.Term("colour", text="blue"), search.Term("shape", id=image_id, weight=0.5)],
                              k=5).to_json()
    assert [r["id"] for r in payload["results"]] == [r["id"] for r in expected["results"]]


def test_filtered_and_paged_search_is_the_libraries_answer(client: httpx.Client, library: search.SearchIndex) -> None:
    where = "key < '000020.png' and width == 64"
    payload = client.post("/api/search", json={"text": "red", "property": "colour", "k": 5, "offset": 3,
                                               "where": where}).json()
    expected = library.search(text="red", property="colour", k=5, offset=3, where=where).to_json()
    assert [r["id"] for r in payload["results"]] == [r["id"] for r in expected["results"]]
    assert [r["rank"] for r in payload["results"]] == [4, 5, 6, 7, 8]
    assert all(r["key"] < "000020.png" for r in payload["results"])
    refused = client.post("/api/search", json={"text": "red", "where": "camera == 'x'"})
    assert refused.status_code == 400 and "no column 'camera'" in refused.text


def test_image_is_the_indexed_file_with_etag_and_cache_headers(client: httpx.Client, served_index: ServedIndex,
                                                               rows: dict[str, dict]) -> None:
    row = rows["000003.png"]
    versioned = client.get(f"/api/images/{row['id']}?v={row['sha256'][:16]}")
    assert versioned.status_code == 200 and versioned.content == (served_index.collection / "000003.png").read_bytes()
    assert versioned.headers["content-type"] == "image/png"
    assert versioned.headers["etag"] == f'"{row["sha256"]}"' and "immutable" in versioned.headers["cache-control"]
    assert versioned.headers["x-content-type-options"] == "nosniff"
    plain = client.get(f"/api/images/{row['id']}")
    assert plain.headers["cache-control"] == "private, no-cache"
    again = client.get(f"/api/images/{row['id']}", headers={"if-none-match": plain.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_thumbnail_is_a_small_jpeg_made_once(client: httpx.Client, rows: dict[str, dict], cache_dir: Path) -> None:
    row = rows["000005.png"]
    first = client.get(f"/api/thumbnails/{row['id']}")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    thumbnail = PIL.Image.open(io.BytesIO(first.content))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) == THUMBNAIL_SIZE  # the render is 64 px
    [cached] = cache_dir.rglob(f"{row['sha256']}.jpg")
    made = cached.stat().st_mtime_ns
    second = client.get(f"/api/thumbnails/{row['id']}")
    assert second.content == first.content and cached.stat().st_mtime_ns == made
    revalidated = client.get(f"/api/thumbnails/{row['id']}", headers={"if-none-match": first.headers["etag"]})
    assert revalidated.status_code == 304


# -- safety: files -----------------------------------------------------------------------------

TRAVERSALS = [
    "/api/images/../../../../etc/passwd",
    "/api/images/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/images/%2Fetc%2Fpasswd",
    "/api/images//etc/passwd",
    "/api/images/0/../../../etc/passwd",
    "/api/images/0%2F..%2F..%2Fmanifest.json",
    "/api/thumbnails/..%252F..%252Fetc%252Fpasswd",
    "/api/thumbnails/%2e%2e/%2e%2e/etc/passwd",
    "/api/images/-1",
    "/api/images/0x1",
    "/api/images/1e3",
    "/api/images/99999999",
    "/static/../app.py",
    "/static/..%2F..%2Fmapping%2Ferrors.py",
    "/static/%2e%2e/%2e%2e/search/server/app.py",
    "/..%2f..%2fetc%2fpasswd",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_path_traversal_in_any_form_is_404(base_url: str, client: httpx.Client, target: str) -> None:
    status, body = raw_get(base_url, target)
    assert status == 404, (target, body[:200])
    assert b"root:" not in body and b"import" not in body
    still_serving(client)


def test_symlink_out_of_the_collection_is_not_served(client: httpx.Client, rows: dict[str, dict],
                                                     served_index: ServedIndex) -> None:
    escape = rows[ESCAPE_KEY]
    assert Path(escape["path"]).resolve() == served_index.outside.resolve()  # indexed, through the link
    for kind in ("images", "thumbnails"):
        response = client.get(f"/api/{kind}/{escape['id']}")
        assert response.status_code == 404 and "private" not in response.text and "secret" not in response.text
    [found] = client.post("/api/search", json={"id": escape["id"], "k": 1}).json()["results"]
    assert found["id"] == escape["id"] and found["image_url"] is None and found["thumbnail_url"] is None
    still_serving(client)


@pytest.mark.parametrize("swap", ["symlink outside", "symlink inside", "changed bytes", "deleted"])
def test_files_swapped_after_indexing_are_not_served(client: httpx.Client, rows: dict[str, dict],
                                                     served_index: ServedIndex, tmp_path: Path, swap: str) -> None:
    key = "000020.png"
    path = served_index.collection / key
    kept = tmp_path / key
    shutil.move(path, kept)
    try:
        if swap == "symlink outside":
            path.symlink_to(served_index.outside)
        elif swap == "symlink inside":
            path.symlink_to(served_index.collection / "000021.png")
        elif swap == "changed bytes":
            path.write_bytes(kept.read_bytes()[:-20])
        response = client.get(f"/api/images/{rows[key]['id']}")
        assert response.status_code == 404 and response.json()["error"]
    finally:
        path.unlink(missing_ok=True)
        shutil.move(kept, path)
    assert client.get(f"/api/images/{rows[key]['id']}").status_code == 200  # back in place: served again
    still_serving(client)


def test_only_the_collection_roots_are_served(served_index: ServedIndex, rows: dict[str, dict],
                                              tmp_path: Path) -> None:
    record = {row["id"]: row for row in rows.values()}.__getitem__
    recorded = collection_roots(served_index.folder)
    assert recorded == [served_index.collection.resolve()]
    inside = rows["000001.png"]["id"]
    assert CollectionFiles(record, recorded).read(inside).data == (served_index.collection / "000001.png").read_bytes()
    with pytest.raises(ImageNotServedError):
        CollectionFiles(record, [tmp_path]).read(inside)  # explicit roots replace the recorded ones
    escape = rows[ESCAPE_KEY]["id"]
    assert CollectionFiles(record, collection_roots("unused", [served_index.outside.parent])).read(escape).data \
        == served_index.outside.read_bytes()


def test_without_a_recorded_root_nothing_is_served_until_one_is_given(served_index: ServedIndex,
                                                                      tmp_path: Path) -> None:
    copy = tmp_path / "index"
    shutil.copytree(served_index.folder, copy)
    store = IndexStore(copy)
    manifest = store.read_manifest()
    manifest.runs[0].source = "folder photos"  # as indexes built before sources were absolute
    store.write_manifest(manifest)
    assert collection_roots(copy) == [] and count_outside(copy, []) == IMAGES + 1
    assert collection_roots(copy, [served_index.collection]) == [served_index.collection.resolve()]
    assert count_outside(copy, [served_index.collection.resolve()]) == 1  # the escape symlink


# -- safety: requests --------------------------------------------------------------------------

BAD_SEARCHES = [
    ("malformed JSON", {"content": b'{"text": "red",', "headers": {"content-type": "application/json"}}, 422),
    ("JSON that is not an object", {"json": ["red"]}, 422),
    ("unknown property", {"json": {"text": "red", "property": "smell"}}, 400),
    ("k = 0", {"json": {"text": "red", "k": 0}}, 400),
    ("negative k", {"json": {"text": "red", "k": -5}}, 400),
    ("absurd k", {"json": {"text": "red", "k": 10**12}}, 400),
    ("k not a number", {"json": {"text": "red", "k": "many"}}, 422),
    ("empty text", {"json": {"text": ""}}, 400),
    ("blank text", {"json": {"text": "   "}}, 400),
    ("text too long", {"json": {"text": "red " * 1000}}, 422),
    ("nothing asked", {"json": {}}, 400),
    ("two queries at once", {"json": {"text": "red", "id": 1}}, 400),
    ("misspelt field", {"json": {"txt": "red"}}, 422),
    ("unknown id", {"json": {"id": 123456}}, 404),
    ("term without a value", {"json": {"terms": [{"property": "colour"}]}}, 400),
    ("plain text body", {"content": b"red", "headers": {"content-type": "text/plain"}}, 415),
    ("form without an image", {"data": {"property": "colour"}, "files": {"other": ("a.txt", b"x")}}, 400),
    ("upload that is not an image", {"files": {"image": ("a.png", b"not an image at all", "image/png")}}, 422),
    ("truncated upload", {"files": {"image": ("a.png", truncated_png(), "image/png")}}, 422),
    ("too many pixels", {"files": {"image": ("bomb.png", png_header(10_000, 10_000), "image/png")}}, 422),
    ("decompression bomb", {"files": {"image": ("bomb.png", png_header(60_000, 60_000), "image/png")}}, 422),
    ("upload over 20 MB", {"files": {"image": ("big.png", b"\0" * (21 << 20), "image/png")}}, 413),
]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case, request_arguments, status", BAD_SEARCHES, ids=[case[0] for case in BAD_SEARCHES])
def test_bad_searches_are_4xx_with_a_json_error(client: httpx.Client, case: str, request_arguments: dict,
                                                status: int) -> None:
    response = client.post("/api/search", **request_arguments)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["error"] and error["hint"], error
    still_serving(client)


def test_an_oversized_upload_is_answered_not_reset(client: httpx.Client) -> None:
    """A server closing its socket on unread request bytes makes the kernel reset the connection,
    which destroyed the 413 about once in ten uploads: every one must reach the client."""
    upload = {"image": ("big.png", b"\0" * (21 << 20), "image/png")}
    statuses = [client.post("/api/search", files=upload).status_code for _ in range(20)]
    assert statuses == [413] * 20
    still_serving(client)


def test_a_body_without_length_is_cut_off_at_the_limit(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        boundary_free = b"\0" * (1 << 20)
        yield b'{"text": "'
        for _ in range(22):
            yield boundary_free
    response = client.post("/api/search", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "bytes" in response.json()["error"]
    still_serving(client)


def test_requests_for_other_host_names_are_refused(base_url: str, client: httpx.Client) -> None:
    port = urlsplit(base_url).port
    assert raw_get(base_url, "/api/health", {"Host": f"evil.example:{port}"})[0] == 400  # DNS rebinding
    assert raw_get(base_url, "/api/health", {"Host": f"localhost:{port}"})[0] == 200
    still_serving(client)


# -- the token ---------------------------------------------------------------------------------

def test_token_is_required_on_every_api_call_and_the_page(served_index: ServedIndex, cache_dir: Path,
                                                          rows: dict[str, dict]) -> None:
    image_id = rows["000002.png"]["id"]
    with running(create_app(served_index.folder, token=TOKEN, cache_dir=cache_dir)) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        for path in ("/", "/static/app.js", "/api/health", "/api/info", f"/api/images/{image_id}",
                     f"/api/thumbnails/{image_id}", "/api/openapi.json"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"authorization": "Bearer wrong"}).status_code == 401, path
            assert client.get(path, headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200, path
        assert client.post("/api/search", json={"text": "red"}).status_code == 401
        assert client.get("/", params={"token": "wrong"}).status_code == 401
        opened = client.get("/", params={"token": TOKEN})  # the page: the cookie then carries the token
        assert opened.status_code == 303 and "httponly" in opened.headers["set-cookie"].lower()
        assert client.get(f"/api/images/{image_id}").status_code == 200  # what an <img> does


def test_models_load_once_at_start_up_not_per_request(served_index: ServedIndex, cache_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    loads = []
    load_model = models.load_model  # search/index.py imports it when a query first needs a model
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: loads.append(args) or load_model(*args, **kwargs))
    app = create_app(served_index.folder, cache_dir=cache_dir)
    at_start = len(loads)
    assert at_start >= 1
    with running(app) as url, ThreadPoolExecutor(8) as pool:
        bodies = [{"text": "red"}, {"id": 3, "property": "shape"}] * 8
        statuses = list(pool.map(lambda body: httpx.post(f"{url}api/search", json=body, timeout=60).status_code, bodies))
    assert statuses == [200] * len(bodies) and len(loads) == at_start


# -- the command -------------------------------------------------------------------------------

@pytest.mark.slow  # a fresh process imports torch and loads the models: ~20 s on two cores
def test_serve_command_listens_on_loopback_and_asks_for_the_token(served_index: ServedIndex, tmp_path: Path) -> None:
    environment = {**os.environ, "COMPSEARCH_TOKEN": TOKEN, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(
        [sys.executable, "-c", "from compsearch.search.launch import main; main()", "serve", str(served_index.folder), "--port", "0",
         "--cache-dir", str(tmp_path), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith(f"serving {served_index.folder} at http://127.0.0.1:"), process.stderr.read()
        base = line.split(" at ")[1].split()[0]
        assert TOKEN not in line
        assert httpx.get(f"{base}?token={TOKEN}", timeout=30).status_code == 303  # logged by the access log
        assert httpx.get(f"{base}api/health", timeout=30).status_code == 401
        response = httpx.get(f"{base}api/health", headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert response.status_code == 200 and response.json()["images"] == IMAGES + 1
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        output, errors = process.communicate(timeout=30)
    assert process.returncode == 0 and "Traceback" not in errors, errors
    assert "GET /?token=" in output + errors and TOKEN not in output + errors  # never printed, not even logged


def serve_without_listening(monkeypatch: pytest.MonkeyPatch, arguments: list[str], token: str | None = None):
    """``compsearch serve INDEX ARGUMENTS`` up to the point of listening (serve() replaced):
    ``(result, where it bound)``."""
    served = []
    monkeypatch.setattr("compsearch.search.server.run.serve", lambda app, sock: (served.append(sock.getsockname()), sock.close()))
    environment = {"COMPSEARCH_TOKEN": token} if token else {}
    result = CliRunner().invoke(cli, ["serve", *arguments, "--port", "0", "--device", "cpu"], env=environment)
    return result, served


def test_serve_command_refuses_a_public_host_without_a_token(served_index: ServedIndex, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    arguments = [str(served_index.folder), "--host", "0.0.0.0", "--cache-dir", str(tmp_path)]
    refused, served = serve_without_listening(monkeypatch, arguments)
    assert isinstance(refused.exception, CompsearchError) and "--no-token" in refused.exception.hint
    assert served == []  # refused before binding
    result, served = serve_without_listening(monkeypatch, [*arguments, "--no-token"])
    assert result.exit_code == 0, result.output
    assert "warning: listening on 0.0.0.0" in result.output
    assert served and served[0][0] == "0.0.0.0"  # bound, never listening: serve() was replaced
    both, _ = serve_without_listening(monkeypatch, [*arguments, "--no-token"], token=TOKEN)
    assert isinstance(both.exception, CompsearchError)


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_serve_command_never_prints_the_token(served_index: ServedIndex, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    result, served = serve_without_listening(
        monkeypatch, [str(served_index.folder), "--host", host, "--cache-dir", str(tmp_path)], token=TOKEN)
    assert result.exit_code == 0, result.output
    assert served and "?token=TOKEN" in result.output and TOKEN not in result.output


def test_loopback_names() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"]))
    assert not any(map(is_loopback, ["0.0.0.0", "192.168.1.4", "::", "example.com"]))



def test_the_command_line_asks_a_running_server(base_url: str, library: search.SearchIndex, rows: dict[str, dict],
                                                monkeypatch, capsys, tmp_path: Path) -> None:
    """`compsearch search http://HOST:PORT …` prints what the local index would (same schema)."""
    image_id = rows["000011.png"]["id"]
    reference = tmp_path / "reference.png"  # not in the collection (an identical upload is reported, not ranked)
    render_image(get_split("test").item(3), size=64).save(reference)
    cases = [
        (["--id", str(image_id), "-p", "shape", "-k", "4"], dict(id=image_id, property="shape", k=4)),
        (["--text", "red", "-p", "colour", "-k", "5", "--offset", "2", "--where", "width == 64"],
         dict(text="red", property="colour", k=5, offset=2, where="width == 64")),
        (["--text", "blue", "-p", "colour", "--and", f"0.5*shape:id:{image_id}", "-k", "3"],
         dict(terms=[search.Term("colour", text="blue"), search.Term("shape", id=image_id, weight=0.5)], k=3)),
        (["--image", str(reference), "-k", "3"], dict(image=reference, k=3)),
    ]
    for arguments, python in cases:
        code, out, err = run_cli(monkeypatch, capsys, "search", base_url, *arguments, "--format", "jsonl")
        assert code == 0, err
        expected = library.search(**python).results
        assert [json.loads(line)["id"] for line in out.splitlines()] == [r.id for r in expected], arguments
    code, out, err = run_cli(monkeypatch, capsys, "search", base_url, "--text", "red", "--where", "camera == 'x'")
    assert code == 2 and "400" in err and "no column 'camera'" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(monkeypatch, capsys, "search", "http://127.0.0.1:9", "--id", "1")
    assert code == 2 and "cannot reach http://127.0.0.1:9" in err


# What the fast path must not import: click, http.client/urllib (email), logging, dataclasses, the
# model and index libraries. Its 50 ms from the shell depend on it (benchmarks/cli_query.py).
HEAVY = ("click", "http.client", "urllib.request", "logging", "dataclasses", "numpy", "faiss", "torch", "pyarrow")
PROBE = """import sys
from compsearch.search.launch import main
sys.argv = ["compsearch", *sys.argv[1:]]
main()
print(*[name for name in {heavy!r} if name in sys.modules], file=sys.stderr)
"""


@pytest.mark.parametrize("arguments", [["--id", "{id}", "-p", "shape"],
                                       ["--text", "red", "-p", "colour", "--and", "0.5*shape:id:{id}", "--json"]],
                         ids=["id", "terms"])
def test_a_query_of_a_server_imports_no_click_and_prints_what_click_would(
        base_url: str, rows: dict[str, dict], arguments: list[str], monkeypatch, capsys) -> None:
    arguments = [word.format(id=rows["000011.png"]["id"]) for word in arguments]
    fast = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), "search", base_url, *arguments],
                          capture_output=True, text=True, timeout=60)
    assert fast.returncode == 0 and fast.stderr.strip() == "", fast.stderr  # nothing heavy was imported
    clustered = [base_url, *arguments[:2], "-p" + arguments[3], *arguments[4:]]  # -pNAME: a form left to click
    assert parse(SEARCH_OPTIONS, clustered, "index_dir") is None
    code, out, err = run_cli(monkeypatch, capsys, "search", *clustered)
    assert code == 0, err
    drop_seconds = re.compile(r'(encode|search|total)[" :]+[\d.e-]+')
    assert drop_seconds.sub("", out) == drop_seconds.sub("", fast.stdout)


def test_a_reader_that_stops_reading_ends_the_command_quietly(base_url: str) -> None:
    """`compsearch search … | head -1`: no traceback when the pipe closes early."""
    import fcntl

    read, write = os.pipe()
    fcntl.fcntl(write, 1031, 4096)  # F_SETPIPE_SZ: a small pipe, so the command blocks on it mid-answer
    command = subprocess.Popen([sys.executable, "-c", "from compsearch.search.launch import main; main()", "search",
                                base_url, "--text", "red", "-k", "40", "--format", "jsonl"],
                               stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        assert reader.readline().startswith(b"{")
    assert command.wait(timeout=60) == 1 and "Traceback" not in command.stderr.read()


# -- hardening ---------------------------------------------------------------------------------

BEYOND_INT64 = 2**63


@pytest.mark.parametrize("body", [{"id": BEYOND_INT64}, {"id": -BEYOND_INT64 - 1},
                                  {"terms": [{"property": "shape", "id": BEYOND_INT64}]}], ids=["id", "negative", "term"])
def test_an_id_beyond_int64_is_400_in_a_search(client: httpx.Client, body: dict) -> None:
    response = client.post("/api/search", json=body)
    assert response.status_code == 400 and "out of range" in response.json()["error"], response.text
    still_serving(client)


@pytest.mark.parametrize("endpoint", ["images", "thumbnails"])
def test_an_id_beyond_int64_is_400_in_a_file_url(client: httpx.Client, endpoint: str) -> None:
    assert client.get(f"/api/{endpoint}/{2**63 - 1}").status_code == 404  # the largest id: just not indexed
    response = client.get(f"/api/{endpoint}/{BEYOND_INT64}")
    assert response.status_code == 400 and "out of range" in response.json()["error"]
    still_serving(client)


NOT_FINITE = [
    ("NaN threshold", {"content": b'{"text": "red", "threshold": NaN}'}),
    ("Infinity threshold", {"content": b'{"id": 3, "threshold": -Infinity}'}),
    ("NaN weight", {"content": b'{"terms": [{"property": "colour", "text": "red", "weight": NaN}]}'}),
    ("Infinity weight", {"content": b'{"terms": [{"id": 3, "weight": Infinity}, {"id": 4}]}'}),
    ("nan threshold in a form", {"files": {"image": ("a.png", b"x", "image/png")}, "data": {"threshold": "nan"}}),
]


@pytest.mark.parametrize("case, request_arguments", NOT_FINITE, ids=[case[0] for case in NOT_FINITE])
def test_nan_or_infinity_is_400(client: httpx.Client, case: str, request_arguments: dict) -> None:
    headers = {"content-type": "application/json"} if "content" in request_arguments else {}
    response = client.post("/api/search", headers=headers, **request_arguments)
    assert response.status_code == 400 and "finite" in response.json()["error"], response.text
    still_serving(client)


def test_results_and_info_show_no_server_paths_unless_asked(client: httpx.Client, served_index: ServedIndex,
                                                           rows: dict[str, dict], cache_dir: Path,
                                                           fixture_clip: Path) -> None:
    hidden = str(served_index.collection.parent)
    image_id = rows["000007.png"]["id"]
    escape = rows[ESCAPE_KEY]["id"]
    for body in ({"id": image_id, "k": 3}, {"id": escape, "k": 1}):
        response = client.post("/api/search", json=body)
        assert hidden not in response.text and str(served_index.outside.parent) not in response.text
    assert client.post("/api/search", json={"id": image_id, "k": 1}).json()["results"][0]["path"] == "000007.png"
    browsed = client.get("/api/browse", params={"limit": 100}).text
    info = client.get("/api/info").text
    assert hidden not in browsed and hidden not in info and str(served_index.folder) not in info
    assert str(fixture_clip) not in info and fixture_clip.name in info  # the model folder: named, not located
    with running(create_app(served_index.folder, cache_dir=cache_dir, show_paths=True)) as url:
        [shown] = httpx.post(f"{url}api/search", json={"id": image_id, "k": 1}, timeout=60).json()["results"]
        assert shown["path"] == rows["000007.png"]["path"]
        assert httpx.get(f"{url}api/info", timeout=60).json()["folder"] == str(served_index.folder)


def test_a_silent_or_slow_client_is_disconnected(served_index: ServedIndex, cache_dir: Path) -> None:
    timeout = 0.5
    with running(create_app(served_index.folder, cache_dir=cache_dir), header_timeout=timeout,
                 keep_alive_timeout=timeout) as url:
        address = (urlsplit(url).hostname, urlsplit(url).port)
        partial = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        with socket.create_connection(address, timeout=30) as silent, \
                socket.create_connection(address, timeout=30) as slow, \
                socket.create_connection(address, timeout=30) as kept_alive:
            slow.sendall(partial)  # a head that never ends (slowloris)
            kept_alive.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while not answer.endswith(b"}"):  # the whole JSON answer, however it is split
                chunk = kept_alive.recv(65536)
                assert chunk, answer  # closed before answering
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            kept_alive.sendall(partial)  # then a second head that never ends
            for connection in (silent, slow, kept_alive):
                assert connection.recv(65536) == b""  # closed by the server (a hung one raises socket.timeout)
        with httpx.Client(base_url=url, timeout=60) as client:
            still_serving(client)


def test_an_oversized_request_head_is_refused(client: httpx.Client, base_url: str) -> None:
    address = (urlsplit(base_url).hostname, urlsplit(base_url).port)
    with socket.create_connection(address, timeout=30) as connection:
        try:
            connection.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"x" * (1 << 20))
            answer = connection.recv(65536)
        except (BrokenPipeError, ConnectionResetError):  # refused while still sending
            answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400")  # not buffered until the head ends
    still_serving(client)


@pytest.fixture
def server_log() -> Iterator[list[logging.LogRecord]]:
    """Records of WARNING or worse from the server's and uvicorn's loggers (uvicorn's do not
    reach pytest's caplog: they do not propagate to the root)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in ("compsearch.server", "uvicorn.error", "uvicorn")]
    for logger in loggers:
        logger.addHandler(handler)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


def test_a_client_that_disconnects_is_not_logged_as_an_exception(base_url: str, client: httpx.Client,
                                                                 server_log: list) -> None:
    address = (urlsplit(base_url).hostname, urlsplit(base_url).port)
    for content_type in ("application/json", "multipart/form-data; boundary=x"):
        with socket.create_connection(address, timeout=30) as connection:
            connection.sendall(f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                               "Content-Length: 100000\r\n\r\n".encode() + b"--x\r\n" + b"0" * 1000)
            # closed mid-body
    still_serving(client)
    assert [record for record in server_log if record.exc_info or "Exception" in record.getMessage()] == []


def test_without_its_weights_the_server_answers_id_queries_and_says_why_not_others(
        served_index: ServedIndex, tmp_path: Path, cache_dir: Path, rows: dict[str, dict]) -> None:
    copy = tmp_path / "index"
    shutil.copytree(served_index.folder, copy)
    store = IndexStore(copy)
    manifest = store.read_manifest()
    gone = f"local-dir:{tmp_path / 'deleted-weights'}"  # the model folder the index was built with, gone
    manifest.encoder = dataclasses.replace(manifest.encoder, model_name=gone, clip_name=gone)
    store.write_manifest(manifest)
    image_id = rows["000004.png"]["id"]
    with running(create_app(copy, cache_dir=cache_dir, roots=[served_index.collection])) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        health = client.get("/api/health").json()
        assert health["status"] == "ok" and health["image_queries"] is False and health["text_queries"] is False
        assert "deleted-weights" in health["unavailable"]["image"]
        [found] = client.post("/api/search", json={"id": image_id, "k": 1}).json()["results"]
        assert found["id"] == image_id
        data = (served_index.collection / "000004.png").read_bytes()
        for endpoint, request in (("search", {"files": {"image": ("a.png", data, "image/png")}}),
                                  ("search", {"json": {"text": "red"}}),
                                  ("explain", {"json": {"id": image_id, "query_id": image_id}})):
            response = client.post(f"/api/{endpoint}", **request)
            assert response.status_code == 503 and "unavailable" in response.json()["error"], response.text


def test_browse_pages_the_collection_in_a_stable_order(client: httpx.Client, rows: dict[str, dict]) -> None:
    pages = [client.get("/api/browse", params={"order": "key", "offset": offset, "limit": 7}).json()
             for offset in range(0, IMAGES + 1, 7)]
    browsed = [result for page in pages for result in page["results"]]
    assert [result["key"] for result in browsed] == sorted(rows)  # every image once, in key order
    assert [result["rank"] for result in browsed] == list(range(1, IMAGES + 2))
    assert pages[0]["query"]["total"] == IMAGES + 1
    assert "score" not in browsed[0] and browsed[0]["thumbnail_url"].startswith(f"/api/thumbnails/{browsed[0]['id']}")
    newest_first = client.get("/api/browse", params={"order": "-key", "where": "key < '000010.png'", "limit": 3}).json()
    assert [result["key"] for result in newest_first["results"]] == ["000009.png", "000008.png", "000007.png"]
    assert newest_first["query"]["total"] == 10
    for params, problem in (({"order": "camera"}, "no such column"), ({"where": "camera == 'x'"}, "no column"),
                            ({"limit": 0}, "out of range")):
        response = client.get("/api/browse", params=params)
        assert response.status_code == 400 and problem in response.json()["error"], response.text


def test_why_a_text_result_matched(client: httpx.Client, library: search.SearchIndex) -> None:
    [top] = library.search(text="red", property="colour", k=1).results
    response = client.post("/api/explain", json={"id": top.id, "property": "colour", "text": "red"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["query"] is None and answer["components"] == library.manifest.properties["colour"].components
    result = answer["result"]
    overlay = PIL.Image.open(io.BytesIO(base64.b64decode(result["png"])))
    assert overlay.format == "PNG" and result["grid_shape"] == [len(result["grid"]), len(result["grid"][0])]
    # The heat sums to ⟨v, q⟩ (v: the result's unnormalised property vector), which has the score's sign.
    assert result["total"] == pytest.approx(sum(map(sum, result["grid"])) + result["prefix"] + result["unlocated"],
                                            rel=1e-4, abs=1e-6)
    assert (result["total"] > 0) == (top.score > 0)


def test_why_an_image_matched_itself_shows_the_same_heat_on_both_sides(client: httpx.Client, served_index: ServedIndex,
                                                                        rows: dict[str, dict]) -> None:
    image_id = rows["000012.png"]["id"]
    by_id = client.post("/api/explain", json={"id": image_id, "property": "shape", "query_id": image_id}).json()
    data = (served_index.collection / "000012.png").read_bytes()
    uploaded = client.post("/api/explain", files={"image": ("q.png", data, "image/png")},
                           data={"id": str(image_id), "property": "shape"}).json()
    for answer in (by_id, uploaded):
        np.testing.assert_allclose(answer["query"]["grid"], answer["result"]["grid"], atol=1e-4)
        assert answer["result"]["total"] > 0  # an image agrees with itself
    for body in ({"id": BEYOND_INT64, "text": "red"}, {"id": image_id, "query_id": BEYOND_INT64},
                 {"id": image_id}, {"id": image_id, "text": "red", "query_id": image_id}):
        assert client.post("/api/explain", json=body).status_code == 400, body
    still_serving(client)
