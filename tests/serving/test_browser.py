"""The web page in real headless Chromium: type a query, get cards with loaded photos."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from index.index_testing import build, write_catalog
from makevl.data.catalog import iter_catalog
from makevl.data.shop import fashion_mini_dir
from makevl.serving.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} not found; install Debian's chromium (apt-get install -y chromium)",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """uvicorn on a free loopback port, in a thread, over a small index of real photos."""
    import uvicorn

    root = tmp_path_factory.mktemp("browser")
    styles = fashion_mini_dir() / "styles.csv"
    if styles.is_file():
        from makevl.data.fashion_mini import FASHION_MINI_COLUMNS

        products = list(itertools.islice(iter_catalog(styles, FASHION_MINI_COLUMNS), 300))
    else:  # generated colour swatches stand in for photos
        products = list(iter_catalog(write_catalog(root / "shop")))
    build(root / "index", products)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(root / "index"), log_level="warning", lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", products
    uv.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _save_screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=False)
    artifacts = os.environ.get("MAKEVL_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / name)
    return path


def _loaded_images(page) -> list[int]:
    return page.eval_on_selector_all(
        ".card img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)"
    )


def test_search_page_shows_result_cards_with_photos(server, browser, tmp_path):
    url, products = server
    query = "men blue shirt" if len(products) > 20 else "men red t-shirt"
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        page.goto(url + "/", timeout=15_000)
        page.select_option("#k", "12")
        page.fill("#q", query)
        page.press("#q", "Enter")
        page.wait_for_selector(".card img", timeout=15_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=15_000,
        )
        cards = page.locator(".card")
        assert cards.count() == 12
        assert all(width > 0 for width in _loaded_images(page))
        first_title = cards.first.locator(".product-title").inner_text()
        assert query.split()[1] in first_title.lower()
        assert "12 results for" in page.inner_text("#status")
        widths = page.eval_on_selector_all(
            ".card:first-child .weights span",
            "spans => spans.map(s => s.getBoundingClientRect().width)",
        )
        bar = page.eval_on_selector(
            ".card:first-child .weights", "b => b.getBoundingClientRect().width"
        )
        assert len(widths) == 3 and sum(widths) == pytest.approx(bar, abs=2)
        assert f"q={query.replace(' ', '+')}" in page.url
        shot = _save_screenshot(page, tmp_path, "search-page.png")
        assert shot.stat().st_size > 10_000
        assert not errors, errors
    finally:
        page.close()


def test_shared_link_runs_its_search_and_errors_are_shown(server, browser):
    url, _ = server
    page = browser.new_page()
    try:
        page.goto(url + "/?q=watch&k=12", timeout=15_000)
        page.wait_for_selector(".card", timeout=15_000)
        assert page.input_value("#q") == "watch"
        # A query the API rejects shows its message instead of cards.
        page.evaluate("document.getElementById('q').removeAttribute('maxlength')")
        page.fill("#q", "x" * 300)
        page.press("#q", "Enter")
        page.wait_for_selector("#status.error", timeout=15_000)
        assert "the limit is 256" in page.inner_text("#status")
        assert page.locator(".card").count() == 0
    finally:
        page.close()


def test_facet_chips_filter_the_results(server, browser):
    url, products = server
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url + "/?q=shirt&k=12", timeout=15_000)
        page.wait_for_selector(".card", timeout=15_000)
        chip = page.locator(".chip").first
        attribute, value = chip.get_attribute("data-filter").split(":", 1)
        assert page.locator(".chip").count() >= 2
        chip.click()
        page.wait_for_function(
            "() => document.getElementById('status').textContent.includes(' where ')",
            timeout=15_000,
        )
        assert chip.get_attribute("aria-pressed") == "true"
        ids = page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.id)")
        by_id = {p.id: p for p in products}
        assert ids and all(by_id[i].attributes.get(attribute) == value for i in ids)
        assert "filter=" in page.url
    finally:
        page.close()
