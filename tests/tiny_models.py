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
