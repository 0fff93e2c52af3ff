"""The web page in a real headless Chromium (Debian's, never a downloaded one): query, property,
gallery with loaded images, reference-image upload, "more like this", the token's cookie."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from compsearch.indexer.store import IndexStore
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
        wait_until(page, f"document.querySelectorAll('#gallery .card').length === {K}")
        wait_for_images(page)
        assert "results for “red” by colour" in page.locator("#status").inner_text()
        scores = [float(text) for text in page.locator("#gallery .score").all_inner_texts()]
        assert scores == sorted(scores, reverse=True)

        key = "000013.png"
        page.select_option("#property", "full")
        page.set_input_files("#file", str(served_index.collection / key))  # pick a reference image
        wait_for_first(page, rows[key]["id"])  # the image itself is the most similar
        wait_for_images(page)
        assert page.locator("#reference").is_visible()

        third = page.locator("#gallery .card").nth(2)
        third_id = int(third.get_attribute("data-id"))
        page.select_option("#property", "shape")
        assert third.locator(".more").inner_text() == "more like this by shape"
        third.locator(".more").click()
        wait_for_first(page, third_id)
        wait_for_images(page)
        assert len(gallery_ids(page)) == K and "by shape" in page.locator("#status").inner_text()

        page.fill("#text", "")
        page.select_option("#property", "colour")
        page.click("button[type=submit]")
        assert "type what to look for" in page.locator("#status").inner_text()
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
