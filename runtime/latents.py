"""The latents a run starts from, and every random draw of the pipeline.

Each image has its own generator (``Request.rngs``); ``draw_noise`` is the one way the pipeline
draws from them, one float32 standard normal of one image's latent shape per image, so that
image i depends only on seed i.  The order of the draws is in ``sdlite.pipeline``'s docstring.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import images as imgs
from . import inpaint as inp
from .request import Request

# pixels [B,3,H,W] in [-1,1] -> scaled latents, drawing a posterior sample when the VAE gives one
Encode = Callable[[np.ndarray, list[np.random.Generator]], np.ndarray]


def draw_noise(rngs: list[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """[B, *shape] float32 standard normals, row i from generator i."""
    return np.stack([r.standard_normal(shape, dtype=np.float32) for r in rngs])


def posterior_sample(parameters: np.ndarray, rngs: list[np.random.Generator]) -> np.ndarray:
    """``mean + std * eps`` from the VAE encoder's [B, 2C, h, w] mean and log-variance."""
    mean, logvar = np.split(parameters, 2, axis=1)
    std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
    return mean + std * draw_noise(rngs, mean.shape[1:])


def text_to_image(req: Request) -> np.ndarray:
    """The caller's ``latents`` or fresh noise, scaled to the sampler's first sigma."""
    noise = req.latents if req.latents is not None else draw_noise(req.rngs, req.latent_shape)
    return noise.astype(np.float32) * np.float32(req.scheduler.init_noise_sigma)


def _pixels(req: Request) -> np.ndarray:
    assert req.init_images is not None
    rows = [imgs.image_to_model(im, req.width, req.height) for im in req.init_images]
    return np.concatenate(req.per_image(rows))


def image_to_image(req: Request, encode: Encode) -> np.ndarray:
    """The encoded init image(s) noised to the first timestep that ``strength`` keeps."""
    x = encode(_pixels(req), req.rngs)
    noise = draw_noise(req.rngs, req.latent_shape)
    return req.scheduler.add_noise(x, noise, np.repeat(req.timesteps[:1], req.batch))


def inpainting(req: Request, encode: Encode, nine_channels: bool) -> tuple[np.ndarray, inp.Inpainting]:
    """Initial latents and loop state as diffusers' StableDiffusionInpaintPipeline prepares them.

    Draws per image, in order: the image's posterior sample (only when its latents are
    needed: a 4-channel U-Net, or strength < 1), the initial noise, the masked image's
    posterior sample (9-channel U-Nets); then the sampler's per-step noise.
    """
    assert req.init_images is not None and req.masks is not None
    pixels = _pixels(req)
    masks = req.masks * len(req.init_images) if len(req.masks) == 1 else req.masks
    mask_px = np.concatenate(req.per_image([inp.mask_to_model(m, req.width, req.height) for m in masks]))
    image_latents = encode(pixels, req.rngs) if (not nine_channels or req.strength < 1) else None
    noise = draw_noise(req.rngs, req.latent_shape)
    if req.strength == 1:  # diffusers' is_strength_max: pure noise, not the noised image
        x = noise * np.float32(req.scheduler.init_noise_sigma)
    else:
        x = req.scheduler.add_noise(image_latents, noise, np.repeat(req.timesteps[:1], len(noise)))
    mask = inp.nearest_resize(mask_px, req.latent_shape[1:])
    masked = encode(inp.masked_pixels(pixels, mask_px), req.rngs) if nine_channels else None
    return x, inp.Inpainting(mask, masked, None if nine_channels else image_latents, noise)
