"""The page at / end to end in headless Chromium (Debian's /usr/bin/chromium, driven by playwright)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import httpx
import pytest

# Collected everywhere, run where playwright is installed (the dev extra, so CI): without it, a
# plain `pytest` skips this file instead of stopping at collection.
_pw = pytest.importorskip("playwright.sync_api", reason="the page's browser test needs playwright (.[dev])")
Page, expect, sync_playwright = _pw.Page, _pw.expect, _pw.sync_playwright

CHROMIUM = os.environ.get("SDLITE_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def page(server) -> Iterator[Page]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1100, "height": 720})
            errors: list[str] = []
            pg.on("pageerror", lambda err: errors.append(str(err)))
            pg.goto(server.url + "/")
            yield pg
            assert not errors, f"JavaScript errors on the page: {errors}"
        finally:
            browser.close()


def test_page_generates_an_image_with_its_seed(page, server):
    # The sampler list comes from /sdapi/v1/samplers.
    expect(page.locator("#sampler_name option[value='DPM++ 2M Karras']")).to_have_count(1)
    page.fill("#prompt", "a red circle")
    page.fill("#steps", "6")
    page.fill("#seed", "4242")
    page.select_option("#sampler_name", "DPM++ 2M Karras")
    page.click("#generate")
    card = page.locator("#gallery figure").first
    expect(card.locator(".seed")).to_have_text("seed 4242", timeout=30_000)
    params = card.locator(".params")
    expect(params).to_contain_text("a red circle")
    expect(params).to_contain_text("Sampler: DPM++ 2M Karras")
    size = page.evaluate("document.querySelector('#gallery img').naturalWidth")
    assert size == httpx.get(f"{server.url}/health").json()["default_size"]
    expect(page.locator("#status")).to_contain_text("done")
    if os.environ.get("SDLITE_SCREENSHOT"):  # to look at the page by eye; never committed
        page.screenshot(path=os.environ["SDLITE_SCREENSHOT"], full_page=True)


def test_page_shows_progress_and_cancels(page, server):
    size = 4 * httpx.get(f"{server.url}/health").json()["default_size"]
    page.fill("#steps", "500")  # minutes of work at this size: only Cancel ends it early
    page.fill("#width", str(size))
    page.fill("#height", str(size))
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("step", timeout=30_000)
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("cancelled")
    # The model call stopped: the one worker is free at once for the next request.
    t0 = time.monotonic()
    r = httpx.post(f"{server.url}/v1/images/generations", json={"prompt": "x", "steps": 2}, timeout=60)
    assert r.status_code == 200 and time.monotonic() - t0 < 10, "the server kept working after Cancel"
    expect(page.locator("#generate")).to_be_enabled()
