"""The Stable Diffusion 1.5 architecture with random weights, for the ``--full`` rows.

Weights don't change speed, so the configs of ``stable-diffusion-v1-5`` are written out
literally (the hub is unreachable here) and the modules keep torch's default initialisation.
The tokenizer is the real CLIP one that ``tests/tiny_models.py`` regenerates from the
committed merges.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# unet/config.json of stable-diffusion-v1-5 (keys that differ from diffusers' defaults included
# even where they happen to equal them, so the file reads like the original).
UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}

# vae/config.json
VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# text_encoder/config.json (openai/clip-vit-large-patch14's text tower).  bos/eos 0/2 are the
# file's historical values; they only select transformers' legacy pooling, which SD never reads.
TEXT_CONFIG: dict[str, Any] = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

# scheduler/scheduler_config.json (PNDM); the benchmarks switch it to UniPC with from_config,
# exactly as a user of either library would.
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def build_sd15_arch(path: str | os.PathLike, make_tokenizer, seed: int = 0) -> Path:
    """Save a random-weight SD 1.5-architecture ``StableDiffusionPipeline`` folder at ``path``.

    ``make_tokenizer(workdir)`` returns transformers' CLIPTokenizer over the real CLIP files.
    """
    import tempfile

    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    vae = AutoencoderKL(**VAE_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    with tempfile.TemporaryDirectory() as tmp:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=make_tokenizer(tmp),
            unet=unet,
            scheduler=PNDMScheduler.from_config(SCHEDULER_CONFIG),  # as diffusers reads the json
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(path, safe_serialization=True)
    return path
