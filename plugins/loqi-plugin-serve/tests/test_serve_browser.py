"""The page in a real headless Chromium (the system's, driven by Playwright): upload or drop an image, see the top-k.

Skips, saying why, where Playwright or a Chromium binary is missing; CI installs both (.ci/run). Set
LOQI_SCREENSHOT=PATH to keep the screenshot (docs/serving-page.png is one, cropped and quantised).
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


DROP = """(b64) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
  document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
}"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium binary on PATH (Debian: apt-get install chromium)")


def test_upload_an_image_and_see_the_results(server, engine, kit, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    executable = _chromium()
    query = tmp_path / "query.png"
    query.write_bytes(kit.database_files(engine.index)[150].read_bytes())
    url = f"http://{kit.HOST}:{server.port}/"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 640})
            page.goto(url)
            page.wait_for_function("document.getElementById('about').textContent.includes('300 database images')")
            page.set_input_files("#file", str(query))
            page.wait_for_selector(".result >> nth=4", timeout=60_000)
            cards = page.locator(".result")
            assert cards.count() == 5
            first = cards.nth(0)
            assert first.locator(".name").inner_text() == engine.index.names[150]
            assert "score 1.0000" in first.inner_text() and "distance 0.00" in first.inner_text()
            page.wait_for_function("[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)")
            assert page.locator("#status").inner_text().startswith("top 5 in")
            shot = Path(os.environ.get("LOQI_SCREENSHOT") or tmp_path / "page.png")
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

            dropped = base64.b64encode(kit.database_files(engine.index)[20].read_bytes()).decode()
            page.evaluate(DROP, dropped)  # a file dragged from the desktop onto the drop zone
            page.wait_for_function(f"document.querySelector('.result .name')?.textContent === {engine.index.names[20]!r}")
            assert page.locator(".result").count() == 5

            page.set_input_files("#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not a png"}])
            page.wait_for_selector("#status.error")
            assert page.locator("#status").inner_text().startswith("400: ") and page.locator(".result").count() == 0
        finally:
            browser.close()
