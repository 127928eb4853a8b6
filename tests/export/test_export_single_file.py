"""``sdlite export model.safetensors OUT --config DIR``: a single-file checkpoint in the original
key layout (CompVis/LDM and A1111 for SD-1, Stability's generative-models for SDXL), made from the
tiny models by ``tests/single_file.py``, is read by diffusers' single-file loader and exports to
the same model as the diffusers folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from single_file import CLIP, SDXL_CLIP, SDXL_OPEN_CLIP, UNET, VAE, write_single_file

COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
# Names that only the diffusers layout uses: none may survive in an LDM checkpoint.
DIFFUSERS_ONLY = ("down_blocks", "up_blocks", "mid_block", "resnets", "conv_shortcut", "time_embedding")


@pytest.fixture(scope="module")
def single_file(tmp_path_factory, tiny_sd1_diffusers):
    return write_single_file(tiny_sd1_diffusers, tmp_path_factory.mktemp("single") / "tiny-sd1.safetensors")


def test_checkpoint_uses_the_ldm_layout(single_file):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors.torch import load_file

    sd = load_file(str(single_file))
    assert all(k.startswith((UNET, VAE, CLIP)) for k in sd)
    assert not [k for k in sd if any(name in k for name in DIFFUSERS_ONLY)]
    # Keys a real SD-1.5 checkpoint has too (the tiny model repeats its block pattern, smaller).
    for key in (
        UNET + "input_blocks.3.0.op.weight",  # first downsampler
        UNET + "input_blocks.4.0.skip_connection.weight",  # resnet changing width
        UNET + "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        UNET + "output_blocks.2.1.conv.weight",  # upsampler of an up block without attention
        VAE + "decoder.up.0.block.0.nin_shortcut.weight",
        VAE + "encoder.down.0.downsample.conv.weight",
        CLIP + "text_model.embeddings.position_embedding.weight",
    ):
        assert key in sd, key
    for name in ("q", "k", "v", "proj_out"):  # 1x1 convolutions, as the LDM VAE stores them
        assert sd[f"{VAE}encoder.mid.attn_1.{name}.weight"].ndim == 4
    assert infer_diffusers_model_type(sd) == "v1"


def test_diffusers_reads_it_back_exactly(single_file, tiny_sd1_diffusers):
    from diffusers import StableDiffusionPipeline

    want = StableDiffusionPipeline.from_pretrained(
        tiny_sd1_diffusers, torch_dtype=torch.float32, local_files_only=True, safety_checker=None
    )
    got = StableDiffusionPipeline.from_single_file(
        str(single_file), config=str(tiny_sd1_diffusers), local_files_only=True, safety_checker=None
    )
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(want, name).state_dict(), getattr(got, name).state_dict()
        assert a.keys() == b.keys(), name
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{name}: {differ[:5]}"


def test_export_matches_the_folder_export(single_file, tiny_sd1_diffusers, tiny_export, tmp_path):
    from sdlite import Pipeline
    from sdlite.export.cli import main

    out = tmp_path / "from-single-file"
    args = [str(single_file), str(out), "--config", str(tiny_sd1_diffusers)]
    assert main([*args, "--dtype", "fp32", "--target", "cpu", "--quiet"]) == 0
    meta = json.loads((out / "sdlite.json").read_text())
    assert meta["source_kind"] == "single_file" and meta["architecture"] == "StableDiffusionPipeline"
    assert sorted(meta["components"]) == sorted(COMPONENTS)
    for component, info in meta["components"].items():
        assert info["validation"]["ok"], (component, info["validation"])

    folder, _ = tiny_export("fp32-cpu")
    call = dict(num_inference_steps=3, height=64, width=64, seed=0, output_type="np")
    got = Pipeline.from_pretrained(out, provider="cpu")(["a cat"], **call).images
    want = Pipeline.from_pretrained(folder, provider="cpu")(["a cat"], **call).images
    assert np.asarray(want).std() > 0.01  # a flat image would prove nothing
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# --- SDXL: Stability's generative-models layout, text encoder 2 in OpenCLIP's names ----------


@pytest.fixture(scope="module")
def sdxl_single_file(tmp_path_factory, tiny_sdxl_diffusers):
    return write_single_file(tiny_sdxl_diffusers, tmp_path_factory.mktemp("single") / "tiny-sdxl.safetensors")


def test_sdxl_checkpoint_uses_the_generative_models_layout(sdxl_single_file):
    from safetensors.torch import load_file

    sd = load_file(str(sdxl_single_file))
    assert all(k.startswith((UNET, VAE, SDXL_CLIP, SDXL_OPEN_CLIP)) for k in sd)
    assert not [k for k in sd if any(name in k for name in DIFFUSERS_ONLY)]
    for key in (
        UNET + "label_emb.0.0.weight",  # the text/time embedding
        SDXL_CLIP + "text_model.embeddings.position_embedding.weight",
        SDXL_OPEN_CLIP + "positional_embedding",
        SDXL_OPEN_CLIP + "transformer.resblocks.0.attn.in_proj_weight",
        SDXL_OPEN_CLIP + "transformer.resblocks.0.mlp.c_fc.weight",
        SDXL_OPEN_CLIP + "text_projection",
    ):
        assert key in sd, key
    assert not [k for k in sd if k.startswith(SDXL_OPEN_CLIP) and ("q_proj" in k or "fc1" in k)]


def test_sdxl_diffusers_reads_it_back_exactly(sdxl_single_file, tiny_sdxl_diffusers):
    from diffusers import StableDiffusionXLPipeline

    want = StableDiffusionXLPipeline.from_pretrained(
        tiny_sdxl_diffusers, torch_dtype=torch.float32, local_files_only=True
    )
    got = StableDiffusionXLPipeline.from_single_file(
        str(sdxl_single_file), config=str(tiny_sdxl_diffusers), local_files_only=True
    )
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(want, name).state_dict(), getattr(got, name).state_dict()
        assert a.keys() == b.keys(), name
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{name}: {differ[:5]}"


def test_sdxl_export_matches_the_folder_export(
    sdxl_single_file, tiny_sdxl_diffusers, tiny_sdxl_onnx, tmp_path
):
    from sdlite import Pipeline
    from sdlite.export.cli import main

    out = tmp_path / "sdxl-from-single-file"
    args = [str(sdxl_single_file), str(out), "--config", str(tiny_sdxl_diffusers)]
    assert main([*args, "--dtype", "fp32", "--target", "cpu", "--quiet"]) == 0
    meta = json.loads((out / "sdlite.json").read_text())
    assert meta["source_kind"] == "single_file" and meta["architecture"] == "StableDiffusionXLPipeline"
    assert sorted(meta["components"]) == sorted(("text_encoder_2", *COMPONENTS))
    for component, info in meta["components"].items():
        assert info["validation"]["ok"], (component, info["validation"])

    call = dict(num_inference_steps=3, height=64, width=64, seed=0, output_type="np")
    got = Pipeline.from_pretrained(out, provider="cpu")(["a cat"], **call).images
    want = Pipeline.from_pretrained(tiny_sdxl_onnx, provider="cpu")(["a cat"], **call).images
    assert np.asarray(want).std() > 0.01
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
