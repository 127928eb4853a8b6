"""LCM-distilled U-Nets (``time_cond_proj_dim``): the guidance-scale embedding they take as
``timestep_cond``, as diffusers' ``LatentConsistencyModelPipeline`` computes it.

Such a U-Net was distilled from classifier-free guidance, so it runs once per step (no
unconditional half) and is told the guidance through this embedding instead; diffusers uses
the Imagen formulation, so the embedded value is ``w = guidance_scale - 1``.
"""

from __future__ import annotations

import numpy as np

TIMESTEP_COND = "timestep_cond"


def guidance_embedding(guidance_scale: float, batch: int, dim: int) -> np.ndarray:
    """float32 [batch, dim]: sin/cos features of ``(guidance_scale - 1) * 1000`` (VDM's embedding).

    Step for step ``LatentConsistencyModelPipeline.get_guidance_scale_embedding`` in float32.
    """
    if dim < 4:  # diffusers divides by dim // 2 - 1
        raise ValueError(f"the U-Net's timestep_cond width must be >= 4, got {dim}")
    w = np.full(batch, np.float32(guidance_scale - 1), dtype=np.float32) * np.float32(1000.0)
    half = dim // 2
    scale = np.log(np.float32(10000.0)) / np.float32(half - 1)
    freqs = np.exp(np.arange(half, dtype=np.float32) * -scale).astype(np.float32)
    arg = w[:, None] * freqs[None, :]
    emb = np.concatenate([np.sin(arg), np.cos(arg)], axis=1).astype(np.float32)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb
