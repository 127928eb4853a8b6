"""One set of rules at every entry point: the same bad value is refused by the same rule
(``sdlite.rules``) by the Python API, ``sdlite generate``, a batch job line and the server.

Each case gives the value as each entry point takes it, and the field each one names.  The rule's
wording (``allowed``) is read from ``sdlite.rules`` itself, so the test follows the rules module
and fails wherever an entry point words, bounds or checks a value on its own.  Batch lines have no
strength and make one image each, so those two cases have no batch line.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sdlite import cli, rules
from sdlite.folder import load_folder
from sdlite.models import demo_path
from sdlite.pipeline import Pipeline
from sdlite.server.app import create_app

DEMO = load_folder(demo_path())
MAX_PIXELS = rules.max_pixels("sd")  # the demo model is an SD model
TOO_LARGE = math.isqrt(MAX_PIXELS) + 512  # a multiple of every size multiple, over the budget
FACTOR = DEMO.vae_factor
MULTIPLE = rules.size_multiple(FACTOR, DEMO.unet_downsampling)
NOT_MULTIPLE = 2 * MULTIPLE + MULTIPLE // 2


def _allowed(check: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(rules.RuleError) as err:
        check(*args, **kwargs)
    return err.value.allowed


@dataclass
class Case:
    name: str
    allowed: str
    api: dict[str, Any]  # Pipeline call arguments
    cli: list[str]  # sdlite generate flags (the prompt is "prompt" in these)
    batch: dict[str, Any] | None  # job line keys; None: batch lines have no such setting
    server: dict[str, Any]  # A1111 body fields
    fields: tuple[str, str, str, str]  # the field each names: API, CLI, batch, server
    img2img: bool = False


def _cases() -> list[Case]:
    seed_rule = _allowed(rules.check_int, "seed", -1, 0, rules.MAX_SEED)
    steps_rule = _allowed(rules.check_int, "steps", 0, 1, rules.MAX_STEPS)
    guidance_rule = _allowed(rules.check_float, "g", math.nan, *rules.GUIDANCE_RANGE)
    seed = ("seed", "--seed", "seed", "seed")
    steps = ("num_inference_steps", "--steps (num_inference_steps)", "steps", "steps")
    guidance = ("guidance_scale", "--guidance (guidance_scale)", "guidance", "cfg_scale")
    prompt = ("prompt", "prompt", "prompt", "prompt")
    cases = [
        Case("seed too large", seed_rule, {"seed": 2**64}, ["--seed", str(2**64)], {"seed": 2**64},
             {"seed": 2**64}, seed),
        Case("seed negative", seed_rule, {"seed": -5}, ["--seed", "-5"], {"seed": -5}, {"seed": -5}, seed),
        Case("steps 0", steps_rule, {"num_inference_steps": 0}, ["--steps", "0"], {"steps": 0}, {"steps": 0},
             steps),
        Case("steps over the maximum", steps_rule, {"num_inference_steps": rules.MAX_STEPS + 1},
             ["--steps", str(rules.MAX_STEPS + 1)], {"steps": rules.MAX_STEPS + 1},
             {"steps": rules.MAX_STEPS + 1}, steps),
        Case("width not a multiple",
             _allowed(rules.check_size, "w", NOT_MULTIPLE, MULTIPLE, vae_factor=FACTOR),
             {"width": NOT_MULTIPLE}, ["--width", str(NOT_MULTIPLE)], {"width": NOT_MULTIPLE},
             {"width": NOT_MULTIPLE}, ("width", "--width", "width", "width")),
        Case("over the pixel budget", _allowed(rules.check_pixels, TOO_LARGE, TOO_LARGE, 1, MAX_PIXELS),
             {"width": TOO_LARGE, "height": TOO_LARGE},
             ["--width", str(TOO_LARGE), "--height", str(TOO_LARGE)],
             {"width": TOO_LARGE, "height": TOO_LARGE}, {"width": TOO_LARGE, "height": TOO_LARGE},
             ("height x width", "height x width", "height x width", "width")),
    ]  # fmt: skip
    for name, value in (("guidance NaN", math.nan), ("guidance inf", math.inf), ("guidance over", 101.0)):
        cases.append(
            Case(name, guidance_rule, {"guidance_scale": value}, ["--guidance", str(value)],
                 {"guidance": value}, {"cfg_scale": value}, guidance)
        )  # fmt: skip
    cases += [
        Case("strength out of range",
             _allowed(rules.check_float, "s", 1.5, *rules.STRENGTH_RANGE, lo_open=True),
             {"strength": 1.5}, ["--strength", "1.5"], None, {"denoising_strength": 1.5},
             ("strength", "--strength", "", "denoising_strength"), img2img=True),
        Case("too many images", _allowed(rules.check_int, "n", rules.MAX_IMAGES + 1, 1, rules.MAX_IMAGES),
             {"num_images_per_prompt": rules.MAX_IMAGES + 1}, ["-n", str(rules.MAX_IMAGES + 1)], None,
             {"batch_size": rules.MAX_IMAGES + 1},
             ("num_images_per_prompt", "--num-images (num_images_per_prompt)", "", "batch_size")),
        Case("unknown sampler", _allowed(rules.check_sampler, "no-such-sampler"),
             {"sampler": "no-such-sampler"}, ["--sampler", "no-such-sampler"], {"sampler": "no-such-sampler"},
             {"sampler_name": "no-such-sampler"}, ("sampler", "--sampler", "sampler", "sampler_name")),
    ]  # fmt: skip
    for name, text in (
        ("prompt with a lone surrogate", "a red \ud800 circle"),
        ("prompt with a control character", "a red \x07 circle"),
        ("prompt too long", "x" * (rules.MAX_PROMPT_CHARS + 1)),
    ):
        rule = _allowed(rules.check_text, "prompt", text)
        cases.append(Case(name, rule, {"prompt": text}, [], {"prompt": text}, {"prompt": text}, prompt))
    return cases


CASES = _cases()
IDS = [c.name for c in CASES]


def _message(field_name: str, case: Case) -> str:
    return f"{field_name} must be {case.allowed}, got "


def _init_png(tmp_path: Path) -> Path:
    path = tmp_path / "init.png"
    Image.new("RGB", (64, 64), "green").save(path)
    return path


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline.from_pretrained(demo_path(), provider="cpu")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_python_api_refuses(case, pipe, tmp_path):
    args = {"prompt": "a red circle", **case.api}
    if case.img2img:
        args["image"] = Image.open(_init_png(tmp_path))
    with pytest.raises(ValueError) as err:
        pipe(**args)
    assert str(err.value).startswith(_message(case.fields[0], case))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cli_refuses(case, tmp_path, capsys):
    prompt = case.api.get("prompt", "a red circle")
    argv = ["generate", prompt, *case.cli, "--out", str(tmp_path / "out-{i}.png"), "-q"]
    if case.img2img:
        argv += ["--image", str(_init_png(tmp_path))]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdlite: error: " + _message(case.fields[1], case)), err
    assert not list(tmp_path.glob("out-*"))


BATCH_CASES = [c for c in CASES if c.batch is not None]


@pytest.fixture(scope="module")
def batch_records(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """One job: a good line first, then one line per case (by id); the manifest's records by id."""
    folder = tmp_path_factory.mktemp("batch")
    lines = [{"id": "good", "prompt": "a red circle", "seed": 1}]
    lines += [{"id": f"case-{i}", "prompt": "a red circle", **c.batch} for i, c in enumerate(BATCH_CASES)]
    job = folder / "job.jsonl"
    job.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    code = cli.main(["batch", str(job), "--out", str(folder / "out"), "--steps", "2", "-q"])
    assert code == len(BATCH_CASES)
    records = [json.loads(x) for x in (folder / "out" / "manifest.jsonl").read_text("utf-8").splitlines()]
    return {r["id"]: r for r in records}


