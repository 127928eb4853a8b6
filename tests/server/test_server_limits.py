"""The guards over real HTTP: API key (401), body size (413), bounded queue (429), cancelling."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
from server_helpers import API_KEY, metric

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SMALL = {"prompt": "a red circle", "steps": 2, "seed": 3}


def test_api_key_is_required_except_for_page_and_health(guarded_server):
    url = guarded_server.url
    assert httpx.post(f"{url}/sdapi/v1/txt2img", json=SMALL).status_code == 401
    wrong = httpx.post(f"{url}/sdapi/v1/txt2img", json=SMALL, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["detail"]
    assert httpx.post(f"{url}/v1/images/generations", json={"prompt": "x"}).status_code == 401
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.get(f"{url}/sdapi/v1/samplers").status_code == 401
    assert httpx.get(f"{url}/health").status_code == 200 and httpx.get(f"{url}/health").json()["auth"] is True
    assert httpx.get(f"{url}/").status_code == 200
    assert httpx.post(f"{url}/sdapi/v1/txt2img", json=SMALL, headers=AUTH, timeout=60).status_code == 200
    # A1111 clients send HTTP Basic auth (--api-auth user:password): the key is the password.
    basic = httpx.post(f"{url}/sdapi/v1/txt2img", json=SMALL, auth=("anyone", API_KEY), timeout=60)
    assert basic.status_code == 200
    assert httpx.post(f"{url}/sdapi/v1/txt2img", json=SMALL, auth=(API_KEY, "x")).status_code == 401


def test_oversized_bodies_get_413(guarded_server):
    url = f"{guarded_server.url}/sdapi/v1/img2img"
    big = {"prompt": "x", "init_images": ["A" * (70 * 1024)]}
    r = httpx.post(url, json=big, headers=AUTH)
    assert r.status_code == 413 and "--max-body-bytes" in r.json()["detail"]

    def chunked():  # no Content-Length: the limit is enforced while reading
        yield b'{"prompt": "x", "init_images": ["'
        for _ in range(20):
            yield b"A" * 4096
        yield b'"]}'

    r = httpx.post(url, content=chunked(), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413
    # Just under the limit is read and judged on its fields.
    ok = httpx.post(url, json={"prompt": "x", "init_images": ["A" * (60 * 1024)]}, headers=AUTH)
    assert ok.status_code == 422 and ok.json()["detail"][0]["loc"] == ["body", "init_images", 0]


async def _flood(url: str, n: int, body: dict) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120, headers=AUTH) as client:
        return await asyncio.gather(*(client.post(f"{url}/sdapi/v1/txt2img", json=body) for _ in range(n)))


def test_overload_gets_429_and_the_server_stays_up_and_bounded(guarded_server):
    url = guarded_server.url
    # Warm up (first-call allocations) before the memory baseline.
    assert httpx.post(f"{url}/sdapi/v1/txt2img", json=SMALL, headers=AUTH, timeout=60).status_code == 200
    rss_before = guarded_server.rss_kib()
    rejected = metric(httpx.get(f"{url}/metrics", headers=AUTH).text, "sdlite_requests_rejected_total")

    slow = {"prompt": "a red circle", "steps": 25, "seed": -1}  # ~0.3 s each, one at a time
    responses = asyncio.run(_flood(url, 16, slow))  # 4x the queue of 4
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    # One running and four waiting fit; most of the rest arrive while those are still queued.
    assert codes.count(200) >= 5 and codes.count(429) >= 1, codes
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
        else:
            assert len(r.json()["images"]) == 1

    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    text = httpx.get(f"{url}/metrics", headers=AUTH).text
    assert metric(text, "sdlite_requests_rejected_total") - rejected == codes.count(429)
    assert metric(text, "sdlite_queue_depth") == 0
    grown_mib = (guarded_server.rss_kib() - rss_before) / 1024
    assert grown_mib < 64, f"RSS grew by {grown_mib:.0f} MiB under overload"


def test_queued_request_whose_client_leaves_is_dropped_and_interrupt_stops_the_running_one(guarded_server):
    url = guarded_server.url
    size = 4 * httpx.get(f"{url}/health").json()["default_size"]
    long = {"prompt": "long", "steps": 500, "seed": 1, "width": size, "height": size, "force_task_id": "long"}
    result: dict = {}

    def run_long() -> None:
        result["r"] = httpx.post(f"{url}/sdapi/v1/txt2img", json=long, headers=AUTH, timeout=120)

    runner = threading.Thread(target=run_long)
    runner.start()
    try:
        while httpx.get(f"{url}/sdapi/v1/progress", headers=AUTH).json()["state"]["job"] != "running":
            time.sleep(0.05)
        # This one waits behind the long job (max-batch 1), then its client gives up.
        try:
            httpx.post(
                f"{url}/sdapi/v1/txt2img", json=SMALL, headers=AUTH, timeout=httpx.Timeout(60, read=1.0)
            )
            raise AssertionError("expected the client to give up while queued")
        except httpx.ReadTimeout:
            pass
        deadline = time.monotonic() + 5
        while httpx.get(f"{url}/health").json()["queue"] != 0:
            assert time.monotonic() < deadline, "the abandoned request stayed in the queue"
            time.sleep(0.05)
        # A1111's interrupt, naming the running job, stops it; its client hears 409.
        stopped = time.monotonic()
        stop = httpx.post(f"{url}/sdapi/v1/interrupt", params={"id_task": "long"}, headers=AUTH)
        assert stop.json()["interrupted"] == 1
    finally:
        runner.join(120)
    assert result["r"].status_code == 409 and "interrupt" in result["r"].json()["detail"]
    # The model call itself stopped: the single worker is free again for the next request.
    assert httpx.post(f"{url}/sdapi/v1/txt2img", json=SMALL, headers=AUTH, timeout=60).status_code == 200
    assert time.monotonic() - stopped < 10
