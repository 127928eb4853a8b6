"""``benchmarks.systems.Runner`` on a chosen provider, device and dtype, with GPU-synced timers."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.gpu.config import ORT_PROVIDERS
from benchmarks.systems import Runner


def cpu_threads(device: str) -> None:
    # On the shared CPU (--small), torch's two OpenMP threads spin against the other processes:
    # measured 7 s vs 0.14 s per tiny 2-step image with one thread.  A GPU run is left alone.
    if device == "cpu":
        import torch

        torch.set_num_threads(1)


def diffusers_pipe(path: Path | str, dtype: str, device: str):
    """diffusers' SD pipeline in ``dtype`` on ``device``, with the UniPC sampler every system uses."""
    import torch
    from diffusers import StableDiffusionPipeline, UniPCMultistepScheduler

    torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(
        path, safety_checker=None, requires_safety_checker=False, torch_dtype=torch_dtype
    ).to(device)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_images(pipe, prompt: str, latents: np.ndarray, **gen) -> np.ndarray:
    """One call on given latents; diffusers moves them to the device but keeps their dtype, so
    they are cast to the weights' dtype first."""
    import torch

    with torch.no_grad():
        out = pipe(
            [prompt] * latents.shape[0],
            latents=torch.from_numpy(latents).to(pipe.device, pipe.unet.dtype),
            output_type="np",
            **gen,
        )
    return np.asarray(out.images, dtype=np.float32)


class GpuRunner(Runner):
    def __init__(self, system: str, model_dir: Path, provider: str, device: str, dtype: str) -> None:
        self.provider, self.device, self.dtype = provider, device, dtype
        super().__init__(system, model_dir)

    def _load_sdlite(self, path: Path):
        from sdlite import Pipeline

        return Pipeline.from_pretrained(path, provider=self.provider)

    def _load_optimum(self, path: Path):
        from diffusers import UniPCMultistepScheduler
        from optimum.onnxruntime import ORTStableDiffusionPipeline

        pipe = ORTStableDiffusionPipeline.from_pretrained(path, provider=ORT_PROVIDERS[self.provider])
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self._time_stages(pipe)
        for part in (pipe.text_encoder, pipe.unet, pipe.vae_decoder):
            sess = part.session
            sess.run = self.timers.wrap(sess.run, "in_sessions")
            sess.run_with_iobinding = self.timers.wrap(sess.run_with_iobinding, "in_sessions")
        return pipe

    def _load_diffusers(self, path: Path):
        pipe = diffusers_pipe(path, self.dtype, self.device)
        # diffusers' default on torch 2 is SDPA (AttnProcessor2_0); recorded to prove it.
        self.attention = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
        self._time_stages(pipe)
        return pipe

    def _time_stages(self, pipe) -> None:
        pipe.text_encoder.forward = self._synced(pipe.text_encoder.forward, "text_encoder")
        pipe.unet.forward = self._synced(pipe.unet.forward, "unet")
        pipe.vae.decode = self._synced(pipe.vae.decode, "vae")

    def _synced(self, fn, key: str):
        """A stage timer that waits for the GPU: kernel launches return before the work is done."""
        if self.device == "cpu":
            return self.timers.wrap(fn, key)
        import torch

        def synced(*args, **kwargs):
            torch.cuda.synchronize()
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.synchronize()
                self.timers.s[key] += time.perf_counter() - t

        return synced

    def generate(self, prompt, latents, steps, guidance, height, width):
        if self.system != "diffusers":
            return super().generate(prompt, latents, steps, guidance, height, width)
        self.timers.reset()
        t = time.perf_counter()
        images = diffusers_images(
            self.pipe,
            prompt,
            latents,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=height,
            width=width,
        )
        e2e = time.perf_counter() - t
        stages = dict(self.timers.s)
        stages.setdefault("total", e2e)
        return images, e2e, stages
