"""Every limit and default in one place, and the checks that every entry point makes with them.

The Python API, the CLI, batch jobs and the server call these validators, so each refuses the
same bad value by the same rule, before any model runs.  A validator returns the cleaned value
or raises ``RuleError`` (a ValueError) whose text reads ``"<field> must be <allowed>, got
<value!r>"``; each entry point turns it into its own surface (the API raises it, the CLI prints
``sdlite: error: ...`` with exit 2, batch records the line as failed, the server answers 422
naming ``err.field``).
"""

from __future__ import annotations

import math
import numbers
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .samplers import SAMPLERS, make_scheduler
from .samplers.names import normalize

# A seed is a PCG64 seed: numpy takes any non-negative int, 64 bits is what UIs can show.
MAX_SEED = 2**64 - 1
# diffusers refuses more inference steps than training steps (1000 for every SD family).
MAX_STEPS = 1000
# Images per call or request (prompts x images per prompt): more is a batch job, not a call.
MAX_IMAGES = 64
# A prompt's characters: 8 chunks of 75 tokens (MAX_PROMPT_CHUNKS) take ~2,500 characters of
# English, so 8,000 leaves room for syntax and other scripts.  It also bounds a server's answer:
# AUTOMATIC1111's shape repeats the prompts once per image (64 x 2 x 8,000 characters).
MAX_PROMPT_CHARS = 8000
# AUTOMATIC1111's long prompts: chunks of 75 tokens (+ start/end = CLIP's 77), a chunk that would
# split mid-phrase goes back to the last comma within 20 tokens.  Each chunk is one text-encoder
# row and 77 more U-Net cross-attention keys; 8 chunks (600 tokens) is the default limit.
CHUNK_TOKENS = 75
COMMA_BACKTRACK = 20
MAX_PROMPT_CHUNKS = 8
# A name a client sends (sampler, schedule, model, task id): the longest sampler name is ~30.
MAX_NAME_CHARS = 128
# An error echoes at most this much of a bad value: a 1 MB prompt is refused in a few hundred bytes.
MAX_ECHO_CHARS = 200
GUIDANCE_RANGE = (0.0, 100.0)
STRENGTH_RANGE = (0.0, 1.0)  # open below: strength 0 would run no step
# Image sides are multiples of the VAE's factor x the U-Net's downsampling: 8 x 1 for the
# published SD models (tiny test models: 4 x 2).  A model folder may say otherwise.
VAE_FACTOR = 8
SIZE_MULTIPLE = 8
# One image's area: beyond it the U-Net's attention needs tens of GB (an 8192-wide request
# reached 12.9 GB RSS before this rule existed; the VAE goes to tiles above
# VAE_WHOLE_MAX_PIXELS, so it does not bind). --max-pixels changes them.
MAX_PIXELS_BY_FAMILY = {"sd": 1536 * 1536, "sdxl": 2048 * 2048}
MAX_PIXELS = max(MAX_PIXELS_BY_FAMILY.values())  # the largest any family allows
# An init, mask or control image's area, judged by its header before any pixel is decoded: a
# 12 MP photo passes; a 10 KB PNG claiming 9000x9000 (a decompression bomb) does not.
MAX_INPUT_PIXELS = 4096 * 4096
# All images of one call together (the U-Net runs them as one batch): 64 images of 1024x1024.
MAX_BATCH_PIXELS = MAX_IMAGES * 1024 * 1024
OUTPUT_TYPES = ("pil", "np", "latent")
# A name that becomes a file name (a batch item's id -> "<id>.png"), in UTF-8 bytes: file systems
# count bytes (255 on ext4, APFS, NTFS), and 200 leaves room for ".png" and the temporary name
# around it (".<id>.png.<8 hex>.tmp").  Characters would let 200 "é" (400 bytes) through.
MAX_NAME_BYTES = 200
# The VAE decodes (and encodes) an image whole up to this area: beyond it the decoder's
# mid-block attention, quadratic in the latent cells, outgrows memory.  Larger images go through
# the VAE in tiles (diffusers' enable_tiling), which need one tile's memory whatever the size, so
# with tiles only the U-Net's MAX_PIXELS_BY_FAMILY binds.
VAE_WHOLE_MAX_PIXELS = 1024 * 1024
VAE_TILE_OVERLAP = 0.25  # diffusers' tile_overlap_factor
# Tile sides in latent cells: a multiple of 4 so that the 25% overlap falls on whole cells (else
# the blended tiles do not add up to the image), and at least 8 so that a tile is more than seam.
VAE_TILE_CELL_MULTIPLE = 4
VAE_TILE_MIN_CELLS = 8
VAE_TILE_DEFAULT = 512  # pixels, when the VAE's config gives no sample_size (diffusers' tile size)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0 and C1 but tab, newline, CR
_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_IN_NAMES = re.compile("[\x00-\x1f\x7f-\x9f/\\\\]")  # controls and path separators


