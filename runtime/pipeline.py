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

A call is a story of named steps: ``resolve`` (``sdlite.request``: every argument checked
against ``sdlite.rules`` and the loaded graphs, ``sdlite.graph``, before any model runs), then
the initial latents (``sdlite.latents``), the conditioning, the denoising loop, the decode and
the report (seeds, timings, A1111 parameters).  A new feature joins the step it belongs to:
live previews (``sdlite.preview``) run in the denoising loop, and the VAE (``sdlite.vae``)
encodes and decodes in tiles above ``sdlite.rules.VAE_WHOLE_MAX_PIXELS`` or when asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import images as imgs
from . import latents as lat
from . import presets as model_presets
from . import preview as pv
from . import rules
from .conditioning import PromptEncoder
from .denoise import Denoiser
from .folder import ModelFolder, load_folder
from .graph import Graph, read_graph
from .inpaint import Inpainting
from .lora import Loras
from .request import Arguments, Request, parameters, resolve
from .sessions import ProviderArg, Session, resolve_providers, session_options
from .vae import VAE

MAX_PIXELS = rules.MAX_PIXELS  # the largest image any family allows; a pipeline's own: pipe.max_pixels
MAX_SEED = rules.MAX_SEED
OUTPUT_TYPES = rules.OUTPUT_TYPES


@dataclass
class PipelineOutput:
    images: Any  # list of PIL images, float32 [B,H,W,3] in [0,1], or latents [B,C,h,w]
    seeds: list[int]
    timings: dict[str, float]
    cancelled: bool = False
    latents: np.ndarray | None = None  # the final (or, when cancelled, last reached) latents
    parameters: list[str] = field(default_factory=list)  # A1111 "parameters" text per image


