"""SDXL LoRA parity: U-Net + both text encoders, on ``sdlite export``'s fused CPU graphs and on
optimum's plain export, against diffusers' ``StableDiffusionXLPipeline.load_lora_weights``."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")
from sdlite import Pipeline  # noqa: E402
from test_lora_parity import TE_TARGETS, TOL, UNET_TARGETS, make_lora, save_diffusers, save_kohya  # noqa: E402

SIZE, STEPS = 64, 3
PROMPT = "a photo of an astronaut riding a horse"
TARGETS = {"unet": UNET_TARGETS + ["conv1"], "text_encoder": TE_TARGETS, "text_encoder_2": TE_TARGETS}
KOHYA = (("unet", "lora_unet_"), ("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_"))
# Every kind of U-Net layer that Stability's block layout renames.
SGM_TARGETS = ["to_q", "to_out.0", "proj_in", "conv1", "conv2", "conv", "conv_shortcut", "time_emb_proj"]
RESNET_SGM = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}


def to_sgm(module: str, per: int = 3) -> str:
    """diffusers' module path -> Stability's (kohya's SDXL names), layers_per_block = 2."""
    p = module.split(".")
    if p[0] == "mid_block":
        block = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(p[1:3])]
        rest = ".".join(p[3:])
        return f"middle_block.{block}." + (RESNET_SGM.get(rest, rest) if p[1] == "resnets" else rest)
    b, kind = int(p[1]), p[2]
    if kind == "downsamplers":
        return f"input_blocks.{per * (b + 1)}.0.op"
    if kind == "upsamplers":
        return f"output_blocks.{per * b + 2}.2.conv"
    j, rest = int(p[3]), ".".join(p[4:])
    rest = RESNET_SGM.get(rest, rest) if kind == "resnets" else rest
    inner = 0 if kind == "resnets" else 1
    block = 1 + per * b + j if p[0] == "down_blocks" else per * b + j
    return f"{'input' if p[0] == 'down_blocks' else 'output'}_blocks.{block}.{inner}.{rest}"


@pytest.fixture(scope="module")
def files(tiny_sdxl_diffusers, tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("sdxl-loras")
    lora = make_lora(diffusers.StableDiffusionXLPipeline, tiny_sdxl_diffusers, 5, TARGETS, 4, 4.0)
    sgm = make_lora(
        diffusers.StableDiffusionXLPipeline, tiny_sdxl_diffusers, 6, {**TARGETS, "unet": SGM_TARGETS}, 4, 2.0
    )
    sgm["unet"] = {
        f"{to_sgm(k.split('.lora_')[0])}.lora_{k.split('.lora_')[1]}": v for k, v in sgm["unet"].items()
    }
    assert any(k.startswith("middle_block.") for k in sgm["unet"])
    return {
        "peft": save_diffusers(diffusers.StableDiffusionXLPipeline, lora, d / "peft.safetensors"),
        "kohya": save_kohya(lora, d / "kohya.safetensors", 4.0, KOHYA),
        "sgm": save_kohya(sgm, d / "sgm.safetensors", 2.0, KOHYA),
    }


def latents(factor):
    return np.random.default_rng(3).standard_normal((1, 4, SIZE // factor, SIZE // factor), dtype=np.float32)


@pytest.mark.parametrize("export,fmt", [("sdlite", "peft"), ("optimum", "kohya"), ("sdlite", "sgm")])
def test_sdxl_parity_with_diffusers(request, tiny_sdxl_diffusers, files, export, fmt):
    ours = Pipeline.from_pretrained(
        request.getfixturevalue("tiny_sdxl_onnx" if export == "sdlite" else "tiny_sdxl_optimum"),
        provider="cpu",
        num_threads=1,
    )
    name = ours.load_lora_weights(files[fmt])
    common = dict(num_inference_steps=STEPS, guidance_scale=5.0, height=SIZE, width=SIZE, output_type="np")
    x = latents(ours.vae_scale_factor)
    got = ours(PROMPT, sampler="euler", latents=x, loras={name: 0.75}, **common).images

    ref = diffusers.StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_diffusers, torch_dtype=torch.float32)
    ref.scheduler = diffusers.EulerDiscreteScheduler.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        base = ref(PROMPT, latents=torch.from_numpy(x), **common).images
        ref.load_lora_weights(str(files[fmt]), adapter_name=name)
        ref.set_adapters([name], [0.75])
        want = ref(PROMPT, latents=torch.from_numpy(x), **common).images
    assert np.abs(want - base).max() > 10 * TOL, "the LoRA must change the image"
    diff = np.abs(got - want).max()
    assert diff <= TOL, f"max |ours - diffusers| = {diff * 255:.2f}/255"
