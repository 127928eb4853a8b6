"""LoRA parity with diffusers' ``load_lora_weights`` + ``set_adapters`` on the tiny SD-1 model.

The LoRAs are made here with peft on the tiny model's own U-Net and text encoder (random, non-zero
up and down weights), saved by diffusers' ``save_lora_weights`` (diffusers/PEFT keys) and, key by
key, in kohya's layout (``lora_unet_…``, ``lora_te_…``, ``.alpha``); diffusers loads both through
its own converters.  Both pipelines start from the same latents with a deterministic sampler.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")
from safetensors.numpy import save_file  # noqa: E402
from sdlite import Pipeline  # noqa: E402

TOL = 2 / 255
SIZE, STEPS = 64, 4
PROMPT = "a photo of an astronaut riding a horse"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.2"]
LOCON_TARGETS = UNET_TARGETS + ["conv1", "conv2"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"]


def make_lora(model_cls, src, seed: int, targets: dict, rank: int = 4, alpha: float = 8.0):
    """PEFT LoRA weights (peft key -> array) and config for each component of ``targets``."""
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    pipe = model_cls.from_pretrained(src, torch_dtype=torch.float32)
    out = {}
    for comp, modules in targets.items():
        model = getattr(pipe, comp)
        model.add_adapter(
            LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, init_lora_weights=False)
        )
        for p in model.parameters():  # large enough to move the image well past the tolerance
            if p.requires_grad:
                p.data.normal_(0, 0.3)
        out[comp] = {k: v.detach().numpy().copy() for k, v in get_peft_model_state_dict(model).items()}
        out[f"{comp}_config"] = model.peft_config["default"].to_dict()
    return out


def save_diffusers(model_cls, lora, path):
    layers = {
        f"{comp}_lora_layers": {k: torch.from_numpy(v) for k, v in lora[comp].items()}
        for comp in ("unet", "text_encoder", "text_encoder_2")
        if comp in lora
    }
    meta = {
        f"{comp}_lora_adapter_metadata": lora[f"{comp}_config"]
        for comp in ("unet", "text_encoder", "text_encoder_2")
        if comp in lora
    }
    model_cls.save_lora_weights(str(path.parent), **layers, **meta, weight_name=path.name)
    return path


def save_kohya(lora, path, alpha: float, prefixes=(("unet", "lora_unet_"), ("text_encoder", "lora_te_"))):
    out = {}
    for comp, prefix in prefixes:
        for key, value in lora[comp].items():
            module, half = key.rsplit(".lora_", 1)
            name = prefix + module.replace(".", "_")
            out[f"{name}.lora_{'down' if half.startswith('A') else 'up'}.weight"] = value
            out[f"{name}.alpha"] = np.array(alpha, dtype=np.float32)
    save_file(out, str(path))
    return path


@pytest.fixture(scope="module")
def setup(tiny_sd1_diffusers, tiny_sd1_onnx, tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("loras")
    sd = diffusers.StableDiffusionPipeline
    one = make_lora(sd, tiny_sd1_diffusers, 1, {"unet": UNET_TARGETS, "text_encoder": TE_TARGETS}, 4, 8.0)
    two = make_lora(sd, tiny_sd1_diffusers, 2, {"unet": UNET_TARGETS, "text_encoder": TE_TARGETS}, 2, 2.0)
    locon = make_lora(sd, tiny_sd1_diffusers, 3, {"unet": LOCON_TARGETS, "text_encoder": TE_TARGETS}, 4, 2.0)
    files = {
        "one": save_diffusers(sd, one, d / "one.safetensors"),
        "two": save_diffusers(sd, two, d / "two.safetensors"),
        "kohya": save_kohya(one, d / "kohya.safetensors", 8.0),
        "locon": save_kohya(locon, d / "locon.safetensors", 2.0),
    }
    ours = Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu", num_threads=1)
    return ours, tiny_sd1_diffusers, files


def reference(src, files, loras):
    ref = diffusers.StableDiffusionPipeline.from_pretrained(src, torch_dtype=torch.float32)
    ref.scheduler = diffusers.EulerDiscreteScheduler.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    for name in loras:
        ref.load_lora_weights(str(files[name]), adapter_name=name)
    if loras:
        ref.set_adapters(list(loras), list(loras.values()))
    return ref


def latents():
    return np.random.default_rng(7).standard_normal(
        (1, 4, SIZE // 4, SIZE // 4), dtype=np.float32
    )  # tiny VAE: factor 4


def run_ours(pipe, loras):
    return pipe(
        PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        height=SIZE,
        width=SIZE,
        sampler="euler",
        latents=latents(),
        output_type="np",
        loras=loras,
    ).images


def run_ref(src, files, loras):
    ref = reference(src, files, loras)
    with torch.no_grad():
        return ref(
            PROMPT,
            num_inference_steps=STEPS,
            guidance_scale=7.5,
            height=SIZE,
            width=SIZE,
            latents=torch.from_numpy(latents()),
            output_type="np",
        ).images


@pytest.mark.parametrize(
    "loras",
    [{"one": 0.8}, {"one": 0.7, "two": 0.5}, {"kohya": 0.9}, {"locon": 1.0}],
    ids=["peft", "two-loras", "kohya-alpha", "locon"],
)
def test_parity_with_diffusers(setup, loras):
    ours, src, files = setup
    for name in loras:
        if name not in ours.lora_names:
            assert ours.load_lora_weights(files[name]) == name
    got = run_ours(ours, loras)
    want = run_ref(src, files, loras)
    base = run_ref(src, files, {})
    assert np.abs(want - base).max() > 10 * TOL, "the LoRA must change the image"
    diff = np.abs(got - want).max()
    assert diff <= TOL, f"max |ours - diffusers| = {diff * 255:.2f}/255"


def test_base_image_comes_back_bit_identical(setup):
    ours, _src, files = setup
    if "one" not in ours.lora_names:
        ours.load_lora_weights(files["one"])
    base = run_ours(ours, None)
    with_lora = run_ours(ours, {"one": 1.0})
    assert not np.array_equal(base, with_lora)
    assert np.array_equal(run_ours(ours, None), base)
    assert np.array_equal(run_ours(ours, {}), base)
    again = run_ours(ours, {"one": 1.0})
    assert np.array_equal(again, with_lora)
