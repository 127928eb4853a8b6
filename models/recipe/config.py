"""Every knob of the demo model's recipe, in one place (``train.py --print-config`` shows them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    seed: int = 0
    threads: int = 1  # on 2 shared, oversubscribed cores one thread ran 3-4x faster than two

    # Data: one fixed set drawn up front and encoded once (latent mean/logvar stored).
    dataset_size: int = 10_000
    latent_images: int = 4_000  # the first N are encoded for diffusion (encoding is 50 ms/image here)
    max_length: int = 16  # tokenizer model_max_length = text encoder positions

    # VAE: AutoencoderKL, 64x64x3 -> 16x16x4.
    vae_blocks: tuple[int, ...] = (16, 32, 32)
    vae_groups: int = 8
    # Phases of (steps, batch, crop side in pixels, learning rate).  The second trains on random
    # 32x32 crops: the VAE is convolutional, a crop costs a quarter of a full image, and colour
    # and edges are local, so the CPU budget buys four times the images.
    vae_phases: tuple[tuple[int, int, int, float], ...] = ((200, 16, 64, 1e-3), (300, 32, 32, 2e-3))
    # Then the decoder alone (encoder frozen, so the latents the U-Net learns stay valid), as
    # SD's ft-MSE VAE was made: (steps, batch, crop, learning rate).
    decoder_phase: tuple[int, int, int, float] = (600, 32, 32, 1e-3)
    vae_kl_weight: float = 1e-4  # on the mean per-latent KL; keeps latents smooth, not collapsed

    # Text encoder: CLIPTextModel trained jointly with the U-Net from random initialisation.
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_mlp: int = 128

    # U-Net: UNet2DConditionModel on 16x16x4 latents.
    unet_blocks: tuple[int, ...] = (32, 48, 64)  # 1.41 M params: fits the 4 MiB fp16 budget
    unet_groups: int = 16
    unet_heads: int = 4  # diffusers' "attention_head_dim" (it is the head count here)

    # Diffusion training: SD 1.x's noise schedule and epsilon objective.
    steps: int = 2500
    batch: int = 32
    lr: float = 1.5e-3  # high for a U-Net, because the CPU budget allows only ~1000 steps
    warmup: int = 100
    weight_decay: float = 0.01
    cfg_dropout: float = 0.1  # fraction of captions replaced by "" for classifier-free guidance
    min_snr_gamma: float = 5.0  # Min-SNR loss weighting: same optimum, faster convergence
    # Offset noise (a per-image, per-channel constant added to the noise) from this step on:
    # SD's schedule never reaches pure noise, so without it the model cannot move an image's
    # mean brightness far from the noise's, and "black background" came out gray.
    offset_noise: float = 0.1
    offset_noise_from: int = 1_600
    ema_decay: float = 0.999
    checkpoint_every: int = 50
    beta_start: float = 0.00085
    beta_end: float = 0.012
