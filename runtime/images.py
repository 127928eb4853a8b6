"""Images in and out: PIL/array conversion and PNGs with AUTOMATIC1111's ``parameters`` chunk."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin


def to_numpy(decoded: np.ndarray) -> np.ndarray:
    """VAE output [B,3,H,W] in [-1,1] -> float32 [B,H,W,3] in [0,1] (diffusers' postprocess)."""
    x = np.asarray(decoded, dtype=np.float32)
    return np.clip(x / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """float [B,H,W,3] in [0,1] -> PIL images, rounding as diffusers' ``numpy_to_pil`` does."""
    return [Image.fromarray(im) for im in (images * 255).round().astype(np.uint8)]


def load_image(image: Any, argument: str = "image") -> Image.Image:
    """A PIL image, an [H,W,3]/[H,W] array (uint8, or float in [0,1]) or a file path -> RGB image."""
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as im:
                im.load()
                return im.convert("RGB")
        except (OSError, ValueError) as err:
            raise ValueError(f"{argument}: {str(image)!r} is not a readable image file ({err})") from err
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or arr.size == 0:
            raise ValueError(
                f"{argument} must be an array of shape [H, W, 3] or [H, W], got shape {image.shape}"
            )
        if arr.dtype == np.uint8:
            return Image.fromarray(arr).convert("RGB")
        if np.issubdtype(arr.dtype, np.floating):
            if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
                raise ValueError(f"{argument}: a float array must hold finite values in [0, 1]")
            return Image.fromarray((arr * 255).round().astype(np.uint8)).convert("RGB")
        raise ValueError(f"{argument} array must be uint8 or float in [0, 1], got dtype {arr.dtype}")
    raise ValueError(
        f"{argument} must be a PIL image, a numpy array [H, W, 3] or an image file path, "
        f"got {type(image).__name__}"
    )


def image_to_model(image: Image.Image, width: int, height: int) -> np.ndarray:
    """RGB image -> float32 [1,3,H,W] in [-1,1], resized with Lanczos if needed (as diffusers)."""
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return (arr * 2.0 - 1.0).transpose(2, 0, 1)[None]


def a1111_parameters(
    prompt: str,
    negative_prompt: str | None,
    steps: int,
    sampler: str,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """The ``parameters`` text AUTOMATIC1111 writes and reads (and civitai, ComfyUI importers)."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    fields: dict[str, Any] = {
        "Steps": steps,
        "Sampler": sampler,
        "CFG scale": f"{cfg_scale:g}",
        "Seed": seed,
        "Size": f"{width}x{height}",
    }
    if model:
        fields["Model"] = model
    fields.update(extra or {})
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items()))
    return "\n".join(lines)


def save_png(image: Image.Image, path: str | os.PathLike, parameters: str | None = None) -> Path:
    """Write ``image`` as PNG with a ``parameters`` tEXt/iTXt chunk; temp name, then rename."""
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        # iTXt when needed: tEXt is Latin-1 only, prompts are often not.
        try:
            parameters.encode("latin-1")
            info.add_text("parameters", parameters)
        except UnicodeEncodeError:
            info.add_itxt("parameters", parameters)
    # open(..., "xb") rather than mkstemp: the file gets the usual umask permissions, not 0600.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            image.save(f, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
