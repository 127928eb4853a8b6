"""A diffusers SD-1 or SDXL pipeline as a single-file checkpoint in the original (CompVis/LDM,
A1111, Stability's generative-models) layout.

No real single-file checkpoint is available offline, so the tests make one from the tiny models.
The key mapping is the inverse of diffusers' own loader (``diffusers/loaders/single_file_utils.py``:
``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``,
``convert_open_clip_checkpoint``), derived from the model's config (block types and counts,
``layers_per_block``) so that it fits any SD-1- or SDXL-shaped model, the tiny ones included.
Test-only code (needs torch).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

UNET, VAE, CLIP = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
# SDXL: text encoder 1 keeps the transformers layout under its own prefix, text encoder 2 is an
# OpenCLIP model (fused in_proj attention weights, resblocks, a transposed text projection).
SDXL_CLIP, SDXL_OPEN_CLIP = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."
OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
# Module names inside a block that the LDM layout spells differently (None: same names).
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

Prefixes = list[tuple[str, str, dict[str, str] | None]]  # (diffusers prefix, LDM prefix, renames)


def _unet_prefixes(config) -> Prefixes:
    n = config["layers_per_block"]
    down, up = config["down_block_types"], config["up_block_types"]
    pairs: Prefixes = [
        ("time_embedding.linear_1", "time_embed.0", None),
        ("time_embedding.linear_2", "time_embed.2", None),
        ("conv_in", "input_blocks.0.0", None),
        ("conv_norm_out", "out.0", None),
        ("conv_out", "out.2", None),
        ("add_embedding.linear_1", "label_emb.0.0", None),  # SDXL's text/time embedding
        ("add_embedding.linear_2", "label_emb.0.2", None),
        ("mid_block.resnets.0", "middle_block.0", UNET_RESNET),
        ("mid_block.attentions.0", "middle_block.1", None),
        ("mid_block.resnets.1", "middle_block.2", UNET_RESNET),
    ]
    # input_blocks.0 is conv_in; then per down block: n x (resnet[, attention]), then a downsampler.
    i = 1
    for b, kind in enumerate(down):
        for j in range(n):
            pairs.append((f"down_blocks.{b}.resnets.{j}", f"input_blocks.{i}.0", UNET_RESNET))
            if "CrossAttn" in kind:
                pairs.append((f"down_blocks.{b}.attentions.{j}", f"input_blocks.{i}.1", None))
            i += 1
        if b < len(down) - 1:
            pairs.append((f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{i}.0.op", None))
            i += 1
    # Per up block: n + 1 x (resnet[, attention]); the last one of each (but the last block) upsamples.
    o = 0
    for b, kind in enumerate(up):
        attention = "CrossAttn" in kind
        for j in range(n + 1):
            pairs.append((f"up_blocks.{b}.resnets.{j}", f"output_blocks.{o}.0", UNET_RESNET))
            if attention:
                pairs.append((f"up_blocks.{b}.attentions.{j}", f"output_blocks.{o}.1", None))
            o += 1
        if b < len(up) - 1:
            pairs.append(
                (f"up_blocks.{b}.upsamplers.0", f"output_blocks.{o - 1}.{2 if attention else 1}", None)
            )
    return pairs


def _vae_prefixes(config) -> Prefixes:
    pairs: Prefixes = [("quant_conv", "quant_conv", None), ("post_quant_conv", "post_quant_conv", None)]
    for part in ("encoder", "decoder"):
        pairs += [
            (f"{part}.conv_in", f"{part}.conv_in", None),
            (f"{part}.conv_norm_out", f"{part}.norm_out", None),
            (f"{part}.conv_out", f"{part}.conv_out", None),
            (f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", VAE_RESNET),
            (f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", VAE_RESNET),
            (f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", VAE_ATTENTION),
        ]
    # Encoder blocks hold layers_per_block resnets, decoder blocks one more; the LDM decoder numbers
    # its up blocks from the lowest resolution (diffusers' up block i is LDM's up.{n-1-i}).
    layers, n = config["layers_per_block"], len(config["up_block_types"])
    for i in range(len(config["down_block_types"])):
        for j in range(layers):
            pairs.append((f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", VAE_RESNET))
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0", f"encoder.down.{i}.downsample", None))
    for i in range(n):
        for j in range(layers + 1):
            pairs.append(
                (f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{n - 1 - i}.block.{j}", VAE_RESNET)
            )
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0", f"decoder.up.{n - 1 - i}.upsample", None))
    return pairs


def _rename(key: str, pairs: Prefixes) -> str:
    for old, new, renames in sorted(pairs, key=lambda p: -len(p[0])):
        if key.startswith(old + "."):
            module, _, param = key[len(old) + 1 :].rpartition(".")
            module = (renames or {}).get(module, module)
            return f"{new}.{module}.{param}" if module else f"{new}.{param}"
    raise KeyError(f"no LDM name for {key!r}")


def _open_clip_state_dict(encoder) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPTextModelWithProjection`` under OpenCLIP's names."""
    import torch

    sd = encoder.state_dict()
    out = {
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].T,
    }
    for i in range(encoder.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
            out[f"{dst}attn.out_proj.{kind}"] = sd[f"{src}self_attn.out_proj.{kind}"]
            for name, ldm in OPEN_CLIP_LAYER.items():
                out[f"{dst}{ldm}.{kind}"] = sd[f"{src}{name}.{kind}"]
    return out


def to_ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """The U-Net, VAE and text encoder(s) of a diffusers SD-1 or SDXL pipeline under LDM keys."""
    out = {}
    unet_pairs, vae_pairs = _unet_prefixes(pipe.unet.config), _vae_prefixes(pipe.vae.config)
    for key, value in pipe.unet.state_dict().items():
        out[UNET + _rename(key, unet_pairs)] = value
    for key, value in pipe.vae.state_dict().items():
        new = _rename(key, vae_pairs)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out[VAE + new] = value
    if getattr(pipe, "text_encoder_2", None) is None:
        for key, value in pipe.text_encoder.state_dict().items():
            out[CLIP + key] = value
    else:
        for key, value in pipe.text_encoder.state_dict().items():
            out[SDXL_CLIP + key] = value
        for key, value in _open_clip_state_dict(pipe.text_encoder_2).items():
            out[SDXL_OPEN_CLIP + key] = value
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def write_single_file(diffusers_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Save the SD-1 or SDXL diffusers folder ``diffusers_dir`` as one LDM-layout ``.safetensors``."""
    import torch
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    pipe = DiffusionPipeline.from_pretrained(
        diffusers_dir, torch_dtype=torch.float32, local_files_only=True, safety_checker=None
    )
    path = Path(path)
    save_file(to_ldm_state_dict(pipe), str(path))
    return path