class RuleError(ValueError):
    """A value outside its rule; ``field`` names it and ``allowed`` says what is allowed."""

    def __init__(self, field: str, allowed: str, value: Any) -> None:
        super().__init__(f"{field} must be {allowed}, got {value!r}")
        self.field = field
        self.allowed = allowed
        self.value = value

    def __reduce__(self) -> tuple:
        # Rebuilt from its parts: batch workers (Ray) send errors between processes.
        return RuleError, (self.field, self.allowed, self.value)


# --- presets: the sampling defaults per model family (detection lives in sdlite.presets) -------


@dataclass(frozen=True)
class Preset:
    name: str
    sampler: str
    steps: int
    guidance: float
    sampler_options: dict[str, Any] = field(default_factory=dict)
    source: str = "built in"  # why this preset applies (shown by `sdlite info`)

    def describe(self) -> str:
        opts = "".join(f", {k}={v}" for k, v in self.sampler_options.items())
        steps = f"{self.steps} step{'s' if self.steps != 1 else ''}"
        return f"{self.name}: {self.sampler}{opts}, {steps}, guidance {self.guidance:g} ({self.source})"


_TRAILING = {"timestep_spacing": "trailing"}
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("sd", "unipc", 20, 7.5),
        Preset("sdxl", "unipc", 20, 5.0),
        Preset("sd-turbo", "euler_a", 1, 0.0, _TRAILING),
        Preset("sdxl-turbo", "euler_a", 1, 0.0, _TRAILING),
        Preset("lcm", "lcm", 4, 8.0),
        Preset("lcm-lora", "lcm", 4, 1.0),
    )
}


def max_pixels(family: str) -> int:
    """One image's largest area for a model family ("sd", "sdxl", or a preset name such as "sdxl-turbo")."""
    return MAX_PIXELS_BY_FAMILY["sdxl" if "xl" in family.lower() else "sd"]


# --- validators --------------------------------------------------------------------------------


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(field: str, value: Any, lo: int, hi: int | None = None) -> int:
    if not is_int(value) or value < lo or (hi is not None and value > hi):
        allowed = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
        raise RuleError(field, allowed, value)
    return int(value)


