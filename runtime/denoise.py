"""The denoising loop of one call: the text bound to the U-Net, then per step the U-Net's guided
prediction, the sampler's ``step``, inpainting's blend, previews and the progress callback.

A feature that changes what a step computes (ControlNet's residuals, DeepCache's cached
features) joins ``_predict``; one that watches the steps joins ``_loop``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import latents as lat
from .conditioning import PromptEncoder
from .graph import Graph
from .inpaint import Inpainting
from .lcm import TIMESTEP_COND, guidance_embedding
from .request import Request
from .sessions import Session


def is_stochastic(scheduler: Any) -> bool:
    """Whether ``step`` takes fresh noise (the one place that asks the sampler)."""
    return bool(scheduler.stochastic)


class Denoiser:
    """Runs a resolved request's sampler loop on ``unet`` (see the module docstring)."""

    def __init__(
        self,
        unet: Session,
        graph: Graph,
        prompt_encoder: PromptEncoder,
        preview_image: Callable[[np.ndarray, int, int], Any],
    ) -> None:
        self.unet = unet
        self.graph = graph
        self.prompt_encoder = prompt_encoder
        # (denoised latents, width, height) -> a preview image; the pipeline's fitted map.
        self.preview_image = preview_image

    def _condition(self, req: Request) -> dict[int, dict[str, np.ndarray]]:
        """Bind the text (+ SDXL's) and LCM's guidance; return the later calls' text changes."""
        segments = self.prompt_encoder.encode(req.text, req.per_prompt, req.sdxl, req.height, req.width)
        for name, value in segments[0][1].items():  # encoder_hidden_states (+ text_embeds, time_ids)
            self.unet.bind_constant(name, value)
        if self.graph.time_cond_dim is not None:
            embedding = guidance_embedding(req.guidance, req.batch, self.graph.time_cond_dim)
            self.unet.bind_constant(TIMESTEP_COND, embedding)
        return dict(segments[1:])  # prompt editing: call -> the text inputs from that call on

    def run(self, req: Request, x: np.ndarray, inpainting: Inpainting | None) -> tuple[np.ndarray, bool]:
        """Run the sampler over ``req.timesteps``; True with the latents so far when cancelled."""
        try:
            text_changes = self._condition(req)
            return self._loop(req, x, inpainting, text_changes)
        finally:
            self.unet.clear_constants()

    def _loop(
        self,
        req: Request,
        x: np.ndarray,
        inpainting: Inpainting | None,
        text_changes: dict[int, dict[str, np.ndarray]],
    ) -> tuple[np.ndarray, bool]:
        scheduler, timesteps, total = req.scheduler, req.timesteps, len(req.timesteps)
        stochastic = is_stochastic(scheduler)
        t_feeds = self._timestep_feeds(req)
        for i, t in enumerate(timesteps):
            for name, value in text_changes.get(i, {}).items():
                self.unet.bind_constant(name, value)
            pred = self._predict(req, scheduler.scale_model_input(x, t), t_feeds[i], inpainting)
            if req.preview is not None and ((i + 1) % req.preview_every == 0 or i + 1 == total):
                self._preview(req, i + 1, total, scheduler.denoised(pred, t, x))
            noise = lat.draw_noise(req.rngs, req.latent_shape) if stochastic else None
            x = scheduler.step(pred, t, x, noise=noise)
            if inpainting is not None:
                x = inpainting.blend(x, scheduler, timesteps[i + 1] if i + 1 < total else None)
            if req.callback is not None and req.callback(i + 1, total, x) is False:
                return x, True
        return x, False

    def _preview(self, req: Request, step: int, total: int, x0: np.ndarray) -> None:
        assert req.preview is not None
        req.preview(step, total, self.preview_image(x0, req.width, req.height))

    def _timestep_feeds(self, req: Request) -> list[np.ndarray]:
        # Made before the loop: after each U-Net call the caches are cold and every numpy call
        # in the loop costs several times its warm time.
        dtype, unet_batch = self.graph.timestep_dtype, req.batch * (2 if req.cfg else 1)
        if self.graph.timestep_rank == 1:
            return [np.full(unet_batch, t, dtype=dtype) for t in req.timesteps]
        return [np.asarray(t, dtype) for t in req.timesteps]

    def _predict(
        self, req: Request, model_in: np.ndarray, t_feed: np.ndarray, inpainting: Inpainting | None
    ) -> np.ndarray:
        """The U-Net's noise prediction, guided: uncond + g (cond - uncond)."""
        if req.cfg:
            model_in = np.concatenate([model_in, model_in])
        if inpainting is not None:
            model_in = inpainting.unet_input(model_in, req.cfg)
        (pred,) = self.unet.run({"sample": model_in, "timestep": t_feed})
        pred = pred.astype(np.float32, copy=False)
        if req.cfg:  # in place in the U-Net's fresh output
            uncond, pred = pred[: req.batch], pred[req.batch :]
            pred -= uncond
            pred *= np.float32(req.guidance)
            pred += uncond
        return pred
