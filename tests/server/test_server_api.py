"""AUTOMATIC1111 and OpenAI round trips over real HTTP, checked against the pipeline in-process."""

from __future__ import annotations

import base64
import io
import json
import zlib

import httpx
import numpy as np
from PIL import Image
from server_helpers import decode_png, metric

STEPS = 4


def _pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"))


def test_a1111_txt2img_round_trip(server, demo_pipe):
    body = {
        "prompt": "a red circle",
        "negative_prompt": "blue",
        "steps": STEPS,
        "cfg_scale": 6,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",  # newer A1111 clients send the schedule apart from the name
        "seed": 1234,
        "batch_size": 2,
        "styles": [],  # A1111 fields sdlite does not use are accepted
        "restore_faces": False,
    }
    r = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["images"]) == 2
    assert out["parameters"]["prompt"] == "a red circle" and out["parameters"]["seed"] == 1234
    info = json.loads(out["info"])
    assert info["all_seeds"] == [1234, 1235] and info["seed"] == 1234
    assert info["width"] == info["height"] == demo_pipe.default_size

    ref = demo_pipe(
        "a red circle",
        negative_prompt="blue",
        num_inference_steps=STEPS,
        guidance_scale=6,
        sampler="DPM++ 2M Karras",
        seed=[1234, 1235],
        num_images_per_prompt=2,
    )
    for i, b64 in enumerate(out["images"]):
        im = decode_png(b64)
        assert im.format == "PNG" and im.size == (demo_pipe.default_size,) * 2
        text = im.text["parameters"]
        assert text == ref.parameters[i] == info["infotexts"][i]
        assert (
            f"Seed: {1234 + i}" in text
            and "Sampler: DPM++ 2M Karras" in text
            and "Negative prompt: blue" in text
        )
        np.testing.assert_array_equal(_pixels(im), _pixels(ref.images[i]))


