"""The three systems behind one small interface, with per-stage timers.

sdlite reports its own stage times (``out.timings``).  For diffusers and optimum the suite
wraps the components' ``forward``/``decode`` on the instance, which is what the pipelines call,
and for optimum also each ONNX Runtime session's ``run``, so its time outside the sessions is
measured the same way as ours.  Imports stay inside the loaders: a worker imports only the
system it measures, and that import is part of the cold start.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SYSTEMS = ("sdlite", "optimum", "diffusers")


class Timers:
    """Seconds spent in each wrapped callable since the last ``reset``."""

    def __init__(self) -> None:
        self.s: dict[str, float] = defaultdict(float)

    def reset(self) -> None:
        self.s.clear()

    def wrap(self, fn: Callable, key: str) -> Callable:
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.s[key] += time.perf_counter() - t

        return timed


class Runner:
    """Loads one system on one model folder and generates with shared initial latents."""

    def __init__(self, system: str, model_dir: Path) -> None:
        if system not in SYSTEMS:
            raise ValueError(f"system must be one of {SYSTEMS}, got {system!r}")
        self.system = system
        self.timers = Timers()
        self.pipe = getattr(self, f"_load_{system}")(Path(model_dir))

    def _load_sdlite(self, path: Path) -> Any:
        from sdlite import Pipeline

        return Pipeline.from_pretrained(path, provider="cpu")

    def _load_torch_pipe(self, cls: Any, path: Path, **kwargs: Any) -> Any:
        from diffusers import UniPCMultistepScheduler

        pipe = cls.from_pretrained(path, **kwargs)
        # The model ships PNDM's config; every system reads it into UniPC the same way.
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipe.text_encoder.forward = self.timers.wrap(pipe.text_encoder.forward, "text_encoder")
        pipe.unet.forward = self.timers.wrap(pipe.unet.forward, "unet")
        pipe.vae.decode = self.timers.wrap(pipe.vae.decode, "vae")
        return pipe

    def _load_diffusers(self, path: Path) -> Any:
        from diffusers import StableDiffusionPipeline

        return self._load_torch_pipe(
            StableDiffusionPipeline, path, safety_checker=None, requires_safety_checker=False
        )

    def _load_optimum(self, path: Path) -> Any:
        from optimum.onnxruntime import ORTStableDiffusionPipeline

        pipe = self._load_torch_pipe(ORTStableDiffusionPipeline, path, provider="CPUExecutionProvider")
        for part in (pipe.text_encoder, pipe.unet, pipe.vae_decoder):
            sess = part.session
            sess.run = self.timers.wrap(sess.run, "in_sessions")
            sess.run_with_iobinding = self.timers.wrap(sess.run_with_iobinding, "in_sessions")
        return pipe

    def generate(
        self, prompt: str, latents: np.ndarray, steps: int, guidance: float, height: int, width: int
    ) -> tuple[np.ndarray, float, dict[str, float]]:
        """Images [B,H,W,3] in [0,1], wall seconds, and per-stage seconds for one call."""
        prompts = [prompt] * latents.shape[0]
        self.timers.reset()
        t = time.perf_counter()
        if self.system == "sdlite":
            out = self.pipe(
                prompts,
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=height,
                width=width,
                sampler="unipc",
                latents=latents,
                output_type="np",
            )
            e2e = time.perf_counter() - t
            stages = {k: float(v) for k, v in dict(out.timings).items()}
        else:
            import torch

            out = self.pipe(
                prompts,
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=height,
                width=width,
                latents=torch.from_numpy(latents),
                output_type="np",
            )
            e2e = time.perf_counter() - t
            stages = dict(self.timers.s)
            if "in_sessions" in stages:
                stages["outside_sessions"] = e2e - stages.pop("in_sessions")
        stages.setdefault("total", e2e)
        return np.asarray(out.images, dtype=np.float32), e2e, stages
