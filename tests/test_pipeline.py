"""Pixel parity with diffusers' PyTorch pipelines on tiny random-weight SD-1 and SD-2 models.

Our pipeline runs the optimum ONNX export; diffusers runs the original weights in float32 with
the matching scheduler class built from the same scheduler config.  Every random draw diffusers
makes (initial latents, the VAE posterior sample, img2img noise, ancestral step noise) is
replaced by the draws our pipeline documents: ``numpy.random.default_rng(seed_i)``, float32
standard normals, in the order latents/posterior, noise, one per step.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from sdlite import Pipeline  # noqa: E402

DIFFUSERS_CLASS = {
    "unipc": "UniPCMultistepScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
}
RANDN_MODULES = [
    "diffusers.schedulers.scheduling_euler_ancestral_discrete",
    "diffusers.models.autoencoders.vae",
    "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img",
    "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
]
TOL = 2 / 255
STEPS = 5
SIZE = 64

# (model, sampler, guidance, batch layout, mode): every sampler on both models, both guidance
# values, batch 1 and 3 (three prompts, or one prompt x 3 images), txt2img and img2img.
GRID = [
    ("sd1", "unipc", 7.5, "1", "txt2img"),
    ("sd1", "dpmpp_2m", 1.0, "3prompts", "txt2img"),
    ("sd1", "ddim", 7.5, "1x3", "txt2img"),
    ("sd1", "euler", 7.5, "1", "img2img"),
    ("sd1", "euler_a", 7.5, "3prompts", "txt2img"),
    ("sd1", "euler_a", 1.0, "1", "img2img"),
    ("sd2", "unipc", 7.5, "3prompts", "img2img"),
    ("sd2", "dpmpp_2m", 7.5, "1", "txt2img"),
    ("sd2", "ddim", 1.0, "1", "img2img"),
    ("sd2", "euler", 1.0, "3prompts", "txt2img"),
    ("sd2", "euler_a", 7.5, "1x3", "txt2img"),
]
PROMPTS = ["a photo of an astronaut riding a horse", "a red circle on a white background!", "日本の猫, 4k"]


@pytest.fixture(scope="module")
def models(request):
    torch.set_num_threads(1)
    cache: dict = {}

    def get(kind: str):
        if kind not in cache:
            onnx_dir = request.getfixturevalue(f"tiny_{kind}_onnx")
            src = request.getfixturevalue(f"tiny_{kind}_diffusers")
            ours = Pipeline.from_pretrained(onnx_dir, provider="cpu", num_threads=1)
            ref = diffusers.StableDiffusionPipeline.from_pretrained(src, torch_dtype=torch.float32)
            ref.set_progress_bar_config(disable=True)
            cache[kind] = (ours, ref)
        return cache[kind]

    return get


def per_image_draws(seeds, shape1, n):
    """The pipeline's documented draws: n stacked [B, *shape1] arrays, per-image generators."""
    rngs = [np.random.default_rng(s) for s in seeds]
    return [np.stack([r.standard_normal(shape1, dtype=np.float32) for r in rngs]) for _ in range(n)]


class FeedRandn:
    """Stands in for diffusers' ``randn_tensor``: returns prepared draws in order."""

    def __init__(self, draws):
        self.draws = list(draws)
        self.calls = 0

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        assert self.draws, f"diffusers drew more noise than expected (call {self.calls + 1}, shape {shape})"
        arr = self.draws.pop(0)
        assert tuple(shape) == arr.shape, (
            f"call {self.calls + 1}: diffusers wants {tuple(shape)}, have {arr.shape}"
        )
        self.calls += 1
        return torch.from_numpy(arr.copy()).to(dtype or torch.float32)


def test_image(seed=0):
    # A smooth picture with some texture, so the VAE encoder sees something image-like.
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    img = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * xx * yy)], -1) * 0.8 + rng.uniform(0, 0.2, (SIZE, SIZE, 3))
    return (img * 255).round().astype(np.uint8)


test_image.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("kind,sampler,guidance,layout,mode", GRID, ids=["-".join(map(str, g)) for g in GRID])
def test_parity_with_diffusers(models, monkeypatch, kind, sampler, guidance, layout, mode):
    import importlib

    from PIL import Image

    ours, ref = models(kind)
    if layout == "1":
        prompts, per_prompt = PROMPTS[:1], 1
    elif layout == "3prompts":
        prompts, per_prompt = PROMPTS, 1
    else:
        prompts, per_prompt = PROMPTS[1:2], 3
    batch = len(prompts) * per_prompt
    negative = ["blurry, lowres"] * len(prompts) if guidance > 1 else None
    seeds = [1000 + 17 * i for i in range(batch)]
    latent = SIZE // ours.vae_scale_factor
    shape1 = (4, latent, latent)
    stochastic = sampler == "euler_a"

    got = ours(
        prompts,
        negative_prompt=negative,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        height=SIZE,
        width=SIZE,
        sampler=sampler,
        seed=seeds,
        num_images_per_prompt=per_prompt,
        image=Image.fromarray(test_image()) if mode == "img2img" else None,
        strength=0.6,
        output_type="np",
    )
    assert got.seeds == seeds

    scheduler_cls = getattr(diffusers, DIFFUSERS_CLASS[sampler])
    scheduler = scheduler_cls.from_config(ref.scheduler.config)
    kwargs = dict(
        prompt=prompts,
        negative_prompt=negative,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        num_images_per_prompt=per_prompt,
        output_type="np",
    )
    if mode == "txt2img":
        pipe = diffusers.StableDiffusionPipeline(**{**ref.components, "scheduler": scheduler})
        n_steps = STEPS
        draws = per_image_draws(seeds, shape1, 1 + n_steps)
        kwargs.update(height=SIZE, width=SIZE, latents=torch.from_numpy(draws.pop(0)))
    else:
        pipe = diffusers.StableDiffusionImg2ImgPipeline(**{**ref.components, "scheduler": scheduler})
        n_steps = int(STEPS * 0.6)
        draws = per_image_draws(seeds, shape1, 2 + n_steps)  # posterior sample, noise, steps
        # One image per generated image, so diffusers samples the posterior once per image as
        # we do (given one image it encodes once and repeats the sample).
        pil = Image.fromarray(test_image())
        kwargs.update(image=[pil] * batch, strength=0.6)
        kwargs["prompt"] = [p for p in prompts for _ in range(per_prompt)]
        kwargs["negative_prompt"] = (
            None if negative is None else [n for n in negative for _ in range(per_prompt)]
        )
        kwargs["num_images_per_prompt"] = 1
    if not stochastic:
        draws = draws[: len(draws) - n_steps]
    feed = FeedRandn(draws)
    for mod in RANDN_MODULES:
        monkeypatch.setattr(importlib.import_module(mod), "randn_tensor", feed)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        want = pipe(**kwargs).images
    assert not feed.draws, f"diffusers used {feed.calls} draws, {len(feed.draws)} left over"

    assert got.images.shape == want.shape == (batch, SIZE, SIZE, 3)
    diff = np.abs(got.images - want)
    assert diff.max() <= TOL, f"max |ours - diffusers| = {diff.max() * 255:.2f}/255"
    # The comparison means something only if the images differ from each other and from gray.
    assert want.std() > 0.01
