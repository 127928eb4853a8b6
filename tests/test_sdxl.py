"""SDXL pixel parity with diffusers' PyTorch pipelines on tiny random-weight SDXL models.

The base model (two text encoders, 6 time ids) against ``StableDiffusionXLPipeline`` and the
refiner (text_encoder_2 only, aesthetic-score time ids) against
``StableDiffusionXLImg2ImgPipeline``, both exported by ``sdlite export`` (fp32); the base also
as exported by ``optimum-cli export onnx``.  Initial latents are passed to both pipelines;
every other random draw diffusers makes (VAE posterior, img2img noise, ancestral step noise) is
replaced by the draws our pipeline documents (see tests/test_pipeline.py).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from sdlite import Pipeline  # noqa: E402
from test_pipeline import DIFFUSERS_CLASS, FeedRandn, per_image_draws, test_image  # noqa: E402

TOL = 2 / 255
STEPS = 4
RANDN_MODULES = [
    "diffusers.schedulers.scheduling_euler_ancestral_discrete",
    "diffusers.models.autoencoders.vae",
    "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img",
    "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl",
]
PROMPTS = ["a photo of an astronaut riding a horse", "a red circle on a white background!"]

# (export, sampler, guidance, (height, width), extra arguments)
BASE_GRID = [
    # No negative prompt: force_zeros_for_empty_prompt gives zero unconditional embeddings.
    ("sdlite", "euler", 5.0, (64, 64), {}),
    # Non-square, everything SDXL-specific given explicitly.
    (
        "sdlite",
        "dpmpp_2m",
        5.0,
        (64, 96),
        dict(
            negative_prompt="blurry",
            prompt_2="an oil painting",
            negative_prompt_2="lowres",
            original_size=(256, 384),
            crops_coords_top_left=(16, 8),
            target_size=(128, 192),
        ),
    ),
    # Guidance 1 (no unconditional pass), two prompts, an ancestral sampler, portrait.
    ("sdlite", "euler_a", 1.0, (96, 64), dict(prompts=PROMPTS)),
    # An explicit "" negative prompt is encoded (not zeroed); two images per prompt.
    ("sdlite", "euler", 5.0, (64, 64), dict(negative_prompt="", num_images_per_prompt=2)),
    # optimum-cli's own export of the same weights.
    ("optimum", "euler", 5.0, (64, 96), dict(negative_prompt="blurry", prompt_2="an oil painting")),
]


@pytest.fixture(scope="module")
def loaded(request):
    torch.set_num_threads(1)
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            if name == "refiner":
                folder = request.getfixturevalue("tiny_sdxl_refiner_onnx")
                src = request.getfixturevalue("tiny_sdxl_refiner_diffusers")
                ref_cls = diffusers.StableDiffusionXLImg2ImgPipeline
            else:
                fixture = "tiny_sdxl_onnx" if name == "sdlite" else "tiny_sdxl_optimum"
                folder = request.getfixturevalue(fixture)
                src = request.getfixturevalue("tiny_sdxl_diffusers")
                ref_cls = diffusers.StableDiffusionXLPipeline
            ours = Pipeline.from_pretrained(folder, provider="cpu", num_threads=1)
            ref = ref_cls.from_pretrained(src, torch_dtype=torch.float32)
            ref.set_progress_bar_config(disable=True)
            cache[name] = (ours, ref)
        return cache[name]

    return get


def _feed_diffusers(monkeypatch, draws) -> FeedRandn:
    feed = FeedRandn(draws)
    for mod in RANDN_MODULES:
        monkeypatch.setattr(importlib.import_module(mod), "randn_tensor", feed)
    return feed


def _check(got: np.ndarray, want: np.ndarray, shape: tuple) -> None:
    assert got.shape == want.shape == shape
    diff = np.abs(got - want)
    assert diff.max() <= TOL, f"max |ours - diffusers| = {diff.max() * 255:.2f}/255"
    # The comparison means something only if the images are not flat.
    assert want.std() > 0.01


@pytest.mark.parametrize(
    "export,sampler,guidance,hw,extra",
    BASE_GRID,
    ids=[f"{e}-{s}-g{g:g}-{h}x{w}-{i}" for i, (e, s, g, (h, w), _) in enumerate(BASE_GRID)],
)
def test_sdxl_parity(loaded, monkeypatch, export, sampler, guidance, hw, extra):
    ours, ref = loaded(export)
    extra = dict(extra)
    prompts = extra.pop("prompts", PROMPTS[:1])
    per_prompt = extra.pop("num_images_per_prompt", 1)
    batch = len(prompts) * per_prompt
    h, w = hw
    f = ours.vae_scale_factor
    shape1 = (4, h // f, w // f)
    seeds = [7 + 11 * i for i in range(batch)]
    latents = per_image_draws([s + 1000 for s in seeds], shape1, 1)[0]
    common = dict(num_inference_steps=STEPS, guidance_scale=guidance, height=h, width=w)

    got = ours(
        prompts,
        sampler=sampler,
        seed=seeds,
        latents=latents,
        num_images_per_prompt=per_prompt,
        output_type="np",
        **common,
        **extra,
    )

    scheduler = getattr(diffusers, DIFFUSERS_CLASS[sampler]).from_config(ref.scheduler.config)
    pipe = diffusers.StableDiffusionXLPipeline(
        **{**ref.components, "scheduler": scheduler},
        force_zeros_for_empty_prompt=ref.config.force_zeros_for_empty_prompt,
    )
    pipe.set_progress_bar_config(disable=True)
    # Given latents, our pipeline's first draws per image are the ancestral step noises.
    feed = _feed_diffusers(monkeypatch, per_image_draws(seeds, shape1, STEPS) if sampler == "euler_a" else [])
    with torch.no_grad():
        want = pipe(
            prompts,
            latents=torch.from_numpy(latents),
            num_images_per_prompt=per_prompt,
            output_type="np",
            **common,
            **extra,
        ).images
    assert not feed.draws, f"diffusers used {feed.calls} draws, {len(feed.draws)} left over"
    _check(got.images, want, (batch, h, w, 3))


@pytest.mark.parametrize(
    "extra", [{}, dict(aesthetic_score=4.0, negative_aesthetic_score=1.0)], ids=["default", "scores"]
)
def test_refiner_img2img_parity(loaded, monkeypatch, extra):
    from PIL import Image

    ours, ref = loaded("refiner")
    size, strength, seeds = 64, 0.6, [5]
    image = Image.fromarray(test_image()[:size, :size])
    f = ours.vae_scale_factor
    shape1 = (4, size // f, size // f)
    common = dict(
        prompt="a photo of an astronaut riding a horse",
        negative_prompt="blurry",
        num_inference_steps=5,
        guidance_scale=5.0,
        strength=strength,
        output_type="np",
        **extra,
    )
    got = ours(image=image, sampler="euler", seed=seeds, **common)

    scheduler = diffusers.EulerDiscreteScheduler.from_config(ref.scheduler.config)
    pipe = diffusers.StableDiffusionXLImg2ImgPipeline(
        **{**ref.components, "scheduler": scheduler},
        requires_aesthetics_score=ref.config.requires_aesthetics_score,
        force_zeros_for_empty_prompt=ref.config.force_zeros_for_empty_prompt,
    )
    assert pipe.config.requires_aesthetics_score  # the refiner's 5 time ids
    pipe.set_progress_bar_config(disable=True)
    feed = _feed_diffusers(monkeypatch, per_image_draws(seeds, shape1, 2))  # posterior sample, noise
    with torch.no_grad():
        want = pipe(image=image, **common).images
    assert not feed.draws, f"diffusers used {feed.calls} draws, {len(feed.draws)} left over"
    _check(got.images, want, (1, size, size, 3))
