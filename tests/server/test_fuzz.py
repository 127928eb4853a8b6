"""Fuzzing: the server's own OpenAPI document (schemathesis) against the app in-process with the demo
model; random JSON for every field of the request models and mutated image files for the image
inputs (hypothesis).

Zero 5xx and zero schema violations on every route: each case's response must be one the document
declares (FastAPI documents 200 and 422 for each route) with the body it declares.  Generation
runs for real; to keep each case fast, a case that the rules would accept is scaled down before it
is sent (steps, sizes and image counts are clamped to small values, keeping the ones the rules
refuse as they are).  Generation routes run fewer cases than the cheap ones.
"""

from __future__ import annotations

import base64
import io
import json
import math
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import BaseModel, ValidationError
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from sdlite import images, rules
from sdlite.server.app import Settings, create_app
from sdlite.server.schemas import A1111Img2Img, A1111Txt2Img, OpenAIImages

GENERATION = {"/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/v1/images/generations"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SMALL_STEPS, SMALL_SIDE, SMALL_COUNT = 2, 64, 2
FEW, MANY = 120, 300  # cases per generation route, per other route


def _pipe() -> Any:
    from sdlite import Pipeline
    from sdlite.models import demo_path

    return Pipeline.from_pretrained(demo_path(), provider="cpu")


APP = create_app(_pipe(), Settings(max_batch=4, batch_window_ms=0))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


def _scaled_down(body: dict[str, Any]) -> dict[str, Any]:
    """Valid numbers made small (the model's cost); invalid ones kept, for the rules to refuse."""
    out = dict(body)
    smaller = {"steps": SMALL_STEPS, "batch_size": SMALL_COUNT, "n_iter": 1, "n": SMALL_COUNT}
    for key, small in smaller.items():
        value = out.get(key)
        if rules.is_int(value) and value > small and value <= rules.MAX_STEPS:
            out[key] = small
    for key in ("width", "height"):
        value = out.get(key)
        if rules.is_int(value) and value > SMALL_SIDE and value % 16 == 0 and value <= 4096:
            out[key] = SMALL_SIDE
    size = out.get("size")
    if isinstance(size, str) and size.count("x") == 1 and all(v.isdigit() for v in size.split("x")):
        w, h = (int(v) for v in size.split("x"))
        if w * h > SMALL_SIDE**2 and w % 16 == 0 and h % 16 == 0:
            out["size"] = f"{SMALL_SIDE}x{SMALL_SIDE}"
    return out


def _check(case: Any) -> None:
    if isinstance(case.body, dict):
        case.body = _scaled_down(case.body)
    response = case.call(headers={"host": "127.0.0.1"})
    case.validate_response(response, checks=CHECKS)
    assert response.status_code < 500, response.text[:500]
    if response.status_code == 422:
        assert len(response.content) < 64 * 1024, "an error echoes at most a little of the input"


FUZZ = {"deadline": None, "suppress_health_check": list(HealthCheck), "derandomize": True}


@schema.include(path=sorted(GENERATION)).parametrize()
@settings(max_examples=FEW, **FUZZ)
def test_generation_routes_answer_as_their_schema_says_and_never_5xx(case):
    _check(case)


@schema.exclude(path=sorted(GENERATION)).parametrize()
@settings(max_examples=MANY, **FUZZ)
def test_other_routes_answer_as_their_schema_says_and_never_5xx(case):
    _check(case)


# --- hypothesis: the request models ---------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(codec=None), max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _bodies(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    fields = list(model.model_fields)
    return st.dictionaries(st.sampled_from(fields), JSON, max_size=len(fields))


@pytest.mark.parametrize("model", [A1111Txt2Img, A1111Img2Img, OpenAIImages], ids=lambda m: m.__name__)
def test_request_models_take_any_json_to_a_model_or_a_validation_error(model):
    @given(body=_bodies(model))
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    def check(body: dict[str, Any]) -> None:
        try:
            req = model.model_validate(body)
        except ValidationError as err:
            # Every error names a field the body has (or a required one it lacks) and is JSON text.
            for e in err.errors():
                assert e["loc"] and e["loc"][0] in model.model_fields, e
            json.dumps(err.errors(include_input=False, include_context=False))
            return
        for name, value in req.model_dump().items():
            if isinstance(value, float):
                assert math.isfinite(value), (name, value)
            if isinstance(value, str):
                value.encode("utf-8")  # no lone surrogate reaches a response or a PNG chunk

    check()


# --- hypothesis: image inputs (what img2img's init_images decode) ---------------------------------


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), "blue").save(buf, format=fmt)
    return buf.getvalue()


SEEDS = [_encoded(fmt) for fmt in ("PNG", "JPEG", "WEBP")]


@st.composite
def _mutated_images(draw: st.DrawFn) -> bytes:
    """A valid file with bytes overwritten, cut short or extended: headers that lie included."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data) - 1))
        data[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
    cut = draw(st.integers(8, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=16))


@given(data=_mutated_images() | st.binary(max_size=64))
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
def test_image_inputs_decode_or_raise_an_image_input_error(data):
    text = base64.b64encode(data).decode()
    try:
        out = images.read_base64_images([text], "init_images", rules.MAX_INPUT_PIXELS)
    except images.ImageInputError as err:
        assert str(err).startswith("init_images"), err  # names the field for the 422
        return
    assert out[0].mode == "RGB" and out[0].width * out[0].height <= rules.MAX_INPUT_PIXELS
