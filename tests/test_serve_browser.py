"""The `xfer serve` page in a real browser (Playwright driving the system's Chromium): a typed review and an uploaded
digit each get a label with probability bars, and the page asks nothing of any other host."""

from __future__ import annotations

import os
import shutil
from urllib.parse import urlparse

import pytest

from serve_helpers import digit_png, image_run, server, text_run


def _chromium() -> str:
    path = os.environ.get("XFER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        message = ("No Chromium found for the browser test: install Debian's `chromium` package (.ci/run does) or "
                   "set XFER_CHROMIUM to a Chromium binary.")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def page_url(tmp_path_factory, image_folder):
    runs = text_run(tmp_path_factory), image_run(tmp_path_factory, image_folder)
    with server(*runs) as url:
        yield url


@pytest.fixture
def page(page_url):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        context = browser.new_context()
        requested = []
        context.on("request", lambda r: requested.append(r.url))
        pg = context.new_page()
        pg.goto(page_url + "/")
        pg.wait_for_selector("#model option", state="attached")
        yield pg
        browser.close()
    foreign = [u for u in requested if urlparse(u).hostname not in ("127.0.0.1", "localhost")
               and not u.startswith(("blob:", "data:"))]
    assert not foreign, f"the page requested other hosts: {foreign}"


def test_the_page_labels_a_typed_review(page, tmp_path):
    page.select_option("#model", "reviews")
    page.fill("#text", "a wonderful, moving film")
    page.click("#predict-text")
    page.wait_for_selector("#label:not([hidden])")
    assert page.inner_text("#label").split(" ")[0] in ("pos", "neg")
    assert page.locator("#bars .bar").count() == 2
    page.screenshot(path=str(tmp_path / "text.png"), full_page=True)
    assert (tmp_path / "text.png").stat().st_size > 0


def test_the_page_labels_an_uploaded_digit(page, tmp_path_factory, tmp_path):
    page.select_option("#model", "colours")
    page.set_input_files("#file", str(digit_png(tmp_path_factory)))
    page.wait_for_selector("#label:not([hidden])")
    assert page.inner_text("#label").split(" ")[0] in ("red", "blue")
    assert page.locator("#bars .bar").count() == 2
    assert page.is_visible("#preview")
    page.screenshot(path=str(tmp_path / "image.png"), full_page=True)
    assert (tmp_path / "image.png").stat().st_size > 0
