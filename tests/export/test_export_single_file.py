"""``sdlite export model.safetensors OUT --config DIR``: a single-file checkpoint in the original
(CompVis/LDM, A1111) key layout, made from the tiny SD-1 model by ``tests/single_file.py``, is read
by diffusers' single-file loader and exports to the same model as the diffusers folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from single_file import CLIP, UNET, VAE, write_single_file

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
