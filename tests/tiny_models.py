"""Tiny random-weight Stable Diffusion models for tests, built with diffusers' own classes.

Shapes follow diffusers' fast pipeline tests (two-level U-Net, 32-wide text encoder) but the
text encoder uses the real CLIP vocabulary (49408 tokens) so the real tokenizer files drive it.
``sd1`` is SD-1.5-like (epsilon prediction, PNDM config, pads with ``<|endoftext|>``); ``sd2``
is SD-2.1-like (v-prediction, DDIM config, pads with ``!``, linear attention projections, gelu).

Everything here needs torch/diffusers/transformers: test-only code, never imported by the
runtime.  ``clip_tokenizer_files`` regenerates ``vocab.json``/``merges.txt`` from the committed
``tests/data/clip/merges.txt.gz`` (the vocabulary is a pure function of the merges, see
``tests/data/clip/README.md``), so the tracked tree holds 200 KB instead of 1.5 MB.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CLIP_DATA = Path(__file__).parent / "data" / "clip"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> list[str]:
    # GPT-2's reversible byte -> printable-unicode table (the order of the first 256 ids).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer_files(out: str | os.PathLike) -> Path:
    """Write CLIP's ``vocab.json`` and ``merges.txt`` (49408 tokens) into ``out``; return ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = gzip.decompress((CLIP_DATA / "merges.txt.gz").read_bytes()).decode("utf-8")
    merges = [line for line in text.split("\n")[1:] if line]
    symbols = _bytes_to_unicode()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [SOT, EOT]
    assert len(vocab) == 49408, len(vocab)
    (out / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    (out / "merges.txt").write_text(text, encoding="utf-8")
    return out


def make_clip_tokenizer(kind: str = "sd1", workdir: str | os.PathLike | None = None):
    """transformers' slow ``CLIPTokenizer`` over the real files, padded as SD 1.x / 2.x pad."""
    from transformers import CLIPTokenizer

    if kind not in ("sd1", "sd2"):
        raise ValueError(f"kind must be 'sd1' or 'sd2', got {kind!r}")
    d = clip_tokenizer_files(workdir or tempfile.mkdtemp(prefix="sdlite-clip-"))
    pad = EOT if kind == "sd1" else "!"
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), pad_token=pad, model_max_length=77)


SD1_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    clip_sample=False,
    trained_betas=None,
)
SD2_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    clip_sample=False,
    prediction_type="v_prediction",
    trained_betas=None,
)


