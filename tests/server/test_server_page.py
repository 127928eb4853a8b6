"""The page at / end to end in headless Chromium (Debian's /usr/bin/chromium, driven by playwright)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from server_helpers import Served, decode_png, start_server, stop_server, write_lora

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


def test_page_shows_the_picture_forming(page, server):
    size = 2 * httpx.get(f"{server.url}/health").json()["default_size"]
    page.fill("#steps", "300")  # long enough to watch; Cancel ends it
    page.fill("#width", str(size))
    page.fill("#height", str(size))
    page.click("#generate")
    live = page.locator("#live img")
    expect(live).to_have_attribute("src", re.compile("^data:image/png;base64,"), timeout=30_000)
    first = live.get_attribute("src")
    # A later preview replaces it: the denoised estimate moves as the steps go by.
    page.wait_for_function(
        "(first) => { const im = document.querySelector('#live img'); return im && im.src !== first; }",
        arg=first,
        timeout=30_000,
    )
    assert page.evaluate("document.querySelector('#live img').naturalWidth") == size
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("cancelled")
    expect(page.locator("#live")).to_have_count(0)  # the preview goes with its job


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("page-loras")
    write_lora(folder / "inky.safetensors", 1)
    served = start_server("--lora-dir", str(folder))
    yield served
    stop_server(served)


def test_page_adds_a_lora_tag_and_the_image_has_the_lora(page, lora_server):
    # Last in this file: the page moves to another server, one with a LoRA folder.
    page.goto(lora_server.url + "/")
    expect(page.locator("#lora option")).to_have_count(1)
    expect(page.locator("#lora")).to_have_value("inky")
    page.fill("#prompt", "a cat")
    page.fill("#lora_weight", "0.5")
    page.click("#addlora")
    expect(page.locator("#prompt")).to_have_value("a cat <lora:inky:0.5>")
    page.fill("#steps", "4")
    page.fill("#seed", "99")
    page.click("#generate")
    expect(page.locator("#gallery figure .seed").first).to_have_text("seed 99", timeout=30_000)
    src = page.locator("#gallery figure img").first.get_attribute("src")
    shown = np.asarray(decode_png(src.split(",", 1)[1]))
    body = {
        "prompt": "a cat <lora:inky:0.5>",
        "seed": 99,
        "steps": 4,
        "cfg_scale": float(page.input_value("#cfg_scale")),
    }
    api = httpx.post(f"{lora_server.url}/sdapi/v1/txt2img", json=body, timeout=60).json()["images"][0]
    np.testing.assert_array_equal(shown, np.asarray(decode_png(api)))
    body["prompt"] = "a cat"
    plain = httpx.post(f"{lora_server.url}/sdapi/v1/txt2img", json=body, timeout=60).json()["images"][0]
    assert not np.array_equal(shown, np.asarray(decode_png(plain)))