class Pipeline:
    """A loaded model folder; call it to generate images (see the module docstring)."""

    def __init__(self, folder: ModelFolder, providers: list, num_threads: int | None = None) -> None:
        self.folder = folder
        self.providers = providers
        self._options = session_options(providers, num_threads)
        self._num_threads = num_threads
        self.unet = self._session(folder.onnx["unet"])
        # SD: one CLIP; SDXL: two (a refiner: text_encoder_2 only); see sdlite.conditioning.
        self.prompt_encoder = PromptEncoder(folder, self.unet, self._session)
        self.tokenizer = self.prompt_encoder.encoders[0].tokenizer
        self.text_encoder = self.prompt_encoder.encoders[0].session
        self.vae_decoder = self._session(folder.onnx["vae_decoder"])
        enc = folder.onnx.get("vae_encoder")
        self.vae_encoder = self._session(enc) if enc is not None else None
        self.scheduler_config = folder.scheduler_config
        self.graph: Graph = read_graph(folder, self.unet, self.vae_decoder, self.vae_encoder)
        self.vae = VAE(
            self.vae_decoder,
            self.vae_encoder,
            self.graph,
            folder.scaling_factor,
            folder.fp32_decoder,
            self._session,
        )
        # One image's largest area (sdlite.rules, per family); assign another to override.
        self.max_pixels = rules.max_pixels(self.graph.family)
        # The VAE's tile side in pixels when it works in tiles (diffusers': the VAE config's
        # sample_size); checked by sdlite.rules at each call.  Assign another to override.
        vae_config = folder.configs.get("vae_decoder") or {}
        self.vae_tile_size = rules.default_vae_tile_size(vae_config.get("sample_size"), self.graph.vae_factor)
        self._preview_map: pv.PreviewMap | None = None
        # Sampling defaults for this model family (sdlite.presets); assign another to override.
        self.preset = model_presets.detect(
            folder.path, self.unet.inputs, folder.scheduler_config, folder.model_index
        )
        self._loras = Loras(folder.onnx, self._all_sessions())
        self.denoiser = Denoiser(
            self.unet, self.graph, self.prompt_encoder, lambda x0, w, h: self.preview_map.image(x0, w, h)
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
            rules.check_int("num_threads", num_threads, 0)
        if preset is not None:  # checked before the sessions load; a dict builds on the detected one
            model_presets.from_spec(preset, rules.PRESETS["sd"], "preset")
        providers = resolve_providers(provider)
        pipe = cls(load_folder(path), providers, num_threads)
        if preset is not None:
            pipe.preset = model_presets.from_spec(preset, pipe.preset, "preset")
        return pipe

    def _session(self, path: Path) -> Session:
        return Session(path, self.providers, self._options)

    def load_textual_inversion(self, path: str | Path, token: str | None = None) -> str:
        """Load a textual-inversion embedding (.safetensors, see ``sdlite.embeddings``).

        Its name (``token``, else the one in the file, else the file's stem) then stands for
        its vectors wherever it appears in a prompt.  Returns the name.
        """

        def make_session(model: Path, initializer: str, value: Any) -> Session:
            options = session_options(self.providers, self._num_threads)
            options.add_initializer(initializer, value)
            return Session(model, self.providers, options)

        name = self.prompt_encoder.load_textual_inversion(path, token, make_session)
        self.text_encoder = self.prompt_encoder.encoders[0].session
        return name

    # --- what the graphs fix (sdlite.graph), under the names callers know ---------------------

    @property
    def is_sdxl(self) -> bool:
        return self.graph.sdxl

    @property
    def unet_channels(self) -> int:
        return self.graph.unet_channels

    @property
    def latent_channels(self) -> int:
        return self.graph.latent_channels

    @property
    def time_cond_dim(self) -> int | None:
        return self.graph.time_cond_dim

    @property
    def vae_scale_factor(self) -> int:
        return self.graph.vae_factor

    @property
    def size_multiple(self) -> int:
        return self.graph.size_multiple

    @property
    def default_size(self) -> int:
        return self.graph.default_size

    # --- LoRAs (sdlite.lora) ---------------------------------------------------------------------

    def load_lora_weights(self, path: str | Path, adapter_name: str | None = None) -> str:
        """Register the LoRA file at ``path`` (safetensors; diffusers/PEFT or kohya keys) for
        ``pipe(..., loras={name: weight})``; returns its name (default: the file's stem).  The file
        is checked in full first: a failed load changes nothing."""
        return self._loras.load(path, adapter_name)

    def unload_lora_weights(self, name: str | None = None) -> None:
        """Forget the LoRA ``name`` (None: all of them)."""
        self._loras.unload(name)

    @property
    def lora_names(self) -> list[str]:
        """The names of the loaded LoRAs, in load order."""
        return self._loras.names

    # --- a call -------------------------------------------------------------------------------

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
        preview: Callable[[int, int, Any], Any] | None = None,
        preview_every: int = 1,
        vae_tiling: bool | None = None,
        vae_tile_size: int | None = None,
        loras: dict[str, float] | None = None,
    ) -> PipelineOutput:
        """Generate ``len(prompts) * num_images_per_prompt`` images (prompt-major order), as
        diffusers' pipelines do; each argument is described on ``sdlite.request.Arguments``.
        Every one is checked before any model runs.  Not thread-safe: one call at a time.
        """
        # First line: locals() holds the arguments alone, so the signature stays their one list.
        args = Arguments(**{k: v for k, v in locals().items() if k != "self"})
        t_start, before = time.perf_counter(), self._session_seconds()
        req = self._resolve(args)
        self._loras.activate(args.loras)
        x, inpainting = self._initial_latents(req)
        x, cancelled = self.denoiser.run(req, x, inpainting)
        images = [] if cancelled else self._output(req, x)
        timings = self._timings(time.perf_counter() - t_start, before)
        return PipelineOutput(images, req.seeds, timings, cancelled, x, parameters(req, self.folder.name))

    def _resolve(self, args: Arguments) -> Request:
        """The call checked against sdlite.rules and this model, defaults filled in."""
        return resolve(
            args,
            self.graph,
            self.preset,
            self.prompt_encoder,
            self.scheduler_config,
            self.max_pixels,
            can_encode=self.vae_encoder is not None,
            vae_tile_size=self.vae_tile_size,
        )

    # --- the steps of a call --------------------------------------------------------------------

    def _initial_latents(self, req: Request) -> tuple[np.ndarray, Inpainting | None]:
        def encode(pixels: np.ndarray, rngs: list[np.random.Generator]) -> np.ndarray:
            return self._encode(pixels, rngs, req.vae_tile)

        if req.masks is not None:
            return lat.inpainting(req, encode, self.graph.inpainting)
        if req.init_images is not None:
            return lat.image_to_image(req, encode), None
        return lat.text_to_image(req), None

    @property
    def preview_map(self) -> pv.PreviewMap:
        """The latent -> RGB map of previews: cached beside the model, else fitted on first use."""
        if self._preview_map is None:
            self._preview_map = pv.for_pipeline(self.graph, self.folder, self.vae)
        return self._preview_map

    def _output(self, req: Request, x: np.ndarray) -> Any:
        if req.output_type == "latent":
            return x
        images = imgs.to_numpy(self.vae.decode(x, req.vae_tile))
        return imgs.to_pil(images) if req.output_type == "pil" else images

    def _encode(
        self, pixels: np.ndarray, rngs: list[np.random.Generator], tile: int | None = None
    ) -> np.ndarray:
        """[B,3,H,W] in [-1,1] -> scaled latents, drawing the posterior sample (``sdlite.vae``)."""
        return self.vae.encode(pixels, rngs, tile)

    # --- the report -----------------------------------------------------------------------------

    def _all_sessions(self) -> list[Session]:
        return [*self.prompt_encoder.sessions, self.unet, *self.vae.sessions]

    def _session_seconds(self) -> dict[int, float]:
        return {id(s): s.seconds for s in self._all_sessions()}

    def _timings(self, total: float, before: dict[int, float]) -> dict[str, float]:
        """Seconds inside each model's sessions during the call, and around them."""
        spent = {k: v - before.get(k, 0.0) for k, v in self._session_seconds().items()}
        text_ids = {id(s) for s in self.prompt_encoder.sessions}  # SDXL: both encoders
        t_text = sum(spent[k] for k in text_ids)
        t_unet = spent[id(self.unet)]
        t_vae = sum(v for k, v in spent.items() if k not in text_ids and k != id(self.unet))
        return {
            "text_encoder": t_text,
            "unet": t_unet,
            "vae": t_vae,
            "total": total,
            "outside_sessions": total - (t_text + t_unet + t_vae),
        }
