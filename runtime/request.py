"""One pipeline call's arguments, checked and resolved into a ``Request`` before any model runs.

``resolve`` fills in the preset's defaults, applies the rules of ``sdlite.rules`` and what the
loaded graphs allow (``sdlite.graph``), loads the init images and masks, draws the seeds and
sets the sampler's timesteps.  Every later step of the pipeline reads the ``Request`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import images as imgs
from . import inpaint as inp
from . import rules
from .conditioning import PromptEncoder, SDXLOptions
from .graph import Graph
from .prompt_encoding import TextPlan
from .rules import Preset, RuleError
from .samplers import Scheduler
from .samplers.names import A1111, DIFFUSERS_CLASSES, normalize


@dataclass
class Arguments:
    """``Pipeline.__call__``'s arguments as given (its signature holds the defaults).

    Every argument is checked before any model runs (ValueError naming it, see
    ``sdlite.rules``).  ``seed``: an int (image i gets seed + i), a list with one seed per
    image, or None (random seeds, reported in ``.seeds``).  ``image`` switches to
    image-to-image: ``strength`` of the ``num_inference_steps`` are run.  ``callback(step,
    total, latents)`` runs after each model call (step counts from 1); returning False
    cancels.  ``num_inference_steps``, ``guidance_scale`` and ``sampler`` left at None come
    from the pipeline's ``preset``.  ``mask_image`` with ``image`` inpaints (white = repaint, see
    ``sdlite.inpaint``); ``strength`` defaults to 0.8 for image-to-image and 1.0 for
    inpainting, as in diffusers.  SDXL only (``sdlite.conditioning``): ``prompt_2``,
    ``negative_prompt_2``, ``original_size``, ``crops_coords_top_left``, ``target_size``
    and, for refiners, ``aesthetic_score`` / ``negative_aesthetic_score``, as in diffusers.
    ``preview(step, total, image)`` gets a cheap PIL image of the denoised estimate at every
    ``preview_every``-th step and the last (``sdlite.preview``; output size, images side by
    side for a batch).  ``vae_tiling``: None decodes (and encodes) in tiles above
    ``sdlite.rules.VAE_WHOLE_MAX_PIXELS``, True / False force it; ``vae_tile_size`` (pixels,
    default ``Pipeline.vae_tile_size``) as diffusers' tile (``sdlite.vae``).
    ``loras``: LoRA name -> weight for this call (see ``load_lora_weights``); None or {}: none.
    Prompts read AUTOMATIC1111's syntax (``sdlite.conditioning``): weights, BREAK, long prompts
    in 75-token chunks (at most ``prompt_encoder.max_chunks``), prompt editing.
    """

    prompt: Any
    negative_prompt: Any
    num_inference_steps: Any
    guidance_scale: Any
    height: Any
    width: Any
    sampler: Any
    sampler_options: Any
    seed: Any
    latents: Any
    num_images_per_prompt: Any
    image: Any
    strength: Any
    output_type: Any
    callback: Any
    mask_image: Any
    prompt_2: Any
    negative_prompt_2: Any
    original_size: Any
    crops_coords_top_left: Any
    target_size: Any
    aesthetic_score: Any
    negative_aesthetic_score: Any
    preview: Any
    preview_every: Any
    vae_tiling: Any
    vae_tile_size: Any
    loras: Any = None  # name -> weight; checked and applied by sdlite.lora

    def sdxl_options(self) -> SDXLOptions:
        return SDXLOptions(
            self.prompt_2,
            self.negative_prompt_2,
            self.original_size,
            self.crops_coords_top_left,
            self.target_size,
            self.aesthetic_score,
            self.negative_aesthetic_score,
        )


@dataclass
class Request:
    """A checked call: everything the steps after resolution need, with every default filled in."""

    prompts: list[str]
    negatives: list[str]  # one per prompt ("" when none was given)
    negative_given: bool
    sdxl: SDXLOptions
    per_prompt: int
    steps: int
    guidance: float
    cfg: bool  # run the unconditional half too (guidance > 1, and not an LCM-distilled U-Net)
    sampler: str
    sampler_options: dict[str, Any]
    scheduler: Scheduler
    timesteps: np.ndarray  # the timesteps to run (image-to-image: the last strength x steps)
    height: int
    width: int
    latent_shape: tuple[int, int, int]  # one image's [C, h, w]
    seeds: list[int]
    rngs: list[np.random.Generator]  # one per image, drawn from in the order sdlite.pipeline gives
    output_type: str
    callback: Callable[[int, int, np.ndarray], bool | None] | None
    latents: np.ndarray | None  # the caller's initial noise (text-to-image)
    init_images: list | None  # one image, or one per prompt (image-to-image and inpainting)
    masks: list | None  # one mask, or one per image (inpainting)
    strength: float
    preview: Callable[[int, int, Any], Any] | None  # preview(step, total, PIL image)
    preview_every: int
    vae_tile: int | None  # the VAE's tile side in pixels; None: whole images
    text: TextPlan  # the prompts' chunks and schedule (sdlite.prompt_encoding), texts as written above

    @property
    def batch(self) -> int:
        return len(self.prompts) * self.per_prompt

    def per_image(self, items: list) -> list:
        """One item (or one per prompt) -> one per generated image, in prompt-major order."""
        items = items * len(self.prompts) if len(items) == 1 else items
        return [item for item in items for _ in range(self.per_prompt)]


def resolve(
    a: Arguments,
    graph: Graph,
    preset: Preset,
    prompt_encoder: PromptEncoder,
    scheduler_config: dict[str, Any],
    max_pixels: int,
    can_encode: bool,
    vae_tile_size: int,
) -> Request:
    """Check every argument (RuleError / ValueError naming it) and fill in the defaults."""
    sampler, options, steps, guidance = _sampling(a, preset)
    prompts, negatives = _prompts(a, prompt_encoder, graph)
    steps = rules.check_int("num_inference_steps", steps, 1, rules.MAX_STEPS)
    guidance = rules.check_float("guidance_scale", guidance, *rules.GUIDANCE_RANGE)
    per_prompt = rules.check_images(a.num_images_per_prompt, len(prompts))
    output_type = rules.check_choice("output_type", a.output_type, rules.OUTPUT_TYPES)
    preview_every = _callbacks(a)
    scheduler = rules.scheduler_for(sampler, options, scheduler_config)
    init_images, masks, strength, kept = _images(a, graph, can_encode, len(prompts), steps)
    height, width = _size(a, graph, init_images, max_pixels, len(prompts) * per_prompt)
    seeds = rules.check_seeds(a.seed, len(prompts) * per_prompt)
    shape = (graph.latent_channels, height // graph.vae_factor, width // graph.vae_factor)
    latents = _latents(a.latents, (len(prompts) * per_prompt, *shape))
    # LCM-distilled U-Nets take the guidance as an embedding instead of an unconditional pass.
    cfg = guidance > 1.0 and graph.time_cond_dim is None
    _check_batches(graph, len(prompts) * per_prompt, cfg, init_images is not None)
    vae_tile = _vae_tile(a, graph, height, width, vae_tile_size)
    timesteps = _timesteps(scheduler, steps, kept)
    negative_given = a.negative_prompt is not None
    text = prompt_encoder.plan(prompts, negatives, negative_given, cfg, a.sdxl_options(), len(timesteps))
    return Request(
        prompts=prompts,
        negatives=negatives,
        negative_given=negative_given,
        sdxl=a.sdxl_options(),
        per_prompt=per_prompt,
        steps=steps,
        guidance=guidance,
        cfg=cfg,
        sampler=sampler,
        sampler_options=options or {},
        scheduler=scheduler,
        timesteps=timesteps,
        height=height,
        width=width,
        latent_shape=shape,
        seeds=seeds,
        rngs=[np.random.default_rng(s) for s in seeds],
        output_type=output_type,
        callback=a.callback,
        latents=latents,
        init_images=init_images,
        masks=masks,
        strength=strength,
        preview=a.preview,
        preview_every=preview_every,
        vae_tile=vae_tile,
        text=text,
    )


def _callbacks(a: Arguments) -> int:
    """Check the progress and preview callbacks; returns how often previews come."""
    if a.callback is not None and not callable(a.callback):
        raise RuleError("callback", "callable(step, total, latents) or None", a.callback)
    return rules.check_preview(a.preview, a.preview_every)


def _sampling(a: Arguments, preset: Preset) -> tuple[Any, Any, Any, Any]:
    """Sampler, its options, steps and guidance: the caller's, else the preset's."""
    sampler, options = a.sampler, a.sampler_options
    if sampler is None:
        sampler = preset.sampler
        # The preset's options belong to its sampler: they come with it, under the caller's.
        if preset.sampler_options and isinstance(options, (dict, type(None))):
            options = {**preset.sampler_options, **(options or {})}
    steps = preset.steps if a.num_inference_steps is None else a.num_inference_steps
    guidance = preset.guidance if a.guidance_scale is None else a.guidance_scale
    return sampler, options, steps, guidance


def _prompts(a: Arguments, prompt_encoder: PromptEncoder, graph: Graph) -> tuple[list[str], list[str]]:
    prompts = rules.check_prompts("prompt", a.prompt)
    prompt_encoder.check(a.sdxl_options(), len(prompts))
    if a.negative_prompt is None:
        return prompts, [""] * len(prompts)
    negatives = rules.check_prompts("negative_prompt", a.negative_prompt)
    if len(negatives) == 1 and len(prompts) > 1 and isinstance(a.negative_prompt, str):
        negatives = negatives * len(prompts)
    if len(negatives) != len(prompts):
        raise ValueError(
            f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}; "
            "give one negative prompt per prompt, or a single string"
        )
    if graph.time_cond_dim is not None and any(negatives):
        raise ValueError(
            "negative_prompt: this LCM-distilled U-Net (timestep_cond input) runs without an "
            "unconditional pass, so a negative prompt has no effect (as in diffusers' "
            "LatentConsistencyModelPipeline); leave it out"
        )
    return prompts, negatives


def _images(
    a: Arguments, graph: Graph, can_encode: bool, n_prompts: int, steps: int
) -> tuple[list | None, list | None, float, int | None]:
    """Init images, masks, strength and the steps it keeps (None: text-to-image, all of them)."""
    if a.mask_image is not None and a.image is None:
        raise ValueError("mask_image needs image: inpainting repaints the masked area of image")
    if graph.inpainting and a.mask_image is None:
        raise ValueError(
            "this is an inpainting U-Net (9 input channels): pass image and mask_image (white = repaint)"
        )
    if a.image is None:
        return None, None, 1.0, None  # text-to-image starts from pure noise
    strength = a.strength
    if strength is None:
        strength = 1.0 if a.mask_image is not None else 0.8  # diffusers' inpaint / img2img defaults
    if not can_encode:
        raise ValueError("image: this model folder has no vae_encoder/, so image-to-image is unavailable")
    if a.latents is not None:
        raise ValueError("latents cannot be combined with image (image-to-image draws its own noise)")
    kept = rules.check_strength(strength, steps)
    many = isinstance(a.image, (list, tuple))
    pil = [imgs.load_image(im) for im in (a.image if many else [a.image])]
    if len(pil) not in (1, n_prompts):
        raise ValueError(f"image: give one image or one per prompt ({n_prompts}), got {len(pil)}")
    masks = None if a.mask_image is None else _masks(a.mask_image, pil)
    return pil, masks, float(strength), kept


def _masks(mask_image: Any, pil: list) -> list:
    many = isinstance(mask_image, (list, tuple))
    masks = [inp.load_mask(m) for m in (mask_image if many else [mask_image])]
    if len(masks) not in (1, len(pil)):
        raise ValueError(f"mask_image: give one mask or one per image ({len(pil)}), got {len(masks)}")
    for k, m in enumerate(masks if len(masks) == len(pil) else masks * len(pil)):
        if m.size != pil[k].size:
            raise ValueError(
                f"mask_image is {m.size[0]}x{m.size[1]} but image is {pil[k].size[0]}x"
                f"{pil[k].size[1]}: the mask must have the image's size"
            )
    return masks


def _size(a: Arguments, graph: Graph, init_images: list | None, max_pixels: int, n: int) -> tuple[int, int]:
    height, width = a.height, a.width
    m = graph.size_multiple
    if init_images is not None:
        # diffusers' VaeImageProcessor: default size = the image's, rounded down to the VAE's
        # factor; here to the size multiple, as an ONNX U-Net takes no other size.
        height = max(init_images[0].height // m * m, m) if height is None else height
        width = max(init_images[0].width // m * m, m) if width is None else width
    static_h, static_w = graph.static_size
    height = graph.default_size if height is None else height
    width = graph.default_size if width is None else width
    height = rules.check_size("height", height, m, static_h, vae_factor=graph.vae_factor)
    width = rules.check_size("width", width, m, static_w, vae_factor=graph.vae_factor)
    rules.check_pixels(width, height, n, max_pixels)
    return height, width


def _vae_tile(a: Arguments, graph: Graph, height: int, width: int, default: int) -> int | None:
    """The VAE's tile side when it works in tiles (sdlite.rules: above its budget, or asked)."""
    size = default if a.vae_tile_size is None else a.vae_tile_size
    size = rules.check_vae_tile_size(size, graph.vae_factor)
    if graph.static_size != (None, None):  # a fixed-size export's VAE takes that size only
        if a.vae_tiling is not None and a.vae_tiling is not False:
            allowed = "False or None (this model was exported with a fixed size)"
            raise RuleError("vae_tiling", allowed, a.vae_tiling)
        return None
    return size if rules.check_vae_tiling(a.vae_tiling, width, height) else None


