"""End to end: a live uvicorn on 127.0.0.1 and a headless Chromium: search, add items, see recommendations.

Needs the python package ``playwright`` and Debian's ``chromium`` at /usr/bin/chromium (``apt-get install
chromium``; ``playwright install`` is not used). Skips, saying which is missing, otherwise. Saves a screenshot
to the test's tmp_path and to docs/screenshots/serve.png.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'thinkrec[serve]')")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install 'thinkrec[serve]')")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright python package is not installed (pip install playwright)"
)

from fastapi import FastAPI  # noqa: E402

from test_serve_common import make_run, reasoning_recommender  # noqa: E402
from thinkrec.serve.app import create_app  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[1]


def keep_screenshot(shot: Path) -> None:
    """Copy a screenshot into docs/screenshots only when asked (THINKREC_UPDATE_SCREENSHOTS=1): a test run
    must not modify the working tree."""
    if os.environ.get("THINKREC_UPDATE_SCREENSHOTS") == "1":
        target = REPO / "docs" / "screenshots" / shot.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    port = free_port()
    live = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=live.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not live.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 20 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    live.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_server(create_app(make_run(tmp_path_factory.mktemp("run")))) as url:
        yield url


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield launched
        finally:
            launched.close()


def test_search_add_and_recommend_in_a_browser(server: str, browser: Any, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 800})
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server + "/")
    sync_api.expect(page.locator("#model-info")).to_contain_text("60 items")

    page.fill("#search", "star")
    results = page.locator("#search-results li")
    sync_api.expect(results.first).to_contain_text("Star")
    results.nth(0).click()
    sync_api.expect(page.locator("#history li")).to_have_count(1)
    sync_api.expect(page.locator("#recs tbody tr")).to_have_count(10)

    page.fill("#search", "toy")
    sync_api.expect(page.locator("#search-results li").first).to_contain_text("Toy")
    page.locator("#search-results li").nth(1).click()
    sync_api.expect(page.locator("#history li")).to_have_count(2)
    rows = page.locator("#recs tbody tr")
    sync_api.expect(rows).to_have_count(10)
    history = page.locator("#history li").all_inner_texts()
    titles = [rows.nth(i).locator("td").nth(2).inner_text() for i in range(10)]
    assert all(title for title in titles)
    assert not set(titles) & {h.removesuffix(" ✕").strip() for h in history}  # exclude seen is on
    assert page.locator("#error").is_hidden()
    assert errors == []

    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    keep_screenshot(shot)


def test_reasoning_model_shows_each_step(browser: Any, tmp_path: Path) -> None:
    with live_server(create_app(recommender=reasoning_recommender())) as url:
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.set_default_timeout(15_000)
        page.goto(url + "/")
        sync_api.expect(page.locator("#model-info")).to_contain_text("2 reasoning steps")
        sync_api.expect(page.locator("#steps-label")).to_be_visible()
        page.fill("#search", "wars")
        page.locator("#search-results li").first.click()
        sync_api.expect(page.locator("#steps-grid .step")).to_have_count(3)
        sync_api.expect(page.locator("#steps-grid .step").nth(2).locator("li")).to_have_count(10)
        page.fill("#steps", "3")
        page.dispatch_event("#steps", "change")
        sync_api.expect(page.locator("#steps-grid .step")).to_have_count(4)
        page.screenshot(path=str(tmp_path / "serve-steps.png"), full_page=True)
        keep_screenshot(tmp_path / "serve-steps.png")
