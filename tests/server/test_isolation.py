"""No request harms another: a hostile request sent with good ones, close enough in time to share
their dynamic batch, gets its own 4xx, and every good request's images are byte for byte the ones
it gets when the hostile request was never sent (issue #18 item 1 and the 1-in-8 acceptance test)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import zlib

import httpx
import pytest
from PIL import Image

STEPS = 3
TXT2IMG = "/sdapi/v1/txt2img"


def _good(i: int) -> dict:
    # One BatchKey for all of them (size, steps, sampler, guidance): they can share a model call.
    return {"prompt": f"a shape, number {i}", "seed": 500 + 11 * i, "steps": STEPS, "sampler_name": "Euler a"}


def _bomb() -> str:
    """A small PNG whose header claims far more pixels than any input may have."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    raw[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR width and height
    raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")  # a valid chunk, a bomb by its header
    return base64.b64encode(bytes(raw)).decode()


# (route, raw JSON body): raw text, so that NaN and lone surrogates travel as clients send them.
HOSTILE = {
    "lone surrogate prompt": (TXT2IMG, '{"prompt": "a \\ud800 shape", "steps": 3, "seed": 1}'),
    "lone surrogate scheduler": (TXT2IMG, '{"prompt": "x", "steps": 3, "scheduler": "\\udfff"}'),
    "lone surrogate sampler": (TXT2IMG, '{"prompt": "x", "steps": 3, "sampler_name": "Euler \\ud800"}'),
    "NaN guidance": (TXT2IMG, '{"prompt": "x", "steps": 3, "cfg_scale": NaN}'),
    "control character": (TXT2IMG, '{"prompt": "x\\u0000y", "steps": 3}'),
    "8192 wide": (TXT2IMG, '{"prompt": "x", "steps": 3, "width": 8192, "height": 8192}'),
    "1 MB prompt x 64": (TXT2IMG, json.dumps({"prompt": "x" * 2**20, "steps": 3, "batch_size": 64})),
    "too many images": (TXT2IMG, '{"prompt": "x", "steps": 3, "batch_size": 64, "n_iter": 2}'),
    "not JSON": (TXT2IMG, '{"prompt": "x", "steps": '),
    "image bomb": ("/sdapi/v1/img2img", json.dumps({"prompt": "x", "steps": 3, "init_images": [_bomb()]})),
    "OpenAI long negative": (
        "/v1/images/generations",
        json.dumps({"prompt": "x", "steps": 3, "negative_prompt": "n" * 40000}),
    ),
}


async def _send(url: str, good: list[dict], hostile: tuple[str, str] | None) -> list[httpx.Response]:
    """The good requests and (when given) the hostile one, in the middle, all at once."""
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        calls = [client.post(TXT2IMG, json=body) for body in good]
        if hostile is not None:
            route, raw = hostile
            calls.insert(len(calls) // 2, client.post(route, content=raw.encode(), headers=headers))
        return await asyncio.gather(*calls)


def _images(responses: list[httpx.Response]) -> list[list[str]]:
    for r in responses:
        assert r.status_code == 200, r.text[:500]
    return [r.json()["images"] for r in responses]  # base64 PNGs: compared byte for byte


@pytest.fixture(scope="module")
def alone(server) -> list[list[str]]:
    """The seven good requests sent together without any hostile one."""
    return _images(asyncio.run(_send(server.url, [_good(i) for i in range(7)], None)))


def test_lone_surrogate_prompt_gets_422_and_its_batch_mates_are_unchanged(server, alone):
    responses = asyncio.run(_send(server.url, [_good(i) for i in range(7)], HOSTILE["lone surrogate prompt"]))
    bad = responses.pop(3)
    assert bad.status_code == 422, bad.text
    assert bad.json()["detail"][0]["loc"] == ["body", "prompt"]
    assert _images(responses) == alone


@pytest.mark.parametrize("kind", [k for k in HOSTILE if k != "lone surrogate prompt"])
def test_one_hostile_request_in_eight_leaves_the_other_seven_byte_identical(server, alone, kind):
    responses = asyncio.run(_send(server.url, [_good(i) for i in range(7)], HOSTILE[kind]))
    bad = responses.pop(3)
    assert 400 <= bad.status_code < 500, (kind, bad.status_code, bad.text[:300])
    assert len(bad.content) < 8192, f"{kind}: the error echoes {len(bad.content)} bytes"
    assert _images(responses) == alone
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
