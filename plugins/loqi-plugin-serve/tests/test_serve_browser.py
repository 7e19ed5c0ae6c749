"""The page in a real headless Chromium (the system's, driven by Playwright): upload or drop an image and see the
top-k on the map, with the query's own position and the error in metres when its file name carries one; replay a
video segment as a sequence; errors shown, an API key asked for.

Skips, saying why, where Playwright or a Chromium binary is missing; CI installs both (.ci/run). Set
LOQI_SCREENSHOT=PATH (and LOQI_SCREENSHOT_VIDEO=PATH) to keep the screenshots (docs/serving-page.png and
docs/serving-sequence.png are those, quantised).
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


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    executable = _chromium()
    with sync_api.sync_playwright() as p:
        running = p.chromium.launch(executable_path=executable, headless=True, args=FLAGS)
        try:
            yield running
        finally:
            running.close()


def _shot(page, env: str, default: Path) -> None:
    shot = Path(os.environ.get(env) or default)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_upload_an_image_and_see_the_results_on_the_map(server, engine, kit, tmp_path, browser):
    named = tmp_path / engine.index.names[150].split("/")[-1]  # gmberton's name: the query's own position
    named.write_bytes(kit.database_files(engine.index)[150].read_bytes())
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.goto(f"http://{kit.HOST}:{server.port}/")
    page.wait_for_function("document.getElementById('about').textContent.includes('300 database images')")
    assert page.locator("#map").get_attribute("data-points") == "300"  # every database position on the map
    page.set_input_files("#file", str(named))
    page.wait_for_selector(".result >> nth=4", timeout=60_000)
    cards = page.locator(".result")
    assert cards.count() == 5
    first = cards.nth(0)
    assert first.locator(".name").inner_text() == engine.index.names[150]
    assert "score 1.0000" in first.inner_text() and "descriptor distance 0.000" in first.inner_text()
    assert first.locator(".error-m").inner_text() == "0.0 m"  # the query's own position, from its file name
    assert page.locator("#map .hit").count() == 5 and page.locator("#map .query").count() == 1
    assert page.locator("#map .hit[data-rank='1'] text").text_content() == "1"
    page.wait_for_function("[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)")
    status = page.locator("#status").inner_text()
    assert status.startswith("top 5 in") and "the best is 0.0 m from the query" in status
    _shot(page, "LOQI_SCREENSHOT", tmp_path / "page.png")

    dropped = base64.b64encode(kit.database_files(engine.index)[20].read_bytes()).decode()
    page.evaluate(DROP, dropped)  # a file dragged from the desktop onto the drop zone (a name without a position)
    page.wait_for_function(f"document.querySelector('.result .name')?.textContent === {engine.index.names[20]!r}")
    assert page.locator(".result").count() == 5 and page.locator("#map .query").count() == 0

    page.set_input_files("#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not a png"}])
    page.wait_for_selector("#status.error")
    assert page.locator("#status").inner_text().startswith("400: ") and page.locator(".result").count() == 0


def test_replay_a_video_segment_as_a_sequence_on_the_map(server, engine, kit, tmp_path, browser):
    from loqi_core import load_dataset

    queries = load_dataset("demo", "test").queries
    frames = [kit.decoded(queries.paths[i].read_bytes()) for i in queries.sequences[0][30:42]]
    video = tmp_path / "route.mp4"
    video.write_bytes(kit.video_bytes(frames, fmt="mp4"))
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.goto(f"http://{kit.HOST}:{server.port}/")
    page.wait_for_function("document.getElementById('about').textContent.includes('sequences on')")
    page.fill("#length", "5")
    page.set_input_files("#file", str(video))
    page.wait_for_selector("#replay.shown", timeout=60_000)
    assert "12 frames in" in page.locator("#status").inner_text()
    assert "matched as sequences of up to 5 frames" in page.locator("#status").inner_text()
    page.wait_for_function("document.getElementById('frame').value === '11'", timeout=30_000)  # the replay ran through
    label = page.locator("#framelabel").inner_text()
    assert label.startswith("frame 12/12") and "sequence of 5" in label
    assert page.locator("#map .seq").count() == 1 and page.locator(".result.sequence").count() == 1
    page.locator("#frame").fill("2")  # scrub back: the third frame's sequence has 3 frames
    assert "sequence of 3" in page.locator("#framelabel").inner_text()
    _shot(page, "LOQI_SCREENSHOT_VIDEO", tmp_path / "sequence.png")


def test_the_page_shows_errors_and_asks_for_a_key(engine, kit, tmp_path, browser):
    from loqi_plugin_serve.access import read_api_keys
    from loqi_plugin_serve.app import Access, create_app

    (tmp_path / "keys").write_text("page-test-key-0123456789\n")
    keyed = kit.Server(create_app(engine, kit.LIMITS, Access(read_api_keys(tmp_path / "keys"))))
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        page.goto(f"http://{kit.HOST}:{keyed.port}/")
        page.wait_for_selector("#about.error")
        assert page.locator("#about").inner_text().startswith("could not load the index: 401: no Authorization header")
        assert page.locator("#keybox").is_visible()
        page.fill("#key", "page-test-key-0123456789")
        page.click("#usekey")
        page.wait_for_function("document.getElementById('about').textContent.includes('300 database images')")
        query = tmp_path / "frame.png"
        query.write_bytes(kit.database_files(engine.index)[64].read_bytes())
        page.set_input_files("#file", str(query))
        page.wait_for_selector(".result >> nth=4", timeout=60_000)
        page.wait_for_function("[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator(".result .name").first.inner_text() == engine.index.names[64]  # thumbnails came with the key
    finally:
        keyed.stop()
