"""Inpainting: the mask handling step for step against diffusers, and pixel parity with
StableDiffusionInpaintPipeline (PyTorch) for a 9-channel inpainting U-Net exported with
``sdlite export`` and for an ordinary 4-channel model (the tiny SD-1 optimum export).

Same noise: diffusers' random draws are replaced by the ones our pipeline documents
(``sdlite.latents.inpainting``): per image, the image's posterior sample (when its
latents are needed), the initial noise, the masked image's posterior sample (9-channel U-Nets),
then one draw per step for stochastic samplers.  diffusers encodes the masked image for
4-channel U-Nets too and never uses it: that draw is fed zeros.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from sdlite import Pipeline, cli  # noqa: E402
from sdlite.images import image_to_model  # noqa: E402
from sdlite.inpaint import load_mask, mask_to_model, nearest_resize  # noqa: E402
from test_pipeline import DIFFUSERS_CLASS, RANDN_MODULES, FeedRandn, per_image_draws  # noqa: E402
from test_pipeline import test_image as picture  # noqa: E402

TOL = 2 / 255
SIZE = 64
STEPS = 4
PROMPTS = ["a photo of a cat on a sofa", "a red circle"]
INPAINT_MODULE = "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint"


def soft_mask(size=SIZE, seed=0) -> Image.Image:
    """A grayscale mask with hard and soft parts (values around 0.5 included): a rectangle with a
    linear ramp across it and some noise, so the 0.5 threshold is exercised."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    m = np.where((xx > 0.25) & (xx < 0.8) & (yy > 0.2) & (yy < 0.7), 0.3 + 0.6 * xx, 0.1 * yy)
    m = m + np.random.default_rng(seed).uniform(-0.05, 0.05, m.shape)
    return Image.fromarray((np.clip(m, 0, 1) * 255).round().astype(np.uint8), mode="L")


# --- the mask, step by step ----------------------------------------------------------------------


@pytest.mark.parametrize("n_in,n_out", [(64, 16), (64, 8), (10, 7), (7, 10), (5, 3), (96, 12), (33, 4)])
def test_nearest_resize_is_torch_interpolate(n_in, n_out):
    x = np.random.default_rng(n_in).standard_normal((2, 1, n_in, n_in + 3)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=(n_out, n_out + 1)).numpy()
    np.testing.assert_array_equal(nearest_resize(x, (n_out, n_out + 1)), want)


@pytest.mark.parametrize(
    "mode,size", [("L", (64, 64)), ("RGB", (80, 48)), ("RGBA", (64, 64)), ("1", (40, 56))]
)
def test_mask_processing_is_diffusers_mask_processor(mode, size):
    from diffusers.image_processor import VaeImageProcessor

    proc = VaeImageProcessor(
        vae_scale_factor=4, do_normalize=False, do_binarize=True, do_convert_grayscale=True
    )
    mask = soft_mask(96).convert(mode).resize((70, 90))
    want = proc.preprocess(mask, height=size[1], width=size[0]).numpy()
    got = mask_to_model(mask, *size)
    assert got.shape == want.shape == (1, 1, size[1], size[0]) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert set(np.unique(got)) <= {0.0, 1.0}


def test_mask_inputs(tmp_path):
    soft_mask().save(tmp_path / "m.png")
    arr = np.asarray(soft_mask())
    ref = mask_to_model(soft_mask(), SIZE, SIZE)
    for m in (str(tmp_path / "m.png"), arr, arr[..., None], arr / 255.0, np.stack([arr] * 3, -1)):
        np.testing.assert_array_equal(mask_to_model(load_mask(m), SIZE, SIZE), ref)
    for bad, word in [
        (3, "mask_image must be"),
        (np.zeros((4, 4), np.int16), "uint8 or float"),
        (np.full((4, 4), 2.0), "in \\[0, 1\\]"),
        (str(tmp_path / "none.png"), "not a readable image"),
    ]:
        with pytest.raises(ValueError, match=word):
            load_mask(bad)


# --- parity with StableDiffusionInpaintPipeline --------------------------------------------------


@pytest.fixture(scope="module")
def models(request):
    torch.set_num_threads(1)
    cache: dict = {}

    def get(kind: str):
        if kind not in cache:
            onnx_dir, src = (
                ("tiny_inpaint_onnx", "tiny_inpaint_diffusers")
                if kind == "9ch"
                else ("tiny_sd1_onnx", "tiny_sd1_diffusers")
            )
            ours = Pipeline.from_pretrained(request.getfixturevalue(onnx_dir), provider="cpu", num_threads=1)
            ref = diffusers.StableDiffusionInpaintPipeline.from_pretrained(
                request.getfixturevalue(src), torch_dtype=torch.float32, safety_checker=None
            )
            ref.set_progress_bar_config(disable=True)
            cache[kind] = (ours, ref)
        return cache[kind]

    return get


