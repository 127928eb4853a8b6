"""Inpainting: the mask as diffusers' StableDiffusion(XL)InpaintPipeline prepares it, and the two
ways a U-Net uses it.

The mask (white = repaint, black = keep) goes through what diffusers' mask processor
(``VaeImageProcessor(do_normalize=False, do_binarize=True, do_convert_grayscale=True)``) does to
a PIL image: resized to the output size with Lanczos in its own mode, converted to grayscale
("L"), scaled to [0, 1] and **binarized at 0.5** (< 0.5 keep, >= 0.5 repaint).  So a soft or
anti-aliased mask is thresholded, never blended, exactly as diffusers' inpaint pipelines do.
Arrays are read as 8-bit grayscale images first (uint8, or float in [0, 1]).

- 9-channel inpainting U-Nets take ``[latents, mask, masked-image latents]`` on the channel
  axis; the masked image is the image with the repainted area set to 0 (mid-gray in [-1, 1]).
- Ordinary 4-channel U-Nets denoise the whole latent; after every step the area outside the
  mask is replaced by the original image's latents noised to the next timestep (clean after
  the last step), with the same noise that started the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from . import images as imgs


def load_mask(mask: Any, argument: str = "mask_image") -> Image.Image:
    """A PIL image (any mode), an [H,W] / [H,W,1] / [H,W,3] array or an image file path."""
    if isinstance(mask, (str, os.PathLike)):
        return imgs.read_image(mask, argument, mode=None)  # format and size checked by the header
    if isinstance(mask, Image.Image):
        return mask
    if isinstance(mask, np.ndarray):
        arr = mask[..., 0] if mask.ndim == 3 and mask.shape[-1] == 1 else mask
        if arr.ndim == 2 and arr.size:
            if arr.dtype == np.uint8:
                return Image.fromarray(arr, mode="L")
            if np.issubdtype(arr.dtype, np.floating):
                if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
                    raise ValueError(f"{argument}: a float array must hold finite values in [0, 1]")
                return Image.fromarray((arr * 255).round().astype(np.uint8), mode="L")
            raise ValueError(f"{argument} array must be uint8 or float in [0, 1], got dtype {arr.dtype}")
        return imgs.load_image(mask, argument)  # [H, W, 3]: an RGB picture of the mask (or its error)
    raise ValueError(
        f"{argument} must be a PIL image, a numpy array [H, W] or an image file path, "
        f"got {type(mask).__name__}"
    )


def mask_to_model(mask: Image.Image, width: int, height: int) -> np.ndarray:
    """float32 [1, 1, H, W] of 0 (keep) / 1 (repaint), as diffusers' mask processor makes it."""
    # As diffusers: resampled in the mask's own mode, before the grayscale conversion.
    mask = mask.resize((width, height), resample=Image.Resampling.LANCZOS)
    arr = np.asarray(mask.convert("L"), dtype=np.float32) / np.float32(255.0)
    return (arr >= 0.5).astype(np.float32)[None, None]


def nearest_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``torch.nn.functional.interpolate(x, size)`` (mode "nearest") on [..., H, W] arrays.

    PyTorch picks source index ``min(floor(i * (in / out)), in - 1)`` with the scale in float32.
    """
    rows = _nearest_index(x.shape[-2], size[0])
    cols = _nearest_index(x.shape[-1], size[1])
    return x[..., rows[:, None], cols[None, :]]


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def masked_pixels(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the repainted area zeroed: diffusers' ``image * (mask < 0.5)``."""
    return pixels * (mask < 0.5).astype(pixels.dtype)


@dataclass
class Inpainting:
    """Per-run inpainting state for the denoising loop (one row per generated image)."""

    mask: np.ndarray  # [B, 1, h, w] latent-size mask, 1 = repaint
    masked_latents: np.ndarray | None = None  # [B, C, h, w]: 9-channel U-Nets
    image_latents: np.ndarray | None = None  # [B, C, h, w]: 4-channel U-Nets
    noise: np.ndarray | None = None  # the run's initial noise, re-used to noise image_latents

    def unet_input(self, model_in: np.ndarray, do_cfg: bool) -> np.ndarray:
        """Append mask and masked-image latents on the channel axis (9-channel U-Nets)."""
        if self.masked_latents is None:
            return model_in
        extra = np.concatenate([self.mask, self.masked_latents], axis=1).astype(model_in.dtype, copy=False)
        if do_cfg:
            extra = np.concatenate([extra, extra])
        return np.concatenate([model_in, extra], axis=1)

    def blend(self, x: np.ndarray, scheduler: Any, next_t: Any | None) -> np.ndarray:
        """Keep the original outside the mask (4-channel U-Nets), noised to ``next_t`` unless last."""
        if self.image_latents is None:
            return x
        proper = self.image_latents
        if next_t is not None:
            proper = scheduler.add_noise(proper, self.noise, np.asarray([next_t]))
        m = self.mask.astype(x.dtype, copy=False)
        return (1 - m) * proper + m * x
