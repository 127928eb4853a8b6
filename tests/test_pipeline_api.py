"""Pipeline behaviour beyond parity: seeds, batching, callbacks, outputs, timings, providers."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from sdlite import Pipeline
from sdlite.sessions import resolve_providers


@pytest.fixture(scope="module")
def pipe(tiny_sd1_onnx):
    return Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu", num_threads=1)


def test_reads_latent_factor_and_default_size(pipe):
    # The tiny VAE downsamples twice: factor 4, not SD's 8; U-Net sample_size 16 -> 64 px.
    assert pipe.vae_scale_factor == 4 and pipe.default_size == 64 and pipe.latent_channels == 4
    g = pipe.graph  # the same facts, read once at load time
    assert (g.vae_factor, g.default_size, g.latent_channels, g.size_multiple) == (4, 64, 4, 8)
    assert g.static_size == (None, None) and not g.sdxl and g.time_cond_dim is None and g.family == "sd"
    assert g.encoder_output == "latent_parameters" and not g.inpainting
    out = pipe("a cat", num_inference_steps=2, seed=0, output_type="latent")
    assert out.images.shape == (1, 4, 16, 16)


def test_image_depends_only_on_its_own_seed(pipe):
    kw = dict(num_inference_steps=3, guidance_scale=7.5, output_type="np", sampler="euler_a")
    batch = pipe(["a cat", "a dog", "a red circle"], seed=[5, 6, 7], **kw)
    alone = pipe("a dog", seed=6, **kw)
    np.testing.assert_allclose(batch.images[1], alone.images[0], atol=1e-4)
    again = pipe(["a cat", "a dog", "a red circle"], seed=[5, 6, 8], **kw)
    np.testing.assert_allclose(batch.images[:2], again.images[:2], atol=1e-4)
    assert np.abs(batch.images[2] - again.images[2]).max() > 0.05


def test_int_seed_counts_up_and_none_is_reported(pipe):
    out = pipe("a cat", num_inference_steps=2, seed=41, num_images_per_prompt=3, output_type="np")
    assert out.seeds == [41, 42, 43]
    rnd = pipe("a cat", num_inference_steps=2, output_type="np")
    assert len(rnd.seeds) == 1 and 0 <= rnd.seeds[0] < 2**32
    again = pipe("a cat", num_inference_steps=2, seed=rnd.seeds[0], output_type="np")
    np.testing.assert_array_equal(rnd.images, again.images)


def test_latents_replace_initial_noise(pipe):
    lat = np.random.default_rng(3).standard_normal((1, 4, 16, 16), dtype=np.float32)
    a = pipe("a cat", num_inference_steps=2, latents=lat, seed=1, output_type="np")
    b = pipe("a cat", num_inference_steps=2, latents=lat, seed=2, output_type="np")
    np.testing.assert_array_equal(a.images, b.images)  # the seed no longer matters
    c = pipe("a cat", num_inference_steps=2, seed=3, output_type="np")  # same draw as lat
    np.testing.assert_allclose(a.images, c.images, atol=1e-6)


def test_callback_every_step_and_cancel(pipe):
    seen = []

    def cb(step, total, latents):
        seen.append((step, total, latents.shape))

    pipe("a cat", num_inference_steps=3, seed=0, callback=cb, sampler="ddim")
    assert seen == [(1, 3, (1, 4, 16, 16)), (2, 3, (1, 4, 16, 16)), (3, 3, (1, 4, 16, 16))]
    out = pipe("a cat", num_inference_steps=5, seed=0, callback=lambda s, t, x: s < 2)
    assert out.cancelled and out.images == [] and out.latents.shape == (1, 4, 16, 16)


def test_guidance_one_skips_the_unconditional_half(pipe, monkeypatch):
    batches = []
    orig = pipe.unet.run

    def run(feeds, outputs=None):
        batches.append(feeds["sample"].shape[0])
        return orig(feeds, outputs)

    monkeypatch.setattr(pipe.unet, "run", run)
    pipe(["a", "b"], num_inference_steps=2, guidance_scale=1.0, seed=[1, 2])
    pipe(["a", "b"], num_inference_steps=2, guidance_scale=7.5, seed=[1, 2])
    assert batches == [2, 2, 4, 4]  # one batched U-Net call per step, uncond + cond together


def test_output_types_and_timings(pipe):
    out = pipe("a cat", num_inference_steps=2, seed=0)
    assert out.images[0].size == (64, 64) and out.images[0].mode == "RGB"
    npy = pipe("a cat", num_inference_steps=2, seed=0, output_type="np").images
    assert npy.dtype == np.float32 and npy.shape == (1, 64, 64, 3) and 0 <= npy.min() and npy.max() <= 1
    np.testing.assert_array_equal(np.asarray(out.images[0]), (npy[0] * 255).round().astype(np.uint8))
    t = out.timings
    assert set(t) == {"text_encoder", "unet", "vae", "total", "outside_sessions"}
    assert all(v >= 0 for v in t.values()) and t["unet"] > 0 and t["vae"] > 0
    assert t["outside_sessions"] == pytest.approx(t["total"] - t["text_encoder"] - t["unet"] - t["vae"])
    assert out.parameters[0].splitlines()[-1].startswith("Steps: 2, Sampler: UniPC, CFG scale: 7.5, Seed: 0")
    karras = pipe(
        "a cat",
        num_inference_steps=2,
        seed=0,
        sampler="dpmpp_2m",
        sampler_options={"use_karras_sigmas": True},
    )
    assert "Sampler: DPM++ 2M Karras," in karras.parameters[0]


def test_img2img_strength_runs_fewer_steps(pipe):
    steps = []
    img = np.full((64, 64, 3), 128, np.uint8)
    out = pipe(
        "a cat",
        image=img,
        strength=0.5,
        num_inference_steps=6,
        seed=0,
        callback=lambda s, t, x: steps.append(t),
    )
    assert steps == [3, 3, 3] and out.images[0].size == (64, 64)
    assert "Denoising strength: 0.5" in out.parameters[0]


def test_providers(monkeypatch):
    assert resolve_providers(None) == ["CPUExecutionProvider"] or "CPUExecutionProvider" in resolve_providers(
        None
    )
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: avail)
    assert resolve_providers(None) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers([("CUDAExecutionProvider", {"device_id": 1})]) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    with pytest.raises(ValueError, match=r"provider 'dml' \(DmlExecutionProvider\) is not available"):
        resolve_providers("dml")


def test_io_binding_path_gives_the_same_images(pipe, monkeypatch):
    # GPU providers bind the text embeddings once on the device; CPU OrtValues run the same code.
    kw = dict(num_inference_steps=2, seed=[3, 4], output_type="np")
    plain = pipe(["a cat", "a dog"], **kw).images
    monkeypatch.setattr(pipe.unet, "device", "cpu")
    bound = pipe(["a cat", "a dog"], **kw).images
    np.testing.assert_array_equal(plain, bound)
