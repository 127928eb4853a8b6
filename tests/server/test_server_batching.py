"""Dynamic batching over real HTTP: concurrent requests share model calls, and each answer is the one
the request gets when served alone; a client that goes away stops its work."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
from server_helpers import decode_png, metric

STEPS = 4


def _batches(metrics: str) -> tuple[float, float]:
    """(model calls so far, of which with more than one image)."""
    total = metric(metrics, "sdlite_batch_size_images_count")
    return total, total - metric(metrics, 'sdlite_batch_size_images_bucket{le="1"}')


def _request(i: int) -> dict:
    # Mixed prompts, seeds, batch sizes and endpoints: all compatible (same size, steps, sampler, cfg).
    return {"prompt": f"shape number {i}", "seed": 1000 + 17 * i, "steps": STEPS, "sampler_name": "Euler a"}


async def _concurrently(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(*(client.post(f"{url}/sdapi/v1/txt2img", json=b) for b in bodies))


def test_concurrent_requests_are_batched_and_equal_served_alone(server):
    bodies = [_request(i) for i in range(8)]
    bodies[3]["batch_size"] = 2  # a request with two images counts as two in the batch
    before = _batches(httpx.get(f"{server.url}/metrics").text)
    together = asyncio.run(_concurrently(server.url, bodies))
    after = _batches(httpx.get(f"{server.url}/metrics").text)
    assert all(r.status_code == 200 for r in together), [r.text for r in together]
    calls, merged = after[0] - before[0], after[1] - before[1]
    assert merged >= 1, f"no model call had more than one image ({calls} calls for 9 images)"
    assert calls < 9

    for body, r in zip(bodies, together, strict=True):
        alone = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=60)
        assert alone.status_code == 200, alone.text
        assert json.loads(alone.json()["info"])["all_seeds"] == json.loads(r.json()["info"])["all_seeds"]
        assert len(r.json()["images"]) == body.get("batch_size", 1)
        for a, b in zip(r.json()["images"], alone.json()["images"], strict=True):
            im_a, im_b = decode_png(a), decode_png(b)
            assert im_a.text == im_b.text
            np.testing.assert_array_equal(np.asarray(im_a), np.asarray(im_b))
    # Served alone, one after the other: every call had one request's images.
    final = _batches(httpx.get(f"{server.url}/metrics").text)
    assert final[0] - after[0] == len(bodies) and final[1] - after[1] == 1  # the batch_size=2 request


def _progress(url: str) -> dict:
    return httpx.get(f"{url}/sdapi/v1/progress").json()


def test_client_that_goes_away_stops_its_work(server):
    cancelled = metric(httpx.get(f"{server.url}/metrics").text, "sdlite_requests_cancelled_total")
    # 500 steps at 4x the model's size: a minute of work if it ran to the end.
    size = 4 * httpx.get(f"{server.url}/health").json()["default_size"]
    body = {
        "prompt": "a long one",
        "steps": 500,
        "seed": 1,
        "sampler_name": "Euler",
        "width": size,
        "height": size,
    }
    try:
        r = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=httpx.Timeout(60, read=2.0))
        raise AssertionError(f"expected the client to give up first, got {r.status_code}: {r.text[:200]}")
    except httpx.ReadTimeout:
        pass  # the client hangs up: its connection closes
    gone = time.monotonic()
    # It was running (the server had begun sampling); now the model call must stop within seconds.
    while _progress(server.url)["state"]["job"] != "idle":
        assert time.monotonic() - gone < 10, f"still running: {_progress(server.url)}"
        time.sleep(0.1)
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "sdlite_requests_cancelled_total") == cancelled + 1
    # The server goes on serving.
    r = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=_request(0), timeout=60)
    assert r.status_code == 200


def test_a_request_larger_than_max_batch_is_split_across_model_calls(server, demo_pipe):
    before = _batches(httpx.get(f"{server.url}/metrics").text)
    body = {"prompt": "many", "seed": 77, "steps": 2, "batch_size": 5, "n_iter": 2, "sampler_name": "Euler a"}
    r = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=60)
    assert r.status_code == 200, r.text
    after = _batches(httpx.get(f"{server.url}/metrics").text)
    assert after[0] - before[0] == 2  # 10 images, --max-batch 8: two model calls
    assert json.loads(r.json()["info"])["all_seeds"] == list(range(77, 87))
    ref = demo_pipe(
        "many",
        seed=77,
        num_inference_steps=2,
        num_images_per_prompt=10,
        sampler="Euler a",
    )
    for b64, want in zip(r.json()["images"], ref.images, strict=True):
        np.testing.assert_array_equal(np.asarray(decode_png(b64)), np.asarray(want))