@pytest.mark.parametrize("case", BATCH_CASES, ids=[c.name for c in BATCH_CASES])
def test_batch_line_refused(case, batch_records):
    rec = batch_records[f"case-{BATCH_CASES.index(case)}"]
    assert rec["status"] == "error" and rec["png"] is None
    assert rec["error"].split(": ", 1)[1].startswith(_message(case.fields[2], case)), rec["error"]


def test_batch_good_line_is_fine(batch_records):
    assert batch_records["good"]["status"] == "ok" and batch_records["good"]["png"] == "good.png"


@pytest.fixture(scope="module")
def client(pipe):
    with TestClient(create_app(pipe)) as c:
        yield c


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_server_refuses_with_422(case, client, tmp_path):
    body = {"prompt": "a red circle", **case.server}
    route = "/sdapi/v1/txt2img"
    if case.img2img:
        route = "/sdapi/v1/img2img"
        body["init_images"] = [base64.b64encode(_init_png(tmp_path).read_bytes()).decode()]
    # json.dumps writes NaN/Infinity and escapes a lone surrogate, as a lax client would send them.
    r = client.post(route, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    (detail,) = r.json()["detail"]
    assert detail["loc"] == ["body", case.fields[3]]
    assert _message(case.fields[3], case) in detail["msg"]


def test_server_still_answers_a_good_request(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 2, "seed": 1})
    assert r.status_code == 200 and len(r.json()["images"]) == 1
