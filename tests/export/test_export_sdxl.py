"""``sdlite export`` of tiny SDXL models: base (two encoders) and refiner (text_encoder_2 only).

fp32 exports (the ``tiny_sdxl_onnx`` / ``tiny_sdxl_refiner_onnx`` fixtures, shared with
tests/test_sdxl.py, which proves their pixel parity) are checked for layout, graph inputs and
outputs and validation; one fp16 export (through the command line, unfused) checks that the VAE stays
fp32 (SDXL's ``force_upcast``, as diffusers' SDXL pipelines) and that its images are finite, not
black, and within the fp16 bound of diffusers' fp32 image.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

SIZE, STEPS, GUIDANCE = 64, 3, 5.0
PROMPT, NEGATIVE = "a red circle on a white background", "blurry"
FP16_TOL = 4 / 255  # as tests/export/test_export_pipeline.py


def _io(path) -> tuple[dict, list[str]]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {i.name: i.shape for i in sess.get_inputs()}, [o.name for o in sess.get_outputs()]


def _initializer_types(path) -> set[int]:
    return {t.data_type for t in onnx.load(str(path)).graph.initializer}


def test_base_export_layout(tiny_sdxl_onnx):
    out = tiny_sdxl_onnx
    meta = json.loads((out / "sdlite.json").read_text())
    assert meta["architecture"] == "StableDiffusionXLPipeline"
    assert list(meta["components"]) == [
        "text_encoder",
        "text_encoder_2",
        "unet",
        "vae_encoder",
        "vae_decoder",
    ]
    for name, info in meta["components"].items():
        assert info["validation"]["ok"], name
    for extra in ("tokenizer/vocab.json", "tokenizer_2/vocab.json", "model_index.json"):
        assert (out / extra).is_file(), extra
    assert json.loads((out / "vae_decoder" / "config.json").read_text())["scaling_factor"] == 0.13025

    inputs, _ = _io(out / "unet" / "model.onnx")
    assert inputs["text_embeds"][1] == 40 and inputs["time_ids"][1] == 6
    assert inputs["encoder_hidden_states"][2] == 32 + 48  # both encoders' hidden states
    _, outs1 = _io(out / "text_encoder" / "model.onnx")
    _, outs2 = _io(out / "text_encoder_2" / "model.onnx")
    # SDXL conditions on the penultimate hidden states (validated against PyTorch, all layers).
    assert {f"hidden_states.{i}" for i in range(5)} <= set(outs1) & set(outs2)
    assert "text_embeds" in outs2
    unet_fusions = meta["components"]["unet"]["fusions"]
    assert unet_fusions.get("MultiHeadAttention", 0) + unet_fusions.get("Attention", 0) > 0


def test_refiner_export_layout(tiny_sdxl_refiner_onnx):
    out = tiny_sdxl_refiner_onnx
    meta = json.loads((out / "sdlite.json").read_text())
    assert meta["architecture"] == "StableDiffusionXLImg2ImgPipeline"
    assert list(meta["components"]) == ["text_encoder_2", "unet", "vae_encoder", "vae_decoder"]
    assert not (out / "text_encoder").exists()
    assert all(info["validation"]["ok"] for info in meta["components"].values())
    inputs, _ = _io(out / "unet" / "model.onnx")
    assert inputs["time_ids"][1] == 5 and inputs["encoder_hidden_states"][2] == 48
    assert json.loads((out / "model_index.json").read_text())["requires_aesthetics_score"] is True


@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory, tiny_sdxl_diffusers):
    import torch
    from sdlite.export.cli import main

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sdxl") / "fp16"
    # No fusion pass (20 s of the export's 30): the fused graphs are covered by the fp32 exports,
    # what is checked here is the fp16 conversion and which components stay fp32.
    args = ["--dtype", "fp16", "--target", "cpu", "--no-optimize", "--quiet"]
    assert main([str(tiny_sdxl_diffusers), str(out), *args]) == 0
    return out


def test_fp16_export_keeps_vae_fp32_and_generates(fp16_export, tiny_sdxl_diffusers):
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from sdlite import Pipeline

    out = fp16_export
    meta = json.loads((out / "sdlite.json").read_text())
    for vae in ("vae_encoder", "vae_decoder"):
        assert meta["components"][vae]["dtype"] == "fp32", vae
        assert "force_upcast" in meta["components"][vae]["kept_fp32"]
        assert onnx.TensorProto.FLOAT16 not in _initializer_types(out / vae / "model.onnx")
    for part in ("text_encoder", "text_encoder_2", "unet"):
        assert meta["components"][part]["dtype"] == "fp16", part
        assert meta["components"][part]["validation"]["ok"], part
        assert onnx.TensorProto.FLOAT16 in _initializer_types(out / part / "model.onnx"), part

    latents = np.random.default_rng(3).standard_normal((1, 4, SIZE // 4, SIZE // 4), dtype=np.float32)
    args = dict(
        negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=SIZE, width=SIZE
    )
    got = Pipeline.from_pretrained(out, "cpu", num_threads=1)(
        PROMPT, sampler="euler", latents=latents, output_type="np", **args
    ).images
    ref = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_diffusers, torch_dtype=torch.float32)
    ref.scheduler = EulerDiscreteScheduler.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        want = ref(PROMPT, latents=torch.from_numpy(latents), output_type="np", **args).images
    assert np.isfinite(got).all() and got.std() > 0.01 and got.max() > 0.05  # never black or NaN
    diff = np.abs(np.asarray(got, dtype=np.float64) - want).max()
    assert diff <= FP16_TOL, f"max |sdlite fp16 - diffusers fp32| = {diff * 255:.2f}/255"