def check_float(
    field: str, value: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False
) -> float:
    """A finite real number (not a bool) in [lo, hi] ((lo, hi] with ``lo_open``); None: no bound."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        if lo is None and hi is None:
            allowed = "a finite number"
        else:
            low = "-inf" if lo is None else f"{lo:g}"
            high = "inf" if hi is None else f"{hi:g}"
            allowed = f"a finite number in {'(' if lo_open or lo is None else '['}{low}, {high}]"
        raise RuleError(field, allowed, value)
    return float(value)


def check_choice(field: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise RuleError(field, f"one of {', '.join(choices)}", value)
    return value


def check_text(field: str, value: Any, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """A str of at most ``max_chars`` without lone surrogates or control characters (bar \\t \\n \\r)."""
    if not isinstance(value, str):
        raise RuleError(field, "a string", value)
    if len(value) > max_chars:
        raise RuleError(field, f"at most {max_chars} characters", f"{len(value)} characters")
    if (bad := _SURROGATE.search(value)) is not None:  # no UTF-8 encoder (PNG text, JSON) writes one
        raise RuleError(field, "text without lone surrogates", bad.group())
    if (bad := _CONTROL.search(value)) is not None:
        raise RuleError(field, "text without control characters (tab, newline and CR are fine)", bad.group())
    return value


def check_file_name(field: str, value: Any, max_bytes: int = MAX_NAME_BYTES) -> str:
    """A name used as a file name: 1 to ``max_bytes`` UTF-8 bytes, no path separators, control
    characters or lone surrogates, not starting with "." ("." and ".." are folders, and the
    temporary files' names start with ".")."""
    if not isinstance(value, str) or not value:
        raise RuleError(field, "a non-empty string", value)
    if (bad := _SURROGATE.search(value)) is not None:  # not encodable: no file can have this name
        raise RuleError(field, "text without lone surrogates", bad.group())
    size = len(value.encode())
    if size > max_bytes:
        raise RuleError(field, f"at most {max_bytes} bytes in UTF-8 (it names a file)", f"{size} bytes")
    if _NOT_IN_NAMES.search(value) is not None:
        raise RuleError(field, "a name without path separators or control characters", value)
    if value.startswith("."):
        raise RuleError(field, "a name not starting with '.'", value)
    return value


def check_prompts(field: str, value: Any, max_chars: int = MAX_PROMPT_CHARS) -> list[str]:
    """One prompt or a non-empty list of them -> a list."""
    if isinstance(value, str):
        return [check_text(field, value, max_chars)]
    if isinstance(value, (list, tuple)) and value and all(isinstance(p, str) for p in value):
        return [check_text(field, p, max_chars) for p in value]
    raise RuleError(field, "a string or a non-empty list of strings", value)


def check_chunks(field: str, chunks: int, limit: int = MAX_PROMPT_CHUNKS, size: int = CHUNK_TOKENS) -> int:
    """A prompt's number of chunks of ``size`` tokens (``BREAK`` starts a new one) at most ``limit``."""
    if chunks > limit:
        raise RuleError(
            field,
            f"at most {limit} chunks of {size} tokens ({limit * size} tokens; BREAK starts a new chunk); "
            "shorten it",
            f"{chunks} chunks",
        )
    return chunks


def check_seeds(value: Any, n: int, field: str = "seed") -> list[int]:
    """One seed per image: None (random 32-bit seeds), an int (image i gets seed + i) or a list."""
    if value is None:
        return [secrets.randbits(32) for _ in range(n)]
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise RuleError(field, f"a list with one seed per image ({n}) or a single seed", value)
        return [check_int(field, s, 0, MAX_SEED) for s in value]
    if is_int(value) and 0 <= value <= MAX_SEED and value + n - 1 > MAX_SEED:
        raise RuleError(field, f"an integer in [0, {MAX_SEED - n + 1}] for {n} images", value)
    base = check_int(field, value, 0, MAX_SEED)
    return [base + i for i in range(n)]


def size_multiple(vae_factor: int, unet_downsampling: int = 1) -> int:
    return vae_factor * unet_downsampling


def check_size(
    field: str, value: Any, factor: int, static: int | None = None, *, vae_factor: int | None = None
) -> int:
    """An image side: a positive multiple of ``factor`` (the size multiple), ``static`` if fixed.

    ``static`` is the side in pixels of a model exported with fixed shapes; ``vae_factor``
    (when known) spells out how ``factor`` comes about.
    """
    if not is_int(value) or value <= 0 or value % factor:
        if vae_factor:
            why = f"the VAE's factor {vae_factor} x the U-Net's downsampling {factor // vae_factor}"
        else:
            why = "the VAE's factor x the U-Net's downsampling"
        raise RuleError(field, f"a positive multiple of {factor} ({why})", value)
    if static is not None and value != static:
        raise RuleError(field, f"{static} (this model was exported with a fixed size)", value)
    return int(value)


def check_pixels(width: int, height: int, n: int = 1, max_pixels: int = MAX_PIXELS) -> None:
    """One image's area at most ``max_pixels``, all ``n`` images' at most ``MAX_BATCH_PIXELS``."""
    if width * height > max_pixels:
        side = math.isqrt(max_pixels)
        raise RuleError(
            "height x width",
            f"at most {max_pixels} pixels (e.g. {side}x{side}); a larger image is too large to "
            "fit in memory for the U-Net",
            f"{height}x{width}",
        )
    if n * width * height > MAX_BATCH_PIXELS:
        raise RuleError(
            "height x width x images",
            f"at most {MAX_BATCH_PIXELS} pixels in one call (e.g. {MAX_IMAGES} images of 1024x1024): "
            "the images are one U-Net batch; make fewer per call",
            f"{height}x{width}x{n}",
        )


def check_images(per_prompt: Any, n_prompts: int, field: str = "num_images_per_prompt") -> int:
    """Images per prompt, with prompts x images per prompt at most ``MAX_IMAGES``."""
    per_prompt = check_int(field, per_prompt, 1, MAX_IMAGES)
    if per_prompt * n_prompts > MAX_IMAGES:
        raise RuleError(
            f"prompts x {field}", f"at most {MAX_IMAGES} images per call", f"{n_prompts} x {per_prompt}"
        )
    return per_prompt


def check_strength(
    strength: Any, steps: int, field: str = "strength", steps_field: str = "num_inference_steps"
) -> int:
    """Image-to-image strength in (0, 1] -> the number of steps it runs (at least one)."""
    strength = check_float(field, strength, *STRENGTH_RANGE, lo_open=True)
    kept = min(int(steps * strength), steps)
    if kept < 1:
        raise RuleError(
            field,
            f"at least 1/{steps} with {steps_field}={steps}, else it leaves no step to run "
            f"(raise {field} or {steps_field}: need {field} x {steps_field} >= 1)",
            strength,
        )
    return kept


def scheduler_for(sampler: Any, options: Any = None, config: dict[str, Any] | None = None) -> Any:
    """The Scheduler for a sampler name and options (RuleError naming the bad one)."""
    if options is not None and not isinstance(options, dict):
        raise RuleError("sampler_options", "a dict of sampler options or None", options)
    known = {normalize(name) for name in SAMPLERS}
    if not isinstance(sampler, str) or normalize(sampler) not in known:
        raise RuleError(
            "sampler", f"a sampler name (unknown sampler; valid names: {', '.join(SAMPLERS)})", sampler
        )
    try:
        return make_scheduler(sampler, config, **(options or {}))
    except ValueError as err:
        where = "sampler_options" if options else "sampler"
        raise RuleError(
            where, f"what {sampler!r} takes with this model ({err})", options or sampler
        ) from None


def check_sampler(value: Any, options: Any = None, config: dict[str, Any] | None = None) -> str:
    """A sampler name that ``sdlite samplers`` lists (and, given, options it takes)."""
    scheduler_for(value, options, config)
    return value


# --- the VAE's tiles and live previews ---------------------------------------------------------


def check_vae_tiling(value: Any, width: int, height: int) -> bool:
    """Whether the VAE works in tiles: None decides by ``VAE_WHOLE_MAX_PIXELS``, True/False force."""
    if value is not None and not isinstance(value, bool):
        raise RuleError("vae_tiling", "True, False or None (automatic)", value)
    whole_fits = width * height <= VAE_WHOLE_MAX_PIXELS
    if value is False and not whole_fits:
        raise RuleError(
            "vae_tiling",
            f"True or None for images over {VAE_WHOLE_MAX_PIXELS} pixels (a whole decode of "
            f"{height}x{width} would not fit in memory)",
            value,
        )
    return not whole_fits if value is None else value


def check_vae_tile_size(value: Any, vae_factor: int, field: str = "vae_tile_size") -> int:
    """A VAE tile's side in pixels: a multiple of 4 latent cells, at least ``VAE_TILE_MIN_CELLS``."""
    step = VAE_TILE_CELL_MULTIPLE * vae_factor
    least = max(VAE_TILE_MIN_CELLS * vae_factor, step)
    if not is_int(value) or value < least or value % step:
        raise RuleError(
            field,
            f"a multiple of {step} pixels (4 latent cells of {vae_factor} pixels, so that the "
            f"{VAE_TILE_OVERLAP:g} overlap falls on whole cells) and at least {least}",
            value,
        )
    return int(value)


def default_vae_tile_size(sample_size: Any, vae_factor: int) -> int:
    """diffusers' tile: the VAE config's sample_size, when it is a valid tile, else the default."""
    if isinstance(sample_size, (list, tuple)) and sample_size:
        sample_size = sample_size[0]
    for size in (sample_size, VAE_TILE_DEFAULT):
        try:
            return check_vae_tile_size(size, vae_factor)
        except RuleError:
            continue
    return VAE_TILE_MIN_CELLS * vae_factor


def check_preview(preview: Any, every: Any) -> int:
    """The preview callback (callable or None) and its period in steps."""
    if preview is not None and not callable(preview):
        raise RuleError("preview", "callable(step, total, image) or None", preview)
    return check_int("preview_every", every, 1, MAX_STEPS)
