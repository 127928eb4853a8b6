"""LCM-distilled U-Nets (``timestep_cond``): a tiny LatentConsistencyModelPipeline exported with
``sdlite export`` matches diffusers' pipeline (PyTorch) within 2/255, 4 steps, same noise."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from sdlite import Pipeline  # noqa: E402
from sdlite.lcm import guidance_embedding  # noqa: E402
from test_pipeline import FeedRandn, per_image_draws  # noqa: E402

TOL = 2 / 255
SIZE = 64
STEPS = 4


@pytest.fixture(scope="module")
def pair(tiny_lcm_onnx, tiny_lcm_diffusers):
    torch.set_num_threads(1)
    ours = Pipeline.from_pretrained(tiny_lcm_onnx, provider="cpu", num_threads=1)
    ref = diffusers.LatentConsistencyModelPipeline.from_pretrained(
        tiny_lcm_diffusers, torch_dtype=torch.float32
    )
    ref.set_progress_bar_config(disable=True)
    return ours, ref


def test_export_keeps_the_guidance_embedding_input(pair):
    ours, ref = pair
    assert (
        ours.unet.inputs["timestep_cond"].shape[-1]
        == ref.unet.config.time_cond_proj_dim
        == ours.time_cond_dim
    )
    assert ours.preset.name == "lcm" and ours.preset.sampler == "lcm" and ours.preset.steps == 4


@pytest.mark.parametrize("guidance", [8.0, 1.5])
def test_guidance_embedding_matches_diffusers(guidance):
    w = torch.tensor(guidance - 1).repeat(3)
    for dim in (32, 256, 33):
        want = diffusers.LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, dim).numpy()
        got = guidance_embedding(guidance, 3, dim)
        assert got.dtype == np.float32 and got.shape == want.shape
        # sin/cos of w * 1000 ~ 7000, where one float32 ulp of the argument is 5e-4.
        np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.parametrize(
    "guidance,prompts", [(8.0, ["a photo of a cat"]), (1.5, ["a red circle", "日本の猫"])]
)
def test_parity_with_latent_consistency_pipeline(pair, monkeypatch, guidance, prompts):
    ours, ref = pair
    seeds = [7 + 13 * i for i in range(len(prompts))]
    got = ours(prompts, num_inference_steps=STEPS, guidance_scale=guidance, seed=seeds, output_type="np")
    assert got.parameters[0].count("Sampler: LCM")

    shape1 = (4, SIZE // ours.vae_scale_factor, SIZE // ours.vae_scale_factor)
    draws = per_image_draws(seeds, shape1, 1 + STEPS)
    latents = draws.pop(0)
    # LCMScheduler draws fresh noise after every step but the last; we draw one per step.
    feed = FeedRandn(draws[: STEPS - 1])
    monkeypatch.setattr(importlib.import_module("diffusers.schedulers.scheduling_lcm"), "randn_tensor", feed)
    with torch.no_grad():
        want = ref(
            prompts,
            num_inference_steps=STEPS,
            guidance_scale=guidance,
            height=SIZE,
            width=SIZE,
            latents=torch.from_numpy(latents),
            output_type="np",
        ).images
    assert not feed.draws
    assert got.images.shape == want.shape == (len(prompts), SIZE, SIZE, 3)
    diff = np.abs(got.images - want).max()
    assert diff <= TOL, f"max |ours - diffusers| = {diff * 255:.2f}/255"
    assert want.std() > 0.01


def test_one_unet_call_per_step_and_guidance_matters(pair, monkeypatch):
    ours, _ = pair
    calls = []
    orig = ours.unet.run

    def run(feeds, outputs=None):
        calls.append(feeds["sample"].shape[0])
        return orig(feeds, outputs)

    monkeypatch.setattr(ours.unet, "run", run)
    a = ours(["a", "b"], num_inference_steps=2, guidance_scale=8.0, seed=[1, 2], output_type="np")
    b = ours(["a", "b"], num_inference_steps=2, guidance_scale=2.0, seed=[1, 2], output_type="np")
    assert calls == [2, 2, 2, 2]  # no unconditional half, whatever the guidance
    assert np.abs(a.images - b.images).max() > 1e-3  # the embedding reaches the U-Net


def test_negative_prompt_is_refused(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="negative_prompt"):
        ours("a cat", negative_prompt="blurry", num_inference_steps=1, seed=0)
    ours("a cat", negative_prompt="", num_inference_steps=1, seed=0, output_type="latent")  # empty is fine
