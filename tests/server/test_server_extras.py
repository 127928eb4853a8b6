"""LoRAs, embeddings and live previews over real HTTP (``--lora-dir``, ``--embeddings-dir``,
``--preview-every``): tags resolve to the Python API's ``loras=``, different LoRA sets never share
a model call, and /sdapi/v1/progress shows the running job's picture."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file
from server_helpers import Served, decode_png, metric, start_server, stop_server, write_lora

STEPS = 4


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("extras")
    (root / "loras" / "sub").mkdir(parents=True)
    (root / "embeddings").mkdir()
    write_lora(root / "loras" / "inky.safetensors", 1)
    write_lora(root / "loras" / "sub" / "grainy.safetensors", 2, conv=True)
    vectors = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    save_file({"emb_params": vectors}, str(root / "embeddings" / "shiny.safetensors"))
    return root / "loras", root / "embeddings"


@pytest.fixture(scope="module")
def extras_server(folders) -> Iterator[Served]:
    loras, embeddings = folders
    served = start_server(
        "--lora-dir", str(loras), "--embeddings-dir", str(embeddings), "--preview-every", "1",
        "--max-batch", "8", "--batch-window-ms", "300",
    )  # fmt: skip
    yield served
    stop_server(served)


def _txt2img(url: str, prompt: str, seed: int = 7, **extra) -> httpx.Response:
    body = {"prompt": prompt, "seed": seed, "steps": STEPS, "sampler_name": "Euler a", "cfg_scale": 7.0}
    return httpx.post(f"{url}/sdapi/v1/txt2img", json={**body, **extra}, timeout=120)


def _pixels(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(decode_png(r.json()["images"][0]))


def test_loras_are_listed_in_a1111_shape_and_refreshed(extras_server, folders):
    listed = httpx.get(f"{extras_server.url}/sdapi/v1/loras").json()
    assert sorted(e["name"] for e in listed) == ["grainy", "inky"]
    inky = next(e for e in listed if e["name"] == "inky")
    assert inky["alias"] == "inky-alias" and inky["path"].endswith("inky.safetensors")
    assert inky["metadata"]["ss_output_name"] == "inky-alias"
    write_lora(folders[0] / "late.safetensors", 4)
    try:
        assert "late" not in [e["name"] for e in httpx.get(f"{extras_server.url}/sdapi/v1/loras").json()]
        assert httpx.post(f"{extras_server.url}/sdapi/v1/refresh-loras").status_code == 200
        names = [e["name"] for e in httpx.get(f"{extras_server.url}/sdapi/v1/loras").json()]
        assert "late" in names
        assert _txt2img(extras_server.url, "a cat <lora:late:1>").status_code == 200
    finally:
        (folders[0] / "late.safetensors").unlink()
        httpx.post(f"{extras_server.url}/sdapi/v1/refresh-loras")


def test_embeddings_are_listed_in_a1111_shape_and_used(extras_server, folders, demo_pipe):
    got = httpx.get(f"{extras_server.url}/sdapi/v1/embeddings").json()
    assert set(got) == {"loaded", "skipped"}
    assert got["loaded"]["shiny"]["shape"] == 64 and got["loaded"]["shiny"]["vectors"] == 2
    kw = dict(num_inference_steps=STEPS, seed=7, sampler="Euler a", guidance_scale=7.0)
    without = np.asarray(demo_pipe("a shiny cat", **kw).images[0])
    demo_pipe.load_textual_inversion(folders[1] / "shiny.safetensors", token="shiny")
    expected = np.asarray(demo_pipe("a shiny cat", **kw).images[0])
    assert not np.array_equal(expected, without)
    np.testing.assert_array_equal(_pixels(_txt2img(extras_server.url, "a shiny cat")), expected)


@pytest.mark.parametrize(
    "body,field",
    [
        ({"prompt": "a cat <lora:nosuch:1>"}, "prompt"),
        ({"prompt": "a cat", "negative_prompt": "<lora:nosuch:0.5>"}, "negative_prompt"),
        ({"prompt": "a cat <lora:/etc/inky.safetensors:1>"}, "prompt"),
        ({"prompt": "a cat <lora:inky:lots>"}, "prompt"),
        ({"prompt": "a cat <hypernet:inky:1>"}, "prompt"),
        ({"prompt": "<lora:inky:1e308> <lora:inky:1e308>"}, "prompt"),
    ],
    ids=["unknown", "unknown-negative", "path", "weight", "hypernet", "sum"],
)
def test_bad_lora_tags_are_a_422_naming_the_field(extras_server, body, field):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, format="PNG")
    init = {"steps": 2, "init_images": [base64.b64encode(buf.getvalue()).decode("ascii")]}
    routes = (
        ("/sdapi/v1/txt2img", {"steps": 1}),
        ("/sdapi/v1/img2img", init),
        ("/v1/images/generations", {}),
    )
    for route, extra in routes:
        r = httpx.post(f"{extras_server.url}{route}", json={**body, **extra}, timeout=60)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", field], r.text


def test_a_lora_tag_gives_the_python_apis_image(extras_server, folders, demo_pipe):
    if "inky" not in demo_pipe.lora_names:
        demo_pipe.load_lora_weights(folders[0] / "inky.safetensors", adapter_name="inky")
    kw = dict(num_inference_steps=STEPS, seed=7, sampler="Euler a", guidance_scale=7.0)
    expected = np.asarray(demo_pipe("a cat", loras={"inky": 0.8}, **kw).images[0])
    plain = np.asarray(demo_pipe("a cat", **kw).images[0])
    assert not np.array_equal(expected, plain)  # the LoRA changes the picture
    np.testing.assert_array_equal(_pixels(_txt2img(extras_server.url, "a cat<lora:inky:0.8>")), expected)
    tagged = _txt2img(extras_server.url, "a cat<lora:inky:0.8>", negative_prompt="<lora:inky:0>blur")
    with_negative = demo_pipe("a cat", negative_prompt="blur", loras={"inky": 0.8}, **kw).images[0]
    np.testing.assert_array_equal(_pixels(tagged), np.asarray(with_negative))
    # As A1111: the PNG's parameters and the info keep the prompts as written, tags and all.
    written = "a cat<lora:inky:0.8>\nNegative prompt: <lora:inky:0>blur\n"
    assert decode_png(tagged.json()["images"][0]).text["parameters"].startswith(written)
    assert json.loads(tagged.json()["info"])["infotexts"][0].startswith(written)
    # By its alias, in OpenAI's route and with the tag in the negative prompt: the same set.
    np.testing.assert_array_equal(
        _pixels(_txt2img(extras_server.url, "<lora:inky-alias:0.8>a cat")), expected
    )
    r = httpx.post(
        f"{extras_server.url}/v1/images/generations",
        json={"prompt": "a cat", "negative_prompt": "<lora:inky:0.8>", "seed": 7, "steps": STEPS,
              "sampler": "Euler a", "guidance_scale": 7.0},
        timeout=60,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.asarray(decode_png(r.json()["data"][0]["b64_json"])), expected)


def _calls(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    total = metric(text, "sdlite_batch_size_images_count")
    return total, total - metric(text, 'sdlite_batch_size_images_bucket{le="1"}')


async def _together(url: str, prompts: list[str]) -> list[httpx.Response]:
    body = {"seed": 11, "steps": STEPS, "sampler_name": "Euler a", "cfg_scale": 7.0}
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(
            *(client.post(f"{url}/sdapi/v1/txt2img", json={**body, "prompt": p}) for p in prompts)
        )


def test_different_lora_sets_never_share_a_model_call(extras_server):
    url = extras_server.url
    _txt2img(url, "warm <lora:inky:1> <lora:grainy:0.5>")  # loaded before the timed window
    sets = ["a cat <lora:inky:1>", "a cat <lora:grainy:0.5>", "a cat", "a cat <lora:inky:0.5>"]
    before = _calls(url)
    together = asyncio.run(_together(url, sets))
    after = _calls(url)
    assert (after[0] - before[0], after[1] - before[1]) == (4, 0), "two LoRA sets shared a model call"
    for prompt, r in zip(sets, together, strict=True):
        np.testing.assert_array_equal(_pixels(r), _pixels(_txt2img(url, prompt, seed=11)))
    # The same set in the same window does share one (what the test above would miss if batching broke).
    before = _calls(url)
    same = asyncio.run(_together(url, ["a cat <lora:inky:1>", "a dog <lora:inky:1>"]))
    assert all(r.status_code == 200 for r in same)
    after = _calls(url)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


def _progress(url: str, **params) -> dict:
    return httpx.get(f"{url}/sdapi/v1/progress", params=params, timeout=30).json()


def _wait_for_image(url: str, task: str, after_step: int = 0, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = _progress(url, id_task=task)
        if p["current_image"] and p["state"]["sampling_step"] > after_step:
            return p
        time.sleep(0.1)
    raise AssertionError(f"no preview after step {after_step} within {timeout} s: {p['state']}")


def test_progress_shows_the_running_jobs_preview(extras_server):
    url, task = extras_server.url, "slow-preview-task"
    body = {
        "prompt": "a red circle",
        "steps": 300,
        "width": 128,
        "height": 96,
        "seed": 5,
        "force_task_id": task,
    }

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(timeout=300) as client:
            return await client.post(f"{url}/sdapi/v1/txt2img", json=body)

    async def watch() -> tuple[dict, dict, dict, dict]:
        first = await asyncio.to_thread(_wait_for_image, url, task)
        # Adjacent steps of many barely move the estimate: some way on, it has changed.
        later = await asyncio.to_thread(_wait_for_image, url, task, first["state"]["sampling_step"] + 20)
        skipped = await asyncio.to_thread(_progress, url, id_task=task, skip_current_image=True)
        running = await asyncio.to_thread(_progress, url)  # no id: the running job, as A1111
        httpx.post(f"{url}/sdapi/v1/interrupt", params={"id_task": task})
        return first, later, skipped, running

    async def both():
        return await asyncio.gather(run(), watch())

    answer, (first, later, skipped, running) = asyncio.run(both())
    assert answer.status_code == 409  # interrupted: it would have run for a long time
    a, b = decode_png(first["current_image"]), decode_png(later["current_image"])
    assert a.format == "PNG" and a.size == (128, 96) and b.size == (128, 96)
    assert not np.array_equal(np.asarray(a), np.asarray(b)), "the preview did not change between steps"
    assert np.asarray(a).std() > 0  # a picture, not a blank
    assert skipped["current_image"] is None and skipped["state"]["job"] == "running"
    assert running["current_image"] is not None
    # The job is over: its preview went with it.
    assert _progress(url, id_task=task)["current_image"] is None
    assert _progress(url)["current_image"] is None
