"""Images in and out: PIL/array conversion and PNGs with AUTOMATIC1111's ``parameters`` chunk."""

from __future__ import annotations

import base64
import binascii
import io
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from . import rules


def to_numpy(decoded: np.ndarray) -> np.ndarray:
    """VAE output [B,3,H,W] in [-1,1] -> float32 [B,H,W,3] in [0,1] (diffusers' postprocess)."""
    x = np.asarray(decoded, dtype=np.float32)
    return np.clip(x / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """float [B,H,W,3] in [0,1] -> PIL images, rounding as diffusers' ``numpy_to_pil`` does."""
    return [Image.fromarray(im) for im in (images * 255).round().astype(np.uint8)]


# What an input image may be: the formats Stable Diffusion front-ends exchange.  Pillow's other
# decoders (TIFF, BMP, GIF, EPS through Ghostscript, ...) are attack surface nobody here needs.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
ALLOWED = "a PNG, JPEG or WebP image"
# The decode budget when the caller gives none (the CLI's --image, the Python API's file paths):
# the largest output the pipeline makes.  Callers that know the model family pass its own budget.
DEFAULT_MAX_PIXELS = rules.MAX_INPUT_PIXELS


def _unreadable(argument: str, source: Any, reason: str) -> ValueError:
    # The path, when there is one, helps; the decoder's own message may hold object reprs (memory
    # addresses), so it never reaches the caller.
    if _is_path(source):
        return ValueError(f"{argument}: {str(source)!r} is not a readable image file: {reason}")
    return ValueError(f"{argument} is not a readable image: {reason}")


def _is_path(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike))


def open_image(
    source: bytes | str | os.PathLike, argument: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Open an encoded image (bytes or a file path) by its header only: the format and the size
    are checked before a single pixel is decoded, so a 10 KB PNG of 9000x9000 costs nothing.

    Raises ValueError naming ``argument`` and what is allowed; never with an object's repr."""
    fp: Any = source if _is_path(source) else io.BytesIO(bytes(source))
    must = f"it must be {ALLOWED}"
    try:
        im = Image.open(fp, formats=IMAGE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _unreadable(argument, source, f"{must} of at most {max_pixels} pixels") from None
    except OSError as err:
        if _is_path(source) and err.errno is not None:  # the file system, not the data
            raise _unreadable(argument, source, err.strerror or "cannot open it") from None
        raise _unreadable(argument, source, must) from None
    except Exception:  # noqa: BLE001 - a hostile header can raise anything; all mean "not an image"
        raise _unreadable(argument, source, must) from None
    width, height = im.size
    if width < 1 or height < 1 or width * height > max_pixels:
        im.close()
        reason = f"{must} of at most {max_pixels} pixels, got {width}x{height}"
        raise _unreadable(argument, source, reason)
    return im


def decode(im: Image.Image, argument: str = "image", mode: str | None = "RGB") -> Image.Image:
    """Decode an image from ``open_image`` (and close it): converted to ``mode``, or in its own
    mode with None.  Corrupt or truncated data is a ValueError naming ``argument``."""
    kind = im.format or "image"
    try:
        with im:
            im.load()
            return im.convert(mode) if mode else im.copy()
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - decoders of untrusted data fail in many ways: all mean "corrupt"
        reason = f"this {kind} data is truncated or corrupt (it must be {ALLOWED})"
        raise _unreadable(argument, im.filename or b"", reason) from None


def read_image(
    source: bytes | str | os.PathLike,
    argument: str = "image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    mode: str | None = "RGB",
) -> Image.Image:
    """Encoded bytes or a file path -> decoded image (see ``open_image`` and ``decode``)."""
    return decode(open_image(source, argument, max_pixels), argument, mode)


def base64_bytes(text: str, argument: str = "image") -> bytes:
    """Base64 text, with or without a ``data:image/...;base64,`` prefix -> bytes."""
    if not isinstance(text, str):
        raise ValueError(f"{argument} must be base64 text of {ALLOWED}, got {type(text).__name__}")
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{argument} must be base64 text of {ALLOWED}; it is not valid base64") from None


def read_base64_images(texts: Sequence[str], argument: str, max_pixels: int) -> list[Image.Image]:
    """Base64 images -> RGB images, all of them together within ``max_pixels``.

    Every header is read before anything is decoded, so a request whose images add up to too
    much is refused without decoding any of them.  Errors are ``ImageInputError`` with ``index``.
    """
    opened: list[Image.Image] = []
    try:
        for i, text in enumerate(texts):
            name = f"{argument}[{i}]"
            try:
                opened.append(open_image(base64_bytes(text, name), name, max_pixels))
            except ValueError as err:
                raise ImageInputError(str(err), i) from None
        total = sum(im.width * im.height for im in opened)
        if total > max_pixels:
            raise ImageInputError(
                f"{argument} must hold at most {max_pixels} pixels in all, got {total}", None
            )
        out = []
        for i, im in enumerate(opened):
            try:
                out.append(decode(im, f"{argument}[{i}]"))
            except ValueError as err:
                raise ImageInputError(str(err), i) from None
        return out
    finally:
        for im in opened:
            im.close()


class ImageInputError(ValueError):
    """A bad image among several: ``index`` says which (None: the set as a whole)."""

    def __init__(self, message: str, index: int | None) -> None:
        super().__init__(message)
        self.index = index


def load_image(image: Any, argument: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A PIL image, an [H,W,3]/[H,W] array (uint8, or float in [0,1]) or a file path -> RGB image.

    A file is checked by its header (format, ``max_pixels``) before it is decoded."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, argument, max_pixels)
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


def check_target(path: str | os.PathLike, argument: str = "out") -> None:
    """Refuse a target that exists and is not a regular file (after symlinks): a rename onto
    /dev/full or a FIFO would replace the node itself, which root may do and nobody means."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as err:
        raise ValueError(f"{argument}: cannot write {str(path)!r}: {err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        raise ValueError(f"{argument}: {str(path)!r} exists and is {kind}; sdlite writes only regular files")


def save_png(image: Image.Image, path: str | os.PathLike, parameters: str | None = None) -> Path:
    """Write ``image`` as PNG with a ``parameters`` tEXt/iTXt chunk; temp name, then rename.

    ValueError when ``path`` exists and is not a regular file (see ``check_target``); an
    OSError (a full disk, say) leaves no temp file behind."""
    path = Path(path)
    check_target(path)
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        # iTXt when needed: tEXt is Latin-1 only, prompts are often not.
        try:
            parameters.encode("latin-1")
            info.add_text("parameters", parameters)
        except UnicodeEncodeError:
            info.add_itxt("parameters", parameters)
    # open(..., "xb") rather than mkstemp: the file gets the usual umask permissions, not 0600.
    # The stem is cut (48 characters: at most 192 bytes) so that a target name near the 255-byte
    # limit leaves room for the temp name; the suffix stays, as batch_manifest's TEMP_PNG expects.
    tmp = path.parent / f".{path.stem[:48]}{path.suffix[:16]}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            image.save(f, format="PNG", pnginfo=info)
        check_target(path)  # again: the target may have changed while the image was encoded
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
