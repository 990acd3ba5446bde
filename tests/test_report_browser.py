"""The HTML report of a run opened in a real browser (Chromium through Playwright): nothing is fetched from the
network, nothing fails to load, every picture decodes."""

import os
import shutil

import pytest

import xfer
from xfer.runs.folder import REPORT

from helpers import TINY_IMAGE_FIT


def _chromium() -> str:
    path = os.environ.get("XFER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path and os.path.exists(path):
        return path
    message = ("No Chromium for the browser test: install one (Debian: apt-get install chromium) or set XFER_CHROMIUM "
               "to its executable.")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def run_dir(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-browser") / "run"
    xfer.fit(data=str(image_folder), out=str(out), **TINY_IMAGE_FIT)
    return out


def test_report_loads_offline_with_every_image_decoded(run_dir, tmp_path):
    executable = _chromium()
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    url = (run_dir / REPORT).resolve().as_uri()
    requests, failed = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfailed", lambda r: failed.append((r.url, r.failure)))
            page.goto(url, wait_until="load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => ({src: e.src.slice(0, 30), complete: e.complete, w: e.naturalWidth}))")
            text = page.inner_text("body")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert not failed, failed
    remote = [u for u in requests if u.startswith(("http://", "https://"))]
    assert not remote, remote
    assert len(images) >= 3  # learning curves, confusion matrix, reliability diagram (+ examples)
    assert all(i["complete"] and i["w"] > 0 for i in images), images
    assert all(i["src"].startswith("data:image/png;base64,") for i in images)
    assert "test accuracy" in text and "Calibration" in text and "Source provenance" in text
    assert (tmp_path / "report.png").stat().st_size > 10_000
