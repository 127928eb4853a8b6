"""Text-to-image and image-to-image: diffusers' StableDiffusion(Img2Img)Pipeline loop on ONNX Runtime.

Randomness: every image has its own ``numpy.random.default_rng(seed)`` (PCG64).  From it, in this
order, are drawn (float32 standard normals, ``Generator.standard_normal(shape, dtype=float32)``
with ``shape`` one image's latent shape [C, h, w]):

1. image-to-image with a VAE encoder that outputs ``latent_parameters``: the posterior sample
   ``mean + std * eps`` (diffusers samples the posterior too, ``retrieve_latents`` with a
   generator; a ``latent_sample`` encoder output is used as it is);
2. the initial noise (text-to-image, unless ``latents`` is given) or the noise that
   ``add_noise`` mixes into the encoded image (image-to-image);
3. for a stochastic sampler, one draw per model call, stacked over the batch and passed as
   ``step(noise=...)``.

Inpainting (``mask_image``) draws, per image: the image's posterior sample (only when its
latents are used: a 4-channel U-Net, or strength < 1), the initial noise, the masked image's
posterior sample (9-channel U-Nets), then 3. above.

LCM-distilled U-Nets (a ``timestep_cond`` input) get the guidance as an embedding
(``sdlite.lcm``) and run without the unconditional pass, as LatentConsistencyModelPipeline.

So image i depends only on seed i, whatever else shares its batch.  ``seed`` may be one int
(image i gets ``seed + i``, as AUTOMATIC1111 does) or a list with one seed per image.

Cancelling: when ``callback(step, total, latents)`` returns False the loop stops, nothing is
decoded, and the output has ``cancelled=True``, ``images=[]`` and the latents reached so far.
"""

from __future__ import annotations

import math
import numbers
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import images as imgs
from . import inpaint as inp
from . import presets as model_presets
from .conditioning import SDXL_INPUTS, PromptEncoder, SDXLOptions
from .folder import ModelFolder, load_folder
from .lcm import TIMESTEP_COND, guidance_embedding
from .samplers import make_scheduler
from .sessions import ProviderArg, Session, resolve_providers, session_options

MAX_PIXELS = 4096 * 4096  # beyond this a single VAE decode needs tens of GB: refuse up front
MAX_SEED = 2**64 - 1
OUTPUT_TYPES = ("pil", "np", "latent")


@dataclass
class PipelineOutput:
    images: Any  # list of PIL images, float32 [B,H,W,3] in [0,1], or latents [B,C,h,w]
    seeds: list[int]
    timings: dict[str, float]
    cancelled: bool = False
    latents: np.ndarray | None = None  # the final (or, when cancelled, last reached) latents
    parameters: list[str] = field(default_factory=list)  # A1111 "parameters" text per image


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        allowed = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def _as_prompts(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(p, str) for p in value):
        return list(value)
    raise ValueError(f"{name} must be a string or a non-empty list of strings, got {value!r}")


def _a1111_name(sampler: str) -> str:
    """AUTOMATIC1111's display name for the PNG's "Sampler:" field ("unipc" -> "UniPC")."""
    try:
        from .samplers.names import A1111, DIFFUSERS_CLASSES, normalize
    except ImportError:
        return sampler
    key = normalize(sampler)
    for display in A1111:
        if normalize(display) == key:
            return display
    canonical = next((v for k, v in DIFFUSERS_CLASSES.items() if normalize(k) == key), key)
    for display, (name, opts) in A1111.items():
        if normalize(name) == normalize(canonical) and not opts:
            return display
    return sampler