def _latents(latents: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    if latents is None:
        return None
    latents = np.asarray(latents)
    if latents.shape != shape or not np.issubdtype(latents.dtype, np.floating):
        raise RuleError("latents", f"a float array of shape {shape}", latents.shape)
    if not np.isfinite(latents).all():
        raise RuleError("latents", "finite", "an array with NaN or inf")
    return latents


def _timesteps(scheduler: Scheduler, steps: int, kept: int | None) -> np.ndarray:
    """Set the sampler's timesteps; image-to-image starts ``kept`` steps before the end."""
    scheduler.set_timesteps(steps)
    timesteps = np.asarray(scheduler.timesteps)
    if kept is None:
        return timesteps
    begin = (steps - kept) * scheduler.order
    scheduler.set_begin_index(begin)
    return timesteps[begin:]


def _check_batches(graph: Graph, batch: int, cfg: bool, img2img: bool) -> None:
    """Exports with static shapes fix the batch too (U-Net: 2 x images, for guidance)."""
    unet_batch = batch * (2 if cfg else 1)
    if graph.unet_batch is not None and unet_batch != graph.unet_batch:
        raise ValueError(
            f"this model's U-Net was exported for a fixed batch of {graph.unet_batch}; prompts x "
            f"num_images_per_prompt = {batch} images with guidance_scale {'> 1' if cfg else '<= 1'} "
            f"needs {unet_batch}"
        )
    for name, fixed in (
        ("vae_decoder", graph.decoder_batch),
        ("vae_encoder", graph.encoder_batch if img2img else None),
    ):
        if fixed is not None and batch % fixed:
            raise ValueError(
                f"this model's {name} was exported for a fixed batch of {fixed}; the number of images "
                f"(prompts x num_images_per_prompt = {batch}) must be a multiple of it"
            )


def a1111_sampler_name(sampler: str, options: dict[str, Any]) -> str:
    """AUTOMATIC1111's display name for the PNG's "Sampler:" field ("unipc" -> "UniPC")."""
    key = normalize(sampler)
    label = next((display for display in A1111 if normalize(display) == key), None)
    if label is None:
        canonical = normalize(next((v for k, v in DIFFUSERS_CLASSES.items() if normalize(k) == key), key))
        plain = (d for d, (name, opts) in A1111.items() if normalize(name) == canonical and not opts)
        label = next(plain, sampler)
    for option, word in (("use_karras_sigmas", "Karras"), ("use_exponential_sigmas", "Exponential")):
        if options.get(option) and word not in label:
            label = f"{label} {word}"
    return label


def parameters(req: Request, model_name: str) -> list[str]:
    """AUTOMATIC1111's "parameters" text for each image of the request."""
    label = a1111_sampler_name(req.sampler, req.sampler_options)
    extra = {"Denoising strength": f"{req.strength:g}"} if req.init_images is not None else None
    return [
        imgs.a1111_parameters(
            req.prompts[i // req.per_prompt],
            req.negatives[i // req.per_prompt] or None,
            req.steps,
            label,
            req.guidance,
            req.seeds[i],
            req.width,
            req.height,
            model_name,
            extra,
        )
        for i in range(req.batch)
    ]
