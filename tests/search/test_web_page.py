"""The web page in a real headless Chromium (Debian's, never a downloaded one): the collection
browsed in pages, query, property, filters, id box, gallery with loaded images,
reference-image upload, "more like this", "why this result", errors, the token's cookie."""
from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compsearch.indexer.store import IndexStore
from compsearch.indexer.finish import record_totals
from compsearch.search.server.app import create_app
from tests.search.conftest import ServedIndex, running

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "page-token"
K = 10

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver; "
                                       ".ci/run does it)")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator:
    """A fresh page that records console errors and every request leaving 127.0.0.1."""
    context = browser.new_context()
    page = context.new_page()
    page.console_errors, page.foreign_requests = [], []
    page.on("console", lambda message: message.type == "error" and page.console_errors.append(message.text))
    page.on("request", lambda request: urlsplit(request.url.removeprefix("blob:")).hostname != "127.0.0.1"
            and page.foreign_requests.append(request.url))
    yield page
    context.close()


def gallery_ids(page) -> list[int]:
    return [int(card.get_attribute("data-id")) for card in page.locator("#gallery .card").all()]


def wait_until(page, expression: str, timeout: float = 30) -> None:
    """Polls ``expression`` in the page from here: Playwright's own wait_for_function
    evaluates strings in the page, which the page's Content-Security-Policy forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}; status: {page.locator('#status').inner_text()}")
        page.wait_for_timeout(50)


def wait_for_images(page) -> None:
    """Every thumbnail in the gallery has loaded and decoded to real pixels."""
    wait_until(page, """(() => {
        const images = [...document.querySelectorAll('#gallery img.thumb')];
        return images.length > 0 && images.every((image) => image.complete && image.naturalWidth > 0);
    })()""")


def wait_for_first(page, image_id: int) -> None:
    wait_until(page, f"document.querySelector('#gallery .card')?.dataset.id === '{image_id}'")


def wait_for_properties(page) -> None:
    wait_until(page, "document.querySelectorAll('#property option').length === 3")


def test_search_upload_and_more_like_this(page, served_index: ServedIndex, tmp_path: Path) -> None:
    rows = {row["key"]: row for row in IndexStore(served_index.folder).read_table().to_pylist()}
    with running(create_app(served_index.folder, cache_dir=tmp_path)) as url:
        page.goto(url)
        wait_for_properties(page)
        assert page.locator("#summary").inner_text().startswith(f"{len(rows)} images")
        page.select_option("#property", "colour")
        page.select_option("#k", str(K))
        page.fill("#text", "red")
        page.click("button[type=submit]")
        wait_for_status(page, "results for “red” by colour")  # not the landing page's browse, re-run at k = 10
        assert len(gallery_ids(page)) == K
        wait_for_images(page)
        scores = [float(text) for text in page.locator("#gallery .score").all_inner_texts()]
        assert scores == sorted(scores, reverse=True)

        key = "000013.png"
        page.select_option("#property", "full")
        page.set_input_files("#file", str(served_index.collection / key))  # pick a reference image
        wait_until(page, "!document.querySelector('#identical').hidden")  # the very file: said, not ranked first
        assert f"#{rows[key]['id']}" in page.locator("#identical").inner_text()
        assert rows[key]["id"] not in gallery_ids(page)
        wait_for_images(page)
        assert page.locator("#reference").is_visible()

        page.select_option("#property", "shape")  # re-runs the image query by shape
        wait_for_status(page, "by shape")
        third = page.locator("#gallery .card").nth(2)
        third_id = int(third.get_attribute("data-id"))
        assert third.locator(".more").inner_text() == "more like this by shape"
        third.locator(".more").click()
        wait_for_first(page, third_id)
        wait_for_images(page)
        assert len(gallery_ids(page)) == K and "by shape" in page.locator("#status").inner_text()

    assert page.console_errors == [] and page.foreign_requests == []  # nothing loaded from elsewhere


def test_the_page_shows_the_servers_error(page, served_index: ServedIndex, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with running(create_app(served_index.folder, cache_dir=tmp_path)) as url:
        page.goto(url)
        wait_for_properties(page)
        page.set_input_files("#file", str(broken))
        wait_until(page, "document.querySelector('#status').classList.contains('error')")
        shown = page.locator("#status").inner_text()
        assert shown.startswith("the uploaded image is truncated") and "re-download" in shown  # problem and hint


def test_the_token_link_opens_the_page_and_its_images(page, served_index: ServedIndex, tmp_path: Path) -> None:
    with running(create_app(served_index.folder, token=TOKEN, cache_dir=tmp_path)) as url:
        assert page.goto(url).status == 401
        page.goto(f"{url}?token={TOKEN}")
        assert page.url == url  # the token left the address bar for an HttpOnly cookie
        wait_for_properties(page)
        page.fill("#text", "blue")
        page.click("button[type=submit]")
        wait_until(page, "document.querySelectorAll('#gallery .card').length > 0")
        wait_for_images(page)  # <img> requests carry the cookie


def wait_for_status(page, text: str) -> None:
    wait_until(page, f"document.querySelector('#status').textContent.includes({text!r})")


def api_ids(url: str, path: Path | None = None, **body) -> list[int]:
    """The ids the API itself answers (an image query when ``path`` is given)."""
    if path is None:
        response = httpx.post(f"{url}api/search", json=body, timeout=60)
    else:
        response = httpx.post(f"{url}api/search", files={"image": (path.name, path.read_bytes(), "image/png")},
                              data={name: str(value) for name, value in body.items()}, timeout=60)
    return [result["id"] for result in response.json()["results"]]


def test_the_landing_page_browses_the_collection_in_pages(page, served_index: ServedIndex, tmp_path: Path) -> None:
    keys = sorted(row["key"] for row in IndexStore(served_index.folder).read_table(columns=["key"]).to_pylist())
    with running(create_app(served_index.folder, cache_dir=tmp_path)) as url:
        page.goto(url)
        wait_for_status(page, f"{len(keys)} images")
        wait_for_images(page)
        assert len(gallery_ids(page)) == 20 and page.locator("#page").inner_text() == "page 1 of 3"
        assert page.locator("#gallery .explain").count() == 0  # nothing to explain without a query
        page.select_option("#order", "key")
        wait_until(page, f"document.querySelector('#gallery .key')?.textContent === {keys[0]!r}")
        first = page.locator("#gallery .key").all_inner_texts()
        page.click("#next")
        wait_until(page, "document.querySelector('#page').textContent === 'page 2 of 3'")
        second = page.locator("#gallery .key").all_inner_texts()
        page.click("#next")
        wait_until(page, "document.querySelector('#page').textContent === 'page 3 of 3'")
        third = page.locator("#gallery .key").all_inner_texts()
        assert first + second + third == keys and page.locator("#next").is_disabled()
        page.fill("#folder", "sub")  # no such folder: nothing, said so
        page.locator("#folder").blur()
        wait_for_status(page, "0 images matching")


def test_changing_the_property_or_a_filter_reruns_the_query(page, served_index: ServedIndex, tmp_path: Path) -> None:
    """Once failed: after an upload, changing "by" (and pressing Search) kept the old results
    while every button already named the new property."""
    reference = served_index.collection / "000021.png"
    with running(create_app(served_index.folder, cache_dir=tmp_path)) as url:
        page.goto(url)
        wait_for_properties(page)
        page.select_option("#k", str(K))
        page.set_input_files("#file", str(reference))
        wait_for_status(page, "by full")
        assert gallery_ids(page) == api_ids(url, reference, property="full", k=K)
        page.select_option("#property", "shape")
        wait_for_status(page, "by shape")
        by_shape = api_ids(url, reference, property="shape", k=K)
        assert by_shape != api_ids(url, reference, property="full", k=K)  # the test can tell them apart
        assert gallery_ids(page) == by_shape
        page.click("button[type=submit]")  # nothing typed: the same image, by the shown property
        wait_for_status(page, "by shape")
        assert gallery_ids(page) == by_shape
        page.select_option("#filter-column", "key")
        page.select_option("#filter-op", "<")
        page.fill("#filter-value", "000020.png")
        page.locator("#filter-value").blur()
        where = "key < '000020.png'"
        expected = api_ids(url, reference, property="shape", k=K, where=where)
        wait_until(page, f"JSON.stringify([...document.querySelectorAll('#gallery .card')].map((c) => Number(c.dataset.id)))"
                         f" === {str(expected).replace(' ', '')!r}")
        assert all(key < "000020.png" for key in page.locator("#gallery .key").all_inner_texts())


def test_an_error_clears_stale_results(page, served_index: ServedIndex, tmp_path: Path) -> None:
    with running(create_app(served_index.folder, cache_dir=tmp_path)) as url:
        page.goto(url)
        wait_for_properties(page)
        page.fill("#text", "red")
        page.click("button[type=submit]")
        wait_for_status(page, "results for “red”")
        assert gallery_ids(page)
        page.select_option("#filter-column", "width")
        page.fill("#filter-value", "wide")  # not a number: the server refuses the filter
        page.locator("#filter-value").blur()
        wait_until(page, "document.querySelector('#status').classList.contains('error')")
        assert "width" in page.locator("#status").inner_text() and gallery_ids(page) == []


def test_the_id_box_and_why_this_result(page, served_index: ServedIndex, tmp_path: Path) -> None:
    rows = {row["key"]: row for row in IndexStore(served_index.folder).read_table().to_pylist()}
    image_id = rows["000005.png"]["id"]
    with running(create_app(served_index.folder, cache_dir=tmp_path)) as url:
        page.goto(url)
        wait_for_properties(page)
        page.select_option("#property", "colour")
        page.fill("#id", str(image_id))
        page.click("button[type=submit]")
        wait_for_first(page, image_id)
        assert f"like #{image_id}" in page.locator("#status").inner_text()
        page.locator("#gallery .card").nth(1).locator(".explain").click()
        wait_until(page, """['why-query', 'why-result'].every((id) => {
            const image = document.getElementById(id);
            return !image.hidden && image.complete && image.naturalWidth > 0;
        })""")
        assert page.locator("#why").is_visible() and "by colour" in page.locator("#why-title").inner_text()
        assert "result #" in page.locator("#why-result-caption").inner_text()
    assert page.console_errors == []


def test_a_date_range_filters_a_timestamp_column(page, served_index: ServedIndex, tmp_path: Path) -> None:
    """On a copy of the index given a ``taken`` column (day i for image id i), as EXIF gives."""
    copy = tmp_path / "index"
    shutil.copytree(served_index.folder, copy)
    start = datetime(2020, 1, 1)
    for shard in (copy / "shards").rglob("*.parquet"):
        table = pq.read_table(shard)
        taken = pa.array([start + timedelta(days=int(i)) for i in table.column("id").to_pylist()], pa.timestamp("us"))
        index = table.schema.get_field_index("taken")  # the EXIF column, null for these renders
        pq.write_table(table.set_column(index, "taken", taken) if index >= 0 else table.append_column("taken", taken), shard)
    store = IndexStore(copy)
    record_totals(store, store.read_manifest())  # the shards changed on purpose: record them as they are now
    with running(create_app(copy, cache_dir=tmp_path, roots=[served_index.collection])) as url:
        page.goto(url)
        wait_until(page, "!document.querySelector('#dates').hidden")
        page.fill("#date-from", "2020-01-03")
        page.fill("#date-to", "2020-01-07")  # the whole day included
        page.locator("#date-to").blur()
        wait_for_status(page, "5 images matching")
        assert sorted(gallery_ids(page)) == [2, 3, 4, 5, 6]
        page.select_option("#order", "-taken")
        wait_for_first(page, 6)
