"""Hostile clients: other people's jobs, cross-site pages, DNS rebinding, image bombs, slow bodies.

In-process tests use FastAPI's TestClient on the demo model; the wiring of ``sdlite serve``'s
options is checked on a real server process on loopback."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sdlite.server.app import Settings, create_app
from sdlite.server.guards import BodyLimit
from server_helpers import API_KEY, start_server, stop_server

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SMALL = {"prompt": "a red circle", "steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    """Loopback, one image per model call, the key from a file, a 1 s body timeout."""
    key_file = tmp_path_factory.mktemp("key") / "key.txt"
    key_file.write_text(API_KEY + "\n")
    served = start_server(
        "--max-batch", "1", "--batch-window-ms", "0", "--api-key-file", str(key_file), "--body-timeout", "1",
    )  # fmt: skip
    yield served
    stop_server(served)


@pytest.fixture(scope="module")
def client(demo_pipe):
    with TestClient(create_app(demo_pipe, Settings(allowed_hosts=("studio.lan",)))) as c:
        c.headers["host"] = "127.0.0.1:7860"
        yield c


def _png(size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def _wait_for(predicate, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _post_in_thread(url: str, body: dict, out: dict, name: str) -> threading.Thread:
    def post() -> None:
        out[name] = httpx.post(url, json=body, headers=AUTH, timeout=120)

    t = threading.Thread(target=post)
    t.start()
    return t


def _state(url: str, task: str) -> str:
    return httpx.get(f"{url}/sdapi/v1/progress", params={"id_task": task}, headers=AUTH).json()["state"][
        "job"
    ]


def test_interrupt_stops_only_the_callers_own_job_and_needs_key_and_same_site(hostile_server):
    url = hostile_server.url
    size = 4 * httpx.get(f"{url}/health").json()["default_size"]
    long = {"prompt": "long", "steps": 500, "seed": 1, "width": size, "height": size}
    out: dict = {}
    threads = [_post_in_thread(f"{url}/sdapi/v1/txt2img", {**long, "force_task_id": "alice"}, out, "alice")]
    try:
        _wait_for(lambda: _state(url, "alice") == "running", "alice's job to run")
        taken = httpx.post(f"{url}/sdapi/v1/txt2img", json={**SMALL, "force_task_id": "alice"}, headers=AUTH)
        assert taken.status_code == 409 and "already in use" in taken.json()["detail"]
        threads.append(
            _post_in_thread(f"{url}/sdapi/v1/txt2img", {**SMALL, "force_task_id": "bob"}, out, "bob")
        )
        _wait_for(lambda: _state(url, "bob") == "queued", "bob's job to queue")
        stop = f"{url}/sdapi/v1/interrupt"
        bare = httpx.post(stop, headers=AUTH)  # A1111's bare interrupt: it used to stop everybody's
        assert bare.status_code == 422 and bare.json()["detail"][0]["loc"] == ["body", "id_task"]
        assert httpx.post(stop, params={"id_task": "alice"}).status_code == 401
        cross = httpx.post(
            stop, params={"id_task": "alice"}, headers={**AUTH, "Origin": "http://evil.example"}
        )
        assert cross.status_code == 403 and "cross-site" in cross.json()["detail"]
        assert _state(url, "alice") == "running" and _state(url, "bob") == "queued"
        # Bob stops his own queued job (A1111 clients send a JSON body): it leaves the task table.
        assert httpx.post(stop, json={"id_task": "bob"}, headers=AUTH).json() == {"interrupted": 1}
        _wait_for(lambda: "bob" in out, "bob's answer")
        assert out["bob"].status_code == 409 and _state(url, "bob") == "unknown"  # not "queued" forever
        assert _state(url, "alice") == "running"
        assert httpx.post(stop, params={"id_task": "alice"}, headers=AUTH).json() == {"interrupted": 1}
    finally:
        httpx.post(f"{url}/sdapi/v1/interrupt", params={"id_task": "alice"}, headers=AUTH)
        for t in threads:
            t.join(120)
    assert out["alice"].status_code == 409 and _state(url, "alice") == "unknown"
    # Once her job is gone, its id is free again.
    again = {**SMALL, "force_task_id": "alice"}
    assert httpx.post(f"{url}/sdapi/v1/txt2img", json=again, headers=AUTH, timeout=60).status_code == 200


def test_loopback_server_refuses_other_host_names_and_reads_its_key_from_a_file(hostile_server):
    url = hostile_server.url
    assert f"on {url}/" in hostile_server.output()  # the real address, printed once bound
    rebound = httpx.get(f"{url}/health", headers={"Host": "evil.example:7860"})
    assert rebound.status_code == 400 and "--allowed-host" in rebound.json()["detail"]
    assert (
        httpx.post(
            f"{url}/sdapi/v1/txt2img", json=SMALL, headers={**AUTH, "Host": "evil.example"}
        ).status_code
        == 400
    )
    for host in ("localhost", "127.0.0.1:80", "[::1]:7860"):
        assert httpx.get(f"{url}/health", headers={"Host": host}).status_code == 200, host
    assert httpx.get(f"{url}/sdapi/v1/samplers").status_code == 401
    assert httpx.get(f"{url}/sdapi/v1/samplers", headers=AUTH).status_code == 200


def test_slow_request_body_gets_408_and_frees_the_connection(hostile_server):
    port = int(hostile_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(
            b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            + API_KEY.encode()
            + b'\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"prompt": '
        )  # ... and nothing more: the rest of the body never comes
        answer = b""
        for _ in range(100):  # until the server closes the connection (it says "connection: close")
            chunk = s.recv(4096)  # the server's --body-timeout (1 s) answers; the 30 s is a safety net
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"--body-timeout" in answer


def test_body_limit_times_out_a_body_that_never_arrives():
    sent: list[dict] = []
    never = asyncio.Event()

    async def app(scope, receive, send):
        raise AssertionError("the route must not run")

    async def receive():
        await never.wait()

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/sdapi/v1/txt2img", "headers": []}
    asyncio.run(BodyLimit(app, 1024, timeout=0.05)(scope, receive, send))
    assert sent[0]["status"] == 408 and b"--body-timeout" in sent[1]["body"]


def test_img2img_init_images_are_judged_by_their_header(client):
    url = "/sdapi/v1/img2img"

    def refused(images: list[str]) -> dict:
        r = client.post(url, json={"prompt": "x", "steps": 2, "init_images": images})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"][0]
        assert not re.search("0x[0-9a-f]{6}|object at", detail["msg"]), detail  # no reprs, no addresses
        return detail

    bomb = _png((9000, 9000), "1")  # ~10 KB of base64, 81 M pixels decoded
    detail = refused([_png((64, 64)), bomb])
    assert (
        detail["loc"] == ["body", "init_images", 1]
        and "at most" in detail["msg"]
        and "9000x9000" in detail["msg"]
    )
    together = refused([_png((3000, 3000), "1")] * 2)  # each fits, both together do not
    assert together["loc"] == ["body", "init_images"] and "in all" in together["msg"]
    for fmt in ("TIFF", "BMP", "GIF"):
        detail = refused([_png((64, 64), fmt=fmt)])
        assert detail["loc"] == ["body", "init_images", 0] and "PNG, JPEG or WebP" in detail["msg"]
    truncated = base64.b64encode(base64.b64decode(_png((64, 64)))[:70]).decode()
    assert "truncated or corrupt" in refused([truncated])["msg"]
    ok = client.post(
        url, json={"prompt": "x", "steps": 2, "seed": 1, "init_images": [_png((64, 64), fmt="WEBP")]}
    )
    assert ok.status_code == 200, ok.text


def test_head_health_and_content_type_and_cross_site_posts(client):
    assert client.head("/health").status_code == 200
    assert client.head("/").status_code == 200
    form = client.post(
        "/sdapi/v1/txt2img",
        content=b"prompt=x",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415 and "application/json" in form.json()["detail"]
    text = client.post(
        "/v1/images/generations", content=b'{"prompt": "x"}', headers={"content-type": "text/plain"}
    )
    assert text.status_code == 415  # what a cross-site "simple request" would have to send
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        r = client.post("/sdapi/v1/interrupt", params={"id_task": "x"}, headers=headers)
        assert r.status_code == 403, headers
    for origin in ("http://127.0.0.1:7860", "http://studio.lan:7860"):  # the page itself; an allowed name
        r = client.post("/sdapi/v1/interrupt", params={"id_task": "x"}, headers={"Origin": origin})
        assert r.status_code == 200 and r.json() == {"interrupted": 0}, origin
    assert (
        client.get("/health", headers={"Origin": "http://evil.example"}).status_code == 200
    )  # reads: no state


def test_host_check_allows_loopback_and_the_given_names_only(client):
    assert client.get("/health", headers={"host": "studio.lan:7860"}).status_code == 200
    assert client.get("/health", headers={"host": "localhost"}).status_code == 200
    for host in ("evil.example", "studio.lan.evil.example", "127.0.0.1.nip.io", ""):
        assert client.get("/health", headers={"host": host}).status_code == 400, host
