"""int8 quantization (and its pixel cost), static shapes, the fp16 VAE overflow fallback, --overwrite."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

SIZE, STEPS = 64, 3
# int8's cost in pixels, measured on the tiny SD-1 model (3 Euler steps, CFG 7.5, vs the fp32
# export): max 24.7/255, mean 3.65/255 (random weights are int8's worst case). The bounds leave
# room for other CPUs' int8 kernels (VNNI or not) and still catch a broken quantization, which
# gives unrelated images (differences of order 100/255).
INT8_TOL = 64 / 255
INT8_MEAN_TOL = 8 / 255


def _dims(path, name):
    model = onnx.load(str(path), load_external_data=False)
    arg = next(i for i in model.graph.input if i.name == name)
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in arg.type.tensor_type.shape.dim]


def test_static_shapes(tiny_export):
    out, meta = tiny_export("int8-static")
    assert meta["static_shape"]["height"] == SIZE
    assert _dims(out / "unet" / "model.onnx", "sample") == [2, 4, SIZE // 4, SIZE // 4]
    assert _dims(out / "vae_decoder" / "model.onnx", "latent_sample") == [1, 4, SIZE // 4, SIZE // 4]
    assert _dims(out / "vae_encoder" / "model.onnx", "sample") == [1, 3, SIZE, SIZE]


def test_int8_weights_and_pixel_cost(tiny_export):
    from sdlite import Pipeline

    out, meta = tiny_export("int8-static")
    for component in ("text_encoder", "unet"):
        model = onnx.load(str(out / component / "model.onnx"))
        assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer), component
        assert meta["components"][component]["quantized"]["validation"]["finite"]
    vae = onnx.load(str(out / "vae_decoder" / "model.onnx"))
    assert not any(t.data_type == onnx.TensorProto.INT8 for t in vae.graph.initializer)

    fp32_out, _ = tiny_export("fp32-cpu")
    latents = np.random.default_rng(3).standard_normal((1, 4, SIZE // 4, SIZE // 4), dtype=np.float32)
    images = []
    for folder in (fp32_out, out):
        pipe = Pipeline.from_pretrained(folder, "cpu", num_threads=1)
        images.append(
            pipe(
                "a red circle on a white background",
                num_inference_steps=STEPS,
                height=SIZE,
                width=SIZE,
                sampler="euler",
                latents=latents.copy(),
                output_type="np",
            ).images
        )
    diff = np.abs(images[0].astype(np.float64) - images[1])
    print(f"int8 vs fp32: max {diff.max() * 255:.2f}/255, mean {diff.mean() * 255:.3f}/255")
    assert images[0].std() > 0.01
    assert diff.max() <= INT8_TOL, f"int8 vs fp32 max diff {diff.max() * 255:.2f}/255"
    assert diff.mean() <= INT8_MEAN_TOL, f"int8 vs fp32 mean diff {diff.mean() * 255:.2f}/255"


@pytest.fixture(scope="module")
def overflowing_vae_model(tmp_path_factory, tiny_sd1_diffusers):
    """The tiny model with a VAE decoder whose output exceeds fp16's range (65504)."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1_diffusers, torch_dtype=torch.float32)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.weight.mul_(1e6)
        pipe.vae.decoder.conv_out.bias.mul_(1e6)
    path = tmp_path_factory.mktemp("overflow") / "model"
    pipe.save_pretrained(path)
    return path


def test_fp16_vae_overflow_keeps_decoder_fp32_and_overwrite(tmp_path, overflowing_vae_model):
    from sdlite.export import export_model

    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old export")
    report = export_model(
        overflowing_vae_model, out, dtype="fp16", target="cpu", optimize=False, overwrite=True, progress=False
    )
    assert not (out / "stale.txt").exists()  # replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left
    dec = report.components["vae_decoder"]
    assert dec["dtype"] == "fp32" and "fp16 failed validation" in dec["kept_fp32"]
    assert dec["validation"]["ok"]
    model = onnx.load(str(out / "vae_decoder" / "model.onnx"))
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert report.components["unet"]["dtype"] == "fp16"
    assert not (out / "vae_decoder" / "model_fp32.onnx").exists()  # the main decoder is the fp32 one
    meta = json.loads((out / "sdlite.json").read_text())
    assert meta["components"]["vae_decoder"]["dtype"] == "fp32" and meta["optimized"] is False