def test_a1111_img2img_round_trip(server, demo_pipe):
    init = demo_pipe("a green square", num_inference_steps=STEPS, seed=7).images[0]
    buf = io.BytesIO()
    init.save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    for prefix in ("data:image/png;base64,", ""):
        body = {
            "prompt": "a blue square",
            "init_images": [prefix + b64],
            "denoising_strength": 0.5,
            "steps": STEPS * 2,
            "sampler_name": "Euler a",
            "seed": 99,  # guidance left out on both sides: the model's preset
        }
        r = httpx.post(f"{server.url}/sdapi/v1/img2img", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["parameters"]["init_images"] is None
        assert json.loads(out["info"])["denoising_strength"] == 0.5
        im = decode_png(out["images"][0])
        assert "Denoising strength: 0.5" in im.text["parameters"]
        ref = demo_pipe(
            "a blue square",
            image=init,
            strength=0.5,
            num_inference_steps=STEPS * 2,
            sampler="Euler a",
            seed=99,
        )
        np.testing.assert_array_equal(_pixels(im), _pixels(ref.images[0]))


def test_openai_images_round_trip(server, demo_pipe):
    size = demo_pipe.default_size
    body = {"prompt": "a yellow triangle", "n": 2, "size": f"{size}x{size}", "model": "dall-e-3", "seed": 5}
    r = httpx.post(f"{server.url}/v1/images/generations", json={**body, "steps": STEPS}, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert isinstance(out["created"], int) and len(out["data"]) == 2
    ref = demo_pipe("a yellow triangle", num_inference_steps=STEPS, seed=[5, 6], num_images_per_prompt=2)
    for i, item in enumerate(out["data"]):
        assert item["revised_prompt"] == "a yellow triangle"
        im = decode_png(item["b64_json"])
        assert im.size == (size, size) and f"Seed: {5 + i}" in im.text["parameters"]
        np.testing.assert_array_equal(_pixels(im), _pixels(ref.images[i]))

    r = httpx.post(f"{server.url}/v1/images/generations", json={**body, "response_format": "url"}, timeout=30)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "response_format"]


def _loc(r: httpx.Response) -> list:
    assert r.status_code == 422, r.text
    return r.json()["detail"][0]["loc"]


def test_invalid_fields_get_422_naming_the_field(server):
    url = f"{server.url}/sdapi/v1/txt2img"
    assert _loc(httpx.post(url, json={"prompt": "x", "steps": "many"})) == ["body", "steps"]
    assert _loc(httpx.post(url, json={"prompt": "x", "steps": 0})) == ["body", "steps"]
    assert _loc(httpx.post(url, json={"prompt": "x", "width": 30})) == [
        "body",
        "width",
    ]  # not a multiple of 4
    assert _loc(httpx.post(url, json={"prompt": "x", "sampler_name": "Euler z"})) == ["body", "sampler_name"]
    assert _loc(httpx.post(url, json={"prompt": "x", "batch_size": 65})) == ["body", "batch_size"]
    img2img = f"{server.url}/sdapi/v1/img2img"
    assert _loc(httpx.post(img2img, json={"prompt": "x", "init_images": ["not base64!"]})) == [
        "body",
        "init_images",
        0,
    ]
    assert _loc(httpx.post(img2img, json={"prompt": "x", "init_images": []})) == ["body", "init_images"]
    openai = f"{server.url}/v1/images/generations"
    assert _loc(httpx.post(openai, json={"prompt": "x", "size": "big"})) == ["body", "size"]
    assert _loc(httpx.post(openai, json={"prompt": "x", "size": "63x64"})) == ["body", "size"]
    assert _loc(httpx.post(openai, json={"prompt": "x", "n": 11})) == ["body", "n"]
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_a1111_listing_endpoints(server):
    samplers = httpx.get(f"{server.url}/sdapi/v1/samplers").json()
    names = [s["name"] for s in samplers]
    assert {"Euler a", "DPM++ 2M Karras", "UniPC"} <= set(names)
    models = httpx.get(f"{server.url}/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in models] == ["demo"]
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["auth"] is False
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_metrics_are_prometheus_histograms_and_counters(server):
    httpx.post(f"{server.url}/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2}, timeout=60)
    r = httpx.get(f"{server.url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = r.text.splitlines()
    types = dict(line.split()[2:4] for line in lines if line.startswith("# TYPE"))
    assert types == {
        "sdlite_queue_depth": "gauge",
        "sdlite_batch_size_images": "histogram",
        "sdlite_request_latency_seconds": "histogram",
        "sdlite_images_generated_total": "counter",
        "sdlite_requests_rejected_total": "counter",
        "sdlite_requests_cancelled_total": "counter",
        "sdlite_requests_failed_total": "counter",
    }
    for name in ("sdlite_batch_size_images", "sdlite_request_latency_seconds"):
        buckets = [
            (ln.split('le="')[1].split('"')[0], float(ln.split()[-1]))
            for ln in lines
            if ln.startswith(name + "_bucket")
        ]
        counts = [c for _, c in buckets]
        assert buckets[-1][0] == "+Inf" and counts == sorted(counts) and counts[-1] >= 1
        assert counts[-1] == metric(r.text, f"{name}_count") and metric(r.text, f"{name}_sum") > 0
    assert metric(r.text, "sdlite_images_generated_total") >= 1


def test_left_out_settings_come_from_the_models_preset(server, demo_pipe):
    preset = demo_pipe.preset
    r = httpx.post(f"{server.url}/sdapi/v1/txt2img", json={"prompt": "a dot", "seed": 3}, timeout=60)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert (info["steps"], info["cfg_scale"], info["sampler_name"]) == (
        preset.steps,
        preset.guidance,
        preset.sampler,
    )
    assert httpx.get(f"{server.url}/health").json()["defaults"]["steps"] == preset.steps
    ref = demo_pipe("a dot", seed=3)  # the pipeline's own defaults: the same preset
    im = decode_png(r.json()["images"][0])
    assert im.text["parameters"] == ref.parameters[0]
    np.testing.assert_array_equal(_pixels(im), _pixels(ref.images[0]))


def _bomb_png() -> str:
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    raw[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR: a 1x1 image claiming 30000x30000
    raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")  # a valid chunk, a bomb by its header
    return base64.b64encode(bytes(raw)).decode()


def _small_png(side: int = 64) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), "red").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


TXT, IMG, OAI = "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/v1/images/generations"
JSON = {"content-type": "application/json"}
# (route, raw JSON body, the loc the 422 must give): every rule's error names the field the client
# sent, in that route's own vocabulary (cfg_scale vs guidance_scale, sampler_name vs sampler, ...).
FIELD_TABLE = [
    (TXT, '{"cfg_scale": NaN}', ["cfg_scale"]),
    (TXT, '{"cfg_scale": 101}', ["cfg_scale"]),
    (TXT, '{"steps": 0}', ["steps"]),
    (TXT, '{"batch_size": 0}', ["batch_size"]),
    (TXT, '{"batch_size": 8, "n_iter": 9}', ["n_iter"]),
    (TXT, '{"sampler_name": "Euler z"}', ["sampler_name"]),
    (TXT, '{"sampler_name": "\\ud800"}', ["sampler_name"]),
    (TXT, '{"sampler_name": "Euler", "scheduler": "\\udfff"}', ["scheduler"]),
    (TXT, '{"seed": -2}', ["seed"]),
    (TXT, '{"seed": 18446744073709551615, "batch_size": 2}', ["seed"]),
    (TXT, '{"width": 30}', ["width"]),
    (TXT, '{"height": 30}', ["height"]),
    (TXT, '{"width": 8192, "height": 8192}', ["width"]),
    (TXT, '{"negative_prompt": "\\ud800"}', ["negative_prompt"]),
    (TXT, json.dumps({"force_task_id": "t" * 200}), ["force_task_id"]),
    (IMG, json.dumps({"init_images": [_small_png()], "denoising_strength": 0}), ["denoising_strength"]),
    (IMG, json.dumps({"init_images": [_small_png()], "denoising_strength": 0.1, "steps": 2}),
     ["denoising_strength"]),
    (IMG, json.dumps({"init_images": [_bomb_png()]}), ["init_images", 0]),
    # Over the pixel budget by the init image's own size (no width or height sent):
    (IMG, json.dumps({"init_images": [_small_png(2048)]}), ["init_images"]),
    (IMG, json.dumps({"init_images": [_small_png(2048)], "width": 2048}), ["width"]),
    (OAI, '{"guidance_scale": NaN}', ["guidance_scale"]),
    (OAI, '{"guidance_scale": -1}', ["guidance_scale"]),
    (OAI, '{"n": 0}', ["n"]),
    (OAI, '{"size": "8192x8192"}', ["size"]),
    (OAI, '{"size": "30x30"}', ["size"]),
    (OAI, '{"sampler": "nope"}', ["sampler"]),
    (OAI, '{"steps": 0}', ["steps"]),
    (OAI, '{"seed": -1}', ["seed"]),
    (OAI, json.dumps({"negative_prompt": "n" * 40000}), ["negative_prompt"]),
    (OAI, '{"model": "\\ud800"}', ["model"]),
    (OAI, '{"prompt": ""}', ["prompt"]),
]  # fmt: skip


def test_field_errors_name_the_field_the_client_sent(server):
    for route, raw, loc in FIELD_TABLE:
        # Sent as raw text: NaN and lone surrogates arrive as clients send them.
        text = raw if '"prompt"' in raw else raw.replace("{", '{"prompt": "x", ', 1)
        r = httpx.post(f"{server.url}{route}", content=text.encode(), headers=JSON, timeout=30)
        assert r.status_code == 422, (route, raw[:80], r.status_code, r.text[:300])
        detail = r.json()["detail"]
        assert [d["loc"] for d in detail] == [["body", *loc]], (route, raw[:80], detail)
        msg = detail[0]["msg"]
        if " must be " in msg:  # a rule's wording starts with the field it names
            assert str(loc[0]) in msg.split(" must be ")[0], (route, raw[:80], msg)


def test_lone_surrogate_sampler_or_scheduler_is_refused_before_generating(server):
    before = metric(httpx.get(f"{server.url}/metrics").text, "sdlite_images_generated_total")
    for field in ("sampler_name", "scheduler"):
        raw = '{"prompt": "x", "steps": 2, "%s": "Euler \\ud800"}' % field  # noqa: UP031
        r = httpx.post(f"{server.url}{TXT}", content=raw.encode(), headers=JSON)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], r.text
    after = metric(httpx.get(f"{server.url}/metrics").text, "sdlite_images_generated_total")
    assert after == before  # no image was made for either


def test_a_huge_prompt_is_refused_in_a_small_response(server):
    body = {"prompt": "x" * 2**20, "negative_prompt": "y" * 2**20, "steps": 1, "batch_size": 64}
    r = httpx.post(f"{server.url}{TXT}", json=body, timeout=60)
    assert r.status_code == 422
    assert len(r.content) < 4096, f"the 422 echoes {len(r.content)} bytes of a 2 MB body"
    assert [d["loc"] for d in r.json()["detail"]] == [["body", "prompt"], ["body", "negative_prompt"]]


def test_a1111_info_writes_non_ascii_prompts_as_utf8_not_escapes(server):
    prompt, n = "\u732b" * 1000, 4  # CJK: 3 bytes in UTF-8, 6 as a \\uXXXX escape
    body = {"prompt": prompt, "steps": 1, "batch_size": n, "seed": 1}
    r = httpx.post(f"{server.url}{TXT}", json=body, timeout=60)
    assert r.status_code == 200, r.text[:300]
    info = r.json()["info"]
    assert json.loads(info)["all_prompts"] == [prompt] * n
    # The prompt appears once, once per image in all_prompts and once per image in infotexts.
    copies = 1 + 2 * n
    assert len(info.encode("utf-8")) <= copies * len(prompt.encode("utf-8")) + 4096


def test_bodies_json_cannot_read_get_422_not_400(server):
    for raw in (
        b'{"prompt": "\xff\xfe"}',  # not UTF-8
        b"[" * 100_000 + b"]" * 100_000,  # nested past Python's recursion limit
        b'{"prompt": "x", "seed": 1' + b"0" * 5000 + b"}",  # an int past Python's 4300 digits
        b'{"prompt": "x", "steps": ',  # cut short
    ):
        r = httpx.post(f"{server.url}{TXT}", content=raw, headers=JSON, timeout=30)
        assert r.status_code == 422, (raw[:40], r.status_code, r.text[:200])
        detail = r.json()["detail"]
        assert detail[0]["loc"][0] == "body" and len(r.content) < 4096, (raw[:40], detail)