def build_tiny_sd(path: str | os.PathLike, kind: str = "sd1", seed: int = 0) -> Path:
    """Save a tiny random-weight ``StableDiffusionPipeline`` (diffusers folder) at ``path``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    if kind not in ("sd1", "sd2"):
        raise ValueError(f"kind must be 'sd1' or 'sd2', got {kind!r}")
    sd2 = kind == "sd2"
    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4) if sd2 else 8,
        use_linear_projection=sd2,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    # Three levels -> two downsamplings: latent factor 4 (not SD's 8), which the runtime must read.
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    torch.manual_seed(seed + 2)
    eot = 49407
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=49406,
            eos_token_id=eot,
            pad_token_id=eot if not sd2 else 0,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-5,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=32,
            hidden_act="gelu" if sd2 else "quick_gelu",
        )
    )
    # from_config, as for a hub config: keys the class does not take (clip_sample for PNDM) are dropped.
    scheduler = (DDIMScheduler if sd2 else PNDMScheduler).from_config(SD2_SCHEDULER if sd2 else SD1_SCHEDULER)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_clip_tokenizer(kind, tmp)
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(path, safe_serialization=True)
    return path


def export_optimum(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """``optimum-cli export onnx --task text-to-image`` of a diffusers folder (fp32, CPU)."""
    out = Path(out)
    cmd = [
        sys.executable,
        "-c",
        "import sys; from optimum.commands.optimum_cli import main; sys.exit(main())",
        "export",
        "onnx",
        "--model",
        str(src),
        "--task",
        "text-to-image",
        str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"optimum export failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return out


def cached_build(root: Path, name: str, build) -> Path:
    """Build into ``root/name`` once: a temporary sibling renamed into place when complete."""
    final = root / name
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        build(tmp / name)
        os.replace(tmp / name, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --- SDXL -----------------------------------------------------------------------------------------
# Shapes after diffusers' SDXL fast tests (get_dummy_components), with the two encoders of
# different widths (32 and 48) so that a swapped concatenation or the wrong pooled output
# cannot go unnoticed.  Base: 6 time ids (original size, crop top-left, target size), U-Net
# cross-attention over both encoders (32 + 48).  Refiner: text_encoder_2 only, 5 time ids
# (original size, crop, aesthetic score), cross-attention over encoder 2 (48).
SDXL_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    timestep_spacing="leading",
    interpolation_type="linear",
    use_karras_sigmas=False,
    prediction_type="epsilon",
)
SDXL_TIME_EMBED = 8
SDXL_TE1 = dict(hidden_size=32, projection_dim=32)
SDXL_TE2 = dict(hidden_size=48, projection_dim=40)


def _sdxl_text_encoder(cls, dims: dict, seed: int):
    import torch
    from transformers import CLIPTextConfig

    torch.manual_seed(seed)
    return cls(
        CLIPTextConfig(
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            intermediate_size=37,
            layer_norm_eps=1e-5,
            num_attention_heads=4,
            num_hidden_layers=4,
            vocab_size=49408,
            max_position_embeddings=77,
            hidden_act="gelu",
            **dims,
        )
    )


def build_tiny_sdxl(path: str | os.PathLike, kind: str = "base", seed: int = 0) -> Path:
    """Save a tiny random-weight SDXL base (``StableDiffusionXLPipeline``), refiner
    (``StableDiffusionXLImg2ImgPipeline``, ``requires_aesthetics_score``) or 9-channel inpainting
    model (``StableDiffusionXLInpaintPipeline``, kind "inpaint") at ``path``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if kind not in ("base", "refiner", "inpaint"):
        raise ValueError(f"kind must be 'base', 'refiner' or 'inpaint', got {kind!r}")
    refiner = kind == "refiner"
    n_time_ids = 5 if refiner else 6
    context = SDXL_TE2["hidden_size"] + (0 if refiner else SDXL_TE1["hidden_size"])
    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=9 if kind == "inpaint" else 4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=n_time_ids * SDXL_TIME_EMBED + SDXL_TE2["projection_dim"],
        cross_attention_dim=context,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.13025,  # SDXL's VAE
        force_upcast=True,  # as SDXL's VAE config: its fp16 decode overflows
    )
    text_encoder_2 = _sdxl_text_encoder(CLIPTextModelWithProjection, SDXL_TE2, seed + 3)
    scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_2 = make_clip_tokenizer("sd2", Path(tmp) / "t2")  # SDXL's second tokenizer pads with "!"
        if refiner:
            pipe = StableDiffusionXLImg2ImgPipeline(
                vae=vae,
                text_encoder=None,
                text_encoder_2=text_encoder_2,
                tokenizer=None,
                tokenizer_2=tokenizer_2,
                unet=unet,
                scheduler=scheduler,
                requires_aesthetics_score=True,
                force_zeros_for_empty_prompt=False,
                add_watermarker=False,
            )
        else:
            text_encoder = _sdxl_text_encoder(CLIPTextModel, SDXL_TE1, seed + 2)
            cls = StableDiffusionXLInpaintPipeline if kind == "inpaint" else StableDiffusionXLPipeline
            pipe = cls(
                vae=vae,
                text_encoder=text_encoder,
                text_encoder_2=text_encoder_2,
                tokenizer=make_clip_tokenizer("sd1", Path(tmp) / "t1"),
                tokenizer_2=tokenizer_2,
                unet=unet,
                scheduler=scheduler,
                force_zeros_for_empty_prompt=True,
                add_watermarker=False,
            )
        pipe.save_pretrained(path, safe_serialization=True)
    return path


# --- few-step (LCM) and inpainting ------------------------------------------------------------------
# The SD-1 tiny model's VAE, text encoder and tokenizer with another U-Net: an LCM-distilled one
# (``time_cond_proj_dim``: the guidance embedding input ``timestep_cond``, LCMScheduler) or an
# inpainting one (9 input channels: latents, mask, masked-image latents).
LCM_TIME_COND_DIM = 32
LCM_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    original_inference_steps=50,
    set_alpha_to_one=True,
    steps_offset=1,
    clip_sample=False,
    timestep_scaling=10.0,
    prediction_type="epsilon",
)


def build_tiny_fewstep(path: str | os.PathLike, kind: str = "lcm", seed: int = 0) -> Path:
    """Save a tiny random-weight ``LatentConsistencyModelPipeline`` (``kind="lcm"``) or
    ``StableDiffusionInpaintPipeline`` with a 9-channel U-Net (``kind="inpaint"``) at ``path``."""
    import torch
    from diffusers import (
        LatentConsistencyModelPipeline,
        LCMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    if kind not in ("lcm", "inpaint"):
        raise ValueError(f"kind must be 'lcm' or 'inpaint', got {kind!r}")
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        base = StableDiffusionPipeline.from_pretrained(build_tiny_sd(Path(tmp) / "sd1", "sd1", seed))
        torch.manual_seed(seed + 10)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=16,
            in_channels=9 if kind == "inpaint" else 4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
            time_cond_proj_dim=LCM_TIME_COND_DIM if kind == "lcm" else None,
        )
        parts = dict(
            vae=base.vae,
            text_encoder=base.text_encoder,
            tokenizer=base.tokenizer,
            unet=unet,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        if kind == "lcm":
            pipe = LatentConsistencyModelPipeline(scheduler=LCMScheduler.from_config(LCM_SCHEDULER), **parts)
        else:
            pipe = StableDiffusionInpaintPipeline(scheduler=base.scheduler, **parts)
        pipe.save_pretrained(path, safe_serialization=True)
    return path