# (U-Net, sampler, guidance, strength, layout)
GRID = [
    ("9ch", "euler_a", 7.5, 1.0, "1x2"),
    ("9ch", "ddim", 1.0, 0.6, "2prompts"),
    ("9ch", "unipc", 7.5, 0.75, "1"),
    ("4ch", "euler_a", 7.5, 1.0, "1"),
    ("4ch", "unipc", 7.5, 0.75, "2prompts"),
    ("4ch", "ddim", 1.0, 1.0, "1x2"),
]


@pytest.mark.parametrize(
    "kind,sampler,guidance,strength,layout", GRID, ids=["-".join(map(str, g)) for g in GRID]
)
def test_parity_with_inpaint_pipeline(models, monkeypatch, kind, sampler, guidance, strength, layout):
    ours, ref = models(kind)
    prompts, per_prompt = (
        (PROMPTS[:1], 2) if layout == "1x2" else ((PROMPTS, 1) if layout == "2prompts" else (PROMPTS[:1], 1))
    )
    batch = len(prompts) * per_prompt
    seeds = [300 + 11 * i for i in range(batch)]
    image = Image.fromarray(picture(1))
    mask = soft_mask()
    negative = ["blurry"] * len(prompts) if guidance > 1 else None
    got = ours(
        prompts,
        negative_prompt=negative,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        sampler=sampler,
        seed=seeds,
        num_images_per_prompt=per_prompt,
        image=image,
        mask_image=mask,
        strength=strength,
        output_type="np",
    )
    assert f"Denoising strength: {strength:g}" in got.parameters[0]

    shape1 = (4, SIZE // 4, SIZE // 4)
    n_steps = min(int(STEPS * strength), STEPS)
    stochastic = sampler == "euler_a"
    image_draw = kind == "4ch" or strength < 1
    n_pre = int(image_draw) + 2  # [image posterior], noise, masked-image posterior
    if kind == "9ch":
        draws = per_image_draws(seeds, shape1, n_pre + n_steps)
    else:  # we do not encode the masked image; diffusers does, and ignores it: feed it zeros
        draws = per_image_draws(seeds, shape1, n_pre - 1 + n_steps)
        draws.insert(2, np.zeros_like(draws[0]))
    if not stochastic:
        draws = draws[:n_pre]
    feed = FeedRandn(draws)
    for mod in (*RANDN_MODULES, INPAINT_MODULE):
        monkeypatch.setattr(importlib.import_module(mod), "randn_tensor", feed)
    pipe = diffusers.StableDiffusionInpaintPipeline(
        **{
            **ref.components,
            "scheduler": getattr(diffusers, DIFFUSERS_CLASS[sampler]).from_config(ref.scheduler.config),
        }
    )
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        want = pipe(
            prompt=[p for p in prompts for _ in range(per_prompt)],
            negative_prompt=None if negative is None else [n for n in negative for _ in range(per_prompt)],
            image=[image] * batch,  # one per image: diffusers then samples each posterior as we do
            mask_image=[mask] * batch,
            num_inference_steps=STEPS,
            guidance_scale=guidance,
            strength=strength,
            output_type="np",
        ).images
    assert not feed.draws, f"diffusers used {feed.calls} draws, {len(feed.draws)} left over"
    assert got.images.shape == want.shape == (batch, SIZE, SIZE, 3)
    diff = np.abs(got.images - want).max()
    assert diff <= TOL, f"max |ours - diffusers| = {diff * 255:.2f}/255"
    assert want.std() > 0.01


# --- behaviour and bad input ---------------------------------------------------------------------


def test_soft_mask_is_thresholded_at_one_half(models):
    ours, _ = models("9ch")
    kw = dict(num_inference_steps=2, seed=5, image=picture(2), output_type="np")
    soft = ours("a cat", mask_image=soft_mask(), **kw).images
    hard_arr = (np.asarray(soft_mask(), dtype=np.float32) / 255 >= 0.5).astype(np.uint8) * 255
    hard = ours("a cat", mask_image=hard_arr, **kw).images
    np.testing.assert_array_equal(soft, hard)
    other = ours("a cat", mask_image=255 - hard_arr, **kw).images
    assert np.abs(other - soft).max() > 0.05  # and the mask does matter


def test_four_channel_model_keeps_the_unmasked_area(models):
    # Outside the mask the final latents are the image's own (clean after the last step).
    ours, _ = models("4ch")
    keep = np.zeros((SIZE, SIZE), np.uint8)
    keep[16:48, 16:48] = 255
    out = ours(
        "a cat", num_inference_steps=3, seed=1, image=picture(3), mask_image=keep, output_type="latent"
    )
    plain = ours("a cat", num_inference_steps=3, seed=1, image=picture(3), strength=1.0, output_type="latent")
    lat_mask = nearest_resize(keep[None, None] / 255.0, (16, 16))[0, 0] >= 0.5
    assert np.abs(out.images - plain.images)[..., ~lat_mask].max() > 0.1  # outside: not img2img's result
    pixels = image_to_model(Image.fromarray(picture(3)), SIZE, SIZE)
    encoded = ours._encode(pixels, [np.random.default_rng(1)])  # the posterior sample with seed 1
    np.testing.assert_allclose(out.images[0][:, ~lat_mask], encoded[0][:, ~lat_mask], atol=1e-5)


def test_bad_inpainting_input(models, tmp_path):
    nine, _ = models("9ch")
    four, _ = models("4ch")
    img = picture(4)
    cases = [
        (four, dict(mask_image=soft_mask()), "mask_image needs image"),
        (four, dict(image=img, mask_image=soft_mask(32)), "mask_image is 32x32 but image is 64x64"),
        (four, dict(image=img, mask_image=[soft_mask()] * 2), "one mask or one per image"),
        (four, dict(image=img, mask_image="nope.png"), "mask_image"),
        (four, dict(image=img, mask_image=soft_mask(), strength=0), "strength"),
        (nine, dict(), "inpainting U-Net"),
        (nine, dict(image=img), "inpainting U-Net"),
    ]
    for pipe, kwargs, word in cases:
        with pytest.raises(ValueError, match=word):
            pipe("a cat", num_inference_steps=2, seed=0, **kwargs)


def test_cli_generate_with_mask(tmp_path, tiny_inpaint_onnx, capsys):
    Image.fromarray(picture(5)).save(tmp_path / "in.png")
    soft_mask().save(tmp_path / "mask.png")
    base = ["generate", "a cat", "--model", str(tiny_inpaint_onnx), "--steps", "2", "--seed", "4", "--quiet"]
    code = cli.main(
        [
            *base,
            "--image",
            str(tmp_path / "in.png"),
            "--mask",
            str(tmp_path / "mask.png"),
            "--out",
            str(tmp_path / "o.png"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    with Image.open(tmp_path / "o.png") as im:
        assert im.size == (SIZE, SIZE) and im.text["parameters"].endswith("Denoising strength: 1")
    assert cli.main([*base, "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "x.png")]) == 2
    assert "--mask needs --image" in capsys.readouterr().err
    soft_mask(32).save(tmp_path / "small.png")
    code = cli.main(
        [
            *base,
            "--image",
            str(tmp_path / "in.png"),
            "--mask",
            str(tmp_path / "small.png"),
            "--out",
            str(tmp_path / "y.png"),
        ]
    )
    assert code == 2 and "mask_image is 32x32" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()


SDXL_CASES = [("4ch", "euler", 1.0, 5.0), ("4ch", "euler_a", 0.75, 1.0), ("9ch", "euler", 1.0, 5.0)]
SDXL_CASES += [("9ch", "euler_a", 0.75, 1.0)]


@pytest.mark.parametrize("kind,sampler,strength,guidance", SDXL_CASES)
def test_sdxl_parity(request, monkeypatch, kind, sampler, strength, guidance):
    """An ordinary SDXL model ("4ch") and a 9-channel SDXL inpainting model exported by
    ``sdlite export`` inpaint as StableDiffusionXLInpaintPipeline does (same draws)."""
    name = "tiny_sdxl" if kind == "4ch" else "tiny_sdxl_inpaint"
    ours = Pipeline.from_pretrained(request.getfixturevalue(f"{name}_onnx"), provider="cpu", num_threads=1)
    assert ours.unet_channels == (4 if kind == "4ch" else 9)
    ref = diffusers.StableDiffusionXLInpaintPipeline.from_pretrained(
        request.getfixturevalue(f"{name}_diffusers"), torch_dtype=torch.float32
    )
    image, mask, seeds = Image.fromarray(picture(6)), soft_mask(seed=2), [3]
    kw = dict(num_inference_steps=STEPS, guidance_scale=guidance, strength=strength)
    got = ours("a cat", sampler=sampler, seed=seeds, image=image, mask_image=mask, output_type="np", **kw)
    f = ours.vae_scale_factor
    n_steps = min(int(STEPS * strength), STEPS) if sampler == "euler_a" else 0
    shape1 = (4, SIZE // f, SIZE // f)
    if kind == "4ch":  # posterior, noise, steps; the masked image diffusers encodes and ignores
        draws = per_image_draws(seeds, shape1, 2 + n_steps)
        draws.insert(2, np.zeros_like(draws[0]))
    else:  # [image posterior], noise, masked-image posterior, steps
        draws = per_image_draws(seeds, shape1, int(strength < 1) + 2 + n_steps)
    feed = FeedRandn(draws)
    for mod in (
        *RANDN_MODULES,
        "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint",
    ):
        monkeypatch.setattr(importlib.import_module(mod), "randn_tensor", feed)
    scheduler = getattr(diffusers, DIFFUSERS_CLASS[sampler]).from_config(ref.scheduler.config)
    pipe = diffusers.StableDiffusionXLInpaintPipeline(**{**ref.components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        want = pipe(
            "a cat", image=image, mask_image=mask, height=SIZE, width=SIZE, output_type="np", **kw
        ).images
    assert not feed.draws
    diff = np.abs(got.images - want).max()
    assert diff <= TOL, f"max |ours - diffusers| = {diff * 255:.2f}/255"
    assert want.std() > 0.01
