"""``sdlite export`` of an LCM-distilled model and of a 9-channel inpainting model: the graphs keep
what the runtime needs, and the exporter's validation ran with the extra input."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest


def _unet_inputs(folder):
    sess = ort.InferenceSession(str(folder / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    return {i.name: i.shape for i in sess.get_inputs()}


@pytest.mark.parametrize(
    "fixture,architecture",
    [
        ("tiny_lcm_onnx", "LatentConsistencyModelPipeline"),
        ("tiny_inpaint_onnx", "StableDiffusionInpaintPipeline"),
    ],
)
def test_export_records_and_validates(request, fixture, architecture):
    folder = request.getfixturevalue(fixture)
    meta = json.loads((folder / "sdlite.json").read_text())
    assert meta["architecture"] == architecture and meta["dtype"] == "fp32"
    for component in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
        val = meta["components"][component]["validation"]
        assert val["ok"] and val["rel_error"] < 1e-4, (component, val)


def test_lcm_unet_takes_the_guidance_embedding(tiny_lcm_onnx, tiny_lcm_diffusers):
    inputs = _unet_inputs(tiny_lcm_onnx)
    dim = json.loads((tiny_lcm_diffusers / "unet" / "config.json").read_text())["time_cond_proj_dim"]
    assert inputs["timestep_cond"][1] == dim
    scheduler = json.loads((tiny_lcm_onnx / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "LCMScheduler"


def test_inpaint_unet_takes_nine_channels(tiny_inpaint_onnx):
    inputs = _unet_inputs(tiny_inpaint_onnx)
    assert inputs["sample"][1] == 9 and "timestep_cond" not in inputs