class Pipeline:
    """A loaded model folder; call it to generate images (see the module docstring)."""

    def __init__(self, folder: ModelFolder, providers: list, num_threads: int | None = None) -> None:
        self.folder = folder
        self.providers = providers
        self._options = session_options(providers, num_threads)
        self.unet = self._session(folder.onnx["unet"])
        # SD: one CLIP; SDXL: two (a refiner: text_encoder_2 only); see sdlite.conditioning.
        self.prompt_encoder = PromptEncoder(folder, self.unet, self._session)
        self.tokenizer = self.prompt_encoder.encoders[0].tokenizer
        self.text_encoder = self.prompt_encoder.encoders[0].session
        self.is_sdxl = self.prompt_encoder.sdxl
        self.vae_decoder = self._session(folder.onnx["vae_decoder"])
        enc = folder.onnx.get("vae_encoder")
        self.vae_encoder = self._session(enc) if enc is not None else None
        self._fp32_decoder: Session | None = None
        self.scheduler_config = folder.scheduler_config
        self._read_graph_shapes()
        # Sampling defaults for this model family (sdlite.presets); assign another to override.
        self.preset = model_presets.detect(
            folder.path, self.unet.inputs, folder.scheduler_config, folder.model_index
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        provider: ProviderArg = None,
        *,
        num_threads: int | None = None,
        preset: str | dict[str, Any] | model_presets.Preset | None = None,
    ) -> Pipeline:
        """Load an exported folder (optimum or older diffusers ONNX layout) on ``provider``.

        ``provider``: None (best available: CUDA, ROCm, DirectML, CoreML, CPU), an alias
        ("cpu", "cuda", "rocm", "dml", "coreml") or ORT provider names / (name, options) pairs.
        ``num_threads``: intra-op threads on CPU (default: ORT's, one per physical core).
        ``preset``: sampling defaults (a family name such as "sd-turbo", or a dict of overrides,
        see ``sdlite.presets``) instead of the detected ones.
        """
        if num_threads is not None:
            _check_int("num_threads", num_threads, 0)
        if preset is not None:  # checked before the sessions load; a dict builds on the detected one
            model_presets.from_spec(preset, model_presets.PRESETS["sd"], "preset")
        providers = resolve_providers(provider)
        pipe = cls(load_folder(path), providers, num_threads)
        if preset is not None:
            pipe.preset = model_presets.from_spec(preset, pipe.preset, "preset")
        return pipe

    def _session(self, path: Path) -> Session:
        return Session(path, self.providers, self._options)

    # --- what the graphs want ---------------------------------------------------------------

    def _read_graph_shapes(self) -> None:
        unet_in = self.unet.inputs
        for need in ("sample", "timestep", "encoder_hidden_states"):
            if need not in unet_in:
                raise ValueError(
                    f"unet/model.onnx has no input {need!r} (inputs: {', '.join(unet_in)}); "
                    "is it a Stable Diffusion U-Net?"
                )
        extra = sorted(
            set(unet_in) - {"sample", "timestep", "encoder_hidden_states", TIMESTEP_COND, *SDXL_INPUTS}
        )
        if extra:
            raise ValueError(
                f"unet/model.onnx also needs inputs {extra}, which sdlite does not know; it runs U-Nets "
                "with sample, timestep, encoder_hidden_states and optionally SDXL's text_embeds + "
                "time_ids or LCM's timestep_cond"
            )
        shape = unet_in["sample"].shape
        self.unet_channels = shape[1] if _is_int(shape[1]) else 4
        # Inpainting U-Nets take 9 channels: latents (4), mask (1), masked-image latents (4).
        self.latent_channels = 4 if self.unet_channels == 9 else self.unet_channels
        # LCM-distilled U-Nets: the guidance embedding's width (None: an ordinary U-Net).
        cond = unet_in.get(TIMESTEP_COND)
        self.time_cond_dim = None
        if cond is not None:
            dim = cond.shape[-1] if _is_int(cond.shape[-1]) else None
            config_dim = self.folder.configs.get("unet", {}).get("time_cond_proj_dim", 256)
            self.time_cond_dim = dim or int(config_dim)
        # Exports with static shapes fix the batch too (U-Net: 2 x images, for guidance).
        self._unet_batch = shape[0] if _is_int(shape[0]) else None
        self._dec_batch = self._static_batch(self.vae_decoder)
        self._enc_batch = self._static_batch(self.vae_encoder) if self.vae_encoder is not None else None
        self._static_hw = tuple(d if _is_int(d) else None for d in shape[2:4])
        te_in = self.text_encoder.inputs
        self.text_input = "input_ids" if "input_ids" in te_in else next(iter(te_in))
        factor = self.folder.vae_factor
        if factor is None:
            factor = self._factor_from_graph()
        self.vae_scale_factor = factor
        # Image sides must be multiples of this: the VAE's factor times the U-Net's downsampling.
        self.size_multiple = factor * self.folder.unet_downsampling
        size = self.folder.unet_sample_size
        if size is None:
            size = next((d for d in self._static_hw if d), None) or 512 // factor
        self.default_size = size * factor
        if self.vae_encoder is not None:
            outs = self.vae_encoder.outputs
            self._encoder_output = "latent_parameters" if "latent_parameters" in outs else outs[0]

    @staticmethod
    def _static_batch(session: Session) -> int | None:
        dim = next(iter(session.inputs.values())).shape[:1]
        return dim[0] if dim and _is_int(dim[0]) else None

    def _check_batches(self, batch: int, do_cfg: bool, img2img: bool) -> None:
        unet_batch = batch * (2 if do_cfg else 1)
        if self._unet_batch is not None and unet_batch != self._unet_batch:
            raise ValueError(
                f"this model's U-Net was exported for a fixed batch of {self._unet_batch}; prompts x "
                f"num_images_per_prompt = {batch} images with guidance_scale {'> 1' if do_cfg else '<= 1'} "
                f"needs {unet_batch}"
            )
        for name, fixed in (
            ("vae_decoder", self._dec_batch),
            ("vae_encoder", self._enc_batch if img2img else None),
        ):
            if fixed is not None and batch % fixed:
                raise ValueError(
                    f"this model's {name} was exported for a fixed batch of {fixed}; the number of images "
                    f"(prompts x num_images_per_prompt = {batch}) must be a multiple of it"
                )

    def _factor_from_graph(self) -> int:
        # Old diffusers exports carry no VAE config; their decoder output dims read "... * 8".
        out = self.vae_decoder._sess.get_outputs()[0].shape
        for dim in out[2:]:
            if isinstance(dim, str) and "*" in dim:
                tail = dim.rsplit("*", 1)[1].strip()
                if tail.isdigit():
                    return int(tail)
        return 8

    # --- argument checks (all before any model runs) -----------------------------------------

    def _check_size(self, name: str, value: Any, static: int | None) -> int:
        f, m = self.vae_scale_factor, self.size_multiple
        if not _is_int(value) or value <= 0 or value % m:
            raise ValueError(
                f"{name} must be a positive multiple of {m} (the VAE's factor {f} x the U-Net's "
                f"downsampling {m // f}), got {value!r}"
            )
        if static is not None and value != static * f:
            raise ValueError(f"{name} must be {static * f}: this model was exported with a fixed size")
        return int(value)

    def _seeds(self, seed: Any, n: int) -> list[int]:
        if seed is None:
            return [secrets.randbits(32) for _ in range(n)]
        if isinstance(seed, (list, tuple)):
            if len(seed) != n:
                raise ValueError(f"seed: a list must have one seed per image ({n}), got {len(seed)}")
            return [_check_int("seed", s, 0, MAX_SEED) for s in seed]
        base = _check_int("seed", seed, 0, MAX_SEED)
        if base + n - 1 > MAX_SEED:
            raise ValueError(f"seed must be at most {MAX_SEED - n + 1} for {n} images, got {seed}")
        return [base + i for i in range(n)]

    # --- the loop ---------------------------------------------------------------------------

    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        sampler: str | None = None,
        sampler_options: dict[str, Any] | None = None,
        seed: int | Sequence[int] | None = None,
        latents: np.ndarray | None = None,
        num_images_per_prompt: int = 1,
        image: Any = None,
        strength: float | None = None,
        output_type: str = "pil",
        callback: Callable[[int, int, np.ndarray], bool | None] | None = None,
        mask_image: Any = None,
        prompt_2: str | Sequence[str] | None = None,
        negative_prompt_2: str | Sequence[str] | None = None,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] | None = None,
        target_size: tuple[int, int] | None = None,
        aesthetic_score: float | None = None,
        negative_aesthetic_score: float | None = None,
    ) -> PipelineOutput:
        """Generate ``len(prompts) * num_images_per_prompt`` images (prompt-major order).

        Every argument is checked before any model runs (ValueError naming it).  ``seed``: an
        int (image i gets seed + i), a list with one seed per image, or None (random seeds,
        reported in ``.seeds``).  ``image`` switches to image-to-image: ``strength`` of the
        ``num_inference_steps`` are run.  ``callback(step, total, latents)`` runs after each
        model call (step counts from 1); returning False cancels (see the module docstring).
        ``num_inference_steps``, ``guidance_scale`` and ``sampler`` left at None come from
        ``self.preset`` (the model family's defaults, ``sdlite.presets``).  ``mask_image`` with
        ``image`` inpaints (white = repaint; see ``sdlite.inpaint``); ``strength`` defaults to 0.8
        for image-to-image and 1.0 (start from pure noise) for inpainting, as in diffusers.
        SDXL only (see ``sdlite.conditioning``; ValueError for other models): ``prompt_2`` /
        ``negative_prompt_2`` for the second text encoder, ``original_size``,
        ``crops_coords_top_left``, ``target_size`` ((height, width) pairs; default: the output
        size, (0, 0)), and for refiners ``aesthetic_score`` / ``negative_aesthetic_score``
        (default 6.0 / 2.5), all as in diffusers' SDXL pipelines.
        Not thread-safe: one call at a time per Pipeline.
        """
        t_start = time.perf_counter()
        sessions = [*self.prompt_encoder.sessions, self.unet, self.vae_decoder, self.vae_encoder]
        sessions.append(self._fp32_decoder)
        before = {id(s): s.seconds for s in sessions if s is not None}

        # -- validate everything first --
        preset = self.preset
        if sampler is None:
            sampler = preset.sampler
            if preset.sampler_options and isinstance(sampler_options, (dict, type(None))):
                sampler_options = {**preset.sampler_options, **(sampler_options or {})}
        num_inference_steps = preset.steps if num_inference_steps is None else num_inference_steps
        guidance_scale = preset.guidance if guidance_scale is None else guidance_scale
        prompts = _as_prompts("prompt", prompt)
        sdxl_options = SDXLOptions(
            prompt_2,
            negative_prompt_2,
            original_size,
            crops_coords_top_left,
            target_size,
            aesthetic_score,
            negative_aesthetic_score,
        )
        self.prompt_encoder.check(sdxl_options, len(prompts))
        if negative_prompt is None:
            negatives = [""] * len(prompts)
        else:
            negatives = _as_prompts("negative_prompt", negative_prompt)
            if len(negatives) == 1 and len(prompts) > 1 and isinstance(negative_prompt, str):
                negatives = negatives * len(prompts)
            if len(negatives) != len(prompts):
                raise ValueError(
                    f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}; "
                    "give one negative prompt per prompt, or a single string"
                )
            if self.time_cond_dim is not None and any(negatives):
                raise ValueError(
                    "negative_prompt: this LCM-distilled U-Net (timestep_cond input) runs without an "
                    "unconditional pass, so a negative prompt has no effect (as in diffusers' "
                    "LatentConsistencyModelPipeline); leave it out"
                )
        steps = _check_int("num_inference_steps", num_inference_steps, 1, 10_000)
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        guidance = float(guidance_scale)
        if not math.isfinite(guidance):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        per_prompt = _check_int("num_images_per_prompt", num_images_per_prompt, 1, 1024)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if callback is not None and not callable(callback):
            raise ValueError("callback must be callable(step, total, latents) or None")
        if sampler_options is not None and not isinstance(sampler_options, dict):
            raise ValueError(f"sampler_options must be a dict or None, got {type(sampler_options).__name__}")
        if not isinstance(sampler, str):
            raise ValueError(f"sampler must be a sampler name (str), got {sampler!r}")
        try:
            scheduler = make_scheduler(sampler, self.scheduler_config, **(sampler_options or {}))
        except ValueError as err:
            raise ValueError(f"sampler={sampler!r}, sampler_options={sampler_options!r}: {err}") from err
        batch = len(prompts) * per_prompt

        if mask_image is not None and image is None:
            raise ValueError("mask_image needs image: inpainting repaints the masked area of image")
        if self.unet_channels == 9 and mask_image is None:
            raise ValueError(
                "this is an inpainting U-Net (9 input channels): pass image and mask_image (white = repaint)"
            )
        if strength is None:
            strength = 1.0 if mask_image is not None else 0.8  # diffusers' inpaint / img2img defaults
        init_images = masks = None
        if image is not None:
            if self.vae_encoder is None:
                raise ValueError(
                    "image: this model folder has no vae_encoder/, so image-to-image is unavailable"
                )
            if latents is not None:
                raise ValueError("latents cannot be combined with image (image-to-image draws its own noise)")
            if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 < strength <= 1:
                raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
            pil = [imgs.load_image(im) for im in (image if isinstance(image, (list, tuple)) else [image])]
            if len(pil) not in (1, len(prompts)):
                raise ValueError(f"image: give one image or one per prompt ({len(prompts)}), got {len(pil)}")
            if mask_image is not None:
                many = isinstance(mask_image, (list, tuple))
                masks = [inp.load_mask(m) for m in (mask_image if many else [mask_image])]
                if len(masks) not in (1, len(pil)):
                    raise ValueError(
                        f"mask_image: give one mask or one per image ({len(pil)}), got {len(masks)}"
                    )
                for k, m in enumerate(masks if len(masks) == len(pil) else masks * len(pil)):
                    if m.size != pil[k].size:
                        raise ValueError(
                            f"mask_image is {m.size[0]}x{m.size[1]} but image is {pil[k].size[0]}x"
                            f"{pil[k].size[1]}: the mask must have the image's size"
                        )
            # diffusers' VaeImageProcessor: default size = the image's, rounded down to the VAE's
            # factor; here to the size multiple, as an ONNX U-Net takes no other size.
            f = self.size_multiple
            if height is None:
                height = max(pil[0].height // f * f, f)
            if width is None:
                width = max(pil[0].width // f * f, f)
            init_images = pil
        height = self._check_size(
            "height", self.default_size if height is None else height, self._static_hw[0]
        )
        width = self._check_size("width", self.default_size if width is None else width, self._static_hw[1])
        if height * width > MAX_PIXELS:
            raise ValueError(
                f"height x width = {height}x{width} is too large: at most {MAX_PIXELS} pixels "
                f"(e.g. 4096x4096) fit in memory for a VAE decode"
            )
        seeds = self._seeds(seed, batch)
        f = self.vae_scale_factor
        shape1 = (self.latent_channels, height // f, width // f)
        if latents is not None:
            latents = np.asarray(latents)
            if latents.shape != (batch, *shape1) or not np.issubdtype(latents.dtype, np.floating):
                raise ValueError(
                    f"latents must be a float array of shape {(batch, *shape1)}, got {latents.shape}"
                )
            if not np.isfinite(latents).all():
                raise ValueError("latents must be finite")
        scheduler.set_timesteps(steps)
        timesteps = np.asarray(scheduler.timesteps)
        if init_images is not None:
            kept = min(int(steps * strength), steps)
            if kept < 1:
                raise ValueError(
                    f"strength={strength} with num_inference_steps={steps} leaves no step to run; "
                    f"raise strength or steps (need strength * steps >= 1)"
                )
            begin = (steps - kept) * scheduler.order
            timesteps = timesteps[begin:]
            scheduler.set_begin_index(begin)

        # LCM-distilled U-Nets take the guidance as an embedding instead of an unconditional pass.
        do_cfg = guidance > 1.0 and self.time_cond_dim is None
        self._check_batches(batch, do_cfg, init_images is not None)
        rngs = [np.random.default_rng(s) for s in seeds]

        # -- text --
        text = self.prompt_encoder.encode(
            prompts, negatives, negative_prompt is not None, do_cfg, per_prompt, sdxl_options, height, width
        )
        for name, value in text.items():  # encoder_hidden_states (+ SDXL's text_embeds, time_ids)
            self.unet.bind_constant(name, value)
        if self.time_cond_dim is not None:
            self.unet.bind_constant(TIMESTEP_COND, guidance_embedding(guidance, batch, self.time_cond_dim))

        # -- initial latents --
        inpainting = None
        if masks is not None:
            layout = (per_prompt, len(prompts), width, height)
            x, inpainting = self._start_inpainting(
                init_images, masks, layout, rngs, shape1, scheduler, timesteps, strength
            )
        elif init_images is not None:
            x = self._encode(init_images, per_prompt, len(prompts), width, height, rngs, shape1)
            noise = np.stack([r.standard_normal(shape1, dtype=np.float32) for r in rngs])
            x = scheduler.add_noise(x, noise, np.repeat(timesteps[:1], batch))
        else:
            if latents is None:
                latents = np.stack([r.standard_normal(shape1, dtype=np.float32) for r in rngs])
            x = latents.astype(np.float32) * np.float32(scheduler.init_noise_sigma)

        # -- denoise --
        stochastic = bool(getattr(getattr(scheduler, "spec", None), "stochastic", True))
        t_info = self.unet.inputs["timestep"]
        cancelled = False
        total = len(timesteps)
        # The timestep inputs, made before the loop: after each U-Net call the caches are cold
        # and every numpy call in the loop costs several times its warm time.
        unet_batch = batch * (2 if do_cfg else 1)
        t_feeds = [
            np.full(unet_batch, t, dtype=t_info.dtype) if t_info.rank == 1 else np.asarray(t, t_info.dtype)
            for t in timesteps
        ]
        g = np.float32(guidance)
        try:
            for i, t in enumerate(timesteps):
                model_in = scheduler.scale_model_input(x, t)
                if do_cfg:
                    model_in = np.concatenate([model_in, model_in])
                if inpainting is not None:
                    model_in = inpainting.unet_input(model_in, do_cfg)
                (pred,) = self.unet.run({"sample": model_in, "timestep": t_feeds[i]})
                pred = pred.astype(np.float32, copy=False)
                if do_cfg:  # uncond + g (cond - uncond), in place in the U-Net's fresh output
                    uncond, pred = pred[:batch], pred[batch:]
                    pred -= uncond
                    pred *= g
                    pred += uncond
                step_noise = None
                if stochastic:
                    step_noise = np.stack([r.standard_normal(shape1, dtype=np.float32) for r in rngs])
                x = scheduler.step(pred, t, x, noise=step_noise)
                if inpainting is not None:
                    x = inpainting.blend(x, scheduler, timesteps[i + 1] if i + 1 < total else None)
                if callback is not None and callback(i + 1, total, x) is False:
                    cancelled = True
                    break
        finally:
            self.unet.clear_constants()

        # -- decode --
        if cancelled or output_type == "latent":
            result: Any = [] if cancelled else x
        else:
            decoded = self._decode(x)
            result = imgs.to_numpy(decoded)
            if output_type == "pil":
                result = imgs.to_pil(result)

        total_s = time.perf_counter() - t_start
        spent = {id(s): s.seconds - before.get(id(s), 0.0) for s in self._all_sessions()}
        text_ids = {id(s) for s in self.prompt_encoder.sessions}  # SDXL: both encoders
        t_text = sum(spent[k] for k in text_ids)
        t_unet = spent[id(self.unet)]
        t_vae = sum(v for k, v in spent.items() if k not in text_ids and k != id(self.unet))
        timings = {
            "text_encoder": t_text,
            "unet": t_unet,
            "vae": t_vae,
            "total": total_s,
            "outside_sessions": total_s - (t_text + t_unet + t_vae),
        }
        label = _a1111_name(sampler)
        opts = sampler_options or {}
        for key, word in (("use_karras_sigmas", "Karras"), ("use_exponential_sigmas", "Exponential")):
            if opts.get(key) and word not in label:
                label = f"{label} {word}"
        params = [
            imgs.a1111_parameters(
                prompts[i // per_prompt],
                negatives[i // per_prompt] or None,
                steps,
                label,
                guidance,
                seeds[i],
                width,
                height,
                self.folder.name,
                {"Denoising strength": f"{strength:g}"} if init_images is not None else None,
            )
            for i in range(batch)
        ]
        return PipelineOutput(result, seeds, timings, cancelled, x, params)

    def _all_sessions(self) -> list[Session]:
        out = [*self.prompt_encoder.sessions, self.unet, self.vae_decoder]
        return out + [s for s in (self.vae_encoder, self._fp32_decoder) if s is not None]

    def _encode(
        self,
        pil: list,
        per_prompt: int,
        n_prompts: int,
        width: int,
        height: int,
        rngs: list[np.random.Generator],
        shape1: tuple[int, ...],
    ) -> np.ndarray:
        assert self.vae_encoder is not None
        pixels = [imgs.image_to_model(im, width, height) for im in pil]
        if len(pixels) == 1:
            pixels = pixels * n_prompts
        batch_pixels = np.concatenate([p for p in pixels for _ in range(per_prompt)])
        return self._encode_pixels(batch_pixels, rngs, shape1)

    def _encode_pixels(
        self, batch_pixels: np.ndarray, rngs: list[np.random.Generator], shape1: tuple[int, ...]
    ) -> np.ndarray:
        """[B,3,H,W] in [-1,1] -> scaled latents; a posterior sample draws one normal per image."""
        assert self.vae_encoder is not None
        name = next(iter(self.vae_encoder.inputs))
        step = self._enc_batch or len(batch_pixels)
        outs = [
            self.vae_encoder.run({name: batch_pixels[i : i + step]}, [self._encoder_output])[0]
            for i in range(0, len(batch_pixels), step)
        ]
        out = np.concatenate(outs)
        out = out.astype(np.float32, copy=False)
        if self._encoder_output == "latent_parameters":
            mean, logvar = np.split(out, 2, axis=1)
            std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
            eps = np.stack([r.standard_normal(shape1, dtype=np.float32) for r in rngs])
            out = mean + std * eps
        return out * np.float32(self.folder.scaling_factor)

    def _start_inpainting(
        self,
        pil: list,
        masks: list,
        layout: tuple[int, int, int, int],  # per_prompt, n_prompts, width, height
        rngs: list[np.random.Generator],
        shape1: tuple[int, ...],
        scheduler: Any,
        timesteps: np.ndarray,
        strength: float,
    ) -> tuple[np.ndarray, inp.Inpainting]:
        """Initial latents and loop state as diffusers' StableDiffusionInpaintPipeline prepares them.

        Draws per image, in order: the image's posterior sample (only when its latents are
        needed: a 4-channel U-Net, or strength < 1), the initial noise, the masked image's
        posterior sample (9-channel U-Nets); then the sampler's per-step noise.
        """
        per_prompt, n_prompts, width, height = layout

        def per_image(items: list) -> list:
            items = items * n_prompts if len(items) == 1 else items
            return [item for item in items for _ in range(per_prompt)]

        pixels = np.concatenate(per_image([imgs.image_to_model(im, width, height) for im in pil]))
        if len(masks) == 1 and len(pil) > 1:
            masks = masks * len(pil)
        mask_px = np.concatenate(per_image([inp.mask_to_model(m, width, height) for m in masks]))
        nine = self.unet_channels == 9
        image_latents = self._encode_pixels(pixels, rngs, shape1) if (not nine or strength < 1) else None
        noise = np.stack([r.standard_normal(shape1, dtype=np.float32) for r in rngs])
        if strength == 1:  # diffusers' is_strength_max: pure noise, not the noised image
            x = noise * np.float32(scheduler.init_noise_sigma)
        else:
            x = scheduler.add_noise(image_latents, noise, np.repeat(timesteps[:1], len(noise)))
        mask = inp.nearest_resize(mask_px, shape1[1:])
        masked = self._encode_pixels(inp.masked_pixels(pixels, mask_px), rngs, shape1) if nine else None
        state = inp.Inpainting(mask, masked, None if nine else image_latents, noise)
        return x, state

    def _decode(self, x: np.ndarray) -> np.ndarray:
        """VAE-decode one image at a time (lower peak memory); redo in fp32 on NaN/inf."""
        name = next(iter(self.vae_decoder.inputs))
        scaled = x / np.float32(self.folder.scaling_factor)
        step = self._dec_batch or 1
        out = []
        for i in range(0, len(scaled), step):
            (dec,) = self.vae_decoder.run({name: scaled[i : i + step]})
            if not np.isfinite(dec).all():
                if self.folder.fp32_decoder is None:
                    raise FloatingPointError(
                        f"the VAE decoder produced NaN/inf for image {i} (fp16 overflow?) and the model "
                        f"folder has no fp32 decoder (vae_decoder/model_fp32.onnx) to retry with"
                    )
                if self._fp32_decoder is None:
                    self._fp32_decoder = self._session(self.folder.fp32_decoder)
                fp32_name = next(iter(self._fp32_decoder.inputs))
                (dec,) = self._fp32_decoder.run({fp32_name: scaled[i : i + step]})
                if not np.isfinite(dec).all():
                    raise FloatingPointError(f"the VAE decoder produced NaN/inf for image {i}, even in fp32")
            out.append(dec.astype(np.float32, copy=False))
        return np.concatenate(out)
